//! The replicated state machine: fleet baselines, collector membership and
//! the shard map, policy with its audit trail, and recent alerts.
//!
//! Pure and deterministic: no clock, no I/O, integer arithmetic and ordered
//! maps only. Every replica that applies the same commands in the same order
//! holds the same bytes, which `state_hash` lets operators and tests check.

pub mod codec;
mod stats;

pub use stats::{AppDayStats, ServiceCount};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};

/// Settings every replica must share; fixed when the group is bootstrapped
/// and carried in snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// Days of baseline kept, counting back from the newest day seen.
    pub horizon_days: u32,
    /// Alerts kept for `ctl alerts`; the oldest (by window end) go first.
    pub max_alerts: usize,
    /// Policy changes kept in the audit trail.
    pub max_audit: usize,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            horizon_days: 14,
            max_alerts: 10_000,
            max_audit: 1_000,
        }
    }
}

/// An alert as kept by the aggregator: the contract JSON plus what it is
/// ordered and deduplicated by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertRecord {
    pub id: String,
    pub window_end_us: i64,
    /// The alert object of DESIGN.md section 4, serialised.
    pub json: String,
}

/// A state-machine command; the Raft log holds these ([`codec`]: binary for
/// baseline updates and batches, JSON otherwise; JSON entries of older
/// versions still decode).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    /// A collector's per-(app, day) statistics. Kept per (collector, app,
    /// day) with the highest epoch, so retries and reorderings are harmless.
    SubmitPartials {
        collector_id: String,
        epoch: u64,
        partials: Vec<AppDayStats>,
    },
    /// Collector liveness; `unix_ms` is stamped by the proposer.
    CollectorHeartbeat {
        collector_id: String,
        endpoint: String,
        unix_ms: i64,
        #[serde(default)]
        hosts: u64,
    },
    /// Proposed by the leader now and then: collectors silent for longer than
    /// `collector_timeout_ms` leave the shard map.
    Tick {
        unix_ms: i64,
        collector_timeout_ms: i64,
    },
    /// Replace the policy document; `principal` is the certificate identity.
    SetPolicy {
        principal: String,
        unix_ms: i64,
        policy: serde_json::Value,
        #[serde(default)]
        comment: String,
    },
    /// Alerts raised by a collector; idempotent by alert id.
    ReportAlerts {
        collector_id: String,
        alerts: Vec<AlertRecord>,
    },
    /// Several commands proposed together (one log entry), applied in order
    /// at the same index. Batches do not nest.
    Batch { commands: Vec<Command> },
}

impl Command {
    /// Short name for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::SubmitPartials { .. } => "submit_partials",
            Command::CollectorHeartbeat { .. } => "collector_heartbeat",
            Command::Tick { .. } => "tick",
            Command::SetPolicy { .. } => "set_policy",
            Command::ReportAlerts { .. } => "report_alerts",
            Command::Batch { .. } => "batch",
        }
    }
}

/// What applying a command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    Partials {
        accepted: u64,
        duplicates: u64,
        expired: u64,
    },
    Membership {
        shard_map_version: u64,
        changed: bool,
    },
    Policy {
        version: u64,
    },
    Alerts {
        added: u64,
        duplicates: u64,
    },
    /// One outcome per command of a batch, in order.
    Batch {
        outcomes: Vec<Outcome>,
    },
    /// The command was well-formed JSON but not acceptable; state unchanged.
    Rejected {
        reason: String,
    },
}

/// A collector as the fleet knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectorState {
    pub endpoint: String,
    pub last_seen_ms: i64,
    pub hosts: u64,
    /// False once the collector missed heartbeats for the timeout.
    pub alive: bool,
}

/// One entry of the policy audit trail: who changed what, when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub index: u64,
    pub principal: String,
    pub unix_ms: i64,
    pub action: String,
    pub comment: String,
    /// The policy document after the change.
    pub policy: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct EpochStats {
    epoch: u64,
    stats: AppDayStats,
}

