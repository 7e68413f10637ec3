//! The native module of the `deepvis` Python package (`deepvis._native`). The package's
//! Python code (python/deepvis) is the API; this crate is a thin edge over the library crates,
//! like the CLI: [`ops`] does the work, [`job`] runs renders off the GIL, and `py` (with the
//! `extension-module` feature, as maturin builds it) converts to and from Python.

// `is_multiple_of` needs a newer Rust than the workspace's rust-version.
#![allow(clippy::manual_is_multiple_of)]

pub mod job;
pub mod ops;
#[cfg(feature = "extension-module")]
mod py;
