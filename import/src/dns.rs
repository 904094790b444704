//! DNS responses on the wire: the question name and the A/AAAA answers.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A parsed DNS response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsAnswer {
    pub query: String,
    pub answers: Vec<IpAddr>,
}

/// Reads a name at `at` (following compression pointers, bounded), returning
/// the name and the offset just after it in the original position.
fn read_name(msg: &[u8], mut at: usize) -> Option<(String, usize)> {
    let mut name = String::new();
    let mut end_after: Option<usize> = None;
    let mut jumps = 0;
    loop {
        let len = *msg.get(at)?;
        match len & 0xc0 {
            0x00 => {
                if len == 0 {
                    at += 1;
                    break;
                }
                let label = msg.get(at + 1..at + 1 + usize::from(len))?;
                if !name.is_empty() {
                    name.push('.');
                }
                for &b in label {
                    if b.is_ascii_graphic() {
                        name.push(char::from(b.to_ascii_lowercase()));
                    } else {
                        name.push('?');
                    }
                }
                if name.len() > 255 {
                    return None;
                }
                at += 1 + usize::from(len);
            }
            0xc0 => {
                let lo = *msg.get(at + 1)?;
                if end_after.is_none() {
                    end_after = Some(at + 2);
                }
                jumps += 1;
                if jumps > 32 {
                    return None;
                }
                at = (usize::from(len & 0x3f) << 8) | usize::from(lo);
            }
            _ => return None,
        }
    }
    Some((name, end_after.unwrap_or(at)))
}

/// Parses a DNS response (QR set, no error); `None` for queries, errors and
/// anything malformed.
pub fn parse_response(msg: &[u8]) -> Option<DnsAnswer> {
    let hdr = msg.get(..12)?;
    let flags = u16::from_be_bytes([hdr[2], hdr[3]]);
    if flags & 0x8000 == 0 {
        return None; // a query
    }
    let qd = u16::from_be_bytes([hdr[4], hdr[5]]);
    let an = u16::from_be_bytes([hdr[6], hdr[7]]);
    if qd == 0 {
        return None;
    }
    let mut at = 12;
    let mut query = None;
    for _ in 0..qd {
        let (name, next) = read_name(msg, at)?;
        at = next.checked_add(4)?;
        if at > msg.len() {
            return None;
        }
        query.get_or_insert(name);
    }
    let mut answers = Vec::new();
    for _ in 0..an {
        let (_, next) = read_name(msg, at)?;
        let rr = msg.get(next..next + 10)?;
        let ty = u16::from_be_bytes([rr[0], rr[1]]);
        let class = u16::from_be_bytes([rr[2], rr[3]]);
        let rdlen = usize::from(u16::from_be_bytes([rr[8], rr[9]]));
        let data = msg.get(next + 10..next + 10 + rdlen)?;
        if class == 1 {
            match (ty, rdlen) {
                (1, 4) => answers.push(IpAddr::V4(Ipv4Addr::new(
                    data[0], data[1], data[2], data[3],
                ))),
                (28, 16) => {
                    let mut o = [0u8; 16];
                    o.copy_from_slice(data);
                    answers.push(crate::flow::canonical_ip(IpAddr::V6(Ipv6Addr::from(o))));
                }
                _ => {}
            }
        }
        at = next + 10 + rdlen;
    }
    Some(DnsAnswer {
        query: query?,
        answers,
    })
}

/// Builds a DNS response for `query` with A records (tests, synthetic data).
pub fn build_response(id: u16, query: &str, answers: &[Ipv4Addr]) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&[0x81, 0x80]);
    m.extend_from_slice(&1u16.to_be_bytes());
    m.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    m.extend_from_slice(&[0, 0, 0, 0]);
    for label in query.split('.') {
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.push(0);
    m.extend_from_slice(&[0, 1, 0, 1]);
    for a in answers {
        m.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        m.extend_from_slice(&a.octets());
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_answers_with_compression() {
        let m = build_response(
            7,
            "content.dropboxapi.com",
            &[Ipv4Addr::new(162, 125, 1, 14)],
        );
        let a = parse_response(&m).unwrap();
        assert_eq!(a.query, "content.dropboxapi.com");
        assert_eq!(a.answers, vec!["162.125.1.14".parse::<IpAddr>().unwrap()]);
        // A query (QR clear) is not a response.
        let mut q = m.clone();
        q[2] = 0x01;
        assert_eq!(parse_response(&q), None);
        // Truncated: nothing, no panic.
        assert_eq!(parse_response(&m[..m.len() - 2]), None);
    }

    #[test]
    fn pointer_loops_are_refused() {
        let mut m = vec![0, 1, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0];
        m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        assert_eq!(parse_response(&m), None);
    }

    proptest::proptest! {
        #[test]
        fn never_panics(b in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = parse_response(&b);
        }
    }
}
