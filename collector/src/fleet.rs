//! The collector's view of the fleet: partial statistics go up, the fleet
//! baseline, shard map and policy come down as a feed.
//!
//! [`FleetClient`] is the interface; [`GrpcFleet`] is the production
//! implementation (a tonic client of the aggregators' `Fleet` service, over
//! mutual TLS); [`EmbeddedFleet`] is an in-process, non-replicated store with
//! the same behaviour for single-collector runs and tests.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::StreamExt;
use outflow_core::baseline::{AppDayStats, FleetBaseline};
use outflow_core::policy::Policy;
use outflow_core::shard::{Member, ShardMap};
use outflow_proto::pb;
use outflow_proto::pb::fleet_client::FleetClient as PbFleetClient;
use tokio::sync::watch;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// Fleet errors.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("no aggregator reachable ({0})")]
    Unreachable(String),
    #[error("aggregator refused: {0}")]
    Refused(tonic::Status),
    #[error("bad feed: {0}")]
    BadFeed(String),
}

/// One update of the feed; `None` parts are unchanged.
#[derive(Debug, Clone, Default)]
pub struct FeedView {
    pub baseline: Option<(u64, FleetBaseline)>,
    pub shard_map: Option<ShardMap>,
    pub policy: Option<(u64, Policy)>,
}

/// An alert for the aggregator (`ctl alerts`): id, JSON, window end (µs).
#[derive(Debug, Clone)]
pub struct AlertReport {
    pub id: String,
    pub json: String,
    pub window_end_us: i64,
}

/// Liveness sent to the aggregator.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    pub collector_id: String,
    pub endpoint: String,
    pub unix_ms: i64,
    pub hosts: u64,
}

/// What a collector needs from the aggregator group.
pub trait FleetClient: Send + Sync + 'static {
    /// This collector's per-(app, day) contributions, replacing those of
    /// lower epochs (idempotent by (collector, epoch, app, day)).
    fn submit_partials(
        &self,
        collector_id: &str,
        epoch: u64,
        partials: Vec<AppDayStats>,
    ) -> BoxFuture<'_, Result<(), FleetError>>;
    /// Liveness; returns the current shard map version.
    fn heartbeat(&self, hb: Heartbeat) -> BoxFuture<'_, Result<u64, FleetError>>;
    /// A feed: the full view first, then changes. Ends when the connection
    /// drops; the caller reconnects.
    fn watch_feed(
        &self,
        collector_id: &str,
    ) -> BoxFuture<'_, Result<BoxStream<'static, Result<FeedView, FleetError>>, FleetError>>;
    /// Alerts for `ctl alerts` (idempotent by alert id).
    fn report_alerts(
        &self,
        collector_id: &str,
        alerts: Vec<AlertReport>,
    ) -> BoxFuture<'_, Result<(), FleetError>>;
}

// ---------------------------------------------------------------- embedded

#[derive(Default)]
struct EmbeddedState {
    /// (collector, app, day) → (epoch, partial)
    partials: BTreeMap<(String, String, i64), (u64, AppDayStats)>,
    members: BTreeMap<String, String>,
    alerts: BTreeMap<String, AlertReport>,
    baseline_version: u64,
    map_version: u64,
    horizon_days: u32,
}

/// An in-process fleet store: sums partials (highest epoch per collector,
/// app and day), keeps members from heartbeats, and publishes a feed.
/// Not replicated: for a single collector, tests and demos.
#[derive(Clone)]
pub struct EmbeddedFleet {
    state: Arc<Mutex<EmbeddedState>>,
    feed: watch::Sender<FeedSnapshot>,
}

#[derive(Clone, Default)]
struct FeedSnapshot {
    baseline: (u64, FleetBaseline),
    shard_map: ShardMap,
    policy: (u64, Policy),
}

impl EmbeddedFleet {
    pub fn new(horizon_days: u32, policy: Policy) -> Self {
        let (feed, _) = watch::channel(FeedSnapshot {
            policy: (1, policy),
            ..FeedSnapshot::default()
        });
        EmbeddedFleet {
            state: Arc::new(Mutex::new(EmbeddedState {
                horizon_days,
                ..EmbeddedState::default()
            })),
            feed,
        }
    }

    /// Fixes the shard map members up front (otherwise heartbeats add them).
    pub fn set_members(&self, members: Vec<Member>) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.members = members
            .into_iter()
            .map(|m| (m.collector_id, m.endpoint))
            .collect();
        self.publish_map(&mut st);
    }

    /// Replaces the policy (as the aggregator's replicated policy would).
    pub fn set_policy(&self, policy: Policy) {
        self.feed
            .send_modify(|f| f.policy = (f.policy.0 + 1, policy));
    }

    /// Alerts reported so far, by id.
    pub fn alerts(&self) -> Vec<AlertReport> {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.alerts.values().cloned().collect()
    }

    /// The current fleet baseline.
    pub fn baseline(&self) -> FleetBaseline {
        self.feed.borrow().baseline.1.clone()
    }

    fn publish_map(&self, st: &mut EmbeddedState) {
        st.map_version += 1;
        let map = ShardMap::new(
            st.map_version,
            st.members
                .iter()
                .map(|(id, ep)| Member {
                    collector_id: id.clone(),
                    endpoint: ep.clone(),
                })
                .collect(),
            outflow_core::shard::DEFAULT_VNODES,
        );
        self.feed.send_modify(|f| f.shard_map = map);
    }
}

