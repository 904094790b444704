//! The collector's own diagnostics: log lines on stderr and, when an
//! endpoint is configured, its tracing spans exported over OTLP/gRPC with
//! the OpenTelemetry SDK (batched, off the request path).

use std::str::FromStr;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The service name spans carry.
pub const SERVICE_NAME: &str = "outflow-collector";

/// A tracer provider exporting spans to `endpoint` (`http://host:port`)
/// with `headers` as gRPC metadata. Must be called inside a tokio runtime:
/// the gRPC channel lives there.
pub fn tracer_provider(
    endpoint: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> anyhow::Result<SdkTracerProvider> {
    let mut metadata = tonic::metadata::MetadataMap::new();
    for (k, v) in headers {
        let key = tonic::metadata::MetadataKey::from_str(k)
            .map_err(|e| anyhow::anyhow!("OTLP header `{k}`: {e}"))?;
        let value = v
            .parse()
            .map_err(|e| anyhow::anyhow!("OTLP header `{k}`: {e}"))?;
        metadata.insert(key, value);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(timeout)
        .with_metadata(metadata)
        .build()
        .map_err(|e| anyhow::anyhow!("OTLP trace exporter for {endpoint}: {e}"))?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(SERVICE_NAME).build())
        .build())
}

/// Installs the process's subscriber: `RUST_LOG` (default `default_filter`)
/// selects what is logged on stderr and what is exported; with a provider,
/// spans also go over OTLP. Returns the provider, to flush on exit.
pub fn init(
    default_filter: &str,
    provider: Option<SdkTracerProvider>,
) -> Option<SdkTracerProvider> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(SERVICE_NAME)));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init();
    provider
}
