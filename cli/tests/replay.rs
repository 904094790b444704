//! `outflow replay`, `sim` and `eval` as a user runs them.

use std::io::Write;
use std::process::{Command, Stdio};

fn outflow() -> Command {
    Command::new(env!("CARGO_BIN_EXE_outflow"))
}

/// Runs `cmd` to the end; it must succeed (its stderr is shown if not).
fn run_ok(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `outflow eval` of `alerts` against `sim_fleet`'s truth: 6 incidents, at
/// least 5 found.
fn assert_finds_sim_incidents(truth: &std::path::Path, alerts: &std::path::Path) {
    let out = run_ok(
        outflow()
            .args(["eval", "--json", "--truth"])
            .arg(truth)
            .arg("--alerts")
            .arg(alerts),
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["incidents"], 6);
    assert!(report["detected"].as_u64().unwrap() >= 5, "{report}");
}

fn dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// 120 simulated hosts over 3 days with 6 incidents (seed 4).
fn sim_fleet(fleet: &std::path::Path, truth: &std::path::Path) {
    run_ok(
        outflow()
            .args(["sim", "--hosts", "120", "--days", "3", "--seed", "4"])
            .args(["--incidents", "6", "--out"])
            .arg(fleet)
            .arg("--truth")
            .arg(truth),
    );
}

const GOOD: &str = r#"{"type":"process_start","ts":"2026-01-05T10:00:00Z","host":"ws-1","pid":7,"name":"curl"}
{"type":"net","ts":"2026-01-05T10:00:30Z","host":"ws-1","pid":7,"dst_ip":"1.2.3.4","dst_port":443,"bytes_out":100,"bytes_in":10}
"#;

#[test]
fn bad_lines_are_reported_with_line_numbers_and_the_rest_is_kept() {
    let d = dir();
    let input = d.path().join("in.jsonl");
    let mut f = std::fs::File::create(&input).unwrap();
    f.write_all(GOOD.as_bytes()).unwrap();
    f.write_all(b"not json at all\n").unwrap();
    f.write_all(b"{\"type\":\"net\",\"ts\":\"2026-01-05T10:00:31Z\",\"host\":\"ws-1\",\"pid\":7,\"dst_ip\":\"1.2.3.4\",\"dst_port\":443,\"bytes_out\":-5,\"bytes_in\":0}\n").unwrap();
    f.write_all(b"{\"type\":\"telepathy\",\"ts\":\"2026-01-05T10:00:31Z\",\"host\":\"ws-1\"}\n")
        .unwrap();
    f.write_all(b"\xff\xfe\x00garbage\x01\n").unwrap();
    f.write_all(b"{\"type\":\"net\",\"ts\":\"2026-01-05T10:00:32Z\",\"host\":\"ws-1\",\"pid\":7,\"dst_ip\":\"1.2.3.4\",\"dst_port\":443,\"bytes_out\":99999999999999999999999,\"bytes_in\":0}\n").unwrap();
    f.write_all(GOOD.as_bytes()).unwrap();
    drop(f);
    let out = run_ok(
        outflow()
            .args(["replay", "--input"])
            .arg(&input)
            .args(["--json-summary"]),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary: serde_json::Value =
        serde_json::from_str(stderr.trim().lines().last().unwrap()).unwrap();
    assert_eq!(summary["events"], 4);
    assert_eq!(summary["rejected"], 5);
    assert_eq!(summary["rejected_by_reason"]["not_json"], 2);
    assert_eq!(summary["rejected_by_reason"]["invalid_field"], 2);
    assert_eq!(summary["rejected_by_reason"]["unknown_type"], 1);
    let examples: Vec<String> = summary["rejected_examples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert!(
        examples[0].starts_with("line 3: not valid JSON"),
        "{examples:?}"
    );
    assert!(
        examples[1].starts_with("line 4: field `bytes_out` must not be negative"),
        "{examples:?}"
    );
    assert!(
        examples[2].starts_with("line 5: unknown event type"),
        "{examples:?}"
    );
    assert!(examples[3].starts_with("line 6:"), "{examples:?}");
    assert!(
        examples[4].starts_with("line 7: field `bytes_out` is out of range"),
        "{examples:?}"
    );
    assert_eq!(summary["engine"]["net_records"], 2);
}

#[test]
fn strict_stops_at_the_first_bad_line() {
    let d = dir();
    let input = d.path().join("in.jsonl");
    std::fs::write(&input, format!("{GOOD}{{\"type\":\"net\"}}\n{GOOD}")).unwrap();
    let out = outflow()
        .args(["replay", "--strict", "--input"])
        .arg(&input)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("stopped at line 3"), "{stderr}");
    assert!(stderr.contains("missing required field `ts`"), "{stderr}");
}

#[test]
fn empty_input_and_stdin_work_and_missing_files_are_named() {
    let d = dir();
    let empty = d.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let out = outflow()
        .args(["replay", "--input"])
        .arg(&empty)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("0 events, 0 rejected, 0 alerts"));

    let mut child = outflow()
        .args(["replay", "--input", "-", "--json-summary"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(GOOD.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("\"events\":2"), "{stderr}");

    let out = outflow()
        .args(["replay", "--input", "/nonexistent/x.jsonl"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot open input /nonexistent/x.jsonl"),
        "{stderr}"
    );
    assert_eq!(
        stderr.trim().lines().count(),
        1,
        "one-line reason: {stderr}"
    );
}

#[test]
fn bad_configuration_is_refused_with_every_problem() {
    let d = dir();
    let cfg = d.path().join("outflow.toml");
    std::fs::write(&cfg, "[engine]\nwindow_secs = 7\nhorizon_days = 0\n").unwrap();
    let input = d.path().join("in.jsonl");
    std::fs::write(&input, GOOD).unwrap();
    let out = outflow()
        .args(["replay", "--input"])
        .arg(&input)
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("window_secs") && stderr.contains("horizon_days"),
        "{stderr}"
    );

    std::fs::write(&cfg, "[engine]\nwindow_sec = 60\n").unwrap();
    let out = outflow()
        .args(["replay", "--input"])
        .arg(&input)
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("window_sec"));

    // A flag wins over the file.
    std::fs::write(&cfg, "[engine]\nwindow_secs = 7\n").unwrap();
    run_ok(
        outflow()
            .args(["replay", "--window-secs", "60", "--input"])
            .arg(&input)
            .arg("--config")
            .arg(&cfg),
    );
}

#[test]
fn sim_replay_eval_round_trip_is_deterministic() {
    let d = dir();
    let fleet = d.path().join("fleet.jsonl");
    let truth = d.path().join("truth.jsonl");
    let run_sim = || {
        sim_fleet(&fleet, &truth);
        std::fs::read(&fleet).unwrap()
    };
    let first = run_sim();
    assert_eq!(first, run_sim(), "same seed, same bytes");
    let alerts_a = d.path().join("a.jsonl");
    let alerts_b = d.path().join("b.jsonl");
    for a in [&alerts_a, &alerts_b] {
        run_ok(
            outflow()
                .args(["replay", "--input"])
                .arg(&fleet)
                .arg("--alerts-out")
                .arg(a),
        );
    }
    let a = std::fs::read_to_string(&alerts_a).unwrap();
    assert_eq!(
        a,
        std::fs::read_to_string(&alerts_b).unwrap(),
        "replays give the same alerts, ids included"
    );
    assert!(!a.is_empty());
    assert_finds_sim_incidents(&truth, &alerts_a);
}

/// `--shards 2`: hosts split over two engines that swap baselines (here every
/// 4 chunks of 500 lines, so many times). Same alerts on every run, the
/// injected incidents still found, bad lines reported exactly as one engine
/// reports them.
#[test]
fn sharded_replay_is_deterministic_detects_and_reports_bad_lines() {
    let d = dir();
    let fleet = d.path().join("fleet.jsonl");
    let truth = d.path().join("truth.jsonl");
    sim_fleet(&fleet, &truth);
    // A few bad lines in the middle.
    let mut text = std::fs::read_to_string(&fleet).unwrap();
    let mid = text[..text.len() / 2].rfind('\n').unwrap() + 1;
    text.insert_str(
        mid,
        "not json\n{\"type\":\"telepathy\",\"ts\":\"2026-01-05T10:00:31Z\",\"host\":\"ws-1\"}\n",
    );
    std::fs::write(&fleet, text).unwrap();
    let replay = |shards: &str, alerts: &std::path::Path| {
        let out = run_ok(
            outflow()
                .args(["replay", "--json-summary", "--shards", shards])
                .args(["--shard-chunk-lines", "500", "--shard-exchange-chunks", "4"])
                .arg("--input")
                .arg(&fleet)
                .arg("--alerts-out")
                .arg(alerts),
        );
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        let summary: serde_json::Value =
            serde_json::from_str(stderr.trim().lines().last().unwrap()).unwrap();
        (std::fs::read_to_string(alerts).unwrap(), summary)
    };
    let (a1, s1) = replay("2", &d.path().join("a1.jsonl"));
    let (a2, s2) = replay("2", &d.path().join("a2.jsonl"));
    // The file is mapped; the same bytes through stdin are read in blocks.
    let piped = d.path().join("piped.jsonl");
    let out = outflow()
        .args(["replay", "--json-summary", "--shards", "2"])
        .args(["--shard-chunk-lines", "500", "--shard-exchange-chunks", "4"])
        .args(["--input", "-", "--alerts-out"])
        .arg(&piped)
        .stdin(std::fs::File::open(&fleet).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let sp: serde_json::Value =
        serde_json::from_str(stderr.trim().lines().last().unwrap()).unwrap();
    assert_eq!(
        std::fs::read_to_string(&piped).unwrap(),
        a1,
        "stdin and file give the same alerts"
    );
    for k in [
        "lines",
        "events",
        "rejected",
        "rejected_examples",
        "alerts",
        "engine",
    ] {
        assert_eq!(sp[k], s1[k], "stdin and file: {k}");
    }
    let (_, single) = replay("1", &d.path().join("one.jsonl"));
    assert_eq!(
        a1, a2,
        "two sharded runs give the same alerts, in the same order"
    );
    assert_eq!(s1["alerts"], s2["alerts"]);
    for k in [
        "lines",
        "events",
        "rejected",
        "rejected_by_reason",
        "rejected_examples",
    ] {
        assert_eq!(s1[k], single[k], "{k}");
    }
    assert_eq!(s1["rejected"], 2);
    assert_eq!(s1["engine"]["net_records"], single["engine"]["net_records"]);
    assert_eq!(s1["engine"]["hosts"], 120);
    assert_finds_sim_incidents(&truth, &d.path().join("a1.jsonl"));
    // --strict needs one ordered stream.
    let out = outflow()
        .args(["replay", "--strict", "--shards", "2", "--input"])
        .arg(&fleet)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--shards 1"));
}
