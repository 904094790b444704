//! `outflow-agent`: the endpoint agent. It observes process starts and exits
//! and per-process, per-destination byte counters, turns them into contract
//! telemetry (DESIGN.md section 2), keeps every batch in a durable spool until
//! the owning collector acknowledges it, and ships it over mTLS gRPC.
//!
//! Library layout: [`source`] (the `Source` trait; `linux` and `windows`
//! implement it), [`spool`] (sled, sequence numbers, drop policy),
//! [`ship`] (the gRPC shipper, usable by tests and `outflow demo`),
//! [`watchdog`] (CPU/memory budget), [`cli`] (the `outflow-agent` commands).

pub mod cli;
pub mod config;
pub mod etw;
pub mod ship;
pub mod source;
pub mod spool;
pub mod watchdog;

#[cfg(target_os = "linux")]
pub mod linux;

#[cfg(windows)]
pub mod windows;

pub use config::AgentConfig;
pub use source::Source;
