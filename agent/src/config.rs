//! Agent configuration: a TOML file whose every option is also a flag
//! (`outflow-agent run --help`); flags win over the file, the file over the
//! defaults. `validate()` reports every problem, not just the first.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A parsed CIDR block (`10.0.0.0/8`, `::1/128`), also accepting a bare IP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not an IP address or CIDR block"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{s}`: prefix length must be 0..={max}"))?,
            None => max,
        };
        Ok(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: &IpAddr) -> bool {
        // An IPv4-mapped IPv6 address matches IPv4 blocks.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(*ip),
            v4 => *v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Everything the agent can be told. Durations are in milliseconds or seconds
/// as their names say.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Host id. Shipping: must equal the name in the agent certificate (the
    /// certificate wins and a mismatch is an error). Default: the certificate
    /// name when shipping, else the kernel host name.
    pub host_id: Option<String>,
    /// Collector endpoint, e.g. `https://127.0.0.1:7201`.
    pub collector: Option<String>,
    /// Directory with `ca.pem` and the agent's certificate and key
    /// (see `outflow certs dev`).
    pub certs: Option<PathBuf>,
    /// File stem of the client certificate in `certs` (default `agent-<host_id>`).
    pub cert_stem: Option<String>,
    /// Durable spool directory (sled). Default `/var/lib/outflow-agent/spool`.
    pub spool: PathBuf,
    /// Upper bound of the spool's payload bytes; when full, the oldest batches
    /// are dropped, counted and reported in the next batch (`dropped_events`).
    pub spool_max_bytes: u64,
    /// Write telemetry JSONL here (`-` = stdout) instead of shipping it.
    pub output: Option<String>,
    /// Socket counter sampling period.
    pub sample_interval_ms: u64,
    /// A batch is sealed at least this often (and when `max_batch_events` is reached).
    pub batch_interval_ms: u64,
    /// Largest batch, in events.
    pub max_batch_events: usize,
    /// Full `/proc` rescan period (catches what the proc connector missed;
    /// without the connector the agent rescans every `sample_interval_ms`).
    pub proc_rescan_secs: u64,
    /// Destinations never reported (CIDR blocks or IPs). Empty by default:
    /// the engine decides what is internal.
    pub exclude: Vec<String>,
    /// Passive capture (AF_PACKET) of DNS answers, TLS SNI and UDP/443 bytes.
    pub capture: bool,
    /// Count UDP port 443 (QUIC) bytes per process from the capture.
    pub count_udp: bool,
    /// Watchdog: mean CPU budget in percent of one core (over `watchdog_window_secs`).
    pub cpu_limit_percent: f64,
    /// Watchdog: resident memory budget in MiB.
    pub rss_limit_mb: u64,
    /// Watchdog averaging window.
    pub watchdog_window_secs: u64,
    /// Reconnect backoff: first delay and ceiling (exponential, full jitter).
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// Labels sent in the `host` event (e.g. `dept = "finance"`).
    pub labels: std::collections::BTreeMap<String, String>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            host_id: None,
            collector: None,
            certs: None,
            cert_stem: None,
            spool: PathBuf::from("/var/lib/outflow-agent/spool"),
            spool_max_bytes: 256 * 1024 * 1024,
            output: None,
            sample_interval_ms: 1000,
            batch_interval_ms: 5000,
            max_batch_events: 5000,
            proc_rescan_secs: 30,
            exclude: Vec::new(),
            capture: true,
            count_udp: true,
            cpu_limit_percent: 5.0,
            rss_limit_mb: 200,
            watchdog_window_secs: 60,
            backoff_initial_ms: 500,
            backoff_max_ms: 60_000,
            labels: Default::default(),
        }
    }
}

impl AgentConfig {
    pub fn from_toml(text: &str) -> Result<AgentConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    pub fn sample_interval(&self) -> Duration {
        Duration::from_millis(self.sample_interval_ms)
    }
    pub fn batch_interval(&self) -> Duration {
        Duration::from_millis(self.batch_interval_ms)
    }

