//! The telemetry contract (DESIGN.md section 2): one JSON object per line.
//!
//! Parsing is two-stage: a fast typed pass with borrowed strings, and, only
//! when that fails, a slow pass over `serde_json::Value` that names the field
//! that was wrong, so errors are precise without slowing the common case.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use serde::Deserialize;

use crate::time::Timestamp;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Transport {
    #[default]
    Tcp,
    Udp,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostEvent {
    pub ts: Timestamp,
    pub host: String,
    pub os: Option<String>,
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ProcessStart {
    pub ts: Timestamp,
    pub host: String,
    pub pid: u32,
    pub name: String,
    pub ppid: Option<u32>,
    pub exe: Option<String>,
    pub cmdline: Option<String>,
    pub user: Option<String>,
    pub parent_name: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessEnd {
    pub ts: Timestamp,
    pub host: String,
    pub pid: u32,
}

/// A delta of bytes since the previous record for the same
/// (host, pid, proto, dst_ip, dst_port); `ts` is the end of the interval.
/// pid 0 means "no process known" (importers): attributed to app `unknown`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetRecord {
    pub ts: Timestamp,
    pub host: String,
    pub pid: u32,
    pub proto: Transport,
    pub dst_ip: IpAddr,
    pub dst_port: u16,
    pub bytes_out: u64,
    pub bytes_in: u64,
    pub sni: Option<String>,
    pub domain: Option<String>,
}

/// A `net` record whose strings may borrow from the line it was parsed
/// from: the replay path parses and ingests a record without allocating.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetView<'a> {
    pub ts: Timestamp,
    pub host: Cow<'a, str>,
    pub pid: u32,
    pub proto: Transport,
    pub dst_ip: IpAddr,
    pub dst_port: u16,
    pub bytes_out: u64,
    pub bytes_in: u64,
    pub sni: Option<Cow<'a, str>>,
    pub domain: Option<Cow<'a, str>>,
}

impl<'a> NetView<'a> {
    /// A view of an owned record.
    pub fn of(n: &'a NetRecord) -> Self {
        NetView {
            ts: n.ts,
            host: Cow::Borrowed(&n.host),
            pid: n.pid,
            proto: n.proto,
            dst_ip: n.dst_ip,
            dst_port: n.dst_port,
            bytes_out: n.bytes_out,
            bytes_in: n.bytes_in,
            sni: n.sni.as_deref().map(Cow::Borrowed),
            domain: n.domain.as_deref().map(Cow::Borrowed),
        }
    }

    /// The same view, borrowing from this one (its strings; the rest is
    /// copied).
    pub fn reborrow(&self) -> NetView<'_> {
        NetView {
            host: Cow::Borrowed(&self.host),
            sni: self.sni.as_deref().map(Cow::Borrowed),
            domain: self.domain.as_deref().map(Cow::Borrowed),
            ..*self
        }
    }

    pub fn into_owned(self) -> NetRecord {
        NetRecord {
            ts: self.ts,
            host: self.host.into_owned(),
            pid: self.pid,
            proto: self.proto,
            dst_ip: self.dst_ip,
            dst_port: self.dst_port,
            bytes_out: self.bytes_out,
            bytes_in: self.bytes_in,
            sni: self.sni.map(Cow::into_owned),
            domain: self.domain.map(Cow::into_owned),
        }
    }
}

/// A parsed line: a `net` record as a view of the line, anything else owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventRef<'a> {
    Net(NetView<'a>),
    Other(Event),
}

impl<'a> EventRef<'a> {
    /// A view of an owned event (other than `net` records, a copy).
    pub fn of(e: &'a Event) -> Self {
        match e {
            Event::Net(n) => EventRef::Net(NetView::of(n)),
            e => EventRef::Other(e.clone()),
        }
    }
}

impl EventRef<'_> {
    pub fn host(&self) -> &str {
        match self {
            EventRef::Net(n) => &n.host,
            EventRef::Other(e) => e.host(),
        }
    }

    pub fn into_owned(self) -> Event {
        match self {
            EventRef::Net(n) => Event::Net(n.into_owned()),
            EventRef::Other(e) => e,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsRecord {
    pub ts: Timestamp,
    pub host: String,
    pub query: String,
    pub answers: Vec<IpAddr>,
    pub pid: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Host(HostEvent),
    ProcessStart(ProcessStart),
    ProcessEnd(ProcessEnd),
    Net(NetRecord),
    Dns(DnsRecord),
}

impl Event {
    pub fn ts(&self) -> Timestamp {
        match self {
            Event::Host(e) => e.ts,
            Event::ProcessStart(e) => e.ts,
            Event::ProcessEnd(e) => e.ts,
            Event::Net(e) => e.ts,
            Event::Dns(e) => e.ts,
        }
    }
    pub fn host(&self) -> &str {
        match self {
            Event::Host(e) => &e.host,
            Event::ProcessStart(e) => &e.host,
            Event::ProcessEnd(e) => &e.host,
            Event::Net(e) => &e.host,
            Event::Dns(e) => &e.host,
        }
    }
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Host(_) => "host",
            Event::ProcessStart(_) => "process_start",
            Event::ProcessEnd(_) => "process_end",
            Event::Net(_) => "net",
            Event::Dns(_) => "dns",
        }
    }

    /// The contract's JSON line (no trailing newline).
    pub fn to_json_line(&self) -> String {
        let mut out = String::with_capacity(160);
        self.write_json(&mut out);
        out
    }

    /// Appends the contract's JSON object to `out` (no newline).
    pub fn write_json(&self, out: &mut String) {
        let mut w = JsonObj::new(out);
        w.str("type", self.kind());
        w.str("ts", &self.ts().to_rfc3339());
        w.str("host", self.host());
        match self {
            Event::Host(e) => {
                w.opt_str("os", e.os.as_deref());
                if !e.labels.is_empty() {
                    w.raw(
                        "labels",
                        &serde_json::to_string(&e.labels).unwrap_or_else(|_| "{}".into()),
                    );
                }
            }
            Event::ProcessStart(e) => {
                w.num("pid", e.pid.into());
                w.str("name", &e.name);
                if let Some(p) = e.ppid {
                    w.num("ppid", p.into());
                }
                w.opt_str("exe", e.exe.as_deref());
                w.opt_str("cmdline", e.cmdline.as_deref());
                w.opt_str("user", e.user.as_deref());
                w.opt_str("parent_name", e.parent_name.as_deref());
            }
            Event::ProcessEnd(e) => w.num("pid", e.pid.into()),
            Event::Net(e) => {
                w.num("pid", e.pid.into());
                if e.proto != Transport::Tcp {
                    w.str("proto", e.proto.as_str());
                }
                w.str("dst_ip", &e.dst_ip.to_string());
                w.num("dst_port", e.dst_port.into());
                w.num("bytes_out", e.bytes_out);
                w.num("bytes_in", e.bytes_in);
                w.opt_str("sni", e.sni.as_deref());
                w.opt_str("domain", e.domain.as_deref());
            }
            Event::Dns(e) => {
                w.str("query", &e.query);
                let answers: Vec<String> = e.answers.iter().map(|a| a.to_string()).collect();
                w.raw(
                    "answers",
                    &serde_json::to_string(&answers).unwrap_or_else(|_| "[]".into()),
                );
                if let Some(p) = e.pid {
                    w.num("pid", p.into());
                }
            }
        }
        w.finish();
    }
}

