//! One Raft replica without I/O of its own: a raft-rs `RawNode`, the log it
//! persists through, and the fleet state machine it applies to. The tokio
//! node and the deterministic cluster simulation both drive this same type:
//! `tick`, `step`, `propose`, then `on_ready`, which follows raft-rs's
//! documented order (send, install snapshot, apply, persist, send the
//! messages that depend on persisted state, advance, apply, advance_apply).

use super::log::{Disk, DiskError, LogOp, RaftLog};
use super::logger::raft_logger;
use crate::state::{FleetState, Outcome, StateConfig, StateError};
use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType, Message, Snapshot,
};
use raft::{RawNode, ReadOnlyOption, ReadState, StateRole};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

/// Tuning of one replica. Ticks are driver-defined (100 ms in the node).
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    pub id: u64,
    /// Ticks without a leader before a follower campaigns.
    pub election_tick: usize,
    pub heartbeat_tick: usize,
    /// Take a snapshot after this many applied entries.
    pub snapshot_interval: u64,
    /// Entries kept behind a snapshot for followers that lag a little.
    pub compact_lag: u64,
    pub max_size_per_msg: u64,
    pub max_inflight_msgs: usize,
    /// Use exactly `election_tick` (no randomness inside raft-rs), so a
    /// seeded simulation replays identically; its scheduler supplies the
    /// randomness instead.
    pub fixed_election_timeout: bool,
}

impl ReplicaConfig {
    pub fn new(id: u64) -> Self {
        Self {
            id,
            election_tick: 10,
            heartbeat_tick: 2,
            snapshot_interval: 5_000,
            compact_lag: 1_000,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            fixed_election_timeout: false,
        }
    }
}

/// How a brand-new group starts: its voters (id → address) and the shared
/// state configuration. Every founding member must be given the same.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    pub voters: BTreeMap<u64, String>,
    pub state: StateConfig,
}

/// Context of a membership-change entry: the proposer's request id and the
/// new member's address (kept in the replicated state).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConfChangeContext {
    #[serde(default)]
    pub request: Vec<u8>,
    #[serde(default)]
    pub address: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error(transparent)]
    State(#[from] StateError),
}

/// What one applied entry did.
#[derive(Debug, Clone, PartialEq)]
pub enum AppliedKind {
    Command(Outcome),
    /// A membership change; `Err` when raft-rs refused it.
    ConfChange(Result<ConfState, String>),
    /// The empty entry a new leader appends.
    Empty,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub index: u64,
    pub term: u64,
    /// The proposer's request id (empty when none).
    pub context: Vec<u8>,
    pub kind: AppliedKind,
}

/// What one `on_ready` did, for the driver.
#[derive(Debug, Default)]
pub struct ReadyOutcome {
    pub applied: Vec<Applied>,
    pub read_states: Vec<ReadState>,
    pub snapshot_installed: Option<u64>,
    pub snapshot_taken: Option<u64>,
}

/// Counters for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct ReplicaCounters {
    pub proposals: u64,
    pub proposals_dropped: u64,
    pub entries_applied: u64,
    pub snapshots_taken: u64,
    pub snapshots_installed: u64,
    pub last_snapshot_bytes: u64,
    pub disk_writes: u64,
}

/// A point-in-time view of a replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplicaStatus {
    pub id: u64,
    pub role: &'static str,
    pub leader: u64,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub first_index: u64,
    pub last_index: u64,
    pub snapshot_index: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
}

pub fn role_name(r: StateRole) -> &'static str {
    match r {
        StateRole::Leader => "leader",
        StateRole::Follower => "follower",
        StateRole::Candidate => "candidate",
        StateRole::PreCandidate => "pre_candidate",
    }
}

pub struct Replica<D: Disk> {
    raw: RawNode<RaftLog<D>>,
    log: RaftLog<D>,
    state: Arc<RwLock<FleetState>>,
    cfg: ReplicaConfig,
    last_snapshot: u64,
    counters: ReplicaCounters,
    /// Highest index applied to the state machine (entries or snapshot).
    applied_to: u64,
    /// The configuration as of `applied_to` (for snapshots).
    conf_state: ConfState,
    /// Log writes made while applying (membership, snapshots), queued
    /// behind the ready's writes.
    deferred: Vec<LogOp>,
}

/// Log writes of one ready (or of applying), and the messages that may only
/// leave once they are durable. Run in the order produced.
#[derive(Debug)]
pub struct PersistJob {
    /// The ready's number for `on_persisted` (0: none).
    pub number: u64,
    pub ops: Vec<LogOp>,
    pub sync: bool,
    pub messages: Vec<Message>,
}

