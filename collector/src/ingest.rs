//! The `Ingest/Stream` gRPC service and the group committer.
//!
//! Each stream has a reader (validates batches, hands them to the committer
//! in order) and an acker (answers in the same order once each batch is
//! durable). Both are tied by a bounded queue of `stream_queue` batches: when
//! commits or the engine fall behind, the reader stops reading and HTTP/2
//! flow control pushes back on the agent. The committer appends every waiting
//! batch of every stream to the batch log as received (the prost bytes, not
//! re-encoded), a flusher makes them durable with one `fdatasync` (group
//! commit) and acknowledges them all, and only then are they indexed in sled
//! and handed to the engines, off the acknowledgement path.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::{Buf, Bytes};
use outflow_core::shard::ShardMap;
use outflow_core::Event;
use outflow_pki::Role;
use outflow_proto::pb;
use prost::Message;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{http, Body, BoxFuture, Context, Poll, Service, StdError};
use tonic::{Request, Response, Status, Streaming};

use crate::metrics::{Metrics, RejectReason};
use crate::store::{IndexEntry, NewBatch, Store, StoreError};

/// What the engine task receives from ingest.
pub struct DurableBatch {
    pub events: Vec<Event>,
}

/// A batch waiting for its group commit.
pub struct CommitRequest {
    pub host: String,
    pub sequence: u64,
    pub arrival_ms: i64,
    pub min_ts: i64,
    pub max_ts: i64,
    pub bytes: Bytes,
    pub events: Vec<Event>,
    pub dropped: u64,
    pub reply: oneshot::Sender<Result<bool, String>>,
}

/// Limits of the ingest service.
#[derive(Clone, Debug)]
pub struct IngestLimits {
    pub max_batch_events: usize,
    pub stream_queue: usize,
}

/// Shared view of who owns which host.
pub type SharedShardMap = Arc<RwLock<ShardMap>>;

pub struct IngestService {
    pub collector_id: String,
    pub limits: IngestLimits,
    pub commit_tx: mpsc::Sender<CommitRequest>,
    pub shard_map: SharedShardMap,
    pub metrics: Arc<Metrics>,
    pub streams: Arc<Semaphore>,
}