struct JsonObj<'a> {
    out: &'a mut String,
    first: bool,
}

impl<'a> JsonObj<'a> {
    fn new(out: &'a mut String) -> Self {
        out.push('{');
        JsonObj { out, first: true }
    }
    fn key(&mut self, k: &str) {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        self.out.push('"');
        self.out.push_str(k);
        self.out.push_str("\":");
    }
    fn str(&mut self, k: &str, v: &str) {
        self.key(k);
        write_json_string(self.out, v);
    }
    fn opt_str(&mut self, k: &str, v: Option<&str>) {
        if let Some(v) = v {
            self.str(k, v);
        }
    }
    fn num(&mut self, k: &str, v: u64) {
        use fmt::Write;
        self.key(k);
        let _ = write!(self.out, "{v}");
    }
    fn raw(&mut self, k: &str, v: &str) {
        self.key(k);
        self.out.push_str(v);
    }
    fn finish(self) {
        self.out.push('}');
    }
}

/// Appends `s` as a JSON string literal.
pub fn write_json_string(out: &mut String, s: &str) {
    use fmt::Write;
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Why a line was rejected. `Display` gives a one-line reason naming the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("not valid JSON: {0}")]
    NotJson(String),
    #[error("not a JSON object")]
    NotObject,
    #[error("missing required field `{field}` for type `{kind}`")]
    Missing { kind: String, field: &'static str },
    #[error("field `{field}` {problem}")]
    Invalid {
        field: &'static str,
        problem: String,
    },
    #[error("unknown event type {0:?} (expected host, process_start, process_end, net or dns)")]
    UnknownType(String),
    #[error("empty line")]
    Empty,
}

impl ParseError {
    /// A short, stable reason key for summaries (`missing_field`, `bad_json`…).
    pub fn reason_key(&self) -> &'static str {
        match self {
            ParseError::NotJson(_) => "not_json",
            ParseError::NotObject => "not_object",
            ParseError::Missing { .. } => "missing_field",
            ParseError::Invalid { .. } => "invalid_field",
            ParseError::UnknownType(_) => "unknown_type",
            ParseError::Empty => "empty_line",
        }
    }
}

#[derive(Deserialize, Default)]
pub(crate) struct RawLine<'a> {
    #[serde(borrow, rename = "type")]
    pub(crate) kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub(crate) ts: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub(crate) host: Option<Cow<'a, str>>,
    pub(crate) pid: Option<u32>,
    #[serde(borrow)]
    pub(crate) name: Option<Cow<'a, str>>,
    pub(crate) ppid: Option<u32>,
    #[serde(borrow)]
    pub(crate) exe: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub(crate) cmdline: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub(crate) user: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub(crate) parent_name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub(crate) dst_ip: Option<Cow<'a, str>>,
    pub(crate) dst_port: Option<u16>,
    pub(crate) bytes_out: Option<u64>,
    pub(crate) bytes_in: Option<u64>,
    #[serde(borrow)]
    pub(crate) proto: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub(crate) sni: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub(crate) domain: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub(crate) query: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub(crate) answers: Option<Vec<Cow<'a, str>>>,
    #[serde(borrow)]
    pub(crate) os: Option<Cow<'a, str>>,
    pub(crate) labels: Option<BTreeMap<String, String>>,
}

fn own(c: Option<Cow<'_, str>>) -> Option<String> {
    c.map(Cow::into_owned)
}

/// Parses one line of telemetry JSONL.
pub fn parse_line(line: &str) -> Result<Event, ParseError> {
    parse_line_ref(line).map(EventRef::into_owned)
}

/// Parses one line of telemetry JSONL; a `net` record's strings borrow from
/// `line` where they hold no escapes. The same events and errors as
/// `parse_line`.
pub fn parse_line_ref(line: &str) -> Result<EventRef<'_>, ParseError> {
    // The scanner skips the same ASCII whitespace `trim` would; a line with
    // other whitespace at its ends takes the general path.
    let mut raw = RawLine::default();
    if crate::fastjson::scan(line, &mut raw).is_some() {
        return from_raw(&mut raw);
    }
    let trimmed = line.trim();
    if trimmed.is_empty() {
        return Err(ParseError::Empty);
    }
    parse_line_serde(trimmed).map(EventRef::Other)
}

/// `parse_line_ref` of bytes (invalid UTF-8 is an error).
pub fn parse_line_bytes_ref(line: &[u8]) -> Result<EventRef<'_>, ParseError> {
    // Most lines: a `net` record in the usual form, read in one pass.
    if let Some(n) = crate::fastjson::net_line(line) {
        return Ok(EventRef::Net(n));
    }
    parse_line_bytes_general(line)
}

/// `parse_line_bytes_ref` without the `net` fast path.
fn parse_line_bytes_general(line: &[u8]) -> Result<EventRef<'_>, ParseError> {
    match std::str::from_utf8(line) {
        Ok(s) => parse_line_ref(s),
        Err(e) => Err(ParseError::NotJson(format!("invalid UTF-8: {e}"))),
    }
}

/// The general path: serde_json, then a diagnosis of what is wrong.
fn parse_line_serde(trimmed: &str) -> Result<Event, ParseError> {
    match serde_json::from_str::<RawLine>(trimmed) {
        Ok(mut raw) => from_raw(&mut raw).map(EventRef::into_owned),
        Err(_) => Err(diagnose(trimmed)),
    }
}

