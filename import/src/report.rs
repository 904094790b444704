//! The import summary: what was read, rejected (why and where), joined and
//! left unmatched. Printed to stderr by `outflow import`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// Which importer a count or a rejection belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SourceKind {
    Sysmon,
    Zeek,
    Pcap,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Sysmon => "sysmon",
            SourceKind::Zeek => "zeek",
            SourceKind::Pcap => "pcap",
        }
    }
}

/// One record, file or member that could not be imported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub source: SourceKind,
    /// Where: `file`, `file:line N`, `archive.zip!member: packet N`…
    pub location: String,
    /// A short stable key for counting (`missing_field`, `truncated`…).
    pub reason_key: &'static str,
    /// What was wrong, in words.
    pub detail: String,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {} ({})",
            self.source.as_str(),
            self.location,
            self.detail,
            self.reason_key
        )
    }
}

/// Counts for one kind of source.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceStats {
    /// Files and zip members opened.
    pub files: u64,
    /// Bytes read (uncompressed).
    pub bytes: u64,
    /// Records read: lines (Sysmon, Zeek) or packets (pcap).
    pub records: u64,
    /// Records that produced or fed output.
    pub used: u64,
    /// Records rejected as bad input (see the rejections).
    pub rejected: u64,
    /// Well-formed records deliberately not used, by reason.
    pub skipped: BTreeMap<String, u64>,
}

/// The summary of one import.
#[derive(Clone, Debug, Default)]
pub struct ImportReport {
    pub sysmon: SourceStats,
    pub zeek: SourceStats,
    pub pcap: SourceStats,
    /// The first rejections, listed (up to `max_listed_rejections`).
    pub rejections: Vec<Rejection>,
    /// Every rejection counted by (source, reason key).
    pub rejected_by_reason: BTreeMap<(SourceKind, &'static str), u64>,
    /// Flows from captures and Zeek after de-duplication.
    pub flows: u64,
    /// Flows (or UDP datagrams) seen twice — in two captures, or in Zeek and
    /// a capture — and counted once.
    pub duplicates: u64,
    /// Zeek connections from outside to a local address, emitted as seen
    /// from the local responder.
    pub zeek_inbound: u64,
    /// Flows attributed to a process by a Sysmon EventID 3.
    pub flows_joined: u64,
    /// Flows with no Sysmon connection: emitted with `pid` 0 (app `unknown`).
    pub flows_unmatched: u64,
    /// Of the unmatched flows, those whose client address is a host that
    /// Sysmon logs came from (a join was possible but found nothing).
    pub flows_unmatched_on_sysmon_hosts: u64,
    /// Sysmon EventID 3 with Initiated=true.
    pub sysmon_connections: u64,
    /// Of those, the ones that named at least one flow.
    pub sysmon_connections_joined: u64,
    /// Processes whose pid was missing and got a synthetic one from the GUID.
    pub synthetic_pids: u64,
    /// `process_start` records synthesised for processes seen only in later
    /// events (started before the log began).
    pub synthesized_starts: u64,
    /// `host` events: one per host that sent Sysmon logs.
    pub hosts: u64,
    pub process_starts: u64,
    pub process_ends: u64,
    pub dns_records: u64,
    pub net_records: u64,
    pub events_written: u64,
    pub elapsed: Duration,
    pub(crate) max_listed: Option<usize>,
}

impl ImportReport {
    pub fn stats_mut(&mut self, kind: SourceKind) -> &mut SourceStats {
        match kind {
            SourceKind::Sysmon => &mut self.sysmon,
            SourceKind::Zeek => &mut self.zeek,
            SourceKind::Pcap => &mut self.pcap,
        }
    }

    /// Records a rejection: counted, and listed while the list is short.
    pub fn reject(
        &mut self,
        source: SourceKind,
        location: impl Into<String>,
        reason_key: &'static str,
        detail: impl Into<String>,
    ) {
        self.stats_mut(source).rejected += 1;
        *self
            .rejected_by_reason
            .entry((source, reason_key))
            .or_default() += 1;
        let limit = self.max_listed.unwrap_or(20);
        if self.rejections.len() < limit {
            let r = Rejection {
                source,
                location: location.into(),
                reason_key,
                detail: detail.into(),
            };
            tracing::warn!(rejection = %r, "rejected input");
            self.rejections.push(r);
        }
    }

