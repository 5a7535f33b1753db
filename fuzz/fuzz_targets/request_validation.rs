//! Every request message type, decoded from the input, through the domain's pure checks; see
//! `authd_fuzz::requests`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| authd_fuzz::requests::run(data));
