//! Mergeable, deterministic fleet baselines.
//!
//! Every statistic is an integer count of *hosts*: each host contributes at
//! most once per (app, day) to each histogram (its daily maximum), so one host
//! cannot move a baseline by more than one, and an attacker's own windows
//! barely move it. Merging is integer addition: identical bits whatever the
//! order (tested), which lets every Raft replica hold the same baseline.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Ratio buckets: `floor(2·log2((out+c)/(in+c))) + 32`, clamped to 0..=64.
pub const RATIO_BUCKETS: usize = 65;
/// Volume buckets: `floor(2·log2(bytes))`, clamped to 0..=79 (half-octaves up to 1 TiB).
pub const VOLUME_BUCKETS: usize = 80;
/// Persistence buckets: half-octaves of the number of upload windows in a day.
pub const PERSISTENCE_BUCKETS: usize = 24;

/// Half-octave bucket of a count of windows.
pub fn persistence_bucket(windows: u64) -> u8 {
    volume_bucket(windows).min(PERSISTENCE_BUCKETS as u8 - 1)
}

/// Half-octave bucket of a byte count (integer arithmetic: `bitlen(x²) - 1`).
pub fn volume_bucket(bytes: u64) -> u8 {
    if bytes == 0 {
        return 0;
    }
    let sq = u128::from(bytes) * u128::from(bytes);
    let b = 127 - sq.leading_zeros();
    b.min(VOLUME_BUCKETS as u32 - 1) as u8
}

/// The smallest byte count in a volume bucket.
pub fn volume_bucket_floor(bucket: u8) -> u64 {
    // 2^(b/2), rounded up.
    let b = u32::from(bucket);
    let base = 1u64 << (b / 2);
    if b % 2 == 0 {
        base
    } else {
        (base as f64 * std::f64::consts::SQRT_2).ceil() as u64
    }
}

/// Half-octave bucket of the smoothed outbound:inbound ratio.
pub fn ratio_bucket(out: u64, inb: u64, smoothing: u64) -> u8 {
    let r = (out as f64 + smoothing as f64) / (inb as f64 + smoothing as f64);
    let b = (2.0 * r.log2()).floor() + 32.0;
    b.clamp(0.0, (RATIO_BUCKETS - 1) as f64) as u8
}

/// The smoothed ratio a ratio bucket starts at.
pub fn ratio_bucket_floor(bucket: u8) -> f64 {
    2f64.powf((f64::from(bucket) - 32.0) / 2.0)
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceCount {
    /// Hosts of the app that sent anything to the service that day.
    pub hosts: u64,
    /// Hosts of the app that uploaded at least the upload threshold in one window.
    pub upload_hosts: u64,
}

/// One (app, day) of fleet statistics — or one collector's share of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppDayStats {
    pub app: String,
    /// Days since the Unix epoch.
    pub day: i64,
    pub hosts_running: u64,
    pub hosts_active: u64,
    pub hosts_new: u64,
    pub ratio_hist: Vec<u64>,
    pub volume_hist: Vec<u64>,
    pub daily_out_hist: Vec<u64>,
    pub services: BTreeMap<String, ServiceCount>,
    /// Per-host daily number of windows that uploaded (persistence).
    #[serde(default)]
    pub upload_windows_hist: Vec<u64>,
}

impl AppDayStats {
    pub fn empty(app: &str, day: i64) -> Self {
        AppDayStats {
            app: app.to_string(),
            day,
            hosts_running: 0,
            hosts_active: 0,
            hosts_new: 0,
            ratio_hist: vec![0; RATIO_BUCKETS],
            volume_hist: vec![0; VOLUME_BUCKETS],
            daily_out_hist: vec![0; VOLUME_BUCKETS],
            services: BTreeMap::new(),
            upload_windows_hist: vec![0; PERSISTENCE_BUCKETS],
        }
    }

    /// Adds `other` (any app/day: the caller decides what belongs together).
    pub fn merge(&mut self, other: &AppDayStats) {
        self.hosts_running += other.hosts_running;
        self.hosts_active += other.hosts_active;
        self.hosts_new += other.hosts_new;
        add_hist(&mut self.ratio_hist, &other.ratio_hist);
        add_hist(&mut self.volume_hist, &other.volume_hist);
        add_hist(&mut self.daily_out_hist, &other.daily_out_hist);
        add_hist(&mut self.upload_windows_hist, &other.upload_windows_hist);
        for (s, c) in &other.services {
            if c.hosts == 0 && c.upload_hosts == 0 {
                continue;
            }
            let e = self.services.entry(s.clone()).or_default();
            e.hosts += c.hosts;
            e.upload_hosts += c.upload_hosts;
        }
    }