/// An IP address: dotted-quad IPv4 without leading zeros by hand, anything
/// else (IPv6, odd forms, errors) by the standard library, which accepts the
/// same addresses the hand path does with the same values.
fn parse_ip(s: &str) -> Option<IpAddr> {
    match parse_plain_ipv4(s.as_bytes()) {
        Some(v4) => Some(IpAddr::V4(v4)),
        None => s.parse().ok(),
    }
}

/// `a.b.c.d`, each part 0..=255 in 1-3 digits with no leading zero.
pub(crate) fn parse_plain_ipv4(b: &[u8]) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut i = 0;
    for (k, octet) in octets.iter_mut().enumerate() {
        if k > 0 {
            if *b.get(i)? != b'.' {
                return None;
            }
            i += 1;
        }
        let start = i;
        let mut v = 0u32;
        while let Some(c @ b'0'..=b'9') = b.get(i).copied() {
            if i - start == 3 {
                return None;
            }
            v = v * 10 + u32::from(c - b'0');
            i += 1;
        }
        let len = i - start;
        if len == 0 || (len > 1 && b[start] == b'0') {
            return None;
        }
        *octet = u8::try_from(v).ok()?;
    }
    (i == b.len()).then(|| Ipv4Addr::from(octets))
}

fn from_raw<'a>(raw: &mut RawLine<'a>) -> Result<EventRef<'a>, ParseError> {
    let kind = raw.kind.take().ok_or_else(|| ParseError::Missing {
        kind: "?".into(),
        field: "type",
    })?;
    let missing = |field: &'static str| ParseError::Missing {
        kind: kind.to_string(),
        field,
    };
    let ts = raw.ts.as_deref().ok_or_else(|| missing("ts"))?;
    let ts = Timestamp::parse_rfc3339(ts).map_err(|e| ParseError::Invalid {
        field: "ts",
        problem: e.to_string(),
    })?;
    let host = raw.host.take().ok_or_else(|| missing("host"))?;
    if host.is_empty() {
        return Err(ParseError::Invalid {
            field: "host",
            problem: "must not be empty".into(),
        });
    }
    // Arms are compared in order: the most common kind first.
    if kind == "net" {
        let ip = raw.dst_ip.as_deref().ok_or_else(|| missing("dst_ip"))?;
        let dst_ip = parse_ip(ip).ok_or_else(|| ParseError::Invalid {
            field: "dst_ip",
            problem: format!("is not an IP address: {:?}", truncate(ip)),
        })?;
        let proto = match raw.proto.as_deref() {
            None | Some("tcp") | Some("TCP") => Transport::Tcp,
            Some("udp") | Some("UDP") => Transport::Udp,
            Some(other) => {
                return Err(ParseError::Invalid {
                    field: "proto",
                    problem: format!("must be \"tcp\" or \"udp\", got {:?}", truncate(other)),
                })
            }
        };
        return Ok(EventRef::Net(NetView {
            ts,
            host,
            pid: raw.pid.ok_or_else(|| missing("pid"))?,
            proto,
            dst_ip,
            dst_port: raw.dst_port.ok_or_else(|| missing("dst_port"))?,
            bytes_out: raw.bytes_out.ok_or_else(|| missing("bytes_out"))?,
            bytes_in: raw.bytes_in.ok_or_else(|| missing("bytes_in"))?,
            sni: raw.sni.take().filter(|s| !s.is_empty()),
            domain: raw.domain.take().filter(|s| !s.is_empty()),
        }));
    }
    let host = host.into_owned();
    Ok(EventRef::Other(match kind.as_ref() {
        "host" => Event::Host(HostEvent {
            ts,
            host,
            os: own(raw.os.take()),
            labels: raw.labels.take().unwrap_or_default(),
        }),
        "process_start" => Event::ProcessStart(ProcessStart {
            ts,
            host,
            pid: raw.pid.ok_or_else(|| missing("pid"))?,
            name: raw.name.take().ok_or_else(|| missing("name"))?.into_owned(),
            ppid: raw.ppid,
            exe: own(raw.exe.take()),
            cmdline: own(raw.cmdline.take()),
            user: own(raw.user.take()),
            parent_name: own(raw.parent_name.take()),
        }),
        "process_end" => Event::ProcessEnd(ProcessEnd {
            ts,
            host,
            pid: raw.pid.ok_or_else(|| missing("pid"))?,
        }),
        "dns" => {
            let answers = raw.answers.take().ok_or_else(|| missing("answers"))?;
            let mut ips = Vec::with_capacity(answers.len());
            for a in &answers {
                // DNS answers may carry CNAMEs next to addresses; keep the addresses.
                if let Some(ip) = parse_ip(a) {
                    ips.push(ip);
                }
            }
            Event::Dns(DnsRecord {
                ts,
                host,
                query: raw
                    .query
                    .take()
                    .ok_or_else(|| missing("query"))?
                    .into_owned(),
                answers: ips,
                pid: raw.pid,
            })
        }
        other => return Err(ParseError::UnknownType(truncate(other))),
    }))
}

fn truncate(s: &str) -> String {
    if s.len() <= 48 {
        s.to_string()
    } else {
        let mut end = 48;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    }
}

