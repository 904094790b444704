//! The Outflow aggregator: a raft-rs group whose replicated state machine
//! holds the fleet baselines, collector membership and the shard map, policy
//! and recent alerts, with the admin API and `outflow ctl` on top.

pub mod api;
pub mod config;
pub mod ctl;
pub mod grpc;
pub mod node;
pub mod raft;
pub mod server;
pub mod state;

pub use config::{AggregatorArgs, AggregatorConfig};
pub use server::{run, run_aggregator, start_aggregator, RunningAggregator};
