//! Bad input through the public entry point: clear errors with their
//! location, the rest imported, no panic.

use std::io::Write;

use outflow_core::telemetry::Event;
use outflow_import::synthetic::write_synthetic_upload;
use outflow_import::{import_events, ImportOptions};

fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, data) in entries {
            z.start_file(*name, opts).unwrap();
            z.write_all(data).unwrap();
        }
        z.finish().unwrap();
    }
    buf.into_inner()
}

#[test]
fn corrupted_and_truncated_zips_are_reported_and_other_inputs_imported() {
    let dir = tempfile::tempdir().unwrap();
    let up = write_synthetic_upload(dir.path()).unwrap();
    let sysmon = std::fs::read(&up.sysmon).unwrap();
    let pcap = std::fs::read(&up.pcaps[0]).unwrap();

    // A good zip holding the capture, for contrast.
    let good = dir.path().join("good.zip");
    std::fs::write(&good, zip_of(&[("host.pcap", &pcap)])).unwrap();
    // A zip cut in half: its central directory is gone.
    let whole = zip_of(&[("a.pcap", &pcap)]);
    let truncated = dir.path().join("truncated.zip");
    std::fs::write(&truncated, &whole[..whole.len() / 2]).unwrap();
    // A zip whose compressed data is damaged: the directory is intact but
    // the member fails its CRC (or inflate) while being read.
    let mut damaged = zip_of(&[("logs.json", &sysmon)]);
    for b in damaged.iter_mut().skip(60).take(40) {
        *b ^= 0x5a;
    }
    let damaged_path = dir.path().join("damaged.zip");
    std::fs::write(&damaged_path, &damaged).unwrap();
    let missing = dir.path().join("no-such-file.pcap");

    let opts = ImportOptions {
        sysmon: vec![damaged_path.clone(), up.sysmon.clone()],
        pcap: vec![truncated.clone(), missing.clone(), good],
        ..ImportOptions::default()
    };
    let (events, report) = import_events(&opts).unwrap();
    let text = report.to_string();
    assert!(
        report
            .rejections
            .iter()
            .any(|r| r.reason_key == "corrupt_zip" && r.location.contains("truncated.zip")),
        "{text}"
    );
    assert!(
        report
            .rejections
            .iter()
            .any(|r| r.location.contains("no-such-file.pcap") && r.reason_key == "unreadable_file"),
        "{text}"
    );
    assert!(
        report
            .rejections
            .iter()
            .any(|r| r.location.contains("damaged.zip")),
        "the damaged member is reported by name: {text}"
    );
    // The good inputs are still imported and joined.
    assert_eq!(report.flows_joined, 1, "{text}");
    let out: u64 = events
        .iter()
        .filter_map(|e| match e {
            Event::Net(n) if n.pid == up.pid => Some(n.bytes_out),
            _ => None,
        })
        .sum();
    assert_eq!(out, up.bytes_out);
}

