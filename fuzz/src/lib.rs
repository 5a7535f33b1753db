//! Shared code of the authd fuzz targets (see `fuzz/README.md`).
//!
//! The targets in `fuzz_targets/` are one-liners that call [`token::run`] and [`requests::run`], so
//! the seed generator (`examples/gen_seeds.rs`) uses exactly the same fixture and checks.

pub mod requests;
pub mod token;
