//! The admin HTTP API (DESIGN.md section 5) served by every node: reads go
//! through a ReadIndex (linearizable) or say `"stale": true`; off loopback
//! every endpoint but health needs an admin client certificate or the
//! configured bearer token.

use crate::grpc::self_status;
use crate::node::transport::endpoint;
use crate::node::{unix_ms_now, NodeHandle, ProposeError};
use crate::raft::eraftpb::ConfChangeType;
use crate::state::Command;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use outflow_pki::{PeerIdentity, Role};
use outflow_proto::pb;
use serde::Deserialize;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::ClientTlsConfig;

/// Who is calling: the TCP peer and, over HTTPS, its client certificate.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub addr: SocketAddr,
    pub identity: Option<PeerIdentity>,
}

impl
    axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tokio::net::TcpListener>>
    for ConnInfo
{
    fn connect_info(s: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        ConnInfo {
            addr: *s.remote_addr(),
            identity: None,
        }
    }
}

/// HTTPS listener: the TLS handshake happens in `accept`, which records the
/// client certificate's identity (optional) for the handlers.
pub struct TlsListener {
    pub tcp: tokio::net::TcpListener,
    pub acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = ConnInfo;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (tcp, addr) = match self.tcp.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "admin API accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let hs = tokio::time::timeout(Duration::from_secs(5), self.acceptor.accept(tcp)).await;
            let tls = match hs {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    tracing::debug!(%addr, error = %e, "admin API TLS handshake failed");
                    continue;
                }
                Err(_) => continue,
            };
            let identity = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| outflow_pki::identity_from_der(c.as_ref()).ok());
            return (tls, ConnInfo { addr, identity });
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(ConnInfo {
            addr: self.tcp.local_addr()?,
            identity: None,
        })
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>>
    for ConnInfo
{
    fn connect_info(s: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        s.remote_addr().clone()
    }
}

#[derive(Clone)]
pub struct ApiState {
    pub node: NodeHandle,
    pub token: Option<String>,
    /// Client TLS towards peers' Admin gRPC (None: plaintext).
    pub peer_tls: Option<ClientTlsConfig>,
    pub listen: String,
    pub metrics: Arc<ApiMetrics>,
}

#[derive(Default)]
pub struct ApiMetrics {
    pub requests: std::sync::atomic::AtomicU64,
    pub stale_reads: std::sync::atomic::AtomicU64,
}

pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

