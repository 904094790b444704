//! SYNTHETIC positive: a hand-made Sysmon log and captures of WINWORD.EXE
//! uploading to content.dropboxapi.com (see `outflow_import::synthetic`).
//! Not real data.

use outflow_core::telemetry::{parse_line, Event, Transport};
use outflow_core::Timestamp;
use outflow_import::synthetic::write_synthetic_upload;
use outflow_import::{import, ImportOptions};

#[test]
fn synthetic_upload_imports_as_the_right_net_records() {
    let dir = tempfile::tempdir().unwrap();
    let up = write_synthetic_upload(dir.path()).unwrap();
    let opts = ImportOptions {
        sysmon: vec![up.sysmon.clone()],
        pcap: up.pcaps.clone(),
        ..ImportOptions::default()
    };
    let mut out = Vec::new();
    let report = import(&opts, &mut out).unwrap();
    assert_eq!(report.total_rejected(), 0, "{report}");
    let text = String::from_utf8(out).unwrap();
    let events: Vec<Event> = text.lines().map(|l| parse_line(l).unwrap()).collect();

    // Sorted by event time.
    assert!(events.windows(2).all(|w| w[0].ts() <= w[1].ts()), "{text}");

    // The process, with its real pid, user and parent.
    let start = events
        .iter()
        .find_map(|e| match e {
            Event::ProcessStart(s) if s.pid == up.pid => Some(s),
            _ => None,
        })
        .expect("process_start of the synthetic WINWORD.EXE");
    assert_eq!(start.name.to_ascii_lowercase(), up.app);
    assert_eq!(start.host, up.host);
    assert_eq!(start.parent_name.as_deref(), Some("explorer.exe"));
    assert_eq!(start.ppid, Some(1200));

    // The upload: joined to the process, SNI from the ClientHello, exact
    // payload bytes although the capture retransmits one segment, misses
    // another and holds one offloaded super-segment, and although two
    // captures saw it.
    let nets: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Net(n) if n.dst_ip == std::net::IpAddr::V4(up.server.0) => Some(n),
            _ => None,
        })
        .collect();
    assert!(nets.len() >= 2, "the upload spans two intervals: {nets:?}");
    for n in &nets {
        assert_eq!(
            (n.host.as_str(), n.pid, n.proto, n.dst_port),
            (up.host, up.pid, Transport::Tcp, 443)
        );
        assert_eq!(n.sni.as_deref(), Some(up.sni));
        // Sysmon's DestinationHostname.
        assert_eq!(n.domain.as_deref(), Some(up.sni));
    }
    let out_total: u64 = nets.iter().map(|n| n.bytes_out).sum();
    let in_total: u64 = nets.iter().map(|n| n.bytes_in).sum();
    assert_eq!(out_total, up.bytes_out);
    assert_eq!(in_total, up.bytes_in);
    // Deltas: the first interval ends before 12:01:00, the second after.
    let boundary = Timestamp::parse_rfc3339("2024-05-01T12:01:00Z").unwrap();
    assert!(nets[0].ts < boundary && nets[1].ts >= boundary, "{nets:?}");
    assert!(
        nets[0].bytes_out > 1_000_000 && nets[1].bytes_out > 1_000_000,
        "{nets:?}"
    );

    // DNS from Sysmon (with pid) and from the capture (without).
    let dns: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Dns(d) => Some(d),
            _ => None,
        })
        .collect();
    assert!(dns
        .iter()
        .any(|d| d.pid == Some(up.pid) && d.query == up.sni));
    assert!(dns.iter().any(|d| d.pid.is_none()
        && d.host == up.host
        && d.answers == vec![std::net::IpAddr::V4(up.server.0)]));

    assert_eq!(report.flows_joined, 1, "{report}");
    assert!(
        report.duplicates >= 2,
        "the DNS datagrams seen twice: {report}"
    );
    assert_eq!(report.sysmon_connections_joined, 1);
}

#[test]
fn two_imports_are_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let up = write_synthetic_upload(dir.path()).unwrap();
    let d = std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/data/otrf-atomic"
    ));
    let opts = ImportOptions {
        sysmon: vec![
            up.sysmon.clone(),
            d.join("empire_psremoting_stager__host.zip"),
        ],
        pcap: vec![
            up.pcaps[0].clone(),
            d.join("empire_psremoting_stager__network.zip"),
        ],
        zeek: vec![std::path::PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/data/stratosphere-zeek-010"
        ))],
        ..ImportOptions::default()
    };
    let (mut a, mut b) = (Vec::new(), Vec::new());
    import(&opts, &mut a).unwrap();
    import(&opts, &mut b).unwrap();
    assert!(a.len() > 100_000);
    assert!(a == b, "two imports of the same input differ");
}

#[test]
fn synthetic_upload_without_sysmon_is_network_only() {
    let dir = tempfile::tempdir().unwrap();
    let up = write_synthetic_upload(dir.path()).unwrap();
    let opts = ImportOptions {
        pcap: up.pcaps.clone(),
        ..ImportOptions::default()
    };
    let (events, report) = outflow_import::import_events(&opts).unwrap();
    let client = up.client.0.to_string();
    let out: u64 = events
        .iter()
        .filter_map(|e| match e {
            Event::Net(n) if n.dst_port == 443 => {
                assert_eq!((n.host.as_str(), n.pid), (client.as_str(), 0));
                Some(n.bytes_out)
            }
            _ => None,
        })
        .sum();
    assert_eq!(out, up.bytes_out);
    assert_eq!(report.flows_joined, 0);
    assert!(events.iter().all(|e| !matches!(e, Event::ProcessStart(_))));
}

#[test]
fn skew_beyond_tolerance_leaves_the_flow_unmatched() {
    let dir = tempfile::tempdir().unwrap();
    let up = write_synthetic_upload(dir.path()).unwrap();
    let mut opts = ImportOptions {
        sysmon: vec![up.sysmon.clone()],
        pcap: up.pcaps.clone(),
        ..ImportOptions::default()
    };
    // The EventID 3 is 0.4 s after the SYN but within the flow's lifetime,
    // so even zero tolerance matches; move the log an hour to break it.
    let shifted = std::fs::read_to_string(&up.sysmon)
        .unwrap()
        .replace("2024-05-01 12:", "2024-05-01 13:");
    std::fs::write(&up.sysmon, shifted).unwrap();
    opts.config.clock_skew_secs = 60.0;
    let (events, report) = outflow_import::import_events(&opts).unwrap();
    assert_eq!(report.flows_joined, 0, "{report}");
    // Unmatched traffic is kept, as pid 0 on the host Sysmon named for that address.
    let kept: u64 = events
        .iter()
        .filter_map(|e| match e {
            Event::Net(n) if n.pid == 0 && n.dst_port == 443 => Some(n.bytes_out),
            _ => None,
        })
        .sum();
    assert_eq!(kept, up.bytes_out);
    assert_eq!(
        report.flows_unmatched_on_sysmon_hosts,
        report.flows_unmatched
    );
}
