//! Cross-crate tests live in `tests/tests/`; helpers they share live here.

pub mod ports;

pub use ports::free_port;
