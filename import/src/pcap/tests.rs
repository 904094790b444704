use std::net::Ipv4Addr;

use super::synth::{tcp, udp};
use super::*;

const C: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 0, 0, 5), 50_000);
const S: (Ipv4Addr, u16) = (Ipv4Addr::new(93, 184, 216, 34), 443);

fn flows_of(captures: &[Vec<u8>]) -> (NetworkData, ImportReport) {
    let mut set = CaptureSet::default();
    let mut report = ImportReport::default();
    for (i, c) in captures.iter().enumerate() {
        set.add_reader(&format!("cap{i}"), &mut &c[..], &mut report);
    }
    let mut net = NetworkData::default();
    set.finish(&ImportConfig::default(), &mut net, &mut report);
    (net, report)
}

fn totals(net: &NetworkData) -> Vec<(u16, u16, u64, u64)> {
    net.flows
        .iter()
        .map(|f| (f.client.1, f.server.1, f.total_out(), f.total_in()))
        .collect()
}

/// A connection: handshake, `segs` client segments of `len` bytes (those in
/// `skip` not captured, those in `dup` captured twice), server ACKs, FIN.
fn conn(isn: u32, segs: u32, len: usize, skip: &[u32], dup: &[u32]) -> Vec<(i64, Vec<u8>)> {
    let mut f = Vec::new();
    let sisn = 1000u32;
    let t = 1_700_000_000_000_000i64;
    f.push((t, tcp(C, S, isn, 0, SYN, &[])));
    f.push((t + 1, tcp(S, C, sisn, isn.wrapping_add(1), SYN | ACK, &[])));
    let mut seq = isn.wrapping_add(1);
    let data = vec![7u8; len];
    for i in 0..segs {
        let ts = t + 10 + i64::from(i) * 10;
        if !skip.contains(&i) {
            f.push((ts, tcp(C, S, seq, sisn + 1, ACK, &data)));
        }
        if dup.contains(&i) {
            f.push((ts + 5, tcp(C, S, seq, sisn + 1, ACK, &data)));
        }
        seq = seq.wrapping_add(len as u32);
    }
    let end = t + 10_000;
    f.push((end, tcp(S, C, sisn + 1, seq, ACK, &[])));
    f.push((end + 1, tcp(C, S, seq, sisn + 1, ACK | FIN, &[])));
    f.push((
        end + 2,
        tcp(S, C, sisn + 1, seq.wrapping_add(1), ACK | FIN, &[]),
    ));
    f.push((end + 3, tcp(C, S, seq.wrapping_add(1), sisn + 2, ACK, &[])));
    f
}

#[test]
fn retransmissions_once_missed_segments_from_acks_fin_not_counted() {
    let (net, report) = flows_of(&[write_pcap(&conn(5000, 10, 100, &[3, 9], &[4, 5]))]);
    assert_eq!(report.total_rejected(), 0, "{report}");
    assert_eq!(totals(&net), vec![(50_000, 443, 1000, 0)]);
}

#[test]
fn sequence_numbers_wrapping_past_2_32() {
    let (net, _) = flows_of(&[write_pcap(&conn(u32::MAX - 250, 6, 100, &[], &[]))]);
    assert_eq!(totals(&net), vec![(50_000, 443, 600, 0)]);
}

#[test]
fn offloaded_segments_with_ip_length_zero() {
    // A sender-side capture with TSO: one 20 000-byte "segment" whose IPv4
    // total length field is 0.
    let mut f = conn(1, 0, 0, &[], &[]);
    let mut big = tcp(C, S, 2, 1001, ACK, &vec![1u8; 20_000]);
    big[16] = 0;
    big[17] = 0;
    f.insert(2, (1_700_000_000_000_005, big));
    // Fix the closing handshake's sequence numbers to follow the big segment.
    let f: Vec<_> = f
        .into_iter()
        .map(|(t, fr)| {
            if t >= 1_700_000_000_010_000 {
                let p = LaxSlicedPacket::from_ethernet(&fr).unwrap();
                let Some(etherparse::TransportSlice::Tcp(h)) = p.transport else {
                    panic!()
                };
                let from_client = h.source_port() == C.1;
                let seq = if from_client {
                    h.sequence_number() + 20_000
                } else {
                    h.sequence_number()
                };
                let ack = if from_client {
                    h.acknowledgment_number()
                } else {
                    h.acknowledgment_number() + 20_000
                };
                let mut flags = 0;
                if h.ack() {
                    flags |= ACK;
                }
                if h.fin() {
                    flags |= FIN;
                }
                let (a, b) = if from_client { (C, S) } else { (S, C) };
                (t, tcp(a, b, seq, ack, flags, &[]))
            } else {
                (t, fr)
            }
        })
        .collect();
    let (net, report) = flows_of(&[write_pcap(&f)]);
    assert_eq!(report.total_rejected(), 0, "{report}");
    assert_eq!(totals(&net), vec![(50_000, 443, 20_000, 0)]);
}