impl PersistJob {
    /// Write, then send what depended on it; returns the number to pass to
    /// [`Replica::on_persisted`].
    pub fn run<D: Disk>(
        self,
        log: &RaftLog<D>,
        send: &mut dyn FnMut(Vec<Message>),
    ) -> Result<u64, DiskError> {
        log.persist(&self.ops, self.sync)?;
        if !self.messages.is_empty() {
            send(self.messages);
        }
        Ok(self.number)
    }
}

fn write_state(state: &Arc<RwLock<FleetState>>) -> std::sync::RwLockWriteGuard<'_, FleetState> {
    // A panic while applying would already have stopped the node; take the
    // state as it is rather than poisoning every reader.
    state.write().unwrap_or_else(|p| p.into_inner())
}

impl<D: Disk> Replica<D> {
    /// Open a replica on `disk`. A blank disk with `bootstrap` naming this
    /// node founds the group (an initial snapshot at index 1 holding the
    /// voters); a blank disk without it waits to be sent a snapshot by a
    /// leader that added it.
    pub fn open(
        cfg: ReplicaConfig,
        disk: D,
        bootstrap: Option<&Bootstrap>,
        state: Arc<RwLock<FleetState>>,
    ) -> Result<Self, ReplicaError> {
        let log = RaftLog::open(disk)?;
        let blank = log.with(|p| {
            p.snapshot.is_empty()
                && p.entries.is_empty()
                && p.hard_state == Default::default()
                && p.conf_state == Default::default()
        });
        if blank {
            if let Some(b) = bootstrap.filter(|b| b.voters.contains_key(&cfg.id)) {
                let mut s = FleetState::new(b.state.clone());
                for (id, addr) in &b.voters {
                    s.set_raft_peer(*id, Some(addr.clone()));
                }
                s.mark_applied(1);
                let mut snap = Snapshot::default();
                snap.set_data(s.snapshot().into());
                let meta = snap.mut_metadata();
                meta.index = 1;
                meta.term = 1;
                meta.mut_conf_state().voters = b.voters.keys().copied().collect();
                log.write(&[LogOp::InstallSnapshot(snap)], true)?;
            }
        }
        let (snap_index, snap_data) =
            log.with(|p| (p.snapshot.get_metadata().index, p.snapshot.data.to_vec()));
        {
            let mut st = write_state(&state);
            if snap_index > 0 {
                st.restore(&snap_data)?;
            } else {
                *st = FleetState::default();
            }
        }
        let mut rc = raft::Config {
            id: cfg.id,
            election_tick: cfg.election_tick,
            heartbeat_tick: cfg.heartbeat_tick,
            applied: snap_index,
            max_size_per_msg: cfg.max_size_per_msg,
            max_inflight_msgs: cfg.max_inflight_msgs,
            check_quorum: true,
            pre_vote: true,
            read_only_option: ReadOnlyOption::Safe,
            ..Default::default()
        };
        if cfg.fixed_election_timeout {
            rc.min_election_tick = cfg.election_tick;
            rc.max_election_tick = cfg.election_tick + 1;
        }
        rc.validate()?;
        let raw = RawNode::new(&rc, log.clone(), &raft_logger(cfg.id))?;
        let conf_state = log.with(|p| p.conf_state.clone());
        Ok(Self {
            raw,
            log,
            state,
            cfg,
            last_snapshot: snap_index,
            counters: Default::default(),
            applied_to: snap_index,
            conf_state,
            deferred: Vec::new(),
        })
    }

    pub fn id(&self) -> u64 {
        self.cfg.id
    }

    pub fn state(&self) -> &Arc<RwLock<FleetState>> {
        &self.state
    }

    pub fn log(&self) -> &RaftLog<D> {
        &self.log
    }

    pub fn counters(&self) -> &ReplicaCounters {
        &self.counters
    }

    pub fn tick(&mut self) -> bool {
        self.raw.tick()
    }

    pub fn step(&mut self, m: Message) -> Result<(), ReplicaError> {
        Ok(self.raw.step(m)?)
    }

    /// Whether this node is still in the group's configuration.
    pub fn is_member(&self) -> bool {
        let conf = self.raw.raft.prs().conf().to_conf_state();
        let id = self.cfg.id;
        conf.voters.contains(&id)
            || conf.learners.contains(&id)
            || conf.voters_outgoing.contains(&id)
            || conf.learners_next.contains(&id)
    }

    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    pub fn leader_id(&self) -> u64 {
        self.raw.raft.leader_id
    }

    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    /// Propose a command (JSON bytes) tagged with the caller's request id. On
    /// a follower raft-rs forwards it to the leader; it fails when no leader
    /// is known.
    pub fn propose(&mut self, context: Vec<u8>, data: Vec<u8>) -> Result<(), ReplicaError> {
        match self.raw.propose(context, data) {
            Ok(()) => {
                self.counters.proposals += 1;
                Ok(())
            }
            Err(e) => {
                self.counters.proposals_dropped += 1;
                Err(e.into())
            }
        }
    }

