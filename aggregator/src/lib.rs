//! The Outflow aggregator: a raft-rs group whose replicated state machine
//! holds the fleet baselines, collector membership and the shard map, policy
//! and recent alerts, with the admin API and `outflow ctl` on top.

pub mod raft;
pub mod state;
