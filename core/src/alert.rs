//! Alerts (DESIGN.md section 4): the JSON object of replay output, the API and
//! `ctl alerts --json`, and the content of the OTLP log record.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const ANALYTIC: &str = "AN1511";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
    /// OpenTelemetry SeverityNumber: INFO, WARN, ERROR, FATAL.
    pub fn otlp_number(self) -> i32 {
        match self {
            Severity::Low => 9,
            Severity::Medium => 13,
            Severity::High => 17,
            Severity::Critical => 21,
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Destination {
    pub ip: String,
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    pub service: String,
    pub bytes_out: u64,
    pub bytes_in: u64,
}

/// One factor of a score: its value, the peer baseline it was judged
/// against, and what it added to the score.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reason {
    /// `volume`, `ratio`, `destination`, `network_prevalence`, `lineage`,
    /// `host_history`, `approved_service`, `rollout`, `absolute_volume`,
    /// `thin_baseline`.
    pub factor: String,
    /// The observed value (bytes, ratio, host share…), see `detail`.
    pub value: f64,
    /// Distinct peer hosts of the app in the baseline (judged host excluded).
    pub peers: u64,
    /// Share of peer observations below this one, in percent.
    pub percentile: f64,
    pub contribution: f64,
    /// The factor in words.
    pub detail: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub id: String,
    pub analytic: String,
    pub host: String,
    pub pid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ppid: Option<u32>,
    pub app: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_app: Option<String>,
    pub window_start: String,
    pub window_end: String,
    pub bytes_out: u64,
    pub bytes_in: u64,
    pub ratio: f64,
    pub service: String,
    pub destinations: Vec<Destination>,
    pub score: f64,
    pub severity: Severity,
    pub reasons: Vec<Reason>,
    /// `window` (one window of the process) or `cumulative` (the process's
    /// uploads that day: low and slow).
    #[serde(default)]
    pub kind: String,
    /// `established`, or `thin` when the app has too few peers to judge
    /// against (severity then capped at medium).
    #[serde(default)]
    pub baseline: String,
    /// Start time of the process (RFC 3339), part of the process's identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_start: Option<String>,
}

/// The same finding always gets the same id: across retries, replays and
/// failovers.
pub fn alert_id(
    host: &str,
    pid: u32,
    process_start_us: i64,
    app: &str,
    kind: &str,
    window_start_us: i64,
) -> String {
    let mut h = Sha256::new();
    for part in [
        ANALYTIC.as_bytes(),
        host.as_bytes(),
        &pid.to_le_bytes(),
        &process_start_us.to_le_bytes(),
        app.as_bytes(),
        kind.as_bytes(),
        &window_start_us.to_le_bytes(),
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    hex::encode(&h.finalize()[..16])
}

/// `182 MiB`, `3.4 KiB`, `912 B`.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if b < 1024 {
        return format!("{b} B");
    }
    let mut v = b as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if v >= 100.0 {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `5312` → `5,312`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl Alert {
    /// The one-line human summary used as the OTLP log body, e.g.
    /// `winword.exe on ws-0142 sent 182 MiB to dropbox (ratio 410:1, above 99.97% of 5,312 peer hosts)`.
    pub fn summary(&self) -> String {
        let ratio = if self.ratio >= 10.0 {
            format!("{:.0}:1", self.ratio)
        } else {
            format!("{:.1}:1", self.ratio)
        };
        let peer = self
            .reasons
            .iter()
            .find(|r| r.factor == "volume")
            .map(|r| {
                if self.baseline == "thin" {
                    format!(", baseline thin: {} peer hosts", thousands(r.peers))
                } else {
                    format!(
                        ", above {} of {} peer hosts",
                        percent(r.percentile),
                        thousands(r.peers)
                    )
                }
            })
            .unwrap_or_default();
        let over = if self.kind == "cumulative" {
            " over the day"
        } else {
            ""
        };
        format!(
            "{} on {} sent {} to {}{} (ratio {}{})",
            self.app,
            self.host,
            human_bytes(self.bytes_out),
            self.service,
            over,
            ratio,
            peer
        )
    }

    pub fn to_json(&self) -> String {
        // Serialising plain data with string keys cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

fn percent(p: f64) -> String {
    if (99.0..100.0).contains(&p) {
        format!("{:.2}%", (p * 100.0).floor() / 100.0)
    } else {
        format!("{p:.0}%")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct() {
        let a = alert_id("ws-1", 42, 1_000, "winword.exe", "window", 60_000_000);
        assert_eq!(
            a,
            alert_id("ws-1", 42, 1_000, "winword.exe", "window", 60_000_000)
        );
        assert_eq!(a.len(), 32);
        assert_ne!(
            a,
            alert_id("ws-1", 42, 1_000, "winword.exe", "window", 120_000_000)
        );
        assert_ne!(
            a,
            alert_id("ws-2", 42, 1_000, "winword.exe", "window", 60_000_000)
        );
        // Length-prefixed parts: no ambiguity between ("ab","c") and ("a","bc").
        assert_ne!(
            alert_id("ab", 1, 0, "c", "w", 0),
            alert_id("a", 1, 0, "bc", "w", 0)
        );
    }

    #[test]
    fn formats() {
        assert_eq!(human_bytes(912), "912 B");
        assert_eq!(human_bytes(3482), "3.4 KiB");
        assert_eq!(human_bytes(182 << 20), "182 MiB");
        assert_eq!(thousands(5312), "5,312");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000_000), "1,000,000");
        assert_eq!(percent(99.978), "99.97%");
        assert_eq!(Severity::High.otlp_number(), 17);
        assert_eq!(
            serde_json::to_string(&Severity::Critical).unwrap(),
            "\"critical\""
        );
    }
}
