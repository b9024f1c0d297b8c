//! paysaga-sandbox