#[test]
fn snaplen_cut_packets_count_their_wire_size() {
    let frames = conn(10, 3, 1000, &[], &[]);
    // Rewrite with caplen 96 and the true origlen.
    let mut out = write_pcap(&[]);
    for (ts, f) in &frames {
        let cap = f.len().min(96);
        out.extend_from_slice(&((ts / 1_000_000) as u32).to_le_bytes());
        out.extend_from_slice(&((ts % 1_000_000) as u32).to_le_bytes());
        out.extend_from_slice(&(cap as u32).to_le_bytes());
        out.extend_from_slice(&(f.len() as u32).to_le_bytes());
        out.extend_from_slice(&f[..cap]);
    }
    let (net, report) = flows_of(&[out]);
    assert_eq!(report.total_rejected(), 0, "{report}");
    assert_eq!(totals(&net), vec![(50_000, 443, 3000, 0)]);
}

#[test]
fn mid_stream_flow_oriented_by_ports() {
    // No handshake captured: server → client data first.
    let t = 1_700_000_000_000_000i64;
    let frames = vec![
        (t, tcp(S, C, 9000, 100, ACK, &[1u8; 500])),
        (t + 1, tcp(C, S, 100, 9500, ACK, &[2u8; 50])),
    ];
    let (net, _) = flows_of(&[write_pcap(&frames)]);
    assert_eq!(totals(&net), vec![(50_000, 443, 50, 500)]);
}

#[test]
fn same_flow_in_two_captures_counted_once_and_sni_found() {
    let t = 1_700_000_000_000_000i64;
    let hello = crate::tls::build_client_hello("upload.example.org");
    let (a, b) = hello.split_at(40);
    let frames = vec![
        (t, tcp(C, S, 1, 0, SYN, &[])),
        (t + 10, tcp(S, C, 500, 2, SYN | ACK, &[])),
        (t + 20, tcp(C, S, 2, 501, ACK, a)),
        (t + 30, tcp(C, S, 2 + a.len() as u32, 501, ACK, b)),
        (
            t + 40,
            tcp(S, C, 501, 2 + hello.len() as u32, ACK, &[3u8; 300]),
        ),
        (t + 50, udp((C.0, 5353), (S.0, 5353), b"one")),
    ];
    let shifted: Vec<_> = frames.iter().map(|(t, f)| (t + 3, f.clone())).collect();
    let (net, report) = flows_of(&[write_pcap(&frames), write_pcap(&shifted)]);
    let mut tot = totals(&net);
    tot.sort();
    assert_eq!(
        tot,
        vec![(5353, 5353, 3, 0), (50_000, 443, hello.len() as u64, 300)]
    );
    assert_eq!(report.duplicates, 1, "the UDP datagram");
    let tcp_flow = net.flows.iter().find(|f| f.server.1 == 443).unwrap();
    assert_eq!(tcp_flow.sni.as_deref(), Some("upload.example.org"));
}

#[test]
fn dns_answers_from_udp() {
    let msg = crate::dns::build_response(1, "files.example.net", &[Ipv4Addr::new(1, 2, 3, 4)]);
    let frames = vec![(1_700_000_000_000_000i64, udp((S.0, 53), (C.0, 40000), &msg))];
    let (net, _) = flows_of(&[write_pcap(&frames)]);
    assert_eq!(net.dns.len(), 1);
    assert_eq!(net.dns[0].host, "10.0.0.5");
    assert_eq!(net.dns[0].query, "files.example.net");
}

