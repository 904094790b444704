//! Collector end to end, in one process: a shipping client → the collector
//! over mutual TLS on 127.0.0.1 → alerts in an OTLP receiver (tonic
//! LogsService from opentelemetry-proto), in a JSON-lines file and in the
//! fleet store; refusals; the official Python protos decoding the alerts.

mod collector_common;

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use collector_common::*;
use outflow_collector::shipper::{connect, ship};
use outflow_collector::{EmbeddedFleet, FleetClient};
use outflow_core::shard::Member;
use outflow_core::Policy;
use outflow_pki::{CertDir, CertSpec, DevCa, Role};
use outflow_proto::pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_alerts_reach_otlp_once_even_when_the_soc_is_down_at_first() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = certs(tmp.path(), &[]);
    let receiver = Receiver::default();
    receiver.failing.store(true, Ordering::SeqCst);
    let otlp = receiver.start().await;
    let fleet = EmbeddedFleet::new(14, Policy::default());
    fleet.set_members(vec![Member {
        collector_id: "c1".into(),
        endpoint: "https://127.0.0.1:1".into(),
    }]);
    let cfg = config(tmp.path(), &certs, Some(format!("http://{otlp}")));
    let alerts_file = cfg.alerts_out.clone().unwrap();
    let c = outflow_collector::start(cfg, Some(Arc::new(fleet.clone()) as Arc<dyn FleetClient>))
        .await
        .expect("collector starts");

    let (events, incidents) = fleet_events(40, 11);
    let batches = batches(&events, 300);
    let total = event_count(&batches);
    let dir = CertDir::new(&certs);
    let endpoint = format!("https://{}", c.ingest_addr);
    let mut client = connect(&endpoint, dir.client_tls("importer").unwrap())
        .await
        .expect("importer connects");
    let first: Vec<pb::Batch> = batches.iter().take(10).cloned().collect();
    let out = ship(&mut client, batches.clone())
        .await
        .expect("stream accepted");
    assert_eq!(out.acked.len(), batches.len(), "every batch acknowledged");
    assert!(out.acked.iter().all(|(_, dup)| !dup));
    // Resent batches are acknowledged again but counted once.
    let again = ship(&mut client, first).await.unwrap();
    assert_eq!(again.acked.len(), 10);
    assert!(again.acked.iter().all(|(_, dup)| *dup), "{:?}", again.acked);
    let m = c.metrics.clone();
    assert_eq!(m.samples.load(Ordering::Relaxed), total);
    assert_eq!(m.batches.load(Ordering::Relaxed), batches.len() as u64);
    assert_eq!(m.duplicate_batches.load(Ordering::Relaxed), 10);

    // The engine sees every event; windows close; alerts queue while the
    // SOC refuses them.
    wait_for(
        "the engine to process everything",
        Duration::from_secs(120),
        || m.engine_events.load(Ordering::Relaxed) == total,
    )
    .await;
    wait_for("alerts", Duration::from_secs(60), || {
        m.alerts.load(Ordering::Relaxed) > 0 && receiver.refused_calls.load(Ordering::SeqCst) > 0
    })
    .await;
    assert!(receiver.ids().is_empty());
    // Let the last windows close (lateness 2 s of quiet), then open the SOC.
    tokio::time::sleep(Duration::from_secs(4)).await;
    receiver.failing.store(false, Ordering::SeqCst);
    wait_for("every alert delivered", Duration::from_secs(60), || {
        let raised = m.alerts.load(Ordering::Relaxed);
        m.alerts_delivered_otlp.load(Ordering::Relaxed) == raised
            && m.alerts_delivered_file.load(Ordering::Relaxed) == raised
            && m.alerts_delivered_fleet.load(Ordering::Relaxed) == raised
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let otlp_ids = receiver.ids();
    let unique: BTreeSet<_> = otlp_ids.iter().cloned().collect();
    assert_eq!(unique.len(), otlp_ids.len(), "no alert delivered twice");
    let file: BTreeSet<_> = file_ids(&alerts_file).into_iter().collect();
    assert_eq!(file, unique, "file sink and OTLP carry the same alerts");
    let reported: BTreeSet<_> = fleet.alerts().into_iter().map(|a| a.id).collect();
    assert_eq!(reported, unique, "the aggregator got the same alerts");

    // Alerts find the injected incidents.
    let alerts: Vec<outflow_core::Alert> = std::fs::read_to_string(&alerts_file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let report = outflow_sim::eval::evaluate(&incidents, &alerts);
    eprintln!(
        "collector e2e: {} events, {} batches, {} alerts, recall {:.2} ({} of {} incidents), precision {:.2}",
        total,
        batches.len(),
        alerts.len(),
        report.recall,
        report.detected,
        report.incidents,
        report.precision
    );
    assert!(
        report.detected >= 1,
        "at least one incident detected: {report:?}"
    );

    // Partials went up and a baseline came back.
    assert!(m.partial_submissions.load(Ordering::Relaxed) > 0);
    assert!(!fleet.baseline().apps.is_empty());

    // Evidence behind an alert: its flows.
    let a = &alerts[0];
    let (status, body) = http_get(c.api_addr, &format!("/api/v1/evidence?alert={}", a.id)).await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(body.trim()).expect("evidence JSON");
    let evs = v["events"].as_array().expect("events");
    assert!(
        evs.iter().any(|e| e["type"] == "net" && e["pid"] == a.pid),
        "evidence has the alert's flows: {body}"
    );
    let (status, _) = http_get(c.api_addr, "/api/v1/evidence?alert=nope").await;
    assert_eq!(status, 404);
    let (status, text) = http_get(c.api_addr, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(
        metric(&text, "outflow_collector_samples_total{collector=\"c1\"}"),
        Some(total as f64)
    );
    assert_eq!(
        metric(
            &text,
            "outflow_collector_outbox_backlog{collector=\"c1\",sink=\"otlp\"}"
        ),
        Some(0.0)
    );
    let (status, _) = http_get(c.api_addr, "/readyz").await;
    assert_eq!(status, 200);
    c.shutdown().await;
}

async fn refused(endpoint: &str, tls: tonic::transport::ClientTlsConfig, host: &str) -> String {
    let batch = pb::Batch {
        host_id: host.into(),
        sequence: 1,
        ..Default::default()
    };
    match connect(endpoint, tls).await {
        Err(e) => format!("connect: {e}"),
        Ok(mut c) => match ship(&mut c, vec![batch]).await {
            Ok(o) => panic!("{host}: accepted ({o:?}) but should have been refused"),
            Err(s) => format!("{:?}: {}", s.code(), s.message()),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_no_cert_foreign_ca_expired_spoof_role_size_and_redirect() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = certs(tmp.path(), &["ws-1", "ws-2"]);
    let fleet = EmbeddedFleet::new(14, Policy::default());
    let mut cfg = config(tmp.path(), &certs, None);
    cfg.max_message_bytes = 64 * 1024;
    let c = outflow_collector::start(cfg, Some(Arc::new(fleet.clone()) as Arc<dyn FleetClient>))
        .await
        .unwrap();
    let endpoint = format!("https://{}", c.ingest_addr);
    let dir = CertDir::new(&certs);
    let ca_pem = dir.ca_pem().unwrap();
    let ca = tonic::transport::Certificate::from_pem(&ca_pem);

    // An agent sending its own host: accepted.
    let mut ok = connect(&endpoint, dir.client_tls("agent-ws-1").unwrap())
        .await
        .unwrap();
    let good = pb::Batch {
        host_id: "ws-1".into(),
        sequence: 1,
        events: vec![outflow_proto::event_to_pb(
            &outflow_core::telemetry::parse_line(
                r#"{"type":"net","ts":"2026-01-05T10:00:00Z","host":"ws-1","pid":0,"dst_ip":"1.2.3.4","dst_port":443,"bytes_out":10,"bytes_in":5}"#,
            )
            .unwrap(),
        )],
        ..Default::default()
    };
    let out = ship(&mut ok, vec![good]).await.unwrap();
    assert_eq!(out.acked, vec![(1, false)]);

    // No client certificate.
    let no_cert = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(ca.clone())
        .domain_name("localhost");
    let msg = refused(&endpoint, no_cert, "ws-1").await;
    eprintln!("no client certificate → {msg}");

    // A certificate from another CA.
    let evil_dir = tmp.path().join("evil");
    std::fs::create_dir_all(&evil_dir).unwrap();
    let evil = DevCa::new("Evil CA").unwrap();
    evil.issue(&CertSpec::new("ws-1", Role::Agent, 30))
        .unwrap()
        .write(&evil_dir, "agent-ws-1")
        .unwrap();
    std::fs::write(evil_dir.join("ca.pem"), &ca_pem).unwrap();
    let msg = refused(
        &endpoint,
        CertDir::new(&evil_dir).client_tls("agent-ws-1").unwrap(),
        "ws-1",
    )
    .await;
    eprintln!("foreign CA → {msg}");

    // An expired certificate from the right CA.
    let exp_dir = tmp.path().join("expired");
    std::fs::create_dir_all(&exp_dir).unwrap();
    DevCa::load(&certs)
        .unwrap()
        .issue(&CertSpec::expired("ws-1", Role::Agent))
        .unwrap()
        .write(&exp_dir, "agent-ws-1")
        .unwrap();
    std::fs::write(exp_dir.join("ca.pem"), &ca_pem).unwrap();
    let msg = refused(
        &endpoint,
        CertDir::new(&exp_dir).client_tls("agent-ws-1").unwrap(),
        "ws-1",
    )
    .await;
    eprintln!("expired → {msg}");

    // A host-id spoof: ws-1's certificate claiming ws-2.
    let msg = refused(&endpoint, dir.client_tls("agent-ws-1").unwrap(), "ws-2").await;
    assert!(msg.starts_with("PermissionDenied"), "{msg}");
    assert!(msg.contains("ws-1") && msg.contains("ws-2"), "{msg}");
    // An admin certificate may not send telemetry at all.
    let msg = refused(&endpoint, dir.client_tls("admin").unwrap(), "admin").await;
    assert!(msg.starts_with("PermissionDenied"), "{msg}");
    // Sequence 0 is malformed.
    let mut cl = connect(&endpoint, dir.client_tls("agent-ws-2").unwrap())
        .await
        .unwrap();
    let err = ship(
        &mut cl,
        vec![pb::Batch {
            host_id: "ws-2".into(),
            sequence: 0,
            ..Default::default()
        }],
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    // A message over the size limit.
    let big = pb::Batch {
        host_id: "ws-2".into(),
        sequence: 1,
        agent_version: "x".repeat(100 * 1024),
        ..Default::default()
    };
    let err = ship(&mut cl, vec![big]).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");

    // The handshake-level refusals never reached the service; only ws-1's
    // one good batch was stored.
    assert_eq!(c.metrics.samples.load(Ordering::Relaxed), 1);
    assert_eq!(c.metrics.batches.load(Ordering::Relaxed), 1);
    use outflow_collector::metrics::RejectReason;
    assert_eq!(c.metrics.rejects_of(RejectReason::HostMismatch), 1);
    assert_eq!(c.metrics.rejects_of(RejectReason::RoleNotAllowed), 1);
    assert_eq!(c.metrics.rejects_of(RejectReason::TooLarge), 1);
    // ... but every refused handshake was counted, by reason.
    for r in [
        RejectReason::TlsNoCertificate,
        RejectReason::TlsUnknownCa,
        RejectReason::TlsExpired,
    ] {
        wait_for(r.as_str(), Duration::from_secs(10), || {
            c.metrics.rejects_of(r) >= 1
        })
        .await;
    }
    assert_eq!(c.metrics.rejects_of(RejectReason::TlsBadCertificate), 0);

    // Redirect: a second collector joins and owns some hosts.
    fleet.set_members(vec![
        Member {
            collector_id: "c1".into(),
            endpoint: endpoint.clone(),
        },
        Member {
            collector_id: "c2".into(),
            endpoint: "https://collector-2.example:7201".into(),
        },
    ]);
    wait_for("the new shard map", Duration::from_secs(10), || {
        c.shard_map.read().unwrap().members.len() == 2
    })
    .await;
    let map = c.shard_map.read().unwrap().clone();
    let foreign = (0..1000)
        .map(|i| format!("host-{i}"))
        .find(|h| map.owner(h).unwrap().collector_id == "c2")
        .unwrap();
    let mut imp = connect(&endpoint, dir.client_tls("importer").unwrap())
        .await
        .unwrap();
    let out = ship(
        &mut imp,
        vec![pb::Batch {
            host_id: foreign.clone(),
            sequence: 1,
            ..Default::default()
        }],
    )
    .await
    .unwrap();
    let r = out.redirect.expect("redirected");
    assert_eq!(r.owner_id, "c2");
    assert_eq!(r.endpoint, "https://collector-2.example:7201");
    assert_eq!(r.host_id, foreign);
    assert!(out.acked.is_empty());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_official_protos_decode_every_contract_attribute() {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/python/otlp_receiver.py"
    );
    let probe = std::process::Command::new("python3")
        .args([
            "-c",
            "import grpc, opentelemetry.proto.collector.logs.v1.logs_service_pb2_grpc",
        ])
        .output();
    match probe {
        Ok(o) if o.status.success() => {}
        _ => {
            eprintln!(
                "SKIPPED: python3 with `grpcio` and `opentelemetry-proto` is not available \
                 (pip install grpcio opentelemetry-proto; CI installs them from .ci/requirements.txt)"
            );
            return;
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let port_file = tmp.path().join("port");
    let done_file = tmp.path().join("done");
    let child = tokio::process::Command::new("python3")
        .arg(script)
        .arg(&port_file)
        .arg(&done_file)
        .arg("180")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs");
    wait_for(
        "the Python receiver's port",
        Duration::from_secs(30),
        || port_file.exists(),
    )
    .await;
    let port: u16 = std::fs::read_to_string(&port_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let certs = certs(tmp.path(), &[]);
    let cfg = config(tmp.path(), &certs, Some(format!("http://127.0.0.1:{port}")));
    let c = outflow_collector::start(cfg, None).await.unwrap();
    let (events, _) = fleet_events(30, 5);
    let batches = batches(&events, 300);
    let total = event_count(&batches);
    let mut client = connect(
        &format!("https://{}", c.ingest_addr),
        CertDir::new(&certs).client_tls("importer").unwrap(),
    )
    .await
    .unwrap();
    ship(&mut client, batches).await.unwrap();
    let m = c.metrics.clone();
    wait_for("the engine", Duration::from_secs(120), || {
        m.engine_events.load(Ordering::Relaxed) == total
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    wait_for("delivery", Duration::from_secs(60), || {
        m.alerts.load(Ordering::Relaxed) > 0
            && m.alerts_delivered_otlp.load(Ordering::Relaxed) == m.alerts.load(Ordering::Relaxed)
    })
    .await;
    let delivered = m.alerts_delivered_otlp.load(Ordering::Relaxed);
    std::fs::write(&done_file, delivered.to_string()).unwrap();
    let out = child.wait_with_output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "python receiver: {} alerts\n{stderr}",
        stdout.lines().count()
    );
    assert!(
        out.status.success(),
        "python receiver found problems:\n{stderr}"
    );
    assert_eq!(stdout.lines().count() as u64, delivered);
    c.shutdown().await;
}