impl FleetClient for EmbeddedFleet {
    fn submit_partials(
        &self,
        collector_id: &str,
        epoch: u64,
        partials: Vec<AppDayStats>,
    ) -> BoxFuture<'_, Result<(), FleetError>> {
        let collector_id = collector_id.to_string();
        Box::pin(async move {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            for p in partials {
                let key = (collector_id.clone(), p.app.clone(), p.day);
                match st.partials.get(&key) {
                    Some((e, _)) if *e >= epoch => {}
                    _ => {
                        st.partials.insert(key, (epoch, p));
                    }
                }
            }
            let mut b = FleetBaseline::from_partials(st.partials.values().map(|(_, p)| p));
            if let Some(newest) = b.newest_day() {
                b.prune(newest, st.horizon_days);
            }
            st.baseline_version += 1;
            let v = st.baseline_version;
            self.feed.send_modify(|f| f.baseline = (v, b));
            Ok(())
        })
    }

    fn heartbeat(&self, hb: Heartbeat) -> BoxFuture<'_, Result<u64, FleetError>> {
        Box::pin(async move {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if st.members.get(&hb.collector_id) != Some(&hb.endpoint) {
                st.members.insert(hb.collector_id, hb.endpoint);
                self.publish_map(&mut st);
            }
            Ok(st.map_version)
        })
    }

    fn watch_feed(
        &self,
        _collector_id: &str,
    ) -> BoxFuture<'_, Result<BoxStream<'static, Result<FeedView, FleetError>>, FleetError>> {
        Box::pin(async move {
            let rx = self.feed.subscribe();
            let stream = tokio_stream::wrappers::WatchStream::new(rx).map(|snap| {
                Ok(FeedView {
                    baseline: Some(snap.baseline),
                    shard_map: Some(snap.shard_map),
                    policy: Some(snap.policy),
                })
            });
            Ok(stream.boxed())
        })
    }

    fn report_alerts(
        &self,
        _collector_id: &str,
        alerts: Vec<AlertReport>,
    ) -> BoxFuture<'_, Result<(), FleetError>> {
        Box::pin(async move {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            for a in alerts {
                st.alerts.entry(a.id.clone()).or_insert(a);
            }
            Ok(())
        })
    }
}

// ---------------------------------------------------------------- gRPC

/// The production fleet client: the aggregators' `Fleet` service over mutual
/// TLS. Calls go to the last aggregator that answered, then the others in
/// turn (any node forwards to the Raft leader or answers from it).
pub struct GrpcFleet {
    endpoints: Vec<Endpoint>,
    current: Mutex<Option<(usize, Channel)>>,
}

impl GrpcFleet {
    /// `addrs` are `host:port` (or full `https://` URLs) of aggregators.
    pub fn new(addrs: &[String], tls: ClientTlsConfig) -> Result<Self, FleetError> {
        let mut endpoints = Vec::new();
        for a in addrs {
            let url = if a.contains("://") {
                a.clone()
            } else {
                format!("https://{a}")
            };
            let ep = Endpoint::from_shared(url.clone())
                .map_err(|e| FleetError::Unreachable(format!("aggregator address `{a}`: {e}")))?
                .tls_config(tls.clone())
                .map_err(|e| FleetError::Unreachable(format!("aggregator `{a}` TLS: {e}")))?
                .connect_timeout(Duration::from_secs(3))
                .timeout(Duration::from_secs(10));
            endpoints.push(ep);
        }
        if endpoints.is_empty() {
            return Err(FleetError::Unreachable("no aggregator addresses".into()));
        }
        Ok(GrpcFleet {
            endpoints,
            current: Mutex::new(None),
        })
    }

    async fn channel(&self, skip: Option<usize>) -> Result<(usize, Channel), FleetError> {
        if skip.is_none() {
            if let Some(c) = self
                .current
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
            {
                return Ok(c);
            }
        }
        let start = skip.map(|s| s + 1).unwrap_or(0);
        let mut last = String::new();
        for k in 0..self.endpoints.len() {
            let i = (start + k) % self.endpoints.len();
            match self.endpoints[i].connect().await {
                Ok(ch) => {
                    *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some((i, ch.clone()));
                    return Ok((i, ch));
                }
                Err(e) => last = format!("{}: {e}", self.endpoints[i].uri()),
            }
        }
        Err(FleetError::Unreachable(last))
    }

