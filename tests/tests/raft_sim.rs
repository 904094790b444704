//! Deterministic, seeded simulation of an aggregator Raft group: the real
//! `Replica` (raft-rs + the fleet state machine + the log code) over
//! in-memory disks and a simulated network. One seed decides every message
//! delay, drop, duplicate, partition, crash and restart. Invariants are
//! checked after every step; then faults stop and the group must converge.
//!
//! CI runs `OUTFLOW_SIM_SEEDS` seeds (default 200). A long run:
//! `OUTFLOW_SIM_SEEDS=5000 cargo test --release -p outflow-tests --test raft_sim`.
//! One seed: `OUTFLOW_SIM_SEED=42 cargo test -p outflow-tests --test raft_sim -- one_seed --nocapture`.

use outflow_aggregator::raft::eraftpb::{Message, MessageType};
use outflow_aggregator::raft::{
    AppliedKind, Bootstrap, Disk, DiskError, LogOp, MemDisk, PersistJob, Persisted, Replica,
    ReplicaConfig, ReplicaError, WalDisk,
};
use outflow_aggregator::state::{AlertRecord, Command, FleetState, StateConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

struct InFlight {
    due: u64,
    seq: u64,
    msg: Message,
}

/// A node's disk across its restarts: memory, or (every fourth seed) the
/// write-ahead log file, reopened and replayed at every start.
#[derive(Clone)]
enum SimDisk {
    Mem(MemDisk),
    Wal(std::path::PathBuf),
}

enum OpenDisk {
    Mem(MemDisk),
    Wal(Box<WalDisk>),
}

impl Disk for OpenDisk {
    fn load(&self) -> Result<Persisted, DiskError> {
        match self {
            OpenDisk::Mem(d) => d.load(),
            OpenDisk::Wal(d) => d.load(),
        }
    }

    fn write(&mut self, ops: &[LogOp], sync: bool) -> Result<(), DiskError> {
        match self {
            OpenDisk::Mem(d) => d.write(ops, sync),
            OpenDisk::Wal(d) => d.write(ops, sync),
        }
    }

    fn sync(&mut self) -> Result<(), DiskError> {
        match self {
            OpenDisk::Mem(d) => d.sync(),
            OpenDisk::Wal(d) => d.sync(),
        }
    }
}

impl SimDisk {
    fn open(&self) -> Result<OpenDisk, DiskError> {
        Ok(match self {
            SimDisk::Mem(d) => OpenDisk::Mem(d.clone()),
            // A tiny rewrite threshold: rewrites happen many times per run.
            SimDisk::Wal(dir) => {
                OpenDisk::Wal(Box::new(WalDisk::open(dir)?.with_rewrite_min(4096)))
            }
        })
    }
}

struct Node {
    replica: Option<Replica<OpenDisk>>,
    disk: SimDisk,
    state: Arc<RwLock<FleetState>>,
    /// Request ids this incarnation proposed → alert id.
    pending: BTreeMap<Vec<u8>, String>,
    boot: u64,
    last_checked_applied: u64,
    /// Log writes not yet durable (lost on a crash), in order.
    jobs: std::collections::VecDeque<PersistJob>,
}

struct Sim {
    seed: u64,
    rng: ChaCha8Rng,
    nodes: Vec<Node>,
    bootstrap: Bootstrap,
    net: Vec<InFlight>,
    seq: u64,
    now: u64,
    faults: bool,
    /// Nodes cut off from the rest (both directions).
    partition: BTreeSet<u64>,
    leaders: BTreeMap<u64, u64>,
    committed: BTreeMap<u64, (u64, Vec<u8>)>,
    hashes: BTreeMap<u64, String>,
    acked: BTreeMap<String, u64>,
    next_proposal: u64,
    trace: Vec<String>,
    /// Holds the write-ahead logs of a file-backed run.
    _dir: Option<tempfile::TempDir>,
}

fn cfg(id: u64) -> ReplicaConfig {
    ReplicaConfig {
        snapshot_interval: 12,
        compact_lag: 4,
        max_size_per_msg: 4096,
        max_inflight_msgs: 16,
        fixed_election_timeout: true,
        ..ReplicaConfig::new(id)
    }
}

impl Sim {
    fn new(seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n = if rng.gen_bool(0.5) { 3 } else { 5 };
        let bootstrap = Bootstrap {
            voters: (1..=n)
                .map(|i| (i, format!("127.0.0.1:{}", 7100 + i)))
                .collect(),
            state: StateConfig::default(),
        };
        let mut sim = Sim {
            seed,
            rng,
            nodes: Vec::new(),
            bootstrap,
            net: Vec::new(),
            seq: 0,
            now: 0,
            faults: true,
            partition: BTreeSet::new(),
            leaders: BTreeMap::new(),
            committed: BTreeMap::new(),
            hashes: BTreeMap::new(),
            acked: BTreeMap::new(),
            next_proposal: 0,
            trace: Vec::new(),
            _dir: None,
        };
        if seed % 4 == 3 {
            // tmpfs where there is one: thousands of fsyncs per run.
            let shm = std::path::Path::new("/dev/shm");
            let dir = if shm.is_dir() {
                tempfile::tempdir_in(shm)
            } else {
                tempfile::tempdir()
            };
            sim._dir = Some(dir.expect("temporary directory"));
        }
        for id in 1..=n {
            let disk = match &sim._dir {
                Some(d) => SimDisk::Wal(d.path().join(format!("n{id}"))),
                None => SimDisk::Mem(MemDisk::new()),
            };
            let state = Arc::new(RwLock::new(FleetState::default()));
            sim.nodes.push(Node {
                replica: None,
                disk,
                state,
                pending: BTreeMap::new(),
                boot: 0,
                last_checked_applied: 0,
                jobs: Default::default(),
            });
            sim.start(id);
        }
        sim
    }

    fn fail(&self, what: String) -> ! {
        panic!(
            "raft simulation invariant violated (seed {seed}, step {step}): {what}\n\
             reproduce: OUTFLOW_SIM_SEED={seed} cargo test -p outflow-tests --test raft_sim -- one_seed --nocapture",
            seed = self.seed,
            step = self.now
        );
    }

    fn start(&mut self, id: u64) {
        let boot = self.rng.gen::<u64>();
        let node = &mut self.nodes[(id - 1) as usize];
        let r = node
            .disk
            .open()
            .map_err(ReplicaError::from)
            .and_then(|d| Replica::open(cfg(id), d, Some(&self.bootstrap), node.state.clone()));
        match r {
            Ok(r) => node.replica = Some(r),
            Err(e) => self.fail(format!("node {id} failed to open: {e}")),
        }
        let node = &mut self.nodes[(id - 1) as usize];
        node.boot = boot;
        node.pending.clear();
        node.last_checked_applied = 0;
        self.trace.push(format!("{} start {id}", self.now));
    }

    fn crash(&mut self, id: u64) {
        let node = &mut self.nodes[(id - 1) as usize];
        node.replica = None;
        node.pending.clear();
        node.jobs.clear(); // never reached the disk
        self.trace.push(format!("{} crash {id}", self.now));
    }

    fn live(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.replica.is_some())
            .map(|(i, _)| i as u64 + 1)
            .collect()
    }

    fn cut(&self, a: u64, b: u64) -> bool {
        self.partition.contains(&a) != self.partition.contains(&b)
    }

    fn ready(&mut self, id: u64) {
        let mut out_msgs = Vec::new();
        let idx = (id - 1) as usize;
        let Some(r) = self.nodes[idx].replica.as_mut() else {
            return;
        };
        let mut jobs = Vec::new();
        let res = r.on_ready(&mut |m| out_msgs.extend(m), &mut jobs);
        self.nodes[idx].jobs.extend(jobs);
        let out = match res {
            Ok(o) => o,
            Err(e) => self.fail(format!("node {id} on_ready failed: {e}")),
        };
        for m in out_msgs {
            self.send(m);
        }
        for a in &out.applied {
            let key = (a.term, a.context.clone());
            match self.committed.get(&a.index) {
                Some(prev) if *prev != key => self.fail(format!(
                    "node {id} applied index {} as (term {}, ctx {:?}) but another node applied (term {}, ctx {:?})",
                    a.index, a.term, a.context, prev.0, prev.1
                )),
                Some(_) => {}
                None => {
                    self.committed.insert(a.index, key);
                }
            }
            if let AppliedKind::Command(_) = a.kind {
                if let Some(alert) = self.nodes[idx].pending.remove(&a.context) {
                    self.acked.insert(alert, a.index);
                }
            }
        }
        self.check_node(id);
    }

    /// Make the oldest `n` pending log writes of a node durable, send what
    /// waited for them, and tell the replica.
    fn persist(&mut self, id: u64, n: usize) {
        let idx = (id - 1) as usize;
        for _ in 0..n {
            let Some(job) = self.nodes[idx].jobs.pop_front() else {
                break;
            };
            let Some(r) = self.nodes[idx].replica.as_mut() else {
                return;
            };
            let mut out_msgs = Vec::new();
            let log = r.log().clone();
            let number = match job.run(&log, &mut |m| out_msgs.extend(m)) {
                Ok(n) => n,
                Err(e) => self.fail(format!("node {id} log write failed: {e}")),
            };
            if let Some(r) = self.nodes[idx].replica.as_mut() {
                r.on_persisted(number);
            }
            for m in out_msgs {
                self.send(m);
            }
        }
        self.ready(id);
    }

    fn check_node(&mut self, id: u64) {
        let idx = (id - 1) as usize;
        let Some(r) = self.nodes[idx].replica.as_ref() else {
            return;
        };
        let st = r.status();
        if st.role == "leader" {
            match self.leaders.get(&st.term) {
                Some(l) if *l != id => {
                    self.fail(format!("two leaders in term {}: {} and {}", st.term, l, id))
                }
                _ => {
                    self.leaders.insert(st.term, id);
                }
            }
        }
        let (applied, hash) = {
            let s = self.nodes[idx].state.read().unwrap();
            (s.applied_index(), None::<String>)
        };
        let _ = hash;
        if applied != self.nodes[idx].last_checked_applied {
            self.nodes[idx].last_checked_applied = applied;
            let h = self.nodes[idx].state.read().unwrap().state_hash();
            match self.hashes.get(&applied) {
                Some(prev) if *prev != h => self.fail(format!(
                    "node {id} at applied index {applied} has state hash {h}, another replica had {prev}"
                )),
                Some(_) => {}
                None => {
                    self.hashes.insert(applied, h);
                }
            }
        }
    }

    fn send(&mut self, m: Message) {
        let copies = if self.faults && self.rng.gen_bool(0.03) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            if self.faults && self.rng.gen_bool(0.05) {
                self.snapshot_lost(&m);
                continue; // dropped
            }
            let delay = if self.faults {
                self.rng.gen_range(1..12)
            } else {
                1
            };
            self.seq += 1;
            self.net.push(InFlight {
                due: self.now + delay,
                seq: self.seq,
                msg: m.clone(),
            });
        }
    }

    fn snapshot_lost(&mut self, m: &Message) {
        if m.get_msg_type() != MessageType::MsgSnapshot {
            return;
        }
        if let Some(s) = self.nodes[(m.from - 1) as usize].replica.as_mut() {
            s.report_snapshot(m.to, false);
        }
    }

    fn deliver_due(&mut self) {
        let mut due: Vec<InFlight> = Vec::new();
        let mut rest = Vec::new();
        for f in self.net.drain(..) {
            if f.due <= self.now {
                due.push(f);
            } else {
                rest.push(f);
            }
        }
        self.net = rest;
        due.sort_by_key(|f| (f.due, f.seq));
        let mut touched = BTreeSet::new();
        for f in due {
            let (from, to) = (f.msg.from, f.msg.to);
            let is_snap = f.msg.get_msg_type() == MessageType::MsgSnapshot;
            if self.cut(from, to) {
                self.snapshot_lost(&f.msg);
                continue;
            }
            let Some(r) = self
                .nodes
                .get_mut((to - 1) as usize)
                .and_then(|n| n.replica.as_mut())
            else {
                self.snapshot_lost(&f.msg);
                continue;
            };
            // A stale or unexpected message is an error raft-rs reports and
            // the node survives.
            let _ = r.step(f.msg);
            touched.insert(to);
            if is_snap {
                // Like the node's transport: the sender learns the snapshot
                // went through (or not, below) and resumes replication.
                if let Some(s) = self.nodes[(from - 1) as usize].replica.as_mut() {
                    s.report_snapshot(to, true);
                }
                touched.insert(from);
            }
        }
        for id in touched {
            self.ready(id);
        }
    }

    fn propose(&mut self, id: u64) {
        self.next_proposal += 1;
        let alert_id = format!("s{}-p{}", self.seed, self.next_proposal);
        let idx = (id - 1) as usize;
        let mut ctx = self.nodes[idx].boot.to_be_bytes().to_vec();
        ctx.extend_from_slice(&self.next_proposal.to_be_bytes());
        let cmd = Command::ReportAlerts {
            collector_id: "sim".into(),
            alerts: vec![AlertRecord {
                id: alert_id.clone(),
                window_end_us: self.next_proposal as i64,
                json: "{}".into(),
            }],
        };
        let data = serde_json::to_vec(&cmd).unwrap();
        let Some(r) = self.nodes[idx].replica.as_mut() else {
            return;
        };
        if r.propose(ctx.clone(), data).is_ok() {
            self.nodes[idx].pending.insert(ctx, alert_id);
        }
        self.ready(id);
    }

    fn step(&mut self) {
        self.now += 1;
        let live = self.live();
        let roll: u32 = self.rng.gen_range(0..1000);
        if self.faults && roll < 6 && live.len() > 1 {
            let id = live[self.rng.gen_range(0..live.len())];
            self.crash(id);
        } else if roll < 30 {
            let dead: Vec<u64> = (1..=self.nodes.len() as u64)
                .filter(|i| !live.contains(i))
                .collect();
            if !dead.is_empty() {
                let id = dead[self.rng.gen_range(0..dead.len())];
                self.start(id);
                self.ready(id);
            }
        } else if self.faults && roll < 38 {
            let n = self.nodes.len() as u64;
            self.partition = (1..=n).filter(|_| self.rng.gen_bool(0.35)).collect();
            self.trace
                .push(format!("{} partition {:?}", self.now, self.partition));
        } else if roll < 60 {
            self.partition.clear();
        } else if roll < 200 && !live.is_empty() {
            let id = live[self.rng.gen_range(0..live.len())];
            self.propose(id);
        }
        // Disks are slow and uneven: some writes become durable each step.
        for id in self.live() {
            if self.rng.gen_bool(0.6) {
                let n = self.rng.gen_range(1..4);
                self.persist(id, n);
            }
        }
        // Every live node ticks with probability 1/2 per step: clocks drift.
        for id in self.live() {
            if self.rng.gen_bool(0.5) {
                if let Some(r) = self.nodes[(id - 1) as usize].replica.as_mut() {
                    r.tick();
                }
                self.ready(id);
            }
        }
        self.deliver_due();
    }

    fn converge(&mut self) {
        self.faults = false;
        self.partition.clear();
        for id in 1..=self.nodes.len() as u64 {
            if self.nodes[(id - 1) as usize].replica.is_none() {
                self.start(id);
                self.ready(id);
            }
        }
        // One last proposal must commit everywhere: liveness after healing.
        let mut final_acked = false;
        for _ in 0..4000 {
            self.step_quiet();
            if !final_acked {
                if let Some(l) = self.leader() {
                    let before = self.acked.len();
                    self.propose(l);
                    for _ in 0..50 {
                        self.step_quiet();
                    }
                    final_acked = self.acked.len() > before;
                }
                continue;
            }
            if self.converged() {
                return;
            }
        }
        let applied: Vec<(u64, u64)> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (i as u64 + 1, n.state.read().unwrap().applied_index()))
            .collect();
        self.fail(format!(
            "no convergence after faults stopped (final proposal acked: {final_acked}, applied: {applied:?})"
        ));
    }

    fn step_quiet(&mut self) {
        self.now += 1;
        for id in self.live() {
            self.persist(id, usize::MAX);
        }
        // Clocks still drift (raft-rs's own timeout randomness is off for
        // determinism): lock-step ticks would split every vote forever.
        for id in self.live() {
            if self.rng.gen_bool(0.7) {
                if let Some(r) = self.nodes[(id - 1) as usize].replica.as_mut() {
                    r.tick();
                }
            }
            self.ready(id);
        }
        self.deliver_due();
    }

    fn leader(&self) -> Option<u64> {
        self.nodes
            .iter()
            .filter_map(|n| n.replica.as_ref())
            .find(|r| r.is_leader())
            .map(|r| r.id())
    }

    fn converged(&self) -> bool {
        let applied: BTreeSet<u64> = self
            .nodes
            .iter()
            .map(|n| n.state.read().unwrap().applied_index())
            .collect();
        let commit: BTreeSet<u64> = self
            .nodes
            .iter()
            .filter_map(|n| n.replica.as_ref())
            .map(|r| r.status().commit_index)
            .collect();
        applied.len() == 1 && commit.len() == 1 && applied == commit
    }

    fn final_checks(&self) {
        let hashes: BTreeSet<String> = self
            .nodes
            .iter()
            .map(|n| n.state.read().unwrap().state_hash())
            .collect();
        if hashes.len() != 1 {
            self.fail(format!("replicas differ after convergence: {hashes:?}"));
        }
        for n in &self.nodes {
            let s = n.state.read().unwrap();
            for (alert, index) in &self.acked {
                if !s.has_alert(alert) {
                    self.fail(format!(
                        "acknowledged proposal {alert} (index {index}) lost"
                    ));
                }
            }
        }
    }
}

