//! Simulate and score in one process: for tests, tuning and benchmarks.

use outflow_core::telemetry::parse_line_bytes;
use outflow_core::{Alert, Engine, EngineConfig, Policy, Timestamp};

use crate::eval::{evaluate, EvalReport};
use crate::{simulate, SimOptions, SimSummary};

/// Simulates `opts`, replays the telemetry through a fresh engine (through
/// the JSONL text, as `outflow replay` would) and evaluates the alerts.
pub fn simulate_and_score(
    opts: &SimOptions,
    cfg: EngineConfig,
    policy: Policy,
) -> std::io::Result<(SimSummary, Vec<Alert>, EvalReport)> {
    let mut buf = Vec::new();
    let summary = simulate(opts, &mut buf, |_, _| {})?;
    let alerts = score_jsonl(&buf, cfg, policy);
    let report = evaluate(&summary.incidents, &alerts);
    Ok((summary, alerts, report))
}

/// Replays telemetry JSONL bytes through a fresh engine.
pub fn score_jsonl(jsonl: &[u8], cfg: EngineConfig, policy: Policy) -> Vec<Alert> {
    let idle = cfg.lateness_us() + cfg.window_us() + 300_000_000;
    let mut engine = Engine::new(cfg, policy);
    let mut alerts = Vec::new();
    for (i, line) in jsonl.split(|b| *b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        if let Ok(e) = parse_line_bytes(line) {
            engine.ingest(&e);
        }
        if i % 4096 == 0 {
            engine.advance_to(Timestamp(engine.max_ts().0.saturating_sub(idle)));
            alerts.extend(engine.drain_alerts());
        }
    }
    engine.flush();
    alerts.extend(engine.drain_alerts());
    alerts
}

/// The naive rule the analytic is often reduced to, for comparison: a
/// (host, process, minute) sending more than 5 MiB out with out/in > 20.
/// Returns alerts in the same shape (only the fields `eval` reads are real).
pub fn naive_rule(jsonl: &[u8]) -> Vec<Alert> {
    use std::collections::BTreeMap;
    let mut procs: BTreeMap<(String, u32), String> = BTreeMap::new();
    let mut minutes: BTreeMap<(String, u32, i64), (u64, u64)> = BTreeMap::new();
    for line in jsonl.split(|b| *b == b'\n') {
        match parse_line_bytes(line) {
            Ok(outflow_core::Event::ProcessStart(p)) => {
                procs.insert((p.host, p.pid), outflow_core::app::normalise_app(&p.name));
            }
            Ok(outflow_core::Event::Net(n)) => {
                let m = Timestamp(n.ts.0 - 1).window_start(60_000_000).0;
                let e = minutes.entry((n.host, n.pid, m)).or_default();
                e.0 += n.bytes_out;
                e.1 += n.bytes_in;
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    for ((host, pid, m), (o, i)) in minutes {
        if o > 5 << 20 && o > 20 * i.max(1) {
            let app = procs
                .get(&(host.clone(), pid))
                .cloned()
                .unwrap_or_else(|| "unknown".into());
            out.push(Alert {
                id: format!("naive-{host}-{pid}-{m}"),
                analytic: "naive".into(),
                host,
                pid,
                ppid: None,
                app,
                exe: None,
                cmdline: None,
                user: None,
                parent_app: None,
                window_start: Timestamp(m).to_rfc3339(),
                window_end: Timestamp(m + 60_000_000).to_rfc3339(),
                bytes_out: o,
                bytes_in: i,
                ratio: o as f64 / i.max(1) as f64,
                service: "other".into(),
                destinations: vec![],
                score: 0.0,
                severity: outflow_core::Severity::Low,
                reasons: vec![],
                kind: "window".into(),
                baseline: String::new(),
                process_start: None,
            });
        }
    }
    out
}
