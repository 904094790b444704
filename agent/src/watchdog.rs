//! Self-protection, like osquery's watchdog: the agent measures its own CPU
//! (from `/proc/self/stat`) and resident memory, and when it goes over its
//! budget it sheds optional work step by step (packet capture off, then
//! slower sampling) and says so; when it is comfortably back under budget
//! for a whole window, it restores work step by step.
//!
//! Shedding is reported upstream, not only logged: every change of level
//! becomes a `host` event ([`shed_event`]) whose labels say the level and
//! why, shipped like any other telemetry; [`ShedStats`] goes into the
//! agent's status line. Shedding loses no counted events (TCP bytes stay
//! complete; what goes missing is names and UDP/443 bytes, which are not
//! observed at all while capture is off), so it is not added to a batch's
//! `dropped_events`.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use outflow_core::telemetry::{Event, HostEvent};
use outflow_core::Timestamp;

use crate::source::ShedLevel;

/// Label keys of the `host` event that reports a change of shed level.
pub const LABEL_SHED: &str = "outflow.agent.shed";
pub const LABEL_SHED_REASON: &str = "outflow.agent.shed_reason";
pub const LABEL_SHED_CHANGES: &str = "outflow.agent.shed_changes";

/// The name of a level in labels and logs.
pub fn level_name(l: ShedLevel) -> &'static str {
    match l {
        ShedLevel::Normal => "normal",
        ShedLevel::NoCapture => "no_capture",
        ShedLevel::Minimal => "minimal",
    }
}

/// What the watchdog has done since the agent started (status line).
#[derive(Clone, Debug, PartialEq)]
pub struct ShedStats {
    pub level: ShedLevel,
    /// Steps down (work shed) and up (work restored).
    pub sheds: u64,
    pub restores: u64,
    /// Time spent at a level other than `Normal`.
    pub shed_secs: f64,
    /// Why work was last shed.
    pub last_reason: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct WatchdogReport {
    /// Mean CPU over the window, percent of one core.
    pub cpu_percent: f64,
    pub rss_bytes: u64,
    pub level: ShedLevel,
    /// The level changed with this sample.
    pub changed: bool,
    /// Why the level changed (`None` when it did not).
    pub reason: Option<String>,
}

/// CPU seconds used by this process and its resident bytes.
#[cfg(target_os = "linux")]
pub fn self_usage() -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let close = stat.rfind(')')?;
    let f: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    // After the comm: state is field 3, utime 14, stime 15, rss 24.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    let rss_pages: u64 = f.get(21)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let (tck, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let tck = if tck > 0 { tck as f64 } else { 100.0 };
    let page = if page > 0 { page as u64 } else { 4096 };
    Some(((utime + stime) / tck, rss_pages * page))
}

#[cfg(not(target_os = "linux"))]
pub fn self_usage() -> Option<(f64, u64)> {
    None
}

pub struct Watchdog {
    cpu_limit: f64,
    rss_limit: u64,
    window: Duration,
    samples: VecDeque<(Instant, f64)>,
    level: ShedLevel,
    calm_since: Option<Instant>,
    pub transitions: u64,
    stats: ShedStats,
    /// When the current shed period (level above `Normal`) began.
    shed_since: Option<Instant>,
}

impl Watchdog {
    pub fn new(cpu_limit_percent: f64, rss_limit_mb: u64, window: Duration) -> Watchdog {
        Watchdog {
            cpu_limit: cpu_limit_percent,
            rss_limit: rss_limit_mb * 1024 * 1024,
            window,
            samples: VecDeque::new(),
            level: ShedLevel::Normal,
            calm_since: None,
            transitions: 0,
            stats: ShedStats {
                level: ShedLevel::Normal,
                sheds: 0,
                restores: 0,
                shed_secs: 0.0,
                last_reason: None,
            },
            shed_since: None,
        }
    }

    pub fn level(&self) -> ShedLevel {
        self.level
    }

    /// Counters up to the last sample (`now`: to include the current shed
    /// period).
    pub fn stats(&self, now: Instant) -> ShedStats {
        let mut s = self.stats.clone();
        if let Some(t) = self.shed_since {
            s.shed_secs += now.saturating_duration_since(t).as_secs_f64();
        }
        s
    }

    /// Samples this process now.
    pub fn sample(&mut self) -> Option<WatchdogReport> {
        let (cpu, rss) = self_usage()?;
        Some(self.observe(Instant::now(), cpu, rss))
    }

