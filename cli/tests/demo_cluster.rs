//! `outflow demo` as a user runs it: the whole distributed system on
//! loopback (3 Raft aggregators, 2 collectors, one mTLS agent per simulated
//! host). Checked from outside the process: the admin API names a leader
//! while the demo runs, alerts print and match the simulator's injected
//! incidents, Ctrl-C stops everything and removes the demo's files.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_outflow");

/// Port offsets the demo uses above `--base-port`.
const OFFSETS: [u16; 10] = [70, 71, 72, 101, 102, 103, 201, 202, 271, 272];

/// A base port whose ten demo ports are free right now (tests of several
/// runs and the tests of this file use different ranges).
fn free_base(salt: u16) -> u16 {
    // 129 slots of 300 ports (a demo spans 273); a test keeps to the slots
    // of its own residue modulo 3, so the tests of one run never overlap.
    let first = (std::process::id() % 43) * 3 + u32::from(salt);
    for i in 0..43u32 {
        let slot = (first + i * 3) % 129;
        let base = (20_000 + slot * 300) as u16;
        if OFFSETS
            .iter()
            .all(|o| TcpListener::bind(("127.0.0.1", base + o)).is_ok())
        {
            return base;
        }
    }
    panic!("no free range of demo ports found");
}

/// GET on loopback; the JSON body of a 200.
fn get_json(port: u16, path: &str) -> Option<serde_json::Value> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    serde_json::from_str(body.trim()).ok()
}

/// Collects a child's pipe into a shared string as it arrives.
fn collect(pipe: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let out = Arc::new(Mutex::new(String::new()));
    let o = out.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            let mut s = o.lock().unwrap();
            s.push_str(&line);
            s.push('\n');
        }
    });
    out
}

