//! The Outflow engine: the telemetry model, app and destination
//! classification, event-time windows, mergeable fleet baselines and scoring.
//!
//! No I/O, no clock, no async: every function takes the event time it acts
//! at. The collector, the aggregator, `outflow replay` and `outflow demo` all
//! run this one engine.

pub mod alert;
pub mod app;
pub mod baseline;
pub mod catalogue;
pub mod config;
pub mod engine;
mod fastjson;
pub mod hint;
pub mod policy;
pub mod score;
pub mod shard;
mod strtable;
pub mod telemetry;
pub mod time;

pub use alert::{Alert, Severity};
pub use config::EngineConfig;
pub use engine::{Engine, EngineStats};
pub use policy::Policy;
pub use telemetry::{Event, ParseError};
pub use time::Timestamp;
