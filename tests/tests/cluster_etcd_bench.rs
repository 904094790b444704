//! The etcd side of the aggregator throughput benchmark: a local 3-member
//! etcd cluster (Debian `etcd-server`) loaded with the same client pattern as
//! `cluster_process::throughput_bench` (same clients, 4 HTTP/2 connections,
//! to the leader, one write per request) through etcd's native gRPC `KV/Put`,
//! with mutual TLS on client and peer connections like the aggregators
//! (certificates from the same dev CA; `OUTFLOW_BENCH_ETCD_TLS=0` for
//! plaintext).
//! Not in CI; run by bench/aggregator/run.sh:
//! `cargo test --release -p outflow-tests --test cluster_etcd_bench -- --ignored --nocapture`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};

/// etcdserverpb.PutRequest (only the fields used).
#[derive(Clone, PartialEq, prost::Message)]
struct PutRequest {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

/// etcdserverpb.PutResponse (fields ignored).
#[derive(Clone, PartialEq, prost::Message)]
struct PutResponse {}

use outflow_tests::free_port;

struct Etcd(Vec<Child>);

impl Drop for Etcd {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[(((sorted.len() as f64) - 1.0) * p).round() as usize]
}

async fn put(
    grpc: &mut tonic::client::Grpc<Channel>,
    key: Vec<u8>,
    value: Vec<u8>,
) -> Result<(), tonic::Status> {
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let codec: tonic_prost::ProstCodec<PutRequest, PutResponse> = Default::default();
    grpc.unary(
        tonic::Request::new(PutRequest { key, value }),
        PathAndQuery::from_static("/etcdserverpb.KV/Put"),
        codec,
    )
    .await
    .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "benchmark: needs etcd (Debian etcd-server); run by bench/aggregator/run.sh"]
async fn etcd_throughput_bench() {
    let clients: usize = std::env::var("OUTFLOW_BENCH_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let secs: u64 = std::env::var("OUTFLOW_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let value_len: usize = std::env::var("OUTFLOW_BENCH_VALUE_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let etcd_bin = std::env::var("ETCD_BIN").unwrap_or_else(|_| "etcd".into());
    let tls = std::env::var("OUTFLOW_BENCH_ETCD_TLS").map_or(true, |v| v != "0");
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    outflow_pki::generate_dev(&certs, &Default::default()).unwrap();
    let pem = |f: &str| certs.join(f).display().to_string();
    let scheme = if tls { "https" } else { "http" };
    let tls_args: Vec<String> = if tls {
        [
            ("--cert-file", pem("server.pem")),
            ("--key-file", pem("server-key.pem")),
            ("--trusted-ca-file", pem("ca.pem")),
            ("--client-cert-auth", "true".into()),
            ("--peer-cert-file", pem("server.pem")),
            ("--peer-key-file", pem("server-key.pem")),
            ("--peer-trusted-ca-file", pem("ca.pem")),
            ("--peer-client-cert-auth", "true".into()),
        ]
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect()
    } else {
        Vec::new()
    };
    let ctl_tls: Vec<String> = if tls {
        vec![
            format!("--cacert={}", pem("ca.pem")),
            format!("--cert={}", pem("server.pem")),
            format!("--key={}", pem("server-key.pem")),
        ]
    } else {
        Vec::new()
    };
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let cluster: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, (_, p))| format!("e{i}={scheme}://127.0.0.1:{p}"))
        .collect();
    let mut procs = Vec::new();
    for (i, (c, p)) in ports.iter().enumerate() {
        let log = std::fs::File::create(dir.path().join(format!("e{i}.log"))).unwrap();
        let child = Command::new(&etcd_bin)
            .args([
                "--name",
                &format!("e{i}"),
                "--data-dir",
                &dir.path().join(format!("e{i}")).display().to_string(),
                "--listen-client-urls",
                &format!("{scheme}://127.0.0.1:{c}"),
                "--advertise-client-urls",
                &format!("{scheme}://127.0.0.1:{c}"),
                "--listen-peer-urls",
                &format!("{scheme}://127.0.0.1:{p}"),
                "--initial-advertise-peer-urls",
                &format!("{scheme}://127.0.0.1:{p}"),
                "--initial-cluster",
                &cluster.join(","),
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "outflow-bench",
            ])
            .args(&tls_args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting etcd (install Debian etcd-server or set ETCD_BIN)");
        procs.push(child);
    }
    let _etcd = Etcd(procs);
    let endpoints: Vec<String> = ports
        .iter()
        .map(|(c, _)| format!("127.0.0.1:{c}"))
        .collect();

    // Find the leader with etcdctl (Debian etcd-client).
    let t0 = Instant::now();
    let leader_ep = loop {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "etcd did not elect a leader"
        );
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(&ctl_tls)
            .args([
                "--endpoints",
                &endpoints.join(","),
                "endpoint",
                "status",
                "-w",
                "json",
            ])
            .output();
        if let Ok(o) = out {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&o.stdout) {
                let found = v.as_array().and_then(|a| {
                    a.iter().find(|e| {
                        let s = &e["Status"];
                        s["leader"].as_u64().is_some() && s["leader"] == s["header"]["member_id"]
                    })
                });
                if let Some(e) = found {
                    break e["Endpoint"].as_str().unwrap().to_string();
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let leader_ep = leader_ep
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .to_string();
    let mut conns = Vec::new();
    for _ in 0..4 {
        let mut ep = Endpoint::from_shared(format!("{scheme}://{leader_ep}")).unwrap();
        if tls {
            ep = ep
                .tls_config(
                    outflow_pki::CertDir::new(&certs)
                        .client_tls_for("server", "127.0.0.1")
                        .unwrap(),
                )
                .unwrap();
        }
        let ch = ep.connect().await.unwrap();
        conns.push(tonic::client::Grpc::new(ch));
    }
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for w in 0..clients {
        let mut g = conns[w % conns.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut n = 0u64;
            let value = vec![b'x'; value_len];
            while Instant::now() < deadline {
                let t = Instant::now();
                let key = format!("bench/{w}/{}", n % 50).into_bytes();
                if put(&mut g, key, value.clone()).await.is_ok() {
                    lat.push(t.elapsed());
                }
                n += 1;
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
    println!(
        "BENCH etcd_writes_per_s={:.0} p50_ms={:.2} p99_ms={:.2} clients={clients} secs={secs} writes={n} value_bytes={value_len} tls={}",
        n as f64 / secs as f64,
        percentile(&lat, 0.5).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
        if tls { "mutual" } else { "off" },
    );
    assert!(n > 0, "no etcd write succeeded");
}
