//! Engine configuration: one set of defaults shared by `Default`, config
//! files and flags; `validate()` reports every problem, not the first.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Tunables of windowing, baselines and scoring. Durations are in seconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Length of the tumbling event-time window each (host, process) is judged on.
    pub window_secs: u64,
    /// How long after a window's end data for it may still arrive before the
    /// window is closed and scored. Later data is counted as late.
    pub allowed_lateness_secs: u64,
    /// Days of history the fleet baseline covers (sliding, daily buckets).
    pub horizon_days: u32,
    /// Destinations in these networks are internal and never count as outbound.
    pub internal_networks: Vec<IpNet>,
    /// Ports that count as HTTPS without an SNI (TCP and UDP/QUIC).
    pub https_ports: Vec<u16>,
    /// Windows uploading less than this are not judged (they still feed baselines).
    pub min_window_out_bytes: u64,
    /// The outbound:inbound ratio a window must exceed to be judged.
    pub min_ratio: f64,
    /// Constant added to both sides of the ratio (`log2((out+c)/(in+c))`).
    pub ratio_smoothing_bytes: u64,
    /// A window uploading at least this much to a service counts as an upload
    /// to it in the baseline.
    pub upload_bytes: u64,
    /// Fewer distinct peer hosts than this: the baseline is thin ("learning")
    /// and cannot alone raise a high-severity alert.
    pub min_peers: u64,
    /// Event time from the first event during which no alert is raised: the
    /// fleet is being learnt.
    pub learning_secs: u64,
    /// Score from which an alert is raised (low), and the severity steps.
    pub alert_score: f64,
    pub medium_score: f64,
    pub high_score: f64,
    pub critical_score: f64,
    /// A process already alerted on is alerted again only at a higher
    /// severity or after this long.
    pub realert_secs: u64,
    /// Accumulated uploads of one process in one day are judged (low and slow)
    /// from this many bytes on.
    pub min_cumulative_out_bytes: u64,
    /// Processes with no activity for this long are forgotten (bounded memory).
    pub idle_process_secs: u64,
    /// IP → name answers remembered per host (DNS), oldest evicted first.
    pub dns_cache_per_host: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            window_secs: 60,
            allowed_lateness_secs: 30,
            horizon_days: 14,
            internal_networks: default_internal_networks(),
            https_ports: vec![443],
            min_window_out_bytes: 1 << 20,
            min_ratio: 3.0,
            ratio_smoothing_bytes: 4096,
            upload_bytes: 1 << 20,
            min_peers: 10,
            learning_secs: 86_400,
            alert_score: 4.5,
            medium_score: 6.5,
            high_score: 8.5,
            critical_score: 11.0,
            realert_secs: 3600,
            min_cumulative_out_bytes: 32 << 20,
            idle_process_secs: 6 * 3600,
            dns_cache_per_host: 4096,
        }
    }
}

/// RFC 1918, loopback, link-local, CGNAT, and their IPv6 counterparts.
pub fn default_internal_networks() -> Vec<IpNet> {
    [
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "100.64.0.0/10",
        "0.0.0.0/8",
        "224.0.0.0/4",
        "255.255.255.255/32",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
        "ff00::/8",
        "::/128",
    ]
    .iter()
    .filter_map(|s| s.parse().ok())
    .collect()
}

impl EngineConfig {
    pub fn window_us(&self) -> i64 {
        secs_to_us(self.window_secs)
    }
    pub fn lateness_us(&self) -> i64 {
        secs_to_us(self.allowed_lateness_secs)
    }

    pub fn is_internal(&self, ip: &IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(*v6)),
            v4 => *v4,
        };
        self.internal_networks.iter().any(|n| n.contains(&ip))
    }

    /// Every problem with this configuration, as sentences.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errs = Vec::new();
        if self.window_secs == 0 || self.window_secs > 86_400 {
            errs.push(format!(
                "window_secs must be between 1 and 86400, got {}",
                self.window_secs
            ));
        } else if 86_400 % self.window_secs != 0 {
            errs.push(format!(
                "window_secs must divide a day evenly (e.g. 60, 300), got {}",
                self.window_secs
            ));
        }
        if self.allowed_lateness_secs > 86_400 {
            errs.push("allowed_lateness_secs must be at most a day".into());
        }
        if self.horizon_days == 0 || self.horizon_days > 366 {
            errs.push(format!(
                "horizon_days must be between 1 and 366, got {}",
                self.horizon_days
            ));
        }
        if !(self.min_ratio.is_finite() && self.min_ratio > 0.0) {
            errs.push(format!(
                "min_ratio must be a positive number, got {}",
                self.min_ratio
            ));
        }
        let steps = [
            ("alert_score", self.alert_score),
            ("medium_score", self.medium_score),
            ("high_score", self.high_score),
            ("critical_score", self.critical_score),
        ];
        if steps.iter().any(|(_, v)| !v.is_finite()) {
            errs.push("scores must be finite numbers".into());
        }
        for w in steps.windows(2) {
            if w[0].1 > w[1].1 {
                errs.push(format!(
                    "{} ({}) must not exceed {} ({})",
                    w[0].0, w[0].1, w[1].0, w[1].1
                ));
            }
        }
        if self.dns_cache_per_host == 0 {
            errs.push("dns_cache_per_host must be at least 1".into());
        }
        if self.https_ports.is_empty() {
            errs.push("https_ports must list at least one port".into());
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }
}

fn secs_to_us(s: u64) -> i64 {
    i64::try_from(s).unwrap_or(i64::MAX / 1_000_000) * 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_classify_internal() {
        let c = EngineConfig::default();
        c.validate().unwrap();
        for ip in [
            "10.1.2.3",
            "192.168.0.1",
            "127.0.0.1",
            "100.64.1.1",
            "::1",
            "fd00::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(c.is_internal(&ip.parse().unwrap()), "{ip}");
        }
        for ip in ["162.125.1.1", "8.8.8.8", "2606:4700::1"] {
            assert!(!c.is_internal(&ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn validate_reports_every_problem() {
        let c = EngineConfig {
            window_secs: 7,
            horizon_days: 0,
            alert_score: 9.0,
            ..EngineConfig::default()
        };
        let errs = c.validate().unwrap_err();
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(errs[0].contains("window_secs"));
    }

    #[test]
    fn toml_round_trip_and_unknown_keys_refused() {
        let c: EngineConfig = serde_json::from_str(r#"{"window_secs": 300}"#).unwrap();
        assert_eq!(c.window_secs, 300);
        assert_eq!(c.horizon_days, 14);
        assert!(serde_json::from_str::<EngineConfig>(r#"{"windw_secs": 300}"#).is_err());
    }
}
