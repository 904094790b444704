//! Real third-party telemetry (`../shared/data`, read in place): facts
//! checked by hand against the data (dpkt over the captures, jq/grep over
//! the logs) — see docs/importers.md.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;

use outflow_core::telemetry::{parse_line, Event, NetRecord};
use outflow_import::{import, ImportOptions, ImportReport};

fn data() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data"))
}

/// Imports one OTRF run (host + network), checks the output is valid,
/// sorted contract JSONL, and returns it with the report.
fn otrf(run: &str) -> (Vec<Event>, ImportReport) {
    let d = data().join("otrf-atomic");
    let opts = ImportOptions {
        sysmon: vec![d.join(format!("{run}__host.zip"))],
        pcap: vec![d.join(format!("{run}__network.zip"))],
        ..ImportOptions::default()
    };
    let mut out = Vec::new();
    let report = import(&opts, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    let events: Vec<Event> = text
        .lines()
        .enumerate()
        .map(|(i, l)| parse_line(l).unwrap_or_else(|e| panic!("line {}: {e}: {l}", i + 1)))
        .collect();
    assert!(
        events.windows(2).all(|w| w[0].ts() <= w[1].ts()),
        "{run}: not sorted by ts"
    );
    assert_eq!(report.events_written as usize, events.len());
    // Every attributed net record has its process_start at or before it.
    let mut starts: HashMap<(String, u32), Vec<i64>> = HashMap::new();
    for e in &events {
        if let Event::ProcessStart(s) = e {
            starts
                .entry((s.host.clone(), s.pid))
                .or_default()
                .push(s.ts.as_micros());
        }
    }
    for e in &events {
        if let Event::Net(n) = e {
            if n.pid != 0 {
                let ok = starts
                    .get(&(n.host.clone(), n.pid))
                    .is_some_and(|v| v.iter().any(|t| *t <= n.ts.as_micros()));
                assert!(
                    ok,
                    "{run}: net record without an earlier process_start: {n:?}"
                );
            }
        }
    }
    eprintln!("{run}:\n{report}");
    (events, report)
}

fn name_of(events: &[Event], host: &str, pid: u32) -> Option<String> {
    events.iter().find_map(|e| match e {
        Event::ProcessStart(s) if s.host == host && s.pid == pid => Some(s.name.clone()),
        _ => None,
    })
}

/// Sum of bytes (out, in) and the records, for one destination from one host.
fn traffic<'a>(
    events: &'a [Event],
    host: &str,
    dst: &str,
    port: u16,
) -> (u64, u64, Vec<&'a NetRecord>) {
    let ip: IpAddr = dst.parse().unwrap();
    let recs: Vec<&NetRecord> = events
        .iter()
        .filter_map(|e| match e {
            Event::Net(n) if n.host == host && n.dst_ip == ip && n.dst_port == port => Some(n),
            _ => None,
        })
        .collect();
    (
        recs.iter().map(|n| n.bytes_out).sum(),
        recs.iter().map(|n| n.bytes_in).sum(),
        recs,
    )
}

#[test]
fn empire_psexec_powershell_stager_download() {
    let (ev, report) = otrf("empire_psexec_dcerpc_tcp_svcctl");
    assert_eq!(report.total_rejected(), 0, "{report}");
    // powershell.exe (SYSTEM, parent cmd.exe) on WORKSTATION6 downloads the
    // stager from 10.10.10.5:80: 3402 B out, 64382 B in (dpkt agrees).
    let ws6 = "WORKSTATION6.theshire.local";
    let (out, inb, recs) = traffic(&ev, ws6, "10.10.10.5", 80);
    assert_eq!((out, inb), (3402, 64382));
    let pid = recs[0].pid;
    assert!(recs.iter().all(|r| r.pid == pid));
    assert_eq!(
        pid, 4312,
        "the real pid, paired with its GUID by a later event"
    );
    let start = ev
        .iter()
        .find_map(|e| match e {
            Event::ProcessStart(s) if s.host == ws6 && s.pid == pid => Some(s),
            _ => None,
        })
        .unwrap();
    assert_eq!(start.name.to_ascii_lowercase(), "powershell.exe");
    assert_eq!(start.user.as_deref(), Some("NT AUTHORITY\\SYSTEM"));
    assert_eq!(start.parent_name.as_deref(), Some("cmd.exe"));
    // WORKSTATION5's own traffic to the same server has no Sysmon EventID 3:
    // kept as pid 0, never dropped (5766 B out, 62000 B in over three connections).
    let (out, inb, recs) = traffic(&ev, "WORKSTATION5.theshire.local", "10.10.10.5", 80);
    assert_eq!((out, inb), (5766, 62000));
    assert!(recs.iter().all(|r| r.pid == 0));
    assert_eq!((report.flows, report.flows_joined), (10, 5), "{report}");
}

