//! Raft messages between aggregator nodes over mutually authenticated gRPC
//! (`RaftTransport` in raft.proto): one long-lived client stream per peer,
//! snapshots sent on their own call so their delivery can be reported to
//! raft-rs, and the server side that feeds received messages to the node.

use super::{Input, NodeHandle, ProposeError, Transport};
use crate::raft::eraftpb::{Message, MessageType};
use crate::state::FleetState;
use crossbeam_channel::Sender;
use outflow_proto::pb;
use outflow_proto::pb::raft_transport_client::RaftTransportClient;
use protobuf::Message as _;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// Largest gRPC message accepted or sent between nodes (snapshots).
pub const MAX_MESSAGE_BYTES: usize = 512 << 20;

/// How to reach peers: their addresses come from the replicated state.
pub struct GrpcTransport {
    rt: tokio::runtime::Handle,
    links: Mutex<BTreeMap<u64, (String, mpsc::Sender<Message>)>>,
    state: Arc<RwLock<FleetState>>,
    tls: Option<ClientTlsConfig>,
    input: Sender<Input>,
    /// Addresses from the configuration, used until the replicated state
    /// knows better (a joining node has no state yet).
    configured: BTreeMap<u64, String>,
    /// Local address for connections to peers (None: the OS picks).
    source: Option<std::net::IpAddr>,
}

impl GrpcTransport {
    /// Connect to peers from this local address (multi-homed hosts; tests
    /// use it to tell nodes apart at a proxy).
    pub fn with_source(mut self, source: Option<std::net::IpAddr>) -> Self {
        self.source = source;
        self
    }

    pub fn new(
        rt: tokio::runtime::Handle,
        node: &NodeHandle,
        tls: Option<ClientTlsConfig>,
        configured: BTreeMap<u64, String>,
    ) -> Self {
        Self {
            rt,
            links: Mutex::new(BTreeMap::new()),
            state: node.state().clone(),
            tls,
            input: node.input().clone(),
            configured,
            source: None,
        }
    }

    fn address(&self, id: u64) -> Option<String> {
        let st = self.state.read().unwrap_or_else(|p| p.into_inner());
        st.raft_peers()
            .get(&id)
            .or_else(|| self.configured.get(&id))
            .cloned()
    }
}

/// `https://addr` with TLS or `http://addr` without.
pub fn endpoint(
    addr: &str,
    tls: Option<&ClientTlsConfig>,
) -> Result<Endpoint, tonic::transport::Error> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut ep = Endpoint::from_shared(format!("{scheme}://{addr}"))?
        .connect_timeout(Duration::from_millis(1000))
        .tcp_nodelay(true);
    if let Some(t) = tls {
        let host = addr
            .rsplit_once(':')
            .map_or(addr, |(h, _)| h)
            .trim_matches(['[', ']']);
        ep = ep.tls_config(t.clone().domain_name(host))?;
    }
    Ok(ep)
}

pub fn envelope(m: &Message) -> pb::RaftEnvelope {
    pb::RaftEnvelope {
        from: m.from,
        to: m.to,
        message: m.write_to_bytes().unwrap_or_default(),
    }
}

