//! Writes the large inputs used for the speed figures in docs/importers.md:
//!
//! - `big.pcap`: 2,000 synthetic HTTPS uploads (handshake, 70 × 1,400 B
//!   segments, an ACK every other segment) — about 211 MB, 214,000 packets;
//! - `conn.log`, if a Zeek conn log is given: its rows repeated with times
//!   shifted by a day per copy and fresh uids, until 100 MB.
//!
//! `cargo run --release -p outflow-import --example bench_inputs -- OUT_DIR [CONN_LOG]`

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::net::Ipv4Addr;
use std::path::PathBuf;

use outflow_import::pcap::synth::{tcp, ACK, SYN};

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let out = PathBuf::from(args.next().unwrap_or_else(|| ".".into()));
    std::fs::create_dir_all(&out)?;

    let mut w = BufWriter::new(std::fs::File::create(out.join("big.pcap"))?);
    w.write_all(&outflow_import::pcap::write_pcap(&[]))?;
    let mut t: i64 = 1_700_000_000_000_000;
    let mut put = |w: &mut BufWriter<std::fs::File>, frame: Vec<u8>| -> std::io::Result<()> {
        t += 100;
        w.write_all(&((t / 1_000_000) as u32).to_le_bytes())?;
        w.write_all(&((t % 1_000_000) as u32).to_le_bytes())?;
        w.write_all(&(frame.len() as u32).to_le_bytes())?;
        w.write_all(&(frame.len() as u32).to_le_bytes())?;
        w.write_all(&frame)
    };
    let server = (Ipv4Addr::new(162, 125, 1, 14), 443);
    let data = vec![0u8; 1400];
    for f in 0u32..2000 {
        let client = (
            Ipv4Addr::new(10, 1, (f / 256) as u8, (f % 256) as u8),
            40_000 + (f % 20_000) as u16,
        );
        let (isn, sisn) = (f.wrapping_mul(2_654_435_761), f.wrapping_mul(40_503));
        put(&mut w, tcp(client, server, isn, 0, SYN, &[]))?;
        put(
            &mut w,
            tcp(server, client, sisn, isn.wrapping_add(1), SYN | ACK, &[]),
        )?;
        let mut seq = isn.wrapping_add(1);
        for i in 0..70 {
            put(
                &mut w,
                tcp(client, server, seq, sisn.wrapping_add(1), ACK, &data),
            )?;
            seq = seq.wrapping_add(1400);
            if i % 2 == 1 {
                put(
                    &mut w,
                    tcp(server, client, sisn.wrapping_add(1), seq, ACK, &[]),
                )?;
            }
        }
    }
    w.flush()?;

    if let Some(conn) = args.next() {
        let lines: Vec<String> = BufReader::new(std::fs::File::open(conn)?)
            .lines()
            .collect::<Result<_, _>>()?;
        let mut w = BufWriter::new(std::fs::File::create(out.join("conn.log"))?);
        let mut written = 0usize;
        for l in lines
            .iter()
            .filter(|l| l.starts_with('#') && !l.starts_with("#close"))
        {
            writeln!(w, "{l}")?;
        }
        let mut copy = 0u64;
        while written < 100_000_000 {
            for (i, l) in lines.iter().filter(|l| !l.starts_with('#')).enumerate() {
                let mut cols: Vec<String> = l.split('\t').map(str::to_string).collect();
                if cols.len() < 2 {
                    continue;
                }
                if let Ok(ts) = cols[0].parse::<f64>() {
                    cols[0] = format!("{:.6}", ts + 86_400.0 * copy as f64);
                }
                cols[1] = format!("C{copy:x}x{i:x}");
                let row = cols.join("\t");
                written += row.len() + 1;
                writeln!(w, "{row}")?;
            }
            copy += 1;
        }
        w.flush()?;
    }
    Ok(())
}