#[test]
fn empire_psremoting_winrm_seen_by_two_captures_counted_once() {
    let (ev, report) = otrf("empire_psremoting_stager");
    assert_eq!(report.total_rejected(), 0, "{report}");
    // WinRM from WORKSTATION5 to WORKSTATION6 is in both workstations'
    // captures; three connections, 50658 B out and 20074 B in, once.
    let ws5 = "WORKSTATION5.theshire.local";
    let (out, inb, recs) = traffic(&ev, ws5, "172.18.39.6", 5985);
    assert_eq!((out, inb), (50658, 20074));
    let pid = recs[0].pid;
    assert_ne!(pid, 0);
    assert_eq!(name_of(&ev, ws5, pid).as_deref(), Some("powershell.exe"));
    assert!(
        pid >= 0x8000_0000,
        "no ProcessId anywhere for it: a synthetic pid"
    );
    // The stager on WORKSTATION6: 3040 B out, 61369 B in from 10.10.10.5:80.
    let ws6 = "WORKSTATION6.theshire.local";
    let (out, inb, recs) = traffic(&ev, ws6, "10.10.10.5", 80);
    assert_eq!((out, inb), (3040, 61369));
    assert_eq!(
        name_of(&ev, ws6, recs[0].pid).as_deref(),
        Some("powershell.exe")
    );
}

#[test]
fn covenant_psremoting_offloaded_segments_and_truncated_capture() {
    let (ev, report) = otrf("covenant_psremoting_command");
    // The capture's last packet is cut short: reported with its location,
    // every packet before it imported.
    assert_eq!(report.pcap.rejected, 1, "{report}");
    let r = &report.rejections[0];
    assert_eq!(r.reason_key, "truncated");
    assert!(
        r.location
            .contains("covenant_psremoting_command_2020-08-06115603.cap: after packet 153"),
        "{r}"
    );
    // GruntHTTP.exe on WORKSTATION5 over WinRM to WORKSTATION6. The capture
    // was taken on WORKSTATION6 with segmentation offload: its outgoing
    // segments have IP length 0, so summing segment sizes gives 4542 B in;
    // sequence numbers and ACKs give the true 372829 B.
    let ws5 = "WORKSTATION5.theshire.local";
    let (out, inb, recs) = traffic(&ev, ws5, "172.18.39.6", 5985);
    assert_eq!((out, inb), (46952, 372829));
    assert_eq!(
        name_of(&ev, ws5, recs[0].pid).as_deref(),
        Some("GruntHTTP.exe")
    );
}

#[test]
fn covenant_dcom_hijacked_notepad_beacon() {
    let (ev, report) = otrf("covenant_dcom_iertutil_dll_hijack");
    assert_eq!(report.total_rejected(), 0, "{report}");
    // The Covenant grunt lives in notepad.exe on WORKSTATION6: 6776 B out,
    // 68929 B in with 10.10.10.5:80.
    let ws6 = "WORKSTATION6.theshire.local";
    let (out, inb, recs) = traffic(&ev, ws6, "10.10.10.5", 80);
    assert_eq!((out, inb), (6776, 68929));
    assert_eq!(
        name_of(&ev, ws6, recs[0].pid).as_deref(),
        Some("notepad.exe")
    );
    // Lateral movement: System (pid 4) on WORKSTATION5 writes over SMB to WORKSTATION6.
    let (out, _, recs) = traffic(&ev, "WORKSTATION5.theshire.local", "172.18.39.6", 445);
    assert_eq!(recs[0].pid, 4);
    assert!(out > 90_000, "{out}");
    assert!(report.joined_share().unwrap() > 0.7, "{report}");
}

#[test]
fn stratosphere_zeek_network_only_counts_match_the_logs() {
    let dir = data().join("stratosphere-zeek-010");
    let opts = ImportOptions {
        zeek: vec![dir],
        ..ImportOptions::default()
    };
    let (events, report) = outflow_import::import_events(&opts).unwrap();
    eprintln!("{report}");
    assert_eq!(report.total_rejected(), 0, "{report}");
    // conn.log.labeled: 5347 rows = 4895 tcp + 364 udp + 88 icmp.
    assert_eq!(report.flows, 4895 + 364);
    assert_eq!(
        report.zeek.skipped.get("conn records not tcp/udp"),
        Some(&88)
    );
    let nets: Vec<&NetRecord> = events
        .iter()
        .filter_map(|e| match e {
            Event::Net(n) => Some(n),
            _ => None,
        })
        .collect();
    // 3285 of those rows are from the Internet to the local host
    // (local_orig F, local_resp T): seen from the local responder, so their
    // resp_bytes are its "out". Sums over tcp+udp rows of conn.log.labeled:
    // orig_bytes of outbound + resp_bytes of inbound rows, and the converse.
    assert_eq!(report.zeek_inbound, 3285);
    assert_eq!(nets.iter().map(|n| n.bytes_out).sum::<u64>(), 124_724_001);
    assert_eq!(nets.iter().map(|n| n.bytes_in).sum::<u64>(), 1_656_294_694);
    // All bytes of the log, none lost or doubled.
    let all: u64 = nets.iter().map(|n| n.bytes_out + n.bytes_in).sum();
    assert_eq!(all, 124_767_538 + 1_656_251_157);
    // No process: every record is pid 0; one local address, one host: the
    // dataset is 24 h of a single machine.
    assert!(nets.iter().all(|n| n.pid == 0));
    assert!(nets.iter().all(|n| n.host == "147.32.83.234"));
    // SNI from ssl.log by uid: e.g. client.wns.windows.com on 20.199.120.85:443.
    let wns = "20.199.120.85".parse::<IpAddr>().unwrap();
    assert!(nets
        .iter()
        .any(|n| n.dst_ip == wns && n.sni.as_deref() == Some("client.wns.windows.com")));
    // dns.log.labeled: 8 rows, 2 with an address answer.
    let dns = events.iter().filter(|e| matches!(e, Event::Dns(_))).count();
    assert_eq!(dns, 2);
}