fn client(ch: Channel) -> RaftTransportClient<Channel> {
    RaftTransportClient::new(ch)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

impl Transport for GrpcTransport {
    fn send(&self, msgs: Vec<Message>) {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        for m in msgs {
            let to = m.to;
            if m.get_msg_type() == MessageType::MsgSnapshot {
                let Some(addr) = self.address(to) else {
                    continue;
                };
                let (tls, input, source) = (self.tls.clone(), self.input.clone(), self.source);
                self.rt.spawn(async move {
                    let ok = send_snapshot(&addr, tls.as_ref(), source, &m).await;
                    if let Err(e) = &ok {
                        tracing::warn!(to, error = %e, "snapshot send failed; raft-rs retries");
                    }
                    let _ = input.send(Input::SnapshotReport { to, ok: ok.is_ok() });
                });
                continue;
            }
            let addr = match self.address(to) {
                Some(a) => a,
                None => continue, // not a member (anymore)
            };
            let stale = links
                .get(&to)
                .is_some_and(|(a, tx)| *a != addr || tx.is_closed());
            if stale {
                links.remove(&to);
            }
            let (_, tx) = links.entry(to).or_insert_with(|| {
                let (tx, rx) = mpsc::channel(4096);
                let (tls, input, a) = (self.tls.clone(), self.input.clone(), addr.clone());
                self.rt.spawn(run_link(to, a, tls, self.source, rx, input));
                (addr, tx)
            });
            // A full queue means the peer is slow or down: drop, Raft retries.
            let _ = tx.try_send(m);
        }
    }
}

async fn send_snapshot(
    addr: &str,
    tls: Option<&ClientTlsConfig>,
    source: Option<std::net::IpAddr>,
    m: &Message,
) -> Result<(), String> {
    let ch = endpoint(addr, tls)
        .map_err(|e| e.to_string())?
        .local_address(source)
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let env = envelope(m);
    client(ch)
        .send(tokio_stream::iter(vec![env]))
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// One peer's stream: connect, forward queued messages, reconnect on error.
async fn run_link(
    to: u64,
    addr: String,
    tls: Option<ClientTlsConfig>,
    source: Option<std::net::IpAddr>,
    mut rx: mpsc::Receiver<Message>,
    input: Sender<Input>,
) {
    loop {
        let ch = match endpoint(&addr, tls.as_ref()) {
            Ok(ep) => ep.local_address(source).connect().await,
            Err(e) => {
                tracing::error!(to, %addr, error = %e, "bad peer address");
                return;
            }
        };
        let ch = match ch {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(to, %addr, error = %e, "peer unreachable");
                let _ = input.send(Input::Unreachable(to));
                // Drop what queued up meanwhile: Raft resends what matters.
                while rx.try_recv().is_ok() {}
                tokio::time::sleep(Duration::from_millis(200)).await;
                if rx.is_closed() {
                    return;
                }
                continue;
            }
        };
        let (stx, srx) = mpsc::channel::<pb::RaftEnvelope>(1024);
        let mut cl = client(ch);
        let call = cl.send(ReceiverStream::new(srx));
        tokio::pin!(call);
        loop {
            tokio::select! {
                res = &mut call => {
                    if let Err(e) = res {
                        tracing::debug!(to, error = %e, "raft stream to peer ended");
                    }
                    let _ = input.send(Input::Unreachable(to));
                    break;
                }
                m = rx.recv() => {
                    let Some(m) = m else { return };
                    if stx.send(envelope(&m)).await.is_err() {
                        break;
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `RaftTransport` service of one node.
pub struct RaftService {
    pub node: NodeHandle,
    /// Require a cluster-member client certificate (off only without TLS).
    pub require_identity: bool,
    /// Becomes true when the server shuts down: peers' streams end then
    /// (they never end by themselves, and a graceful shutdown waits for them).
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

fn check_member<T>(req: &tonic::Request<T>, require: bool) -> Result<String, tonic::Status> {
    if !require {
        return Ok("anonymous".into());
    }
    let id = outflow_pki::peer_identity(req)?;
    if !id.role.is_cluster_member() {
        return Err(tonic::Status::permission_denied(format!(
            "{id} may not speak Raft: an aggregator or server certificate is required"
        )));
    }
    Ok(id.to_string())
}

pub fn to_status(e: ProposeError) -> tonic::Status {
    match e {
        ProposeError::NoLeader | ProposeError::Timeout | ProposeError::Stopped => {
            tonic::Status::unavailable(e.to_string())
        }
        ProposeError::NotLeader(_) => tonic::Status::failed_precondition(e.to_string()),
        ProposeError::Refused(_) => tonic::Status::failed_precondition(e.to_string()),
        ProposeError::Invalid(_) => tonic::Status::invalid_argument(e.to_string()),
    }
}

#[tonic::async_trait]
impl pb::raft_transport_server::RaftTransport for RaftService {
    async fn send(
        &self,
        request: tonic::Request<tonic::Streaming<pb::RaftEnvelope>>,
    ) -> Result<tonic::Response<pb::RaftSendReply>, tonic::Status> {
        check_member(&request, self.require_identity)?;
        let mut stream = request.into_inner();
        let me = self.node.id();
        let mut shutdown = self.shutdown.clone();
        loop {
            let env = tokio::select! {
                m = stream.message() => m?,
                _ = shutdown.wait_for(|stop| *stop) => None,
            };
            let Some(env) = env else { break };
            if env.to != me {
                return Err(tonic::Status::invalid_argument(format!(
                    "message for node {} sent to node {me}",
                    env.to
                )));
            }
            let m = Message::parse_from_bytes(&env.message).map_err(|e| {
                tonic::Status::invalid_argument(format!("undecodable raft message: {e}"))
            })?;
            if self.node.input().send(Input::Raft(m)).is_err() {
                return Err(tonic::Status::unavailable("node is shutting down"));
            }
        }
        Ok(tonic::Response::new(pb::RaftSendReply {}))
    }

    async fn forward(
        &self,
        request: tonic::Request<pb::Proposal>,
    ) -> Result<tonic::Response<pb::ProposeReply>, tonic::Status> {
        check_member(&request, self.require_identity)?;
        let p = request.into_inner();
        let cmd: crate::state::Command = serde_json::from_slice(&p.command)
            .map_err(|e| tonic::Status::invalid_argument(format!("undecodable command: {e}")))?;
        let r = self.node.propose(&cmd).await.map_err(to_status)?;
        Ok(tonic::Response::new(pb::ProposeReply {
            index: r.index,
            term: r.term,
            outcome: serde_json::to_vec(&r.outcome).unwrap_or_default(),
        }))
    }

    async fn read_index(
        &self,
        request: tonic::Request<pb::ReadIndexRequest>,
    ) -> Result<tonic::Response<pb::ReadIndexReply>, tonic::Status> {
        check_member(&request, self.require_identity)?;
        let index = self
            .node
            .read_index(Duration::from_secs(2))
            .await
            .map_err(to_status)?;
        Ok(tonic::Response::new(pb::ReadIndexReply {
            index,
            leader_id: self.node.status().leader,
        }))
    }
}