/// The whole replicated state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetState {
    config: StateConfig,
    applied_index: u64,
    /// app → day → collector → that collector's latest partial.
    partials: BTreeMap<String, BTreeMap<i64, BTreeMap<String, EpochStats>>>,
    newest_day: Option<i64>,
    baseline_version: u64,
    collectors: BTreeMap<String, CollectorState>,
    shard_map_version: u64,
    policy: serde_json::Value,
    policy_version: u64,
    audit: Vec<AuditEntry>,
    alerts: BTreeMap<String, AlertRecord>,
    /// Raft node id → address, learnt from bootstrap and membership changes.
    raft_peers: BTreeMap<u64, String>,
    /// Derived from `alerts` (rebuilt on restore): retention order.
    #[serde(skip)]
    alert_order: BTreeSet<(i64, String)>,
}

/// Errors restoring a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("snapshot is not a valid fleet state: {0}")]
    BadSnapshot(#[from] serde_json::Error),
}

impl Default for FleetState {
    fn default() -> Self {
        Self::new(StateConfig::default())
    }
}

impl FleetState {
    pub fn new(config: StateConfig) -> Self {
        Self {
            config,
            applied_index: 0,
            partials: BTreeMap::new(),
            newest_day: None,
            baseline_version: 0,
            collectors: BTreeMap::new(),
            shard_map_version: 0,
            policy: serde_json::json!({}),
            policy_version: 0,
            audit: Vec::new(),
            alerts: BTreeMap::new(),
            raft_peers: BTreeMap::new(),
            alert_order: BTreeSet::new(),
        }
    }

    pub fn config(&self) -> &StateConfig {
        &self.config
    }

    /// Index of the last Raft entry applied to this state.
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// Record that entry `index` (one with no command, e.g. an empty entry
    /// after an election or a membership change) has been applied.
    pub fn mark_applied(&mut self, index: u64) {
        self.applied_index = self.applied_index.max(index);
    }

    /// Apply one committed command at `index`.
    pub fn apply(&mut self, index: u64, command: &Command) -> Outcome {
        self.mark_applied(index);
        match command {
            Command::SubmitPartials {
                collector_id,
                epoch,
                partials,
            } => self.submit_partials(index, collector_id, *epoch, partials),
            Command::CollectorHeartbeat {
                collector_id,
                endpoint,
                unix_ms,
                hosts,
            } => self.heartbeat(index, collector_id, endpoint, *unix_ms, *hosts),
            Command::Tick {
                unix_ms,
                collector_timeout_ms,
            } => self.tick(index, *unix_ms, *collector_timeout_ms),
            Command::SetPolicy {
                principal,
                unix_ms,
                policy,
                comment,
            } => self.set_policy(index, principal, *unix_ms, policy, comment),
            Command::ReportAlerts { alerts, .. } => self.report_alerts(alerts),
            Command::Batch { commands } => Outcome::Batch {
                outcomes: commands
                    .iter()
                    .map(|c| match c {
                        Command::Batch { .. } => Outcome::Rejected {
                            reason: "batches do not nest".into(),
                        },
                        c => self.apply(index, c),
                    })
                    .collect(),
            },
        }
    }

    /// Apply raw command bytes as stored in the log. Bytes that do not parse
    /// (a newer node's command, corruption) are rejected identically on every
    /// replica, so replicas still agree.
    pub fn apply_bytes(&mut self, index: u64, bytes: &[u8]) -> Outcome {
        match codec::decode(bytes) {
            Ok(c) => self.apply(index, &c),
            Err(e) => {
                self.mark_applied(index);
                Outcome::Rejected {
                    reason: format!("undecodable command at index {index}: {e}"),
                }
            }
        }
    }

    fn horizon_start(&self) -> Option<i64> {
        self.newest_day
            .map(|d| d - i64::from(self.config.horizon_days.max(1)) + 1)
    }

