//! A running aggregator node: the Raft replica on its own thread (the Ready
//! loop with group commit), driven through a channel by the async world
//! (gRPC services, the admin API) via a cloneable [`NodeHandle`].

pub mod transport;

use crate::raft::eraftpb::{ConfChangeType, ConfChangeV2, Message};
use crate::raft::{
    single_change, AppliedKind, Bootstrap, ConfChangeContext, Disk, PersistJob, RaftLog, Replica,
    ReplicaConfig, ReplicaCounters, ReplicaError, ReplicaStatus,
};
use crate::state::{codec, Command, FleetState, Outcome};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

/// Where the replica's outgoing messages go (from the Raft thread and the
/// log writer thread).
pub trait Transport: Send + Sync + 'static {
    fn send(&self, msgs: Vec<Message>);
}

/// Requests to the Raft thread.
pub enum Input {
    Raft(Message),
    Propose {
        data: Vec<u8>,
        reply: oneshot::Sender<Result<Proposed, ProposeError>>,
    },
    ReadIndex {
        reply: oneshot::Sender<Result<u64, ProposeError>>,
    },
    ConfChange {
        cc: ConfChangeV2,
        address: Option<String>,
        reply: oneshot::Sender<Result<Proposed, ProposeError>>,
    },
    TransferLeader {
        to: u64,
    },
    SnapshotReport {
        to: u64,
        ok: bool,
    },
    Unreachable(u64),
    /// The log writer made ready `number` durable with `syncs` fsyncs.
    Persisted {
        number: u64,
        syncs: u64,
    },
    /// The log writer failed: the node must stop.
    WriterFailed(String),
    Shutdown,
}

/// A committed and applied proposal.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Proposed {
    pub index: u64,
    pub term: u64,
    pub outcome: Option<Outcome>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProposeError {
    #[error("no Raft leader is known right now; retry shortly")]
    NoLeader,
    #[error("this node is not the leader (leader: {0}); send the request there")]
    NotLeader(u64),
    #[error("not committed within the proposal timeout (leader change or partition?); retry")]
    Timeout,
    #[error("the aggregator node is shutting down")]
    Stopped,
    #[error("membership change refused: {0}")]
    Refused(String),
    #[error("bad request: {0}")]
    Invalid(String),
}

/// What the node publishes after every loop turn.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct NodeStatus {
    pub id: u64,
    pub role: String,
    pub leader: u64,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub first_index: u64,
    pub last_index: u64,
    pub snapshot_index: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    pub proposals: u64,
    pub proposals_dropped: u64,
    pub entries_applied: u64,
    pub snapshots_taken: u64,
    pub snapshots_installed: u64,
    pub last_snapshot_bytes: u64,
    pub disk_writes: u64,
    pub fatal: Option<String>,
}

impl NodeStatus {
    fn from(s: ReplicaStatus, c: &ReplicaCounters) -> Self {
        NodeStatus {
            id: s.id,
            role: s.role.to_string(),
            leader: s.leader,
            term: s.term,
            commit_index: s.commit_index,
            applied_index: s.applied_index,
            first_index: s.first_index,
            last_index: s.last_index,
            snapshot_index: s.snapshot_index,
            voters: s.voters,
            learners: s.learners,
            proposals: c.proposals,
            proposals_dropped: c.proposals_dropped,
            entries_applied: c.entries_applied,
            snapshots_taken: c.snapshots_taken,
            snapshots_installed: c.snapshots_installed,
            last_snapshot_bytes: c.last_snapshot_bytes,
            disk_writes: c.disk_writes,
            fatal: None,
        }
    }
}

/// Driver settings.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub replica: ReplicaConfig,
    pub tick: Duration,
    pub bootstrap: Option<Bootstrap>,
    pub proposal_timeout: Duration,
    /// Collectors silent this long leave the shard map (leader proposes a
    /// `Tick` when one is overdue).
    pub collector_timeout_ms: i64,
}

/// The async side's way into the node.
#[derive(Clone)]
pub struct NodeHandle {
    id: u64,
    tx: Sender<Input>,
    state: Arc<RwLock<FleetState>>,
    status: watch::Receiver<NodeStatus>,
    proposal_timeout: Duration,
}

impl NodeHandle {
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn state(&self) -> &Arc<RwLock<FleetState>> {
        &self.state
    }

    /// Read the state (a short read lock).
    pub fn read<R>(&self, f: impl FnOnce(&FleetState) -> R) -> R {
        match self.state.read() {
            Ok(g) => f(&g),
            Err(p) => f(&p.into_inner()),
        }
    }

