//! A scanner for the common shape of a telemetry line: one flat JSON object
//! whose strings have no `\u` escapes or raw control characters and whose
//! numbers are plain non-negative integers. It fills the same `RawLine` the
//! serde path would, or gives up (`None`) on anything else — `\u` escapes,
//! nesting, floats, negative or zero-padded numbers, `null`, duplicate keys —
//! so that serde_json, and its exact errors, decide every other line.
//! Equality with the serde path is property-tested in `telemetry`.

use std::borrow::Cow;

use crate::telemetry::{NetView, RawLine, Transport};
use crate::time::Timestamp;

/// A `net` record in the exact form the simulator and `outflow import`
/// write (and most agents' lines): keys `type`, `ts`, `host`, `pid`,
/// `dst_ip`, `dst_port`, `bytes_out`, `bytes_in` in that order, then an
/// optional `sni`; no whitespace; ASCII strings without escapes or control
/// characters; an IPv4 address. Such a line is read with one pass of
/// literal compares. `None` for anything else, which the general path
/// (`scan`, then serde_json) reads with the same results and errors: every
/// line this accepts is valid UTF-8 (it is ASCII), and gives the record
/// `scan` and `from_raw` would (property-tested in `telemetry`).
#[inline]
pub(crate) fn net_line(b: &[u8]) -> Option<NetView<'_>> {
    let mut c = Cursor { b, i: 0 };
    c.lit(b"{\"type\":\"net\",\"ts\":\"")?;
    let ts = c.ascii_str()?;
    c.lit(b",\"host\":\"")?;
    let host = c.ascii_str()?;
    c.lit(b",\"pid\":")?;
    let pid = u32::try_from(c.uint()?).ok()?;
    c.lit(b",\"dst_ip\":\"")?;
    let ip = c.ascii_bytes()?;
    c.lit(b",\"dst_port\":")?;
    let dst_port = u16::try_from(c.uint()?).ok()?;
    c.lit(b",\"bytes_out\":")?;
    let bytes_out = c.uint()?;
    c.lit(b",\"bytes_in\":")?;
    let bytes_in = c.uint()?;
    let sni = match c.lit(b",\"sni\":\"") {
        Some(()) => Some(c.ascii_str()?),
        None => None,
    };
    c.lit(b"}")?;
    if c.i != b.len() || host.is_empty() {
        return None;
    }
    Some(NetView {
        ts: Timestamp::parse_rfc3339(ts).ok()?,
        host: Cow::Borrowed(host),
        pid,
        proto: Transport::Tcp,
        dst_ip: std::net::IpAddr::V4(crate::telemetry::parse_plain_ipv4(ip)?),
        dst_port,
        bytes_out,
        bytes_in,
        sni: sni.filter(|s| !s.is_empty()).map(Cow::Borrowed),
        domain: None,
    })
}

/// `net_line`'s reader.
struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    #[inline(always)]
    fn lit(&mut self, l: &[u8]) -> Option<()> {
        let rest = self.b.get(self.i..)?;
        rest.starts_with(l).then(|| self.i += l.len())
    }

    /// The rest of a string whose opening quote was read, up to its closing
    /// quote (read too): ASCII without control characters or backslashes.
    #[inline(always)]
    fn ascii_bytes(&mut self) -> Option<&'a [u8]> {
        let start = self.i;
        // A word at a time while one fits (as `Scanner::plain_run`, and a
        // byte with its high bit set stops too), then byte by byte.
        loop {
            let Some(w) = self.b.get(self.i..self.i + 8) else {
                loop {
                    match *self.b.get(self.i)? {
                        b'"' => break,
                        b'\\' | 0..=0x1f | 0x80..=0xff => return None,
                        _ => self.i += 1,
                    }
                }
                break;
            };
            let w = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
            let stop = zero_bytes(w ^ (ONES * u64::from(b'"')))
                | zero_bytes(w ^ (ONES * u64::from(b'\\')))
                | bytes_below(w, 0x20)
                | (w & HIGHS);
            if stop != 0 {
                self.i += (stop.trailing_zeros() / 8) as usize;
                if self.b[self.i] != b'"' {
                    return None;
                }
                break;
            }
            self.i += 8;
        }
        let s = &self.b[start..self.i];
        self.i += 1;
        Some(s)
    }

    #[inline(always)]
    fn ascii_str(&mut self) -> Option<&'a str> {
        let s = self.ascii_bytes()?;
        debug_assert!(s.is_ascii());
        // SAFETY: `ascii_bytes` returns ASCII only, which is UTF-8.
        Some(unsafe { std::str::from_utf8_unchecked(s) })
    }

    /// `Scanner::uint`'s numbers: digits, no leading zero, at most 19.
    #[inline(always)]
    fn uint(&mut self) -> Option<u64> {
        let start = self.i;
        let mut v: u64 = 0;
        while let Some(c @ b'0'..=b'9') = self.b.get(self.i).copied() {
            if self.i - start == 19 {
                return None;
            }
            v = v * 10 + u64::from(c - b'0');
            self.i += 1;
        }
        let len = self.i - start;
        (len > 0 && !(len > 1 && self.b[start] == b'0')).then_some(v)
    }
}