    fn submit_partials(
        &mut self,
        index: u64,
        collector_id: &str,
        epoch: u64,
        partials: &[AppDayStats],
    ) -> Outcome {
        let (mut accepted, mut duplicates, mut expired) = (0, 0, 0);
        let newest_before = self.newest_day;
        for p in partials {
            if self.horizon_start().is_some_and(|start| p.day < start) {
                expired += 1;
                continue;
            }
            let slot = self
                .partials
                .entry(p.app.clone())
                .or_default()
                .entry(p.day)
                .or_default();
            match slot.get(collector_id) {
                Some(old) if old.epoch >= epoch => duplicates += 1,
                _ => {
                    slot.insert(
                        collector_id.to_string(),
                        EpochStats {
                            epoch,
                            stats: p.clone(),
                        },
                    );
                    accepted += 1;
                    self.newest_day = Some(self.newest_day.map_or(p.day, |d| d.max(p.day)));
                }
            }
        }
        if accepted > 0 {
            self.baseline_version = index;
        }
        // Only a newer day moves the horizon: older partials were refused
        // above, so nothing else can have fallen out of it.
        if self.newest_day != newest_before {
            self.prune();
        }
        Outcome::Partials {
            accepted,
            duplicates,
            expired,
        }
    }

    fn prune(&mut self) {
        let Some(start) = self.horizon_start() else {
            return;
        };
        self.partials.retain(|_, days| {
            days.retain(|day, _| *day >= start);
            !days.is_empty()
        });
    }

    fn heartbeat(
        &mut self,
        index: u64,
        collector_id: &str,
        endpoint: &str,
        unix_ms: i64,
        hosts: u64,
    ) -> Outcome {
        let changed = match self.collectors.get_mut(collector_id) {
            Some(c) => {
                let changed = !c.alive || c.endpoint != endpoint;
                c.alive = true;
                c.endpoint = endpoint.to_string();
                c.last_seen_ms = c.last_seen_ms.max(unix_ms);
                c.hosts = hosts;
                changed
            }
            None => {
                self.collectors.insert(
                    collector_id.to_string(),
                    CollectorState {
                        endpoint: endpoint.to_string(),
                        last_seen_ms: unix_ms,
                        hosts,
                        alive: true,
                    },
                );
                true
            }
        };
        if changed {
            self.shard_map_version = index;
        }
        Outcome::Membership {
            shard_map_version: self.shard_map_version,
            changed,
        }
    }

    fn tick(&mut self, index: u64, unix_ms: i64, timeout_ms: i64) -> Outcome {
        let mut changed = false;
        for c in self.collectors.values_mut() {
            if c.alive && unix_ms.saturating_sub(c.last_seen_ms) > timeout_ms {
                c.alive = false;
                changed = true;
            }
        }
        if changed {
            self.shard_map_version = index;
        }
        Outcome::Membership {
            shard_map_version: self.shard_map_version,
            changed,
        }
    }

    fn set_policy(
        &mut self,
        index: u64,
        principal: &str,
        unix_ms: i64,
        policy: &serde_json::Value,
        comment: &str,
    ) -> Outcome {
        if !policy.is_object() {
            return Outcome::Rejected {
                reason: "policy must be a JSON object".into(),
            };
        }
        self.policy = policy.clone();
        self.policy_version = index;
        self.audit.push(AuditEntry {
            index,
            principal: principal.to_string(),
            unix_ms,
            action: "set_policy".into(),
            comment: comment.to_string(),
            policy: policy.clone(),
        });
        if self.audit.len() > self.config.max_audit {
            let excess = self.audit.len() - self.config.max_audit;
            self.audit.drain(..excess);
        }
        Outcome::Policy { version: index }
    }

