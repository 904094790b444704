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
/// 1-based line numbers and the trailing `\r\n` removed. A read error (a
/// corrupt zip member, a vanished file) ends the input and is returned with
/// the number of the line that could not be read.
pub fn for_each_line(
    reader: &mut dyn Read,
    mut each: impl FnMut(u64, &[u8]),
) -> Result<(), (u64, io::Error)> {
    let mut r = BufReader::with_capacity(1 << 16, reader);
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
