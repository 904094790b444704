//! The `outflow-agent` binary end to end: `run --output` writes contract
//! JSONL, bad configuration is refused with every problem named, `replay`
//! ships a JSONL file over mTLS with the importer certificate and reports
//! bad lines by number, and `check` lists the probes.

mod common;

use std::process::Command;
use std::sync::{Arc, Mutex};

use common::{certs, Store, TestCollector, TestServer};
use outflow_core::telemetry::{parse_line, Event};

const BIN: &str = env!("CARGO_BIN_EXE_outflow-agent");

#[test]
fn run_writes_contract_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("t.jsonl");
    let st = Command::new(BIN)
        .args(["run", "--output"])
        .arg(&out)
        .args([
            "--duration-secs",
            "1.5",
            "--no-capture",
            "--host-id",
            "cli-host",
            "--sample-interval-ms",
            "200",
            "--batch-interval-ms",
            "500",
            "--label",
            "dept=it",
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let text = std::fs::read_to_string(&out).unwrap();
    let events: Vec<Event> = text
        .lines()
        .map(|l| parse_line(l).unwrap_or_else(|e| panic!("bad line {l}: {e}")))
        .collect();
    match &events[0] {
        Event::Host(h) => {
            assert_eq!(h.host, "cli-host");
            assert_eq!(h.labels.get("dept").map(String::as_str), Some("it"));
            assert!(h.os.as_deref().unwrap_or("").starts_with("linux"));
        }
        e => panic!("first event should be `host`: {e:?}"),
    }
    // The agent saw at least its own process.
    let me = events.iter().any(|e| {
        matches!(e, Event::ProcessStart(p) if p.name == "outflow-agent" && p.host == "cli-host")
    });
    assert!(me, "process_start of the agent itself");
}

#[test]
fn bad_configuration_names_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("a.toml");
    std::fs::write(&cfg, "sample_interval_ms = 1\nexclude = [\"not-an-ip\"]\n").unwrap();
    let o = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    for needle in ["sample_interval_ms", "not-an-ip", "collector", "certs"] {
        assert!(
            err.contains(needle),
            "stderr should mention {needle}: {err}"
        );
    }
    std::fs::write(&cfg, "bogus_key = 1\n").unwrap();
    let o = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("bogus_key"));
}

#[test]
fn replay_ships_a_file_with_the_importer_identity() {
    let (_d, cd) = certs(&[]);
    let store = Arc::new(Mutex::new(Store::default()));
    let server = TestServer::start(
        &cd,
        0,
        TestCollector {
            store: store.clone(),
            redirect_to: None,
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        concat!(
            r#"{"type":"process_start","ts":"2024-05-01T12:00:00Z","host":"ws-1","pid":42,"name":"winword.exe"}"#,
            "\n",
            r#"{"type":"net","ts":"2024-05-01T12:00:01Z","host":"ws-1","pid":42,"dst_ip":"162.125.1.1","dst_port":443,"bytes_out":1000000,"bytes_in":100}"#,
            "\n",
            "this is not json\n",
            r#"{"type":"net","ts":"2024-05-01T12:00:01Z","host":"ws-2","pid":7,"dst_ip":"1.2.3.4","dst_port":443,"bytes_out":5,"bytes_in":5}"#,
            "\n",
        ),
    )
    .unwrap();
    let o = Command::new(BIN)
        .args(["replay", "--input"])
        .arg(&input)
        .args(["--collector", &server.url(), "--certs"])
        .arg(cd.dir())
        .args(["--ack-timeout-secs", "30"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains(":3:"),
        "bad line reported with its number: {err}"
    );
    assert!(err.contains("3 events read, 1 rejected"), "{err}");
    let s = store.lock().unwrap();
    let keys: Vec<(String, u64)> = s.batches.keys().cloned().collect();
    assert_eq!(keys, vec![("ws-1".into(), 1), ("ws-2".into(), 1)]);
    assert_eq!(s.batches.values().sum::<usize>(), 3);
    assert!(s.peers.iter().all(|(p, _)| p == "importer"));
}

#[test]
fn check_lists_the_probes() {
    let o = Command::new(BIN).arg("check").output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    for p in ["proc connector", "sock_diag", "destroy", "raw capture"] {
        assert!(out.contains(p), "{out}");
    }
}
