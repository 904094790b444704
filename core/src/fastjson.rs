//! A scanner for the common shape of a telemetry line: one flat JSON object
//! whose strings have no escapes and whose numbers are plain non-negative
//! integers. It fills the same `RawLine` the serde path would, or gives up
//! (`None`) on anything else — escapes, nesting, floats, negative or
//! zero-padded numbers, `null`, duplicate keys — so that serde_json, and its
//! exact errors, decide every other line. Equality with the serde path is
//! property-tested in `telemetry`.

use std::borrow::Cow;

use crate::telemetry::RawLine;

/// The line's fields, when the line has the plain shape; `None` otherwise.
pub(crate) fn scan(line: &str) -> Option<RawLine<'_>> {
    let b = line.as_bytes();
    let mut s = Scanner { b, i: 0 };
    s.ws();
    s.eat(b'{')?;
    let mut raw = RawLine::default();
    s.ws();
    if s.peek()? == b'}' {
        s.i += 1;
    } else {
        loop {
            s.ws();
            s.eat(b'"')?;
            let key = s.string(line)?;
            s.ws();
            s.eat(b':')?;
            s.ws();
            match key {
                "type" => s.put_str(line, &mut raw.kind)?,
                "ts" => s.put_str(line, &mut raw.ts)?,
                "host" => s.put_str(line, &mut raw.host)?,
                "name" => s.put_str(line, &mut raw.name)?,
                "exe" => s.put_str(line, &mut raw.exe)?,
                "cmdline" => s.put_str(line, &mut raw.cmdline)?,
                "user" => s.put_str(line, &mut raw.user)?,
                "parent_name" => s.put_str(line, &mut raw.parent_name)?,
                "dst_ip" => s.put_str(line, &mut raw.dst_ip)?,
                "proto" => s.put_str(line, &mut raw.proto)?,
                "sni" => s.put_str(line, &mut raw.sni)?,
                "domain" => s.put_str(line, &mut raw.domain)?,
                "query" => s.put_str(line, &mut raw.query)?,
                "os" => s.put_str(line, &mut raw.os)?,
                "pid" => put_num(&mut raw.pid, s.uint()?)?,
                "ppid" => put_num(&mut raw.ppid, s.uint()?)?,
                "dst_port" => put_num(&mut raw.dst_port, s.uint()?)?,
                "bytes_out" => put_num(&mut raw.bytes_out, s.uint()?)?,
                "bytes_in" => put_num(&mut raw.bytes_in, s.uint()?)?,
                // Arrays and objects: the serde path.
                "answers" | "labels" => return None,
                _ => s.skip_plain_value(line)?,
            }
            s.ws();
            match s.peek()? {
                b',' => s.i += 1,
                b'}' => {
                    s.i += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    s.ws();
    (s.i == b.len()).then_some(raw)
}

fn put_num<T: TryFrom<u64>>(slot: &mut Option<T>, v: u64) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(T::try_from(v).ok()?);
    Some(())
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

    /// The rest of a string whose opening quote was eaten, if it has no
    /// escapes or control characters.
    fn string<'l>(&mut self, line: &'l str) -> Option<&'l str> {
        let start = self.i;
        loop {
            match self.peek()? {
                b'"' => {
                    let s = line.get(start..self.i)?;
                    self.i += 1;
                    return Some(s);
                }
                b'\\' | 0..=0x1f => return None,
                _ => self.i += 1,
            }
        }
    }

    fn put_str<'l>(&mut self, line: &'l str, slot: &mut Option<Cow<'l, str>>) -> Option<()> {
        if slot.is_some() {
            return None;
        }
        self.eat(b'"')?;
        *slot = Some(Cow::Borrowed(self.string(line)?));
        Some(())
    }

    /// A plain non-negative integer: digits, no leading zero, no fraction or
    /// exponent, no overflow.
    fn uint(&mut self) -> Option<u64> {
        let start = self.i;
        let mut v: u64 = 0;
        while let Some(c @ b'0'..=b'9') = self.peek() {
            v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
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
