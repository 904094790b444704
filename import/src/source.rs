//! Opening inputs: plain files, or every member of a zip archive.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek};
use std::path::Path;

use crate::report::{ImportReport, SourceKind};

/// A reader that counts the bytes it hands out.
pub struct Counting<R> {
    inner: R,
    pub count: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

const ZIP_MAGIC: [&[u8; 4]; 2] = [b"PK\x03\x04", b"PK\x05\x06"];

/// True if the first bytes of `file` are a zip signature.
fn looks_like_zip(file: &mut File) -> io::Result<bool> {
    let mut head = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = file.read(&mut head[got..])?;
        if n == 0 {
            break;
        }
        got += n;
    }
    file.rewind()?;
    Ok(got == 4 && ZIP_MAGIC.iter().any(|m| **m == head))
}

/// Calls `each(name, reader)` for the file at `path`, or for every file in it
/// if it is a zip. `name` is where the data came from, for error messages:
/// `path` or `path!member`. Bytes read are added to the source's stats; a
/// file or member that cannot be opened is a rejection, and the others are
/// still read.
pub fn for_each_input(
    path: &Path,
    kind: SourceKind,
    report: &mut ImportReport,
    mut each: impl FnMut(&str, &mut dyn Read, &mut ImportReport),
) {
    let shown = path.display().to_string();
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) => {
            report.reject(kind, shown, "unreadable_file", format!("cannot open: {e}"));
            return;
        }
    };
    let is_zip = match looks_like_zip(&mut file) {
        Ok(z) => z,
        Err(e) => {
            report.reject(kind, shown, "unreadable_file", format!("cannot read: {e}"));
            return;
        }
    };
    if !is_zip {
        let mut r = Counting {
            inner: BufReader::with_capacity(1 << 20, file),
            count: 0,
        };
        report.stats_mut(kind).files += 1;
        each(&shown, &mut r, report);
        report.stats_mut(kind).bytes += r.count;
        return;
    }
    let mut archive = match zip::ZipArchive::new(BufReader::new(file)) {
        Ok(a) => a,
        Err(e) => {
            report.reject(
                kind,
                shown,
                "corrupt_zip",
                format!("not a readable zip archive: {e}"),
            );
            return;
        }
    };
    for i in 0..archive.len() {
        let member = match archive.by_index(i) {
            Ok(m) => m,
            Err(e) => {
                report.reject(
                    kind,
                    format!("{shown}!#{i}"),
                    "corrupt_zip",
                    format!("zip member {i} cannot be opened: {e}"),
                );
                continue;
            }
        };
        if member.is_dir() {
            continue;
        }
        let name = format!("{shown}!{}", member.name());
        let mut r = Counting {
            inner: BufReader::with_capacity(1 << 20, member),
            count: 0,
        };
        report.stats_mut(kind).files += 1;
        each(&name, &mut r, report);
        report.stats_mut(kind).bytes += r.count;
    }
}

/// Reads `reader` line by line as bytes, calling `each(line_no, line)` with
/// 1-based line numbers and the trailing `\r\n` removed. A UTF-8 byte-order
/// mark is dropped; UTF-16 text (what Windows PowerShell writes by default)
/// is recognised by its byte-order mark and converted. A read error (a
/// corrupt zip member, a vanished file) ends the input and is returned with
/// the number of the line that could not be read.
pub fn for_each_line(
    reader: &mut dyn Read,
    mut each: impl FnMut(u64, &[u8]),
) -> Result<(), (u64, io::Error)> {
    let mut r = BufReader::with_capacity(1 << 16, reader);
    let head = io::BufRead::fill_buf(&mut r).map_err(|e| (1, e))?;
    if head.starts_with(&[0xff, 0xfe]) || head.starts_with(&[0xfe, 0xff]) {
        let little = head[0] == 0xff;
        let mut all = Vec::new();
        r.read_to_end(&mut all).map_err(|e| (1, e))?;
        let units: Vec<u16> = all[2..]
            .chunks_exact(2)
            .map(|c| {
                if little {
                    u16::from_le_bytes([c[0], c[1]])
                } else {
                    u16::from_be_bytes([c[0], c[1]])
                }
            })
            .collect();
        let text = String::from_utf16_lossy(&units);
        for (i, line) in text.lines().enumerate() {
            each(i as u64 + 1, line.trim_end_matches('\r').as_bytes());
        }
        return Ok(());
    }
    if head.starts_with(&[0xef, 0xbb, 0xbf]) {
        io::BufRead::consume(&mut r, 3);
    }
    let mut buf = Vec::with_capacity(4096);
    let mut n = 0u64;
    loop {
        buf.clear();
        match io::BufRead::read_until(&mut r, b'\n', &mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => {
                n += 1;
                let mut line = &buf[..];
                while let Some((&last, rest)) = line.split_last() {
                    if last == b'\n' || last == b'\r' {
                        line = rest;
                    } else {
                        break;
                    }
                }
                each(n, line);
            }
            Err(e) => return Err((n + 1, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(bytes: &[u8]) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        for_each_line(&mut &bytes[..], |n, l| {
            out.push((n, String::from_utf8_lossy(l).to_string()))
        })
        .unwrap();
        out
    }

    #[test]
    fn boms_crlf_and_utf16() {
        let want = vec![(1, "{\"a\":1}".to_string()), (2, "é".to_string())];
        assert_eq!(lines(b"\xef\xbb\xbf{\"a\":1}\r\n\xc3\xa9\r\n"), want);
        let mut le = vec![0xff, 0xfe];
        for u in "{\"a\":1}\r\né\r\n".encode_utf16() {
            le.extend_from_slice(&u.to_le_bytes());
        }
        assert_eq!(lines(&le), want);
        let mut be = vec![0xfe, 0xff];
        for u in "{\"a\":1}\né".encode_utf16() {
            be.extend_from_slice(&u.to_be_bytes());
        }
        assert_eq!(lines(&be), want);
        assert!(lines(b"").is_empty());
    }
}