    pub fn exclude_cidrs(&self) -> Result<Vec<Cidr>, String> {
        self.exclude.iter().map(|s| Cidr::parse(s)).collect()
    }

    /// Every problem with this configuration (empty = valid).
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errs = Vec::new();
        if self.sample_interval_ms < 50 || self.sample_interval_ms > 600_000 {
            errs.push(format!(
                "sample_interval_ms = {} is out of range (50..=600000)",
                self.sample_interval_ms
            ));
        }
        if self.batch_interval_ms < self.sample_interval_ms {
            errs.push(format!(
                "batch_interval_ms = {} must be >= sample_interval_ms = {}",
                self.batch_interval_ms, self.sample_interval_ms
            ));
        }
        if self.max_batch_events == 0 || self.max_batch_events > 100_000 {
            errs.push(format!(
                "max_batch_events = {} is out of range (1..=100000)",
                self.max_batch_events
            ));
        }
        if self.proc_rescan_secs == 0 {
            errs.push("proc_rescan_secs must be at least 1".into());
        }
        if self.spool_max_bytes < 1024 * 1024 {
            errs.push(format!(
                "spool_max_bytes = {} is below the 1 MiB minimum",
                self.spool_max_bytes
            ));
        }
        if !(self.cpu_limit_percent > 0.0 && self.cpu_limit_percent <= 400.0) {
            errs.push(format!(
                "cpu_limit_percent = {} must be in (0, 400]",
                self.cpu_limit_percent
            ));
        }
        if self.rss_limit_mb < 16 {
            errs.push(format!("rss_limit_mb = {} is below 16", self.rss_limit_mb));
        }
        if self.watchdog_window_secs == 0 {
            errs.push("watchdog_window_secs must be at least 1".into());
        }
        if self.backoff_initial_ms == 0 || self.backoff_max_ms < self.backoff_initial_ms {
            errs.push(format!(
                "backoff: need 0 < backoff_initial_ms ({}) <= backoff_max_ms ({})",
                self.backoff_initial_ms, self.backoff_max_ms
            ));
        }
        for e in &self.exclude {
            if let Err(m) = Cidr::parse(e) {
                errs.push(format!("exclude: {m}"));
            }
        }
        if self.output.is_none() {
            match &self.collector {
                None => errs.push(
                    "no `collector` (or `--collector`) given and no `--output`: nowhere to send telemetry"
                        .into(),
                ),
                Some(c) if !(c.starts_with("https://") || c.starts_with("http://")) => errs.push(
                    format!("collector `{c}` must be a URL such as https://127.0.0.1:7201"),
                ),
                _ => {}
            }
            if self.certs.is_none() {
                errs.push(
                    "no `certs` (or `--certs`) directory: shipping needs mTLS certificates".into(),
                );
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_matching() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains(&"10.2.3.4".parse().unwrap()));
        assert!(!c.contains(&"11.2.3.4".parse().unwrap()));
        assert!(c.contains(&"::ffff:10.1.1.1".parse().unwrap()));
        let l = Cidr::parse("::1").unwrap();
        assert!(l.contains(&"::1".parse().unwrap()));
        assert!(!l.contains(&"::2".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains(&"8.8.8.8".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nonsense").is_err());
    }

    #[test]
    fn unknown_keys_are_refused_and_defaults_fill_in() {
        assert!(AgentConfig::from_toml("sample_interval_ms = 10\nbogus = 1").is_err());
        let c = AgentConfig::from_toml("sample_interval_ms = 500\noutput = \"-\"").unwrap();
        assert_eq!(c.sample_interval_ms, 500);
        assert_eq!(c.batch_interval_ms, 5000);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn validation_lists_every_problem() {
        let c = AgentConfig {
            sample_interval_ms: 1,
            exclude: vec!["x".into()],
            ..Default::default()
        };
        let errs = c.validate().unwrap_err();
        assert!(errs.len() >= 4, "{errs:?}");
        assert!(errs.iter().any(|e| e.contains("collector")));
        assert!(errs.iter().any(|e| e.contains("exclude")));
    }
}
