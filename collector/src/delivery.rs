//! Delivery of alerts from the durable outboxes: OTLP to the SOC, a JSON
//! lines file, and the aggregator (for `ctl alerts`). An entry leaves its
//! outbox only after its sink confirmed it; failures are retried with
//! exponential backoff, so an unreachable sink delays alerts, never loses
//! them. The outbox entry is made durable before the first attempt, so a
//! crash after a delivery cannot mint the alert again under a new entry: at
//! worst the same alert (same stable id) is delivered twice.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use outflow_core::alert::Alert;
use tokio::sync::{watch, Notify};

use crate::fleet::{AlertReport, FleetClient};
use crate::metrics::Metrics;
use crate::otlp::{export_request, OtlpExporter};
use crate::store::Store;

pub const SINK_OTLP: &str = "otlp";
pub const SINK_FILE: &str = "file";
pub const SINK_FLEET: &str = "fleet";

/// Where an outbox delivers to.
pub enum Sink {
    Otlp(OtlpExporter),
    File(PathBuf),
    Fleet(Arc<dyn FleetClient>),
}

impl Sink {
    pub fn name(&self) -> &'static str {
        match self {
            Sink::Otlp(_) => SINK_OTLP,
            Sink::File(_) => SINK_FILE,
            Sink::Fleet(_) => SINK_FLEET,
        }
    }

    async fn deliver(&self, collector_id: &str, jsons: &[String]) -> Result<(), String> {
        match self {
            Sink::Otlp(exp) => {
                let mut alerts = Vec::with_capacity(jsons.len());
                for j in jsons {
                    match serde_json::from_str::<Alert>(j) {
                        Ok(a) => alerts.push(a),
                        // Cannot happen for entries we wrote; never block
                        // the outbox on one.
                        Err(e) => tracing::error!(error = %e, "undecodable outbox entry dropped"),
                    }
                }
                if alerts.is_empty() {
                    return Ok(());
                }
                exp.export(export_request(collector_id, &alerts))
                    .await
                    .map_err(|e| e.to_string())
            }
            Sink::File(path) => {
                let path = path.clone();
                let lines: String = jsons.iter().map(|j| format!("{j}\n")).collect();
                tokio::task::spawn_blocking(move || -> Result<(), String> {
                    let mut f = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&path)
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                    f.write_all(lines.as_bytes())
                        .and_then(|_| f.sync_data())
                        .map_err(|e| format!("{}: {e}", path.display()))
                })
                .await
                .map_err(|e| e.to_string())?
            }
            Sink::Fleet(client) => {
                let mut reports = Vec::with_capacity(jsons.len());
                for j in jsons {
                    if let Ok(a) = serde_json::from_str::<Alert>(j) {
                        let end = outflow_core::Timestamp::parse_rfc3339(&a.window_end)
                            .map(|t| t.as_micros())
                            .unwrap_or(0);
                        reports.push(AlertReport {
                            id: a.id,
                            json: j.clone(),
                            window_end_us: end,
                        });
                    }
                }
                client
                    .report_alerts(collector_id, reports)
                    .await
                    .map_err(|e| e.to_string())
            }
        }
    }
}

fn counters<'a>(metrics: &'a Metrics, sink: &str) -> (&'a AtomicI64, &'a AtomicU64) {
    match sink {
        SINK_OTLP => (&metrics.outbox_otlp, &metrics.alerts_delivered_otlp),
        SINK_FILE => (&metrics.outbox_file, &metrics.alerts_delivered_file),
        _ => (&metrics.outbox_fleet, &metrics.alerts_delivered_fleet),
    }
}

/// Delivers one outbox until `shutdown` turns true.
#[allow(clippy::too_many_arguments)]
pub async fn run_delivery(
    store: Store,
    sink: Sink,
    collector_id: String,
    notify: Arc<Notify>,
    metrics: Arc<Metrics>,
    batch: usize,
    max_retry: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let name = sink.name();
    let mut backoff = Duration::from_millis(200);
    loop {
        if *shutdown.borrow() {
            return;
        }
        let (backlog, delivered) = counters(&metrics, name);
        // Registered before looking, so an alert raised meanwhile wakes us.
        let notified = notify.notified();
        let entries = match store.outbox_peek(name, batch) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(sink = name, error = %e, "cannot read outbox");
                Vec::new()
            }
        };
        backlog.store(store.outbox_len(name) as i64, Ordering::Relaxed);
        if entries.is_empty() {
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => return,
            }
            continue;
        }
        if let Err(e) = store.flush().await {
            tracing::error!(sink = name, error = %e, "cannot make outbox durable");
        }
        let (keys, jsons): (Vec<_>, Vec<_>) = entries.into_iter().unzip();
        match sink.deliver(&collector_id, &jsons).await {
            Ok(()) => {
                if let Err(e) = store.outbox_ack(&keys).await {
                    tracing::error!(sink = name, error = %e, "cannot remove delivered alerts");
                }
                delivered.fetch_add(keys.len() as u64, Ordering::Relaxed);
                backoff = Duration::from_millis(200);
            }
            Err(e) => {
                metrics.delivery_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(sink = name, error = %e, retry_in_ms = backoff.as_millis() as u64, "alert delivery failed; will retry");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return,
                }
                backoff = (backoff * 2).min(max_retry);
            }
        }
    }
}
