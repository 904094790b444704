use std::net::IpAddr;

use outflow_core::telemetry::{
    DnsRecord, Event, HostEvent, NetRecord, ProcessEnd, ProcessStart, Transport,
};
use outflow_core::Timestamp;

use crate::pb;

/// Why a wire message could not become a domain value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    #[error("event {index}: empty event (no kind set)")]
    EmptyEvent { index: usize },
    #[error("event {index}: `{field}` must be 4 or 16 bytes, got {len}")]
    BadIp {
        index: usize,
        field: &'static str,
        len: usize,
    },
    #[error("event {index}: `dst_port` {port} is out of range")]
    BadPort { index: usize, port: u32 },
    #[error("event {index}: `name` must not be empty")]
    EmptyName { index: usize },
}

pub fn ip_to_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

pub fn ip_from_bytes(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => {
            let a: [u8; 4] = b.try_into().ok()?;
            Some(IpAddr::from(a))
        }
        16 => {
            let a: [u8; 16] = b.try_into().ok()?;
            Some(IpAddr::from(a))
        }
        _ => None,
    }
}

/// Domain event → wire event (the host travels once per batch, not per event).
pub fn event_to_pb(e: &Event) -> pb::TelemetryEvent {
    use pb::telemetry_event::Kind;
    let kind = match e {
        Event::Host(h) => Kind::Host(pb::HostInfo {
            ts_us: h.ts.0,
            os: h.os.clone().unwrap_or_default(),
            labels: h.labels.clone().into_iter().collect(),
        }),
        Event::ProcessStart(p) => Kind::ProcessStart(pb::ProcessStart {
            ts_us: p.ts.0,
            pid: p.pid,
            name: p.name.clone(),
            ppid: p.ppid,
            exe: p.exe.clone(),
            cmdline: p.cmdline.clone(),
            user: p.user.clone(),
            parent_name: p.parent_name.clone(),
        }),
        Event::ProcessEnd(p) => Kind::ProcessEnd(pb::ProcessEnd {
            ts_us: p.ts.0,
            pid: p.pid,
        }),
        Event::Net(n) => Kind::Net(pb::NetDelta {
            ts_us: n.ts.0,
            pid: n.pid,
            transport: match n.proto {
                Transport::Tcp => pb::Transport::Tcp as i32,
                Transport::Udp => pb::Transport::Udp as i32,
            },
            dst_ip: ip_to_bytes(&n.dst_ip),
            dst_port: n.dst_port.into(),
            bytes_out: n.bytes_out,
            bytes_in: n.bytes_in,
            sni: n.sni.clone(),
            domain: n.domain.clone(),
            pid_unknown: false,
        }),
        Event::Dns(d) => Kind::Dns(pb::DnsAnswer {
            ts_us: d.ts.0,
            query: d.query.clone(),
            answers: d.answers.iter().map(ip_to_bytes).collect(),
            pid: d.pid,
        }),
    };
    pb::TelemetryEvent { kind: Some(kind) }
}

