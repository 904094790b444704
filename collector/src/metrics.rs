//! Self-telemetry counters, rendered in the Prometheus text format.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Why a batch or stream was refused (a label of `outflow_collector_rejects_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectReason {
    Unauthenticated,
    HostMismatch,
    RoleNotAllowed,
    Malformed,
    TooLarge,
    TooManyEvents,
    SequenceZero,
    Overloaded,
    NotOwner,
    /// TLS handshake: the client presented no certificate.
    TlsNoCertificate,
    /// TLS handshake: a certificate from another CA.
    TlsUnknownCa,
    /// TLS handshake: an expired (or not yet valid) certificate.
    TlsExpired,
    /// TLS handshake: another certificate problem (revoked, wrong usage…).
    TlsBadCertificate,
    /// TLS handshake: anything else (not TLS, protocol error, timeout).
    TlsHandshake,
}

impl RejectReason {
    pub const ALL: [RejectReason; 14] = [
        RejectReason::Unauthenticated,
        RejectReason::HostMismatch,
        RejectReason::RoleNotAllowed,
        RejectReason::Malformed,
        RejectReason::TooLarge,
        RejectReason::TooManyEvents,
        RejectReason::SequenceZero,
        RejectReason::Overloaded,
        RejectReason::NotOwner,
        RejectReason::TlsNoCertificate,
        RejectReason::TlsUnknownCa,
        RejectReason::TlsExpired,
        RejectReason::TlsBadCertificate,
        RejectReason::TlsHandshake,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Unauthenticated => "unauthenticated",
            RejectReason::HostMismatch => "host_mismatch",
            RejectReason::RoleNotAllowed => "role_not_allowed",
            RejectReason::Malformed => "malformed",
            RejectReason::TooLarge => "too_large",
            RejectReason::TooManyEvents => "too_many_events",
            RejectReason::SequenceZero => "sequence_zero",
            RejectReason::Overloaded => "overloaded",
            RejectReason::NotOwner => "redirected",
            RejectReason::TlsNoCertificate => "tls_no_certificate",
            RejectReason::TlsUnknownCa => "tls_unknown_ca",
            RejectReason::TlsExpired => "tls_expired",
            RejectReason::TlsBadCertificate => "tls_bad_certificate",
            RejectReason::TlsHandshake => "tls_handshake",
        }
    }
}

/// Every counter and gauge of a collector.
#[derive(Default)]
pub struct Metrics {
    pub batches: AtomicU64,
    pub duplicate_batches: AtomicU64,
    pub samples: AtomicU64,
    pub agent_dropped_events: AtomicU64,
    pub rejects: [AtomicU64; 14],
    pub group_commits: AtomicU64,
    pub streams_open: AtomicI64,
    pub ingest_queue: AtomicI64,
    pub engine_queue: AtomicI64,
    pub engine_events: AtomicU64,
    pub replayed_batches: AtomicU64,
    pub alerts: AtomicU64,
    pub alerts_delivered_otlp: AtomicU64,
    pub alerts_delivered_file: AtomicU64,
    pub alerts_delivered_fleet: AtomicU64,
    pub outbox_otlp: AtomicI64,
    pub outbox_file: AtomicI64,
    pub outbox_fleet: AtomicI64,
    pub delivery_failures: AtomicU64,
    pub partial_submissions: AtomicU64,
    pub feed_updates: AtomicU64,
    pub windows_closed: AtomicU64,
    pub late_records: AtomicU64,
    pub compacted_batches: AtomicU64,
    pub ready: std::sync::atomic::AtomicBool,
}