    /// Removes a contribution previously merged (saturating: a stale fleet
    /// view may not contain all of it).
    pub fn subtract(&mut self, other: &AppDayStats) {
        self.hosts_running = self.hosts_running.saturating_sub(other.hosts_running);
        self.hosts_active = self.hosts_active.saturating_sub(other.hosts_active);
        self.hosts_new = self.hosts_new.saturating_sub(other.hosts_new);
        sub_hist(&mut self.ratio_hist, &other.ratio_hist);
        sub_hist(&mut self.volume_hist, &other.volume_hist);
        sub_hist(&mut self.daily_out_hist, &other.daily_out_hist);
        sub_hist(&mut self.upload_windows_hist, &other.upload_windows_hist);
        for (s, c) in &other.services {
            if let Some(e) = self.services.get_mut(s) {
                e.hosts = e.hosts.saturating_sub(c.hosts);
                e.upload_hosts = e.upload_hosts.saturating_sub(c.upload_hosts);
                if e.hosts == 0 && e.upload_hosts == 0 {
                    self.services.remove(s);
                }
            }
        }
    }

    /// Adds (or saturating-subtracts) one host's indicator cells.
    fn apply_indicators(&mut self, i: Indicators, add: bool) {
        let step = |v: &mut u64| {
            *v = if add { *v + 1 } else { v.saturating_sub(1) };
        };
        // As `merge` (grows to the contribution's full length) and
        // `subtract` (never grows) do.
        let cell = |h: &mut Vec<u64>, b: Option<u8>, full: usize| {
            if let Some(b) = b {
                let b = usize::from(b);
                if add && h.len() < full {
                    h.resize(full, 0);
                }
                if let Some(v) = h.get_mut(b) {
                    step(v);
                }
            }
        };
        if i.running {
            step(&mut self.hosts_running);
        }
        if i.active {
            step(&mut self.hosts_active);
        }
        if i.new {
            step(&mut self.hosts_new);
        }
        cell(&mut self.ratio_hist, i.ratio, RATIO_BUCKETS);
        cell(&mut self.volume_hist, i.volume, VOLUME_BUCKETS);
        cell(&mut self.daily_out_hist, i.daily_out, VOLUME_BUCKETS);
        cell(
            &mut self.upload_windows_hist,
            i.upload_windows,
            PERSISTENCE_BUCKETS,
        );
    }

    /// No count at all: such statistics are never stored.
    pub fn is_empty(&self) -> bool {
        self.hosts_running == 0
            && self.hosts_active == 0
            && self.hosts_new == 0
            && self
                .services
                .values()
                .all(|c| c.hosts == 0 && c.upload_hosts == 0)
            && [
                &self.ratio_hist,
                &self.volume_hist,
                &self.daily_out_hist,
                &self.upload_windows_hist,
            ]
            .iter()
            .all(|h| h.iter().all(|v| *v == 0))
    }

