//! `outflow aggregator` configuration: a TOML file and flags (flags win).
//! One set of defaults, shared by the file, the flags and `Default`.

use crate::raft::{Bootstrap, ReplicaConfig};
use crate::state::StateConfig;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Everything one aggregator node needs.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AggregatorConfig {
    /// This node's Raft id (unique in the group, > 0).
    pub id: u64,
    /// Address of the gRPC server (Raft transport, Fleet feed, Admin).
    pub listen: String,
    /// Address of the admin HTTP API.
    pub api: String,
    /// The founding members, `id=host:port` (their `listen` addresses).
    pub peers: Vec<String>,
    /// Directory of the Raft log (sled).
    pub data: PathBuf,
    /// Directory of PEM files from `outflow certs dev` (mTLS everywhere).
    pub certs: Option<PathBuf>,
    /// Run without TLS (tests and benchmarks on loopback only).
    pub insecure_plaintext: bool,
    /// Start empty and wait to be added (`outflow ctl node add`) instead of
    /// founding the group from `peers` (then used only as addresses).
    pub join: bool,
    /// Raft tick, milliseconds.
    pub tick_ms: u64,
    /// Ticks without a leader before an election.
    pub election_ticks: usize,
    /// Ticks between leader heartbeats.
    pub heartbeat_ticks: usize,
    /// Applied entries between snapshots.
    pub snapshot_interval: u64,
    /// Entries kept in the log behind a snapshot.
    pub compact_lag: u64,
    /// How long a proposal may take to commit before the caller is told to retry.
    pub proposal_timeout_ms: u64,
    /// Collectors silent this long leave the shard map.
    pub collector_timeout_ms: i64,
    /// Days of baseline kept (fixed when the group is founded).
    pub horizon_days: u32,
    /// Alerts kept for `ctl alerts` (fixed when the group is founded).
    pub max_alerts: usize,
    /// Local IP address for connections to peers (multi-homed hosts).
    pub source_ip: Option<std::net::IpAddr>,
    /// Bearer token accepted by the admin API off loopback.
    pub api_token: Option<String>,
    /// Serve the admin API over HTTPS (server certificate; an admin client
    /// certificate authenticates off loopback).
    pub api_tls: bool,
}

impl Default for AggregatorConfig {
    fn default() -> Self {
        Self {
            id: 1,
            listen: "127.0.0.1:7101".into(),
            api: "127.0.0.1:7071".into(),
            peers: Vec::new(),
            data: PathBuf::from("outflow-data/aggregator"),
            certs: None,
            insecure_plaintext: false,
            join: false,
            tick_ms: 100,
            election_ticks: 10,
            heartbeat_ticks: 2,
            snapshot_interval: 10_000,
            compact_lag: 2_000,
            proposal_timeout_ms: 5_000,
            collector_timeout_ms: 15_000,
            horizon_days: 14,
            max_alerts: 10_000,
            source_ip: None,
            api_token: None,
            api_tls: false,
        }
    }
}

/// Parse `id=host:port`.
pub fn parse_peer(s: &str) -> Result<(u64, String), String> {
    let (id, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("peer {s:?}: expected ID=HOST:PORT, e.g. 1=127.0.0.1:7101"))?;
    let id: u64 = id
        .trim()
        .parse()
        .map_err(|_| format!("peer {s:?}: node id {id:?} is not a positive integer"))?;
    let addr = addr.trim();
    if id == 0 || !addr.contains(':') {
        return Err(format!("peer {s:?}: expected ID=HOST:PORT with ID > 0"));
    }
    Ok((id, addr.to_string()))
}

impl AggregatorConfig {
    /// Every problem, not just the first.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errs = Vec::new();
        if self.id == 0 {
            errs.push("id must be > 0".to_string());
        }
        let mut peers = BTreeMap::new();
        for p in &self.peers {
            match parse_peer(p) {
                Ok((id, a)) => {
                    if peers.insert(id, a).is_some() {
                        errs.push(format!("peer id {id} is listed twice"));
                    }
                }
                Err(e) => errs.push(e),
            }
        }
        if !self.join && !peers.is_empty() && !peers.contains_key(&self.id) {
            errs.push(format!(
                "this node (id {}) is not among --peers; list it, or pass --join to be added later",
                self.id
            ));
        }
        if self.certs.is_none() && !self.insecure_plaintext {
            errs.push(
                "--certs DIR is required (or --insecure-plaintext for loopback tests)".into(),
            );
        }
        if self.tick_ms == 0 {
            errs.push("tick_ms must be > 0".into());
        }
        if self.heartbeat_ticks == 0 || self.election_ticks <= self.heartbeat_ticks {
            errs.push("election_ticks must be greater than heartbeat_ticks (> 0)".into());
        }
        if self.horizon_days == 0 {
            errs.push("horizon_days must be > 0".into());
        }
        if self.proposal_timeout_ms == 0 {
            errs.push("proposal_timeout_ms must be > 0".into());
        }
        if self.api_tls && self.certs.is_none() {
            errs.push("api_tls needs --certs".into());
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }

    /// The founding members, id → address.
    pub fn peer_map(&self) -> BTreeMap<u64, String> {
        let mut m: BTreeMap<u64, String> = self
            .peers
            .iter()
            .filter_map(|p| parse_peer(p).ok())
            .collect();
        if m.is_empty() {
            m.insert(self.id, self.listen.clone());
        }
        m
    }