enum Pending {
    Commit {
        host: String,
        sequence: u64,
        rx: oneshot::Receiver<Result<bool, String>>,
    },
    Reply(pb::IngestReply),
    Error(Status),
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl IngestService {
    /// One agent stream (`outflow.v1.Ingest/Stream`).
    pub async fn stream(
        &self,
        request: Request<Streaming<RawBatch>>,
    ) -> Result<Response<ReceiverStream<Result<pb::IngestReply, Status>>>, Status> {
        let metrics = self.metrics.clone();
        let peer = outflow_pki::peer_identity(&request).inspect_err(|_| {
            metrics.reject(RejectReason::Unauthenticated);
        })?;
        if !matches!(peer.role, Role::Agent | Role::Importer) {
            metrics.reject(RejectReason::RoleNotAllowed);
            return Err(Status::permission_denied(format!(
                "{peer} may not send telemetry: an agent or importer certificate is required"
            )));
        }
        let permit = self.streams.clone().try_acquire_owned().map_err(|_| {
            metrics.reject(RejectReason::Overloaded);
            Status::resource_exhausted("too many open ingest streams; retry later")
        })?;
        let mut inbound = request.into_inner();
        let q = self.limits.stream_queue.max(1);
        let (reply_tx, reply_rx) = mpsc::channel(q);
        let (pending_tx, mut pending_rx) = mpsc::channel::<Pending>(q);
        let limits = self.limits.clone();
        let commit_tx = self.commit_tx.clone();
        let shard_map = self.shard_map.clone();
        let me = self.collector_id.clone();
        let m = metrics.clone();
        metrics.streams_open.fetch_add(1, Ordering::Relaxed);

        // Reader: validate and hand over to the committer, in order.
        tokio::spawn(async move {
            let _permit = permit;
            loop {
                let RawBatch { bytes, batch } = match inbound.message().await {
                    Ok(Some(b)) => b,
                    Ok(None) => break,
                    Err(s) => {
                        if s.message().starts_with(UNDECODABLE) {
                            m.reject(RejectReason::Malformed);
                            let _ = pending_tx.send(Pending::Error(s)).await;
                            break;
                        }
                        let too_big = s.message().contains("too large");
                        if too_big {
                            m.reject(RejectReason::TooLarge);
                            let _ = pending_tx
                                .send(Pending::Error(Status::resource_exhausted(format!(
                                    "batch refused: {}",
                                    s.message()
                                ))))
                                .await;
                        }
                        break;
                    }
                };
                match check_batch(&peer, &batch, &limits, &shard_map, &me) {
                    Ok(None) => {}
                    Ok(Some(redirect)) => {
                        m.reject(RejectReason::NotOwner);
                        let _ = pending_tx
                            .send(Pending::Reply(pb::IngestReply {
                                kind: Some(pb::ingest_reply::Kind::Redirect(redirect)),
                            }))
                            .await;
                        break;
                    }
                    Err((reason, status)) => {
                        m.reject(reason);
                        let _ = pending_tx.send(Pending::Error(status)).await;
                        break;
                    }
                }
                let host = batch.host_id.clone();
                let sequence = batch.sequence;
                let dropped = batch.dropped_events;
                let events = match batch_events(batch) {
                    Ok(e) => e,
                    Err(e) => {
                        m.reject(RejectReason::Malformed);
                        let _ = pending_tx
                            .send(Pending::Error(Status::invalid_argument(format!(
                                "batch {sequence} of host {host}: {e}"
                            ))))
                            .await;
                        break;
                    }
                };
                let (min_ts, max_ts) = events.iter().fold((i64::MAX, i64::MIN), |(lo, hi), e| {
                    let t = e.ts().as_micros();
                    (lo.min(t), hi.max(t))
                });
                let (min_ts, max_ts) = if events.is_empty() {
                    (0, 0)
                } else {
                    (min_ts, max_ts)
                };
                let (tx, rx) = oneshot::channel();
                let req = CommitRequest {
                    host: host.clone(),
                    sequence,
                    arrival_ms: now_ms(),
                    min_ts,
                    max_ts,
                    bytes,
                    events,
                    dropped,
                    reply: tx,
                };
                m.ingest_queue.fetch_add(1, Ordering::Relaxed);
                if commit_tx.send(req).await.is_err() {
                    m.ingest_queue.fetch_sub(1, Ordering::Relaxed);
                    let _ = pending_tx
                        .send(Pending::Error(Status::unavailable(
                            "collector shutting down",
                        )))
                        .await;
                    break;
                }
                if pending_tx
                    .send(Pending::Commit { host, sequence, rx })
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });

        // Acker: answer in order once durable.
        let m = metrics.clone();
        tokio::spawn(async move {
            while let Some(p) = pending_rx.recv().await {
                let msg = match p {
                    Pending::Commit { host, sequence, rx } => match rx.await {
                        Ok(Ok(duplicate)) => Ok(pb::IngestReply {
                            kind: Some(pb::ingest_reply::Kind::Ack(pb::Ack {
                                host_id: host,
                                durable_through: sequence,
                                duplicates: u32::from(duplicate),
                            })),
                        }),
                        Ok(Err(e)) => Err(Status::unavailable(format!(
                            "batch {sequence} not stored ({e}); resend it"
                        ))),
                        Err(_) => Err(Status::unavailable(
                            "collector shutting down; resend unacknowledged batches",
                        )),
                    },
                    Pending::Reply(r) => Ok(r),
                    Pending::Error(s) => Err(s),
                };
                let stop = msg.is_err()
                    || matches!(
                        &msg,
                        Ok(pb::IngestReply {
                            kind: Some(pb::ingest_reply::Kind::Redirect(_))
                        })
                    );
                if reply_tx.send(msg).await.is_err() || stop {
                    break;
                }
            }
            m.streams_open.fetch_sub(1, Ordering::Relaxed);
        });

        Ok(Response::new(ReceiverStream::new(reply_rx)))
    }
}

const UNDECODABLE: &str = "batch does not decode";

/// The events of a batch (as `outflow_proto::batch_events`, into a vector
/// sized once: growing it moved every event several times).
pub fn batch_events(batch: pb::Batch) -> Result<Vec<Event>, outflow_proto::ConvertError> {
    let host = batch.host_id;
    let mut out = Vec::with_capacity(batch.events.len());
    for (i, e) in batch.events.into_iter().enumerate() {
        out.push(outflow_proto::event_from_pb(&host, i, e)?);
    }
    Ok(out)
}

/// A batch as received: its prost bytes (stored in the batch log as they
/// are, a reference-counted slice of the receive buffer) and the decoded
/// message.
pub struct RawBatch {
    pub bytes: Bytes,
    pub batch: pb::Batch,
}

/// The ingest codec: decodes `Batch` and keeps its bytes; encodes replies
/// with prost.
#[derive(Clone, Copy, Default)]
pub struct IngestCodec;

pub struct ReplyEncoder;
pub struct RawBatchDecoder;

impl Codec for IngestCodec {
    type Encode = pb::IngestReply;
    type Decode = RawBatch;
    type Encoder = ReplyEncoder;
    type Decoder = RawBatchDecoder;
    fn encoder(&mut self) -> ReplyEncoder {
        ReplyEncoder
    }
    fn decoder(&mut self) -> RawBatchDecoder {
        RawBatchDecoder
    }
}

impl Encoder for ReplyEncoder {
    type Item = pb::IngestReply;
    type Error = Status;
    fn encode(&mut self, item: pb::IngestReply, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(buf)
            .map_err(|e| Status::internal(format!("encoding a reply: {e}")))
    }
}

impl Decoder for RawBatchDecoder {
    type Item = RawBatch;
    type Error = Status;
    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<RawBatch>, Status> {
        let bytes = buf.copy_to_bytes(buf.remaining());
        let batch = pb::Batch::decode(bytes.clone())
            .map_err(|e| Status::invalid_argument(format!("{UNDECODABLE}: {e}")))?;
        Ok(Some(RawBatch { bytes, batch }))
    }
}

/// The `outflow.v1.Ingest` gRPC service (wire-compatible with the generated
/// `IngestServer`, which would decode a `Batch` we then re-encode to store).
#[derive(Clone)]
pub struct IngestServer {
    inner: Arc<IngestService>,
    max_decoding_message_size: usize,
}

impl IngestServer {
    pub fn new(svc: IngestService, max_decoding_message_size: usize) -> Self {
        IngestServer {
            inner: Arc::new(svc),
            max_decoding_message_size,
        }
    }
}

impl tonic::server::NamedService for IngestServer {
    const NAME: &'static str = "outflow.v1.Ingest";
}

struct StreamMethod(Arc<IngestService>);

impl tonic::server::StreamingService<RawBatch> for StreamMethod {
    type Response = pb::IngestReply;
    type ResponseStream = ReceiverStream<Result<pb::IngestReply, Status>>;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;
    fn call(&mut self, request: Request<Streaming<RawBatch>>) -> Self::Future {
        let inner = self.0.clone();
        Box::pin(async move { inner.stream(request).await })
    }
}

impl<B> Service<http::Request<B>> for IngestServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let inner = self.inner.clone();
        let max = self.max_decoding_message_size;
        if req.uri().path() != "/outflow.v1.Ingest/Stream" {
            return Box::pin(async move {
                let mut response = http::Response::new(tonic::body::Body::default());
                let h = response.headers_mut();
                h.insert(
                    Status::GRPC_STATUS,
                    (tonic::Code::Unimplemented as i32).into(),
                );
                h.insert(
                    http::header::CONTENT_TYPE,
                    tonic::metadata::GRPC_CONTENT_TYPE,
                );
                Ok(response)
            });
        }
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(IngestCodec)
                .apply_max_message_size_config(Some(max), None);
            Ok(grpc.streaming(StreamMethod(inner), req).await)
        })
    }
}

