//! Imports of real data replayed through the engine with default
//! configuration and policy raise no alert: C2, lateral movement and a
//! day of ordinary Windows traffic are not exfiltration.

use std::path::PathBuf;

use outflow_core::{Engine, EngineConfig, Event, Policy};
use outflow_import::{import_events, ImportOptions};

fn data() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data"))
}

fn replay(events: &[Event]) -> Vec<outflow_core::Alert> {
    let mut engine = Engine::new(EngineConfig::default(), Policy::default());
    for e in events {
        engine.ingest(e);
    }
    engine.flush();
    let stats = engine.stats();
    assert_eq!(stats.events, events.len() as u64);
    engine.drain_alerts()
}

#[test]
fn otrf_runs_raise_no_alert() {
    for run in [
        "empire_psexec_dcerpc_tcp_svcctl",
        "covenant_dcom_iertutil_dll_hijack",
        "covenant_psremoting_command",
        "empire_psremoting_stager",
    ] {
        let d = data().join("otrf-atomic");
        let opts = ImportOptions {
            sysmon: vec![d.join(format!("{run}__host.zip"))],
            pcap: vec![d.join(format!("{run}__network.zip"))],
            ..ImportOptions::default()
        };
        let (events, _) = import_events(&opts).unwrap();
        let alerts = replay(&events);
        assert!(alerts.is_empty(), "{run}: {alerts:#?}");
    }
}

#[test]
fn stratosphere_network_only_raises_no_alert() {
    let opts = ImportOptions {
        zeek: vec![data().join("stratosphere-zeek-010")],
        ..ImportOptions::default()
    };
    let (events, _) = import_events(&opts).unwrap();
    let alerts = replay(&events);
    assert!(alerts.is_empty(), "{alerts:#?}");
}