    /// Canonical bytes: the same statistics always give the same bytes.
    pub fn write_canonical(&self, out: &mut Vec<u8>) {
        put_str(out, &self.app);
        out.extend_from_slice(&self.day.to_le_bytes());
        for v in [self.hosts_running, self.hosts_active, self.hosts_new] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for h in [
            &self.ratio_hist,
            &self.volume_hist,
            &self.daily_out_hist,
            &self.upload_windows_hist,
        ] {
            out.extend_from_slice(&(h.len() as u64).to_le_bytes());
            for v in h {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        out.extend_from_slice(&(self.services.len() as u64).to_le_bytes());
        for (s, c) in &self.services {
            put_str(out, s);
            out.extend_from_slice(&c.hosts.to_le_bytes());
            out.extend_from_slice(&c.upload_hosts.to_le_bytes());
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn add_hist(a: &mut Vec<u64>, b: &[u64]) {
    if a.len() < b.len() {
        a.resize(b.len(), 0);
    }
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

fn sub_hist(a: &mut [u64], b: &[u64]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x = x.saturating_sub(*y);
    }
}

/// The services one host reached with one app on one day, and whether one
/// window uploaded to each: usually one to three, so a short list ordered by
/// name (a B-tree map's smallest node holds eleven entries and each key was
/// its own `String`). Names are shared `Arc`s: the engine hands each
/// service's one copy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostServices(Vec<(std::sync::Arc<str>, bool)>);

impl HostServices {
    fn find(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_ref().cmp(name))
    }

    pub fn get(&self, name: &str) -> Option<&bool> {
        self.find(name).ok().map(|i| &self.0[i].1)
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut bool> {
        self.find(name).ok().map(|i| &mut self.0[i].1)
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.find(name).is_ok()
    }

    /// Sets `name`'s flag; the flag it had, if it was there.
    pub fn insert(&mut self, name: impl Into<std::sync::Arc<str>>, uploaded: bool) -> Option<bool> {
        let name = name.into();
        match self.find(&name) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, uploaded)),
            Err(i) => {
                self.0.insert(i, (name, uploaded));
                None
            }
        }
    }

    /// In name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &bool)> {
        self.0.iter().map(|(k, v)| (k.as_ref(), v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<K: Into<std::sync::Arc<str>>> FromIterator<(K, bool)> for HostServices {
    fn from_iter<I: IntoIterator<Item = (K, bool)>>(iter: I) -> Self {
        let mut s = HostServices::default();
        for (k, v) in iter {
            s.insert(k, v);
        }
        s
    }
}

/// What one host did with one app on one day. Its contribution to the
/// fleet's `AppDayStats` is at most one per statistic.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostAppDay {
    pub running: bool,
    pub active: bool,
    pub new: bool,
    /// Highest ratio bucket of a window that uploaded enough to be judged.
    pub max_ratio: Option<u8>,
    /// Highest volume bucket of any active window.
    pub max_volume: Option<u8>,
    /// Outbound bytes of the app on the host that day.
    pub out_total: u64,
    /// Services reached, and whether one window uploaded to it.
    pub services: HostServices,
    /// Windows of the day that uploaded (at least 64 KiB).
    pub upload_windows: u64,
}

impl HostAppDay {
    pub fn contribution(&self, app: &str, day: i64) -> AppDayStats {
        let mut s = AppDayStats::empty(app, day);
        s.hosts_running = u64::from(self.running);
        s.hosts_active = u64::from(self.active);
        s.hosts_new = u64::from(self.new);
        if let Some(b) = self.max_ratio {
            s.ratio_hist[usize::from(b)] = 1;
        }
        if self.active {
            if let Some(b) = self.max_volume {
                s.volume_hist[usize::from(b)] = 1;
            }
            s.daily_out_hist[usize::from(volume_bucket(self.out_total))] = 1;
        }
        if self.upload_windows > 0 {
            s.upload_windows_hist[usize::from(persistence_bucket(self.upload_windows))] = 1;
        }
        for (svc, upload) in self.services.iter() {
            s.services.insert(
                svc.to_string(),
                ServiceCount {
                    hosts: 1,
                    upload_hosts: u64::from(*upload),
                },
            );
        }
        s
    }
}

/// The histogram cells and flags one host's (app, day) contributes to, without
/// its services: what `HostAppDay::contribution` would set to one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Indicators {
    pub running: bool,
    pub active: bool,
    pub new: bool,
    pub ratio: Option<u8>,
    pub volume: Option<u8>,
    pub daily_out: Option<u8>,
    pub upload_windows: Option<u8>,
}

impl HostAppDay {
    /// The cells of `contribution` that are one (services aside).
    pub fn indicators(&self) -> Indicators {
        Indicators {
            running: self.running,
            active: self.active,
            new: self.new,
            ratio: self.max_ratio,
            volume: self.max_volume.filter(|_| self.active),
            daily_out: self.active.then(|| volume_bucket(self.out_total)),
            upload_windows: (self.upload_windows > 0)
                .then(|| persistence_bucket(self.upload_windows)),
        }
    }
}

/// A change of one service's entry in a host's (app, day): `None` is absent,
/// `Some(uploaded)` present.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceChange<'a> {
    pub service: &'a str,
    pub before: Option<bool>,
    pub after: Option<bool>,
}

/// Per (app, day) statistics summed over every contributor.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FleetBaseline {
    pub apps: BTreeMap<String, BTreeMap<i64, AppDayStats>>,
}

impl FleetBaseline {
    pub fn new() -> Self {
        FleetBaseline::default()
    }

    /// Sums partials (from any number of collectors, in any order).
    pub fn from_partials<'a>(partials: impl IntoIterator<Item = &'a AppDayStats>) -> Self {
        let mut b = FleetBaseline::new();
        for p in partials {
            b.add(p);
        }
        b
    }

    pub fn add(&mut self, p: &AppDayStats) {
        if p.is_empty() {
            return;
        }
        self.apps
            .entry(p.app.clone())
            .or_default()
            .entry(p.day)
            .or_insert_with(|| AppDayStats::empty(&p.app, p.day))
            .merge(p);
    }

    pub fn subtract(&mut self, p: &AppDayStats) {
        if let Some(days) = self.apps.get_mut(&p.app) {
            if let Some(d) = days.get_mut(&p.day) {
                d.subtract(p);
                if d.is_empty() {
                    days.remove(&p.day);
                }
            }
            if days.is_empty() {
                self.apps.remove(&p.app);
            }
        }
    }

