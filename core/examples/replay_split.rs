//! Where replay time goes: parsing alone, then the engine alone over
//! pre-parsed events (single thread each).
//!   cargo run --release -p outflow-core --example replay_split -- FILE.jsonl
use std::time::Instant;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use outflow_core::telemetry::{parse_line_bytes, EventRef};
use outflow_core::{Engine, EngineConfig, Policy};

/// This thread's CPU seconds (user + system), from /proc (Linux).
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |x| x.1);
    let f: Vec<f64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // Fields 14 and 15 of stat(5); `after` starts at field 3.
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
}

fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: replay_split FILE.jsonl");
    let data = std::fs::read(&path).expect("read input");
    // Lines are split beforehand (replay splits a word at a time while
    // reading): what is timed is the parse.
    let lines: Vec<&[u8]> = data
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    // Parsing alone: each event dropped at once (as replay's pipeline does).
    let t = Instant::now();
    let c0 = cpu_secs();
    let parsed = lines.iter().filter(|l| parse_line_bytes(l).is_ok()).count();
    let parse = t.elapsed().as_secs_f64();
    let c1 = cpu_secs();
    let events: Vec<_> = lines
        .iter()
        .filter_map(|l| parse_line_bytes(l).ok())
        .collect();
    drop(lines);
    assert_eq!(parsed, events.len());
    // Views of the events, as replay's engines get them (`ingest_batch`
    // takes groups of 16), made before timing.
    let views: Vec<EventRef<'_>> = events.iter().map(EventRef::of).collect();
    let batched = std::env::var_os("ONE_BY_ONE").is_none();
    let t = Instant::now();
    let c1b = cpu_secs();
    let n = events.len() as f64;
    let mut engine = Engine::new(EngineConfig::default(), Policy::default());
    let mut alerts = Vec::new();
    if std::env::var_os("OWNED").is_some() {
        // Owned events in groups, as one-engine replay ingests them.
        for group in events.chunks(16) {
            engine.ingest_batch(group);
            alerts.extend(engine.drain_alerts());
        }
    } else if batched {
        for group in views.chunks(16) {
            engine.ingest_batch(group);
            alerts.extend(engine.drain_alerts());
        }
    } else {
        for e in &events {
            engine.ingest(e);
            alerts.extend(engine.drain_alerts());
        }
    }
    engine.flush();
    alerts.extend(engine.drain_alerts());
    let eng = t.elapsed().as_secs_f64();
    let c2 = cpu_secs();
    println!(
        "events {n} parse {parse:.3} s ({:.0} ns/ev) engine {eng:.3} s ({:.0} ns/ev) alerts {}",
        parse / n * 1e9,
        eng / n * 1e9,
        alerts.len()
    );
    println!(
        "cpu: parse {:.0} ns/ev, engine {:.0} ns/ev",
        (c1 - c0) / n * 1e9,
        (c2 - c1b) / n * 1e9
    );
    if let Some(out) = std::env::args().nth(2) {
        let text: String = alerts.iter().map(|a| a.to_json() + "\n").collect();
        std::fs::write(out, text).expect("write alerts");
    }
    println!("{:?}", engine.stats());
}