    pub fn replica_config(&self) -> ReplicaConfig {
        ReplicaConfig {
            election_tick: self.election_ticks,
            heartbeat_tick: self.heartbeat_ticks,
            snapshot_interval: self.snapshot_interval,
            compact_lag: self.compact_lag,
            ..ReplicaConfig::new(self.id)
        }
    }

    pub fn bootstrap(&self) -> Option<Bootstrap> {
        if self.join {
            return None;
        }
        Some(Bootstrap {
            voters: self.peer_map(),
            state: StateConfig {
                horizon_days: self.horizon_days,
                max_alerts: self.max_alerts,
                ..StateConfig::default()
            },
        })
    }
}

/// `outflow aggregator` flags; each overrides the config file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AggregatorArgs {
    /// TOML configuration file (see docs/aggregator.md); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// This node's Raft id.
    #[arg(long)]
    pub id: Option<u64>,
    /// gRPC listen address (Raft, Fleet, Admin).
    #[arg(long)]
    pub listen: Option<String>,
    /// Admin HTTP API address.
    #[arg(long)]
    pub api: Option<String>,
    /// Founding members: 1=127.0.0.1:7101,2=127.0.0.1:7102,…
    #[arg(long, value_delimiter = ',')]
    pub peers: Option<Vec<String>>,
    /// Raft log directory.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Certificate directory (outflow certs dev).
    #[arg(long)]
    pub certs: Option<PathBuf>,
    /// No TLS at all (loopback tests and benchmarks only).
    #[arg(long)]
    pub insecure_plaintext: bool,
    /// Start empty and wait to be added by `outflow ctl node add`; give
    /// `--peers` of the existing members so this node can answer them.
    #[arg(long)]
    pub join: bool,
    #[arg(long)]
    pub tick_ms: Option<u64>,
    #[arg(long)]
    pub election_ticks: Option<usize>,
    #[arg(long)]
    pub heartbeat_ticks: Option<usize>,
    #[arg(long)]
    pub snapshot_interval: Option<u64>,
    #[arg(long)]
    pub compact_lag: Option<u64>,
    #[arg(long)]
    pub proposal_timeout_ms: Option<u64>,
    #[arg(long)]
    pub collector_timeout_ms: Option<i64>,
    #[arg(long)]
    pub horizon_days: Option<u32>,
    #[arg(long)]
    pub max_alerts: Option<usize>,
    /// Local IP address for connections to peers.
    #[arg(long)]
    pub source_ip: Option<std::net::IpAddr>,
    /// Bearer token for the admin API off loopback (or env OUTFLOW_API_TOKEN).
    #[arg(long, env = "OUTFLOW_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Serve the admin API over HTTPS.
    #[arg(long)]
    pub api_tls: bool,
}

impl AggregatorArgs {
    /// The file (if any) with the flags applied.
    pub fn resolve(&self) -> anyhow::Result<AggregatorConfig> {
        use anyhow::Context as _;
        let mut c = match &self.config {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading config file {}", p.display()))?;
                toml::from_str::<AggregatorConfig>(&text)
                    .with_context(|| format!("config file {}", p.display()))?
            }
            None => AggregatorConfig::default(),
        };
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = &self.$f { c.$f = v.clone(); } )* };
        }
        set!(
            id,
            listen,
            api,
            peers,
            data,
            tick_ms,
            election_ticks,
            heartbeat_ticks
        );
        set!(
            snapshot_interval,
            compact_lag,
            proposal_timeout_ms,
            collector_timeout_ms
        );
        set!(horizon_days, max_alerts);
        if let Some(v) = &self.certs {
            c.certs = Some(v.clone());
        }
        if let Some(v) = self.source_ip {
            c.source_ip = Some(v);
        }
        if let Some(v) = &self.api_token {
            c.api_token = Some(v.clone());
        }
        c.insecure_plaintext |= self.insecure_plaintext;
        c.join |= self.join;
        c.api_tls |= self.api_tls;
        if let Err(errs) = c.validate() {
            anyhow::bail!(
                "invalid aggregator configuration:\n  - {}",
                errs.join("\n  - ")
            );
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_and_flags_merge_and_validation_lists_every_problem() {
        let c: AggregatorConfig =
            toml::from_str("id = 2\npeers = [\"1=127.0.0.1:7101\", \"2=127.0.0.1:7102\"]\ninsecure_plaintext = true\n")
                .unwrap();
        assert_eq!(c.peer_map().len(), 2);
        assert!(c.validate().is_ok());
        assert!(
            toml::from_str::<AggregatorConfig>("idd = 2").is_err(),
            "unknown keys are refused"
        );
        let bad = AggregatorConfig {
            id: 0,
            peers: vec!["x".into(), "3=h:1".into()],
            tick_ms: 0,
            ..Default::default()
        };
        let errs = bad.validate().unwrap_err();
        assert!(errs.len() >= 4, "{errs:?}");
        let args = AggregatorArgs {
            id: Some(3),
            insecure_plaintext: true,
            ..Default::default()
        };
        assert_eq!(args.resolve().unwrap().id, 3);
    }
}
