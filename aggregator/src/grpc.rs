//! The `Fleet` service (collectors: partials, heartbeats, alerts, the feed)
//! and the `Admin` service (cluster status, membership, leader transfer).

use crate::node::transport::to_status;
use crate::node::{unix_ms_now, NodeHandle, NodeStatus};
use crate::raft::eraftpb::ConfChangeType;
use crate::state::{AlertRecord, Command, FleetState, Outcome};
use outflow_core::baseline::FleetBaseline;
use outflow_core::shard::{Member, ShardMap, DEFAULT_VNODES};
use outflow_proto::pb;
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// [`outflow_pki::peer_identity`], remembered per client certificate: the
/// certificate is the same on every request of a connection, and parsing it
/// each time cost more than the rest of a baseline update's handling.
fn peer_identity<T>(req: &Request<T>) -> Result<outflow_pki::PeerIdentity, Status> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static KNOWN: OnceLock<Mutex<HashMap<Vec<u8>, outflow_pki::PeerIdentity>>> = OnceLock::new();
    let known = KNOWN.get_or_init(Default::default);
    let leaf = req
        .peer_certs()
        .and_then(|c| c.first().map(|l| l.as_ref().to_vec()));
    if let Some(leaf) = &leaf {
        let g = known.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(id) = g.get(leaf) {
            return Ok(id.clone());
        }
    }
    let id = outflow_pki::peer_identity(req)?;
    if let Some(leaf) = leaf {
        let mut g = known.lock().unwrap_or_else(|p| p.into_inner());
        if g.len() >= 1024 {
            g.clear();
        }
        g.insert(leaf, id.clone());
    }
    Ok(id)
}

fn authorize<T>(req: &Request<T>, require: bool, what: &str) -> Result<String, Status> {
    if !require {
        return Ok("anonymous".into());
    }
    let id = peer_identity(req)?;
    if !id.role.is_cluster_member() {
        return Err(Status::permission_denied(format!(
            "{id} may not {what}: a collector or server certificate is required"
        )));
    }
    Ok(id.to_string())
}