    pub fn status(&self) -> NodeStatus {
        self.status.borrow().clone()
    }

    pub fn watch_status(&self) -> watch::Receiver<NodeStatus> {
        self.status.clone()
    }

    pub fn input(&self) -> &Sender<Input> {
        &self.tx
    }

    /// Propose a command; resolves once it is committed and applied here.
    pub async fn propose(&self, cmd: &Command) -> Result<Proposed, ProposeError> {
        let data = codec::encode(cmd);
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Input::Propose { data, reply })
            .map_err(|_| ProposeError::Stopped)?;
        match tokio::time::timeout(self.proposal_timeout + Duration::from_millis(500), rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ProposeError::Stopped),
            Err(_) => Err(ProposeError::Timeout),
        }
    }

    /// A linearizable read point: resolves with an index this node has
    /// applied that is at least the leader's commit index at call time.
    pub async fn read_index(&self, timeout: Duration) -> Result<u64, ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Input::ReadIndex { reply })
            .map_err(|_| ProposeError::Stopped)?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ProposeError::Stopped),
            Err(_) => Err(ProposeError::Timeout),
        }
    }

    /// Add a voter/learner or remove a node (leader only).
    pub async fn change_membership(
        &self,
        kind: ConfChangeType,
        node_id: u64,
        address: Option<String>,
    ) -> Result<Proposed, ProposeError> {
        let (reply, rx) = oneshot::channel();
        let cc = single_change(kind, node_id);
        self.tx
            .send(Input::ConfChange { cc, address, reply })
            .map_err(|_| ProposeError::Stopped)?;
        match tokio::time::timeout(self.proposal_timeout + Duration::from_millis(500), rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ProposeError::Stopped),
            Err(_) => Err(ProposeError::Timeout),
        }
    }

    pub fn transfer_leader(&self, to: u64) -> Result<(), ProposeError> {
        self.tx
            .send(Input::TransferLeader { to })
            .map_err(|_| ProposeError::Stopped)
    }

    /// Ask the Raft thread to stop (it finishes the current turn).
    pub fn shutdown(&self) {
        let _ = self.tx.send(Input::Shutdown);
    }
}

/// The Raft thread and its handle.
pub struct Node {
    pub handle: NodeHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Node {
    /// Open the replica on `disk` and start its thread. `make_transport` gets
    /// the handle (the transport reports unreachable peers through it).
    pub fn start<D: Disk>(
        opts: NodeOptions,
        disk: D,
        make_transport: impl FnOnce(&NodeHandle) -> Arc<dyn Transport>,
    ) -> Result<Node, ReplicaError> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let state = Arc::new(RwLock::new(FleetState::default()));
        let replica = Replica::open(
            opts.replica.clone(),
            disk,
            opts.bootstrap.as_ref(),
            state.clone(),
        )?;
        let (status_tx, status_rx) =
            watch::channel(NodeStatus::from(replica.status(), replica.counters()));
        let handle = NodeHandle {
            id: opts.replica.id,
            tx,
            state,
            status: status_rx,
            proposal_timeout: opts.proposal_timeout,
        };
        let transport = make_transport(&handle);
        let (wtx, wrx) = crossbeam_channel::unbounded();
        let writer = {
            let (log, transport, input) =
                (replica.log().clone(), transport.clone(), handle.tx.clone());
            std::thread::Builder::new()
                .name(format!("raft-log-{}", opts.replica.id))
                .spawn(move || log_writer(log, wrx, transport, input))
                .map_err(|e| {
                    ReplicaError::Disk(crate::raft::DiskError::Inconsistent(format!(
                        "cannot start the log writer thread: {e}"
                    )))
                })?
        };
        let thread = std::thread::Builder::new()
            .name(format!("raft-{}", opts.replica.id))
            .spawn(move || {
                RaftLoop::new(opts, replica, rx, transport, status_tx, wtx).run();
                let _ = writer.join();
            })
            .map_err(|e| {
                ReplicaError::Disk(crate::raft::DiskError::Inconsistent(format!(
                    "cannot start the raft thread: {e}"
                )))
            })?;
        Ok(Node {
            handle,
            thread: Some(thread),
        })
    }

