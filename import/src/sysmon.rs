//! Sysmon event records as JSON lines, in the two shapes shippers write:
//!
//! - NXLog (`im_msvistalog` + `to_json`): one flat object per event, the
//!   event data fields at the top level beside `EventID`, `Channel`,
//!   `Hostname`.
//! - Winlogbeat / Elastic Agent: `winlog.event_id`, `winlog.channel`,
//!   `winlog.computer_name`, the fields under `winlog.event_data`.
//!
//! Used: EventID 1 (process create), 3 (network connection), 5 (process
//! terminated), 22 (DNS query). Every other Sysmon event is counted as
//! skipped, but still read for ProcessGuid → ProcessId pairs, because NXLog
//! records often lack `ProcessId`. Records of other channels (Security,
//! PowerShell…) in the same file are skipped.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::net::IpAddr;
use std::path::Path;

use outflow_core::telemetry::Transport;
use outflow_core::Timestamp;
use serde_json::{Map, Value};

use crate::flow::parse_ip;
use crate::report::{ImportReport, SourceKind};
use crate::source::{for_each_input, for_each_line};

const SYSMON_CHANNEL: &str = "Microsoft-Windows-Sysmon/Operational";
const SYSMON_PROVIDER: &str = "Microsoft-Windows-Sysmon";

/// EventID 1.
#[derive(Clone, Debug)]
pub struct SysStart {
    pub ts: Timestamp,
    pub host: String,
    pub guid: String,
    pub pid: Option<u32>,
    pub image: String,
    pub cmdline: Option<String>,
    pub user: Option<String>,
    pub parent_guid: Option<String>,
    pub parent_pid: Option<u32>,
    pub parent_image: Option<String>,
}

/// EventID 5.
#[derive(Clone, Debug)]
pub struct SysEnd {
    pub ts: Timestamp,
    pub host: String,
    pub guid: String,
    pub pid: Option<u32>,
}

/// EventID 3: a process and the 5-tuple of one of its connections, as the
/// logging host sees it (`src` is local when `initiated`).
#[derive(Clone, Debug)]
pub struct SysConn {
    pub ts: Timestamp,
    pub host: String,
    pub guid: String,
    pub pid: Option<u32>,
    pub image: Option<String>,
    pub user: Option<String>,
    pub proto: Transport,
    pub src: (IpAddr, u16),
    pub dst: (IpAddr, u16),
    pub initiated: bool,
    /// `DestinationHostname`, when Sysmon resolved one.
    pub dst_hostname: Option<String>,
    pub location: String,
}

/// EventID 22.
#[derive(Clone, Debug)]
pub struct SysDns {
    pub ts: Timestamp,
    pub host: String,
    pub guid: Option<String>,
    pub pid: Option<u32>,
    pub query: String,
    pub answers: Vec<IpAddr>,
}

/// What we know about a process from any event that named its GUID.
#[derive(Clone, Debug)]
pub struct ProcInfo {
    pub host: String,
    pub image: Option<String>,
    pub user: Option<String>,
    pub first_seen: Timestamp,
}

/// Everything read from Sysmon sources, before pids are resolved.
#[derive(Clone, Debug, Default)]
pub struct SysmonLog {
    pub starts: Vec<SysStart>,
    pub ends: Vec<SysEnd>,
    pub conns: Vec<SysConn>,
    pub dns: Vec<SysDns>,
    /// ProcessGuid → ProcessId, from any event that carried both.
    pub guid_pid: HashMap<String, u32>,
    /// ProcessGuid → what was seen of it.
    pub procs: HashMap<String, ProcInfo>,
    /// Local addresses of each host (from EventID 3), with how often seen.
    pub ip_hosts: HashMap<IpAddr, BTreeMap<String, u64>>,
    /// Every host that sent Sysmon records, with its first record's time.
    pub hosts: BTreeMap<String, Timestamp>,
}

/// Reads one file (or zip of files) of Sysmon JSON lines into `log`.
pub fn read_path(path: &Path, log: &mut SysmonLog, report: &mut ImportReport) {
    for_each_input(path, SourceKind::Sysmon, report, |name, reader, report| {
        read_reader(name, reader, log, report);
    });
}

