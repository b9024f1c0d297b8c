//! A saga input (arbitrary JSON) against each workflow's parameters and step kinds'
//! `validate`, as `Engine::start` checks it: never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| paysaga_fuzz::saga_input(data));