    /// Runs `f` against an aggregator, trying the next one on transport
    /// errors and on UNAVAILABLE (not the leader, no quorum).
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, FleetError>
    where
        F: Fn(PbFleetClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let mut skip = None;
        let mut last = FleetError::Unreachable("no attempt".into());
        for _ in 0..self.endpoints.len() {
            let (i, ch) = match self.channel(skip).await {
                Ok(c) => c,
                Err(e) => return Err(e),
            };
            match f(PbFleetClient::new(ch)).await {
                Ok(v) => return Ok(v),
                Err(s)
                    if matches!(
                        s.code(),
                        tonic::Code::Unavailable
                            | tonic::Code::Unknown
                            | tonic::Code::DeadlineExceeded
                    ) =>
                {
                    *self.current.lock().unwrap_or_else(|e| e.into_inner()) = None;
                    skip = Some(i);
                    last = FleetError::Unreachable(s.message().to_string());
                }
                Err(s) => return Err(FleetError::Refused(s)),
            }
        }
        Err(last)
    }
}

impl FleetClient for GrpcFleet {
    fn submit_partials(
        &self,
        collector_id: &str,
        epoch: u64,
        partials: Vec<AppDayStats>,
    ) -> BoxFuture<'_, Result<(), FleetError>> {
        let msg = pb::PartialBatch {
            collector_id: collector_id.to_string(),
            epoch,
            partials: partials.iter().map(outflow_proto::partial_to_pb).collect(),
        };
        Box::pin(async move {
            self.call(|mut c| {
                let m = msg.clone();
                async move { c.submit_partials(m).await }
            })
            .await
            .map(|_| ())
        })
    }

    fn heartbeat(&self, hb: Heartbeat) -> BoxFuture<'_, Result<u64, FleetError>> {
        let msg = pb::CollectorHeartbeat {
            collector_id: hb.collector_id,
            endpoint: hb.endpoint,
            unix_ms: hb.unix_ms,
            hosts: hb.hosts,
        };
        Box::pin(async move {
            self.call(|mut c| {
                let m = msg.clone();
                async move { c.heartbeat(m).await }
            })
            .await
            .map(|r| r.into_inner().shard_map_version)
        })
    }

    fn watch_feed(
        &self,
        collector_id: &str,
    ) -> BoxFuture<'_, Result<BoxStream<'static, Result<FeedView, FleetError>>, FleetError>> {
        let req = pb::FeedRequest {
            collector_id: collector_id.to_string(),
            ..Default::default()
        };
        Box::pin(async move {
            let stream = self
                .call(|mut c| {
                    let r = req.clone();
                    async move { c.watch_feed(r).await }
                })
                .await?
                .into_inner();
            Ok(stream
                .map(|u| match u {
                    Ok(u) => feed_from_pb(u),
                    Err(s) => Err(FleetError::Refused(s)),
                })
                .boxed())
        })
    }

    fn report_alerts(
        &self,
        collector_id: &str,
        alerts: Vec<AlertReport>,
    ) -> BoxFuture<'_, Result<(), FleetError>> {
        let msg = pb::AlertBatch {
            collector_id: collector_id.to_string(),
            alerts: alerts
                .into_iter()
                .map(|a| pb::AlertRecord {
                    id: a.id,
                    json: a.json,
                    window_end_us: a.window_end_us,
                })
                .collect(),
        };
        Box::pin(async move {
            self.call(|mut c| {
                let m = msg.clone();
                async move { c.report_alerts(m).await }
            })
            .await
            .map(|_| ())
        })
    }
}

fn feed_from_pb(u: pb::FeedUpdate) -> Result<FeedView, FleetError> {
    let policy = match u.policy {
        Some(p) => {
            let policy: Policy = serde_json::from_str(&p.json)
                .map_err(|e| FleetError::BadFeed(format!("policy v{}: {e}", p.version)))?;
            Some((p.version, policy))
        }
        None => None,
    };
    Ok(FeedView {
        baseline: u
            .baseline
            .map(|b| (b.version, outflow_proto::baseline_from_pb(b))),
        shard_map: u.shard_map.map(outflow_proto::shard_map_from_pb),
        policy,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn embedded_fleet_keeps_highest_epoch_and_publishes() {
        let f = EmbeddedFleet::new(14, Policy::default());
        let mut feed = f.watch_feed("c1").await.unwrap();
        let _first = feed.next().await.unwrap().unwrap();
        let mut p = AppDayStats::empty("curl", 20_000);
        p.hosts_running = 3;
        f.submit_partials("c1", 2, vec![p.clone()]).await.unwrap();
        let mut old = p.clone();
        old.hosts_running = 100;
        // A stale epoch does not replace a newer one.
        f.submit_partials("c1", 1, vec![old]).await.unwrap();
        let mut other = p.clone();
        other.hosts_running = 4;
        f.submit_partials("c2", 1, vec![other]).await.unwrap();
        let b = f.baseline();
        assert_eq!(b.apps["curl"][&20_000].hosts_running, 7);
        let v = f
            .heartbeat(Heartbeat {
                collector_id: "c1".into(),
                endpoint: "https://127.0.0.1:1".into(),
                unix_ms: 0,
                hosts: 0,
            })
            .await
            .unwrap();
        assert_eq!(v, 1);
        let view = feed.next().await.unwrap().unwrap();
        let map = view.shard_map.unwrap();
        assert_eq!(map.owner("any").unwrap().collector_id, "c1");
    }
}
