//! The collector's own spans reach an OTLP/gRPC receiver (a real tonic
//! TraceService server in the test), with the service name and the span's
//! name and attributes; a refused configuration says why.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use outflow_collector::config::CollectorConfig;
use outflow_collector::selftrace;

#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
    headers: Arc<Mutex<Vec<String>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        if let Some(v) = req.metadata().get("x-tenant") {
            self.headers
                .lock()
                .unwrap()
                .push(v.to_str().unwrap_or("").to_string());
        }
        self.got.lock().unwrap().push(req.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn string_value(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> Option<String> {
    match v.as_ref()?.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        _ => None,
    }
}

#[test]
fn spans_are_exported_over_otlp_with_service_name_and_headers() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let receiver = Receiver::default();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = TraceServiceServer::new(receiver.clone());
    rt.spawn(async move {
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });

    let provider = {
        let _guard = rt.enter();
        selftrace::tracer_provider(
            &format!("http://{addr}"),
            &[("x-tenant".to_string(), "soc-7".to_string())],
            Duration::from_secs(5),
        )
        .unwrap()
    };
    let provider = selftrace::init("info", Some(provider)).unwrap();
    tracing::info_span!("batch_log_sync", groups = 3).in_scope(|| {
        tracing::info!("inside the span");
    });
    let _guard = rt.enter();
    provider.force_flush().unwrap();

    let t0 = Instant::now();
    let spans = loop {
        let got = receiver.got.lock().unwrap().clone();
        let spans: Vec<_> = got
            .iter()
            .flat_map(|r| &r.resource_spans)
            .flat_map(|rs| {
                let service = rs
                    .resource
                    .as_ref()
                    .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                    .and_then(|a| string_value(&a.value));
                rs.scope_spans
                    .iter()
                    .flat_map(|s| &s.spans)
                    .map(move |s| (service.clone(), s.clone()))
            })
            .collect();
        if !spans.is_empty() || t0.elapsed() > Duration::from_secs(20) {
            break spans;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (service, span) = spans
        .iter()
        .find(|(_, s)| s.name == "batch_log_sync")
        .unwrap_or_else(|| panic!("no batch_log_sync span among {spans:?}"));
    assert_eq!(service.as_deref(), Some(selftrace::SERVICE_NAME));
    let groups = span
        .attributes
        .iter()
        .find(|a| a.key == "groups")
        .and_then(|a| string_value(&a.value));
    assert_eq!(groups.as_deref(), Some("3"), "{span:?}");
    assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
    assert!(
        receiver
            .headers
            .lock()
            .unwrap()
            .iter()
            .any(|h| h == "soc-7"),
        "configured headers travel as gRPC metadata"
    );
    provider.shutdown().unwrap();
}

#[test]
fn a_tls_traces_endpoint_is_refused_with_the_reason() {
    let cfg = CollectorConfig {
        traces_endpoint: Some("https://otel.example:4317".into()),
        ..CollectorConfig::default()
    };
    let errs = cfg.validate().unwrap_err();
    assert!(
        errs.iter()
            .any(|e| e.contains("traces_endpoint") && e.contains("http://")),
        "{errs:?}"
    );
    let ok = CollectorConfig {
        traces_endpoint: Some("http://127.0.0.1:4317".into()),
        ..CollectorConfig::default()
    };
    assert!(ok.validate().is_ok(), "{:?}", ok.validate());
}
