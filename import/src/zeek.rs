//! Zeek logs: `conn` (bytes per connection), `ssl` (server name by `uid`)
//! and `dns` (answers), in Zeek's TSV format (with `#fields` headers) or as
//! JSON lines. A directory is searched for files whose names start with
//! `conn`, `ssl` and `dns` (`conn.log`, `conn.log.labeled`, `dns.json`…).
//!
//! `orig_bytes`/`resp_bytes` are payload bytes from sequence numbers, the
//! same measure the pcap importer takes. The originator is the host, except
//! for connections Zeek marks as coming from outside to a local address
//! (`local_orig` F, `local_resp` T): there the local responder is the host. A connection's bytes are spread over
//! the intervals it lasted, in proportion to time (Zeek gives only totals).

use std::collections::HashMap;
use std::io::Read;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use outflow_core::telemetry::{DnsRecord, Transport};
use outflow_core::Timestamp;
use serde_json::{Map, Value};

use crate::config::ImportConfig;
use crate::flow::{parse_ip, Flow, FlowOrigin, NetworkData};
use crate::report::{ImportReport, SourceKind};
use crate::source::{for_each_input, for_each_line};

/// Which Zeek log a file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogKind {
    Conn,
    Ssl,
    Dns,
}

impl LogKind {
    fn from_name(name: &str) -> Option<LogKind> {
        let n = name.to_ascii_lowercase();
        if n.starts_with("conn") {
            Some(LogKind::Conn)
        } else if n.starts_with("ssl") {
            Some(LogKind::Ssl)
        } else if n.starts_with("dns") {
            Some(LogKind::Dns)
        } else {
            None
        }
    }

    fn required(self) -> &'static [&'static str] {
        match self {
            LogKind::Conn => &[
                "ts",
                "id.orig_h",
                "id.orig_p",
                "id.resp_h",
                "id.resp_p",
                "proto",
            ],
            LogKind::Ssl => &["uid", "server_name"],
            LogKind::Dns => &["ts", "id.orig_h", "query", "answers"],
        }
    }
}

/// A connection record, kept until every ssl.log has been read.
#[derive(Clone, Debug)]
struct ConnRec {
    uid: Option<String>,
    /// From outside to a local address: the server name in ssl.log is the
    /// local server's own, not a destination's, so it is not attached.
    inbound: bool,
    flow: Flow,
}

/// Everything read from Zeek sources so far.
#[derive(Default)]
pub struct ZeekData {
    conns: Vec<ConnRec>,
    sni: HashMap<String, String>,
    /// Index of the `--zeek` source being read.
    sensor: u32,
}

/// Reads every Zeek directory or file in `paths` and adds flows and DNS
/// answers to `net`.
pub fn read_paths(
    paths: &[PathBuf],
    cfg: &ImportConfig,
    net: &mut NetworkData,
    report: &mut ImportReport,
) {
    let mut data = ZeekData::default();
    for (i, p) in paths.iter().enumerate() {
        data.sensor = i as u32;
        read_path(p, cfg, &mut data, net, report);
    }
    data.finish(net);
}