impl Metrics {
    pub fn reject(&self, r: RejectReason) {
        let i = RejectReason::ALL.iter().position(|x| *x == r).unwrap_or(0);
        self.rejects[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn rejects_of(&self, r: RejectReason) -> u64 {
        let i = RejectReason::ALL.iter().position(|x| *x == r).unwrap_or(0);
        self.rejects[i].load(Ordering::Relaxed)
    }

    /// Prometheus text exposition format.
    pub fn render(&self, collector_id: &str) -> String {
        let mut s = String::new();
        let id = collector_id.replace(['\\', '"', '\n'], "_");
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter");
            let _ = writeln!(s, "{name}{{collector=\"{id}\"}} {v}");
        };
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(
            "outflow_collector_batches_total",
            "Batches made durable and acknowledged (first time).",
            l(&self.batches),
        );
        counter(
            "outflow_collector_duplicate_batches_total",
            "Resent batches acknowledged again but not counted.",
            l(&self.duplicate_batches),
        );
        counter(
            "outflow_collector_samples_total",
            "Telemetry events ingested (durable).",
            l(&self.samples),
        );
        counter(
            "outflow_collector_agent_dropped_events_total",
            "Events agents report having dropped under their drop policy.",
            l(&self.agent_dropped_events),
        );
        counter(
            "outflow_collector_group_commits_total",
            "sled flushes, each making many batches durable.",
            l(&self.group_commits),
        );
        counter(
            "outflow_collector_engine_events_total",
            "Events processed by the engine (including replay on start).",
            l(&self.engine_events),
        );
        counter(
            "outflow_collector_replayed_batches_total",
            "Batches replayed from the log on start.",
            l(&self.replayed_batches),
        );
        counter(
            "outflow_collector_alerts_total",
            "Distinct alerts raised.",
            l(&self.alerts),
        );
        counter(
            "outflow_collector_delivery_failures_total",
            "Failed alert deliveries (retried).",
            l(&self.delivery_failures),
        );
        counter(
            "outflow_collector_partial_submissions_total",
            "Partial statistics submitted to the aggregator.",
            l(&self.partial_submissions),
        );
        counter(
            "outflow_collector_feed_updates_total",
            "Feed updates (baseline, shard map, policy) applied.",
            l(&self.feed_updates),
        );
        counter(
            "outflow_collector_windows_closed_total",
            "Process windows closed and judged.",
            l(&self.windows_closed),
        );
        counter(
            "outflow_collector_late_records_total",
            "Network records that arrived after their window closed.",
            l(&self.late_records),
        );
        counter(
            "outflow_collector_compacted_batches_total",
            "Batches removed by retention.",
            l(&self.compacted_batches),
        );
        let _ = writeln!(
            s,
            "# HELP outflow_collector_rejects_total Refused streams or batches, by reason.\n# TYPE outflow_collector_rejects_total counter"
        );
        for r in RejectReason::ALL {
            let _ = writeln!(
                s,
                "outflow_collector_rejects_total{{collector=\"{id}\",reason=\"{}\"}} {}",
                r.as_str(),
                self.rejects_of(r)
            );
        }
        let _ = writeln!(
            s,
            "# HELP outflow_collector_alerts_delivered_total Alerts delivered, by sink.\n# TYPE outflow_collector_alerts_delivered_total counter"
        );
        for (sink, v) in [
            ("otlp", &self.alerts_delivered_otlp),
            ("file", &self.alerts_delivered_file),
            ("fleet", &self.alerts_delivered_fleet),
        ] {
            let _ = writeln!(
                s,
                "outflow_collector_alerts_delivered_total{{collector=\"{id}\",sink=\"{sink}\"}} {}",
                l(v)
            );
        }
        let _ = writeln!(
            s,
            "# HELP outflow_collector_outbox_backlog Alerts waiting for delivery, by sink.\n# TYPE outflow_collector_outbox_backlog gauge"
        );
        for (sink, v) in [
            ("otlp", &self.outbox_otlp),
            ("file", &self.outbox_file),
            ("fleet", &self.outbox_fleet),
        ] {
            let _ = writeln!(
                s,
                "outflow_collector_outbox_backlog{{collector=\"{id}\",sink=\"{sink}\"}} {}",
                v.load(Ordering::Relaxed)
            );
        }
        for (name, help, v) in [
            (
                "outflow_collector_streams_open",
                "Open ingest streams.",
                &self.streams_open,
            ),
            (
                "outflow_collector_ingest_queue_depth",
                "Batches waiting for their group commit.",
                &self.ingest_queue,
            ),
            (
                "outflow_collector_engine_queue_depth",
                "Durable batches waiting for the engine.",
                &self.engine_queue,
            ),
        ] {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} gauge");
            let _ = writeln!(
                s,
                "{name}{{collector=\"{id}\"}} {}",
                v.load(Ordering::Relaxed)
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_labels() {
        let m = Metrics::default();
        m.samples.fetch_add(42, Ordering::Relaxed);
        m.reject(RejectReason::HostMismatch);
        m.reject(RejectReason::HostMismatch);
        let text = m.render("c1");
        assert!(text.contains("outflow_collector_samples_total{collector=\"c1\"} 42"));
        assert!(text.contains(
            "outflow_collector_rejects_total{collector=\"c1\",reason=\"host_mismatch\"} 2"
        ));
        assert!(text.contains("# TYPE outflow_collector_outbox_backlog gauge"));
    }
}