/// Fills `raw` (which must be empty) with the line's fields when the line has
/// the plain shape; `None` otherwise, leaving `raw` partly filled.
pub(crate) fn scan<'l>(line: &'l str, raw: &mut RawLine<'l>) -> Option<()> {
    let b = line.as_bytes();
    let mut s = Scanner { b, i: 0 };
    s.ws();
    s.eat(b'{')?;
    s.ws();
    if s.peek()? == b'}' {
        s.i += 1;
    } else {
        loop {
            s.eat(b'"')?;
            let slot = match Key::at(&b[s.i..]) {
                Some((key, len)) => {
                    s.i += len;
                    Slot::of(raw, key)
                }
                None => {
                    s.key()?;
                    Slot::Other
                }
            };
            s.ws();
            s.eat(b':')?;
            s.ws();
            match slot {
                Slot::Str(slot) => {
                    if slot.is_some() {
                        return None;
                    }
                    s.eat(b'"')?;
                    *slot = Some(s.string(line)?);
                }
                Slot::U16(slot) => put_num(slot, s.uint()?)?,
                Slot::U32(slot) => put_num(slot, s.uint()?)?,
                Slot::U64(slot) => put_num(slot, s.uint()?)?,
                // Arrays and objects: the serde path.
                Slot::Nested => return None,
                Slot::Other => s.skip_plain_value(line)?,
            }
            s.ws();
            match s.peek()? {
                b',' => {
                    s.i += 1;
                    s.ws();
                }
                b'}' => {
                    s.i += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    s.ws();
    (s.i == b.len()).then_some(())
}

/// The contract's keys.
#[derive(Clone, Copy)]
enum Key {
    Type,
    Ts,
    Host,
    Name,
    Exe,
    Cmdline,
    User,
    ParentName,
    DstIp,
    Proto,
    Sni,
    Domain,
    Query,
    Os,
    Pid,
    Ppid,
    DstPort,
    BytesOut,
    BytesIn,
    /// `answers` and `labels`: arrays and objects.
    Nested,
}

impl Key {
    /// The contract key that `rest` (after a key's opening quote) starts
    /// with, and its length with the closing quote; `None` for other keys.
    /// No loop: the first byte picks the candidates, each compared whole.
    #[inline(always)]
    fn at(rest: &[u8]) -> Option<(Key, usize)> {
        macro_rules! one_of {
            ($($pat:literal => $key:expr),+) => {{
                $(
                    if rest.starts_with($pat) {
                        return Some(($key, $pat.len()));
                    }
                )+
                None
            }};
        }
        match rest.first()? {
            b't' => one_of!(b"type\"" => Key::Type, b"ts\"" => Key::Ts),
            b'h' => one_of!(b"host\"" => Key::Host),
            b'p' => one_of!(
                b"pid\"" => Key::Pid,
                b"proto\"" => Key::Proto,
                b"ppid\"" => Key::Ppid,
                b"parent_name\"" => Key::ParentName
            ),
            b'd' => one_of!(
                b"dst_ip\"" => Key::DstIp,
                b"dst_port\"" => Key::DstPort,
                b"domain\"" => Key::Domain
            ),
            b'b' => one_of!(b"bytes_out\"" => Key::BytesOut, b"bytes_in\"" => Key::BytesIn),
            b's' => one_of!(b"sni\"" => Key::Sni),
            b'n' => one_of!(b"name\"" => Key::Name),
            b'e' => one_of!(b"exe\"" => Key::Exe),
            b'c' => one_of!(b"cmdline\"" => Key::Cmdline),
            b'u' => one_of!(b"user\"" => Key::User),
            b'q' => one_of!(b"query\"" => Key::Query),
            b'o' => one_of!(b"os\"" => Key::Os),
            b'a' => one_of!(b"answers\"" => Key::Nested),
            b'l' => one_of!(b"labels\"" => Key::Nested),
            _ => None,
        }
    }
}

/// Where a key's value goes.
enum Slot<'r, 'l> {
    Str(&'r mut Option<Cow<'l, str>>),
    U16(&'r mut Option<u16>),
    U32(&'r mut Option<u32>),
    U64(&'r mut Option<u64>),
    /// `answers` and `labels`: arrays and objects.
    Nested,
    /// Not in the contract: ignored.
    Other,
}

impl<'r, 'l> Slot<'r, 'l> {
    #[inline(always)]
    fn of(raw: &'r mut RawLine<'l>, key: Key) -> Self {
        match key {
            Key::Type => Slot::Str(&mut raw.kind),
            Key::Ts => Slot::Str(&mut raw.ts),
            Key::Host => Slot::Str(&mut raw.host),
            Key::Name => Slot::Str(&mut raw.name),
            Key::Exe => Slot::Str(&mut raw.exe),
            Key::Cmdline => Slot::Str(&mut raw.cmdline),
            Key::User => Slot::Str(&mut raw.user),
            Key::ParentName => Slot::Str(&mut raw.parent_name),
            Key::DstIp => Slot::Str(&mut raw.dst_ip),
            Key::Proto => Slot::Str(&mut raw.proto),
            Key::Sni => Slot::Str(&mut raw.sni),
            Key::Domain => Slot::Str(&mut raw.domain),
            Key::Query => Slot::Str(&mut raw.query),
            Key::Os => Slot::Str(&mut raw.os),
            Key::Pid => Slot::U32(&mut raw.pid),
            Key::Ppid => Slot::U32(&mut raw.ppid),
            Key::DstPort => Slot::U16(&mut raw.dst_port),
            Key::BytesOut => Slot::U64(&mut raw.bytes_out),
            Key::BytesIn => Slot::U64(&mut raw.bytes_in),
            Key::Nested => Slot::Nested,
        }
    }
}

fn put_num<T: TryFrom<u64>>(slot: &mut Option<T>, v: u64) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(T::try_from(v).ok()?);
    Some(())
}

/// Bytes that end the plain run of a string: `"`, `\` and control characters.
const STOP: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 0x20 {
        t[c] = true;
        c += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The high bit of the lowest zero byte of `w` is set (and maybe bits above
/// it, from borrows: only the lowest set bit is meaningful).
fn zero_bytes(w: u64) -> u64 {
    w.wrapping_sub(ONES) & !w & HIGHS
}

/// Likewise for the lowest byte below `n` (`n` <= 0x80).
fn bytes_below(w: u64, n: u8) -> u64 {
    w.wrapping_sub(ONES * u64::from(n)) & !w & HIGHS
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.i += 1)
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    /// Moves to the first `"`, `\` or control character from here.
    #[inline(always)]
    fn plain_run(&mut self) -> Option<u8> {
        // A word at a time while one fits, then byte by byte.
        while let Some(w) = self.b.get(self.i..self.i + 8) {
            let w = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
            let stop = zero_bytes(w ^ (ONES * u64::from(b'"')))
                | zero_bytes(w ^ (ONES * u64::from(b'\\')))
                | bytes_below(w, 0x20);
            if stop != 0 {
                self.i += (stop.trailing_zeros() / 8) as usize;
                return Some(self.b[self.i]);
            }
            self.i += 8;
        }
        loop {
            let c = *self.b.get(self.i)?;
            if STOP[usize::from(c)] {
                return Some(c);
            }
            self.i += 1;
        }
    }

    /// A key whose opening quote was eaten, if it has no escapes or control
    /// characters.
    #[inline(always)]
    fn key(&mut self) -> Option<&'a [u8]> {
        let start = self.i;
        (self.plain_run()? == b'"').then(|| {
            self.i += 1;
            &self.b[start..self.i - 1]
        })
    }

    /// The rest of a string whose opening quote was eaten: borrowed when it
    /// has no escapes, decoded when it has simple ones; `None` for `\u`
    /// escapes and control characters (the serde path decides those).
    #[inline(always)]
    fn string<'l>(&mut self, line: &'l str) -> Option<Cow<'l, str>> {
        let start = self.i;
        match self.plain_run()? {
            b'"' => {
                let s = line.get(start..self.i)?;
                self.i += 1;
                Some(Cow::Borrowed(s))
            }
            b'\\' => {
                let (decoded, end) = escaped(self.b, line, start, self.i)?;
                self.i = end;
                Some(Cow::Owned(decoded))
            }
            _ => None,
        }
    }

    /// A plain non-negative integer: digits, no leading zero, no fraction or
    /// exponent, at most 19 digits (which cannot overflow; longer numbers
    /// take the serde path).
    #[inline(always)]
    fn uint(&mut self) -> Option<u64> {
        let start = self.i;
        let mut v: u64 = 0;
        while let Some(c @ b'0'..=b'9') = self.peek() {
            if self.i - start == 19 {
                return None;
            }
            v = v * 10 + u64::from(c - b'0');
            self.i += 1;
        }
        let len = self.i - start;
        if len == 0 || (len > 1 && self.b[start] == b'0') {
            return None;
        }
        match self.peek()? {
            b',' | b'}' | b' ' | b'\t' | b'\n' | b'\r' => Some(v),
            _ => None,
        }
    }

    /// An ignored field's value: a plain string, a plain integer, or
    /// `true` / `false`.
    fn skip_plain_value(&mut self, line: &str) -> Option<()> {
        match self.peek()? {
            b'"' => {
                self.i += 1;
                self.string(line).map(|_| ())
            }
            b'0'..=b'9' => self.uint().map(|_| ()),
            b't' if self.b[self.i..].starts_with(b"true") => {
                self.i += 4;
                Some(())
            }
            b'f' if self.b[self.i..].starts_with(b"false") => {
                self.i += 5;
                Some(())
            }
            _ => None,
        }
    }
}

/// A string with escapes, from `start` (after its opening quote) to its
/// closing quote; `at` is its first backslash. The decoded text and the
/// index after the closing quote.
#[cold]
fn escaped(b: &[u8], line: &str, start: usize, at: usize) -> Option<(String, usize)> {
    let mut s = Scanner { b, i: at };
    let mut out = String::with_capacity(at - start + 16);
    let mut run = start;
    loop {
        match s.plain_run()? {
            b'"' => {
                out.push_str(line.get(run..s.i)?);
                return Some((out, s.i + 1));
            }
            b'\\' => {
                out.push_str(line.get(run..s.i)?);
                out.push(match b.get(s.i + 1)? {
                    b'"' => '"',
                    b'\\' => '\\',
                    b'/' => '/',
                    b'b' => '\u{8}',
                    b'f' => '\u{c}',
                    b'n' => '\n',
                    b'r' => '\r',
                    b't' => '\t',
                    _ => return None,
                });
                s.i += 2;
                run = s.i;
            }
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scanned(line: &str) -> Option<RawLine<'_>> {
        let mut raw = RawLine::default();
        scan(line, &mut raw).map(|()| raw)
    }

    /// Lines with simple escapes stay on the fast path, decoded.
    #[test]
    fn decodes_simple_escapes() {
        let raw = scanned(
            r#"{"type":"process_start","exe":"C:\\Program Files\\a.exe","name":"\"q\"\/\b\f\n\r\t","x":"\\"}"#,
        )
        .expect("plain shape");
        assert_eq!(raw.exe.as_deref(), Some(r"C:\Program Files\a.exe"));
        assert_eq!(raw.name.as_deref(), Some("\"q\"/\u{8}\u{c}\n\r\t"));
        assert_eq!(raw.kind.as_deref(), Some("process_start"));
    }

    /// What the scanner leaves to serde.
    #[test]
    fn gives_up_on_other_shapes() {
        for line in [
            r#"{"name":"\u0041"}"#,
            r#"{"name":"a\qb"}"#,
            r#"{"name":"a\"}"#,
            r#"{"na\\me":"a"}"#,
            r#"{"pid":12345678901234567890}"#,
            r#"{"pid":01}"#,
            r#"{"pid":null}"#,
            r#"{"answers":[]}"#,
            "{\"name\":\"a\u{1}b\"}",
            r#"{"name":"a","name":"b"}"#,
        ] {
            assert!(scanned(line).is_none(), "{line}");
        }
        assert!(
            scanned(r#"{"pid":4294967296}"#).is_none(),
            "out of u32 range"
        );
        let raw = scanned(r#"{"bytes_in":9999999999999999999}"#).expect("19 digits");
        assert_eq!(raw.bytes_in, Some(9_999_999_999_999_999_999));
    }

    #[test]
    fn word_search_finds_the_first_stop() {
        for (text, stop) in [
            ("abcdefgh\"", 8),
            ("abcdefg\\\"", 7),
            ("a\"bcdefghijk", 1),
            ("abcdefghijklmno\u{1f}\"", 15),
            ("ééééé\"", 10),
            ("\u{7f}\u{80}\"", 3),
        ] {
            let mut s = Scanner {
                b: text.as_bytes(),
                i: 0,
            };
            s.plain_run();
            assert_eq!(s.i, stop, "{text:?}");
        }
    }
}