fn read_path(
    path: &Path,
    cfg: &ImportConfig,
    data: &mut ZeekData,
    net: &mut NetworkData,
    report: &mut ImportReport,
) {
    if path.is_dir() {
        let entries = match std::fs::read_dir(path) {
            Ok(e) => e,
            Err(e) => {
                report.reject(
                    SourceKind::Zeek,
                    path.display().to_string(),
                    "unreadable_file",
                    format!("cannot list directory: {e}"),
                );
                return;
            }
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        for f in files {
            let name = f
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            match LogKind::from_name(&name) {
                Some(kind) => read_file(&f, Some(kind), cfg, data, net, report),
                None => report.skip(SourceKind::Zeek, "files that are not conn/ssl/dns logs"),
            }
        }
    } else {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        read_file(path, LogKind::from_name(&name), cfg, data, net, report);
    }
}

fn read_file(
    path: &Path,
    kind: Option<LogKind>,
    cfg: &ImportConfig,
    data: &mut ZeekData,
    net: &mut NetworkData,
    report: &mut ImportReport,
) {
    for_each_input(path, SourceKind::Zeek, report, |name, reader, report| {
        let member_kind = kind
            .or_else(|| LogKind::from_name(name.rsplit(['/', '\\', '!']).next().unwrap_or(name)));
        read_reader(name, reader, member_kind, cfg, data, net, report);
    });
}

/// Zeek TSV header state.
struct Tsv {
    sep: Vec<u8>,
    set_sep: String,
    unset: String,
    empty: String,
    fields: Vec<String>,
    index: HashMap<String, usize>,
}

impl Default for Tsv {
    fn default() -> Self {
        Tsv {
            sep: b"\t".to_vec(),
            set_sep: ",".into(),
            unset: "-".into(),
            empty: "(empty)".into(),
            fields: Vec::new(),
            index: HashMap::new(),
        }
    }
}

fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && b.get(i + 1) == Some(&b'x') {
            if let Some(h) = s
                .get(i + 2..i + 4)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(h);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// One record, whichever format it came in.
enum Row<'a> {
    Tsv(&'a Tsv, Vec<&'a str>),
    Json(&'a Map<String, Value>),
}

impl Row<'_> {
    fn str(&self, k: &str) -> Option<String> {
        match self {
            Row::Tsv(t, cols) => {
                let v = *cols.get(*t.index.get(k)?)?;
                if v == t.unset {
                    None
                } else if v == t.empty {
                    Some(String::new())
                } else {
                    Some(v.to_string())
                }
            }
            Row::Json(m) => match m.get(k)? {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                Value::Bool(b) => Some(b.to_string()),
                _ => None,
            },
        }
    }

    fn list(&self, k: &str) -> Vec<String> {
        match self {
            Row::Tsv(t, _) => match self.str(k) {
                Some(s) if !s.is_empty() => {
                    s.split(t.set_sep.as_str()).map(str::to_string).collect()
                }
                _ => Vec::new(),
            },
            Row::Json(m) => match m.get(k) {
                Some(Value::Array(a)) => a
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect(),
                Some(Value::String(s)) => vec![s.clone()],
                _ => Vec::new(),
            },
        }
    }

    fn need(&self, k: &str) -> Result<String, (&'static str, String)> {
        self.str(k)
            .ok_or_else(|| ("missing_field", format!("`{k}` is unset")))
    }
}

/// Zeek's `ts`: seconds since the epoch with a fraction (TSV, JSON), or an
/// ISO 8601 time with a zone (JSON with `JSON::TS_ISO8601`).
pub fn parse_zeek_ts(s: &str) -> Option<Timestamp> {
    let s = s.trim();
    if s.contains('T') || s.contains('-') && s.len() > 12 {
        return Timestamp::parse_rfc3339(s).ok();
    }
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    if secs.is_empty()
        || secs.len() > 12
        || !secs.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let secs: i64 = secs.parse().ok()?;
    let mut us: i64 = 0;
    for (i, d) in frac.bytes().take(6).enumerate() {
        us += i64::from(d - b'0') * 10i64.pow(5 - i as u32);
    }
    Some(Timestamp(secs * 1_000_000 + us))
}

fn parse_port(s: &str, k: &str) -> Result<u16, (&'static str, String)> {
    s.trim()
        .parse::<u16>()
        .map_err(|_| ("invalid_field", format!("`{k}` is not a port: {s:?}")))
}

fn ip_field(row: &Row<'_>, k: &str) -> Result<IpAddr, (&'static str, String)> {
    let s = row.need(k)?;
    parse_ip(&s).ok_or_else(|| {
        (
            "invalid_field",
            format!("`{k}` is not an IP address: {s:?}"),
        )
    })
}

fn count_field(row: &Row<'_>, k: &str) -> Result<u64, (&'static str, String)> {
    match row.str(k) {
        None => Ok(0),
        Some(s) if s.is_empty() => Ok(0),
        Some(s) => s
            .trim()
            .parse::<u64>()
            .map_err(|_| ("invalid_field", format!("`{k}` is not a count: {s:?}"))),
    }
}

#[allow(clippy::too_many_arguments)]
fn read_reader(
    name: &str,
    reader: &mut dyn Read,
    kind: Option<LogKind>,
    cfg: &ImportConfig,
    data: &mut ZeekData,
    net: &mut NetworkData,
    report: &mut ImportReport,
) {
    let mut tsv = Tsv::default();
    let mut kind = kind;
    // Set when the header is unusable: the rest of the file is skipped.
    let mut dead = false;
    let mut gz_checked = false;
    let res = for_each_line(reader, |n, raw| {
        if dead {
            return;
        }
        if !gz_checked {
            gz_checked = true;
            if raw.starts_with(&[0x1f, 0x8b]) {
                report.reject(
                    SourceKind::Zeek,
                    name,
                    "unsupported_format",
                    "gzip-compressed log: decompress it first (gunzip)",
                );
                dead = true;
                return;
            }
        }
        let Ok(line) = std::str::from_utf8(raw) else {
            report.zeek.records += 1;
            report.reject(
                SourceKind::Zeek,
                format!("{name}:{n}"),
                "not_utf8",
                "line is not UTF-8",
            );
            return;
        };
        if line.trim().is_empty() {
            return;
        }
        if let Some(h) = line.strip_prefix('#') {
            let (key, rest) = h.split_once([' ', '\t']).unwrap_or((h, ""));
            let sep = String::from_utf8_lossy(&tsv.sep).to_string();
            match key {
                "separator" => tsv.sep = unescape(rest.trim()),
                "set_separator" => tsv.set_sep = rest.to_string(),
                "unset_field" => tsv.unset = rest.to_string(),
                "empty_field" => tsv.empty = rest.to_string(),
                "path" if kind.is_none() => kind = LogKind::from_name(rest.trim()),
                "fields" => {
                    tsv.fields = rest.split(sep.as_str()).map(str::to_string).collect();
                    tsv.index = tsv
                        .fields
                        .iter()
                        .enumerate()
                        .map(|(i, f)| (f.clone(), i))
                        .collect();
                    if let Some(k) = kind {
                        let missing: Vec<&str> = k
                            .required()
                            .iter()
                            .copied()
                            .filter(|f| !tsv.index.contains_key(*f))
                            .collect();
                        if !missing.is_empty() {
                            report.reject(
                                SourceKind::Zeek,
                                format!("{name}:{n}"),
                                "missing_column",
                                format!(
                                    "#fields lacks {} — rest of this file skipped",
                                    missing.join(", ")
                                ),
                            );
                            dead = true;
                        }
                    }
                }
                _ => {}
            }
            return;
        }
        report.zeek.records += 1;
        let Some(k) = kind else {
            report.reject(SourceKind::Zeek, name, "unknown_log", "cannot tell which Zeek log this is (name it conn*, ssl* or dns*, or give a #path header)");
            dead = true;
            return;
        };
        let parsed: Result<(), (&'static str, String)> = if line.starts_with('{') {
            match serde_json::from_str::<Value>(line) {
                Ok(Value::Object(m)) => {
                    let missing: Vec<&str> = k
                        .required()
                        .iter()
                        .copied()
                        .filter(|f| !m.contains_key(*f))
                        .collect();
                    if missing.is_empty() {
                        record(k, &Row::Json(&m), cfg, data, net, report)
                    } else {
                        Err(("missing_field", format!("missing {}", missing.join(", "))))
                    }
                }
                Ok(_) => Err(("not_object", "not a JSON object".into())),
                Err(e) => Err(("not_json", format!("not valid JSON: {e}"))),
            }
        } else if tsv.fields.is_empty() {
            Err((
                "missing_header",
                "a TSV row before any #fields header".into(),
            ))
        } else {
            let cols: Vec<&str> = match tsv.sep.as_slice() {
                [b] if b.is_ascii() => line.split(char::from(*b)).collect(),
                sep => line.split(String::from_utf8_lossy(sep).as_ref()).collect(),
            };
            if cols.len() != tsv.fields.len() {
                Err((
                    "column_count",
                    format!(
                        "{} columns, the #fields header has {}",
                        cols.len(),
                        tsv.fields.len()
                    ),
                ))
            } else {
                record(k, &Row::Tsv(&tsv, cols), cfg, data, net, report)
            }
        };
        match parsed {
            Ok(()) => {}
            Err((key, detail)) => {
                report.reject(SourceKind::Zeek, format!("{name}:{n}"), key, detail)
            }
        }
    });
    if let Err((n, e)) = res {
        report.reject(
            SourceKind::Zeek,
            format!("{name}:{n}"),
            "read_error",
            format!("input ends with a read error (lines before it were imported): {e}"),
        );
    }
}

#[allow(clippy::too_many_arguments)]
fn record(
    kind: LogKind,
    row: &Row<'_>,
    cfg: &ImportConfig,
    data: &mut ZeekData,
    net: &mut NetworkData,
    report: &mut ImportReport,
) -> Result<(), (&'static str, String)> {
    match kind {
        LogKind::Ssl => {
            let uid = row.need("uid")?;
            if let Some(sni) = row.str("server_name").filter(|s| !s.is_empty()) {
                data.sni
                    .insert(uid, sni.trim_end_matches('.').to_ascii_lowercase());
                report.zeek.used += 1;
            } else {
                report.skip(SourceKind::Zeek, "ssl records without server_name");
            }
        }
        LogKind::Dns => {
            let ts_s = row.need("ts")?;
            let ts = parse_zeek_ts(&ts_s)
                .ok_or_else(|| ("invalid_field", format!("`ts` is not a time: {ts_s:?}")))?;
            let host = ip_field(row, "id.orig_h")?;
            let query = row.str("query").unwrap_or_default();
            let answers: Vec<IpAddr> = row
                .list("answers")
                .iter()
                .filter_map(|a| parse_ip(a))
                .collect();
            if query.is_empty() || answers.is_empty() {
                report.skip(SourceKind::Zeek, "dns records without address answers");
                return Ok(());
            }
            net.dns.push(DnsRecord {
                ts,
                host: host.to_string(),
                query: query.trim_end_matches('.').to_ascii_lowercase(),
                answers,
                pid: None,
            });
            report.zeek.used += 1;
        }
        LogKind::Conn => {
            let proto = match row.need("proto")?.as_str() {
                "tcp" => Transport::Tcp,
                "udp" => Transport::Udp,
                _ => {
                    report.skip(SourceKind::Zeek, "conn records not tcp/udp");
                    return Ok(());
                }
            };
            let ts_s = row.need("ts")?;
            let ts = parse_zeek_ts(&ts_s)
                .ok_or_else(|| ("invalid_field", format!("`ts` is not a time: {ts_s:?}")))?;
            let client = (
                ip_field(row, "id.orig_h")?,
                parse_port(&row.need("id.orig_p")?, "id.orig_p")?,
            );
            let server = (
                ip_field(row, "id.resp_h")?,
                parse_port(&row.need("id.resp_p")?, "id.resp_p")?,
            );
            let duration_us = match row.str("duration") {
                Some(d) if !d.is_empty() => {
                    let secs: f64 = d.trim().parse().map_err(|_| {
                        (
                            "invalid_field",
                            format!("`duration` is not a number: {d:?}"),
                        )
                    })?;
                    if !secs.is_finite() || secs < 0.0 {
                        return Err((
                            "invalid_field",
                            format!("`duration` must be a non-negative number: {d:?}"),
                        ));
                    }
                    (secs * 1e6).min(1e15) as i64
                }
                _ => 0,
            };
            let out = count_field(row, "orig_bytes")?;
            let inb = count_field(row, "resp_bytes")?;
            // Zeek knows which side is local (`Site::local_nets`). A
            // connection from outside to a local address is seen from the
            // local responder: it is the host, and what it sent is "out".
            // TSV writes T/F, JSON true/false.
            let flag = |k: &str| match row.str(k).as_deref() {
                Some("T") | Some("true") => Some(true),
                Some("F") | Some("false") => Some(false),
                _ => None,
            };
            let inbound = flag("local_orig") == Some(false) && flag("local_resp") == Some(true);
            let (client, server, out, inb) = if inbound {
                report.zeek_inbound += 1;
                (server, client, inb, out)
            } else {
                (client, server, out, inb)
            };
            let start = ts.as_micros();
            let end = start.saturating_add(duration_us);
            let mut flow = Flow::new(proto, client, server, start, FlowOrigin::Zeek);
            flow.sensor = data.sensor;
            spread(&mut flow, start, end, out, inb, cfg.interval_us());
            data.conns.push(ConnRec {
                uid: row.str("uid"),
                inbound,
                flow,
            });
            report.zeek.used += 1;
        }
    }
    Ok(())
}

/// Spreads a connection's totals over the intervals of `[start, end]`, in
/// proportion to the time spent in each; the last interval takes the rounding.
fn spread(flow: &mut Flow, start: i64, end: i64, out: u64, inb: u64, interval: i64) {
    let first = start.div_euclid(interval);
    let last = end.div_euclid(interval);
    if first == last || end <= start || last - first > 100_000 {
        flow.add(start, 0, 0, interval);
        flow.add(end, out, inb, interval);
        return;
    }
    let dur = (end - start) as u128;
    let (mut given_out, mut given_in) = (0u64, 0u64);
    flow.add(start, 0, 0, interval);
    for i in first..=last {
        let a = start.max(i * interval);
        let b = end.min((i + 1) * interval - 1);
        if i == last {
            flow.add(end, out - given_out, inb - given_in, interval);
        } else {
            let share = (b - a + 1).max(0) as u128;
            let o = (u128::from(out) * share / dur) as u64;
            let n = (u128::from(inb) * share / dur) as u64;
            let o = o.min(out - given_out);
            let n = n.min(inb - given_in);
            given_out += o;
            given_in += n;
            flow.add(b, o, n, interval);
        }
    }
}

impl ZeekData {
    /// Attaches server names to connections and hands the flows over.
    pub fn finish(self, net: &mut NetworkData) {
        let ZeekData { conns, sni, .. } = self;
        for mut c in conns {
            if let (Some(u), false) = (&c.uid, c.inbound) {
                if let Some(s) = sni.get(u) {
                    c.flow.sni = Some(s.clone());
                }
            }
            net.flows.push(c.flow);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(name: &str, text: &str) -> (ZeekData, NetworkData, ImportReport) {
        let mut data = ZeekData::default();
        let mut net = NetworkData::default();
        let mut report = ImportReport::default();
        read_reader(
            name,
            &mut text.as_bytes(),
            LogKind::from_name(name),
            &ImportConfig::default(),
            &mut data,
            &mut net,
            &mut report,
        );
        (data, net, report)
    }

    const CONN_HDR: &str = "#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n#path\tconn\n#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\tservice\tduration\torig_bytes\tresp_bytes\textra_col\n";

    #[test]
    fn tsv_conn_with_extra_columns_and_bad_rows() {
        let text = format!(
            "{CONN_HDR}1655192644.071455\tC1\t10.0.0.5\t49448\t162.125.1.14\t443\ttcp\tssl\t150.0\t9000\t300\tx\n\
             1655192644.0\tC2\t10.0.0.5\t49449\t1.1.1.1\t53\tudp\tdns\t-\t40\t80\t-\n\
             1655192644.0\tC3\t10.0.0.5\n\
             1655192644.0\tC4\tnot-an-ip\t1\t1.1.1.1\t53\tudp\tdns\t-\t40\t80\t-\n\
             1655192644.0\tC5\t10.0.0.5\t1\t1.1.1.1\t0\ticmp\t-\t-\t8\t0\t-\n"
        );
        let (data, _, report) = run("conn.log", &text);
        assert_eq!(data.conns.len(), 2, "{report}");
        assert_eq!(report.zeek.rejected, 2);
        assert_eq!(report.rejections[0].location, "conn.log:9");
        assert_eq!(report.rejections[0].reason_key, "column_count");
        assert_eq!(report.rejections[1].location, "conn.log:10");
        assert!(report.rejections[1].detail.contains("id.orig_h"));
        let f = &data.conns[0].flow;
        assert_eq!((f.total_out(), f.total_in()), (9000, 300));
        // 150 s spread over three or four 60 s intervals.
        assert!(f.buckets.len() >= 3, "{:?}", f.buckets);
    }

    #[test]
    fn inbound_connections_are_seen_from_the_local_responder() {
        let conn = r#"{"ts":1.0,"uid":"CIN","id.orig_h":"203.0.113.9","id.orig_p":40000,"id.resp_h":"10.0.0.5","id.resp_p":443,"proto":"tcp","orig_bytes":100,"resp_bytes":5000,"local_orig":false,"local_resp":true}
{"ts":2.0,"uid":"COUT","id.orig_h":"10.0.0.5","id.orig_p":50000,"id.resp_h":"203.0.113.9","id.resp_p":443,"proto":"tcp","orig_bytes":7,"resp_bytes":8,"local_orig":true,"local_resp":false}"#;
        let ssl = r#"{"uid":"CIN","server_name":"intranet.example"}
{"uid":"COUT","server_name":"upload.example"}"#;
        let mut data = ZeekData::default();
        let mut net = NetworkData::default();
        let mut report = ImportReport::default();
        let cfg = ImportConfig::default();
        read_reader(
            "ssl.json",
            &mut ssl.as_bytes(),
            Some(LogKind::Ssl),
            &cfg,
            &mut data,
            &mut net,
            &mut report,
        );
        read_reader(
            "conn.json",
            &mut conn.as_bytes(),
            Some(LogKind::Conn),
            &cfg,
            &mut data,
            &mut net,
            &mut report,
        );
        data.finish(&mut net);
        assert_eq!(report.zeek_inbound, 1);
        let local: IpAddr = "10.0.0.5".parse().unwrap();
        let inb = &net.flows[0];
        assert_eq!((inb.client.0, inb.server.1), (local, 40000));
        assert_eq!((inb.total_out(), inb.total_in()), (5000, 100));
        assert_eq!(inb.sni, None);
        let out = &net.flows[1];
        assert_eq!((out.client.0, out.server.1), (local, 443));
        assert_eq!(out.sni.as_deref(), Some("upload.example"));
    }

    #[test]
    fn missing_required_column_skips_the_file_with_a_reason() {
        let text = "#separator \\x09\n#fields\tts\tuid\tid.orig_h\n1.0\tC\t10.0.0.1\n";
        let (data, _, report) = run("conn.log", text);
        assert!(data.conns.is_empty());
        assert_eq!(report.rejections[0].reason_key, "missing_column");
        assert!(
            report.rejections[0].detail.contains("id.resp_h"),
            "{}",
            report.rejections[0]
        );
    }

    #[test]
    fn json_logs_with_iso_times_and_mixed_zones() {
        let conn = r#"{"ts":"2022-06-14T09:30:00.5+02:00","uid":"C1","id.orig_h":"10.0.0.5","id.orig_p":50000,"id.resp_h":"162.125.1.14","id.resp_p":443,"proto":"tcp","duration":1.0,"orig_bytes":5000,"resp_bytes":100}
{"ts":1655191800.5,"uid":"C2","id.orig_h":"10.0.0.5","id.orig_p":50001,"id.resp_h":"162.125.1.14","id.resp_p":443,"proto":"tcp","orig_bytes":1,"resp_bytes":2}"#;
        let (data, _, report) = run("conn.json", conn);
        assert_eq!(report.zeek.rejected, 0, "{report}");
        assert_eq!(data.conns[0].flow.first_us, data.conns[1].flow.first_us);
        let dns = r#"{"ts":1655191800.0,"id.orig_h":"10.0.0.5","query":"content.dropboxapi.com","answers":["edge-block-www-env.dropbox-dns.com","162.125.1.14"]}"#;
        let (_, net, report) = run("dns.json", dns);
        assert_eq!(report.zeek.rejected, 0, "{report}");
        assert_eq!(
            net.dns[0].answers,
            vec!["162.125.1.14".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn zeek_times() {
        assert_eq!(
            parse_zeek_ts("1655157610.743948"),
            Some(Timestamp(1_655_157_610_743_948))
        );
        assert_eq!(
            parse_zeek_ts("1655157610.7"),
            Some(Timestamp(1_655_157_610_700_000))
        );
        assert_eq!(
            parse_zeek_ts("1655157610"),
            Some(Timestamp(1_655_157_610_000_000))
        );
        assert_eq!(parse_zeek_ts("x"), None);
        assert_eq!(parse_zeek_ts("-"), None);
    }

    proptest::proptest! {
        #[test]
        fn tsv_never_panics(rows in proptest::collection::vec("[-0-9a-z.:\t(){}\",]{0,80}", 0..12)) {
            let text = format!("{CONN_HDR}{}", rows.join("\n"));
            let _ = run("conn.log", &text);
            let _ = run("dns.log", &rows.join("\n"));
        }

        #[test]
        fn mutated_header_never_panics(idx in 0usize..400, byte in proptest::num::u8::ANY) {
            let mut b = format!("{CONN_HDR}1655192644.071455\tC1\t10.0.0.5\t49448\t162.125.1.14\t443\ttcp\tssl\t150.0\t9000\t300\tx\n").into_bytes();
            let i = idx % b.len();
            b[i] = byte;
            let mut data = ZeekData::default();
            let mut net = NetworkData::default();
            let mut report = ImportReport::default();
            read_reader("conn.log", &mut &b[..], Some(LogKind::Conn), &ImportConfig::default(), &mut data, &mut net, &mut report);
        }
    }
}
