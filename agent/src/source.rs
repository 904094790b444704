//! The one interface every telemetry source implements (Linux netlink/procfs,
//! Windows ETW, a JSONL file): poll it at a wall-clock instant, get contract
//! events (DESIGN.md section 2).

use outflow_core::telemetry::Event;
use outflow_core::Timestamp;

/// Counters a source reports about itself (logged, and shown by `check`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceStats {
    pub events: u64,
    /// Kernel notifications lost (netlink ENOBUFS overruns).
    pub overruns: u64,
    /// Processes that exited before they could be enriched.
    pub enrich_failed: u64,
    /// Sockets whose owning process could not be found (reported as pid 0).
    pub unattributed_sockets: u64,
    /// Sockets never seen with an owner, attributed to the process that
    /// closed them (Linux close tracepoint).
    pub attributed_by_close: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{probe}: {source}")]
    Io {
        probe: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

/// Work a source can shed when the watchdog says the agent is over budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ShedLevel {
    /// Everything on.
    Normal,
    /// Packet capture (names, UDP bytes) off.
    NoCapture,
    /// Capture off and sampling at a quarter of the configured rate.
    Minimal,
}

pub trait Source: Send {
    /// Short name for logs.
    fn name(&self) -> &'static str;
    /// Appends the events observed up to wall-clock `now` to `out`.
    fn poll(&mut self, now: Timestamp, out: &mut Vec<Event>) -> Result<(), SourceError>;
    fn stats(&self) -> SourceStats;
    /// Sheds (or restores) optional work.
    fn set_shed_level(&mut self, _level: ShedLevel) {}
}

/// Wall clock as an event timestamp.
pub fn now() -> Timestamp {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp(i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}