impl From<ProposeError> for ApiError {
    fn from(e: ProposeError) -> Self {
        let code = match e {
            ProposeError::Invalid(_) => StatusCode::BAD_REQUEST,
            ProposeError::NotLeader(_) | ProposeError::Refused(_) => StatusCode::CONFLICT,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError(code, e.to_string())
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The caller's principal, or 401.
fn authenticate(st: &ApiState, ci: &ConnInfo, headers: &HeaderMap) -> Result<String, ApiError> {
    if let Some(id) = &ci.identity {
        if id.role == Role::Admin {
            return Ok(id.to_string());
        }
    }
    if let (Some(tok), Some(h)) = (&st.token, headers.get(axum::http::header::AUTHORIZATION)) {
        if let Some(given) = h.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")) {
            if constant_time_eq(given.as_bytes(), tok.as_bytes()) {
                return Ok("token".into());
            }
        }
    }
    if ci.addr.ip().is_loopback() {
        return Ok(format!(
            "local:{}",
            ci.identity
                .as_ref()
                .map_or("anonymous".into(), |i| i.to_string())
        ));
    }
    Err(ApiError(
        StatusCode::UNAUTHORIZED,
        "off loopback the admin API needs an admin client certificate or `Authorization: Bearer <token>`".into(),
    ))
}

/// Linearizable when a ReadIndex succeeds; otherwise the local state, marked stale.
async fn read_point(st: &ApiState) -> bool {
    st.metrics
        .requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let stale = st
        .node
        .read_index(Duration::from_millis(1500))
        .await
        .is_err();
    if stale {
        st.metrics
            .stale_reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    stale
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/cluster", get(cluster))
        .route("/api/v1/baselines", get(baselines))
        .route("/api/v1/baselines/{app}", get(baseline_app))
        .route("/api/v1/alerts", get(alerts))
        .route("/api/v1/policy", get(policy_get).put(policy_put))
        .route("/api/v1/nodes", post(node_add))
        .route("/api/v1/nodes/{id}", delete(node_remove))
        .route("/api/v1/leader", post(leader_transfer))
        .with_state(state)
}

async fn readyz(State(st): State<ApiState>) -> Response {
    let s = st.node.status();
    if s.fatal.is_none() && s.leader != 0 && s.applied_index > 0 {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no leader known or nothing applied yet\n",
        )
            .into_response()
    }
}

async fn metrics(
    State(st): State<ApiState>,
    ConnectInfo(ci): ConnectInfo<ConnInfo>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authenticate(&st, &ci, &headers)?;
    let s = st.node.status();
    let (alerts, collectors) = st.node.read(|f| (f.alert_count(), f.shard_members().len()));
    let m = &st.metrics;
    let mut out = String::new();
    let mut g = |name: &str, help: &str, kind: &str, v: u64| {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
        ));
    };
    g("outflow_raft_term", "Current Raft term.", "gauge", s.term);
    g(
        "outflow_raft_is_leader",
        "1 when this node leads.",
        "gauge",
        u64::from(s.role == "leader"),
    );
    g(
        "outflow_raft_leader_id",
        "Known leader id (0: none).",
        "gauge",
        s.leader,
    );
    g(
        "outflow_raft_commit_index",
        "Raft commit index.",
        "gauge",
        s.commit_index,
    );
    g(
        "outflow_raft_applied_index",
        "Raft applied index.",
        "gauge",
        s.applied_index,
    );
    g(
        "outflow_raft_last_index",
        "Last log index.",
        "gauge",
        s.last_index,
    );
    g(
        "outflow_raft_first_index",
        "First log index kept.",
        "gauge",
        s.first_index,
    );
    g(
        "outflow_raft_proposals_total",
        "Proposals accepted by raft-rs.",
        "counter",
        s.proposals,
    );
    g(
        "outflow_raft_proposals_dropped_total",
        "Proposals refused (no leader).",
        "counter",
        s.proposals_dropped,
    );
    g(
        "outflow_raft_entries_applied_total",
        "Entries applied.",
        "counter",
        s.entries_applied,
    );
    g(
        "outflow_raft_disk_writes_total",
        "Synced log writes (group commits).",
        "counter",
        s.disk_writes,
    );
    g(
        "outflow_raft_snapshots_taken_total",
        "Snapshots taken.",
        "counter",
        s.snapshots_taken,
    );
    g(
        "outflow_raft_snapshots_installed_total",
        "Snapshots received and installed.",
        "counter",
        s.snapshots_installed,
    );
    g(
        "outflow_raft_snapshot_bytes",
        "Size of the last snapshot taken.",
        "gauge",
        s.last_snapshot_bytes,
    );
    g(
        "outflow_raft_voters",
        "Voters in the configuration.",
        "gauge",
        s.voters.len() as u64,
    );
    g(
        "outflow_alerts_kept",
        "Alerts kept for ctl alerts.",
        "gauge",
        alerts as u64,
    );
    g(
        "outflow_collectors_live",
        "Collectors in the shard map.",
        "gauge",
        collectors as u64,
    );
    g(
        "outflow_api_reads_total",
        "Admin API reads.",
        "counter",
        m.requests.load(std::sync::atomic::Ordering::Relaxed),
    );
    g(
        "outflow_api_stale_reads_total",
        "Admin API reads served stale (no ReadIndex).",
        "counter",
        m.stale_reads.load(std::sync::atomic::Ordering::Relaxed),
    );
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        out,
    )
        .into_response())
}

