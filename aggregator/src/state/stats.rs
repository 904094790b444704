//! The engine's mergeable per-(app, day) statistics, as stored here.

pub use outflow_core::baseline::{AppDayStats, ServiceCount};