/// Runs one seed; returns a digest of what happened.
fn run_seed(seed: u64, steps: u64) -> String {
    let mut sim = Sim::new(seed);
    for _ in 0..steps {
        sim.step();
    }
    sim.converge();
    sim.final_checks();
    let hash = sim.nodes[0].state.read().unwrap().state_hash();
    format!(
        "{hash} leaders={:?} acked={} snapshots={} trace={}",
        sim.leaders,
        sim.acked.len(),
        sim.nodes
            .iter()
            .filter_map(|n| n.replica.as_ref())
            .map(|r| r.counters().snapshots_taken + r.counters().snapshots_installed)
            .sum::<u64>(),
        sim.trace.len()
    )
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn seeds() {
    let n = env_u64("OUTFLOW_SIM_SEEDS", 200);
    let first = env_u64("OUTFLOW_SIM_FIRST_SEED", 0);
    let steps = env_u64("OUTFLOW_SIM_STEPS", 600);
    let mut total_acked = 0;
    for seed in first..first + n {
        let d = run_seed(seed, steps);
        let acked: u64 = d
            .split_whitespace()
            .find_map(|w| w.strip_prefix("acked="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        total_acked += acked;
    }
    // The faults must not be so harsh that nothing ever commits.
    assert!(
        total_acked > n * 5,
        "only {total_acked} proposals acknowledged over {n} seeds"
    );
}

#[test]
fn one_seed() {
    let seed = env_u64("OUTFLOW_SIM_SEED", 7);
    let d = run_seed(seed, env_u64("OUTFLOW_SIM_STEPS", 600));
    println!("seed {seed}: {d}");
}

#[test]
fn a_seed_replays_identically() {
    assert_eq!(run_seed(11, 400), run_seed(11, 400));
}