#[test]
fn sysmon_problems_are_located_line_by_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sysmon.json");
    let lines = [
        // 1: fine, +02:00 offset (mixed zones)
        r#"{"EventID":1,"Channel":"Microsoft-Windows-Sysmon/Operational","Hostname":"h1","@timestamp":"2024-05-01T14:00:00+02:00","ProcessGuid":"{a}","ProcessId":"8","Image":"C:\\x\\a.exe"}"#,
        // 2: missing Image
        r#"{"EventID":1,"Channel":"Microsoft-Windows-Sysmon/Operational","Hostname":"h1","UtcTime":"2024-05-01 12:00:01.000","ProcessGuid":"{b}"}"#,
        // 3: unknown EventID
        r#"{"EventID":77,"Channel":"Microsoft-Windows-Sysmon/Operational","Hostname":"h1","UtcTime":"2024-05-01 12:00:02.000"}"#,
        // 4: port out of range
        r#"{"EventID":3,"Channel":"Microsoft-Windows-Sysmon/Operational","Hostname":"h1","UtcTime":"2024-05-01 12:00:03.000","ProcessGuid":"{a}","Protocol":"tcp","Initiated":"true","SourceIp":"10.0.0.1","SourcePort":"99999","DestinationIp":"1.1.1.1","DestinationPort":"443"}"#,
        // 5: truncated JSON
        r#"{"EventID":3,"Channel":"Microsoft-Wind"#,
        // 6: fine, UTC
        r#"{"EventID":5,"Channel":"Microsoft-Windows-Sysmon/Operational","Hostname":"h1","UtcTime":"2024-05-01 12:00:05.000","ProcessGuid":"{a}"}"#,
    ];
    std::fs::write(&path, lines.join("\n")).unwrap();
    let opts = ImportOptions {
        sysmon: vec![path.clone()],
        ..ImportOptions::default()
    };
    let (events, report) = import_events(&opts).unwrap();
    let shown = path.display().to_string();
    let got: Vec<(String, &str)> = report
        .rejections
        .iter()
        .map(|r| (r.location.clone(), r.reason_key))
        .collect();
    assert_eq!(
        got,
        vec![
            (format!("{shown}:2"), "missing_field"),
            (format!("{shown}:3"), "unknown_event_id"),
            (format!("{shown}:4"), "invalid_field"),
            (format!("{shown}:5"), "not_json"),
        ]
    );
    assert!(report.rejections[0].detail.contains("Image"));
    assert!(report.rejections[2].detail.contains("SourcePort"));
    // Lines 1 and 6 imported, after the host's `host` event; the +02:00
    // time is 12:00:00Z.
    assert_eq!(events.len(), 3, "{events:?}");
    let Event::Host(h) = &events[0] else {
        panic!("{events:?}")
    };
    assert_eq!((h.host.as_str(), h.os.as_deref()), ("h1", Some("windows")));
    assert_eq!(events[1].ts().to_rfc3339(), "2024-05-01T12:00:00Z");
    assert!(matches!(events[1], Event::ProcessStart(_)));
    assert!(matches!(events[2], Event::ProcessEnd(_)));
    // The summary names the reasons.
    let text = report.to_string();
    assert!(text.contains("sysmon/unknown_event_id: 1"), "{text}");
}

#[test]
fn zeek_directory_with_an_unexpected_layout() {
    let dir = tempfile::tempdir().unwrap();
    // conn.log with extra and reordered columns: fine.
    std::fs::write(
        dir.path().join("conn.log"),
        "#separator \\x09\n#unset_field\t-\n#fields\tproto\tid.resp_p\tid.resp_h\tsomething_new\tid.orig_p\tid.orig_h\tts\torig_bytes\tresp_bytes\n\
         tcp\t443\t162.125.1.14\tzzz\t50000\t10.0.0.5\t1714564800.25\t1000\t10\n",
    )
    .unwrap();
    // dns.log missing the answers column: skipped, with the reason.
    std::fs::write(
        dir.path().join("dns.log"),
        "#separator \\x09\n#fields\tts\tid.orig_h\tquery\n1714564800.0\t10.0.0.5\tx.example\n",
    )
    .unwrap();
    let opts = ImportOptions {
        zeek: vec![dir.path().to_path_buf()],
        ..ImportOptions::default()
    };
    let (events, report) = import_events(&opts).unwrap();
    assert_eq!(report.zeek.rejected, 1, "{report}");
    assert_eq!(report.rejections[0].reason_key, "missing_column");
    assert!(
        report.rejections[0].location.ends_with("dns.log:2"),
        "{}",
        report.rejections[0]
    );
    let Event::Net(n) = &events[0] else {
        panic!("{events:?}")
    };
    assert_eq!(
        (n.host.as_str(), n.pid, n.dst_port, n.bytes_out, n.bytes_in),
        ("10.0.0.5", 0, 443, 1000, 10)
    );
}

#[test]
fn no_input_is_an_error() {
    assert!(import_events(&ImportOptions::default()).is_err());
}
