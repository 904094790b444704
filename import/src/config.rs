//! Import tunables: a TOML file (`--config`) whose every option is also a flag.

use serde::Deserialize;

/// Tunables of an import. Defaults suit Sysmon + captures of the same hosts.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ImportConfig {
    /// Length of a `net` delta interval, in seconds: one record per
    /// (host, process, destination) per interval with traffic.
    pub interval_secs: u64,
    /// How far apart (seconds) a Sysmon EventID 3 and the flow it names may
    /// be, to absorb clock skew between the host and the capture/sensor.
    pub clock_skew_secs: f64,
    /// A UDP datagram seen again in another capture within this many
    /// milliseconds (same flow, same length, same payload hash) is counted once.
    pub duplicate_window_ms: u64,
    /// How many rejected records are listed one by one in the summary; the
    /// rest are only counted by reason.
    pub max_listed_rejections: usize,
}

impl Default for ImportConfig {
    fn default() -> Self {
        ImportConfig {
            interval_secs: 60,
            clock_skew_secs: 60.0,
            duplicate_window_ms: 2_000,
            max_listed_rejections: 20,
        }
    }
}

impl ImportConfig {
    /// Checks every option; returns all problems found, joined.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if self.interval_secs == 0 || self.interval_secs > 86_400 {
            problems.push(format!(
                "interval_secs must be between 1 and 86400, got {}",
                self.interval_secs
            ));
        }
        if !self.clock_skew_secs.is_finite()
            || self.clock_skew_secs < 0.0
            || self.clock_skew_secs > 86_400.0
        {
            problems.push(format!(
                "clock_skew_secs must be between 0 and 86400, got {}",
                self.clock_skew_secs
            ));
        }
        if self.duplicate_window_ms > 3_600_000 {
            problems.push(format!(
                "duplicate_window_ms must be at most 3600000, got {}",
                self.duplicate_window_ms
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    pub(crate) fn interval_us(&self) -> i64 {
        self.interval_secs as i64 * 1_000_000
    }

    pub(crate) fn skew_us(&self) -> i64 {
        (self.clock_skew_secs * 1e6) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_defaults_and_unknown_fields() {
        let c: ImportConfig = toml::from_str("interval_secs = 30").unwrap();
        assert_eq!(c.interval_secs, 30);
        assert_eq!(c.clock_skew_secs, 60.0);
        let err = toml::from_str::<ImportConfig>("interval = 30").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn validate_lists_every_problem() {
        let c = ImportConfig {
            interval_secs: 0,
            clock_skew_secs: -1.0,
            ..ImportConfig::default()
        };
        let e = c.validate().unwrap_err();
        assert!(
            e.contains("interval_secs") && e.contains("clock_skew_secs"),
            "{e}"
        );
        assert!(ImportConfig::default().validate().is_ok());
    }
}