    /// Decides from a measurement (`cpu_secs` cumulative). Pure, for tests.
    pub fn observe(&mut self, at: Instant, cpu_secs: f64, rss: u64) -> WatchdogReport {
        self.samples.push_back((at, cpu_secs));
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| at.duration_since(*t) > self.window)
            && self.samples.len() > 2
        {
            self.samples.pop_front();
        }
        let cpu_percent = match (self.samples.front(), self.samples.back()) {
            (Some((t0, c0)), Some((t1, c1))) if t1 > t0 => {
                (c1 - c0) / t1.duration_since(*t0).as_secs_f64() * 100.0
            }
            _ => 0.0,
        };
        // Judge CPU only over at least half a window of history.
        let enough = self
            .samples
            .front()
            .is_some_and(|(t, _)| at.duration_since(*t) >= self.window / 2);
        let over = (enough && cpu_percent > self.cpu_limit) || rss > self.rss_limit;
        let calm = cpu_percent < self.cpu_limit / 2.0 && rss < self.rss_limit / 4 * 3;
        let before = self.level;
        let mut reason = None;
        if over {
            self.calm_since = None;
            let next = match self.level {
                ShedLevel::Normal => ShedLevel::NoCapture,
                _ => ShedLevel::Minimal,
            };
            if next != self.level {
                let mut why = Vec::new();
                if enough && cpu_percent > self.cpu_limit {
                    why.push(format!(
                        "cpu {cpu_percent:.1} % of a core > budget {} %",
                        self.cpu_limit
                    ));
                }
                if rss > self.rss_limit {
                    why.push(format!(
                        "rss {} MiB > budget {} MiB",
                        rss / (1024 * 1024),
                        self.rss_limit / (1024 * 1024)
                    ));
                }
                reason = Some(why.join(", "));
                tracing::warn!(
                    cpu_percent = format!("{cpu_percent:.2}"),
                    rss_mb = rss / (1024 * 1024),
                    "watchdog: over budget (cpu {} %, rss {} MiB): shedding work, now {:?}",
                    self.cpu_limit,
                    self.rss_limit / (1024 * 1024),
                    next
                );
                self.level = next;
                // Start a fresh window so the effect of shedding is measured.
                self.samples.clear();
                self.samples.push_back((at, cpu_secs));
            }
        } else if calm && self.level != ShedLevel::Normal {
            let since = *self.calm_since.get_or_insert(at);
            if at.duration_since(since) >= self.window {
                self.level = match self.level {
                    ShedLevel::Minimal => ShedLevel::NoCapture,
                    _ => ShedLevel::Normal,
                };
                self.calm_since = None;
                reason = Some(format!(
                    "back within budget for {} s (cpu {cpu_percent:.1} %, rss {} MiB)",
                    self.window.as_secs(),
                    rss / (1024 * 1024)
                ));
                tracing::info!(
                    "watchdog: back within budget, restoring work: now {:?}",
                    self.level
                );
            }
        } else {
            self.calm_since = None;
        }
        let changed = before != self.level;
        if changed {
            self.transitions += 1;
            self.stats.level = self.level;
            if self.level > before {
                self.stats.sheds += 1;
                self.stats.last_reason = reason.clone();
            } else {
                self.stats.restores += 1;
            }
            match (before, self.level) {
                (ShedLevel::Normal, _) => self.shed_since = Some(at),
                (_, ShedLevel::Normal) => {
                    if let Some(t) = self.shed_since.take() {
                        self.stats.shed_secs += at.saturating_duration_since(t).as_secs_f64();
                    }
                }
                _ => {}
            }
        }
        WatchdogReport {
            cpu_percent,
            rss_bytes: rss,
            level: self.level,
            changed,
            reason: if changed { reason } else { None },
        }
    }
}

