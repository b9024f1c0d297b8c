//! paysaga-providers
