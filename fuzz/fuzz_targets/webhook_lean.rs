//! `webhook::verify_and_parse` for Lean on arbitrary requests: never panics, only correctly
//! signed bodies verify, a signed body parses or is unparseable under its hash.
#![no_main]

use libfuzzer_sys::fuzz_target;
use paysaga_providers::Provider;

fuzz_target!(|data: &[u8]| paysaga_fuzz::webhook(Provider::Lean, data));
