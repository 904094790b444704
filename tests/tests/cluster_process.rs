//! Real `outflow aggregator` processes on loopback, over mTLS:
//! - kill -9 of the leader under proposal load: a new leader within 3 s, no
//!   acknowledged update lost, all replicas' state hashes equal afterwards;
//! - a partition made by TCP proxies this test controls: the minority
//!   acknowledges no write (and its reads say stale), the majority goes on,
//!   and after healing all converge.
//!
//! Benchmarks (not in CI, run by bench/aggregator/run.sh):
//! `cargo test --release -p outflow-tests --test cluster_process -- --ignored --nocapture`
//! (`failover_bench`: ≥ 20 kill -9 runs; `throughput_bench`: replicated
//! baseline updates/s with real fsync and p99 latency).

use outflow_aggregator::ctl::Api;
use outflow_proto::pb;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tonic::transport::{Channel, Endpoint};

/// The `outflow` binary of this target directory, or `OUTFLOW_BIN`. Built
/// (or brought up to date) once per test run: `cargo test -p outflow-tests`
/// alone does not rebuild other packages' binaries.
fn outflow_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("OUTFLOW_BIN") {
            return PathBuf::from(p);
        }
        let exe = std::env::current_exe().expect("test executable path");
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target profile directory");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", "outflow"]);
        if dir.ends_with("release") {
            cmd.arg("--release");
        }
        let st = cmd.status().expect("running cargo build -p outflow");
        assert!(st.success(), "cargo build -p outflow failed");
        dir.join("outflow")
    })
    .clone()
}

use outflow_tests::free_port;

struct Proc {
    id: u64,
    listen: String,
    api: String,
    child: Option<Child>,
    args: Vec<String>,
    log: PathBuf,
}