/// Wire event of `host` → domain event. `index` is the event's position in its
/// batch, used in error messages.
pub fn event_from_pb(
    host: &str,
    index: usize,
    e: pb::TelemetryEvent,
) -> Result<Event, ConvertError> {
    use pb::telemetry_event::Kind;
    let host = host.to_string();
    Ok(match e.kind.ok_or(ConvertError::EmptyEvent { index })? {
        Kind::Host(h) => Event::Host(HostEvent {
            ts: Timestamp(h.ts_us),
            host,
            os: Some(h.os).filter(|s| !s.is_empty()),
            labels: h.labels.into_iter().collect(),
        }),
        Kind::ProcessStart(p) => {
            if p.name.is_empty() {
                return Err(ConvertError::EmptyName { index });
            }
            Event::ProcessStart(ProcessStart {
                ts: Timestamp(p.ts_us),
                host,
                pid: p.pid,
                name: p.name,
                ppid: p.ppid,
                exe: p.exe,
                cmdline: p.cmdline,
                user: p.user,
                parent_name: p.parent_name,
            })
        }
        Kind::ProcessEnd(p) => Event::ProcessEnd(ProcessEnd {
            ts: Timestamp(p.ts_us),
            host,
            pid: p.pid,
        }),
        Kind::Net(n) => {
            let dst_ip = ip_from_bytes(&n.dst_ip).ok_or(ConvertError::BadIp {
                index,
                field: "dst_ip",
                len: n.dst_ip.len(),
            })?;
            let dst_port = u16::try_from(n.dst_port).map_err(|_| ConvertError::BadPort {
                index,
                port: n.dst_port,
            })?;
            Event::Net(NetRecord {
                ts: Timestamp(n.ts_us),
                host,
                pid: if n.pid_unknown { 0 } else { n.pid },
                proto: if n.transport == pb::Transport::Udp as i32 {
                    Transport::Udp
                } else {
                    Transport::Tcp
                },
                dst_ip,
                dst_port,
                bytes_out: n.bytes_out,
                bytes_in: n.bytes_in,
                sni: n.sni.filter(|s| !s.is_empty()),
                domain: n.domain.filter(|s| !s.is_empty()),
            })
        }
        Kind::Dns(d) => {
            let mut answers = Vec::with_capacity(d.answers.len());
            for a in &d.answers {
                answers.push(ip_from_bytes(a).ok_or(ConvertError::BadIp {
                    index,
                    field: "answers",
                    len: a.len(),
                })?);
            }
            Event::Dns(DnsRecord {
                ts: Timestamp(d.ts_us),
                host,
                query: d.query,
                answers,
                pid: d.pid,
            })
        }
    })
}

/// All events of a batch; the first bad event stops the conversion (a batch
/// is accepted or refused whole, so an agent can resend it after a fix).
pub fn batch_events(batch: pb::Batch) -> Result<Vec<Event>, ConvertError> {
    let host = batch.host_id;
    batch
        .events
        .into_iter()
        .enumerate()
        .map(|(i, e)| event_from_pb(&host, i, e))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use outflow_core::telemetry::parse_line;

    #[test]
    fn every_event_round_trips() {
        let lines = [
            r#"{"type":"host","ts":"2024-05-01T12:00:00Z","host":"ws-1","os":"linux","labels":{"dept":"it"}}"#,
            r#"{"type":"process_start","ts":"2024-05-01T12:00:00.123456Z","host":"ws-1","pid":42,"name":"curl","ppid":7,"exe":"/usr/bin/curl","cmdline":"curl -T x","user":"root","parent_name":"bash"}"#,
            r#"{"type":"net","ts":"2024-05-01T12:00:01Z","host":"ws-1","pid":42,"dst_ip":"2001:db8::1","dst_port":443,"bytes_out":1000,"bytes_in":10,"sni":"content.dropboxapi.com"}"#,
            r#"{"type":"net","ts":"2024-05-01T12:00:01Z","host":"ws-1","pid":0,"proto":"udp","dst_ip":"1.2.3.4","dst_port":443,"bytes_out":1,"bytes_in":2,"domain":"x.y"}"#,
            r#"{"type":"dns","ts":"2024-05-01T12:00:00Z","host":"ws-1","query":"x.com","answers":["1.2.3.4","::1"],"pid":9}"#,
            r#"{"type":"process_end","ts":"2024-05-01T12:01:00Z","host":"ws-1","pid":42}"#,
        ];
        for (i, l) in lines.iter().enumerate() {
            let e = parse_line(l).unwrap();
            let back = event_from_pb("ws-1", i, event_to_pb(&e)).unwrap();
            assert_eq!(back, e);
        }
    }

    #[test]
    fn bad_wire_values_are_refused_with_position() {
        let ev = pb::TelemetryEvent {
            kind: Some(pb::telemetry_event::Kind::Net(pb::NetDelta {
                dst_ip: vec![1, 2, 3],
                ..Default::default()
            })),
        };
        let err = event_from_pb("h", 7, ev).unwrap_err();
        assert_eq!(
            err.to_string(),
            "event 7: `dst_ip` must be 4 or 16 bytes, got 3"
        );
        let err = event_from_pb("h", 2, pb::TelemetryEvent { kind: None }).unwrap_err();
        assert!(err.to_string().starts_with("event 2"));
    }
}
