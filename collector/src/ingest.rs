//! The `Ingest/Stream` gRPC service and the group committer.
//!
//! Each stream has a reader (validates batches, hands them to the committer
//! in order) and an acker (answers in the same order once each batch is
//! durable). Both are tied by a bounded queue of `stream_queue` batches: when
//! commits or the engine fall behind, the reader stops reading and HTTP/2
//! flow control pushes back on the agent. The committer writes every waiting
//! batch of every stream, then makes them durable with one sled flush (group
//! commit), then acknowledges them all.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use outflow_core::shard::ShardMap;
use outflow_core::Event;
use outflow_pki::Role;
use outflow_proto::pb;
use outflow_proto::pb::ingest_server::Ingest;
use prost::Message;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::metrics::{Metrics, RejectReason};
use crate::store::{NewBatch, Store, StoreError};

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
    pub bytes: Vec<u8>,
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

#[tonic::async_trait]
impl Ingest for IngestService {
    type StreamStream = ReceiverStream<Result<pb::IngestReply, Status>>;

    async fn stream(
        &self,
        request: Request<Streaming<pb::Batch>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
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
                let batch = match inbound.message().await {
                    Ok(Some(b)) => b,
                    Ok(None) => break,
                    Err(s) => {
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
                let bytes = batch.encode_to_vec();
                let host = batch.host_id.clone();
                let sequence = batch.sequence;
                let dropped = batch.dropped_events;
                let events = match outflow_proto::batch_events(batch) {
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

/// The group committer: the only writer of the batch log. Two stages: this
/// loop decides duplicates and appends groups to sled; a flusher stage makes
/// everything appended so far durable with one flush and only then
/// acknowledges. While one flush runs, the next groups are appended, so the
/// fsync latency does not serialise ingest.
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
    let flusher = tokio::spawn(run_flusher(
        store.clone(),
        flush_rx,
        engines,
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
            Ok(())
        } else {
            let store = store.clone();
            match tokio::task::spawn_blocking(move || store.append(&fresh)).await {
                Ok(r) => r,
                Err(e) => Err(StoreError::Corrupt {
                    key: "append".into(),
                    reason: e.to_string(),
                }),
            }
        };
        match appended {
            Ok(()) => {
                if flush_tx.send(FlushJob { group, dup }).await.is_err() {
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
}

struct FlushJob {
    group: Vec<CommitRequest>,
    dup: Vec<bool>,
}

async fn run_flusher(
    store: Store,
    mut rx: mpsc::Receiver<FlushJob>,
    engines: crate::pipeline::EngineShards,
    metrics: Arc<Metrics>,
) {
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        while let Ok(j) = rx.try_recv() {
            jobs.push(j);
        }
        // One flush covers every group appended before it started.
        let result = store.flush().await;
        if result.is_ok() {
            metrics.group_commits.fetch_add(1, Ordering::Relaxed);
        } else if let Err(e) = &result {
            tracing::error!(error = %e, "sled flush failed; batches not acknowledged");
        }
        let mut to_engine = Vec::new();
        for job in jobs {
            for (r, is_dup) in job.group.into_iter().zip(job.dup) {
                match &result {
                    Ok(()) => {
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
                    Err(e) => {
                        let _ = r.reply.send(Err(e.to_string()));
                    }
                }
            }
        }
        for (host, events) in to_engine {
            metrics.engine_queue.fetch_add(1, Ordering::Relaxed);
            if engines.send(&host, DurableBatch { events }).await.is_err() {
                return;
            }
        }
    }
}
