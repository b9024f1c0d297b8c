//! Definition TOML parse + compile against the providers' step kinds: never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| paysaga_fuzz::definition_toml(data));