/// Reads Sysmon JSON lines from `reader`; `name` locates errors.
pub fn read_reader(
    name: &str,
    reader: &mut dyn Read,
    log: &mut SysmonLog,
    report: &mut ImportReport,
) {
    let res = for_each_line(reader, |n, line| {
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        report.sysmon.records += 1;
        if let Err((key, detail)) = parse_record(line, name, n, log, report) {
            report.reject(SourceKind::Sysmon, format!("{name}:{n}"), key, detail);
        }
    });
    if let Err((n, e)) = res {
        report.reject(
            SourceKind::Sysmon,
            format!("{name}:{n}"),
            "read_error",
            format!("input ends with a read error (lines before it were imported): {e}"),
        );
    }
}

type Bad = (&'static str, String);

/// A view over one record's fields, whichever shipper wrote it.
struct Fields<'a> {
    top: &'a Map<String, Value>,
    data: Option<&'a Map<String, Value>>,
    winlog: Option<&'a Map<String, Value>>,
}

impl<'a> Fields<'a> {
    fn new(top: &'a Map<String, Value>) -> Self {
        let winlog = top.get("winlog").and_then(Value::as_object);
        let data = winlog
            .and_then(|w| w.get("event_data"))
            .and_then(Value::as_object)
            .or_else(|| top.get("EventData").and_then(Value::as_object));
        Fields { top, data, winlog }
    }

    fn raw(&self, k: &str) -> Option<&'a Value> {
        self.data
            .and_then(|d| d.get(k))
            .or_else(|| self.top.get(k))
            .filter(|v| !v.is_null())
    }

    /// A field as text (numbers and booleans too); `-` and "" count as absent.
    fn str(&self, k: &str) -> Option<String> {
        let s = match self.raw(k)? {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => return None,
        };
        let t = s.trim();
        if t.is_empty() || t == "-" {
            None
        } else if t.len() == s.len() {
            Some(s)
        } else {
            Some(t.to_string())
        }
    }

    fn need(&self, k: &'static str) -> Result<String, Bad> {
        self.str(k)
            .ok_or_else(|| ("missing_field", format!("missing field `{k}`")))
    }

    fn u32(&self, k: &'static str) -> Result<Option<u32>, Bad> {
        match self.str(k) {
            None => Ok(None),
            Some(s) => parse_u32(&s).map(Some).ok_or_else(|| {
                (
                    "invalid_field",
                    format!("field `{k}` is not a process id: {s:?}"),
                )
            }),
        }
    }

    fn event_id(&self) -> Result<u32, Bad> {
        let v = self
            .winlog
            .and_then(|w| w.get("event_id"))
            .or_else(|| self.top.get("EventID"))
            .or_else(|| self.top.get("event_id"))
            // Elastic Common Schema: `event.code` ("3").
            .or_else(|| {
                self.top
                    .get("event")
                    .and_then(Value::as_object)
                    .and_then(|e| e.get("code"))
            });
        let Some(v) = v else {
            return Err(("missing_field", "missing field `EventID`".into()));
        };
        let n = match v {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.trim().parse::<u64>().ok(),
            _ => None,
        };
        n.and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| ("invalid_field", format!("`EventID` is not a number: {v}")))
    }

    fn channel(&self) -> Option<String> {
        self.winlog
            .and_then(|w| w.get("channel"))
            .or_else(|| self.top.get("Channel"))
            .and_then(Value::as_str)
            .map(str::to_string)
    }

    fn provider(&self) -> Option<String> {
        self.winlog
            .and_then(|w| w.get("provider_name"))
            .or_else(|| self.top.get("SourceName"))
            .or_else(|| self.top.get("ProviderName"))
            .and_then(Value::as_str)
            .map(str::to_string)
    }

    fn host(&self) -> Option<String> {
        let direct = ["Hostname", "Computer", "ComputerName"]
            .iter()
            .find_map(|k| self.top.get(*k).and_then(Value::as_str))
            .or_else(|| {
                self.winlog
                    .and_then(|w| w.get("computer_name"))
                    .and_then(Value::as_str)
            })
            .or_else(|| {
                self.top
                    .get("host")
                    .and_then(Value::as_object)
                    .and_then(|h| h.get("name"))
                    .and_then(Value::as_str)
            });
        direct
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    }

    /// The event's time in UTC: Sysmon's own `UtcTime`, else the shipper's
    /// `@timestamp`. NXLog's `EventTime` is local time without a zone, so it
    /// is used only when it carries an offset.
    fn ts(&self) -> Result<Timestamp, Bad> {
        if let Some(s) = self.str("UtcTime") {
            return parse_sysmon_utc(&s).ok_or_else(|| {
                (
                    "invalid_field",
                    format!("`UtcTime` is not a UTC time (YYYY-MM-DD hh:mm:ss.fff): {s:?}"),
                )
            });
        }
        for k in ["@timestamp", "EventTime", "TimeCreated"] {
            if let Some(s) = self.top.get(k).and_then(Value::as_str) {
                if let Ok(t) = Timestamp::parse_rfc3339(s) {
                    return Ok(t);
                }
            }
        }
        Err((
            "missing_field",
            "no time with a zone: `UtcTime` missing and no RFC 3339 `@timestamp`".into(),
        ))
    }
}