/// The slow path: find out exactly what is wrong with a line the typed parse
/// refused.
fn diagnose(line: &str) -> ParseError {
    let value: serde_json::Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => return ParseError::NotJson(e.to_string()),
    };
    let Some(obj) = value.as_object() else {
        return ParseError::NotObject;
    };
    const STRINGS: [&str; 14] = [
        "type",
        "ts",
        "host",
        "name",
        "exe",
        "cmdline",
        "user",
        "parent_name",
        "dst_ip",
        "proto",
        "sni",
        "domain",
        "query",
        "os",
    ];
    for f in STRINGS {
        if let Some(v) = obj.get(f) {
            if !v.is_string() && !v.is_null() {
                return ParseError::Invalid {
                    field: static_name(f),
                    problem: format!("must be a string, got {}", describe(v)),
                };
            }
        }
    }
    let ints: [(&str, u64); 5] = [
        ("pid", u32::MAX.into()),
        ("ppid", u32::MAX.into()),
        ("dst_port", u16::MAX.into()),
        ("bytes_out", u64::MAX),
        ("bytes_in", u64::MAX),
    ];
    for (f, max) in ints {
        if let Some(v) = obj.get(f) {
            if v.is_null() {
                continue;
            }
            let ok = v.as_u64().is_some_and(|n| n <= max);
            if !ok {
                let problem = if v.as_i64().is_some_and(|n| n < 0) {
                    format!("must not be negative, got {v}")
                } else if v.is_number() && v.as_u64().is_none() && v.as_f64().is_some() {
                    if v.as_f64().is_some_and(|x| x.fract() != 0.0) {
                        format!("must be an integer, got {v}")
                    } else {
                        format!("is out of range (0..={max}), got {v}")
                    }
                } else if v.is_number() {
                    format!("is out of range (0..={max}), got {v}")
                } else {
                    format!("must be a non-negative integer, got {}", describe(v))
                };
                return ParseError::Invalid {
                    field: static_name(f),
                    problem,
                };
            }
        }
    }
    if let Some(v) = obj.get("answers") {
        let ok = v
            .as_array()
            .is_some_and(|a| a.iter().all(serde_json::Value::is_string));
        if !ok && !v.is_null() {
            return ParseError::Invalid {
                field: "answers",
                problem: "must be an array of strings".into(),
            };
        }
    }
    if let Some(v) = obj.get("labels") {
        let ok = v
            .as_object()
            .is_some_and(|m| m.values().all(serde_json::Value::is_string));
        if !ok && !v.is_null() {
            return ParseError::Invalid {
                field: "labels",
                problem: "must be an object of string values".into(),
            };
        }
    }
    // Everything has the right type; the typed parse failed for a reason we
    // could not pin to a field (e.g. duplicate keys).
    ParseError::NotJson("unexpected structure".into())
}

fn static_name(f: &str) -> &'static str {
    [
        "type",
        "ts",
        "host",
        "name",
        "exe",
        "cmdline",
        "user",
        "parent_name",
        "dst_ip",
        "proto",
        "sni",
        "domain",
        "query",
        "os",
        "pid",
        "ppid",
        "dst_port",
        "bytes_out",
        "bytes_in",
        "answers",
        "labels",
    ]
    .into_iter()
    .find(|n| *n == f)
    .unwrap_or("?")
}

fn describe(v: &serde_json::Value) -> String {
    let s = match v {
        serde_json::Value::Null => "null".to_string(),
        serde_json::Value::Bool(b) => format!("boolean {b}"),
        serde_json::Value::Number(n) => format!("number {n}"),
        serde_json::Value::String(s) => format!("string {:?}", truncate(s)),
        serde_json::Value::Array(_) => "an array".to_string(),
        serde_json::Value::Object(_) => "an object".to_string(),
    };
    s
}

/// A rejected line: where, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    pub line: u64,
    pub error: ParseError,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.error)
    }
}

