//! A minimal shipping client of the `Ingest` service: used by tests, the
//! benchmark and tools. (The endpoint agent has its own, with a spool.)

use std::time::Duration;

use outflow_core::Event;
use outflow_proto::pb;
use outflow_proto::pb::ingest_client::IngestClient;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// What became of a stream of batches.
#[derive(Debug, Default, Clone)]
pub struct ShipOutcome {
    /// (sequence, was a duplicate) per acknowledged batch, in order.
    pub acked: Vec<(u64, bool)>,
    pub redirect: Option<pb::Redirect>,
}

/// Connects to a collector over mutual TLS (`endpoint` like
/// `https://127.0.0.1:7201`).
pub async fn connect(
    endpoint: &str,
    tls: ClientTlsConfig,
) -> Result<IngestClient<Channel>, tonic::transport::Error> {
    let ch = Endpoint::from_shared(endpoint.to_string())?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?;
    Ok(IngestClient::new(ch).max_decoding_message_size(16 << 20))
}

/// Splits one host's events into batches of `per_batch`, numbered from
/// `first_seq`.
pub fn batches_for(
    host: &str,
    events: &[Event],
    per_batch: usize,
    first_seq: u64,
) -> Vec<pb::Batch> {
    events
        .chunks(per_batch.max(1))
        .enumerate()
        .map(|(i, chunk)| pb::Batch {
            host_id: host.to_string(),
            sequence: first_seq + i as u64,
            sealed_unix_ms: 0,
            events: chunk.iter().map(outflow_proto::event_to_pb).collect(),
            dropped_events: 0,
            agent_version: "shipper".into(),
        })
        .collect()
}

/// Streams `batches` on one `Ingest/Stream` call and waits for every
/// acknowledgement (or a redirect, or the refusal status).
pub async fn ship(
    client: &mut IngestClient<Channel>,
    batches: Vec<pb::Batch>,
) -> Result<ShipOutcome, tonic::Status> {
    let n = batches.len();
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        for b in batches {
            if tx.send(b).await.is_err() {
                break;
            }
        }
        // Keep the request stream open until the replies are in: dropping
        // `tx` half-closes it, which is fine for the server.
    });
    let mut replies = client.stream(ReceiverStream::new(rx)).await?.into_inner();
    let mut out = ShipOutcome::default();
    while out.acked.len() < n {
        match replies.message().await? {
            Some(pb::IngestReply {
                kind: Some(pb::ingest_reply::Kind::Ack(a)),
            }) => out.acked.push((a.durable_through, a.duplicates > 0)),
            Some(pb::IngestReply {
                kind: Some(pb::ingest_reply::Kind::Redirect(r)),
            }) => {
                out.redirect = Some(r);
                break;
            }
            Some(_) => {}
            None => break,
        }
    }
    Ok(out)
}