#[test]
fn truncated_capture_keeps_the_packets_before_the_cut() {
    let full = write_pcap(&conn(1, 5, 100, &[], &[]));
    let cut = &full[..full.len() - 20];
    let (net, report) = flows_of(&[cut.to_vec()]);
    assert_eq!(report.pcap.rejected, 1);
    assert_eq!(report.rejections[0].reason_key, "truncated");
    assert!(
        report.rejections[0]
            .location
            .starts_with("cap0: after packet"),
        "{}",
        report.rejections[0]
    );
    assert_eq!(totals(&net)[0].2, 500);
}

#[test]
fn not_a_capture_is_rejected_by_name() {
    let (net, report) = flows_of(&[b"this is not a capture at all, sorry".to_vec(), Vec::new()]);
    assert!(net.flows.is_empty());
    assert_eq!(report.pcap.rejected, 2);
    assert!(report
        .rejections
        .iter()
        .all(|r| r.reason_key == "not_a_capture"));
}

/// A minimal pcapng: section header, one Ethernet interface (µs), packets.
fn pcapng(frames: &[(i64, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    let block = |out: &mut Vec<u8>, ty: u32, body: &[u8]| {
        let pad = (4 - body.len() % 4) % 4;
        let len = (12 + body.len() + pad) as u32;
        out.extend_from_slice(&ty.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(body);
        out.extend(std::iter::repeat_n(0u8, pad));
        out.extend_from_slice(&len.to_le_bytes());
    };
    let mut shb = Vec::new();
    shb.extend_from_slice(&0x1a2b_3c4du32.to_le_bytes());
    shb.extend_from_slice(&1u16.to_le_bytes());
    shb.extend_from_slice(&0u16.to_le_bytes());
    shb.extend_from_slice(&(-1i64).to_le_bytes());
    block(&mut out, 0x0a0d_0d0a, &shb);
    let mut idb = Vec::new();
    idb.extend_from_slice(&1u16.to_le_bytes());
    idb.extend_from_slice(&0u16.to_le_bytes());
    idb.extend_from_slice(&0u32.to_le_bytes());
    block(&mut out, 1, &idb);
    for (ts, f) in frames {
        let mut epb = Vec::new();
        epb.extend_from_slice(&0u32.to_le_bytes());
        epb.extend_from_slice(&((*ts as u64 >> 32) as u32).to_le_bytes());
        epb.extend_from_slice(&(*ts as u64 as u32).to_le_bytes());
        epb.extend_from_slice(&(f.len() as u32).to_le_bytes());
        epb.extend_from_slice(&(f.len() as u32).to_le_bytes());
        epb.extend_from_slice(f);
        block(&mut out, 6, &epb);
    }
    out
}

#[test]
fn pcapng_is_read_with_its_timestamps() {
    let frames = conn(77, 4, 250, &[], &[]);
    let (net, report) = flows_of(&[pcapng(&frames)]);
    assert_eq!(report.total_rejected(), 0, "{report}");
    assert_eq!(totals(&net), vec![(50_000, 443, 1000, 0)]);
    assert_eq!(net.flows[0].first_us, frames[0].0);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    #[test]
    fn arbitrary_bytes_never_panic(b in proptest::collection::vec(proptest::num::u8::ANY, 0..2000)) {
        let _ = flows_of(&[b]);
    }

    #[test]
    fn mutated_captures_never_panic(
        edits in proptest::collection::vec((0usize..100_000, proptest::num::u8::ANY), 1..8),
        cut in 0usize..100_000,
        ng in proptest::bool::ANY,
    ) {
        let frames = conn(9, 6, 300, &[2], &[3]);
        let mut b = if ng { pcapng(&frames) } else { write_pcap(&frames) };
        for (i, v) in edits {
            let n = b.len();
            b[i % n] = v;
        }
        let n = b.len();
        b.truncate(cut % (n + 1));
        let _ = flows_of(&[b]);
    }
}