    /// Propose a membership change (joint consensus when it has several
    /// changes).
    pub fn propose_conf_change(
        &mut self,
        context: &ConfChangeContext,
        cc: ConfChangeV2,
    ) -> Result<(), ReplicaError> {
        let ctx = serde_json::to_vec(context).unwrap_or_default();
        Ok(self.raw.propose_conf_change(ctx, cc)?)
    }

    pub fn transfer_leader(&mut self, to: u64) {
        self.raw.transfer_leader(to)
    }

    /// Ask for a read index; the answer arrives in `ReadyOutcome::read_states`.
    pub fn read_index(&mut self, context: Vec<u8>) {
        self.raw.read_index(context)
    }

    pub fn report_unreachable(&mut self, id: u64) {
        self.raw.report_unreachable(id)
    }

    pub fn report_snapshot(&mut self, id: u64, ok: bool) {
        let s = if ok {
            raft::SnapshotStatus::Finish
        } else {
            raft::SnapshotStatus::Failure
        };
        self.raw.report_snapshot(id, s)
    }

    pub fn status(&self) -> ReplicaStatus {
        let r = &self.raw.raft;
        let (first_index, last_index, snapshot_index) = self.log.with(|p| {
            (
                p.first_index(),
                p.last_index(),
                p.snapshot.get_metadata().index,
            )
        });
        let mut conf = r.prs().conf().to_conf_state();
        // raft-rs lists them from a hash set: in id order for the API.
        conf.voters.sort_unstable();
        conf.learners.sort_unstable();
        ReplicaStatus {
            id: self.cfg.id,
            role: role_name(r.state),
            leader: r.leader_id,
            term: r.term,
            commit_index: r.raft_log.committed,
            applied_index: r.raft_log.applied,
            first_index,
            last_index,
            snapshot_index,
            voters: conf.voters,
            learners: conf.learners,
        }
    }

    /// Handle everything raft-rs has ready, persisting asynchronously:
    /// messages that need nothing persisted go to `send` now; the log writes
    /// and the messages that depend on them are appended to `jobs`, which
    /// the driver must run in order ([`PersistJob::run`]) and acknowledge
    /// with [`Replica::on_persisted`]. Meanwhile this replica keeps stepping,
    /// proposing and applying: the leader does not wait for its own fsync
    /// (raft-rs "async ready").
    pub fn on_ready(
        &mut self,
        send: &mut dyn FnMut(Vec<Message>),
        jobs: &mut Vec<PersistJob>,
    ) -> Result<ReadyOutcome, ReplicaError> {
        let mut out = ReadyOutcome::default();
        if self.raw.has_ready() {
            let mut rd = self.raw.ready();
            // A leader may send before persisting (raft thesis 10.2.1).
            if !rd.messages().is_empty() {
                send(rd.take_messages());
            }
            let mut ops = Vec::new();
            if !rd.snapshot().is_empty() {
                let snap = rd.snapshot().clone();
                let index = snap.get_metadata().index;
                write_state(&self.state).restore(&snap.data)?;
                self.conf_state = snap.get_metadata().get_conf_state().clone();
                self.applied_to = self.applied_to.max(index);
                self.last_snapshot = index;
                self.counters.snapshots_installed += 1;
                out.snapshot_installed = Some(index);
                ops.push(LogOp::InstallSnapshot(snap));
            }
            self.apply_entries(rd.take_committed_entries(), &mut out)?;
            if !rd.entries().is_empty() {
                ops.push(LogOp::Append(rd.take_entries()));
            }
            if let Some(hs) = rd.hs() {
                ops.push(LogOp::HardState(hs.clone()));
            }
            out.read_states = rd.take_read_states();
            let messages = rd.take_persisted_messages();
            let number = rd.number();
            // raft-rs reads these entries back from storage once advanced.
            self.log.stage(&ops)?;
            self.raw.advance_append_async(rd);
            jobs.push(PersistJob {
                number,
                ops,
                sync: true,
                messages,
            });
        }
        self.maybe_snapshot(&mut out)?;
        if !self.deferred.is_empty() {
            let ops = std::mem::take(&mut self.deferred);
            jobs.push(PersistJob {
                number: 0,
                ops,
                sync: true,
                messages: Vec::new(),
            });
        }
        self.advance_apply();
        Ok(out)
    }

    /// A persist job has run: raft-rs may count those entries as persisted.
    pub fn on_persisted(&mut self, number: u64) {
        if number > 0 {
            self.raw.on_persist_ready(number);
        }
        self.advance_apply();
    }

