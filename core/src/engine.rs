//! The engine: telemetry in, alerts out, in event time.
//!
//! Per host it keeps a process table, a DNS answer cache and, per process, an
//! open tumbling window of outbound HTTPS bytes. A window closes when the
//! host's event time passes its end plus the allowed lateness (or when the
//! caller advances the watermark); it is then judged against the app's peers
//! and folded into the host's daily statistics, which feed the baseline.

use std::collections::{HashMap, VecDeque};

/// Hash maps keyed by host names, pids, IPs: a fast hasher with a random seed.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
use std::net::IpAddr;
use std::sync::Arc;

use crate::alert::{alert_id, Alert, Destination, ANALYTIC};
use crate::app::{normalise_app, UNKNOWN_APP};
use crate::baseline::{
    persistence_bucket, ratio_bucket, volume_bucket, AppDayStats, FleetBaseline, HostAppDay,
    PeerView, ServiceChange,
};
use crate::catalogue::{Catalogue, OTHER};
use crate::config::EngineConfig;
use crate::hint::{prefetch_slice, prefetch_val};
use crate::policy::Policy;
use crate::score::{score_finding, score_only, FindingKind, ScoreInput};
use crate::strtable::StrTable;
use crate::telemetry::{DnsRecord, Event, EventRef, NetView, ProcessEnd, ProcessStart};
use crate::time::Timestamp;

/// Counters of what the engine did, for summaries and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct EngineStats {
    pub events: u64,
    pub net_records: u64,
    /// Net records to internal networks (not outbound).
    pub internal_records: u64,
    /// Net records that are not HTTPS (no SNI, not an HTTPS port).
    pub non_https_records: u64,
    /// Net records of a pid with no known process start (app `unknown`).
    pub unknown_pid_records: u64,
    /// Net records for a window that had already closed: their bytes count
    /// towards the process's day, not towards a judged window.
    pub late_records: u64,
    pub windows_closed: u64,
    pub windows_judged: u64,
    pub alerts: u64,
    /// Findings not raised because a policy suppression matched.
    pub suppressed: u64,
    /// Findings not raised because the fleet was still being learnt.
    pub learning: u64,
    /// Findings not raised because the process was alerted on recently.
    pub repeats: u64,
    pub hosts: u64,
    pub live_processes: u64,
}

impl EngineStats {
    /// Adds another engine's counters (engines sharing out one input).
    pub fn add(&mut self, o: &EngineStats) {
        let EngineStats {
            events,
            net_records,
            internal_records,
            non_https_records,
            unknown_pid_records,
            late_records,
            windows_closed,
            windows_judged,
            alerts,
            suppressed,
            learning,
            repeats,
            hosts,
            live_processes,
        } = o;
        self.events += events;
        self.net_records += net_records;
        self.internal_records += internal_records;
        self.non_https_records += non_https_records;
        self.unknown_pid_records += unknown_pid_records;
        self.late_records += late_records;
        self.windows_closed += windows_closed;
        self.windows_judged += windows_judged;
        self.alerts += alerts;
        self.suppressed += suppressed;
        self.learning += learning;
        self.repeats += repeats;
        self.hosts += hosts;
        self.live_processes += live_processes;
    }
}

#[derive(Debug)]
struct ProcMeta {
    app: Arc<str>,
    /// The interned id of `app` (keys the host's per-app days).
    app_id: u32,
    pid: u32,
    start: Timestamp,
    ppid: Option<u32>,
    exe: Option<String>,
    cmdline: Option<String>,
    user: Option<String>,
    parent_app: Option<Arc<str>>,
}

#[derive(Clone, Debug)]
struct DestAcc {
    ip: IpAddr,
    port: u16,
    name: Option<Arc<str>>,
    service: Arc<str>,
    out: u64,
    inb: u64,
}

impl DestAcc {
    /// Adds another record to the same (address, port); a name learnt late
    /// (DNS after the first record) names it.
    fn absorb(&mut self, d: &DestRef<'_>) {
        self.out = self.out.saturating_add(d.out);
        self.inb = self.inb.saturating_add(d.inb);
        if self.name.is_none() && d.name.is_some() {
            self.name = d.name.cloned();
            self.service = d.service.clone();
        }
    }
}

/// A record's destination, borrowing its name and service: most records
/// add to an entry that exists, and only a new entry takes references.
struct DestRef<'a> {
    ip: IpAddr,
    port: u16,
    name: Option<&'a Arc<str>>,
    service: &'a Arc<str>,
    out: u64,
    inb: u64,
}

impl DestRef<'_> {
    fn to_acc(&self) -> DestAcc {
        DestAcc {
            ip: self.ip,
            port: self.port,
            name: self.name.cloned(),
            service: self.service.clone(),
            out: self.out,
            inb: self.inb,
        }
    }
}

#[derive(Debug)]
struct OpenWindow {
    start: Timestamp,
    out: u64,
    inb: u64,
    dests: Vec<DestAcc>,
}

#[derive(Debug)]
struct ProcState {
    meta: Arc<ProcMeta>,
    pid: u32,
    /// Copies of `meta`'s hot fields: the per-record path reads these
    /// without following the pointer (a cache miss per record otherwise).
    start: Timestamp,
    app: Arc<str>,
    app_id: u32,
    /// No start was seen for the pid: app `unknown`.
    unknown: bool,
    /// A service this process already reached on that day (so it is in the
    /// host's day statistics): the common case skips their lookup.
    last_service: Option<(i64, Arc<str>)>,
    ended: bool,
    last_activity: Timestamp,
    /// Open windows, oldest first (more than one while late data may come).
    windows: Vec<OpenWindow>,
    /// End of the last closed window: records before it are late.
    closed_through: Timestamp,
    day: i64,
    day_out: u64,
    day_in: u64,
    day_first: Timestamp,
    day_dests: Vec<DestAcc>,
    /// `dest_key` of each of `day_dests` (a short scan finds a destination).
    day_keys: Vec<u64>,
    /// Once `day_dests` is full: the index of its smallest entry (the first
    /// of equals), if known.
    day_min: Option<u32>,
    /// Where in `day_dests` the last record went (half of a process's
    /// records go where its previous one did); checked before use.
    day_hint: u32,
    /// Highest volume bucket of the day's total already judged (low and slow).
    cum_judged_bucket: u8,
    /// Where the host's (app, day) statistics were last found (a hint,
    /// checked before use).
    day_slot: u32,
    /// Windows of the day that uploaded (persistence).
    day_upload_windows: u64,
    last_alert: Option<(crate::alert::Severity, Timestamp)>,
}

impl ProcState {
    /// A process instance first seen at `meta.start`; `unknown` when no
    /// start was seen for the pid.
    fn new(meta: Arc<ProcMeta>, unknown: bool) -> Self {
        let at = meta.start;
        ProcState {
            pid: meta.pid,
            start: at,
            app: meta.app.clone(),
            app_id: meta.app_id,
            unknown,
            last_service: None,
            meta,
            ended: false,
            last_activity: at,
            windows: Vec::new(),
            closed_through: Timestamp::MIN,
            day: at.day(),
            day_out: 0,
            day_in: 0,
            day_first: at,
            day_dests: Vec::new(),
            day_keys: Vec::new(),
            day_min: None,
            day_hint: 0,
            cum_judged_bucket: 0,
            day_slot: NO_SLOT,
            day_upload_windows: 0,
            last_alert: None,
        }
    }
}

/// A live process instance of a pid: its slot and its start (a copy of the
/// slot's, so finding the instance of a record reads no slot).
#[derive(Clone, Copy, Debug)]
struct PidInstance {
    slot: u32,
    start: Timestamp,
}

/// What `Engine::ingest_batch` takes: parsed lines (`EventRef`) or owned
/// events.
pub trait Ingestible {
    /// The event as a `net` record, if it is one (a view, no copy).
    fn net(&self) -> Option<NetView<'_>>;
    /// Ingests it one by one.
    fn ingest_into(&self, engine: &mut Engine);
}

impl Ingestible for EventRef<'_> {
    fn net(&self) -> Option<NetView<'_>> {
        match self {
            EventRef::Net(n) => Some(n.reborrow()),
            EventRef::Other(_) => None,
        }
    }

    fn ingest_into(&self, engine: &mut Engine) {
        engine.ingest_ref(self);
    }
}

impl<T: Ingestible> Ingestible for &T {
    fn net(&self) -> Option<NetView<'_>> {
        (**self).net()
    }

    fn ingest_into(&self, engine: &mut Engine) {
        (**self).ingest_into(engine);
    }
}

impl Ingestible for Event {
    fn net(&self) -> Option<NetView<'_>> {
        match self {
            Event::Net(n) => Some(NetView::of(n)),
            _ => None,
        }
    }

    fn ingest_into(&self, engine: &mut Engine) {
        engine.ingest(self);
    }
}

/// A pid's instances, oldest start first; one (the common case) is kept in
/// the map entry itself.
type PidInstances = smallvec::SmallVec<[PidInstance; 1]>;

struct HostState {
    name: Arc<str>,
    max_ts: Timestamp,
    /// The host's process instances, in slots that keep their index while
    /// the instance lives (freed slots are reused).
    slots: Slots<ProcState>,
    /// Each pid's instances, oldest start first (pid reuse).
    pids: Map<u32, PidInstances>,
    /// The process of the host's last `net` record, when it is its pid's
    /// newest instance: (pid, slot, start). Almost half of a host's records
    /// come from the same process as the one before; they skip `pids`.
    /// Cleared when that pid's instances change or the slot is freed.
    last_net: Option<(u32, u32, Timestamp)>,
    /// Slots with at least one open window (closing visits only these).
    open: Vec<u32>,
    /// Next time finished and idle processes are swept out.
    next_sweep: Timestamp,
    /// The first day the host sent telemetry.
    first_day: i64,
    dns: Map<IpAddr, Arc<str>>,
    dns_order: VecDeque<IpAddr>,
    /// What the host did per (app, day) within the horizon.
    /// Keyed by interned app id (see `Engine::intern_app`).
    app_days: AppDays,
    apps_seen: std::collections::HashSet<u32, foldhash::fast::RandomState>,
    /// Earliest instant at which some open window may close.
    next_close: Timestamp,
}