fn parse_u32(s: &str) -> Option<u32> {
    let s = s.trim();
    if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u32::from_str_radix(h, 16).ok()
    } else {
        s.parse().ok()
    }
}

/// Sysmon's `UtcTime`: `2020-09-20 16:16:37.523` (UTC, no zone marker).
pub fn parse_sysmon_utc(s: &str) -> Option<Timestamp> {
    let s = s.trim();
    if s.len() < 19 || !s.is_char_boundary(10) || !s.is_char_boundary(11) {
        return None;
    }
    // Already RFC 3339 with a zone? Take it as it is.
    if let Ok(t) = Timestamp::parse_rfc3339(s) {
        return Some(t);
    }
    let (date, rest) = s.split_at(10);
    let rest = rest.strip_prefix(' ').or_else(|| rest.strip_prefix('T'))?;
    Timestamp::parse_rfc3339(&format!("{date}T{rest}Z")).ok()
}

fn is_known_sysmon_id(id: u32) -> bool {
    (1..=29).contains(&id) || id == 255
}

fn parse_record(
    line: &[u8],
    name: &str,
    n: u64,
    log: &mut SysmonLog,
    report: &mut ImportReport,
) -> Result<(), Bad> {
    let value: Value =
        serde_json::from_slice(line).map_err(|e| ("not_json", format!("not valid JSON: {e}")))?;
    let Some(obj) = value.as_object() else {
        return Err(("not_object", "not a JSON object".into()));
    };
    let f = Fields::new(obj);
    let channel = f.channel();
    let provider = f.provider();
    let is_sysmon = match (&channel, &provider) {
        (Some(c), _) if c.eq_ignore_ascii_case(SYSMON_CHANNEL) => true,
        (_, Some(p)) if p.eq_ignore_ascii_case(SYSMON_PROVIDER) => true,
        // No channel or provider at all: take it if it looks like Sysmon.
        (None, None) => f.raw("UtcTime").is_some() && f.raw("ProcessGuid").is_some(),
        _ => false,
    };
    if !is_sysmon {
        report.skip(SourceKind::Sysmon, "other channels");
        return Ok(());
    }
    let id = f.event_id()?;
    if !is_known_sysmon_id(id) {
        return Err((
            "unknown_event_id",
            format!("unknown Sysmon EventID {id} (Sysmon defines 1-29 and 255)"),
        ));
    }
    harvest_pids(&f, log);
    if !matches!(id, 1 | 3 | 5 | 22) {
        report.skip(SourceKind::Sysmon, &format!("EventID {id} (not used)"));
        return Ok(());
    }
    let host = f.host().ok_or_else(|| {
        (
            "missing_field",
            "missing field `Hostname` (or winlog.computer_name)".to_string(),
        )
    })?;
    let ts = f.ts()?;
    match id {
        1 => {
            let guid = f.need("ProcessGuid")?;
            let image = f.need("Image")?;
            let s = SysStart {
                ts,
                host: host.clone(),
                pid: f.u32("ProcessId")?,
                cmdline: f.str("CommandLine"),
                user: f.str("User"),
                parent_guid: f.str("ParentProcessGuid"),
                parent_pid: f.u32("ParentProcessId")?,
                parent_image: f.str("ParentImage"),
                guid,
                image,
            };
            note_proc(log, &s.guid, &host, ts, Some(&s.image), s.user.as_deref());
            log.starts.push(s);
        }
        5 => {
            let guid = f.need("ProcessGuid")?;
            note_proc(log, &guid, &host, ts, f.str("Image").as_deref(), None);
            log.ends.push(SysEnd {
                ts,
                host: host.clone(),
                pid: f.u32("ProcessId")?,
                guid,
            });
        }
        3 => {
            let guid = f.need("ProcessGuid")?;
            let proto = match f.need("Protocol")?.to_ascii_lowercase().as_str() {
                "tcp" => Transport::Tcp,
                "udp" => Transport::Udp,
                other => {
                    return Err((
                        "invalid_field",
                        format!("`Protocol` must be tcp or udp, got {other:?}"),
                    ))
                }
            };
            let ip = |k: &'static str| -> Result<IpAddr, Bad> {
                let s = f.need(k)?;
                parse_ip(&s).ok_or_else(|| {
                    (
                        "invalid_field",
                        format!("`{k}` is not an IP address: {s:?}"),
                    )
                })
            };
            let port = |k: &'static str| -> Result<u16, Bad> {
                let s = f.need(k)?;
                s.trim()
                    .parse::<u16>()
                    .map_err(|_| ("invalid_field", format!("`{k}` is not a port: {s:?}")))
            };
            let initiated = match f.need("Initiated")?.to_ascii_lowercase().as_str() {
                "true" | "1" => true,
                "false" | "0" => false,
                other => {
                    return Err((
                        "invalid_field",
                        format!("`Initiated` must be true or false, got {other:?}"),
                    ))
                }
            };
            let c = SysConn {
                ts,
                host: host.clone(),
                pid: f.u32("ProcessId")?,
                image: f.str("Image"),
                user: f.str("User"),
                proto,
                src: (ip("SourceIp")?, port("SourcePort")?),
                dst: (ip("DestinationIp")?, port("DestinationPort")?),
                initiated,
                dst_hostname: f
                    .str("DestinationHostname")
                    .map(|h| h.trim_end_matches('.').to_ascii_lowercase()),
                location: format!("{name}:{n}"),
                guid,
            };
            let local = if initiated { c.src.0 } else { c.dst.0 };
            if !local.is_loopback() && !local.is_unspecified() {
                *log.ip_hosts
                    .entry(local)
                    .or_default()
                    .entry(host.clone())
                    .or_default() += 1;
            }
            note_proc(
                log,
                &c.guid,
                &host,
                ts,
                c.image.as_deref(),
                c.user.as_deref(),
            );
            log.conns.push(c);
        }
        22 => {
            let query = f.need("QueryName")?;
            let answers = f
                .str("QueryResults")
                .map(|r| {
                    r.split(';')
                        .filter_map(|t| parse_ip(t.trim()))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            let guid = f.str("ProcessGuid");
            if let Some(g) = &guid {
                note_proc(log, g, &host, ts, f.str("Image").as_deref(), None);
            }
            log.dns.push(SysDns {
                ts,
                host: host.clone(),
                pid: f.u32("ProcessId")?,
                guid,
                query,
                answers,
            });
        }
        _ => unreachable!("filtered above"),
    }
    let first = log.hosts.entry(host).or_insert(ts);
    *first = (*first).min(ts);
    report.sysmon.used += 1;
    Ok(())
}