    /// Counts a well-formed record that was deliberately not used.
    pub fn skip(&mut self, source: SourceKind, reason: &str) {
        let s = self.stats_mut(source);
        match s.skipped.get_mut(reason) {
            Some(n) => *n += 1,
            None => {
                s.skipped.insert(reason.to_string(), 1);
            }
        }
    }

    /// Total rejections across sources.
    pub fn total_rejected(&self) -> u64 {
        self.sysmon.rejected + self.zeek.rejected + self.pcap.rejected
    }

    /// Share of flows attributed to a process, 0..=1 (None without flows).
    pub fn joined_share(&self) -> Option<f64> {
        (self.flows > 0).then(|| self.flows_joined as f64 / self.flows as f64)
    }
}

impl fmt::Display for ImportReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "import summary")?;
        for (kind, s) in [
            (SourceKind::Sysmon, &self.sysmon),
            (SourceKind::Zeek, &self.zeek),
            (SourceKind::Pcap, &self.pcap),
        ] {
            if s.files == 0 && s.rejected == 0 {
                continue;
            }
            let unit = if kind == SourceKind::Pcap {
                "packets"
            } else {
                "lines"
            };
            writeln!(
                f,
                "  {:<6} files {}, {:.1} MB, {unit} read {}, used {}, rejected {}",
                kind.as_str(),
                s.files,
                s.bytes as f64 / 1e6,
                s.records,
                s.used,
                s.rejected
            )?;
            if !s.skipped.is_empty() {
                let parts: Vec<String> =
                    s.skipped.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                writeln!(f, "         skipped: {}", parts.join(", "))?;
            }
        }
        let share = self
            .joined_share()
            .map(|s| format!(" ({:.1}% joined)", s * 100.0))
            .unwrap_or_default();
        writeln!(
            f,
            "  flows {}{share}: joined to a process {}, unmatched (pid 0) {} (of which on Sysmon hosts {}), duplicates counted once {}",
            self.flows,
            self.flows_joined,
            self.flows_unmatched,
            self.flows_unmatched_on_sysmon_hosts,
            self.duplicates
        )?;
        if self.zeek_inbound > 0 {
            writeln!(
                f,
                "  zeek connections from outside to a local address (host = the local responder) {}",
                self.zeek_inbound
            )?;
        }
        if self.sysmon_connections > 0 {
            writeln!(
                f,
                "  sysmon connections (Initiated=true) {}, joined to a flow {}",
                self.sysmon_connections, self.sysmon_connections_joined
            )?;
        }
        writeln!(
            f,
            "  written {} events: host {}, process_start {} (synthesised {}), process_end {}, dns {}, net {}; synthetic pids {}",
            self.events_written,
            self.hosts,
            self.process_starts,
            self.synthesized_starts,
            self.process_ends,
            self.dns_records,
            self.net_records,
            self.synthetic_pids
        )?;
        let secs = self.elapsed.as_secs_f64();
        let bytes = self.sysmon.bytes + self.zeek.bytes + self.pcap.bytes;
        if secs > 0.0 {
            writeln!(
                f,
                "  took {:.3} s ({:.1} MB/s of input)",
                secs,
                bytes as f64 / 1e6 / secs
            )?;
        }
        let total = self.total_rejected();
        if total > 0 {
            let parts: Vec<String> = self
                .rejected_by_reason
                .iter()
                .map(|((s, k), v)| format!("{}/{k}: {v}", s.as_str()))
                .collect();
            writeln!(f, "  rejected {total}: {}", parts.join(", "))?;
            for r in &self.rejections {
                writeln!(f, "    {r}")?;
            }
            if (self.rejections.len() as u64) < total {
                writeln!(
                    f,
                    "    … {} more not listed",
                    total - self.rejections.len() as u64
                )?;
            }
        }
        Ok(())
    }
}
