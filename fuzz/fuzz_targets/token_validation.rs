//! `authd_token::Verifier::verify` on arbitrary and structure-aware input; see `authd_fuzz::token`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| authd_fuzz::token::run(data));
