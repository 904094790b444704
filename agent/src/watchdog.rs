//! Self-protection, like osquery's watchdog: the agent measures its own CPU
//! (from `/proc/self/stat`) and resident memory, and when it goes over its
//! budget it sheds optional work step by step (packet capture off, then
//! slower sampling) and says so; when it is comfortably back under budget
//! for a whole window, it restores work step by step.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::source::ShedLevel;

#[derive(Clone, Debug, PartialEq)]
pub struct WatchdogReport {
    /// Mean CPU over the window, percent of one core.
    pub cpu_percent: f64,
    pub rss_bytes: u64,
    pub level: ShedLevel,
    /// The level changed with this sample.
    pub changed: bool,
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
        }
    }

    pub fn level(&self) -> ShedLevel {
        self.level
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
        if over {
            self.calm_since = None;
            let next = match self.level {
                ShedLevel::Normal => ShedLevel::NoCapture,
                _ => ShedLevel::Minimal,
            };
            if next != self.level {
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
        }
        WatchdogReport {
            cpu_percent,
            rss_bytes: rss,
            level: self.level,
            changed,
        }
    }
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
    }

    #[test]
    fn measures_itself() {
        if let Some((cpu, rss)) = self_usage() {
            assert!(cpu >= 0.0);
            assert!(rss > 1 << 20);
        }
    }
}