async fn peer_admin(
    st: &ApiState,
    addr: &str,
) -> Result<pb::admin_client::AdminClient<tonic::transport::Channel>, String> {
    let ep = endpoint(addr, st.peer_tls.as_ref()).map_err(|e| e.to_string())?;
    let ch = ep.connect().await.map_err(|e| e.to_string())?;
    Ok(pb::admin_client::AdminClient::new(ch))
}

async fn cluster(
    State(st): State<ApiState>,
    ConnectInfo(ci): ConnectInfo<ConnInfo>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authenticate(&st, &ci, &headers)?;
    let me = st.node.id();
    let s = st.node.status();
    let peers = st.node.read(|f| f.raft_peers().clone());
    let mut nodes = vec![self_status(&st.node, &st.listen)];
    let asks = peers.iter().filter(|(id, _)| **id != me).map(|(id, addr)| {
        let st = st.clone();
        let (id, addr) = (*id, addr.clone());
        async move {
            let r = tokio::time::timeout(Duration::from_millis(1500), async {
                let mut c = peer_admin(&st, &addr).await?;
                c.cluster(pb::ClusterRequest {})
                    .await
                    .map_err(|e| e.to_string())
            })
            .await;
            match r {
                Ok(Ok(resp)) => resp.into_inner().nodes.into_iter().find(|n| n.id == id),
                _ => None,
            }
            .unwrap_or(pb::NodeStatus {
                id,
                address: addr,
                role: "unreachable".into(),
                ..Default::default()
            })
        }
    });
    nodes.extend(futures::future::join_all(asks).await);
    nodes.sort_by_key(|n| n.id);
    let (collectors, version) = st.node.read(|f| {
        let c: Vec<Value> = f
            .collectors()
            .iter()
            .map(|(id, c)| json!({"id": id, "endpoint": c.endpoint, "alive": c.alive, "last_seen_ms": c.last_seen_ms, "hosts": c.hosts}))
            .collect();
        (c, f.shard_map_version())
    });
    Ok(Json(json!({
        "leader": s.leader,
        "term": s.term,
        "commit_index": s.commit_index,
        "answered_by": me,
        "voters": s.voters,
        "learners": s.learners,
        "nodes": nodes.iter().map(|n| json!({
            "id": n.id, "address": n.address, "role": n.role, "term": n.term,
            "commit_index": n.commit_index, "applied_index": n.applied_index,
            "state_hash": n.state_hash, "reachable": n.reachable,
        })).collect::<Vec<_>>(),
        "collectors": collectors,
        "shard_map_version": version,
    })))
}

async fn baselines(
    State(st): State<ApiState>,
    ConnectInfo(ci): ConnectInfo<ConnInfo>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authenticate(&st, &ci, &headers)?;
    let stale = read_point(&st).await;
    Ok(Json(st.node.read(|f| {
        let apps: Vec<Value> = f
            .apps()
            .map(|app| {
                let days = f.app_baseline(app);
                let mut services: std::collections::BTreeMap<&str, u64> = Default::default();
                for d in &days {
                    for (s, c) in &d.services {
                        let e = services.entry(s.as_str()).or_default();
                        *e = (*e).max(c.hosts);
                    }
                }
                json!({
                    "app": app,
                    "days": days.len(),
                    "hosts_running": days.iter().map(|d| d.hosts_running).max().unwrap_or(0),
                    "hosts_active": days.iter().map(|d| d.hosts_active).max().unwrap_or(0),
                    "hosts_new": days.iter().map(|d| d.hosts_new).sum::<u64>(),
                    "services": services,
                })
            })
            .collect();
        json!({
            "applied_index": f.applied_index(), "stale": stale,
            "baseline_version": f.baseline_version(), "newest_day": f.newest_day(),
            "horizon_days": f.config().horizon_days, "apps": apps,
        })
    })))
}

