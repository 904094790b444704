//! Alerts as OTLP log records (DESIGN.md section 4) and their export with
//! the official opentelemetry-proto gRPC client. We call `LogsService/Export`
//! directly (not the SDK's batching processor) so an alert leaves the durable
//! outbox only once the receiver has confirmed it.

use std::str::FromStr;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use outflow_core::alert::Alert;
use outflow_core::Timestamp;
use tonic::metadata::{MetadataKey, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// The `event.name` of every alert record.
pub const EVENT_NAME: &str = "outflow.alert";

fn s(v: impl Into<String>) -> AnyValue {
    AnyValue {
        value: Some(Value::StringValue(v.into())),
    }
}
fn i(v: i64) -> AnyValue {
    AnyValue {
        value: Some(Value::IntValue(v)),
    }
}
fn d(v: f64) -> AnyValue {
    AnyValue {
        value: Some(Value::DoubleValue(v)),
    }
}
fn kv(k: &str, v: AnyValue) -> KeyValue {
    KeyValue {
        key: k.to_string(),
        value: Some(v),
        ..Default::default()
    }
}
fn kvlist(items: Vec<KeyValue>) -> AnyValue {
    AnyValue {
        value: Some(Value::KvlistValue(KeyValueList { values: items })),
    }
}
fn array(items: Vec<AnyValue>) -> AnyValue {
    AnyValue {
        value: Some(Value::ArrayValue(ArrayValue { values: items })),
    }
}
fn u64_attr(v: u64) -> AnyValue {
    i(i64::try_from(v).unwrap_or(i64::MAX))
}

/// One alert as an OTLP log record: section 4 attributes, severity, the
/// one-line summary as body, `window_end` as timestamp, event name
/// `outflow.alert` (both the record field and the `event.name` attribute).
pub fn alert_to_log_record(a: &Alert, observed_unix_nanos: u64) -> LogRecord {
    let mut attrs = vec![
        kv("event.name", s(EVENT_NAME)),
        kv("outflow.alert.id", s(&a.id)),
        kv("outflow.analytic", s(&a.analytic)),
        kv("host.name", s(&a.host)),
        kv("process.pid", i(i64::from(a.pid))),
    ];
    if let Some(p) = a.ppid {
        attrs.push(kv("process.parent_pid", i(i64::from(p))));
    }
    attrs.push(kv("process.executable.name", s(&a.app)));
    if let Some(v) = &a.exe {
        attrs.push(kv("process.executable.path", s(v)));
    }
    if let Some(v) = &a.cmdline {
        attrs.push(kv("process.command_line", s(v)));
    }
    if let Some(v) = &a.user {
        attrs.push(kv("user.name", s(v)));
    }
    if let Some(v) = &a.parent_app {
        attrs.push(kv("outflow.parent.executable.name", s(v)));
    }
    attrs.push(kv("outflow.window.start", s(&a.window_start)));
    attrs.push(kv("outflow.window.end", s(&a.window_end)));
    attrs.push(kv("outflow.bytes_out", u64_attr(a.bytes_out)));
    attrs.push(kv("outflow.bytes_in", u64_attr(a.bytes_in)));
    attrs.push(kv("outflow.ratio", d(a.ratio)));
    attrs.push(kv("outflow.service", s(&a.service)));
    attrs.push(kv(
        "outflow.destinations",
        array(
            a.destinations
                .iter()
                .map(|x| {
                    let mut items = vec![kv("ip", s(&x.ip)), kv("port", i(i64::from(x.port)))];
                    if let Some(dm) = &x.domain {
                        items.push(kv("domain", s(dm)));
                    }
                    items.push(kv("service", s(&x.service)));
                    items.push(kv("bytes_out", u64_attr(x.bytes_out)));
                    items.push(kv("bytes_in", u64_attr(x.bytes_in)));
                    kvlist(items)
                })
                .collect(),
        ),
    ));
    attrs.push(kv("outflow.score", d(a.score)));
    attrs.push(kv(
        "outflow.reasons",
        array(
            a.reasons
                .iter()
                .map(|r| {
                    kvlist(vec![
                        kv("factor", s(&r.factor)),
                        kv("value", d(r.value)),
                        kv("peers", u64_attr(r.peers)),
                        kv("percentile", d(r.percentile)),
                        kv("contribution", d(r.contribution)),
                        kv("detail", s(&r.detail)),
                    ])
                })
                .collect(),
        ),
    ));
    let ts = Timestamp::parse_rfc3339(&a.window_end)
        .map(|t| u64::try_from(t.as_micros()).unwrap_or(0) * 1000)
        .unwrap_or(0);
    LogRecord {
        time_unix_nano: ts,
        observed_time_unix_nano: observed_unix_nanos,
        severity_number: a.severity.otlp_number(),
        severity_text: a.severity.as_str().to_string(),
        body: Some(s(a.summary())),
        attributes: attrs,
        event_name: EVENT_NAME.to_string(),
        ..Default::default()
    }
}

/// An Export request carrying `alerts` from collector `collector_id`.
pub fn export_request(collector_id: &str, alerts: &[Alert]) -> ExportLogsServiceRequest {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", s("outflow-collector")),
                    kv("service.instance.id", s(collector_id)),
                    kv("service.version", s(env!("CARGO_PKG_VERSION"))),
                ],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope {
                    name: "outflow".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                log_records: alerts.iter().map(|a| alert_to_log_record(a, now)).collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// Export errors.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("OTLP endpoint `{0}`: {1}")]
    Config(String, String),
    #[error("OTLP export to {0} failed: {1}")]
    Failed(String, String),
}

/// A gRPC OTLP logs exporter with configured headers.
pub struct OtlpExporter {
    endpoint: String,
    channel: Channel,
    headers: Vec<(
        MetadataKey<tonic::metadata::Ascii>,
        MetadataValue<tonic::metadata::Ascii>,
    )>,
    timeout: Duration,
}

impl OtlpExporter {
    /// `endpoint` is `http://host:port` or `https://host:port`; for https,
    /// `ca_pem` is the trusted CA bundle. Connects lazily.
    pub fn new(
        endpoint: &str,
        headers: &[(String, String)],
        ca_pem: Option<String>,
        timeout: Duration,
    ) -> Result<Self, ExportError> {
        let cfg = |e: String| ExportError::Config(endpoint.to_string(), e);
        let mut ep = Endpoint::from_shared(endpoint.to_string())
            .map_err(|e| cfg(e.to_string()))?
            .connect_timeout(Duration::from_secs(3))
            .timeout(timeout);
        if endpoint.starts_with("https://") {
            outflow_pki::install_ring_provider();
            let mut tls = ClientTlsConfig::new();
            if let Some(ca) = ca_pem {
                tls = tls.ca_certificate(Certificate::from_pem(ca));
            }
            ep = ep.tls_config(tls).map_err(|e| cfg(e.to_string()))?;
        }
        let mut hs = Vec::new();
        for (k, v) in headers {
            let key = MetadataKey::from_str(k).map_err(|e| cfg(format!("header `{k}`: {e}")))?;
            let val = MetadataValue::from_str(v).map_err(|e| cfg(format!("header `{k}`: {e}")))?;
            hs.push((key, val));
        }
        Ok(OtlpExporter {
            endpoint: endpoint.to_string(),
            channel: ep.connect_lazy(),
            headers: hs,
            timeout,
        })
    }

    /// Sends one Export call; Ok only when the receiver accepted it.
    pub async fn export(&self, req: ExportLogsServiceRequest) -> Result<(), ExportError> {
        let mut client = LogsServiceClient::new(self.channel.clone());
        let mut r = tonic::Request::new(req);
        r.set_timeout(self.timeout);
        for (k, v) in &self.headers {
            r.metadata_mut().insert(k.clone(), v.clone());
        }
        let records: usize = r
            .get_ref()
            .resource_logs
            .iter()
            .flat_map(|rl| &rl.scope_logs)
            .map(|sl| sl.log_records.len())
            .sum();
        let span = tracing::info_span!("otlp_alert_export", records);
        let resp = tracing::Instrument::instrument(client.export(r), span)
            .await
            .map_err(|e| ExportError::Failed(self.endpoint.clone(), e.to_string()))?;
        if let Some(p) = resp.into_inner().partial_success {
            if p.rejected_log_records > 0 {
                return Err(ExportError::Failed(
                    self.endpoint.clone(),
                    format!(
                        "receiver rejected {} records: {}",
                        p.rejected_log_records, p.error_message
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outflow_core::alert::{Destination, Reason, Severity};

    pub(crate) fn sample_alert() -> Alert {
        Alert {
            id: "abc".into(),
            analytic: "AN1511".into(),
            host: "ws-1".into(),
            pid: 42,
            ppid: Some(7),
            app: "winword.exe".into(),
            exe: Some("C:\\Office\\WINWORD.EXE".into()),
            cmdline: None,
            user: Some("alice".into()),
            parent_app: Some("explorer.exe".into()),
            window_start: "2024-05-01T12:00:00Z".into(),
            window_end: "2024-05-01T12:01:00Z".into(),
            bytes_out: 190_000_000,
            bytes_in: 400_000,
            ratio: 475.0,
            service: "dropbox".into(),
            destinations: vec![Destination {
                ip: "162.125.1.1".into(),
                port: 443,
                domain: Some("content.dropboxapi.com".into()),
                service: "dropbox".into(),
                bytes_out: 190_000_000,
                bytes_in: 400_000,
            }],
            score: 12.5,
            severity: Severity::Critical,
            reasons: vec![Reason {
                factor: "volume".into(),
                value: 1.9e8,
                peers: 120,
                percentile: 99.9,
                contribution: 3.0,
                detail: "x".into(),
            }],
            kind: "window".into(),
            baseline: "established".into(),
            process_start: None,
        }
    }

    #[test]
    fn record_carries_contract_attributes() {
        let a = sample_alert();
        let r = alert_to_log_record(&a, 5);
        assert_eq!(r.severity_text, "critical");
        assert_eq!(r.severity_number, 21);
        assert_eq!(r.event_name, "outflow.alert");
        assert_eq!(r.time_unix_nano, 1_714_564_860_000_000_000);
        let get = |k: &str| {
            r.attributes
                .iter()
                .find(|x| x.key == k)
                .map(|x| x.value.clone())
        };
        assert!(matches!(
            get("process.pid").flatten().and_then(|v| v.value),
            Some(Value::IntValue(42))
        ));
        assert!(matches!(
            get("outflow.ratio").flatten().and_then(|v| v.value),
            Some(Value::DoubleValue(_))
        ));
        assert!(get("process.command_line").is_none(), "absent when unknown");
        assert!(matches!(
            get("outflow.destinations").flatten().and_then(|v| v.value),
            Some(Value::ArrayValue(ref arr)) if arr.values.len() == 1
        ));
        match r.body.and_then(|b| b.value) {
            Some(Value::StringValue(b)) => assert!(b.starts_with("winword.exe on ws-1 sent")),
            other => panic!("body {other:?}"),
        }
    }
}