/// Checks one batch against the peer's identity, the limits and the shard
/// map. `Ok(Some(redirect))` when another collector owns the host.
fn check_batch(
    peer: &outflow_pki::PeerIdentity,
    batch: &pb::Batch,
    limits: &IngestLimits,
    shard_map: &SharedShardMap,
    me: &str,
) -> Result<Option<pb::Redirect>, (RejectReason, Status)> {
    if batch.host_id.is_empty() {
        return Err((
            RejectReason::Malformed,
            Status::invalid_argument(format!("batch {}: host_id is empty", batch.sequence)),
        ));
    }
    if batch.host_id != peer.name && peer.role != Role::Importer {
        return Err((
            RejectReason::HostMismatch,
            Status::permission_denied(format!(
                "certificate of host `{}` may not send telemetry for host `{}`",
                peer.name, batch.host_id
            )),
        ));
    }
    if batch.sequence == 0 {
        return Err((
            RejectReason::SequenceZero,
            Status::invalid_argument(format!(
                "host {}: batch sequence must start at 1",
                batch.host_id
            )),
        ));
    }
    if batch.events.len() > limits.max_batch_events {
        return Err((
            RejectReason::TooManyEvents,
            Status::invalid_argument(format!(
                "batch {} of host {} has {} events; at most {} per batch",
                batch.sequence,
                batch.host_id,
                batch.events.len(),
                limits.max_batch_events
            )),
        ));
    }
    let map = shard_map.read().unwrap_or_else(|e| e.into_inner());
    if let Some(owner) = map.owner(&batch.host_id) {
        if owner.collector_id != me {
            return Ok(Some(pb::Redirect {
                host_id: batch.host_id.clone(),
                owner_id: owner.collector_id.clone(),
                endpoint: owner.endpoint.clone(),
                shard_map_version: map.version,
            }));
        }
    }
    Ok(None)
}