async fn baseline_app(
    State(st): State<ApiState>,
    ConnectInfo(ci): ConnectInfo<ConnInfo>,
    headers: HeaderMap,
    Path(app): Path<String>,
) -> Result<Json<Value>, ApiError> {
    authenticate(&st, &ci, &headers)?;
    let stale = read_point(&st).await;
    let (applied, days) = st.node.read(|f| (f.applied_index(), f.app_baseline(&app)));
    if days.is_empty() {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no baseline for app {app:?} in the horizon"),
        ));
    }
    Ok(Json(
        json!({"app": app, "applied_index": applied, "stale": stale, "days": days}),
    ))
}

#[derive(Deserialize)]
struct AlertsQuery {
    since: Option<String>,
    limit: Option<usize>,
}

/// RFC 3339 or microseconds since the epoch.
fn parse_since(s: &str) -> Result<i64, String> {
    if let Ok(us) = s.parse::<i64>() {
        return Ok(us);
    }
    outflow_core::Timestamp::parse_rfc3339(s)
        .map(|t| t.as_micros())
        .map_err(|e| format!("since={s:?}: expected RFC 3339 or microseconds ({e})"))
}

async fn alerts(
    State(st): State<ApiState>,
    ConnectInfo(ci): ConnectInfo<ConnInfo>,
    headers: HeaderMap,
    Query(q): Query<AlertsQuery>,
) -> Result<Json<Value>, ApiError> {
    authenticate(&st, &ci, &headers)?;
    let since = match &q.since {
        Some(s) => parse_since(s).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e))?,
        None => i64::MIN,
    };
    let limit = q.limit.unwrap_or(1000).min(10_000);
    let stale = read_point(&st).await;
    Ok(Json(st.node.read(|f| {
        let alerts: Vec<Value> = f
            .alerts_since(since, limit)
            .into_iter()
            .map(|a| {
                serde_json::from_str(&a.json).unwrap_or_else(|_| json!({"id": a.id, "raw": a.json}))
            })
            .collect();
        json!({"applied_index": f.applied_index(), "stale": stale, "alerts": alerts})
    })))
}

async fn policy_get(
    State(st): State<ApiState>,
    ConnectInfo(ci): ConnectInfo<ConnInfo>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authenticate(&st, &ci, &headers)?;
    let stale = read_point(&st).await;
    Ok(Json(st.node.read(|f| {
        json!({"version": f.policy_version(), "stale": stale, "policy": f.policy(), "audit": f.audit()})
    })))
}

#[derive(Deserialize)]
struct PolicyQuery {
    comment: Option<String>,
}

async fn policy_put(
    State(st): State<ApiState>,
    ConnectInfo(ci): ConnectInfo<ConnInfo>,
    headers: HeaderMap,
    Query(q): Query<PolicyQuery>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let principal = authenticate(&st, &ci, &headers)?;
    let value: Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("policy body is not JSON: {e}"),
        )
    })?;
    let parsed: outflow_core::policy::Policy =
        serde_json::from_value(value.clone()).map_err(|e| {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!("not a valid policy document: {e}"),
            )
        })?;
    if let Err(errs) = parsed.validate() {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("invalid policy: {}", errs.join("; ")),
        ));
    }
    // Store the normalised document the engine will read back.
    let policy = serde_json::to_value(&parsed).unwrap_or(value);
    let cmd = Command::SetPolicy {
        principal,
        unix_ms: unix_ms_now(),
        policy,
        comment: q.comment.unwrap_or_default(),
    };
    let r = st.node.propose(&cmd).await?;
    Ok(Json(json!({"index": r.index, "outcome": r.outcome})))
}

#[derive(Deserialize)]
struct NodeAdd {
    id: u64,
    address: String,
    #[serde(default)]
    learner: bool,
}

