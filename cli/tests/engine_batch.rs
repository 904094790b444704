//! `Engine::ingest_batch` (what sharded replay's engines use) leaves the
//! engine exactly as ingesting the same events one by one does.

use outflow_core::telemetry::{parse_line, EventRef};
use outflow_core::{Engine, EngineConfig, Event, Policy};
use outflow_sim::{simulate, SimOptions};

fn fleet() -> Vec<Event> {
    let opts = SimOptions {
        hosts: 60,
        days: 2,
        seed: 11,
        incidents: 6,
        ..SimOptions::default()
    };
    let mut buf = Vec::new();
    simulate(&opts, &mut buf, |_, _| {}).unwrap();
    let text = String::from_utf8(buf).unwrap();
    let mut events: Vec<Event> = text.lines().map(|l| parse_line(l).unwrap()).collect();
    // Out of order within a host now and then (late records), and records
    // of pids that never started (app `unknown`).
    for i in (100..events.len()).step_by(997) {
        events.swap(i, i - 40);
    }
    for i in (50..events.len()).step_by(1499) {
        if let Event::Net(n) = &mut events[i] {
            n.pid = 900_000 + i as u32;
        }
    }
    events
}

#[test]
fn batches_ingest_exactly_as_events_one_by_one() {
    let events = fleet();
    let one_by_one = {
        let mut e = Engine::new(EngineConfig::default(), Policy::default());
        let mut alerts = Vec::new();
        for ev in &events {
            e.ingest(ev);
            alerts.extend(e.drain_alerts());
        }
        e.flush();
        alerts.extend(e.drain_alerts());
        (alerts, e.stats(), e.local_partials())
    };
    assert!(
        !one_by_one.0.is_empty()
            && one_by_one.1.late_records > 0
            && one_by_one.1.unknown_pid_records > 0,
        "the fleet exercises alerts, late records and unknown pids: {:?}",
        one_by_one.1
    );
    let views: Vec<EventRef<'_>> = events.iter().map(EventRef::of).collect();
    let json = |a: &[outflow_core::Alert]| a.iter().map(|a| a.to_json()).collect::<Vec<_>>();
    for group in [1, 3, 16, 17, 100] {
        // Parsed lines (sharded replay) and owned events (one engine).
        for owned in [false, true] {
            let mut e = Engine::new(EngineConfig::default(), Policy::default());
            let mut alerts = Vec::new();
            if owned {
                for g in events.chunks(group) {
                    e.ingest_batch(g);
                    alerts.extend(e.drain_alerts());
                }
            } else {
                for g in views.chunks(group) {
                    e.ingest_batch(g);
                    alerts.extend(e.drain_alerts());
                }
            }
            e.flush();
            alerts.extend(e.drain_alerts());
            let what = format!("groups of {group}, owned {owned}");
            assert_eq!(json(&alerts), json(&one_by_one.0), "{what}: alerts");
            assert_eq!(e.stats(), one_by_one.1, "{what}: counters");
            assert_eq!(e.local_partials(), one_by_one.2, "{what}: baseline");
        }
    }
}