fn note_proc(
    log: &mut SysmonLog,
    guid: &str,
    host: &str,
    ts: Timestamp,
    image: Option<&str>,
    user: Option<&str>,
) {
    let e = log
        .procs
        .entry(guid.to_string())
        .or_insert_with(|| ProcInfo {
            host: host.to_string(),
            image: None,
            user: None,
            first_seen: ts,
        });
    e.first_seen = e.first_seen.min(ts);
    if e.image.is_none() {
        e.image = image.map(str::to_string);
    }
    if e.user.is_none() {
        e.user = user.map(str::to_string);
    }
}

/// Collects every (GUID, pid) pair a Sysmon record carries.
fn harvest_pids(f: &Fields<'_>, log: &mut SysmonLog) {
    const PAIRS: [(&str, &str); 6] = [
        ("ProcessGuid", "ProcessId"),
        ("ParentProcessGuid", "ParentProcessId"),
        ("SourceProcessGUID", "SourceProcessId"),
        ("TargetProcessGUID", "TargetProcessId"),
        ("SourceProcessGuid", "SourceProcessId"),
        ("TargetProcessGuid", "TargetProcessId"),
    ];
    for (g, p) in PAIRS {
        if let (Some(guid), Some(pid)) = (f.str(g), f.str(p).and_then(|s| parse_u32(&s))) {
            if pid != 0 {
                log.guid_pid.entry(guid).or_insert(pid);
            }
        }
    }
}