/// The group committer: the only writer of the batch log. Stages: this loop
/// decides duplicates and appends groups to the log; a flusher makes
/// everything appended so far durable with one `fdatasync` and only then
/// acknowledges; an indexer then records the durable batches in sled
/// (evidence index, high-water marks) while the engines get their events.
/// While one sync runs, the next groups are appended, so the sync latency
/// does not serialise ingest.
pub async fn run_committer(
    store: Store,
    mut rx: mpsc::Receiver<CommitRequest>,
    engines: crate::pipeline::EngineShards,
    metrics: Arc<Metrics>,
    mut high_water: HashMap<String, u64>,
    gather: Duration,
    max_group: usize,
) {
    let (flush_tx, flush_rx) = mpsc::channel::<FlushJob>(64);
    let (index_tx, index_rx) = mpsc::channel::<Vec<IndexEntry>>(64);
    let indexer = tokio::spawn(run_indexer(store.clone(), index_rx));
    let flusher = tokio::spawn(run_flusher(
        store.clone(),
        flush_rx,
        engines,
        index_tx,
        metrics.clone(),
    ));
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        let deadline = tokio::time::Instant::now() + gather;
        while group.len() < max_group {
            match rx.try_recv() {
                Ok(r) => group.push(r),
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    if gather.is_zero() {
                        break;
                    }
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(r)) => group.push(r),
                        _ => break,
                    }
                }
            }
        }
        metrics
            .ingest_queue
            .fetch_sub(group.len() as i64, Ordering::Relaxed);
        // Decide duplicates in arrival order (a resend within the group too).
        let mut fresh = Vec::new();
        let mut dup = Vec::with_capacity(group.len());
        let mut new_hw: Vec<(String, u64)> = Vec::new();
        for r in &mut group {
            let hw = high_water.get(&r.host).copied().unwrap_or(0);
            if r.sequence <= hw {
                dup.push(true);
            } else {
                dup.push(false);
                high_water.insert(r.host.clone(), r.sequence);
                new_hw.push((r.host.clone(), r.sequence));
                fresh.push(NewBatch {
                    host: r.host.clone(),
                    sequence: r.sequence,
                    arrival_ms: r.arrival_ms,
                    min_ts: r.min_ts,
                    max_ts: r.max_ts,
                    bytes: std::mem::take(&mut r.bytes),
                });
            }
        }
        let appended = if fresh.is_empty() {
            Ok(Vec::new())
        } else {
            let store = store.clone();
            match tokio::task::spawn_blocking(move || {
                let idxs = store.append(&fresh)?;
                Ok(fresh
                    .into_iter()
                    .zip(idxs)
                    .map(|(b, idx)| IndexEntry {
                        idx,
                        host: b.host,
                        sequence: b.sequence,
                        min_ts: b.min_ts,
                        max_ts: b.max_ts,
                    })
                    .collect::<Vec<_>>())
            })
            .await
            {
                Ok(r) => r,
                Err(e) => Err(StoreError::Corrupt {
                    key: "append".into(),
                    reason: e.to_string(),
                }),
            }
        };
        match appended {
            Ok(index) => {
                if flush_tx.send(FlushJob { group, dup, index }).await.is_err() {
                    tracing::error!("the batch log cannot be made durable; ingest stopped (restart the collector)");
                    break;
                }
            }
            Err(e) => {
                tracing::error!(error = %e, batches = group.len(), "group commit failed; agents will resend");
                // Not stored: forget the high-water marks so resends are taken.
                for (h, s) in &new_hw {
                    if high_water.get(h) == Some(s) {
                        high_water.remove(h);
                    }
                }
                if let Ok(stored) = store.load_high_water() {
                    for (h, s) in stored {
                        high_water.entry(h).or_insert(s);
                    }
                }
                for r in group {
                    let _ = r.reply.send(Err(e.to_string()));
                }
            }
        }
    }
    drop(flush_tx);
    let _ = flusher.await;
    let _ = indexer.await;
}

