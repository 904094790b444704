//! SYNTHETIC test data — not from any real system. A small hand-made
//! Sysmon + capture pair of an exfiltration: `WINWORD.EXE` on host
//! `ws-synth-01` uploads a few MB over HTTPS to `content.dropboxapi.com`.
//! Used by this crate's tests, and for the "the synthetic positive alerts"
//! check once the engine scores imports.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::pcap::synth::{tcp, udp, ACK, FIN, SYN};
use crate::pcap::write_pcap;

/// What the synthetic upload contains, for assertions.
#[derive(Clone, Debug)]
pub struct SyntheticUpload {
    pub host: &'static str,
    pub pid: u32,
    pub app: &'static str,
    pub client: (Ipv4Addr, u16),
    pub server: (Ipv4Addr, u16),
    pub sni: &'static str,
    /// Payload bytes the client sent (ClientHello included) and received.
    pub bytes_out: u64,
    pub bytes_in: u64,
    /// Start of the upload, µs since the epoch.
    pub start_us: i64,
    /// The Sysmon JSON lines file and the two captures (the same traffic
    /// seen by the host and by a network tap, 1 ms apart).
    pub sysmon: PathBuf,
    pub pcaps: Vec<PathBuf>,
}

/// Writes the synthetic Sysmon log and captures into `dir`.
///
/// The capture is deliberately imperfect: one segment retransmitted, one
/// segment missing (only the server's ACK proves it arrived), one 16 KB
/// offloaded "super-segment". The upload spans two 60 s intervals.
pub fn write_synthetic_upload(dir: &Path) -> std::io::Result<SyntheticUpload> {
    let host = "ws-synth-01";
    let pid = 4242;
    let client = (Ipv4Addr::new(10, 20, 0, 15), 51_515);
    let server = (Ipv4Addr::new(162, 125, 1, 14), 443);
    let resolver = (Ipv4Addr::new(10, 20, 0, 1), 53);
    let sni = "content.dropboxapi.com";
    // 2024-05-01T12:00:30Z
    let t0: i64 = 1_714_564_830_000_000;
    let guid = "{5a5a5a5a-0000-6632-2a00-000000000900}";

    let sysmon_lines = [
        format!(
            r#"{{"EventID":1,"Channel":"Microsoft-Windows-Sysmon/Operational","Hostname":"{host}","UtcTime":"2024-05-01 12:00:00.000","ProcessGuid":"{guid}","ProcessId":"{pid}","Image":"C:\\Program Files\\Microsoft Office\\root\\Office16\\WINWORD.EXE","CommandLine":"\"WINWORD.EXE\" /n","User":"SYNTH\\alice","ParentImage":"C:\\Windows\\explorer.exe","ParentProcessId":"1200","ParentProcessGuid":"{{5a5a5a5a-0000-6632-1000-000000000900}}"}}"#
        ),
        format!(
            r#"{{"EventID":22,"Channel":"Microsoft-Windows-Sysmon/Operational","Hostname":"{host}","UtcTime":"2024-05-01 12:00:29.900","ProcessGuid":"{guid}","ProcessId":"{pid}","QueryName":"{sni}","QueryStatus":"0","QueryResults":"type:  5 edge-block-www-env.dropbox-dns.com;::ffff:162.125.1.14;","Image":"C:\\Program Files\\Microsoft Office\\root\\Office16\\WINWORD.EXE"}}"#
        ),
        // Sysmon logs the connection 0.4 s after the capture saw the SYN (clock skew).
        format!(
            r#"{{"EventID":3,"Channel":"Microsoft-Windows-Sysmon/Operational","Hostname":"{host}","UtcTime":"2024-05-01 12:00:30.400","ProcessGuid":"{guid}","ProcessId":"{pid}","Image":"C:\\Program Files\\Microsoft Office\\root\\Office16\\WINWORD.EXE","User":"SYNTH\\alice","Protocol":"tcp","Initiated":"true","SourceIsIpv6":"false","SourceIp":"{}","SourcePort":"{}","DestinationIsIpv6":"false","DestinationIp":"{}","DestinationHostname":"{sni}","DestinationPort":"{}"}}"#,
            client.0, client.1, server.0, server.1
        ),
        format!(
            r#"{{"EventID":5,"Channel":"Microsoft-Windows-Sysmon/Operational","Hostname":"{host}","UtcTime":"2024-05-01 12:05:00.000","ProcessGuid":"{guid}","ProcessId":"{pid}","Image":"C:\\Program Files\\Microsoft Office\\root\\Office16\\WINWORD.EXE"}}"#
        ),
    ];
    let sysmon = dir.join("synthetic-sysmon.json");
    std::fs::write(&sysmon, sysmon_lines.join("\n") + "\n")?;

    let mut frames: Vec<(i64, Vec<u8>)> = Vec::new();
    let dns = crate::dns::build_response(0x5151, sni, &[server.0]);
    frames.push((t0 - 100_000, udp((client.0, 60_000), resolver, &dns[..30])));
    frames.push((t0 - 90_000, udp(resolver, (client.0, 60_000), &dns)));
    let (cisn, sisn) = (0xffff_f000u32, 7_000_000u32); // client ISN wraps 2^32
    let mut c = cisn.wrapping_add(1);
    let s = sisn.wrapping_add(1);
    frames.push((t0, tcp(client, server, cisn, 0, SYN, &[])));
    frames.push((t0 + 20_000, tcp(server, client, sisn, c, SYN | ACK, &[])));
    frames.push((t0 + 40_000, tcp(client, server, c, s, ACK, &[])));
    let hello = crate::tls::build_client_hello(sni);
    frames.push((t0 + 41_000, tcp(client, server, c, s, ACK, &hello)));
    c = c.wrapping_add(hello.len() as u32);
    let server_hello = vec![0x16u8; 1200];
    frames.push((t0 + 60_000, tcp(server, client, s, c, ACK, &server_hello)));
    let s = s.wrapping_add(server_hello.len() as u32);
    let mut out = hello.len() as u64;
    let mut t = t0 + 80_000;
    let chunk = vec![0x17u8; 1400];
    let mut n = 0u32;
    // ~3.4 MB, paced to run past the minute boundary at 12:01:00.
    while out < 3_400_000 {
        n += 1;
        let seg: &[u8] = if n == 700 { &[0x17u8; 16_000] } else { &chunk };
        if n == 1500 {
            // Missed by the capture: no frame, only the ACK below proves it.
        } else {
            frames.push((t, tcp(client, server, c, s, ACK, seg)));
        }
        if n == 900 {
            // Retransmitted: the same bytes again, counted once.
            frames.push((t + 5_000, tcp(client, server, c, s, ACK, seg)));
        }
        c = c.wrapping_add(seg.len() as u32);
        out += seg.len() as u64;
        if n.is_multiple_of(10) {
            frames.push((t + 1_000, tcp(server, client, s, c, ACK, &[])));
        }
        t += 25_000;
    }
    frames.push((t, tcp(server, client, s, c, ACK, &[])));
    let response = vec![0x17u8; 600];
    frames.push((t + 10_000, tcp(server, client, s, c, ACK, &response)));
    let s = s.wrapping_add(response.len() as u32);
    frames.push((t + 20_000, tcp(client, server, c, s, ACK | FIN, &[])));
    frames.push((
        t + 30_000,
        tcp(server, client, s, c.wrapping_add(1), ACK | FIN, &[]),
    ));
    frames.push((
        t + 40_000,
        tcp(
            client,
            server,
            c.wrapping_add(1),
            s.wrapping_add(1),
            ACK,
            &[],
        ),
    ));
    let bytes_in = (server_hello.len() + response.len()) as u64;

    let host_capture = dir.join("synthetic-host.pcap");
    std::fs::write(&host_capture, write_pcap(&frames))?;
    let tap: Vec<(i64, Vec<u8>)> = frames.iter().map(|(t, f)| (t + 1_000, f.clone())).collect();
    let tap_capture = dir.join("synthetic-tap.pcap");
    std::fs::write(&tap_capture, write_pcap(&tap))?;
    Ok(SyntheticUpload {
        host,
        pid,
        app: "winword.exe",
        client,
        server,
        sni,
        bytes_out: out,
        bytes_in,
        start_us: t0,
        sysmon,
        pcaps: vec![host_capture, tap_capture],
    })
}