/// The start time Sysmon encodes in a ProcessGuid
/// (`{mmmmmmmm-LLLL-HHHH-…}`: the second and third groups are the low and
/// high 16 bits of the process's start time in seconds since the epoch).
pub fn guid_start_time(guid: &str) -> Option<Timestamp> {
    let g = guid.trim_matches(|c| c == '{' || c == '}');
    let mut parts = g.split('-');
    let _machine = parts.next()?;
    let low = u32::from_str_radix(parts.next()?, 16).ok()?;
    let high = u32::from_str_radix(parts.next()?, 16).ok()?;
    if low > 0xffff || high > 0xffff {
        return None;
    }
    let secs = (high << 16) | low;
    // Plausible only between 2000 and 2100.
    (946_684_800..4_102_444_800)
        .contains(&i64::from(secs))
        .then(|| Timestamp::from_secs(i64::from(secs)))
}

/// A stable pid for a process whose Sysmon records carry no ProcessId:
/// FNV-1a of the GUID, with the top bit set so it never collides with a real
/// Windows pid (multiples of 4 well below 2^31) and is never 0.
pub fn synthetic_pid(guid: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in guid.to_ascii_lowercase().bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    0x8000_0000 | (h & 0x7fff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> (SysmonLog, ImportReport) {
        let mut log = SysmonLog::default();
        let mut report = ImportReport::default();
        read_reader("t.json", &mut text.as_bytes(), &mut log, &mut report);
        (log, report)
    }

    #[test]
    fn nxlog_and_winlogbeat_shapes() {
        let nx = r#"{"EventID":1,"Channel":"Microsoft-Windows-Sysmon/Operational","Hostname":"WS1.corp","ProcessGuid":"{a-5f678078-0000}","ProcessId":"4242","Image":"C:\\Windows\\WINWORD.EXE","CommandLine":"winword /q","User":"CORP\\alice","ParentImage":"C:\\Windows\\explorer.exe","ParentProcessId":"100","ParentProcessGuid":"{p}","UtcTime":"2024-05-01 12:00:00.250","EventTime":"2024-05-01 08:00:00"}"#;
        let wb = r#"{"@timestamp":"2024-05-01T12:00:05.000Z","winlog":{"event_id":"3","channel":"Microsoft-Windows-Sysmon/Operational","computer_name":"WS2.corp","event_data":{"ProcessGuid":"{b}","ProcessId":"77","Image":"C:\\x\\powershell.exe","Protocol":"tcp","Initiated":"true","SourceIp":"10.0.0.2","SourcePort":"50000","DestinationIp":"162.125.1.1","DestinationPort":"443","UtcTime":"2024-05-01 12:00:04.000"}}}"#;
        let (log, report) = read(&format!("{nx}\n{wb}\n"));
        assert_eq!(report.sysmon.rejected, 0, "{report}");
        assert_eq!(log.starts.len(), 1);
        let s = &log.starts[0];
        assert_eq!((s.pid, s.parent_pid), (Some(4242), Some(100)));
        assert_eq!(
            s.ts,
            Timestamp::parse_rfc3339("2024-05-01T12:00:00.25Z").unwrap()
        );
        assert_eq!(log.conns.len(), 1);
        let c = &log.conns[0];
        assert_eq!(c.host, "WS2.corp");
        assert!(c.initiated);
        assert_eq!(c.dst, ("162.125.1.1".parse().unwrap(), 443));
        assert_eq!(log.guid_pid.get("{b}"), Some(&77));
        assert_eq!(log.guid_pid.get("{p}"), Some(&100));
    }

    #[test]
    fn ecs_event_code_shape() {
        let ecs = r#"{"@timestamp":"2024-05-01T12:00:09.5Z","event":{"code":"5","provider":"Microsoft-Windows-Sysmon"},"host":{"name":"ws3"},"winlog":{"provider_name":"Microsoft-Windows-Sysmon","event_data":{"ProcessGuid":"{e}","ProcessId":12}}}"#;
        let (log, report) = read(ecs);
        assert_eq!(report.sysmon.rejected, 0, "{report}");
        assert_eq!(log.ends.len(), 1);
        assert_eq!(
            (log.ends[0].host.as_str(), log.ends[0].pid),
            ("ws3", Some(12))
        );
    }

    #[test]
    fn bad_records_are_located_and_the_rest_imported() {
        let lines = [
            r#"not json"#,
            r#"{"EventID":1,"Channel":"Microsoft-Windows-Sysmon/Operational","Hostname":"h","UtcTime":"2024-05-01 12:00:00.000"}"#,
            r#"{"EventID":4242,"Channel":"Microsoft-Windows-Sysmon/Operational","Hostname":"h","UtcTime":"2024-05-01 12:00:00.000"}"#,
            r#"{"EventID":5,"Channel":"Microsoft-Windows-Sysmon/Operational","Hostname":"h","ProcessGuid":"{g}","UtcTime":"yesterday"}"#,
            r#"{"EventID":4624,"Channel":"Security","Hostname":"h"}"#,
            r#"{"EventID":10,"Channel":"Microsoft-Windows-Sysmon/Operational","Hostname":"h","SourceProcessGUID":"{s}","SourceProcessId":"8","UtcTime":"2024-05-01 12:00:00.000"}"#,
            r#"{"EventID":5,"Channel":"Microsoft-Windows-Sysmon/Operational","Hostname":"h","ProcessGuid":"{g}","UtcTime":"2024-05-01 12:00:01.000"}"#,
            r#"{"EventID":5,"Channel":"Microsoft-Windows-Sysmon/Operational","Hostname":"h","ProcessGuid":"{g}","@timestamp":"2024-05-01T14:00:02+02:00"}"#,
        ];
        let (log, report) = read(&lines.join("\n"));
        assert_eq!(report.sysmon.records, 8);
        assert_eq!(report.sysmon.rejected, 4, "{report}");
        let locs: Vec<&str> = report
            .rejections
            .iter()
            .map(|r| r.location.as_str())
            .collect();
        assert_eq!(locs, ["t.json:1", "t.json:2", "t.json:3", "t.json:4"]);
        assert_eq!(report.rejections[0].reason_key, "not_json");
        assert!(
            report.rejections[1].detail.contains("ProcessGuid"),
            "{}",
            report.rejections[1]
        );
        assert_eq!(report.rejections[2].reason_key, "unknown_event_id");
        assert!(
            report.rejections[3].detail.contains("UtcTime"),
            "{}",
            report.rejections[3]
        );
        assert_eq!(log.ends.len(), 2);
        // Mixed zones: +02:00 is normalised to UTC.
        assert_eq!(
            log.ends[1].ts,
            Timestamp::parse_rfc3339("2024-05-01T12:00:02Z").unwrap()
        );
        assert_eq!(log.guid_pid.get("{s}"), Some(&8));
        assert_eq!(report.sysmon.skipped.get("other channels"), Some(&1));
        assert_eq!(report.sysmon.skipped.get("EventID 10 (not used)"), Some(&1));
    }

    #[test]
    fn guid_time_and_synthetic_pid() {
        let t = guid_start_time("{d273d0f0-8078-5f67-cc06-000000000800}").unwrap();
        assert_eq!(t.to_rfc3339(), "2020-09-20T16:16:56Z");
        assert_eq!(guid_start_time("{x}"), None);
        let p = synthetic_pid("{d273d0f0-8078-5f67-cc06-000000000800}");
        assert!(p >= 0x8000_0000);
        assert_eq!(p, synthetic_pid("{D273D0F0-8078-5F67-CC06-000000000800}"));
        assert_ne!(p, synthetic_pid("{d273d0f0-8078-5f67-cc06-000000000801}"));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_lines_never_panic(lines in proptest::collection::vec("\\PC{0,120}", 0..8)) {
            let _ = read(&lines.join("\n"));
        }

        #[test]
        fn mutated_records_never_panic(idx in 0usize..2000, byte in proptest::num::u8::ANY, cut in 0usize..2000) {
            let rec = br#"{"EventID":3,"Channel":"Microsoft-Windows-Sysmon/Operational","Hostname":"h","UtcTime":"2024-05-01 12:00:04.000","ProcessGuid":"{b-5f678078-1}","ProcessId":"77","Image":"C:\\x\\p.exe","Protocol":"tcp","Initiated":"true","SourceIp":"::ffff:10.0.0.2","SourcePort":"50000","DestinationIp":"162.125.1.1","DestinationPort":"443"}"#;
            let mut b = rec.to_vec();
            let i = idx % b.len();
            b[i] = byte;
            b.truncate(cut % (b.len() + 1));
            let mut log = SysmonLog::default();
            let mut report = ImportReport::default();
            read_reader("fuzz", &mut &b[..], &mut log, &mut report);
            // Each line is used, skipped or rejected: never more outcomes than lines.
            let lines = b.iter().filter(|c| **c == b'\n').count() as u64 + 1;
            let outcomes = report.sysmon.rejected + report.sysmon.used + report.sysmon.skipped.values().sum::<u64>();
            proptest::prop_assert!(outcomes <= lines);
        }
    }
}