    /// Stop the Raft thread and wait for it.
    pub fn stop(&mut self) {
        self.handle.shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

type Reply = oneshot::Sender<Result<Proposed, ProposeError>>;
type ReadReply = oneshot::Sender<Result<u64, ProposeError>>;

struct RaftLoop<D: Disk> {
    opts: NodeOptions,
    replica: Replica<D>,
    rx: Receiver<Input>,
    transport: Arc<dyn Transport>,
    status_tx: watch::Sender<NodeStatus>,
    writer: Sender<Vec<PersistJob>>,
    disk_syncs: u64,
    boot: u64,
    next_req: u64,
    pending: BTreeMap<Vec<u8>, (Reply, Instant)>,
    /// Proposals received this turn, proposed together (see `flush_proposals`).
    queued: Vec<(Vec<u8>, Reply)>,
    /// Batch entries in flight: their proposers, in order.
    pending_batches: BTreeMap<Vec<u8>, (Vec<Reply>, Instant)>,
    pending_reads: BTreeMap<Vec<u8>, (ReadReply, Instant)>,
    waiting_reads: Vec<(u64, ReadReply, Instant)>,
    last_collector_check: Instant,
    /// Removed from the group: no more ticks or messages (a removed leader
    /// would otherwise keep leading a group it is not part of).
    removed: bool,
    fatal: Option<String>,
}

/// Inputs handled per loop turn at most.
const MAX_BATCH: usize = 8192;
/// Largest batch entry (commands joined by [`codec`]).
const MAX_BATCH_BYTES: usize = 1 << 20;

impl<D: Disk> RaftLoop<D> {
    fn new(
        opts: NodeOptions,
        replica: Replica<D>,
        rx: Receiver<Input>,
        transport: Arc<dyn Transport>,
        status_tx: watch::Sender<NodeStatus>,
        writer: Sender<Vec<PersistJob>>,
    ) -> Self {
        Self {
            opts,
            replica,
            rx,
            transport,
            status_tx,
            writer,
            disk_syncs: 0,
            boot: rand::random(),
            next_req: 0,
            pending: BTreeMap::new(),
            queued: Vec::new(),
            pending_batches: BTreeMap::new(),
            pending_reads: BTreeMap::new(),
            waiting_reads: Vec::new(),
            last_collector_check: Instant::now(),
            removed: false,
            fatal: None,
        }
    }

    fn new_ctx(&mut self) -> Vec<u8> {
        self.next_req += 1;
        let mut c = self.boot.to_be_bytes().to_vec();
        c.extend_from_slice(&self.next_req.to_be_bytes());
        c
    }

    fn run(mut self) {
        let mut next_tick = Instant::now() + self.opts.tick;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(wait) {
                Ok(Input::Shutdown) => break,
                Ok(input) => {
                    self.handle(input);
                    let mut n = 1;
                    let mut stop = false;
                    while n < MAX_BATCH {
                        match self.rx.try_recv() {
                            Ok(Input::Shutdown) => {
                                stop = true;
                                break;
                            }
                            Ok(i) => self.handle(i),
                            Err(_) => break,
                        }
                        n += 1;
                    }
                    if stop {
                        break;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if Instant::now() >= next_tick {
                if !self.removed {
                    self.replica.tick();
                }
                next_tick = Instant::now() + self.opts.tick;
                self.housekeeping();
            }
            self.flush_proposals();
            if let Err(e) = self.ready() {
                tracing::error!(node = self.replica.id(), error = %e, "raft node stopped: storage or state failure; restart it after fixing the cause");
                let mut st = self.status_tx.borrow().clone();
                st.fatal = Some(e.to_string());
                self.status_tx.send_replace(st);
                break;
            }
            let mut st = NodeStatus::from(self.replica.status(), self.replica.counters());
            st.disk_writes = self.disk_syncs;
            self.status_tx.send_if_modified(|old| {
                if *old != st {
                    *old = st;
                    true
                } else {
                    false
                }
            });
        }
        for (_, (reply, _)) in std::mem::take(&mut self.pending) {
            let _ = reply.send(Err(ProposeError::Stopped));
        }
        for (_, (replies, _)) in std::mem::take(&mut self.pending_batches) {
            for reply in replies {
                let _ = reply.send(Err(ProposeError::Stopped));
            }
        }
        for (_, reply) in std::mem::take(&mut self.queued) {
            let _ = reply.send(Err(ProposeError::Stopped));
        }
        tracing::info!(node = self.replica.id(), "raft loop stopped");
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Raft(_) if self.removed => {}
            Input::Raft(m) => {
                if let Err(e) = self.replica.step(m) {
                    tracing::debug!(error = %e, "raft message ignored");
                }
            }
            Input::Propose { data, reply } => self.queued.push((data, reply)),
            Input::ReadIndex { reply } => {
                let ctx = self.new_ctx();
                self.replica.read_index(ctx.clone());
                self.pending_reads
                    .insert(ctx, (reply, Instant::now() + self.opts.proposal_timeout));
            }
            Input::ConfChange { cc, address, reply } => {
                if !self.replica.is_leader() {
                    let leader = self.replica.leader_id();
                    let e = if leader == 0 {
                        ProposeError::NoLeader
                    } else {
                        ProposeError::NotLeader(leader)
                    };
                    let _ = reply.send(Err(e));
                    return;
                }
                let request = self.new_ctx();
                let ctx = ConfChangeContext {
                    request: request.clone(),
                    address,
                };
                match self.replica.propose_conf_change(&ctx, cc) {
                    Ok(()) => {
                        self.pending.insert(
                            request,
                            (reply, Instant::now() + self.opts.proposal_timeout),
                        );
                    }
                    Err(e) => {
                        let _ = reply.send(Err(ProposeError::Refused(e.to_string())));
                    }
                }
            }
            Input::TransferLeader { to } => self.replica.transfer_leader(to),
            Input::SnapshotReport { to, ok } => self.replica.report_snapshot(to, ok),
            Input::Unreachable(id) => self.replica.report_unreachable(id),
            Input::Persisted { number, syncs } => {
                self.disk_syncs += syncs;
                self.replica.on_persisted(number);
            }
            Input::WriterFailed(e) => self.fatal = Some(e),
            Input::Shutdown => {}
        }
    }

    fn ready(&mut self) -> Result<(), ReplicaError> {
        if let Some(e) = self.fatal.take() {
            return Err(ReplicaError::Disk(crate::raft::DiskError::Inconsistent(e)));
        }
        let transport = &self.transport;
        let mut jobs = Vec::new();
        let out = self
            .replica
            .on_ready(&mut |msgs| transport.send(msgs), &mut jobs)?;
        if !jobs.is_empty() && self.writer.send(jobs).is_err() {
            return Err(ReplicaError::Disk(crate::raft::DiskError::Inconsistent(
                "the log writer stopped".into(),
            )));
        }
        let was_member = !self.removed;
        for a in out.applied {
            if let AppliedKind::ConfChange(Ok(_)) = &a.kind {
                if was_member && !self.replica.is_member() {
                    tracing::warn!(node = self.replica.id(), index = a.index, "this node was removed from the Raft group; it stops taking part (stop the process)");
                    self.removed = true;
                }
            }
            if a.context.is_empty() {
                continue;
            }
            if let Some((replies, _)) = self.pending_batches.remove(&a.context) {
                let outcomes = match a.kind {
                    AppliedKind::Command(Outcome::Batch { outcomes }) => outcomes,
                    _ => Vec::new(),
                };
                let mut outcomes = outcomes.into_iter();
                for reply in replies {
                    let _ = reply.send(Ok(Proposed {
                        index: a.index,
                        term: a.term,
                        outcome: outcomes.next(),
                    }));
                }
                continue;
            }
            let Some((reply, _)) = self.pending.remove(&a.context) else {
                continue;
            };
            let r = match a.kind {
                AppliedKind::Command(o) => Ok(Proposed {
                    index: a.index,
                    term: a.term,
                    outcome: Some(o),
                }),
                AppliedKind::ConfChange(Ok(_)) => Ok(Proposed {
                    index: a.index,
                    term: a.term,
                    outcome: None,
                }),
                AppliedKind::ConfChange(Err(e)) => Err(ProposeError::Refused(e)),
                AppliedKind::Empty => continue,
            };
            let _ = reply.send(r);
        }
        for rs in out.read_states {
            if let Some((reply, deadline)) = self.pending_reads.remove(&rs.request_ctx) {
                self.waiting_reads.push((rs.index, reply, deadline));
            }
        }
        if !self.waiting_reads.is_empty() {
            let applied = self.replica.status().applied_index;
            let (done, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting_reads)
                .into_iter()
                .partition(|w| w.0 <= applied);
            for (_, reply, _) in done {
                let _ = reply.send(Ok(applied));
            }
            self.waiting_reads = wait;
        }
        Ok(())
    }

    /// Propose what arrived this turn: one entry per command when alone, else
    /// `Command::Batch` entries of up to `MAX_BATCH_BYTES` (one log entry, one
    /// apply, many acknowledgements).
    fn flush_proposals(&mut self) {
        if self.queued.is_empty() {
            return;
        }
        let deadline = Instant::now() + self.opts.proposal_timeout;
        let queued = std::mem::take(&mut self.queued);
        if queued.len() == 1 {
            let Some((data, reply)) = queued.into_iter().next() else {
                return;
            };
            let ctx = self.new_ctx();
            match self.replica.propose(ctx.clone(), data) {
                Ok(()) => {
                    self.pending.insert(ctx, (reply, deadline));
                }
                Err(_) => {
                    let _ = reply.send(Err(ProposeError::NoLeader));
                }
            }
            return;
        }
        // Groups of up to MAX_BATCH_BYTES of commands.
        let mut groups: Vec<(Vec<Vec<u8>>, usize, Vec<Reply>)> = Vec::new();
        for (data, reply) in queued {
            let start_new = groups
                .last()
                .is_none_or(|(_, bytes, _)| bytes + data.len() > MAX_BATCH_BYTES);
            if start_new {
                groups.push((Vec::new(), 0, Vec::new()));
            }
            if let Some((datas, bytes, replies)) = groups.last_mut() {
                *bytes += data.len();
                datas.push(data);
                replies.push(reply);
            }
        }
        for (datas, bytes, replies) in groups {
            let mut buf = codec::batch_header(datas.len());
            buf.reserve(bytes + 8);
            for d in &datas {
                codec::append_entry(&mut buf, d);
            }
            let ctx = self.new_ctx();
            match self.replica.propose(ctx.clone(), buf) {
                Ok(()) => {
                    self.pending_batches.insert(ctx, (replies, deadline));
                }
                Err(_) => {
                    for reply in replies {
                        let _ = reply.send(Err(ProposeError::NoLeader));
                    }
                }
            }
        }
    }

    /// Once per tick: expire requests, and as leader propose a `Tick` when a
    /// collector is overdue.
    fn housekeeping(&mut self) {
        let now = Instant::now();
        let expired: Vec<Vec<u8>> = self
            .pending
            .iter()
            .filter(|(_, (_, d))| *d <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in expired {
            if let Some((reply, _)) = self.pending.remove(&k) {
                let _ = reply.send(Err(ProposeError::Timeout));
            }
        }
        let expired: Vec<Vec<u8>> = self
            .pending_batches
            .iter()
            .filter(|(_, (_, d))| *d <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in expired {
            if let Some((replies, _)) = self.pending_batches.remove(&k) {
                for reply in replies {
                    let _ = reply.send(Err(ProposeError::Timeout));
                }
            }
        }
        let expired: Vec<Vec<u8>> = self
            .pending_reads
            .iter()
            .filter(|(_, (_, d))| *d <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in expired {
            if let Some((reply, _)) = self.pending_reads.remove(&k) {
                let _ = reply.send(Err(ProposeError::Timeout));
            }
        }
        self.waiting_reads.retain(|w| w.2 > now);
        if self.replica.is_leader()
            && now.duration_since(self.last_collector_check) >= Duration::from_secs(1)
        {
            self.last_collector_check = now;
            let unix_ms = unix_ms_now();
            let timeout = self.opts.collector_timeout_ms;
            let overdue = {
                let st = self
                    .replica
                    .state()
                    .read()
                    .unwrap_or_else(|p| p.into_inner());
                st.collectors()
                    .values()
                    .any(|c| c.alive && unix_ms.saturating_sub(c.last_seen_ms) > timeout)
            };
            if overdue {
                let cmd = Command::Tick {
                    unix_ms,
                    collector_timeout_ms: timeout,
                };
                let _ = self.replica.propose(Vec::new(), codec::encode(&cmd));
            }
        }
    }
}

/// The log writer: runs persist jobs in order, many per fsync (group commit
/// across readies), then sends the messages that waited for them and tells
/// the Raft thread what is durable.
fn log_writer<D: Disk>(
    log: RaftLog<D>,
    rx: Receiver<Vec<PersistJob>>,
    transport: Arc<dyn Transport>,
    input: Sender<Input>,
) {
    while let Ok(first) = rx.recv() {
        let mut jobs = first;
        while let Ok(more) = rx.try_recv() {
            jobs.extend(more);
        }
        let mut number = 0;
        let mut messages = Vec::new();
        let mut result = Ok(());
        for j in jobs {
            if let Err(e) = log.persist(&j.ops, false) {
                result = Err(e);
                break;
            }
            number = number.max(j.number);
            messages.extend(j.messages);
        }
        if result.is_ok() {
            result = log.sync();
        }
        if let Err(e) = result {
            tracing::error!(error = %e, "raft log write failed");
            let _ = input.send(Input::WriterFailed(e.to_string()));
            return;
        }
        if !messages.is_empty() {
            transport.send(messages);
        }
        if input.send(Input::Persisted { number, syncs: 1 }).is_err() {
            return;
        }
    }
}

/// Wall-clock milliseconds since the Unix epoch (stamped into commands by
/// proposers, never read inside `apply`).
pub fn unix_ms_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