/// Parses a buffer's bytes as a line; invalid UTF-8 is a `NotJson` error.
pub fn parse_line_bytes(line: &[u8]) -> Result<Event, ParseError> {
    parse_line_bytes_ref(line).map(EventRef::into_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A `net` line parsed as a view borrows its strings where they hold no
    /// escapes, and is the same record `parse_line` gives.
    #[test]
    fn net_views_borrow_from_the_line() {
        let plain = r#"{"type":"net","ts":"2024-05-01T12:00:01Z","host":"ws-1","pid":42,"dst_ip":"162.125.1.1","dst_port":443,"bytes_out":1000,"bytes_in":10,"sni":"content.dropboxapi.com"}"#;
        let escaped = r#"{"type":"net","ts":"2024-05-01T12:00:01Z","host":"ws\u002d1","pid":42,"dst_ip":"162.125.1.1","dst_port":443,"bytes_out":1000,"bytes_in":10,"sni":"","domain":"a.example"}"#;
        let spaced = r#" { "type" : "net", "ts":"2024-05-01T12:00:01Z","host":"h","pid":1,"dst_ip":"::1","dst_port":443,"bytes_out":1,"bytes_in":2 } "#;
        for line in [plain, escaped, spaced] {
            let view = parse_line_ref(line).unwrap();
            assert_eq!(
                view.clone().into_owned(),
                parse_line(line).unwrap(),
                "{line}"
            );
        }
        // An escape the fast scanner leaves to serde: an owned record.
        let Event::Net(n) = parse_line_ref(escaped).unwrap().into_owned() else {
            panic!("not a net record");
        };
        assert_eq!(
            (n.host.as_str(), n.sni, n.domain.as_deref()),
            ("ws-1", None, Some("a.example"))
        );
        let EventRef::Net(n) = parse_line_ref(plain).unwrap() else {
            panic!("not a net view");
        };
        assert!(matches!(n.host, Cow::Borrowed("ws-1")));
        assert!(matches!(
            n.sni,
            Some(Cow::Borrowed("content.dropboxapi.com"))
        ));
        // Other kinds come owned; errors are the same.
        let end = r#"{"type":"process_end","ts":"2024-05-01T12:01:00Z","host":"h","pid":1}"#;
        assert!(matches!(
            parse_line_ref(end),
            Ok(EventRef::Other(Event::ProcessEnd(_)))
        ));
        let bad = r#"{"type":"net","ts":"2024-05-01T12:00:01Z","host":"h","pid":1}"#;
        assert_eq!(
            parse_line_ref(bad).unwrap_err(),
            parse_line(bad).unwrap_err()
        );
    }

    #[test]
    fn parses_every_type() {
        let lines = [
            r#"{"type":"host","ts":"2024-05-01T12:00:00Z","host":"ws-1","os":"windows","labels":{"dept":"finance"}}"#,
            r#"{"type":"process_start","ts":"2024-05-01T12:00:00Z","host":"ws-1","pid":42,"name":"WINWORD.EXE","ppid":7,"exe":"C:\\Program Files\\WINWORD.EXE","user":"alice","parent_name":"explorer.exe"}"#,
            r#"{"type":"net","ts":"2024-05-01T12:00:01Z","host":"ws-1","pid":42,"dst_ip":"162.125.1.1","dst_port":443,"bytes_out":1000,"bytes_in":10,"sni":"content.dropboxapi.com"}"#,
            r#"{"type":"net","ts":"2024-05-01T12:00:01Z","host":"ws-1","pid":42,"proto":"udp","dst_ip":"2001:db8::1","dst_port":443,"bytes_out":1,"bytes_in":2}"#,
            r#"{"type":"dns","ts":"2024-05-01T12:00:00Z","host":"ws-1","query":"x.com","answers":["1.2.3.4","cname.example"]}"#,
            r#"{"type":"process_end","ts":"2024-05-01T12:01:00Z","host":"ws-1","pid":42}"#,
        ];
        for l in lines {
            let e = parse_line(l).unwrap_or_else(|e| panic!("{l}: {e}"));
            // Round trip through our writer.
            assert_eq!(parse_line(&e.to_json_line()).unwrap(), e, "{l}");
        }
        let Event::Dns(d) = parse_line(lines[4]).unwrap() else {
            panic!()
        };
        assert_eq!(d.answers.len(), 1);
    }

    /// The fast scanner and serde_json agree on every line: same event or
    /// same error.
    #[test]
    fn fast_scan_agrees_with_serde_on_edge_cases() {
        let cases = [
            r#"{"type":"net","ts":"2024-05-01T12:00:01Z","host":"ws-1","pid":42,"dst_ip":"162.125.1.1","dst_port":443,"bytes_out":1000,"bytes_in":10,"sni":"content.dropboxapi.com"}"#,
            r#" { "type" : "process_end" , "ts":"2024-05-01T12:01:00Z","host":"h","pid":1 } "#,
            r#"{"type":"process_end","ts":"2024-05-01T12:01:00Z","host":"h","pid":01}"#,
            r#"{"type":"process_end","ts":"2024-05-01T12:01:00Z","host":"h","pid":-1}"#,
            r#"{"type":"process_end","ts":"2024-05-01T12:01:00Z","host":"h","pid":1.0}"#,
            r#"{"type":"process_end","ts":"2024-05-01T12:01:00Z","host":"h","pid":4294967296}"#,
            r#"{"type":"process_end","ts":"2024-05-01T12:01:00Z","host":"h","pid":1,"pid":2}"#,
            r#"{"type":"process_end","ts":"2024-05-01T12:01:00Z","host":"h\u0041","pid":1}"#,
            r#"{"type":"process_end","ts":"2024-05-01T12:01:00Z","host":null,"pid":1}"#,
            r#"{"type":"process_end","ts":"2024-05-01T12:01:00Z","host":"h","pid":1,"x":true,"y":false,"z":"w","n":5}"#,
            r#"{"type":"process_end","ts":"2024-05-01T12:01:00Z","host":"h","pid":1,"x":tru}"#,
            r#"{"type":"process_end","ts":"2024-05-01T12:01:00Z","host":"h","pid":1}x"#,
            r#"{"type":"process_end","ts":"2024-05-01T12:01:00Z","host":"h","pid":1,}"#,
            r#"{"type":"net","ts":"2024-05-01T12:00:00Z","host":"h","pid":1,"dst_ip":"1.2.3.4","dst_port":65536,"bytes_out":1,"bytes_in":0}"#,
            r#"{"type":"net","ts":"2024-05-01T12:00:00Z","host":"h","pid":1,"dst_ip":"1.2.3.4","dst_port":443,"bytes_out":18446744073709551616,"bytes_in":0}"#,
            r#"{"type":"dns","ts":"2024-05-01T12:00:00Z","host":"ws-1","query":"x.com","answers":["1.2.3.4"]}"#,
            r#"{"type":"host","ts":"2024-05-01T12:00:00Z","host":"ws-1","labels":{"a":"b"}}"#,
            r#"{}"#,
            r#"{"#,
            r#"{"type":"process_start","ts":"2024-05-01T12:00:00Z","host":"ws-é","pid":42,"name":"WINWORD.EXE"}"#,
            "{\"type\":\"process_end\",\"ts\":\"2024-05-01T12:01:00Z\",\"host\":\"a\tb\",\"pid\":1}",
            // Escapes the scanner decodes, and those it leaves to serde.
            r#"{"type":"process_start","ts":"2024-05-01T12:00:00Z","host":"ws-1","pid":42,"name":"a.exe","exe":"C:\\Program Files\\a.exe","user":"NT AUTHORITY\\SYSTEM"}"#,
            r#"{"type":"process_start","ts":"2024-05-01T12:00:00Z","host":"ws-1","pid":42,"name":"\"q\"\/\b\f\n\r\t\\","cmdline":"\\"}"#,
            r#"{"type":"process_start","ts":"2024-05-01T12:00:00Z","host":"ws-1","pid":42,"name":"\u00e9\\"}"#,
            r#"{"type":"process_start","ts":"2024-05-01T12:00:00Z","host":"ws-1","pid":42,"name":"a\qb"}"#,
            r#"{"type":"process_start","ts":"2024-05-01T12:00:00Z","host":"ws-1","pid":42,"name":"a\"}"#,
            r#"{"type":"process_start","ts":"2024-05-01T12:00:00Z","host":"ws-1","pid":42,"name":"é\\é"}"#,
            r#"{"type":"process_start","ts":"2024-05-01T12:00:00Z","host":"ws-1","pid":42,"name":"x","n\\ame":"y"}"#,
            r#"{"type":"process_start","ts":"2024-05-01T12:00:00Z","host":"ws-1","pid":42,"name":"x","other":"C:\\x"}"#,
            r#"{"type":"process_start","ts":"2024-05-01T12:00:00Z","host":"ws-1","pid":42,"name":"x","other":"C:\u0041"}"#,
            // Numbers at the edge of the scanner's 19 digits.
            r#"{"type":"net","ts":"2024-05-01T12:00:00Z","host":"h","pid":1,"dst_ip":"1.2.3.4","dst_port":443,"bytes_out":9999999999999999999,"bytes_in":0}"#,
            r#"{"type":"net","ts":"2024-05-01T12:00:00Z","host":"h","pid":1,"dst_ip":"1.2.3.4","dst_port":443,"bytes_out":18446744073709551615,"bytes_in":0}"#,
            r#"{"type":"net","ts":"2024-05-01T12:00:00Z","host":"h","pid":1,"dst_ip":"1.2.3.4","dst_port":443,"bytes_out":10000000000000000000,"bytes_in":0,"x":123456789012345678901}"#,
            // Addresses: the hand-parsed IPv4 shape and everything around it.
            r#"{"type":"net","ts":"2024-05-01T12:00:00Z","host":"h","pid":1,"dst_ip":"01.2.3.4","dst_port":443,"bytes_out":1,"bytes_in":0}"#,
            r#"{"type":"net","ts":"2024-05-01T12:00:00Z","host":"h","pid":1,"dst_ip":"256.1.1.1","dst_port":443,"bytes_out":1,"bytes_in":0}"#,
            r#"{"type":"net","ts":"2024-05-01T12:00:00Z","host":"h","pid":1,"dst_ip":"0.0.0.0","dst_port":443,"bytes_out":1,"bytes_in":0}"#,
            r#"{"type":"net","ts":"2024-05-01T12:00:00Z","host":"h","pid":1,"dst_ip":"255.255.255.255","dst_port":443,"bytes_out":1,"bytes_in":0}"#,
            r#"{"type":"net","ts":"2024-05-01T12:00:00Z","host":"h","pid":1,"dst_ip":"1.2.3","dst_port":443,"bytes_out":1,"bytes_in":0}"#,
            r#"{"type":"net","ts":"2024-05-01T12:00:00Z","host":"h","pid":1,"dst_ip":"1.2.3.4.5","dst_port":443,"bytes_out":1,"bytes_in":0}"#,
            r#"{"type":"net","ts":"2024-05-01T12:00:00Z","host":"h","pid":1,"dst_ip":" 1.2.3.4","dst_port":443,"bytes_out":1,"bytes_in":0}"#,
            r#"{"type":"net","ts":"2024-05-01T12:00:00Z","host":"h","pid":1,"dst_ip":"::ffff:1.2.3.4","dst_port":443,"bytes_out":1,"bytes_in":0}"#,
            // Timestamps off the plain shape.
            r#"{"type":"process_end","ts":"2024-05-01T14:01:00.25+02:00","host":"h","pid":1}"#,
            r#"{"type":"process_end","ts":"2016-12-31T23:59:60.5Z","host":"h","pid":1}"#,
            r#"{"type":"process_end","ts":"2024-05-01 12:01:00z","host":"h","pid":1}"#,
            r#"{"type":"process_end","ts":"2023-02-29T12:01:00Z","host":"h","pid":1}"#,
            // Whitespace `trim` removes but the scanner does not skip.
            "\u{a0}{\"type\":\"process_end\",\"ts\":\"2024-05-01T12:01:00Z\",\"host\":\"h\",\"pid\":1}\u{b}",
        ];
        for l in cases {
            assert_eq!(parse_line(l), parse_line_serde(l.trim()), "{l}");
        }
    }

    fn arb_json_line() -> impl Strategy<Value = String> {
        let key = prop::sample::select(vec![
            "type",
            "ts",
            "host",
            "pid",
            "name",
            "ppid",
            "exe",
            "dst_ip",
            "dst_port",
            "bytes_out",
            "bytes_in",
            "sni",
            "proto",
            "domain",
            "query",
            "answers",
            "labels",
            "os",
            "extra",
        ]);
        let value = prop::sample::select(vec![
            r#""net""#,
            r#""process_start""#,
            r#""process_end""#,
            r#""dns""#,
            r#""host""#,
            r#""2024-05-01T12:00:00Z""#,
            r#""ws-1""#,
            r#""1.2.3.4""#,
            r#""2001:db8::1""#,
            r#""a"b""#,
            r#""xA""#,
            r#""é""#,
            r#""""#,
            r#""tcp""#,
            r#""udp""#,
            "0",
            "42",
            "443",
            "007",
            "-1",
            "1.5",
            "1e3",
            "18446744073709551616",
            "4294967296",
            "65536",
            "null",
            "true",
            "false",
            "[1]",
            "{}",
            r#"["1.2.3.4","c.example"]"#,
            r#"{"k":"v"}"#,
            r#""C:\\Program Files\\x.exe""#,
            r#""\"\/\b\f\n\r\t""#,
            r#""\u0041""#,
            r#""a\x""#,
            r#""01.2.3.4""#,
            r#""256.1.1.1""#,
            r#""1.2.3.04""#,
            r#""1.2.3""#,
            r#""10.0.0.255""#,
            r#""2024-05-01T12:00:00.123456Z""#,
            r#""2024-05-01T14:00:00.5+02:00""#,
            r#""2016-12-31T23:59:60Z""#,
            r#""2023-02-29T12:00:00Z""#,
            "9999999999999999999",
            "18446744073709551615",
        ]);
        let ws = prop::sample::select(vec!["", " ", "	", "  "]);
        prop::collection::vec((key, value, ws), 0..12).prop_map(|pairs| {
            let body: Vec<String> = pairs
                .iter()
                .map(|(k, v, w)| format!("{w}\"{k}\"{w}:{w}{v}{w}"))
                .collect();
            format!("{{{}}}", body.join(","))
        })
    }

    proptest::proptest! {
        #[test]
        fn fast_scan_agrees_with_serde(line in arb_json_line()) {
            proptest::prop_assert_eq!(parse_line(&line), parse_line_serde(line.trim()), "{}", line);
        }
    }

    /// A canonical `net` line built from its values' JSON texts.
    fn net_json(
        ts: &str,
        host: &str,
        pid: &str,
        ip: &str,
        nums: [&str; 3],
        sni: Option<&str>,
    ) -> String {
        let [port, out, inb] = nums;
        let sni = sni.map(|s| format!(",\"sni\":{s}")).unwrap_or_default();
        format!(
            "{{\"type\":\"net\",\"ts\":{ts},\"host\":{host},\"pid\":{pid},\"dst_ip\":{ip},\"dst_port\":{port},\"bytes_out\":{out},\"bytes_in\":{inb}{sni}}}"
        )
    }

    /// The one-pass `net` reader takes the usual lines, declines the
    /// others, and gives exactly what the general path gives on both.
    #[test]
    fn net_fast_path_agrees_with_the_general_path_on_edge_cases() {
        let ts = r#""2024-05-01T12:00:01.250Z""#;
        let fast = [
            net_json(
                ts,
                r#""ws-1""#,
                "42",
                r#""162.125.1.1""#,
                ["443", "1000", "10"],
                Some(r#""a.dropbox.com""#),
            ),
            net_json(ts, r#""ws-1""#, "0", r#""0.0.0.0""#, ["0", "0", "0"], None),
            net_json(
                ts,
                r#""h""#,
                "4294967295",
                r#""1.2.3.4""#,
                ["65535", "9999999999999999999", "1"],
                Some(r#""""#),
            ),
            net_json(
                ts,
                "\"a\u{7f}b\"",
                "1",
                r#""1.2.3.4""#,
                ["1", "1", "1"],
                Some(r#""~ !x""#),
            ),
            // RFC 3339 allows a space for the `T`.
            net_json(
                r#""2024-05-01 12:00:01Z""#,
                r#""h""#,
                "1",
                r#""1.2.3.4""#,
                ["1", "1", "1"],
                None,
            ),
        ];
        // A valid line with host `h`, and `sni` if given.
        let plain = |sni| net_json(ts, r#""h""#, "1", r#""1.2.3.4""#, ["1", "1", "1"], sni);
        // A valid line with one field's JSON text replaced.
        let with = |field: &str, text: &'static str| {
            let mut f = [
                ("ts", ts),
                ("host", r#""h""#),
                ("pid", "1"),
                ("dst_ip", r#""1.2.3.4""#),
                ("dst_port", "1"),
                ("bytes_out", "1"),
                ("bytes_in", "1"),
            ];
            f.iter_mut().find(|(k, _)| *k == field).expect("a field").1 = text;
            net_json(
                f[0].1,
                f[1].1,
                f[2].1,
                f[3].1,
                [f[4].1, f[5].1, f[6].1],
                None,
            )
        };
        let declined = [
            // Not in the fast path's shape, or not valid: the general path decides.
            with("host", r#""""#),
            with("host", r#""ws\u002d1""#),
            with("host", r#""ws\\1""#),
            with("host", r#""wé""#),
            with("host", "\"a\tb\""),
            with("host", "1"),
            with("pid", "01"),
            with("pid", "-1"),
            with("pid", "4294967296"),
            with("dst_port", "65536"),
            with("bytes_out", "18446744073709551615"),
            with("bytes_out", "1.5"),
            with("bytes_in", "null"),
            with("dst_ip", r#""2001:db8::1""#),
            with("dst_ip", r#""01.2.3.4""#),
            with("dst_ip", r#""1.2.3.4.5""#),
            with("ts", r#""2023-02-29T12:00:00Z""#),
            with("ts", r#""yesterday""#),
            plain(Some("7")),
            plain(None) + " ",
            plain(None) + "}",
            plain(None).replace("}", ",\"proto\":\"udp\"}"),
            plain(Some(r#""s""#)).replace("}", ",\"domain\":\"d.example\"}"),
            plain(Some(r#""s""#)).replace("}", ",\"sni\":\"t\"}"),
            plain(None).replace("\"pid\":1,", ""),
            plain(None).replace(":\"net\"", ":\"Net\""),
            plain(None).replace(",", " ,"),
        ];
        for line in fast.iter().chain(&declined) {
            assert_eq!(
                parse_line_bytes_ref(line.as_bytes()),
                parse_line_bytes_general(line.as_bytes()),
                "{line}"
            );
        }
        for line in &fast {
            assert!(
                crate::fastjson::net_line(line.as_bytes()).is_some(),
                "{line}"
            );
        }
        for line in &declined {
            assert!(
                crate::fastjson::net_line(line.as_bytes()).is_none(),
                "{line}"
            );
        }
        // Bytes that are not UTF-8 in a string: declined, and the general
        // path's error.
        let mut bad = fast[0].clone().into_bytes();
        let at = bad.windows(4).position(|w| w == b"ws-1").expect("host");
        bad[at + 2] = 0xff;
        assert!(crate::fastjson::net_line(&bad).is_none());
        assert!(matches!(
            parse_line_bytes_ref(&bad),
            Err(ParseError::NotJson(_))
        ));
    }

    /// Canonical `net` lines with odd values, and such lines with a byte
    /// changed, cut or inserted: the fast path and the general one agree.
    fn arb_net_line() -> impl Strategy<Value = Vec<u8>> {
        // Each field usually valid, sometimes odd: a line with one odd field.
        fn field(
            valid: &'static [&'static str],
            odd: &'static [&'static str],
        ) -> impl Strategy<Value = &'static str> + Clone {
            prop_oneof![
                6 => prop::sample::select(valid),
                1 => prop::sample::select(odd),
            ]
        }
        const ODD: &[&str] = &[
            r#""""#,
            r#""a\"b""#,
            r#""\u0041""#,
            r#""é""#,
            "\"\u{1}\"",
            "\"x\u{7f}\"",
            "007",
            "-1",
            "1e3",
            "1.0",
            "null",
            "true",
            "18446744073709551616",
            r#""::1""#,
        ];
        let ts = field(
            &[
                r#""2024-05-01T12:00:00Z""#,
                r#""2024-05-01T12:00:00.123456Z""#,
                r#""2024-05-01T14:00:00.5+02:00""#,
            ],
            &[r#""2023-02-29T12:00:00Z""#, r#""2024-05-01""#, "0"],
        );
        let host = field(&[r#""ws-1""#, r#""srv-0010.corp""#], ODD);
        let ip = field(
            &[r#""1.2.3.4""#, r#""255.255.255.255""#],
            &[r#""1.2.3.04""#, r#""::ffff:1.2.3.4""#, r#""1.2.3""#, "7"],
        );
        let num = |big: &'static [&'static str]| field(big, ODD);
        let line = (
            ts,
            host,
            num(&["0", "7", "4294967295", "4294967296"]),
            ip,
            (
                num(&["443", "65535", "65536"]),
                num(&["0", "9999999999999999999", "1"]),
                num(&["12", "0"]),
            ),
            prop::option::of(field(&[r#""a.example""#, r#""""#], ODD)),
        )
            .prop_map(|(ts, host, pid, ip, (port, out, inb), sni)| {
                net_json(ts, host, pid, ip, [port, out, inb], sni).into_bytes()
            });
        let canonical = net_json(
            r#""2024-05-01T12:00:01.250Z""#,
            r#""ws-0042""#,
            "4242",
            r#""13.107.42.12""#,
            ["443", "123456", "789"],
            Some(r#""my.microsoftpersonalcontent.com""#),
        )
        .into_bytes();
        let edited = (0..canonical.len(), any::<u8>(), 0..3u8).prop_map(move |(at, byte, how)| {
            let mut l = canonical.clone();
            match how {
                0 => l[at] = byte,
                1 => l.truncate(at),
                _ => l.insert(at, byte),
            }
            l
        });
        prop_oneof![line, edited]
    }

    proptest::proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]
        #[test]
        fn net_fast_path_agrees_with_the_general_path(line in arb_net_line()) {
            proptest::prop_assert_eq!(
                parse_line_bytes_ref(&line),
                parse_line_bytes_general(&line),
                "{}", String::from_utf8_lossy(&line)
            );
        }
    }

    /// The hand-parsed IPv4 shape gives what the standard library gives.
    #[test]
    fn plain_ipv4_agrees_with_std_on_edge_cases() {
        for s in [
            "0.0.0.0",
            "1.2.3.4",
            "255.255.255.255",
            "01.2.3.4",
            "1.2.3.04",
            "00.0.0.0",
            "256.1.1.1",
            "1.2.3.256",
            "1000.1.1.1",
            "1.2.3",
            "1.2.3.4.5",
            "1.2.3.",
            ".1.2.3",
            "1..2.3",
            "1.2.3.4 ",
            "+1.2.3.4",
            "1.2.3.-4",
            "",
            "::1",
            "::ffff:1.2.3.4",
        ] {
            if let Some(v4) = parse_plain_ipv4(s.as_bytes()) {
                assert_eq!(Ok(IpAddr::V4(v4)), s.parse::<IpAddr>(), "{s}");
            }
            assert_eq!(parse_ip(s), s.parse().ok(), "{s}");
        }
    }

    proptest::proptest! {
        #[test]
        fn plain_ipv4_agrees_with_std(s in "[0-9]{0,4}(\\.[0-9]{0,4}){0,4}") {
            if let Some(v4) = parse_plain_ipv4(s.as_bytes()) {
                proptest::prop_assert_eq!(Ok(IpAddr::V4(v4)), s.parse::<IpAddr>(), "{}", s);
            }
            proptest::prop_assert_eq!(parse_ip(&s), s.parse().ok(), "{}", s);
        }

        #[test]
        fn plain_ipv4_reads_every_address(a in proptest::num::u32::ANY) {
            let ip = Ipv4Addr::from(a);
            proptest::prop_assert_eq!(parse_plain_ipv4(ip.to_string().as_bytes()), Some(ip));
        }
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let l = r#"{"type":"process_end","ts":"2024-05-01T12:01:00Z","host":"h","pid":1,"extra":{"a":[1,2]}}"#;
        assert!(parse_line(l).is_ok());
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("not json", "not_json", ""),
            ("[1,2]", "not_object", ""),
            (
                r#"{"type":"net","ts":"2024-05-01T12:00:00Z","host":"h","pid":1,"dst_ip":"1.2.3.4","dst_port":443,"bytes_out":-5,"bytes_in":0}"#,
                "invalid_field",
                "bytes_out",
            ),
            (
                r#"{"type":"net","ts":"2024-05-01T12:00:00Z","host":"h","pid":1,"dst_ip":"1.2.3.4","dst_port":443,"bytes_out":1e30,"bytes_in":0}"#,
                "invalid_field",
                "bytes_out",
            ),
            (
                r#"{"type":"net","ts":"2024-05-01T12:00:00Z","host":"h","pid":1,"dst_ip":"1.2.3.4","dst_port":443,"bytes_out":99999999999999999999999,"bytes_in":0}"#,
                "invalid_field",
                "bytes_out",
            ),
            (
                r#"{"type":"net","ts":"2024-05-01T12:00:00Z","host":"h","pid":"x","dst_ip":"1.2.3.4","dst_port":443,"bytes_out":1,"bytes_in":0}"#,
                "invalid_field",
                "pid",
            ),
            (
                r#"{"type":"net","ts":"2024-05-01T12:00:00Z","host":"h","pid":1,"dst_ip":"1.2.3.4","dst_port":70000,"bytes_out":1,"bytes_in":0}"#,
                "invalid_field",
                "dst_port",
            ),
            (
                r#"{"type":"net","ts":"2024-05-01T12:00:00Z","host":"h","pid":1,"dst_ip":"nope","dst_port":443,"bytes_out":1,"bytes_in":0}"#,
                "invalid_field",
                "dst_ip",
            ),
            (
                r#"{"type":"net","ts":"2024-05-01T12:00:00Z","host":"h","pid":1,"dst_port":443,"bytes_out":1,"bytes_in":0}"#,
                "missing_field",
                "dst_ip",
            ),
            (
                r#"{"type":"net","ts":"yesterday","host":"h","pid":1,"dst_ip":"1.2.3.4","dst_port":443,"bytes_out":1,"bytes_in":0}"#,
                "invalid_field",
                "ts",
            ),
            (
                r#"{"type":"telepathy","ts":"2024-05-01T12:00:00Z","host":"h"}"#,
                "unknown_type",
                "telepathy",
            ),
            (
                r#"{"ts":"2024-05-01T12:00:00Z","host":"h"}"#,
                "missing_field",
                "type",
            ),
            (
                r#"{"type":"dns","ts":"2024-05-01T12:00:00Z","host":"h","query":"a","answers":"1.2.3.4"}"#,
                "invalid_field",
                "answers",
            ),
            ("   ", "empty_line", ""),
        ];
        for (line, key, mention) in cases {
            let err = parse_line(line).expect_err(line);
            assert_eq!(err.reason_key(), key, "{line}: {err}");
            assert!(err.to_string().contains(mention), "{line}: {err}");
        }
        assert_eq!(
            parse_line_bytes(b"\xff\xfe{").unwrap_err().reason_key(),
            "not_json"
        );
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_arbitrary_input(s in "\\PC*") {
            let _ = parse_line(&s);
        }

        #[test]
        fn never_panics_on_arbitrary_bytes(b in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = parse_line_bytes(&b);
        }

        #[test]
        fn net_round_trips(pid in 0u32.., port in 0u16.., out in 0u64.., inb in 0u64.., secs in 0i64..4_000_000_000i64, sni in proptest::option::of("[a-z.]{1,20}")) {
            let e = Event::Net(NetRecord {
                ts: Timestamp::from_secs(secs), host: "h\"1".into(), pid, proto: Transport::Tcp,
                dst_ip: "10.0.0.1".parse().unwrap(), dst_port: port, bytes_out: out, bytes_in: inb,
                sni, domain: None,
            });
            proptest::prop_assert_eq!(parse_line(&e.to_json_line()).unwrap(), e);
        }
    }
}