    /// Moves one host's contribution to (app, day) from `before` to `after`,
    /// where only the listed services changed: the same result as
    /// `subtract(before.contribution())` then `add(after.contribution())`,
    /// without building either (the engine's hot path; tested against it).
    pub fn apply_host_change(
        &mut self,
        app: &str,
        day: i64,
        before: Indicators,
        after: Indicators,
        services: &[ServiceChange<'_>],
    ) {
        if let Some(days) = self.apps.get_mut(app) {
            if let Some(d) = days.get_mut(&day) {
                d.apply_indicators(before, false);
                for c in services {
                    if let Some(up) = c.before {
                        if let Some(e) = d.services.get_mut(c.service) {
                            e.hosts = e.hosts.saturating_sub(1);
                            e.upload_hosts = e.upload_hosts.saturating_sub(u64::from(up));
                            if e.hosts == 0 && e.upload_hosts == 0 {
                                d.services.remove(c.service);
                            }
                        }
                    }
                }
                if d.hosts_running == 0 && d.is_empty() {
                    days.remove(&day);
                }
            }
            if days.is_empty() {
                self.apps.remove(app);
            }
        }
        let adds_service = services.iter().any(|c| c.after.is_some());
        if after == Indicators::default() && !adds_service {
            return;
        }
        let days = match self.apps.get_mut(app) {
            Some(d) => d,
            None => self.apps.entry(app.to_string()).or_default(),
        };
        let d = days
            .entry(day)
            .or_insert_with(|| AppDayStats::empty(app, day));
        d.apply_indicators(after, true);
        for c in services {
            if let Some(up) = c.after {
                let e = match d.services.get_mut(c.service) {
                    Some(e) => e,
                    None => d.services.entry(c.service.to_string()).or_default(),
                };
                e.hosts += 1;
                e.upload_hosts += u64::from(up);
            }
        }
    }

    pub fn merge(&mut self, other: &FleetBaseline) {
        for days in other.apps.values() {
            for d in days.values() {
                self.add(d);
            }
        }
    }

    /// Drops days outside `[newest_day - horizon_days + 1, newest_day]`.
    pub fn prune(&mut self, newest_day: i64, horizon_days: u32) {
        let oldest = newest_day - i64::from(horizon_days) + 1;
        self.apps.retain(|_, days| {
            days.retain(|d, _| *d >= oldest);
            !days.is_empty()
        });
    }

    pub fn newest_day(&self) -> Option<i64> {
        self.apps
            .values()
            .filter_map(|d| d.keys().next_back().copied())
            .max()
    }

    pub fn days_of(&self, app: &str) -> Option<&BTreeMap<i64, AppDayStats>> {
        self.apps.get(app)
    }

    /// Canonical bytes of the whole baseline.
    pub fn to_canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for days in self.apps.values() {
            for d in days.values() {
                d.write_canonical(&mut out);
            }
        }
        out
    }

    /// SHA-256 of the canonical bytes, hex.
    pub fn hash_hex(&self) -> String {
        hex::encode(Sha256::digest(self.to_canonical_bytes()))
    }