/// The `host` event that reports a change of shed level upstream: the
/// configured labels plus [`LABEL_SHED`] (the level), [`LABEL_SHED_REASON`]
/// and [`LABEL_SHED_CHANGES`] (changes since the agent started). `os` is left
/// out (the source's first `host` event carries it).
pub fn shed_event(
    host: &str,
    labels: &BTreeMap<String, String>,
    report: &WatchdogReport,
    changes: u64,
    ts: Timestamp,
) -> Event {
    let mut labels = labels.clone();
    labels.insert(LABEL_SHED.into(), level_name(report.level).into());
    labels.insert(
        LABEL_SHED_REASON.into(),
        report.reason.clone().unwrap_or_default(),
    );
    labels.insert(LABEL_SHED_CHANGES.into(), changes.to_string());
    Event::Host(HostEvent {
        ts,
        host: host.to_string(),
        os: None,
        labels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sheds_when_over_and_restores_when_calm() {
        let mut w = Watchdog::new(5.0, 100, Duration::from_secs(10));
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        // 1 % CPU: nothing happens.
        for i in 0..=10 {
            let r = w.observe(s(i), i as f64 * 0.01, 10 << 20);
            assert_eq!(r.level, ShedLevel::Normal);
        }
        // 50 % CPU for a while: shed capture, then more.
        let mut cpu = 0.1;
        let mut levels = Vec::new();
        for i in 11..=40 {
            cpu += 0.5;
            levels.push(w.observe(s(i), cpu, 10 << 20).level);
        }
        assert!(levels.contains(&ShedLevel::NoCapture));
        assert_eq!(*levels.last().unwrap(), ShedLevel::Minimal);
        // Calm again: restored one step per calm window.
        let mut last = ShedLevel::Minimal;
        for i in 41..=100 {
            cpu += 0.001;
            last = w.observe(s(i), cpu, 10 << 20).level;
        }
        assert_eq!(last, ShedLevel::Normal);
        // Memory over budget sheds at once.
        let r = w.observe(s(101), cpu, 200 << 20);
        assert_eq!(r.level, ShedLevel::NoCapture);
        assert!(r.changed);
        assert_eq!(r.reason.as_deref(), Some("rss 200 MiB > budget 100 MiB"));
        let st = w.stats(s(111));
        assert_eq!((st.sheds, st.restores), (3, 2));
        assert_eq!(st.level, ShedLevel::NoCapture);
        assert_eq!(
            st.last_reason.as_deref(),
            Some("rss 200 MiB > budget 100 MiB")
        );
        // Shed from the first step (second ~16) until restored (~second
        // 60–80), plus the 10 s since second 101.
        assert!(st.shed_secs > 40.0 && st.shed_secs < 80.0, "{st:?}");
    }

    #[test]
    fn every_change_of_level_says_why_and_becomes_a_host_event() {
        let mut w = Watchdog::new(5.0, 100, Duration::from_secs(10));
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let mut reports = Vec::new();
        let mut cpu = 0.0;
        for i in 0..=60 {
            // 50 % of a core for 20 s, then idle.
            cpu += if i <= 20 { 0.5 } else { 0.0 };
            let r = w.observe(s(i), cpu, 10 << 20);
            assert_eq!(r.changed, r.reason.is_some(), "second {i}: {r:?}");
            if r.changed {
                reports.push(r);
            }
        }
        let levels: Vec<ShedLevel> = reports.iter().map(|r| r.level).collect();
        assert_eq!(
            levels,
            vec![
                ShedLevel::NoCapture,
                ShedLevel::Minimal,
                ShedLevel::NoCapture,
                ShedLevel::Normal
            ]
        );
        assert!(reports[0]
            .reason
            .as_deref()
            .unwrap()
            .starts_with("cpu 50.0 % of a core > budget 5 %"));
        assert!(reports[3]
            .reason
            .as_deref()
            .unwrap()
            .starts_with("back within budget"));
        let labels: BTreeMap<String, String> = [("dept".to_string(), "it".to_string())].into();
        let e = shed_event("ws-1", &labels, &reports[0], 1, Timestamp(7));
        let Event::Host(h) = &e else { panic!("{e:?}") };
        assert_eq!(h.host, "ws-1");
        assert_eq!(h.labels["dept"], "it");
        assert_eq!(h.labels[LABEL_SHED], "no_capture");
        assert_eq!(h.labels[LABEL_SHED_CHANGES], "1");
        assert!(h.labels[LABEL_SHED_REASON].contains("budget 5 %"));
        // It is a contract event: it round-trips through the JSONL form.
        let back = outflow_core::telemetry::parse_line(&e.to_json_line()).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn measures_itself() {
        if let Some((cpu, rss)) = self_usage() {
            assert!(cpu >= 0.0);
            assert!(rss > 1 << 20);
        }
    }
}