    fn advance_apply(&mut self) {
        let log = &self.raw.raft.raft_log;
        let to = self.applied_to.min(log.committed).min(log.persisted);
        if to > log.applied {
            self.raw.advance_apply_to(to);
        }
    }

    /// `on_ready` with every persist job run at once (tests, tools).
    pub fn on_ready_sync(
        &mut self,
        send: &mut dyn FnMut(Vec<Message>),
    ) -> Result<ReadyOutcome, ReplicaError> {
        let mut jobs = Vec::new();
        let out = self.on_ready(send, &mut jobs)?;
        for j in jobs {
            let n = j.run(&self.log, send)?;
            self.counters.disk_writes += 1;
            self.on_persisted(n);
        }
        Ok(out)
    }

    fn apply_entries(
        &mut self,
        entries: Vec<Entry>,
        out: &mut ReadyOutcome,
    ) -> Result<(), ReplicaError> {
        if entries.is_empty() {
            return Ok(());
        }
        for e in entries {
            self.counters.entries_applied += 1;
            self.applied_to = self.applied_to.max(e.index);
            match e.get_entry_type() {
                EntryType::EntryNormal => {
                    let mut st = write_state(&self.state);
                    let kind = if e.data.is_empty() {
                        st.mark_applied(e.index);
                        AppliedKind::Empty
                    } else {
                        AppliedKind::Command(st.apply_bytes(e.index, &e.data))
                    };
                    out.applied.push(Applied {
                        index: e.index,
                        term: e.term,
                        context: e.context.to_vec(),
                        kind,
                    });
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    let (cc, ctx) = decode_conf_change(&e);
                    let result = match &cc {
                        Some(cc) => self.raw.apply_conf_change(cc).map_err(|e| e.to_string()),
                        None => Err("undecodable membership change".to_string()),
                    };
                    if let (Ok(cs), Some(cc)) = (&result, &cc) {
                        self.conf_state = cs.clone();
                        let op = LogOp::ConfState(cs.clone());
                        self.log.stage(std::slice::from_ref(&op))?;
                        self.deferred.push(op);
                        let mut st = write_state(&self.state);
                        for ch in cc.get_changes() {
                            match ch.get_change_type() {
                                ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                                    if let Some(a) = &ctx.address {
                                        st.set_raft_peer(ch.node_id, Some(a.clone()));
                                    }
                                }
                                ConfChangeType::RemoveNode => st.set_raft_peer(ch.node_id, None),
                            }
                        }
                    }
                    write_state(&self.state).mark_applied(e.index);
                    out.applied.push(Applied {
                        index: e.index,
                        term: e.term,
                        context: ctx.request,
                        kind: AppliedKind::ConfChange(result),
                    });
                }
            }
        }
        Ok(())
    }

    fn maybe_snapshot(&mut self, out: &mut ReadyOutcome) -> Result<(), ReplicaError> {
        let applied = self.applied_to;
        let wanted = self.log.snapshot_wanted().take() && applied > self.last_snapshot;
        if !wanted && applied < self.last_snapshot + self.cfg.snapshot_interval.max(1) {
            return Ok(());
        }
        let Ok(term) = self.raw.raft.raft_log.term(applied) else {
            return Ok(());
        };
        let data = self
            .state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .snapshot();
        let mut snap = Snapshot::default();
        self.counters.last_snapshot_bytes = data.len() as u64;
        snap.set_data(data.into());
        let meta = snap.mut_metadata();
        meta.index = applied;
        meta.term = term;
        meta.set_conf_state(self.conf_state.clone());
        let compact_to = (applied + 1).saturating_sub(self.cfg.compact_lag).max(1);
        let ops = [LogOp::SaveSnapshot(snap), LogOp::Compact(compact_to)];
        self.log.stage(&ops)?;
        self.deferred.extend(ops);
        self.last_snapshot = applied;
        self.counters.snapshots_taken += 1;
        out.snapshot_taken = Some(applied);
        Ok(())
    }
}

fn decode_conf_change(e: &Entry) -> (Option<ConfChangeV2>, ConfChangeContext) {
    let cc = match e.get_entry_type() {
        EntryType::EntryConfChange => ConfChange::parse_from_bytes(&e.data)
            .ok()
            .map(|c| single_change(c.get_change_type(), c.node_id)),
        _ => ConfChangeV2::parse_from_bytes(&e.data).ok(),
    };
    let ctx = serde_json::from_slice(&e.context).unwrap_or_default();
    (cc, ctx)
}

/// A membership change of one node.
pub fn single_change(kind: ConfChangeType, node_id: u64) -> ConfChangeV2 {
    let mut cc = ConfChangeV2::default();
    let mut single = raft::eraftpb::ConfChangeSingle::default();
    single.set_change_type(kind);
    single.node_id = node_id;
    cc.mut_changes().push(single);
    cc
}
