//! SYNTHETIC positive (issue 6) — everything here is made up, not captured:
//! a hand-made Sysmon log and packet capture of WINWORD.EXE uploading
//! ~90 MB to content.dropboxapi.com, imported with `outflow import`'s code
//! and replayed among a simulated fleet of peers, must alert. (Alone, one
//! host has no peers to be judged against: the engine would be learning.)
//! The benign fleet around it raises nothing.

use std::net::Ipv4Addr;

use outflow_core::{Engine, EngineConfig, Event, Policy, Timestamp};
use outflow_import::pcap::synth::{tcp, ACK, FIN, SYN};
use outflow_import::pcap::write_pcap;
use outflow_import::{import_events, ImportOptions};
use outflow_sim::{simulate, SimOptions};

const HOST: &str = "ws-synth-02";
const SNI: &str = "content.dropboxapi.com";
/// 2024-05-01T12:00:30Z, the third simulated day, at noon.
const T0: i64 = 1_714_564_830_000_000;
/// Bytes acknowledged by the server each second, for three minutes. The
/// capture holds one 1,400-byte segment per second; the rest of the stream
/// is missed by the capture and proven by the server's acknowledgements
/// (the importer counts bytes from sequence numbers).
const PER_SEC: u32 = 500_000;
const SECS: i64 = 180;

fn write_fixture(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, u64) {
    let client = (Ipv4Addr::new(10, 20, 0, 16), 52_000);
    let server = (Ipv4Addr::new(162, 125, 1, 15), 443);
    let guid = "{5a5a5a5a-0000-6632-2b00-000000000901}";
    let sysmon = [
        format!(
            r#"{{"EventID":1,"Channel":"Microsoft-Windows-Sysmon/Operational","Hostname":"{HOST}","UtcTime":"2024-05-01 12:00:00.000","ProcessGuid":"{guid}","ProcessId":"5151","Image":"C:\\Program Files\\Microsoft Office\\root\\Office16\\WINWORD.EXE","CommandLine":"\"WINWORD.EXE\" /n report.docm","User":"SYNTH\\bob","ParentImage":"C:\\Windows\\explorer.exe","ParentProcessId":"1300"}}"#
        ),
        format!(
            r#"{{"EventID":3,"Channel":"Microsoft-Windows-Sysmon/Operational","Hostname":"{HOST}","UtcTime":"2024-05-01 12:00:30.300","ProcessGuid":"{guid}","ProcessId":"5151","Image":"C:\\Program Files\\Microsoft Office\\root\\Office16\\WINWORD.EXE","User":"SYNTH\\bob","Protocol":"tcp","Initiated":"true","SourceIsIpv6":"false","SourceIp":"{}","SourcePort":"{}","DestinationIsIpv6":"false","DestinationIp":"{}","DestinationHostname":"{SNI}","DestinationPort":"{}"}}"#,
            client.0, client.1, server.0, server.1
        ),
        format!(
            r#"{{"EventID":5,"Channel":"Microsoft-Windows-Sysmon/Operational","Hostname":"{HOST}","UtcTime":"2024-05-01 12:10:00.000","ProcessGuid":"{guid}","ProcessId":"5151","Image":"C:\\Program Files\\Microsoft Office\\root\\Office16\\WINWORD.EXE"}}"#
        ),
    ];
    let sysmon_path = dir.join("synthetic-sysmon.json");
    std::fs::write(&sysmon_path, sysmon.join("\n") + "\n").unwrap();

    let (cisn, sisn) = (1_000u32, 9_000_000u32);
    let mut c = cisn + 1;
    let s = sisn + 1;
    let mut frames = vec![
        (T0, tcp(client, server, cisn, 0, SYN, &[])),
        (T0 + 20_000, tcp(server, client, sisn, c, SYN | ACK, &[])),
        (T0 + 40_000, tcp(client, server, c, s, ACK, &[])),
    ];
    let hello = outflow_import::tls::build_client_hello(SNI);
    frames.push((T0 + 41_000, tcp(client, server, c, s, ACK, &hello)));
    c = c.wrapping_add(hello.len() as u32);
    let mut sent = hello.len() as u64;
    let seg = vec![0x17u8; 1400];
    for i in 1..=SECS {
        let t = T0 + i * 1_000_000;
        frames.push((t, tcp(client, server, c, s, ACK, &seg)));
        c = c.wrapping_add(PER_SEC);
        sent += u64::from(PER_SEC);
        frames.push((t + 20_000, tcp(server, client, s, c, ACK, &[])));
    }
    let t = T0 + (SECS + 1) * 1_000_000;
    frames.push((t, tcp(client, server, c, s, ACK | FIN, &[])));
    frames.push((
        t + 20_000,
        tcp(server, client, s, c.wrapping_add(1), ACK | FIN, &[]),
    ));
    let pcap_path = dir.join("synthetic.pcap");
    std::fs::write(&pcap_path, write_pcap(&frames)).unwrap();
    (sysmon_path, pcap_path, sent)
}

fn fleet_with(extra: Vec<Event>) -> Vec<outflow_core::Alert> {
    let opts = SimOptions {
        hosts: 120,
        days: 3,
        seed: 3,
        incidents: 0,
        start: Timestamp::parse_rfc3339("2024-04-29T00:00:00Z").unwrap(),
        quiet_days: 1,
    };
    let mut buf = Vec::new();
    simulate(&opts, &mut buf, |_, _| {}).unwrap();
    let mut events: Vec<Event> = buf
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| outflow_core::telemetry::parse_line_bytes(l).unwrap())
        .collect();
    events.extend(extra);
    events.sort_by_key(Event::ts);
    let mut engine = Engine::new(EngineConfig::default(), Policy::default());
    for e in &events {
        engine.ingest(e);
    }
    engine.flush();
    engine.drain_alerts()
}

#[test]
fn synthetic_upload_to_cloud_storage_alerts_among_peers() {
    let dir = tempfile::tempdir().unwrap();
    let (sysmon, pcap, sent) = write_fixture(dir.path());
    let opts = ImportOptions {
        sysmon: vec![sysmon],
        pcap: vec![pcap],
        zeek: vec![],
        config: Default::default(),
    };
    let (events, report) = import_events(&opts).unwrap();
    let imported: u64 = events
        .iter()
        .filter_map(|e| match e {
            Event::Net(n) if n.host == HOST && n.pid != 0 => Some(n.bytes_out),
            _ => None,
        })
        .sum();
    assert_eq!(imported, sent, "bytes joined to the process: {report:?}");

    let baseline = fleet_with(Vec::new());
    assert!(
        baseline.is_empty(),
        "the benign fleet alone alerts: {baseline:#?}"
    );

    let alerts = fleet_with(events);
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    let a = &alerts[0];
    assert_eq!(
        (a.host.as_str(), a.app.as_str(), a.service.as_str()),
        (HOST, "winword.exe", "dropbox")
    );
    assert_eq!(a.user.as_deref(), Some("SYNTH\\bob"));
    assert!(
        a.reasons
            .iter()
            .any(|r| r.factor == "destination" && r.contribution > 1.0),
        "{a:#?}"
    );
}