    fn report_alerts(&mut self, alerts: &[AlertRecord]) -> Outcome {
        let (mut added, mut duplicates) = (0, 0);
        for a in alerts {
            if self.alerts.contains_key(&a.id) {
                duplicates += 1;
                continue;
            }
            self.alert_order.insert((a.window_end_us, a.id.clone()));
            self.alerts.insert(a.id.clone(), a.clone());
            added += 1;
        }
        while self.alerts.len() > self.config.max_alerts {
            let Some(oldest) = self.alert_order.pop_first() else {
                break;
            };
            self.alerts.remove(&oldest.1);
        }
        Outcome::Alerts { added, duplicates }
    }

    /// Record a Raft member's address (bootstrap, membership changes).
    pub fn set_raft_peer(&mut self, id: u64, address: Option<String>) {
        match address {
            Some(a) => {
                self.raft_peers.insert(id, a);
            }
            None => {
                self.raft_peers.remove(&id);
            }
        }
    }

    pub fn raft_peers(&self) -> &BTreeMap<u64, String> {
        &self.raft_peers
    }

    /// Canonical bytes of the whole state.
    pub fn snapshot(&self) -> Vec<u8> {
        // Serialising plain structs, ordered maps and JSON values cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Replace this state with a snapshot's.
    pub fn restore(&mut self, bytes: &[u8]) -> Result<(), StateError> {
        let mut s: FleetState = serde_json::from_slice(bytes)?;
        s.alert_order = s
            .alerts
            .values()
            .map(|a| (a.window_end_us, a.id.clone()))
            .collect();
        *self = s;
        Ok(())
    }

    /// SHA-256 of the canonical snapshot, hex.
    pub fn state_hash(&self) -> String {
        hex::encode(Sha256::digest(self.snapshot()))
    }

    // ---- read side -------------------------------------------------------

    pub fn baseline_version(&self) -> u64 {
        self.baseline_version
    }

    pub fn newest_day(&self) -> Option<i64> {
        self.newest_day
    }

    /// Apps with any statistics in the horizon.
    pub fn apps(&self) -> impl Iterator<Item = &str> {
        self.partials.keys().map(String::as_str)
    }

    /// The fleet baseline of one app: per day, the sum over collectors.
    pub fn app_baseline(&self, app: &str) -> Vec<AppDayStats> {
        let Some(days) = self.partials.get(app) else {
            return Vec::new();
        };
        days.iter()
            .map(|(day, by_collector)| {
                let mut sum = AppDayStats::empty(app, *day);
                for p in by_collector.values() {
                    sum.merge(&p.stats);
                }
                sum
            })
            .collect()
    }

    /// The whole fleet baseline, (app, day) ordered.
    pub fn fleet_baseline(&self) -> Vec<AppDayStats> {
        self.partials
            .keys()
            .flat_map(|app| self.app_baseline(app))
            .collect()
    }

    pub fn collectors(&self) -> &BTreeMap<String, CollectorState> {
        &self.collectors
    }

    /// Live collectors (collector id, endpoint), sorted: the shard map input.
    pub fn shard_members(&self) -> Vec<(String, String)> {
        self.collectors
            .iter()
            .filter(|(_, c)| c.alive)
            .map(|(id, c)| (id.clone(), c.endpoint.clone()))
            .collect()
    }

    pub fn shard_map_version(&self) -> u64 {
        self.shard_map_version
    }

    pub fn policy(&self) -> &serde_json::Value {
        &self.policy
    }

    pub fn policy_version(&self) -> u64 {
        self.policy_version
    }

    pub fn audit(&self) -> &[AuditEntry] {
        &self.audit
    }

    /// Alerts with `window_end_us >= since`, oldest first, at most `limit`.
    pub fn alerts_since(&self, since_us: i64, limit: usize) -> Vec<&AlertRecord> {
        self.alert_order
            .range((since_us, String::new())..)
            .filter_map(|(_, id)| self.alerts.get(id))
            .take(limit)
            .collect()
    }

    pub fn alert_count(&self) -> usize {
        self.alerts.len()
    }

    pub fn has_alert(&self, id: &str) -> bool {
        self.alerts.contains_key(id)
    }
}

#[cfg(test)]
mod tests;