struct FlushJob {
    group: Vec<CommitRequest>,
    dup: Vec<bool>,
    index: Vec<IndexEntry>,
}

async fn run_flusher(
    store: Store,
    mut rx: mpsc::Receiver<FlushJob>,
    engines: crate::pipeline::EngineShards,
    index_tx: mpsc::Sender<Vec<IndexEntry>>,
    metrics: Arc<Metrics>,
) {
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        while let Ok(j) = rx.try_recv() {
            jobs.push(j);
        }
        // One fdatasync covers every group appended before it started.
        let s = store.clone();
        let span = tracing::info_span!("batch_log_sync", groups = jobs.len());
        let result = match tracing::Instrument::instrument(
            tokio::task::spawn_blocking(move || s.sync_log()),
            span,
        )
        .await
        {
            Ok(r) => r,
            Err(e) => Err(StoreError::Corrupt {
                key: "sync".into(),
                reason: e.to_string(),
            }),
        };
        if let Err(e) = &result {
            // After a failed fdatasync the kernel may have dropped the dirty
            // pages: nothing written since the last good sync can be trusted
            // to be durable, and the committer's dedup marks already count
            // it. Refuse everything and stop; a restart rereads the log.
            tracing::error!(error = %e, "batch log sync failed; batches not acknowledged, ingest stops (restart the collector)");
            for job in jobs {
                for r in job.group {
                    let _ = r.reply.send(Err(e.to_string()));
                }
            }
            rx.close();
            while let Some(job) = rx.recv().await {
                for r in job.group {
                    let _ = r.reply.send(Err(e.to_string()));
                }
            }
            return;
        }
        metrics.group_commits.fetch_add(1, Ordering::Relaxed);
        let mut to_engine = Vec::new();
        let mut index = Vec::new();
        for job in jobs {
            index.extend(job.index);
            for (r, is_dup) in job.group.into_iter().zip(job.dup) {
                if is_dup {
                    metrics.duplicate_batches.fetch_add(1, Ordering::Relaxed);
                } else {
                    metrics.batches.fetch_add(1, Ordering::Relaxed);
                    metrics
                        .samples
                        .fetch_add(r.events.len() as u64, Ordering::Relaxed);
                    metrics
                        .agent_dropped_events
                        .fetch_add(r.dropped, Ordering::Relaxed);
                }
                let _ = r.reply.send(Ok(is_dup));
                if !is_dup {
                    to_engine.push((r.host, r.events));
                }
            }
        }
        if !index.is_empty() {
            let _ = index_tx.send(index).await;
        }
        for (host, events) in to_engine {
            metrics.engine_queue.fetch_add(1, Ordering::Relaxed);
            if engines.send(&host, DurableBatch { events }).await.is_err() {
                return;
            }
        }
    }
}

/// Records durable batches in sled (evidence index, high-water marks), off
/// the acknowledgement path; the log replay on start repairs what a crash
/// left out.
async fn run_indexer(store: Store, mut rx: mpsc::Receiver<Vec<IndexEntry>>) {
    while let Some(mut entries) = rx.recv().await {
        while let Ok(more) = rx.try_recv() {
            entries.extend(more);
        }
        let s = store.clone();
        match tokio::task::spawn_blocking(move || s.index(&entries)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot index durable batches (evidence); the next start re-indexes them")
            }
            Err(e) => tracing::error!(error = %e, "index task failed"),
        }
    }
}
