//! Raft: the log storage, the replica driven by both the tokio node and the
//! deterministic simulation, and the slog→tracing bridge.

pub mod log;
mod logger;
pub mod replica;
pub mod wal;

pub use log::{Disk, DiskError, LogOp, MemDisk, Persisted, RaftLog, SledDisk};
pub use replica::{
    single_change, Applied, AppliedKind, Bootstrap, ConfChangeContext, PersistJob, ReadyOutcome,
    Replica, ReplicaConfig, ReplicaCounters, ReplicaError, ReplicaStatus,
};
pub use wal::WalDisk;

/// raft-rs's protobuf types, for drivers and tests.
pub use ::raft::eraftpb;
pub use ::raft::StateRole;