impl HostState {
    fn new(name: Arc<str>) -> Self {
        HostState {
            name,
            max_ts: Timestamp::MIN,
            slots: Slots::default(),
            pids: Map::default(),
            last_net: None,
            open: Vec::new(),
            next_sweep: Timestamp::MIN,
            first_day: i64::MAX,
            dns: Map::default(),
            dns_order: VecDeque::new(),
            app_days: AppDays::default(),
            apps_seen: Default::default(),
            next_close: Timestamp(i64::MAX),
        }
    }

    fn slot(&self, i: u32) -> Option<&ProcState> {
        self.slots.get(i)
    }

    fn slot_mut(&mut self, i: u32) -> Option<&mut ProcState> {
        self.slots.get_mut(i)
    }

    /// The instance of `pid` that started at `start`.
    fn instance(&self, pid: u32, start: Timestamp) -> Option<&ProcState> {
        let i = self.pids.get(&pid)?.iter().find(|x| x.start == start)?;
        self.slot(i.slot)
    }

    fn instance_mut(&mut self, pid: u32, start: Timestamp) -> Option<&mut ProcState> {
        let i = *self.pids.get(&pid)?.iter().find(|x| x.start == start)?;
        self.slot_mut(i.slot)
    }
}

/// The internal networks as (network, mask) words for IPv4 (most records);
/// IPv6 networks as configured. The same answers as
/// `EngineConfig::is_internal`.
struct InternalNets {
    v4: Vec<(u32, u32)>,
    v6: Vec<ipnet::Ipv6Net>,
}

impl InternalNets {
    fn new(cfg: &EngineConfig) -> Self {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for n in &cfg.internal_networks {
            match n {
                ipnet::IpNet::V4(n) => {
                    let mask = u32::from(n.netmask());
                    v4.push((u32::from(n.network()) & mask, mask));
                }
                ipnet::IpNet::V6(n) => v6.push(*n),
            }
        }
        InternalNets { v4, v6 }
    }

    fn contains(&self, ip: &IpAddr) -> bool {
        let v4 = match ip {
            IpAddr::V4(a) => Some(*a),
            IpAddr::V6(a) => a.to_ipv4_mapped(),
        };
        match (v4, ip) {
            (Some(a), _) => {
                let a = u32::from(a);
                self.v4.iter().any(|(net, mask)| a & mask == *net)
            }
            (None, IpAddr::V6(a)) => self.v6.iter().any(|n| n.contains(a)),
            (None, IpAddr::V4(_)) => false,
        }
    }
}

/// No slot (a hint that never matches).
const NO_SLOT: u32 = u32::MAX;

/// Records whose memory `Engine::ingest_batch` asks for before ingesting
/// them.
const PREFETCH_GROUP: usize = 16;

/// Values in slots whose index stays put while the value lives (freed slots
/// are reused): an index held elsewhere reaches its value without a lookup.
struct Slots<T> {
    items: Vec<Option<T>>,
    free: Vec<u32>,
}