struct Cluster {
    dir: tempfile::TempDir,
    procs: Vec<Proc>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in &mut self.procs {
            if let Some(c) = p.child.as_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

struct Options {
    /// Addresses peers use to reach node i (defaults to its listen address).
    advertised: Option<Vec<String>>,
    /// Source IP per node (127.0.0.i) so proxies can tell nodes apart.
    source_ips: bool,
    extra: Vec<String>,
}

impl Cluster {
    fn start(n: u64, opts: Options) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        outflow_pki::generate_dev(&certs, &Default::default()).unwrap();
        let listens: Vec<String> = (0..n)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let advertised = opts.advertised.clone().unwrap_or_else(|| listens.clone());
        let peers: Vec<String> = advertised
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect();
        let mut procs = Vec::new();
        for i in 0..n {
            let id = i + 1;
            let api = format!("127.0.0.1:{}", free_port());
            let mut args = vec![
                "aggregator".to_string(),
                "--id".into(),
                id.to_string(),
                "--listen".into(),
                listens[i as usize].clone(),
                "--api".into(),
                api.clone(),
                "--peers".into(),
                peers.join(","),
                "--data".into(),
                dir.path().join(format!("n{id}")).display().to_string(),
                "--certs".into(),
                certs.display().to_string(),
                "--proposal-timeout-ms".into(),
                "2000".into(),
            ];
            if opts.source_ips {
                args.push("--source-ip".into());
                args.push(format!("127.0.0.{id}"));
            }
            args.extend(opts.extra.iter().cloned());
            let log = dir.path().join(format!("n{id}.log"));
            procs.push(Proc {
                id,
                listen: listens[i as usize].clone(),
                api,
                child: None,
                args,
                log,
            });
        }
        let mut c = Cluster { dir, procs };
        for i in 0..n as usize {
            c.spawn(i);
        }
        c
    }

    fn spawn(&mut self, i: usize) {
        let p = &mut self.procs[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p.log)
            .unwrap();
        let child = Command::new(outflow_bin())
            .args(&p.args)
            .env("RUST_LOG", "info,raft=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning outflow aggregator");
        p.child = Some(child);
    }

    /// kill -9.
    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.procs[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn certs(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    fn api(&self, i: usize) -> Api {
        Api::parse(&format!("http://{}", self.procs[i].api), None, None).unwrap()
    }

    fn logs(&self) -> String {
        self.procs
            .iter()
            .map(|p| {
                format!(
                    "--- node {} ---\n{}",
                    p.id,
                    std::fs::read_to_string(&p.log).unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// (role, leader id) from a node's /metrics, or None when it does not answer.
    async fn view(&self, i: usize) -> Option<(bool, u64)> {
        let r = tokio::time::timeout(
            Duration::from_millis(500),
            self.api(i).call("GET", "/metrics", None),
        )
        .await;
        let text = r.ok()?.ok()?.as_str()?.to_string();
        let get = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .and_then(|v| v.parse::<u64>().ok())
        };
        Some((
            get("outflow_raft_is_leader")? == 1,
            get("outflow_raft_leader_id")?,
        ))
    }

    /// The index of the node that leads (agreed by a majority of the live
    /// nodes in `among`), waiting up to `timeout`.
    async fn leader(&self, among: &[usize], timeout: Duration) -> Option<usize> {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            let mut leading = Vec::new();
            let mut votes: BTreeMap<u64, usize> = BTreeMap::new();
            for &i in among {
                if let Some((is_leader, leader)) = self.view(i).await {
                    if is_leader {
                        leading.push(i);
                    }
                    if leader != 0 {
                        *votes.entry(leader).or_default() += 1;
                    }
                }
            }
            if leading.len() == 1 {
                let l = leading[0];
                if votes.get(&self.procs[l].id).copied().unwrap_or(0) * 2 > among.len() {
                    return Some(l);
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Wait until every node in `among` reports the same applied index and
    /// state hash; returns the hash.
    async fn converged(&self, among: &[usize], timeout: Duration) -> Result<String, String> {
        let t0 = Instant::now();
        let mut last = Vec::new();
        while t0.elapsed() < timeout {
            let mut views = Vec::new();
            for &i in among {
                let r = tokio::time::timeout(
                    Duration::from_secs(3),
                    self.api(i).call("GET", "/api/v1/cluster", None),
                )
                .await;
                if let Ok(Ok(v)) = r {
                    let me = self.procs[i].id;
                    if let Some(n) = v["nodes"]
                        .as_array()
                        .and_then(|ns| ns.iter().find(|n| n["id"] == me))
                    {
                        views.push((
                            n["applied_index"].as_u64().unwrap_or(0),
                            n["state_hash"].as_str().unwrap_or("").to_string(),
                        ));
                    }
                }
            }
            if views.len() == among.len() && views.windows(2).all(|w| w[0] == w[1]) {
                return Ok(views[0].1.clone());
            }
            last = views;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!("no convergence within {timeout:?}: {last:?}"))
    }

    async fn apps(&self, i: usize) -> BTreeSet<String> {
        let v = self
            .api(i)
            .call("GET", "/api/v1/baselines", None)
            .await
            .unwrap();
        v["apps"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|a| a["app"].as_str().map(str::to_string))
            .collect()
    }
}

async fn fleet_client(addr: &str, certs: &Path) -> Option<pb::fleet_client::FleetClient<Channel>> {
    let tls = outflow_pki::CertDir::new(certs)
        .client_tls_for("server", "127.0.0.1")
        .ok()?;
    let ch = Endpoint::from_shared(format!("https://{addr}"))
        .ok()?
        .tls_config(tls)
        .ok()?
        .connect_timeout(Duration::from_millis(500))
        .connect()
        .await
        .ok()?;
    Some(pb::fleet_client::FleetClient::new(ch))
}

fn partial(app: &str, hosts: u64) -> pb::AppDayPartial {
    pb::AppDayPartial {
        app: app.into(),
        day: 20_000,
        hosts_running: hosts,
        hosts_active: 1,
        ratio_hist: vec![0, 1],
        volume_hist: vec![1],
        ..Default::default()
    }
}

/// Submits baseline updates (one new app each) round-robin over `addrs`
/// until stopped; records the acknowledged ones.
fn spawn_load(
    worker: usize,
    addrs: Vec<String>,
    certs: PathBuf,
    acked: Arc<Mutex<Vec<String>>>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut epoch = 1u64;
        let mut target = worker;
        let mut clients: BTreeMap<usize, pb::fleet_client::FleetClient<Channel>> = BTreeMap::new();
        while !*stop.borrow() {
            let t = target % addrs.len();
            if let std::collections::btree_map::Entry::Vacant(slot) = clients.entry(t) {
                match fleet_client(&addrs[t], &certs).await {
                    Some(c) => {
                        slot.insert(c);
                    }
                    None => {
                        target += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                }
            }
            let app = format!("w{worker}-e{epoch}");
            let batch = pb::PartialBatch {
                collector_id: format!("load-{worker}"),
                epoch,
                partials: vec![partial(&app, epoch)],
            };
            let Some(c) = clients.get_mut(&t) else {
                continue;
            };
            match tokio::time::timeout(Duration::from_secs(3), c.submit_partials(batch)).await {
                Ok(Ok(_)) => {
                    acked.lock().unwrap().push(app);
                    epoch += 1;
                }
                _ => {
                    clients.remove(&t);
                    target += 1;
                }
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_the_leader_under_load_loses_no_acknowledged_update() {
    let mut c = Cluster::start(
        3,
        Options {
            advertised: None,
            source_ips: false,
            extra: vec![],
        },
    );
    let all = [0usize, 1, 2];
    let Some(leader) = c.leader(&all, Duration::from_secs(15)).await else {
        panic!("no leader elected\n{}", c.logs());
    };
    let acked = Arc::new(Mutex::new(Vec::new()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let addrs: Vec<String> = c.procs.iter().map(|p| p.listen.clone()).collect();
    let workers: Vec<_> = (0..3)
        .map(|w| spawn_load(w, addrs.clone(), c.certs(), acked.clone(), stop_rx.clone()))
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = acked.lock().unwrap().len();
    assert!(
        before > 0,
        "no update acknowledged under load\n{}",
        c.logs()
    );

    c.kill(leader);
    let t0 = Instant::now();
    let rest: Vec<usize> = all.iter().copied().filter(|i| *i != leader).collect();
    let new_leader = c.leader(&rest, Duration::from_secs(10)).await;
    let failover = t0.elapsed();
    eprintln!("failover after kill -9: {failover:?}");
    let Some(new_leader) = new_leader else {
        panic!("no new leader\n{}", c.logs())
    };
    assert_ne!(new_leader, leader);
    assert!(
        failover < Duration::from_secs(3),
        "new leader after {failover:?} (> 3 s)\n{}",
        c.logs()
    );

    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = acked.lock().unwrap().len();
    assert!(
        after > before,
        "writes did not resume after failover\n{}",
        c.logs()
    );

    // The killed node restarts from its sled log and catches up.
    c.spawn(leader);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = stop_tx.send(true);
    for w in workers {
        let _ = w.await;
    }
    let hash = c.converged(&all, Duration::from_secs(30)).await;
    if let Err(e) = &hash {
        panic!("{e}\n{}", c.logs());
    }
    let acked = acked.lock().unwrap().clone();
    for i in all {
        let apps = c.apps(i).await;
        let lost: Vec<&String> = acked.iter().filter(|a| !apps.contains(*a)).collect();
        assert!(
            lost.is_empty(),
            "node {} lost {} acknowledged updates, e.g. {:?}",
            i + 1,
            lost.len(),
            &lost[..lost.len().min(5)]
        );
    }
    eprintln!(
        "{} acknowledged updates, all present on all 3 replicas",
        acked.len()
    );
}

/// A TCP proxy in front of one node: connections from an isolated node to
/// a non-isolated one (or the other way) are refused and cut. Nodes are told
/// apart by their source address 127.0.0.<id>.
async fn proxy(
    listen: tokio::net::TcpListener,
    target: String,
    me: u8,
    isolated: Arc<Mutex<BTreeSet<u8>>>,
) {
    loop {
        let Ok((mut inbound, from)) = listen.accept().await else {
            continue;
        };
        let src = match from {
            SocketAddr::V4(a) => a.ip().octets()[3],
            SocketAddr::V6(_) => 0,
        };
        let cut = {
            let iso = isolated.clone();
            move || {
                let s = iso.lock().unwrap();
                s.contains(&src) != s.contains(&me)
            }
        };
        if cut() {
            continue; // dropped: the connection closes
        }
        let target = target.clone();
        tokio::spawn(async move {
            let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                return;
            };
            let (mut ri, mut wi) = inbound.split();
            let (mut ro, mut wo) = outbound.split();
            let a = tokio::io::copy(&mut ri, &mut wo);
            let b = tokio::io::copy(&mut ro, &mut wi);
            let watch = async {
                loop {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    if cut() {
                        return;
                    }
                }
            };
            tokio::select! {
                _ = a => {}
                _ = b => {}
                _ = watch => {}
            }
            let _ = wi.shutdown().await;
            let _ = wo.shutdown().await;
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_minority_accepts_no_writes_and_all_converge_after_healing() {
    let isolated = Arc::new(Mutex::new(BTreeSet::new()));
    // Proxies first: their addresses are what the nodes know each other by.
    let mut proxies = Vec::new();
    let mut advertised = Vec::new();
    for _ in 0..3 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        advertised.push(l.local_addr().unwrap().to_string());
        proxies.push(l);
    }
    let c = Cluster::start(
        3,
        Options {
            advertised: Some(advertised),
            source_ips: true,
            extra: vec![],
        },
    );
    for (i, l) in proxies.into_iter().enumerate() {
        tokio::spawn(proxy(
            l,
            c.procs[i].listen.clone(),
            i as u8 + 1,
            isolated.clone(),
        ));
    }
    let all = [0usize, 1, 2];
    let Some(leader) = c.leader(&all, Duration::from_secs(15)).await else {
        panic!("no leader elected\n{}", c.logs());
    };
    let certs = c.certs();
    let mut to_leader = fleet_client(&c.procs[leader].listen, &certs).await.unwrap();
    to_leader
        .submit_partials(pb::PartialBatch {
            collector_id: "p".into(),
            epoch: 1,
            partials: vec![partial("before", 1)],
        })
        .await
        .expect("write before the partition");

    // Cut the leader off: it is the minority.
    isolated.lock().unwrap().insert(leader as u8 + 1);
    // Let the proxies cut the open connections first: a write racing the
    // cut may reach the majority and commit there later (its client then saw
    // a timeout, an unknown outcome, not a refusal).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let majority: Vec<usize> = all.iter().copied().filter(|i| *i != leader).collect();
    let r = to_leader
        .submit_partials(pb::PartialBatch {
            collector_id: "p".into(),
            epoch: 2,
            partials: vec![partial("minority", 1)],
        })
        .await;
    assert!(
        r.is_err(),
        "the isolated old leader acknowledged a write: {r:?}"
    );
    let Some(new_leader) = c.leader(&majority, Duration::from_secs(10)).await else {
        panic!("the majority elected no leader\n{}", c.logs());
    };
    let mut to_majority = fleet_client(&c.procs[new_leader].listen, &certs)
        .await
        .unwrap();
    to_majority
        .submit_partials(pb::PartialBatch {
            collector_id: "q".into(),
            epoch: 1,
            partials: vec![partial("majority", 1)],
        })
        .await
        .expect("the majority accepts writes");
    let r = to_leader
        .submit_partials(pb::PartialBatch {
            collector_id: "p".into(),
            epoch: 3,
            partials: vec![partial("minority2", 1)],
        })
        .await;
    assert!(r.is_err(), "the minority acknowledged a write: {r:?}");
    let read = c
        .api(leader)
        .call("GET", "/api/v1/baselines", None)
        .await
        .unwrap();
    assert_eq!(read["stale"], true, "a minority read must say it is stale");

    // Heal: everyone converges on the majority's history.
    isolated.lock().unwrap().clear();
    if let Err(e) = c.converged(&all, Duration::from_secs(30)).await {
        panic!("{e}\n{}", c.logs());
    }
    for i in all {
        let apps = c.apps(i).await;
        assert!(
            apps.contains("before") && apps.contains("majority"),
            "node {}: {apps:?}",
            i + 1
        );
        assert!(
            !apps.contains("minority") && !apps.contains("minority2"),
            "node {}: {apps:?}",
            i + 1
        );
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// ≥ 20 kill -9 runs: failover (kill → a new leader a majority agrees on)
/// and recovery (restart → the restarted node has caught up).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "benchmark: run by bench/aggregator/run.sh"]
async fn failover_bench() {
    let runs: usize = std::env::var("OUTFLOW_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let mut c = Cluster::start(
        3,
        Options {
            advertised: None,
            source_ips: false,
            extra: vec![],
        },
    );
    let all = [0usize, 1, 2];
    let (mut failovers, mut recoveries) = (Vec::new(), Vec::new());
    let acked = Arc::new(Mutex::new(Vec::new()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let addrs: Vec<String> = c.procs.iter().map(|p| p.listen.clone()).collect();
    let load = spawn_load(0, addrs, c.certs(), acked.clone(), stop_rx);
    for run in 0..runs {
        let leader = c
            .leader(&all, Duration::from_secs(20))
            .await
            .expect("leader");
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.kill(leader);
        let t0 = Instant::now();
        let rest: Vec<usize> = all.iter().copied().filter(|i| *i != leader).collect();
        c.leader(&rest, Duration::from_secs(20))
            .await
            .expect("new leader");
        failovers.push(t0.elapsed());
        let t1 = Instant::now();
        c.spawn(leader);
        // Recovered: the restarted node answers and has applied what the
        // others had when it came back.
        let target = loop {
            if let Ok(Ok(v)) = tokio::time::timeout(
                Duration::from_secs(2),
                c.api(rest[0]).call("GET", "/api/v1/cluster", None),
            )
            .await
            {
                break v["commit_index"].as_u64().unwrap_or(0);
            }
        };
        loop {
            let r = tokio::time::timeout(
                Duration::from_millis(500),
                c.api(leader).call("GET", "/metrics", None),
            )
            .await;
            let applied = r.ok().and_then(|r| r.ok()).and_then(|v| {
                v.as_str()?
                    .lines()
                    .find_map(|l| l.strip_prefix("outflow_raft_applied_index "))
                    .and_then(|x| x.parse::<u64>().ok())
            });
            if applied.is_some_and(|a| a >= target) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        recoveries.push(t1.elapsed());
        eprintln!(
            "run {run}: failover {:?}, recovery {:?}",
            failovers[run], recoveries[run]
        );
    }
    let _ = stop_tx.send(true);
    let _ = load.await;
    failovers.sort();
    recoveries.sort();
    println!(
        "BENCH failover_ms median={} max={} recovery_ms median={} max={} runs={runs} acked_during={}",
        percentile(&failovers, 0.5).as_millis(),
        failovers.last().unwrap().as_millis(),
        percentile(&recoveries, 0.5).as_millis(),
        recoveries.last().unwrap().as_millis(),
        acked.lock().unwrap().len()
    );
    assert!(c.converged(&all, Duration::from_secs(30)).await.is_ok());
}

/// Replicated baseline updates per second on 3 nodes with real fsync:
/// `OUTFLOW_BENCH_CLIENTS` concurrent clients (default 64) for
/// `OUTFLOW_BENCH_SECS` (default 10) against the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "benchmark: run by bench/aggregator/run.sh"]
async fn throughput_bench() {
    let clients: usize = std::env::var("OUTFLOW_BENCH_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let secs: u64 = std::env::var("OUTFLOW_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let c = Cluster::start(
        3,
        Options {
            advertised: None,
            source_ips: false,
            extra: vec![],
        },
    );
    let all = [0usize, 1, 2];
    let leader = c
        .leader(&all, Duration::from_secs(20))
        .await
        .expect("leader");
    let addr = c.procs[leader].listen.clone();
    let certs = c.certs();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    // A handful of connections shared by the clients (HTTP/2 multiplexes).
    let mut conns = Vec::new();
    for _ in 0..4 {
        conns.push(fleet_client(&addr, &certs).await.expect("connect"));
    }
    for w in 0..clients {
        let mut cl = conns[w % conns.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut epoch = 1u64;
            while Instant::now() < deadline {
                let b = pb::PartialBatch {
                    collector_id: format!("bench-{w}"),
                    epoch,
                    partials: vec![partial(&format!("app-{}", epoch % 50), epoch)],
                };
                let t = Instant::now();
                if cl.submit_partials(b).await.is_ok() {
                    lat.push(t.elapsed());
                }
                epoch += 1;
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    lat.sort();
    let n = lat.len();
    // Sizes of one write: the gRPC request, and the command in the log (the
    // node pads the histograms to the engine's fixed bucket counts).
    let sample = pb::PartialBatch {
        collector_id: "bench-10".into(),
        epoch: 1000,
        partials: vec![partial("app-10", 1000)],
    };
    let log_bytes = outflow_aggregator::state::codec::encode(
        &outflow_aggregator::state::Command::SubmitPartials {
            collector_id: sample.collector_id.clone(),
            epoch: sample.epoch,
            partials: sample
                .partials
                .iter()
                .cloned()
                .map(outflow_proto::partial_from_pb)
                .collect(),
        },
    )
    .len();
    println!(
        "BENCH outflow_writes_per_s={:.0} p50_ms={:.2} p99_ms={:.2} clients={clients} secs={secs} writes={n} request_bytes={} log_bytes={log_bytes} tls=mutual",
        n as f64 / secs as f64,
        percentile(&lat, 0.5).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
        prost::Message::encoded_len(&sample),
    );
    assert!(n > 0);
}