fn demo(base: u16, extra: &[&str]) -> Child {
    Command::new(BIN)
        .args([
            "demo",
            "--hosts",
            "40",
            "--days",
            "2",
            "--incidents",
            "3",
            "--seed",
            "7",
            "--base-port",
            &base.to_string(),
        ])
        .args(extra)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("outflow demo starts")
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("outflow demo did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn cluster_demo_elects_a_leader_and_alerts_on_injected_incidents() {
    let tmp = tempfile::tempdir().unwrap();
    let truth = tmp.path().join("truth.jsonl");
    // The same fleet as the demo's (same seed; only the dates differ).
    let st = Command::new(BIN)
        .args([
            "sim",
            "--hosts",
            "40",
            "--days",
            "2",
            "--incidents",
            "3",
            "--seed",
            "7",
            "--out",
        ])
        .arg(tmp.path().join("sim.jsonl"))
        .arg("--truth")
        .arg(&truth)
        .status()
        .unwrap();
    assert!(st.success());
    let incidents: Vec<serde_json::Value> = std::fs::read_to_string(&truth)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(incidents.len(), 3);

    // Replicated policy: the nightly backups of this small fleet are
    // suppressed through the aggregators and must not alert.
    let policy = tmp.path().join("policy.json");
    std::fs::write(
        &policy,
        r#"{"suppressions": [{"app": "backup-agent.exe", "reason": "nightly backups"}]}"#,
    )
    .unwrap();

    let base = free_base(0);
    let policy_arg = policy.to_str().unwrap();
    let mut child = demo(
        base,
        &[
            "--exit-when-done",
            "--settle-secs",
            "2",
            "--json",
            "--policy",
            policy_arg,
        ],
    );
    let stdout = collect(child.stdout.take().unwrap());
    let stderr = collect(child.stderr.take().unwrap());

    // While it runs, the admin API of node 1 names a leader of three nodes.
    let mut leader = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    while leader.is_none() && Instant::now() < deadline {
        if let Some(v) = get_json(base + 70, "/api/v1/cluster") {
            if v["leader"].as_u64().unwrap_or(0) != 0 {
                leader = Some(v);
                break;
            }
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let cluster = leader.unwrap_or_else(|| {
        panic!(
            "no leader seen on the admin API; stderr:\n{}",
            stderr.lock().unwrap()
        )
    });
    let nodes = cluster["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 3, "{cluster}");
    assert_eq!(
        nodes.iter().filter(|n| n["role"] == "leader").count(),
        1,
        "{cluster}"
    );

    let status = wait_exit(&mut child, Duration::from_secs(180));
    std::thread::sleep(Duration::from_millis(300));
    let err = stderr.lock().unwrap().clone();
    let out = stdout.lock().unwrap().clone();
    assert!(status.success(), "exit {status:?}; stderr:\n{err}");

    // Alerts arrived, as JSON lines, and at least one is an injected incident.
    let alerts: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(!alerts.is_empty(), "no alert printed; stderr:\n{err}");
    let matching: Vec<&serde_json::Value> = alerts
        .iter()
        .filter(|a| {
            incidents
                .iter()
                .any(|i| i["host"] == a["host"] && i["app"] == a["app"])
        })
        .collect();
    assert!(
        !matching.is_empty(),
        "no alert matches an injected incident ({incidents:?}); alerts:\n{out}"
    );
    for a in &matching {
        assert_eq!(a["analytic"], "AN1511");
        assert!(a["bytes_out"].as_u64().unwrap_or(0) > 0, "{a}");
    }
    assert!(
        alerts.iter().all(|a| a["app"] != "backup-agent.exe"),
        "a suppressed app alerted: the policy did not reach the collectors:\n{out}"
    );
    assert!(err.contains("policy replicated"), "{err}");
    // The collectors reported every alert to the Raft group: each node
    // holds them all.
    let held = err
        .lines()
        .find(|l| l.starts_with("alerts held by the aggregators: "))
        .unwrap_or_else(|| panic!("no replicated alert count:\n{err}"));
    for node in 1..=3 {
        assert!(
            held.contains(&format!("node {node}: {}", alerts.len())),
            "{held} (printed {})",
            alerts.len()
        );
    }
    // Every alert printed once.
    let mut ids: Vec<&str> = alerts.iter().filter_map(|a| a["id"].as_str()).collect();
    let n = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n, "an alert was printed twice");
    // The demo's own evaluation agrees, and the whole fleet was shipped.
    let line = err
        .lines()
        .find(|l| l.starts_with("incidents "))
        .unwrap_or_else(|| panic!("no evaluation in stderr:\n{err}"));
    let detected: u64 = line
        .split_whitespace()
        .skip_while(|w| *w != "detected")
        .nth(1)
        .and_then(|w| w.parse().ok())
        .unwrap();
    assert!(detected >= 1, "{line}");
    let sim_events = std::fs::read_to_string(tmp.path().join("sim.jsonl"))
        .unwrap()
        .lines()
        .count();
    // Shipped: the simulated events plus one closing record per host.
    let shipped: usize = err
        .lines()
        .find(|l| l.contains("events shipped by 40 agents"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no shipping summary in stderr:\n{err}"));
    assert_eq!(shipped, sim_events + 40, "stderr:\n{err}");
    eprintln!(
        "demo: {} alerts, {} matching incidents; {}",
        alerts.len(),
        matching.len(),
        line
    );
}

#[test]
fn ctrl_c_stops_the_cluster_demo_cleanly_and_removes_its_files() {
    let base = free_base(1);
    // Slow steps so Ctrl-C lands while the fleet is still shipping.
    let mut child = demo(base, &["--step-ms", "400"]);
    let stderr = collect(child.stderr.take().unwrap());
    let _stdout = collect(child.stdout.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(120);
    while !stderr
        .lock()
        .unwrap()
        .contains("agents: 40 simulated hosts")
    {
        assert!(
            child.try_wait().unwrap().is_none(),
            "exited early:\n{}",
            stderr.lock().unwrap()
        );
        assert!(
            Instant::now() < deadline,
            "agents never started:\n{}",
            stderr.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    let dir: PathBuf = {
        let err = stderr.lock().unwrap();
        let l = err
            .lines()
            .find(|l| l.starts_with("dev CA and "))
            .expect("certificate line");
        PathBuf::from(l.rsplit(" made in ").next().unwrap())
    };
    assert!(dir.exists(), "{}", dir.display());
    let st = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let status = wait_exit(&mut child, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(300));
    let err = stderr.lock().unwrap().clone();
    assert!(status.success(), "exit {status:?}; stderr:\n{err}");
    assert!(err.contains("Ctrl-C: stopping"), "{err}");
    assert!(err.contains("stopped in "), "{err}");
    assert!(err.contains("Against the simulator's truth"), "{err}");
    assert!(
        !err.contains("panicked"),
        "a task panicked during shutdown:\n{err}"
    );
    assert!(
        !dir.parent().unwrap().exists(),
        "the demo's temporary directory {} is still there",
        dir.parent().unwrap().display()
    );
    // Nothing listens any more on the demo's ports.
    for o in OFFSETS {
        assert!(
            TcpListener::bind(("127.0.0.1", base + o)).is_ok(),
            "port {} still in use after the demo exited",
            base + o
        );
    }
}

#[test]
fn embedded_demo_still_scores_the_fleet_in_one_engine() {
    let out = Command::new(BIN)
        .args([
            "demo",
            "--embedded",
            "--hosts",
            "40",
            "--days",
            "2",
            "--incidents",
            "3",
            "--seed",
            "7",
            "--json",
        ])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    // No cluster: nothing about certificates or aggregators.
    assert!(!err.contains("aggregators:"), "{err}");
    let alerts = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
        .count();
    assert!(alerts >= 1, "{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("incidents "))
        .unwrap_or_else(|| panic!("no evaluation:\n{err}"));
    assert!(!line.contains("detected 0"), "{line}");
}

#[test]
fn cluster_demo_honours_otel_exporter_otlp_endpoint() {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/python/otlp_receiver.py"
    );
    let probe = Command::new("python3")
        .args([
            "-c",
            "import grpc, opentelemetry.proto.collector.logs.v1.logs_service_pb2_grpc",
        ])
        .output();
    if !matches!(probe, Ok(o) if o.status.success()) {
        eprintln!(
            "SKIPPED: python3 with `grpcio` and `opentelemetry-proto` is not available \
             (CI installs them from .ci/requirements.txt)"
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let port_file = tmp.path().join("port");
    let done_file = tmp.path().join("done");
    let receiver = Command::new("python3")
        .arg(script)
        .arg(&port_file)
        .arg(&done_file)
        .arg("180")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let deadline = Instant::now() + Duration::from_secs(30);
    let port = loop {
        if let Ok(p) = std::fs::read_to_string(&port_file) {
            break p.trim().to_string();
        }
        assert!(Instant::now() < deadline, "the OTLP receiver did not start");
        std::thread::sleep(Duration::from_millis(100));
    };

    let base = free_base(2);
    let out = Command::new(BIN)
        .args([
            "demo",
            "--hosts",
            "40",
            "--days",
            "2",
            "--incidents",
            "3",
            "--seed",
            "7",
            "--exit-when-done",
            "--settle-secs",
            "2",
            "--json",
            "--base-port",
            &base.to_string(),
        ])
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{port}"),
        )
        .env_remove("OTEL_EXPORTER_OTLP_HEADERS")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{err}");
    let mut printed: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|a| a["id"].as_str().map(str::to_string))
        .collect();
    printed.sort();
    assert!(!printed.is_empty(), "{err}");
    assert!(err.contains("exported over OTLP"), "{err}");
    std::fs::write(&done_file, printed.len().to_string()).unwrap();
    let r = receiver.wait_with_output().unwrap();
    let rerr = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "OTLP receiver: {rerr}");
    let mut received: Vec<String> = String::from_utf8_lossy(&r.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["id"].as_str().map(str::to_string))
        .collect();
    received.sort();
    assert_eq!(
        received, printed,
        "the SOC got exactly the alerts the demo printed"
    );
}