impl<T> Default for Slots<T> {
    fn default() -> Self {
        Slots {
            items: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<T> Slots<T> {
    /// Stores `v`; its slot.
    fn put(&mut self, v: T) -> u32 {
        match self.free.pop() {
            Some(i) => {
                self.items[i as usize] = Some(v);
                i
            }
            None => {
                self.items.push(Some(v));
                u32::try_from(self.items.len() - 1).unwrap_or(NO_SLOT)
            }
        }
    }

    fn get(&self, i: u32) -> Option<&T> {
        self.items.get(i as usize).and_then(Option::as_ref)
    }

    fn get_mut(&mut self, i: u32) -> Option<&mut T> {
        self.items.get_mut(i as usize).and_then(Option::as_mut)
    }

    /// Empties slot `i` (reused later); what it held.
    fn take(&mut self, i: u32) -> Option<T> {
        let v = self.items.get_mut(i as usize)?.take()?;
        self.free.push(i);
        Some(v)
    }

    /// One past the highest slot index ever used.
    fn end(&self) -> u32 {
        u32::try_from(self.items.len()).unwrap_or(NO_SLOT)
    }

    /// Slots holding a value.
    fn live(&self) -> usize {
        self.items.len() - self.free.len()
    }
}

/// What a host did per (app, day), in slots that keep their index while the
/// day is within the horizon: a process remembers its day's slot and skips
/// the hash lookup on each record and each closing window.
#[derive(Default)]
struct AppDays {
    index: Map<(u32, i64), u32>,
    slots: Slots<((u32, i64), HostAppDay)>,
}

impl AppDays {
    fn get(&self, key: &(u32, i64)) -> Option<&HostAppDay> {
        let i = *self.index.get(key)?;
        self.slots.get(i).map(|(_, d)| d)
    }

    /// The statistics for `key`, created empty if absent. `hint` is tried
    /// first and left pointing at the slot.
    fn entry(&mut self, key: (u32, i64), hint: &mut u32) -> &mut HostAppDay {
        let hit = self.slots.get(*hint).is_some_and(|(k, _)| *k == key);
        if !hit {
            *hint = match self.index.get(&key) {
                Some(&i) => i,
                None => {
                    let i = self.slots.put((key, HostAppDay::default()));
                    self.index.insert(key, i);
                    i
                }
            };
        }
        match self.slots.get_mut(*hint) {
            Some((_, d)) => d,
            None => unreachable!("an indexed slot holds its statistics"),
        }
    }

    /// Forgets the days before `oldest`.
    fn retain_from(&mut self, oldest: i64) {
        let slots = &mut self.slots;
        self.index.retain(|(_, d), i| {
            let keep = *d >= oldest;
            if !keep {
                slots.take(*i);
            }
            keep
        });
    }
}

/// A window ready to be judged, detached from the host's borrow.
struct ClosedWindow {
    app: Arc<str>,
    app_id: u32,
    start: Timestamp,
    end: Timestamp,
    out: u64,
    inb: u64,
    dests: Vec<DestAcc>,
    day_out: u64,
    day_in: u64,
    day_first: Timestamp,
    cum_judged_bucket: u8,
    day_upload_windows: u64,
    last_alert: Option<(crate::alert::Severity, Timestamp)>,
    pid_index: (u32, Timestamp),
}

pub struct Engine {
    cfg: EngineConfig,
    /// `cfg.internal_networks`, ready for a test per record.
    internal: InternalNets,
    catalogue: Catalogue,
    policy: Policy,
    /// Hosts by name → index into `hosts` (hosts are never removed).
    host_ids: StrTable,
    hosts: Vec<HostState>,
    /// Interned app names → (id, name); ids index `app_names`.
    apps: Map<Box<str>, (u32, Arc<str>)>,
    /// The app of records whose pid has no known start: its own `Arc`
    /// (a process really named `unknown` is interned separately), the same id.
    unknown_app: Arc<str>,
    unknown_app_id: u32,
    /// Reused buffers: closed windows and still-open pids of a close pass,
    /// destination lists of windows.
    scratch_closed: Vec<ClosedWindow>,
    scratch_open: Vec<u32>,
    scratch_view: Option<PeerView>,
    dest_pool: Vec<Vec<DestAcc>>,
    other: Arc<str>,
    /// One `Arc` per service name (a few dozen): the windows' destinations
    /// of every name of a service share it, so its reference count stays in
    /// cache.
    services: Vec<Arc<str>>,
    /// Destination names as seen → (normalised name, service), bounded.
    names: StrTable,
    /// (normalised name, service) of each id of `names`.
    name_vals: Vec<(Arc<str>, Arc<str>)>,
    /// The summed contributions of this engine's hosts.
    local: FleetBaseline,
    /// The fleet baseline from the aggregator (distributed mode), and what of
    /// `local` had been shipped when it was computed.
    fleet: Option<FleetBaseline>,
    shipped: FleetBaseline,
    first_ts: Option<Timestamp>,
    max_ts: Timestamp,
    pruned_day: i64,
    alerts: Vec<Alert>,
    stats: EngineStats,
}

impl Engine {
    pub fn new(cfg: EngineConfig, policy: Policy) -> Self {
        let catalogue = catalogue_with(&policy);
        let internal = InternalNets::new(&cfg);
        let mut apps: Map<Box<str>, (u32, Arc<str>)> = Map::default();
        apps.insert(Box::from(UNKNOWN_APP), (0, Arc::from(UNKNOWN_APP)));
        Engine {
            internal,
            cfg,
            catalogue,
            policy,
            host_ids: StrTable::default(),
            hosts: Vec::new(),
            apps,
            unknown_app: Arc::from(UNKNOWN_APP),
            unknown_app_id: 0,
            scratch_closed: Vec::new(),
            scratch_open: Vec::new(),
            scratch_view: None,
            dest_pool: Vec::new(),
            other: Arc::from(OTHER),
            services: Vec::new(),
            names: StrTable::default(),
            name_vals: Vec::new(),
            local: FleetBaseline::new(),
            fleet: None,
            shipped: FleetBaseline::new(),
            first_ts: None,
            max_ts: Timestamp::MIN,
            pruned_day: i64::MIN,
            alerts: Vec::new(),
            stats: EngineStats::default(),
        }
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    pub fn set_policy(&mut self, policy: Policy) {
        self.catalogue = catalogue_with(&policy);
        self.names.clear();
        self.name_vals.clear();
        self.policy = policy;
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Distributed mode: judge against the fleet's baseline. The engine's own
    /// hosts' contributions are taken from its live state rather than from
    /// the (older) copies inside the fleet baseline.
    ///
    /// The learning period counts from the fleet's oldest data, not from this
    /// engine's first event: a collector that takes over hosts (or restarts)
    /// joins a fleet that has already been learnt.
    pub fn set_fleet_baseline(&mut self, fleet: FleetBaseline) {
        if let Some(oldest) = fleet.apps.values().filter_map(|d| d.keys().next()).min() {
            let t = Timestamp(oldest.saturating_mul(crate::time::MICROS_PER_DAY));
            self.first_ts = Some(self.first_ts.map_or(t, |f| f.min(t)));
        }
        self.fleet = Some(fleet);
    }

    /// This engine's hosts' contributions per (app, day), to ship to the
    /// aggregator. Marks them as shipped.
    pub fn local_partials(&mut self) -> Vec<AppDayStats> {
        self.shipped = self.local.clone();
        self.local
            .apps
            .values()
            .flat_map(|d| d.values().cloned())
            .collect()
    }

    /// The baseline formed by this engine's hosts alone.
    pub fn local_baseline(&self) -> &FleetBaseline {
        &self.local
    }

    pub fn stats(&self) -> EngineStats {
        let mut s = self.stats.clone();
        s.hosts = self.hosts.len() as u64;
        s.live_processes = self.hosts.iter().map(|h| h.slots.live() as u64).sum();
        s
    }

    /// Alerts raised and not yet drained.
    pub fn pending_alerts(&self) -> usize {
        self.alerts.len()
    }

    pub fn drain_alerts(&mut self) -> Vec<Alert> {
        std::mem::take(&mut self.alerts)
    }

    /// The latest event time seen.
    pub fn max_ts(&self) -> Timestamp {
        self.max_ts
    }

    /// A destination name as seen on the wire → (normalised, service), cached.
    /// The index in `name_vals` of a destination name's (normalised name,
    /// service); valid until the next call.
    fn classify_name(&mut self, raw: &str) -> usize {
        if let Some(id) = self.names.get(raw) {
            return id as usize;
        }
        // Bounded in count and in bytes (names come from telemetry).
        if self.names.len() >= 200_000 || self.names.bytes() >= 64 << 20 {
            self.names.clear();
            self.name_vals.clear();
        }
        let norm: Arc<str> = Arc::from(raw.trim_end_matches('.').to_ascii_lowercase());
        let service = match self.catalogue.classify(&norm) {
            Some(s) => shared_service(&mut self.services, s),
            None => self.other.clone(),
        };
        let mut at = 0;
        for key in [raw, norm.as_ref()] {
            let (id, new) = self.names.intern(key);
            let v = (norm.clone(), service.clone());
            if new {
                self.name_vals.push(v);
            } else {
                self.name_vals[id as usize] = v;
            }
            at = id as usize;
        }
        at
    }

    /// The app's interned (id, name): one id per distinct name.
    fn intern_app(&mut self, app: &str) -> (u32, Arc<str>) {
        if let Some(a) = self.apps.get(app) {
            return a.clone();
        }
        let id = u32::try_from(self.apps.len()).unwrap_or(u32::MAX);
        let a: Arc<str> = Arc::from(app);
        self.apps.insert(Box::from(app), (id, a.clone()));
        (id, a)
    }

    /// The host's index, created on first sight.
    fn host_index(&mut self, name: &str) -> usize {
        let (i, new) = self.host_ids.intern(name);
        if new {
            self.hosts.push(HostState::new(Arc::from(name)));
        }
        i as usize
    }

    pub fn ingest(&mut self, event: &Event) {
        if let Event::Net(n) = event {
            return self.ingest_net(&NetView::of(n));
        }
        let ts = event.ts();
        let hid = self.begin_event(ts, event.host());
        match event {
            Event::Host(_) | Event::Net(_) => {}
            Event::ProcessStart(p) => self.on_process_start(hid, p),
            Event::ProcessEnd(p) => self.on_process_end(hid, p),
            Event::Dns(d) => self.on_dns(hid, d),
        }
        self.end_event(hid, ts);
    }

    /// `ingest` of a parsed line (a `net` record borrowed from it).
    pub fn ingest_ref(&mut self, event: &EventRef<'_>) {
        match event {
            EventRef::Net(n) => self.ingest_net(n),
            EventRef::Other(e) => self.ingest(e),
        }
    }

    /// `ingest` of a `net` record.
    pub fn ingest_net(&mut self, n: &NetView<'_>) {
        let hid = self.begin_event(n.ts, &n.host);
        self.on_net(hid, n);
        self.end_event(hid, n.ts);
    }

    /// `ingest_ref` of each event in order: the same state and alerts. The
    /// memory each `net` record will touch (its process, the day
    /// destination and window it last used, its host's day statistics, the
    /// processes whose windows it will close) is asked for a few records
    /// ahead, so that the waits of several records overlap instead of
    /// following one another. The lookups for a group are made before any
    /// of it is ingested; one that an earlier event of the group changes
    /// only makes a hint miss.
    pub fn ingest_batch<E: Ingestible>(&mut self, events: &[E]) {
        let mut at = [None; PREFETCH_GROUP];
        for group in events.chunks(PREFETCH_GROUP) {
            for (e, at) in group.iter().zip(at.iter_mut()) {
                *at = e.net().and_then(|n| self.locate(&n));
            }
            for &(hid, slot, closes) in at[..group.len()].iter().flatten() {
                self.prefetch_process(hid, slot);
                if closes {
                    self.prefetch_closing(hid);
                }
            }
            for (e, at) in group.iter().zip(&at) {
                match (e.net(), at) {
                    (Some(n), Some((hid, _, _))) => {
                        self.begin_event_at(n.ts);
                        self.on_net(*hid, &n);
                        self.end_event(*hid, n.ts);
                    }
                    _ => e.ingest_into(self),
                }
            }
        }
    }

    /// The host and process of a `net` record of a known host, as a lookup
    /// now finds them; starts loading the process state, and the states of
    /// the host's processes with open windows if the record will close some.
    fn locate(&self, n: &NetView<'_>) -> Option<(usize, u32, bool)> {
        let hid = self.host_ids.get(&n.host)? as usize;
        let h = &self.hosts[hid];
        let slot = match h.last_net {
            Some((pid, slot, start)) if pid == n.pid && start <= n.ts => slot,
            _ => {
                h.pids
                    .get(&n.pid)?
                    .iter()
                    .rev()
                    .find(|x| x.start <= n.ts)?
                    .slot
            }
        };
        if let Some(p) = h.slots.items.get(slot as usize) {
            prefetch_val(p);
        }
        let closes = h.max_ts.max(n.ts).saturating_sub_us(self.cfg.lateness_us()) >= h.next_close;
        if closes {
            for &s in &h.open {
                if let Some(p) = h.slots.items.get(s as usize) {
                    prefetch_val(p);
                }
            }
        }
        Some((hid, slot, closes))
    }

    /// Starts loading what a record of process `slot` reads beyond its
    /// state: the hinted day destination, the newest open window, the
    /// host's statistics for the process's app and day.
    fn prefetch_process(&self, hid: usize, slot: u32) {
        let h = &self.hosts[hid];
        let Some(p) = h.slot(slot) else {
            return;
        };
        if let Some(d) = p.day_dests.get(p.day_hint as usize) {
            prefetch_val(d);
        }
        // Scanned when the hint misses.
        prefetch_slice(&p.day_keys);
        if let Some(w) = p.windows.last() {
            prefetch_val(w);
        }
        if let Some(d) = h.app_days.slots.items.get(p.day_slot as usize) {
            prefetch_val(d);
        }
    }

    /// Starts loading what closing a host's windows reads beyond the
    /// states of its processes with open windows: their oldest windows and
    /// their days' statistics.
    fn prefetch_closing(&self, hid: usize) {
        let h = &self.hosts[hid];
        for &s in &h.open {
            if let Some(p) = h.slot(s) {
                if let Some(w) = p.windows.first() {
                    prefetch_val(w);
                }
                if let Some(d) = h.app_days.slots.items.get(p.day_slot as usize) {
                    prefetch_val(d);
                }
            }
        }
    }

    /// Counts an event at `ts` from `host`; the host's index.
    fn begin_event(&mut self, ts: Timestamp, host: &str) -> usize {
        self.begin_event_at(ts);
        self.host_index(host)
    }

    /// Counts an event at `ts`.
    fn begin_event_at(&mut self, ts: Timestamp) {
        self.stats.events += 1;
        if self.first_ts.is_none() {
            self.first_ts = Some(ts);
        }
        if ts > self.max_ts {
            self.max_ts = ts;
            let day = ts.day();
            if day > self.pruned_day {
                self.prune(day);
            }
        }
    }

    /// After an event at `ts` from host `hid`: closes what the host's event
    /// time has moved past.
    fn end_event(&mut self, hid: usize, ts: Timestamp) {
        let lateness = self.cfg.lateness_us();
        let h = &mut self.hosts[hid];
        if ts > h.max_ts {
            h.max_ts = ts;
        }
        h.first_day = h.first_day.min(ts.day());
        let wm = h.max_ts.saturating_sub_us(lateness);
        if wm >= h.next_close {
            self.close_host_windows(hid, wm);
        }
    }

    /// Closes every window (all hosts) that ends at or before `watermark`:
    /// for idle hosts, the end of input, or a wall-clock tick in a collector.
    pub fn advance_to(&mut self, watermark: Timestamp) {
        let mut due: Vec<usize> = (0..self.hosts.len())
            .filter(|&i| self.hosts[i].next_close <= watermark)
            .collect();
        // Hosts are judged in name order: the same input gives the same
        // alerts in the same order.
        due.sort_by(|a, b| self.hosts[*a].name.cmp(&self.hosts[*b].name));
        for h in due {
            self.close_host_windows(h, watermark);
        }
        if watermark > self.max_ts && watermark.0 != i64::MAX {
            let day = watermark.day();
            if day > self.pruned_day {
                self.prune(day);
            }
        }
    }

    /// Closes every open window: end of input.
    pub fn flush(&mut self) {
        self.advance_to(Timestamp(i64::MAX));
    }

    fn on_process_start(&mut self, hid: usize, p: &ProcessStart) {
        let app_name = normalise_app(if p.name.is_empty() {
            p.exe.as_deref().unwrap_or("")
        } else {
            &p.name
        });
        let (app_id, app) = self.intern_app(&app_name);
        let parent_app = p
            .parent_name
            .as_deref()
            .filter(|s| !s.trim().is_empty())
            .map(|n| {
                let n = normalise_app(n);
                self.intern_app(&n).1
            })
            .or_else(|| {
                // The parent's name from our own process table.
                let h = &self.hosts[hid];
                let ppid = p.ppid?;
                h.pids
                    .get(&ppid)
                    .and_then(|v| v.last())
                    .and_then(|i| h.slot(i.slot))
                    .map(|s| s.meta.app.clone())
            });
        let meta = Arc::new(ProcMeta {
            app: app.clone(),
            app_id,
            pid: p.pid,
            start: p.ts,
            ppid: p.ppid,
            exe: p.exe.clone(),
            cmdline: p.cmdline.clone(),
            user: p.user.clone(),
            parent_app,
        });
        let day = p.ts.day();
        let h = &mut self.hosts[hid];
        let new_app = h.apps_seen.insert(app_id);
        // Keep the instance list ordered by start; a duplicate start is ignored.
        if let Some(v) = h.pids.get(&p.pid) {
            if v.iter()
                .filter(|x| x.start == p.ts)
                .filter_map(|x| h.slot(x.slot))
                .any(|s| s.app == app)
            {
                return;
            }
        }
        let state = ProcState::new(meta, false);
        let slot = h.slots.put(state);
        if h.last_net.is_some_and(|(pid, _, _)| pid == p.pid) {
            h.last_net = None;
        }
        let mut ids = h.pids.remove(&p.pid).unwrap_or_default();
        let pos = ids.partition_point(|x| x.start <= p.ts);
        ids.insert(pos, PidInstance { slot, start: p.ts });
        // Older instances of the pid are over (pid reuse).
        for x in ids.iter().take(pos) {
            if let Some(s) = h.slots.get_mut(x.slot) {
                s.ended = true;
            }
        }
        h.pids.insert(p.pid, ids);
        let mut no_hint = NO_SLOT;
        let entry = h.app_days.entry((app_id, day), &mut no_hint);
        if !entry.running || (new_app && !entry.new) {
            let before = entry.contribution(&app, day);
            entry.running = true;
            entry.new |= new_app;
            let after = entry.contribution(&app, day);
            self.local.subtract(&before);
            self.local.add(&after);
        }
    }

    fn on_process_end(&mut self, hid: usize, p: &ProcessEnd) {
        let h = &mut self.hosts[hid];
        let Some(v) = h.pids.get(&p.pid) else {
            return;
        };
        let found = v.iter().rev().find(|x| x.start <= p.ts).map(|x| x.slot);
        if let Some(s) = found.and_then(|i| h.slot_mut(i)) {
            s.ended = true;
            s.last_activity = s.last_activity.max(p.ts);
        }
    }

    fn on_dns(&mut self, hid: usize, d: &DnsRecord) {
        let cap = self.cfg.dns_cache_per_host;
        let h = &mut self.hosts[hid];
        let name: Arc<str> = Arc::from(d.query.trim_end_matches('.').to_ascii_lowercase());
        for ip in &d.answers {
            if h.dns.insert(*ip, name.clone()).is_none() {
                h.dns_order.push_back(*ip);
            }
            while h.dns.len() > cap {
                match h.dns_order.pop_front() {
                    Some(old) => {
                        h.dns.remove(&old);
                    }
                    None => break,
                }
            }
        }
    }

    fn on_net(&mut self, hid: usize, n: &NetView<'_>) {
        self.stats.net_records += 1;
        if self.internal.contains(&n.dst_ip) {
            self.stats.internal_records += 1;
            return;
        }
        let has_name = n.sni.is_some();
        if !has_name && !self.cfg.https_ports.contains(&n.dst_port) {
            self.stats.non_https_records += 1;
            return;
        }
        let window_us = self.cfg.window_us();
        // Destination name: SNI, then the record's domain, then DNS seen on the host.
        let raw = n.sni.as_deref().or(n.domain.as_deref());
        let named = raw.map(|r| self.classify_name(r));
        let unknown_app = &self.unknown_app;
        let h = &mut self.hosts[hid];
        // A name from DNS: its own (name, service).
        let resolved = match named {
            Some(_) => None,
            None => h.dns.get(&n.dst_ip).map(|name| {
                let service = match self.names.get(name.as_ref()) {
                    Some(id) => self.name_vals[id as usize].1.clone(),
                    None => match self.catalogue.classify(name) {
                        Some(s) => shared_service(&mut self.services, s),
                        None => self.other.clone(),
                    },
                };
                (name.clone(), service)
            }),
        };
        let (name, service) = match (named, &resolved) {
            (Some(id), _) => {
                let (name, service) = &self.name_vals[id];
                (Some(name), service)
            }
            (None, Some((name, service))) => (Some(name), service),
            (None, None) => (None, &self.other),
        };
        // The process: the latest start at or before ts; else app `unknown`.
        let found = match h.last_net {
            Some((pid, slot, start)) if pid == n.pid && start <= n.ts => Some(slot),
            _ => {
                let v = h.pids.get(&n.pid);
                let found = v.and_then(|v| v.iter().rev().find(|x| x.start <= n.ts));
                // Remembered only if no later instance could take a later record.
                h.last_net = found
                    .filter(|x| v.and_then(|v| v.last()).is_some_and(|l| l.slot == x.slot))
                    .map(|x| (n.pid, x.slot, x.start));
                found.map(|x| x.slot)
            }
        };
        let slot = match found {
            Some(i) => i,
            None => {
                let meta = Arc::new(ProcMeta {
                    app: unknown_app.clone(),
                    app_id: self.unknown_app_id,
                    pid: n.pid,
                    start: n.ts,
                    ppid: None,
                    exe: None,
                    cmdline: None,
                    user: None,
                    parent_app: None,
                });
                let slot = h.slots.put(ProcState::new(meta, true));
                // Every instance there started after ts: this one goes first.
                h.pids
                    .entry(n.pid)
                    .or_default()
                    .insert(0, PidInstance { slot, start: n.ts });
                slot
            }
        };
        let Some(p) = h.slots.get_mut(slot) else {
            return;
        };
        // Every record of a pid whose start was never seen (a process really
        // named `unknown` has its own interned name, not this one).
        if p.unknown {
            self.stats.unknown_pid_records += 1;
        }
        p.last_activity = p.last_activity.max(n.ts);
        let app_id = p.app_id;
        let day = n.ts.day();
        if day > p.day {
            p.day = day;
            p.day_out = 0;
            p.day_in = 0;
            p.day_first = n.ts;
            p.day_dests.clear();
            p.day_keys.clear();
            p.day_min = None;
            p.cum_judged_bucket = 0;
            p.day_upload_windows = 0;
        }
        let dest = DestRef {
            ip: n.dst_ip,
            port: n.dst_port,
            name,
            service,
            out: n.bytes_out,
            inb: n.bytes_in,
        };
        if day == p.day {
            p.day_out = p.day_out.saturating_add(n.bytes_out);
            p.day_in = p.day_in.saturating_add(n.bytes_in);
            add_day_dest(
                (&mut p.day_keys, &mut p.day_min, &mut p.day_hint),
                &mut p.day_dests,
                &dest,
                32,
            );
        }
        // The interval ends at ts: it belongs to the window containing ts-1µs.
        let wstart = Timestamp(n.ts.0.saturating_sub(1)).window_start(window_us);
        if wstart < p.closed_through {
            self.stats.late_records += 1;
        } else {
            match p.windows.iter_mut().find(|w| w.start == wstart) {
                Some(w) => {
                    w.out = w.out.saturating_add(n.bytes_out);
                    w.inb = w.inb.saturating_add(n.bytes_in);
                    add_dest(&mut w.dests, &dest, 64);
                }
                None => {
                    if p.windows.is_empty() {
                        h.open.push(slot);
                    }
                    let pos = p.windows.partition_point(|w| w.start < wstart);
                    let mut dests = self.dest_pool.pop().unwrap_or_default();
                    dests.push(dest.to_acc());
                    let w = OpenWindow {
                        start: wstart,
                        out: n.bytes_out,
                        inb: n.bytes_in,
                        dests,
                    };
                    // Almost always the newest window.
                    if pos == p.windows.len() {
                        p.windows.push(w);
                    } else {
                        p.windows.insert(pos, w);
                    }
                    let close_at = wstart.saturating_add_us(window_us);
                    if close_at < h.next_close {
                        h.next_close = close_at;
                    }
                }
            }
        }
        // Daily statistics of the host for the app.
        // A day inside the horizon has never been pruned, so a service this
        // process already put in it is still there.
        let service_known = day
            > self
                .pruned_day
                .saturating_sub(i64::from(self.cfg.horizon_days))
            && p.last_service
                .as_ref()
                .is_some_and(|(d, s)| *d == day && Arc::ptr_eq(s, service));
        let entry = h.app_days.entry((app_id, day), &mut p.day_slot);
        let needs_update = !entry.active
            || (!service_known && !entry.services.contains_key(service.as_ref()))
            || volume_bucket(entry.out_total) != volume_bucket(entry.out_total + n.bytes_out);
        if !service_known {
            p.last_service = Some((day, service.clone()));
        }
        if needs_update {
            let before = entry.indicators();
            entry.active = true;
            entry.running = true;
            entry.out_total = entry.out_total.saturating_add(n.bytes_out);
            let new_service = !entry.services.contains_key(service.as_ref());
            if new_service {
                entry.services.insert(service.clone(), false);
            }
            let change = [ServiceChange {
                service,
                before: None,
                after: Some(false),
            }];
            self.local.apply_host_change(
                &p.app,
                day,
                before,
                entry.indicators(),
                if new_service { &change } else { &[] },
            );
        } else {
            entry.out_total = entry.out_total.saturating_add(n.bytes_out);
        }
    }

    fn close_host_windows(&mut self, hid: usize, watermark: Timestamp) {
        let window_us = self.cfg.window_us();
        let idle_us = i64::try_from(self.cfg.idle_process_secs)
            .unwrap_or(i64::MAX / 1_000_000)
            .saturating_mul(1_000_000);
        // Loads for all the host's open processes at once, then their
        // windows: their waits overlap.
        {
            let h = &self.hosts[hid];
            for &s in &h.open {
                if let Some(p) = h.slots.items.get(s as usize) {
                    prefetch_val(p);
                }
            }
        }
        self.prefetch_closing(hid);
        let h = &mut self.hosts[hid];
        let mut closed = std::mem::take(&mut self.scratch_closed);
        let mut next = Timestamp(i64::MAX);
        let mut still_open = std::mem::take(&mut self.scratch_open);
        for &slot in &h.open {
            let Some(p) = h.slots.get_mut(slot) else {
                continue;
            };
            let mut open = false;
            {
                while let Some(w) = p.windows.first() {
                    let end = w.start.saturating_add_us(window_us);
                    if end <= watermark {
                        let mut w = p.windows.remove(0);
                        if quiet(&self.cfg, p, &w) {
                            // Folded at once: nothing to judge, so no
                            // detached copy, sort or later lookups. Judging
                            // order does not matter for it (a host's own
                            // contribution never enters its peer view).
                            let day = Timestamp(end.0 - 1).day();
                            note_closed(p, &w, end);
                            self.stats.windows_closed += 1;
                            fold_window(
                                &self.cfg,
                                &mut self.local,
                                (&mut h.app_days, &mut p.day_slot),
                                (&p.app, p.app_id, day),
                                (w.out, w.inb),
                                &w.dests,
                            );
                            if self.dest_pool.len() < DEST_POOL {
                                w.dests.clear();
                                self.dest_pool.push(w.dests);
                            }
                        } else {
                            closed.push(detach(p, w, window_us));
                        }
                    } else {
                        next = next.min(end);
                        open = true;
                        break;
                    }
                }
            }
            if open {
                still_open.push(slot);
            }
        }
        std::mem::swap(&mut h.open, &mut still_open);
        still_open.clear();
        self.scratch_open = still_open;
        h.next_close = next;
        let sweep = watermark >= h.next_sweep;
        if sweep {
            h.next_sweep = watermark.saturating_add_us(SWEEP_US);
        }
        // Judge in a deterministic order.
        if closed.len() > 1 {
            closed.sort_unstable_by_key(|a| (a.start, a.pid_index));
        }
        for c in closed.drain(..) {
            self.judge(hid, c);
        }
        self.scratch_closed = closed;
        // Now and then, forget finished or long-idle processes whose windows
        // are closed (bounded memory).
        if sweep {
            // One pass over the slots (in memory order); the pid index is
            // touched only for what goes.
            let h = &mut self.hosts[hid];
            for slot in 0..h.slots.end() {
                let gone = h.slots.get(slot).is_some_and(|p| {
                    p.windows.is_empty()
                        && ((p.ended
                            && p.last_activity.saturating_add_us(ENDED_GRACE_US) < watermark)
                            || p.last_activity.saturating_add_us(idle_us) < watermark)
                });
                if !gone {
                    continue;
                }
                let Some(p) = h.slots.take(slot) else {
                    continue;
                };
                if h.last_net.is_some_and(|(_, s, _)| s == slot) {
                    h.last_net = None;
                }
                if let Some(ids) = h.pids.get_mut(&p.pid) {
                    ids.retain(|x| x.slot != slot);
                    if ids.is_empty() {
                        h.pids.remove(&p.pid);
                    }
                }
            }
        }
    }

    fn prune(&mut self, today: i64) {
        self.pruned_day = today;
        let oldest = today - i64::from(self.cfg.horizon_days) + 1;
        self.local.prune(today, self.cfg.horizon_days);
        self.shipped.prune(today, self.cfg.horizon_days);
        if let Some(f) = &mut self.fleet {
            f.prune(today, self.cfg.horizon_days);
        }
        for h in &mut self.hosts {
            h.app_days.retain_from(oldest);
        }
    }

    /// Scores a closed window (and the process's day so far), records alerts,
    /// and folds the window into the host's daily statistics.
    fn judge(&mut self, hid: usize, mut c: ClosedWindow) {
        self.stats.windows_closed += 1;
        let app = c.app.clone();
        let app_id = c.app_id;
        let day = Timestamp(c.end.0 - 1).day();
        let mut findings = Vec::new();
        if window_due(&self.cfg, c.out, c.inb) {
            self.stats.windows_judged += 1;
            findings.push((
                FindingKind::Window,
                c.start,
                c.out,
                c.inb,
                top_service(&c.dests),
                // The window's own destinations (`c.dests`).
                None,
            ));
        }
        // The live process knows best (several of its windows may close in
        // one batch): its alert memory and the day's judged level.
        let live_proc = self.hosts[hid].instance(c.pid_index.0, c.pid_index.1);
        let live = live_proc.map(|p| {
            (
                p.last_alert,
                if p.day == day { p.cum_judged_bucket } else { 0 },
            )
        });
        let mut last_alert = live.map_or(c.last_alert, |l| l.0);
        let cum_judged_bucket = live.map_or(c.cum_judged_bucket, |l| l.1.max(c.cum_judged_bucket));
        // Low and slow: the process's uploads that day, judged each time they
        // reach a new half-octave.
        let mut new_cum_bucket = 0;
        if cumulative_due(&self.cfg, c.day_out, c.day_in, cum_judged_bucket) {
            new_cum_bucket = volume_bucket(c.day_out);
            // The day's destinations live with the process.
            let day_dests = live_proc.map(|p| p.day_dests.clone()).unwrap_or_default();
            findings.push((
                FindingKind::Cumulative,
                c.day_first,
                c.day_out,
                c.day_in,
                top_service(&day_dests),
                Some(day_dests),
            ));
        }
        // The process's details, for alerts (always there: windows are
        // judged before the process table is swept).
        let meta = if findings.is_empty() {
            None
        } else {
            self.hosts[hid]
                .instance(c.pid_index.0, c.pid_index.1)
                .map(|p| p.meta.clone())
        };
        if let Some(meta) = meta {
            let oldest = day - i64::from(self.cfg.horizon_days) + 1;
            let h = &self.hosts[hid];
            let host = h.name.clone();
            let host = host.as_ref();
            let (own_history, host_has_history) = {
                let mut history = Vec::new();
                for d in oldest..day {
                    if let Some(s) = h.app_days.get(&(app_id, d)) {
                        history.push((d, s.max_volume, s.out_total));
                    }
                }
                (history, h.first_day < day)
            };
            // The view's buffers serve every judged window in turn.
            let mut view = self
                .scratch_view
                .take()
                .unwrap_or_else(|| PeerView::new(&app));
            self.peer_view(&mut view, hid, app_id, &app, day);
            for (kind, start, out, inb, service, day_dests) in findings {
                let dests: &[DestAcc] = day_dests.as_deref().unwrap_or(&c.dests);
                let approved = self.policy.is_approved(&app, &service);
                let input = ScoreInput {
                    cfg: &self.cfg,
                    kind,
                    app: &app,
                    parent_app: meta.parent_app.as_deref(),
                    out,
                    inb,
                    service: &service,
                    approved,
                    view: &view,
                    own_history: &own_history,
                    host_has_history,
                    upload_windows: match kind {
                        FindingKind::Window => u64::from(c.out >= UPLOAD_WINDOW_BYTES),
                        FindingKind::Cumulative => c.day_upload_windows,
                    },
                    unnamed_destination: dests
                        .iter()
                        .max_by_key(|d| d.out)
                        .is_some_and(|d| d.name.is_none()),
                };
                let scored = score_only(&input);
                if scored.score < self.cfg.alert_score {
                    continue;
                }
                let at = c.end;
                if self.first_ts.is_some_and(|f| {
                    at.0 < f
                        .0
                        .saturating_add(self.cfg.learning_secs as i64 * 1_000_000)
                }) {
                    self.stats.learning += 1;
                    continue;
                }
                if self
                    .policy
                    .suppression_for(&app, host, &service, at)
                    .is_some()
                {
                    self.stats.suppressed += 1;
                    continue;
                }
                if let Some((sev, when)) = last_alert {
                    let realert_us = self.cfg.realert_secs as i64 * 1_000_000;
                    if scored.severity <= sev && at.0 < when.0.saturating_add(realert_us) {
                        self.stats.repeats += 1;
                        continue;
                    }
                }
                last_alert = Some((scored.severity, at));
                // An alert: now its reasons are worth their words.
                let scored = score_finding(&input);
                let kind_s = match kind {
                    FindingKind::Window => "window",
                    FindingKind::Cumulative => "cumulative",
                };
                let mut destinations: Vec<Destination> = dests
                    .iter()
                    .map(|d| Destination {
                        ip: d.ip.to_string(),
                        port: d.port,
                        domain: d.name.as_deref().map(str::to_string),
                        service: d.service.to_string(),
                        bytes_out: d.out,
                        bytes_in: d.inb,
                    })
                    .collect();
                destinations.sort_by(|a, b| b.bytes_out.cmp(&a.bytes_out).then(a.ip.cmp(&b.ip)));
                destinations.truncate(10);
                let alert = Alert {
                    id: alert_id(host, meta.pid, meta.start.0, &app, kind_s, start.0),
                    analytic: ANALYTIC.to_string(),
                    host: host.to_string(),
                    pid: meta.pid,
                    ppid: meta.ppid,
                    app: app.to_string(),
                    exe: meta.exe.clone(),
                    cmdline: meta.cmdline.clone(),
                    user: meta.user.clone(),
                    parent_app: meta.parent_app.as_deref().map(str::to_string),
                    window_start: start.to_rfc3339(),
                    window_end: c.end.to_rfc3339(),
                    bytes_out: out,
                    bytes_in: inb,
                    ratio: round2(ratio_of(out, inb)),
                    service: service.to_string(),
                    destinations,
                    score: round2(scored.score),
                    severity: scored.severity,
                    reasons: scored.reasons,
                    kind: kind_s.to_string(),
                    baseline: if scored.thin { "thin" } else { "established" }.to_string(),
                    process_start: Some(meta.start.to_rfc3339()),
                };
                self.stats.alerts += 1;
                self.alerts.push(alert);
            }
            self.scratch_view = Some(view);
        }
        // Write back the process's alert memory and day progress.
        {
            let h = &mut self.hosts[hid];
            if let Some(p) = h.instance_mut(c.pid_index.0, c.pid_index.1) {
                p.last_alert = last_alert;
                if p.day == day {
                    p.cum_judged_bucket = p.cum_judged_bucket.max(new_cum_bucket);
                }
            }
            // Fold the window into the host's day.
            let mut no_hint = NO_SLOT;
            fold_window(
                &self.cfg,
                &mut self.local,
                (&mut h.app_days, &mut no_hint),
                (&app, app_id, day),
                (c.out, c.inb),
                &c.dests,
            );
        }
        // The window's destination list serves a later window.
        if self.dest_pool.len() < DEST_POOL {
            c.dests.clear();
            self.dest_pool.push(std::mem::take(&mut c.dests));
        }
    }

    /// The app's peers over the horizon ending `today`, the judged host
    /// (`hid`) left out: a host is never its own peer.
    fn peer_view(&self, view: &mut PeerView, hid: usize, app_id: u32, app: &str, today: i64) {
        let oldest = today - i64::from(self.cfg.horizon_days) + 1;
        let h = &self.hosts[hid];
        let own = |d: i64| h.app_days.get(&(app_id, d));
        view.reset(app);
        match &self.fleet {
            None => {
                if let Some(days) = self.local.days_of(app) {
                    for (d, s) in days.range(oldest..=today) {
                        view.add_day(today, *d, (s, None), None, own(*d));
                    }
                }
            }
            Some(fleet) => {
                // fleet − what we shipped + what we have now − the judged
                // host, day by day (no intermediate baseline is built).
                let (f, l, shipped) = (
                    fleet.days_of(app),
                    self.local.days_of(app),
                    self.shipped.days_of(app),
                );
                for d in oldest..=today {
                    let f = f.and_then(|m| m.get(&d));
                    let l = l.and_then(|m| m.get(&d));
                    let plus = match (f, l) {
                        (Some(f), l) => (f, l),
                        (None, Some(l)) => (l, None),
                        (None, None) => continue,
                    };
                    view.add_day(today, d, plus, shipped.and_then(|m| m.get(&d)), own(d));
                }
            }
        }
    }
}

/// A finished process is remembered this long after its last activity, so
/// final counters that arrive after its exit are still its own.
const ENDED_GRACE_US: i64 = 600 * 1_000_000;

/// How often (event time) a host's finished and idle processes are swept out.
const SWEEP_US: i64 = 300 * 1_000_000;

/// Destination lists kept for reuse by new windows.
const DEST_POOL: usize = 4096;

/// A window counts towards persistence from this many bytes out.
pub const UPLOAD_WINDOW_BYTES: u64 = 64 << 10;

/// The built-in catalogue with the policy's additions.
fn catalogue_with(policy: &Policy) -> Catalogue {
    let mut catalogue = Catalogue::builtin();
    for e in &policy.catalogue_additions {
        catalogue.add(&e.service, &e.suffix);
    }
    catalogue
}

/// What closing a window changes in its process.
fn note_closed(p: &mut ProcState, w: &OpenWindow, end: Timestamp) {
    p.closed_through = p.closed_through.max(end);
    if w.out >= UPLOAD_WINDOW_BYTES && Timestamp(end.0 - 1).day() == p.day {
        p.day_upload_windows += 1;
    }
}

fn detach(p: &mut ProcState, w: OpenWindow, window_us: i64) -> ClosedWindow {
    let end = w.start.saturating_add_us(window_us);
    note_closed(p, &w, end);
    ClosedWindow {
        app: p.app.clone(),
        app_id: p.app_id,
        start: w.start,
        end,
        out: w.out,
        inb: w.inb,
        dests: w.dests,
        day_out: p.day_out,
        day_in: p.day_in,
        day_first: p.day_first,
        cum_judged_bucket: p.cum_judged_bucket,
        day_upload_windows: p.day_upload_windows,
        last_alert: p.last_alert,
        pid_index: (p.pid, p.start),
    }
}

/// Folds a closed window into its host's (app, day) statistics, moving the
/// host's contribution to `local` when a statistic changes.
fn fold_window(
    cfg: &EngineConfig,
    local: &mut FleetBaseline,
    (app_days, slot): (&mut AppDays, &mut u32),
    (app, app_id, day): (&str, u32, i64),
    (out, inb): (u64, u64),
    dests: &[DestAcc],
) {
    if out == 0 && inb == 0 {
        return;
    }
    let window_bucket = volume_bucket(out);
    let judged_ratio = out >= cfg.min_window_out_bytes / 16;
    // The ratio counts only for windows that upload enough (most do not:
    // no logarithm for them).
    let rb = judged_ratio.then(|| ratio_bucket(out, inb, cfg.ratio_smoothing_bytes));
    let upload_bytes = cfg.upload_bytes;
    let entry = app_days.entry((app_id, day), slot);
    let uploaded = out >= UPLOAD_WINDOW_BYTES;
    let persistence_moves = uploaded
        && (entry.upload_windows == 0
            || persistence_bucket(entry.upload_windows + 1)
                != persistence_bucket(entry.upload_windows));
    if uploaded && !persistence_moves {
        // The contribution does not change: count without a diff.
        entry.upload_windows += 1;
    }
    let changes = persistence_moves
        || rb.is_some_and(|rb| entry.max_ratio.is_none_or(|m| rb > m))
        || entry.max_volume.is_none_or(|m| window_bucket > m)
        || dests.iter().any(|d| {
            d.out >= upload_bytes && entry.services.get(d.service.as_ref()) != Some(&true)
        });
    if !changes {
        return;
    }
    let before = entry.indicators();
    if persistence_moves {
        entry.upload_windows += 1;
    }
    if let Some(rb) = rb.filter(|rb| entry.max_ratio.is_none_or(|m| *rb > m)) {
        entry.max_ratio = Some(rb);
    }
    if entry.max_volume.is_none_or(|m| window_bucket > m) {
        entry.max_volume = Some(window_bucket);
    }
    let mut services: Vec<ServiceChange<'_>> = Vec::new();
    for d in dests {
        if d.out >= upload_bytes {
            let was = match entry.services.get_mut(d.service.as_ref()) {
                Some(v) => Some(std::mem::replace(v, true)),
                None => entry.services.insert(d.service.clone(), true),
            };
            if was != Some(true) && !services.iter().any(|s| s.service == d.service.as_ref()) {
                services.push(ServiceChange {
                    service: &d.service,
                    before: was,
                    after: Some(true),
                });
            }
        }
    }
    entry.active = true;
    entry.running = true;
    let after = entry.indicators();
    local.apply_host_change(app, day, before, after, &services);
}

/// A window that cannot raise a finding: not enough out (or too even a
/// ratio) for the window check, and the process's day not due for the low-
/// and-slow check (`judge` would find nothing and only fold it).
fn quiet(cfg: &EngineConfig, p: &ProcState, w: &OpenWindow) -> bool {
    // The judged level only rises while windows wait to be judged, so "not
    // due" now means not due in `judge` either.
    !window_due(cfg, w.out, w.inb) && !cumulative_due(cfg, p.day_out, p.day_in, p.cum_judged_bucket)
}

/// A window uploads enough, lopsidedly enough, to be scored.
fn window_due(cfg: &EngineConfig, out: u64, inb: u64) -> bool {
    out >= cfg.min_window_out_bytes && ratio_of(out, inb) >= cfg.min_ratio
}

/// A process's uploads that day are scored (low and slow) each time they
/// reach a new half-octave above the level already judged.
fn cumulative_due(cfg: &EngineConfig, day_out: u64, day_in: u64, judged_bucket: u8) -> bool {
    day_out >= cfg.min_cumulative_out_bytes
        && volume_bucket(day_out) > judged_bucket
        && ratio_of(day_out, day_in) >= cfg.min_ratio
}

fn add_dest(v: &mut Vec<DestAcc>, d: &DestRef<'_>, cap: usize) {
    // Newest first: a process mostly keeps talking to where it just did.
    if let Some(e) = v
        .iter_mut()
        .rev()
        .find(|e| e.port == d.port && e.ip == d.ip)
    {
        e.absorb(d);
    } else if v.len() < cap {
        v.push(d.to_acc());
    } else if let Some(min) = v.iter_mut().min_by_key(|e| e.out) {
        // Keep the biggest destinations; the smallest absorbs the rest.
        if d.out > min.out {
            *min = d.to_acc();
        }
    }
}

/// The shared `Arc` of service `name`, added on first use.
fn shared_service(services: &mut Vec<Arc<str>>, name: &str) -> Arc<str> {
    match services.iter().find(|s| s.as_ref() == name) {
        Some(s) => s.clone(),
        None => {
            let s: Arc<str> = Arc::from(name);
            services.push(s.clone());
            s
        }
    }
}

/// A destination's (address, port) folded into one word: IPv4 exactly,
/// IPv6 hashed (a match is confirmed on the address).
fn dest_key(ip: &IpAddr, port: u16) -> u64 {
    match ip {
        IpAddr::V4(a) => (u64::from(u32::from(*a)) << 16) | u64::from(port),
        IpAddr::V6(a) => {
            let x = u128::from(*a);
            let h = (x as u64) ^ ((x >> 64) as u64).rotate_left(29) ^ u64::from(port);
            h.wrapping_mul(0x9E37_79B9_7F4A_7C15) | (1 << 63)
        }
    }
}

/// `add_dest` for a process's day list, with `keys` kept beside it: the
/// same entries in the same places, found by scanning words instead of
/// whole entries.
fn add_day_dest(
    (keys, min, hint): (&mut Vec<u64>, &mut Option<u32>, &mut u32),
    v: &mut Vec<DestAcc>,
    d: &DestRef<'_>,
    cap: usize,
) {
    let key = dest_key(&d.ip, d.port);
    // An (address, port) is in the list at most once, so the hinted entry,
    // if it is this destination, is the one the scan would find.
    let at_hint = v
        .get(*hint as usize)
        .is_some_and(|e| e.port == d.port && e.ip == d.ip);
    let found = if at_hint {
        Some(*hint as usize)
    } else {
        keys.iter()
            .enumerate()
            .rev()
            .find(|(i, k)| **k == key && v[*i].port == d.port && v[*i].ip == d.ip)
            .map(|(i, _)| i)
    };
    *hint = found.unwrap_or(v.len().min(cap)) as u32;
    if let Some(i) = found {
        v[i].absorb(d);
        // Only the smallest growing can change which entry is smallest.
        if d.out > 0 && *min == Some(i as u32) {
            *min = None;
        }
    } else if v.len() < cap {
        v.push(d.to_acc());
        keys.push(key);
    } else {
        let i = match *min {
            Some(i) => i as usize,
            None => match v.iter().enumerate().min_by_key(|(_, e)| e.out) {
                Some((i, _)) => i,
                None => return,
            },
        };
        *min = Some(i as u32);
        // Keep the biggest destinations; the smallest absorbs the rest.
        if d.out > v[i].out {
            v[i] = d.to_acc();
            keys[i] = key;
            *min = None;
        }
    }
}

/// The service that received the most bytes (ties: alphabetical).
fn top_service(dests: &[DestAcc]) -> String {
    // A handful of services: a short list beats a map.
    let mut by: Vec<(&str, u64)> = Vec::with_capacity(dests.len().min(8));
    for d in dests {
        match by.iter_mut().find(|(s, _)| *s == d.service.as_ref()) {
            Some(e) => e.1 += d.out,
            None => by.push((d.service.as_ref(), d.out)),
        }
    }
    by.into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(a.0)))
        .map(|(s, _)| s.to_string())
        .unwrap_or_else(|| OTHER.to_string())
}

pub fn ratio_of(out: u64, inb: u64) -> f64 {
    out as f64 / (inb.max(1)) as f64
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{ApprovedService, Suppression};
    use crate::telemetry::{HostEvent, NetRecord, Transport};

    const T0: i64 = 1_767_571_200_000_000; // 2026-01-05T00:00:00Z

    fn t(secs: i64) -> Timestamp {
        Timestamp(T0 + secs * 1_000_000)
    }

    fn start(host: &str, pid: u32, name: &str, at: i64, parent: Option<&str>) -> Event {
        Event::ProcessStart(ProcessStart {
            ts: t(at),
            host: host.into(),
            pid,
            name: name.into(),
            ppid: Some(1),
            exe: Some(format!(r"C:\bin\{name}")),
            cmdline: Some(name.into()),
            user: Some("alice".into()),
            parent_name: parent.map(str::to_string),
        })
    }

    fn net(
        host: &str,
        pid: u32,
        at: i64,
        ip: &str,
        out: u64,
        inb: u64,
        sni: Option<&str>,
    ) -> Event {
        Event::Net(NetRecord {
            ts: t(at),
            host: host.into(),
            pid,
            proto: Transport::Tcp,
            dst_ip: ip.parse().unwrap(),
            dst_port: 443,
            bytes_out: out,
            bytes_in: inb,
            sni: sni.map(str::to_string),
            domain: None,
        })
    }

    /// Alerts on anything: no learning, no peer minimum, threshold 0.
    fn eager() -> EngineConfig {
        EngineConfig {
            learning_secs: 0,
            min_peers: 1,
            alert_score: 0.0,
            medium_score: 100.0,
            high_score: 200.0,
            critical_score: 300.0,
            min_window_out_bytes: 1000,
            min_cumulative_out_bytes: u64::MAX,
            ..EngineConfig::default()
        }
    }

    fn run(engine: &mut Engine, events: &[Event]) -> Vec<Alert> {
        for e in events {
            engine.ingest(e);
        }
        engine.flush();
        engine.drain_alerts()
    }

    #[test]
    fn internal_test_agrees_with_the_config() {
        let mut cfg = EngineConfig::default();
        cfg.internal_networks
            .push("203.0.113.0/26".parse().unwrap());
        cfg.internal_networks
            .push("2001:db8:1::/48".parse().unwrap());
        let nets = InternalNets::new(&cfg);
        let ips = [
            "10.1.2.3",
            "9.255.255.255",
            "172.16.0.1",
            "172.32.0.1",
            "192.168.1.1",
            "127.0.0.1",
            "169.254.1.1",
            "100.64.0.1",
            "100.128.0.1",
            "203.0.113.63",
            "203.0.113.64",
            "8.8.8.8",
            "::1",
            "fe80::1",
            "fd00::1",
            "2001:db8:1::5",
            "2001:db8:2::5",
            "::ffff:10.0.0.1",
            "::ffff:8.8.8.8",
            "2606:4700::1",
        ];
        for ip in ips {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(nets.contains(&ip), cfg.is_internal(&ip), "{ip}");
        }
        assert!(nets.contains(&"203.0.113.1".parse().unwrap()));
        assert!(!nets.contains(&"8.8.8.8".parse().unwrap()));
    }

    #[test]
    fn a_window_accumulates_closes_and_explains_itself() {
        let mut e = Engine::new(eager(), Policy::default());
        let alerts = run(
            &mut e,
            &[
                start("ws-1", 42, "WINWORD.EXE", 0, Some("explorer.exe")),
                net(
                    "ws-1",
                    42,
                    10,
                    "162.125.1.1",
                    3 << 20,
                    1000,
                    Some("content.dropboxapi.com"),
                ),
                net(
                    "ws-1",
                    42,
                    60,
                    "162.125.1.1",
                    2 << 20,
                    1000,
                    Some("content.dropboxapi.com"),
                ),
                // The next minute: a second window.
                net(
                    "ws-1",
                    42,
                    70,
                    "162.125.1.2",
                    1 << 20,
                    500,
                    Some("content.dropboxapi.com"),
                ),
            ],
        );
        // The second window of the same process is a repeat, not a new alert.
        assert_eq!(alerts.len(), 1, "{alerts:#?}");
        assert_eq!(e.stats().repeats, 1);
        let a = &alerts[0];
        assert_eq!(a.app, "winword.exe");
        assert_eq!(a.host, "ws-1");
        assert_eq!(a.pid, 42);
        assert_eq!(a.parent_app.as_deref(), Some("explorer.exe"));
        assert_eq!(a.user.as_deref(), Some("alice"));
        assert_eq!(a.exe.as_deref(), Some(r"C:\bin\WINWORD.EXE"));
        assert_eq!(a.window_start, "2026-01-05T00:00:00Z");
        assert_eq!(a.window_end, "2026-01-05T00:01:00Z");
        assert_eq!(a.bytes_out, 5 << 20);
        assert_eq!(a.bytes_in, 2000);
        assert_eq!(a.service, "dropbox");
        assert_eq!(a.destinations.len(), 1);
        assert_eq!(
            a.destinations[0].domain.as_deref(),
            Some("content.dropboxapi.com")
        );
        let sum: f64 = a.reasons.iter().map(|r| r.contribution).sum();
        assert!((sum - a.score).abs() < 0.01);
        assert!(
            a.summary()
                .starts_with("winword.exe on ws-1 sent 5.0 MiB to dropbox"),
            "{}",
            a.summary()
        );
        assert_eq!(e.stats().windows_closed, 2);
    }

    #[test]
    fn dns_answers_name_destinations_without_sni() {
        let mut e = Engine::new(eager(), Policy::default());
        let alerts = run(
            &mut e,
            &[
                start("h", 7, "excel.exe", 0, None),
                Event::Dns(DnsRecord {
                    ts: t(1),
                    host: "h".into(),
                    query: "Content.DropboxAPI.com.".into(),
                    answers: vec!["162.125.9.9".parse().unwrap()],
                    pid: None,
                }),
                net("h", 7, 30, "162.125.9.9", 4 << 20, 100, None),
            ],
        );
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].service, "dropbox");
        assert_eq!(
            alerts[0].destinations[0].domain.as_deref(),
            Some("content.dropboxapi.com")
        );
        // DNS seen on another host does not name this host's traffic.
        let mut e = Engine::new(eager(), Policy::default());
        let alerts = run(
            &mut e,
            &[
                Event::Dns(DnsRecord {
                    ts: t(1),
                    host: "other".into(),
                    query: "content.dropboxapi.com".into(),
                    answers: vec!["162.125.9.9".parse().unwrap()],
                    pid: None,
                }),
                net("h", 7, 30, "162.125.9.9", 4 << 20, 100, None),
            ],
        );
        assert_eq!(alerts[0].service, "other");
        assert!(alerts[0]
            .reasons
            .iter()
            .any(|r| r.factor == "unnamed_destination"));
    }

    #[test]
    fn internal_and_non_https_traffic_is_not_outbound() {
        let mut e = Engine::new(eager(), Policy::default());
        let mut plain = net("h", 7, 30, "8.8.8.8", 4 << 20, 100, None);
        if let Event::Net(n) = &mut plain {
            n.dst_port = 80;
        }
        let alerts = run(
            &mut e,
            &[
                start("h", 7, "excel.exe", 0, None),
                net("h", 7, 30, "10.1.2.3", 4 << 20, 100, Some("files.corp")),
                net("h", 7, 30, "192.168.1.1", 4 << 20, 100, None),
                plain,
            ],
        );
        assert!(alerts.is_empty());
        let s = e.stats();
        assert_eq!(s.internal_records, 2);
        assert_eq!(s.non_https_records, 1);
        assert_eq!(s.windows_closed, 0);
    }

    #[test]
    fn unknown_pids_are_kept_as_app_unknown() {
        let mut e = Engine::new(eager(), Policy::default());
        let alerts = run(
            &mut e,
            &[
                net("h", 999, 30, "31.216.145.5", 8 << 20, 100, Some("mega.nz")),
                net("h", 999, 40, "31.216.145.5", 1, 1, Some("mega.nz")),
            ],
        );
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].app, "unknown");
        assert_eq!(alerts[0].service, "mega");
        assert_eq!(e.stats().unknown_pid_records, 2);
    }

    /// (app, bytes out) of each alert.
    fn apps_of(alerts: &[Alert]) -> Vec<(&str, u64)> {
        alerts
            .iter()
            .map(|a| (a.app.as_str(), a.bytes_out))
            .collect()
    }

    #[test]
    fn a_later_instance_takes_later_records_after_an_earlier_one() {
        // Both starts arrive first; the host's remembered process must not
        // keep the older instance for a record after the newer one's start.
        let mut e = Engine::new(eager(), Policy::default());
        let alerts = run(
            &mut e,
            &[
                start("h", 5, "notepad.exe", 0, None),
                start("h", 5, "curl.exe", 100, None),
                net("h", 5, 50, "1.1.1.1", 2 << 20, 10, Some("a.example")),
                net("h", 5, 150, "1.1.1.1", 3 << 20, 10, Some("a.example")),
            ],
        );
        assert_eq!(
            apps_of(&alerts),
            [("notepad.exe", 2 << 20), ("curl.exe", 3 << 20)]
        );
    }

    #[test]
    fn pid_reuse_attributes_by_start_time() {
        let mut e = Engine::new(eager(), Policy::default());
        let alerts = run(
            &mut e,
            &[
                start("h", 5, "notepad.exe", 0, None),
                net("h", 5, 30, "1.1.1.1", 2 << 20, 10, Some("a.example")),
                Event::ProcessEnd(ProcessEnd {
                    ts: t(40),
                    host: "h".into(),
                    pid: 5,
                }),
                start("h", 5, "curl.exe", 100, None),
                net("h", 5, 130, "1.1.1.1", 3 << 20, 10, Some("a.example")),
            ],
        );
        assert_eq!(
            apps_of(&alerts),
            [("notepad.exe", 2 << 20), ("curl.exe", 3 << 20)]
        );
    }

    #[test]
    fn late_records_are_counted_not_lost() {
        let mut e = Engine::new(eager(), Policy::default());
        for ev in [
            start("h", 5, "excel.exe", 0, None),
            net("h", 5, 30, "1.1.1.1", 2 << 20, 10, Some("a.example")),
            // Out of order but within the allowed lateness: same window.
            net("h", 5, 85, "1.1.1.1", 1, 1, Some("a.example")),
            net("h", 5, 20, "1.1.1.1", 1 << 20, 10, Some("a.example")),
            // Event time moves far on: the first window closes.
            net("h", 5, 400, "1.1.1.1", 1, 1, Some("a.example")),
            // Too late for its window.
            net("h", 5, 50, "1.1.1.1", 5 << 20, 10, Some("a.example")),
        ] {
            e.ingest(&ev);
        }
        let first = e.drain_alerts();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].bytes_out, 3 << 20);
        assert_eq!(e.stats().late_records, 1);
    }

    #[test]
    fn ids_are_stable_across_replays_and_hosts_are_independent() {
        let events = vec![
            start("a", 1, "winword.exe", 0, None),
            start("b", 1, "winword.exe", 0, None),
            net("a", 1, 30, "162.125.1.1", 4 << 20, 10, Some("dropbox.com")),
            net("b", 1, 31, "162.125.1.1", 4 << 20, 10, Some("dropbox.com")),
        ];
        let a1 = run(&mut Engine::new(eager(), Policy::default()), &events);
        let a2 = run(&mut Engine::new(eager(), Policy::default()), &events);
        assert_eq!(a1.len(), 2);
        let ids1: Vec<&str> = a1.iter().map(|a| a.id.as_str()).collect();
        let ids2: Vec<&str> = a2.iter().map(|a| a.id.as_str()).collect();
        assert_eq!(ids1, ids2);
        assert_ne!(ids1[0], ids1[1]);
    }

    #[test]
    fn policy_suppresses_and_approves_and_learning_holds_back() {
        let events = vec![
            start("build-1", 1, "curl", 0, None),
            net(
                "build-1",
                1,
                30,
                "52.216.1.1",
                4 << 20,
                10,
                Some("b.s3.amazonaws.com"),
            ),
        ];
        let policy = Policy {
            suppressions: vec![Suppression {
                app: Some("curl".into()),
                host: Some("build-*".into()),
                service: None,
                until: None,
                reason: "CI".into(),
            }],
            ..Policy::default()
        };
        let mut e = Engine::new(eager(), policy);
        assert!(run(&mut e, &events).is_empty());
        assert_eq!(e.stats().suppressed, 1);

        let approved = Policy {
            approved: vec![ApprovedService {
                service: "aws_s3".into(),
                app: None,
            }],
            ..Policy::default()
        };
        let low = EngineConfig {
            alert_score: -10.0,
            ..eager()
        };
        let alerts = run(&mut Engine::new(low, approved), &events);
        assert!(alerts[0]
            .reasons
            .iter()
            .any(|r| r.factor == "approved_service" && r.contribution < 0.0));

        let learning = EngineConfig {
            learning_secs: 3600,
            ..eager()
        };
        let mut e = Engine::new(learning, Policy::default());
        assert!(run(&mut e, &events).is_empty());
        assert_eq!(e.stats().learning, 1);
    }

    #[test]
    fn a_learnt_fleet_baseline_ends_learning_for_a_new_engine() {
        let events = vec![
            start("build-1", 1, "curl", 0, None),
            net(
                "build-1",
                1,
                30,
                "52.216.1.1",
                4 << 20,
                10,
                Some("b.s3.amazonaws.com"),
            ),
        ];
        let learning = EngineConfig {
            learning_secs: 86_400,
            ..eager()
        };
        let mut fresh = Engine::new(learning.clone(), Policy::default());
        assert!(run(&mut fresh, &events).is_empty());
        // The fleet has data from three days earlier: already learnt.
        let mut fleet = FleetBaseline::new();
        let old = HostAppDay {
            running: true,
            ..HostAppDay::default()
        };
        fleet.add(&old.contribution("curl", t(0).day() - 3));
        let mut joined = Engine::new(learning, Policy::default());
        joined.set_fleet_baseline(fleet);
        assert_eq!(run(&mut joined, &events).len(), 1);
    }

    #[test]
    fn repeated_findings_of_a_process_are_not_realerted() {
        let mut events = vec![start("h", 1, "winword.exe", 0, None)];
        for m in 0..10 {
            events.push(net(
                "h",
                1,
                30 + m * 60,
                "162.125.1.1",
                4 << 20,
                10,
                Some("dropbox.com"),
            ));
        }
        let mut e = Engine::new(eager(), Policy::default());
        let alerts = run(&mut e, &events);
        assert_eq!(alerts.len(), 1, "{alerts:#?}");
        assert_eq!(e.stats().repeats, 9);
    }

    #[test]
    fn memory_is_released_when_processes_end() {
        let mut e = Engine::new(eager(), Policy::default());
        for pid in 0..500u32 {
            e.ingest(&start("h", pid, "x.exe", i64::from(pid), None));
            e.ingest(&net(
                "h",
                pid,
                i64::from(pid) + 5,
                "1.1.1.1",
                10,
                10,
                Some("a.example"),
            ));
            e.ingest(&Event::ProcessEnd(ProcessEnd {
                ts: t(i64::from(pid) + 6),
                host: "h".into(),
                pid,
            }));
        }
        e.ingest(&Event::Host(HostEvent {
            ts: t(10_000),
            host: "h".into(),
            os: None,
            labels: Default::default(),
        }));
        e.advance_to(t(10_000));
        assert!(e.stats().live_processes < 5, "{:?}", e.stats());
    }

    #[test]
    fn the_judged_host_is_not_its_own_peer() {
        // 20 hosts save small files; one host uploads big. Its own upload
        // must not count as a peer that "did this too".
        let cfg = EngineConfig {
            min_peers: 5,
            ..eager()
        };
        let mut e = Engine::new(cfg, Policy::default());
        let mut events = Vec::new();
        for h in 0..20 {
            let host = format!("h{h}");
            events.push(start(&host, 1, "winword.exe", 0, None));
            events.push(net(
                &host,
                1,
                30,
                "13.107.136.1",
                2 << 20,
                1000,
                Some("contoso.sharepoint.com"),
            ));
        }
        for ev in &events {
            e.ingest(ev);
        }
        // Every host's first window closes; then h0 uploads big.
        e.advance_to(t(1000));
        let alerts = run(
            &mut e,
            &[net(
                "h0",
                1,
                4000,
                "162.125.1.1",
                300 << 20,
                1000,
                Some("dropbox.com"),
            )],
        );
        let big = alerts.iter().find(|a| a.bytes_out == 300 << 20).unwrap();
        let vol = big.reasons.iter().find(|r| r.factor == "volume").unwrap();
        assert_eq!(vol.peers, 19);
        assert!(vol.detail.contains("0 of 19"), "{}", vol.detail);
    }
}