/// Membership changes must be proposed by the leader: forward there.
async fn membership(st: &ApiState, change: pb::MembershipChange) -> Result<Value, ApiError> {
    let kind = match pb::membership_change::Kind::try_from(change.kind) {
        Ok(pb::membership_change::Kind::AddVoter) => ConfChangeType::AddNode,
        Ok(pb::membership_change::Kind::AddLearner) => ConfChangeType::AddLearnerNode,
        _ => ConfChangeType::RemoveNode,
    };
    let address = (kind != ConfChangeType::RemoveNode).then(|| change.address.clone());
    match st
        .node
        .change_membership(kind, change.node_id, address)
        .await
    {
        Ok(r) => Ok(json!({"index": r.index, "term": r.term})),
        Err(ProposeError::NotLeader(l)) => {
            let addr = st
                .node
                .read(|f| f.raft_peers().get(&l).cloned())
                .ok_or_else(|| {
                    ApiError(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("leader {l} has no known address"),
                    )
                })?;
            let mut c = peer_admin(st, &addr).await.map_err(|e| {
                ApiError(
                    StatusCode::BAD_GATEWAY,
                    format!("leader {l} at {addr}: {e}"),
                )
            })?;
            let r = c.change_membership(change).await.map_err(|e| {
                ApiError(
                    StatusCode::BAD_GATEWAY,
                    format!("leader {l}: {}", e.message()),
                )
            })?;
            Ok(json!({"forwarded_to": l, "commit_index": r.into_inner().commit_index}))
        }
        Err(e) => Err(e.into()),
    }
}

async fn node_add(
    State(st): State<ApiState>,
    ConnectInfo(ci): ConnectInfo<ConnInfo>,
    headers: HeaderMap,
    Json(b): Json<NodeAdd>,
) -> Result<Json<Value>, ApiError> {
    authenticate(&st, &ci, &headers)?;
    if b.id == 0 || !b.address.contains(':') {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "need id > 0 and address HOST:PORT".into(),
        ));
    }
    let kind = if b.learner {
        pb::membership_change::Kind::AddLearner
    } else {
        pb::membership_change::Kind::AddVoter
    };
    let change = pb::MembershipChange {
        kind: kind as i32,
        node_id: b.id,
        address: b.address,
    };
    Ok(Json(membership(&st, change).await?))
}

async fn node_remove(
    State(st): State<ApiState>,
    ConnectInfo(ci): ConnectInfo<ConnInfo>,
    headers: HeaderMap,
    Path(id): Path<u64>,
) -> Result<Json<Value>, ApiError> {
    authenticate(&st, &ci, &headers)?;
    let change = pb::MembershipChange {
        kind: pb::membership_change::Kind::Remove as i32,
        node_id: id,
        address: String::new(),
    };
    Ok(Json(membership(&st, change).await?))
}

#[derive(Deserialize)]
struct Transfer {
    to: u64,
}

async fn leader_transfer(
    State(st): State<ApiState>,
    ConnectInfo(ci): ConnectInfo<ConnInfo>,
    headers: HeaderMap,
    Json(b): Json<Transfer>,
) -> Result<Json<Value>, ApiError> {
    authenticate(&st, &ci, &headers)?;
    let s = st.node.status();
    if s.leader == 0 {
        return Err(ProposeError::NoLeader.into());
    }
    // Transfer is decided by the leader: ask it over Admin gRPC.
    let addr = st
        .node
        .read(|f| f.raft_peers().get(&s.leader).cloned())
        .ok_or_else(|| {
            ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "leader address unknown".into(),
            )
        })?;
    let mut c = peer_admin(&st, &addr)
        .await
        .map_err(|e| ApiError(StatusCode::BAD_GATEWAY, format!("leader at {addr}: {e}")))?;
    let r = c
        .transfer_leader(pb::TransferLeaderRequest { to: b.to })
        .await
        .map_err(|e| ApiError(StatusCode::BAD_GATEWAY, e.message().to_string()))?
        .into_inner();
    Ok(Json(json!({"leader": r.leader, "term": r.term})))
}