    /// The statistics of `app` over the horizon ending at `today`, as seen by
    /// a judged host whose own contributions are `own` (left out: a host is
    /// never its own peer).
    pub fn peer_view<'a>(
        &self,
        app: &str,
        today: i64,
        horizon_days: u32,
        own: impl IntoIterator<Item = &'a AppDayStats>,
    ) -> PeerView {
        let oldest = today - i64::from(horizon_days) + 1;
        let mut days: BTreeMap<i64, AppDayStats> = self
            .apps
            .get(app)
            .map(|d| {
                d.range(oldest..=today)
                    .map(|(k, v)| (*k, v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        for o in own {
            if o.app == app {
                if let Some(d) = days.get_mut(&o.day) {
                    d.subtract(o);
                }
            }
        }
        PeerView::from_days(app, today, days.values())
    }
}

/// Advances an ordered map walk to `name`: its value if the map has it.
fn take_at<'a, K: AsRef<str>, V: 'a>(
    it: &mut Option<std::iter::Peekable<impl Iterator<Item = (K, &'a V)>>>,
    name: &str,
) -> Option<&'a V> {
    let it = it.as_mut()?;
    while let Some((k, _)) = it.peek() {
        match k.as_ref().cmp(name) {
            std::cmp::Ordering::Less => {
                it.next();
            }
            std::cmp::Ordering::Equal => return it.next().map(|(_, v)| v),
            std::cmp::Ordering::Greater => return None,
        }
    }
    None
}

/// An app's peer statistics over the horizon, judged host excluded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerView {
    pub app: String,
    /// Host-days on which the app ran / was network-active.
    pub running_host_days: u64,
    pub active_host_days: u64,
    /// The most distinct peer hosts seen running the app on one day.
    pub peer_hosts: u64,
    /// The most distinct peer hosts seen network-active on one day.
    pub active_peer_hosts: u64,
    /// Hosts that started running the app today (rollouts).
    pub new_today: u64,
    /// Days of the horizon with any data for the app.
    pub days: u64,
    pub ratio_hist: Vec<u64>,
    pub volume_hist: Vec<u64>,
    pub daily_out_hist: Vec<u64>,
    /// Peer host-days per service. After `reset`, services at zero may be
    /// listed: they count as absent.
    pub services: BTreeMap<String, ServiceCount>,
    pub upload_windows_hist: Vec<u64>,
}

impl PeerView {
    /// No peer data yet (see `add_day`).
    pub fn new(app: &str) -> Self {
        PeerView {
            app: app.to_string(),
            running_host_days: 0,
            active_host_days: 0,
            peer_hosts: 0,
            active_peer_hosts: 0,
            new_today: 0,
            days: 0,
            ratio_hist: vec![0; RATIO_BUCKETS],
            volume_hist: vec![0; VOLUME_BUCKETS],
            daily_out_hist: vec![0; VOLUME_BUCKETS],
            services: BTreeMap::new(),
            upload_windows_hist: vec![0; PERSISTENCE_BUCKETS],
        }
    }

    /// Back to `new(app)`, keeping the buffers and the service names (at
    /// zero).
    pub fn reset(&mut self, app: &str) {
        self.app.clear();
        self.app.push_str(app);
        self.running_host_days = 0;
        self.active_host_days = 0;
        self.peer_hosts = 0;
        self.active_peer_hosts = 0;
        self.new_today = 0;
        self.days = 0;
        for (h, n) in [
            (&mut self.ratio_hist, RATIO_BUCKETS),
            (&mut self.volume_hist, VOLUME_BUCKETS),
            (&mut self.daily_out_hist, VOLUME_BUCKETS),
            (&mut self.upload_windows_hist, PERSISTENCE_BUCKETS),
        ] {
            h.clear();
            h.resize(n, 0);
        }
        // The names stay, at zero: a reused view does not allocate them
        // again. A name at zero counts as absent wherever a view is read.
        for c in self.services.values_mut() {
            *c = ServiceCount::default();
        }
    }

    /// Adds one day of peer statistics: the sum of one or two sources, less
    /// `minus` and less the judged host's own (app, day) `own`, every cell
    /// saturating at zero. The same view as `from_days` over that day merged and then
    /// subtracted (services left at zero aside), without building the day:
    /// the engine does this for every judged window.
    pub fn add_day(
        &mut self,
        today: i64,
        day: i64,
        (first, second): (&AppDayStats, Option<&AppDayStats>),
        minus: Option<&AppDayStats>,
        own: Option<&HostAppDay>,
    ) {
        let ind = own.map(HostAppDay::indicators).unwrap_or_default();
        let scalar = |f: fn(&AppDayStats) -> u64, own_one: bool| -> u64 {
            let sum = f(first) + second.map_or(0, f);
            sum.saturating_sub(minus.map_or(0, f) + u64::from(own_one))
        };
        let running = scalar(|d| d.hosts_running, ind.running);
        let active = scalar(|d| d.hosts_active, ind.active);
        let new = scalar(|d| d.hosts_new, ind.new);
        let mut nonempty = running != 0 || active != 0 || new != 0;
        let hist = |out: &mut Vec<u64>, f: fn(&AppDayStats) -> &Vec<u64>, own_cell: Option<u8>| {
            let (a, b, m) = (f(first), second.map(f), minus.map(f));
            let len = a.len().max(b.map_or(0, |h| h.len()));
            if out.len() < len {
                out.resize(len, 0);
            }
            let own_cell = own_cell.map(usize::from).filter(|c| *c < len);
            if let (None, None) = (b, m) {
                // One source, nothing shipped: add it, then take the judged
                // host's one cell back out.
                let p = a;
                let mut any = false;
                for (o, x) in out.iter_mut().zip(p) {
                    *o += x;
                    any |= *x != 0;
                }
                if let Some(c) = own_cell {
                    if p[c] >= 1 {
                        out[c] -= 1;
                        if p[c] == 1 {
                            any = p.iter().enumerate().any(|(i, x)| *x != 0 && i != c);
                        }
                    }
                }
                return any;
            }
            if let (Some(b), Some(m)) = (b, m) {
                if [a.len(), b.len(), m.len()] == [len; 3] && out.len() == len {
                    // Two sources less one, all of one length (the fleet
                    // view): one straight pass, then the host's own cell.
                    let mut nonzero = 0usize;
                    for (((o, x), y), z) in out.iter_mut().zip(a).zip(b).zip(m) {
                        let v = (x + y).saturating_sub(*z);
                        *o += v;
                        nonzero += usize::from(v != 0);
                    }
                    if let Some(c) = own_cell {
                        let was = (a[c] + b[c]).saturating_sub(m[c]);
                        let now = (a[c] + b[c]).saturating_sub(m[c] + 1);
                        out[c] -= was - now;
                        if was != 0 && now == 0 {
                            nonzero -= 1;
                        }
                    }
                    return nonzero > 0;
                }
            }
            let cell = |h: &[u64], i: usize| h.get(i).copied().unwrap_or(0);
            let mut any = false;
            for (i, o) in out.iter_mut().enumerate().take(len) {
                let sum = cell(a, i) + b.map_or(0, |h| cell(h, i));
                let less = m.map_or(0, |h| cell(h, i)) + u64::from(own_cell == Some(i));
                let v = sum.saturating_sub(less);
                *o += v;
                any |= v != 0;
            }
            any
        };
        nonempty |= hist(&mut self.ratio_hist, |d| &d.ratio_hist, ind.ratio);
        nonempty |= hist(&mut self.volume_hist, |d| &d.volume_hist, ind.volume);
        nonempty |= hist(
            &mut self.daily_out_hist,
            |d| &d.daily_out_hist,
            ind.daily_out,
        );
        nonempty |= hist(
            &mut self.upload_windows_hist,
            |d| &d.upload_windows_hist,
            ind.upload_windows,
        );
        // Services: the sources, what was shipped and the host's own are all
        // ordered by name, so one walk pairs them up.
        let mut a = Some(first.services.iter().peekable());
        let mut b = second.map(|d| d.services.iter().peekable());
        let mut m = minus.map(|d| d.services.iter().peekable());
        let mut o = own.map(|d| d.services.iter().peekable());
        loop {
            let ka = a.as_mut().and_then(|i| i.peek().map(|(k, _)| *k));
            let kb = b.as_mut().and_then(|i| i.peek().map(|(k, _)| *k));
            let name = match (ka, kb) {
                (None, None) => break,
                (Some(x), None) => x,
                (None, Some(y)) => y,
                (Some(x), Some(y)) => x.min(y),
            };
            let (mut hosts, mut uploads) = (0u64, 0u64);
            for (it, k) in [(&mut a, ka), (&mut b, kb)] {
                if k == Some(name) {
                    if let Some((_, c)) = it.as_mut().and_then(Iterator::next) {
                        hosts += c.hosts;
                        uploads += c.upload_hosts;
                    }
                }
            }
            let (mh, mu) = take_at(&mut m, name).map_or((0, 0), |c| (c.hosts, c.upload_hosts));
            let (oh, ou) = take_at(&mut o, name).map_or((0, 0), |up| (1, u64::from(*up)));
            let hosts = hosts.saturating_sub(mh + oh);
            let uploads = uploads.saturating_sub(mu + ou);
            if hosts == 0 && uploads == 0 {
                continue;
            }
            nonempty = true;
            self.add_service(name, hosts, uploads);
        }
        if !nonempty {
            return;
        }
        self.running_host_days += running;
        self.active_host_days += active;
        self.peer_hosts = self.peer_hosts.max(running);
        self.active_peer_hosts = self.active_peer_hosts.max(active);
        if day == today {
            self.new_today = new;
        }
        self.days += 1;
    }

    fn add_service(&mut self, name: &str, hosts: u64, uploads: u64) {
        match self.services.get_mut(name) {
            Some(e) => {
                e.hosts += hosts;
                e.upload_hosts += uploads;
            }
            None => {
                self.services.insert(
                    name.to_string(),
                    ServiceCount {
                        hosts,
                        upload_hosts: uploads,
                    },
                );
            }
        }
    }

    pub fn from_days<'a>(
        app: &str,
        today: i64,
        days: impl IntoIterator<Item = &'a AppDayStats>,
    ) -> Self {
        let mut v = PeerView::new(app);
        for d in days {
            v.running_host_days += d.hosts_running;
            v.active_host_days += d.hosts_active;
            v.peer_hosts = v.peer_hosts.max(d.hosts_running);
            v.active_peer_hosts = v.active_peer_hosts.max(d.hosts_active);
            if d.day == today {
                v.new_today = d.hosts_new;
            }
            if !d.is_empty() {
                v.days += 1;
            }
            add_hist(&mut v.ratio_hist, &d.ratio_hist);
            add_hist(&mut v.volume_hist, &d.volume_hist);
            add_hist(&mut v.daily_out_hist, &d.daily_out_hist);
            add_hist(&mut v.upload_windows_hist, &d.upload_windows_hist);
            for (s, c) in &d.services {
                let e = v.services.entry(s.clone()).or_default();
                e.hosts += c.hosts;
                e.upload_hosts += c.upload_hosts;
            }
        }
        v
    }

    /// (peer host-days at or above `bucket`, all peer host-days in `hist`).
    pub fn tail(hist: &[u64], bucket: u8) -> (u64, u64) {
        let total: u64 = hist.iter().sum();
        let above: u64 = hist.iter().skip(usize::from(bucket)).sum();
        (above, total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn buckets_are_monotonic_half_octaves() {
        assert_eq!(volume_bucket(0), 0);
        assert_eq!(volume_bucket(1), 0);
        assert_eq!(volume_bucket(2), 2);
        assert_eq!(volume_bucket(3), 3);
        assert_eq!(volume_bucket(4), 4);
        assert_eq!(volume_bucket(1 << 20), 40);
        assert_eq!(volume_bucket(u64::MAX), 79);
        let mut last = 0;
        for x in (0..40).map(|i| 1u64 << i).flat_map(|x| [x, x + x / 2]) {
            let b = volume_bucket(x);
            assert!(b >= last);
            assert!(volume_bucket_floor(b) <= x.max(1), "{x} {b}");
            last = b;
        }
        assert_eq!(ratio_bucket(0, 0, 4096), 32);
        assert!(ratio_bucket(100 << 20, 10_000, 4096) > 50);
        assert!(ratio_bucket(10_000, 100 << 20, 4096) < 15);
        assert!((ratio_bucket_floor(34) - 2.0).abs() < 1e-9);
    }

    fn arb_host_day() -> impl Strategy<Value = HostAppDay> {
        (
            (any::<bool>(), any::<bool>(), any::<bool>()),
            prop::option::of(0u8..65),
            prop::option::of(0u8..80),
            0u64..1 << 40,
            prop::collection::btree_map(
                prop::sample::select(vec!["dropbox", "onedrive", "other"]),
                any::<bool>(),
                0..3,
            ),
            0u64..300,
        )
            .prop_map(|((running, active, new), r, v, out, svc, up)| HostAppDay {
                running,
                active,
                new,
                max_ratio: r,
                max_volume: v,
                out_total: out,
                services: svc.into_iter().map(|(k, u)| (k.to_string(), u)).collect(),
                upload_windows: up,
            })
    }

    fn arb_partial() -> impl Strategy<Value = AppDayStats> {
        (
            prop::sample::select(vec!["winword.exe", "onedrive.exe", "curl"]),
            0i64..4,
            0u64..50,
            0u64..50,
            prop::collection::vec(0u64..5, RATIO_BUCKETS),
            prop::collection::vec(0u64..5, VOLUME_BUCKETS),
            prop::collection::btree_map(
                prop::sample::select(vec!["dropbox", "onedrive", "other"]),
                (0u64..9, 0u64..9),
                0..3,
            ),
        )
            .prop_map(|(app, day, r, a, rh, vh, svc)| {
                let mut p = AppDayStats::empty(app, day);
                p.hosts_running = r;
                p.hosts_active = a;
                p.ratio_hist = rh;
                p.volume_hist = vh.clone();
                p.daily_out_hist = vh.clone();
                p.upload_windows_hist = vh[..PERSISTENCE_BUCKETS].to_vec();
                p.services = svc
                    .into_iter()
                    .map(|(k, (h, u))| {
                        (
                            k.to_string(),
                            ServiceCount {
                                hosts: h,
                                upload_hosts: u,
                            },
                        )
                    })
                    .collect();
                p
            })
    }

    proptest! {
        /// The same partials merged in any order give identical bytes.
        #[test]
        fn merge_is_order_independent(parts in prop::collection::vec(arb_partial(), 1..12), seed in any::<u64>()) {
            let a = FleetBaseline::from_partials(&parts);
            let mut shuffled = parts.clone();
            // Deterministic shuffle from the seed.
            let mut s = seed | 1;
            for i in (1..shuffled.len()).rev() {
                s ^= s << 13; s ^= s >> 7; s ^= s << 17;
                shuffled.swap(i, (s % (i as u64 + 1)) as usize);
            }
            // Merge pairwise through intermediate baselines too.
            let (l, r) = shuffled.split_at(shuffled.len() / 2);
            let mut b = FleetBaseline::from_partials(r);
            b.merge(&FleetBaseline::from_partials(l));
            prop_assert_eq!(a.to_canonical_bytes(), b.to_canonical_bytes());
            prop_assert_eq!(a.hash_hex(), b.hash_hex());
        }

        /// The engine's in-place update equals subtract-then-add of whole
        /// contributions, byte for byte.
        #[test]
        fn apply_host_change_equals_subtract_then_add(
            parts in prop::collection::vec(arb_partial(), 0..6),
            before in arb_host_day(),
            grow in (any::<bool>(), 0u64..1 << 40, prop::option::of(0u8..65), prop::option::of(0u8..80), 0u64..300, any::<bool>()),
            svc in prop::collection::btree_map(prop::sample::select(vec!["dropbox", "onedrive", "other", "gdrive"]), any::<bool>(), 0..3),
            day in 0i64..4,
        ) {
            let app = "winword.exe";
            let mut fleet = FleetBaseline::from_partials(&parts);
            fleet.add(&before.contribution(app, day));
            let mut after = before.clone();
            after.running |= grow.0;
            after.active |= grow.5;
            after.out_total += grow.1;
            after.max_ratio = after.max_ratio.max(grow.2);
            after.max_volume = after.max_volume.max(grow.3);
            after.upload_windows += grow.4;
            let mut changes = Vec::new();
            for (name, up) in &svc {
                let was = before.services.get(name).copied();
                let uploaded = was.unwrap_or(false) || *up;
                let now = Some(uploaded);
                if was != now {
                    after.services.insert(name.to_string(), uploaded);
                    changes.push(ServiceChange { service: name, before: was, after: now });
                }
            }
            let mut expect = fleet.clone();
            expect.subtract(&before.contribution(app, day));
            expect.add(&after.contribution(app, day));
            fleet.apply_host_change(app, day, before.indicators(), after.indicators(), &changes);
            prop_assert_eq!(expect.to_canonical_bytes(), fleet.to_canonical_bytes());
        }

        #[test]
        fn subtract_undoes_add(parts in prop::collection::vec(arb_partial(), 1..8), extra in arb_partial()) {
            let base = FleetBaseline::from_partials(&parts);
            let mut b = base.clone();
            b.add(&extra);
            b.subtract(&extra);
            prop_assert_eq!(base.to_canonical_bytes(), b.to_canonical_bytes());
        }
    }

    /// `from_days` over days built the long way (merged, subtracted), with
    /// services that ended at zero dropped (they weigh nothing).
    fn view_the_long_way(
        today: i64,
        days: &[(Vec<AppDayStats>, Option<AppDayStats>, Option<HostAppDay>)],
    ) -> PeerView {
        let built: Vec<AppDayStats> = days
            .iter()
            .enumerate()
            .map(|(d, (plus, minus, own))| {
                let mut acc = AppDayStats::empty("app", d as i64);
                for p in plus {
                    acc.merge(p);
                }
                if let Some(m) = minus {
                    acc.subtract(m);
                }
                if let Some(o) = own {
                    acc.subtract(&o.contribution("app", d as i64));
                }
                acc
            })
            .collect();
        let mut v = PeerView::from_days("app", today, built.iter());
        v.services
            .retain(|_, c| c.hosts != 0 || c.upload_hosts != 0);
        v
    }

    proptest! {
        /// The engine's direct peer view equals merging each day, subtracting
        /// what was shipped and the judged host, then summing the days.
        #[test]
        fn add_day_equals_merge_then_subtract(
            days in prop::collection::vec(
                (
                    prop::collection::vec(arb_partial(), 1..3),
                    prop::option::of(arb_partial()),
                    prop::option::of(arb_host_day()),
                ),
                1..5,
            ),
            today in 0i64..5,
        ) {
            let mut direct = PeerView::new("app");
            for (d, (plus, minus, own)) in days.iter().enumerate() {
                direct.add_day(today, d as i64, (&plus[0], plus.get(1)), minus.as_ref(), own.as_ref());
            }
            prop_assert_eq!(&direct, &view_the_long_way(today, &days));
            // A view used before and reset (as the engine reuses one) gives
            // the same view, its names at zero aside.
            let mut reused = direct.clone();
            reused.services.insert("zzz-unused".into(), ServiceCount { hosts: 3, upload_hosts: 1 });
            reused.reset("app");
            prop_assert!(reused.services.values().all(|c| *c == ServiceCount::default()));
            for (d, (plus, minus, own)) in days.iter().enumerate() {
                reused.add_day(today, d as i64, (&plus[0], plus.get(1)), minus.as_ref(), own.as_ref());
            }
            reused.services.retain(|_, c| c.hosts != 0 || c.upload_hosts != 0);
            prop_assert_eq!(reused, direct);
        }
    }

    #[test]
    fn one_host_counts_once_and_is_not_its_own_peer() {
        let mut fleet = FleetBaseline::new();
        let mut own = Vec::new();
        for host in 0..20 {
            let hd = HostAppDay {
                running: true,
                active: true,
                max_volume: Some(if host == 0 { 60 } else { 20 }),
                out_total: 1000,
                services: [("onedrive".to_string(), host == 0)].into_iter().collect(),
                ..HostAppDay::default()
            };
            let c = hd.contribution("winword.exe", 100);
            if host == 0 {
                own.push(c.clone());
            }
            fleet.add(&c);
        }
        let all = fleet.peer_view("winword.exe", 100, 14, []);
        assert_eq!(all.peer_hosts, 20);
        assert_eq!(PeerView::tail(&all.volume_hist, 60), (1, 20));
        let peers = fleet.peer_view("winword.exe", 100, 14, &own);
        assert_eq!(peers.peer_hosts, 19);
        assert_eq!(PeerView::tail(&peers.volume_hist, 60), (0, 19));
        assert_eq!(peers.services["onedrive"].upload_hosts, 0);
        // Outside the horizon nothing counts.
        assert_eq!(fleet.peer_view("winword.exe", 200, 14, []).peer_hosts, 0);
    }
}