pub struct FleetService {
    pub node: NodeHandle,
    pub require_identity: bool,
    /// Becomes true when the server shuts down: feed streams end then.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

/// The feed views, built from the state under one read lock.
pub fn feed_baseline(st: &FleetState) -> pb::FleetBaselineMsg {
    let parts = st.fleet_baseline();
    let b = FleetBaseline::from_partials(parts.iter());
    outflow_proto::baseline_to_pb(&b, st.baseline_version(), st.config().horizon_days)
}

pub fn shard_map(st: &FleetState) -> ShardMap {
    let members = st
        .shard_members()
        .into_iter()
        .map(|(collector_id, endpoint)| Member {
            collector_id,
            endpoint,
        })
        .collect();
    ShardMap::new(st.shard_map_version(), members, DEFAULT_VNODES)
}

#[tonic::async_trait]
impl pb::fleet_server::Fleet for FleetService {
    async fn submit_partials(
        &self,
        request: Request<pb::PartialBatch>,
    ) -> Result<Response<pb::SubmitReply>, Status> {
        authorize(&request, self.require_identity, "submit partials")?;
        let b = request.into_inner();
        if b.collector_id.is_empty() {
            return Err(Status::invalid_argument("collector_id is empty"));
        }
        let cmd = Command::SubmitPartials {
            collector_id: b.collector_id,
            epoch: b.epoch,
            partials: b
                .partials
                .into_iter()
                .map(outflow_proto::partial_from_pb)
                .collect(),
        };
        let r = self.node.propose(&cmd).await.map_err(to_status)?;
        let duplicate = matches!(r.outcome, Some(Outcome::Partials { accepted: 0, duplicates, .. }) if duplicates > 0);
        Ok(Response::new(pb::SubmitReply {
            index: r.index,
            duplicate,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::CollectorHeartbeat>,
    ) -> Result<Response<pb::HeartbeatReply>, Status> {
        authorize(&request, self.require_identity, "send heartbeats")?;
        let h = request.into_inner();
        if h.collector_id.is_empty() {
            return Err(Status::invalid_argument("collector_id is empty"));
        }
        // Liveness is judged by the aggregators' clocks: this node stamps.
        let cmd = Command::CollectorHeartbeat {
            collector_id: h.collector_id,
            endpoint: h.endpoint,
            unix_ms: unix_ms_now(),
            hosts: h.hosts,
        };
        let r = self.node.propose(&cmd).await.map_err(to_status)?;
        let v = match r.outcome {
            Some(Outcome::Membership {
                shard_map_version, ..
            }) => shard_map_version,
            _ => self.node.read(|s| s.shard_map_version()),
        };
        Ok(Response::new(pb::HeartbeatReply {
            shard_map_version: v,
        }))
    }

    type WatchFeedStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::FeedUpdate, Status>> + Send>>;

    async fn watch_feed(
        &self,
        request: Request<pb::FeedRequest>,
    ) -> Result<Response<Self::WatchFeedStream>, Status> {
        authorize(&request, self.require_identity, "watch the feed")?;
        let req = request.into_inner();
        let node = self.node.clone();
        let mut shutdown = self.shutdown.clone();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut sent = (
                req.baseline_version,
                req.shard_map_version,
                req.policy_version,
            );
            let mut first = true;
            let mut status = node.watch_status();
            loop {
                let update = node.read(|st| {
                    let mut u = pb::FeedUpdate {
                        applied_index: st.applied_index(),
                        ..Default::default()
                    };
                    if st.baseline_version() > sent.0 || (first && sent.0 == 0) {
                        u.baseline = Some(feed_baseline(st));
                    }
                    if st.shard_map_version() > sent.1 || (first && sent.1 == 0) {
                        u.shard_map = Some(outflow_proto::shard_map_to_pb(&shard_map(st)));
                    }
                    if st.policy_version() > sent.2 || (first && sent.2 == 0) {
                        u.policy = Some(pb::PolicyMsg {
                            version: st.policy_version(),
                            json: st.policy().to_string(),
                        });
                    }
                    sent = (
                        sent.0.max(st.baseline_version()),
                        sent.1.max(st.shard_map_version()),
                        sent.2.max(st.policy_version()),
                    );
                    u
                });
                let has = update.baseline.is_some()
                    || update.shard_map.is_some()
                    || update.policy.is_some();
                if (first || has) && tx.send(Ok(update)).await.is_err() {
                    return; // the collector went away
                }
                first = false;
                // At most one update per 500 ms: baselines are large.
                let wait = async {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    let _ = tokio::time::timeout(Duration::from_secs(5), status.changed()).await;
                };
                tokio::select! {
                    _ = wait => {}
                    _ = shutdown.wait_for(|stop| *stop) => return,
                }
                if tx.is_closed() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn report_alerts(
        &self,
        request: Request<pb::AlertBatch>,
    ) -> Result<Response<pb::SubmitReply>, Status> {
        authorize(&request, self.require_identity, "report alerts")?;
        let b = request.into_inner();
        let alerts: Vec<AlertRecord> = b
            .alerts
            .into_iter()
            .filter(|a| !a.id.is_empty())
            .map(|a| AlertRecord {
                id: a.id,
                window_end_us: a.window_end_us,
                json: a.json,
            })
            .collect();
        let cmd = Command::ReportAlerts {
            collector_id: b.collector_id,
            alerts,
        };
        let r = self.node.propose(&cmd).await.map_err(to_status)?;
        let duplicate = matches!(r.outcome, Some(Outcome::Alerts { added: 0, duplicates, .. }) if duplicates > 0);
        Ok(Response::new(pb::SubmitReply {
            index: r.index,
            duplicate,
        }))
    }
}

pub struct AdminService {
    pub node: NodeHandle,
    pub require_identity: bool,
    pub listen: String,
}

/// This node's own entry of a cluster view.
pub fn self_status(node: &NodeHandle, address: &str) -> pb::NodeStatus {
    let s: NodeStatus = node.status();
    let hash = node.read(|st| (st.applied_index(), st.state_hash()));
    pb::NodeStatus {
        id: s.id,
        address: address.to_string(),
        role: s.role,
        term: s.term,
        commit_index: s.commit_index,
        applied_index: hash.0,
        state_hash: hash.1,
        reachable: true,
    }
}

impl AdminService {
    fn cluster(&self) -> pb::ClusterStatus {
        let s = self.node.status();
        let (version, collectors) = self.node.read(|st| {
            (
                st.shard_map_version(),
                st.shard_members().into_iter().map(|m| m.0).collect(),
            )
        });
        pb::ClusterStatus {
            leader: s.leader,
            term: s.term,
            commit_index: s.commit_index,
            nodes: vec![self_status(&self.node, &self.listen)],
            shard_map: Some(pb::ShardMapRef {
                version,
                collectors,
            }),
        }
    }
}

fn authorize_admin<T>(req: &Request<T>, require: bool) -> Result<(), Status> {
    if !require {
        return Ok(());
    }
    let id = peer_identity(req)?;
    match id.role {
        outflow_pki::Role::Admin | outflow_pki::Role::Server | outflow_pki::Role::Aggregator => {
            Ok(())
        }
        _ => Err(Status::permission_denied(format!(
            "{id} may not administer the cluster"
        ))),
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn cluster(
        &self,
        request: Request<pb::ClusterRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        authorize_admin(&request, self.require_identity)?;
        Ok(Response::new(self.cluster()))
    }

    async fn change_membership(
        &self,
        request: Request<pb::MembershipChange>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        authorize_admin(&request, self.require_identity)?;
        let m = request.into_inner();
        let kind = match pb::membership_change::Kind::try_from(m.kind) {
            Ok(pb::membership_change::Kind::AddVoter) => ConfChangeType::AddNode,
            Ok(pb::membership_change::Kind::AddLearner) => ConfChangeType::AddLearnerNode,
            Ok(pb::membership_change::Kind::Remove) => ConfChangeType::RemoveNode,
            Err(_) => return Err(Status::invalid_argument("unknown membership change kind")),
        };
        if m.node_id == 0 {
            return Err(Status::invalid_argument("node_id must be > 0"));
        }
        if kind != ConfChangeType::RemoveNode && !m.address.contains(':') {
            return Err(Status::invalid_argument(
                "a new node needs its address HOST:PORT",
            ));
        }
        let address = (kind != ConfChangeType::RemoveNode).then_some(m.address);
        self.node
            .change_membership(kind, m.node_id, address)
            .await
            .map_err(to_status)?;
        Ok(Response::new(self.cluster()))
    }

    async fn transfer_leader(
        &self,
        request: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        authorize_admin(&request, self.require_identity)?;
        let to = request.into_inner().to;
        self.node.transfer_leader(to).map_err(to_status)?;
        // Give the transfer a moment to complete before reporting.
        let mut w = self.node.watch_status();
        let _ = tokio::time::timeout(Duration::from_secs(3), async {
            while w.borrow().leader != to {
                if w.changed().await.is_err() {
                    break;
                }
            }
        })
        .await;
        Ok(Response::new(self.cluster()))
    }
}
