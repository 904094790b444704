//! The log encoding of commands: a compact binary form for the hot path
//! (baseline updates and batches of them), JSON for everything else.
//!
//! An entry is either JSON (the original format, first byte `{`, still
//! decoded) or [`BINARY`] followed by one command:
//!
//! ```text
//! command  := 0x00 len:varint json[len]            (any command, as JSON)
//!           | 0x01 str:collector_id epoch:varint n:varint stats*n   (SubmitPartials)
//!           | 0x02 n:varint command*n              (Batch)
//! stats    := str:app day:zigzag hosts_running hosts_active hosts_new
//!             vec:ratio_hist vec:volume_hist vec:daily_out_hist
//!             n:varint (str:service hosts upload_hosts)*n vec:upload_windows_hist
//! str      := len:varint utf8[len]
//! vec      := n:varint varint*n
//! ```
//!
//! Decoding is total and deterministic: bytes that do not decode are
//! rejected identically on every replica.

use super::{AppDayStats, Command, ServiceCount};

/// First byte of a binary entry (JSON entries start with `{`).
pub const BINARY: u8 = 0xB0;

const TAG_JSON: u8 = 0;
const TAG_PARTIALS: u8 = 1;
const TAG_BATCH: u8 = 2;

/// Encode a command as a log entry.
pub fn encode(cmd: &Command) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.push(BINARY);
    put_command(&mut out, cmd);
    out
}

/// Start a `Batch` entry of `n` commands; add them with [`append_entry`].
pub fn batch_header(n: usize) -> Vec<u8> {
    let mut out = vec![BINARY, TAG_BATCH];
    put_varint(&mut out, n as u64);
    out
}

/// Append one entry (binary or JSON) as a command of a batch.
pub fn append_entry(out: &mut Vec<u8>, entry: &[u8]) {
    match entry.split_first() {
        Some((&BINARY, rest)) => out.extend_from_slice(rest),
        _ => {
            out.push(TAG_JSON);
            put_varint(out, entry.len() as u64);
            out.extend_from_slice(entry);
        }
    }
}

/// Decode a log entry (binary or JSON).
pub fn decode(bytes: &[u8]) -> Result<Command, String> {
    match bytes.split_first() {
        Some((&BINARY, rest)) => {
            let mut r = Reader(rest);
            let c = r.command(0)?;
            if !r.0.is_empty() {
                return Err(format!("{} trailing bytes", r.0.len()));
            }
            Ok(c)
        }
        _ => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn put_vec(out: &mut Vec<u8>, v: &[u64]) {
    put_varint(out, v.len() as u64);
    for x in v {
        put_varint(out, *x);
    }
}

fn put_stats(out: &mut Vec<u8>, s: &AppDayStats) {
    // Exhaustive: a new field must be given an encoding here.
    let AppDayStats {
        app,
        day,
        hosts_running,
        hosts_active,
        hosts_new,
        ratio_hist,
        volume_hist,
        daily_out_hist,
        services,
        upload_windows_hist,
    } = s;
    put_str(out, app);
    put_varint(out, ((*day << 1) ^ (*day >> 63)) as u64);
    put_varint(out, *hosts_running);
    put_varint(out, *hosts_active);
    put_varint(out, *hosts_new);
    put_vec(out, ratio_hist);
    put_vec(out, volume_hist);
    put_vec(out, daily_out_hist);
    put_varint(out, services.len() as u64);
    for (
        name,
        ServiceCount {
            hosts,
            upload_hosts,
        },
    ) in services
    {
        put_str(out, name);
        put_varint(out, *hosts);
        put_varint(out, *upload_hosts);
    }
    put_vec(out, upload_windows_hist);
}

fn put_command(out: &mut Vec<u8>, cmd: &Command) {
    match cmd {
        Command::SubmitPartials {
            collector_id,
            epoch,
            partials,
        } => {
            out.push(TAG_PARTIALS);
            put_str(out, collector_id);
            put_varint(out, *epoch);
            put_varint(out, partials.len() as u64);
            for p in partials {
                put_stats(out, p);
            }
        }
        Command::Batch { commands } => {
            out.push(TAG_BATCH);
            put_varint(out, commands.len() as u64);
            for c in commands {
                put_command(out, c);
            }
        }
        other => {
            // Serialising a command (plain data, string keys) cannot fail.
            let json = serde_json::to_vec(other).unwrap_or_default();
            out.push(TAG_JSON);
            put_varint(out, json.len() as u64);
            out.extend_from_slice(&json);
        }
    }
}

/// Nesting deeper than this is refused (batches do not nest; one level is
/// decoded so `apply` rejects it the same way as the JSON form).
const MAX_DEPTH: usize = 2;

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, String> {
        let (b, rest) = self.0.split_first().ok_or("truncated command")?;
        self.0 = rest;
        Ok(*b)
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], String> {
        let n = usize::try_from(n).map_err(|_| "length out of range")?;
        if n > self.0.len() {
            return Err("truncated command".into());
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                if shift == 63 && b > 1 {
                    break;
                }
                return Ok(v);
            }
        }
        Err("varint overflows 64 bits".into())
    }

    /// A count of items each at least one byte long (bounds allocations).
    fn count(&mut self) -> Result<usize, String> {
        let n = self.varint()?;
        if n > self.0.len() as u64 {
            return Err("count exceeds the bytes left".into());
        }
        Ok(n as usize)
    }

    fn str(&mut self) -> Result<String, String> {
        let n = self.varint()?;
        let b = self.take(n)?;
        std::str::from_utf8(b)
            .map(str::to_string)
            .map_err(|e| e.to_string())
    }

    fn vec(&mut self) -> Result<Vec<u64>, String> {
        let n = self.count()?;
        (0..n).map(|_| self.varint()).collect()
    }

    fn stats(&mut self) -> Result<AppDayStats, String> {
        let app = self.str()?;
        let z = self.varint()?;
        let day = ((z >> 1) as i64) ^ -((z & 1) as i64);
        let hosts_running = self.varint()?;
        let hosts_active = self.varint()?;
        let hosts_new = self.varint()?;
        let ratio_hist = self.vec()?;
        let volume_hist = self.vec()?;
        let daily_out_hist = self.vec()?;
        let mut services = std::collections::BTreeMap::new();
        for _ in 0..self.count()? {
            let name = self.str()?;
            let hosts = self.varint()?;
            let upload_hosts = self.varint()?;
            services.insert(
                name,
                ServiceCount {
                    hosts,
                    upload_hosts,
                },
            );
        }
        let upload_windows_hist = self.vec()?;
        Ok(AppDayStats {
            app,
            day,
            hosts_running,
            hosts_active,
            hosts_new,
            ratio_hist,
            volume_hist,
            daily_out_hist,
            services,
            upload_windows_hist,
        })
    }

    fn command(&mut self, depth: usize) -> Result<Command, String> {
        match self.byte()? {
            TAG_JSON => {
                let n = self.varint()?;
                let b = self.take(n)?;
                serde_json::from_slice(b).map_err(|e| e.to_string())
            }
            TAG_PARTIALS => {
                let collector_id = self.str()?;
                let epoch = self.varint()?;
                let n = self.count()?;
                let partials = (0..n).map(|_| self.stats()).collect::<Result<_, _>>()?;
                Ok(Command::SubmitPartials {
                    collector_id,
                    epoch,
                    partials,
                })
            }
            TAG_BATCH => {
                if depth >= MAX_DEPTH {
                    return Err("batches nested too deeply".into());
                }
                let n = self.count()?;
                let commands = (0..n)
                    .map(|_| self.command(depth + 1))
                    .collect::<Result<_, _>>()?;
                Ok(Command::Batch { commands })
            }
            t => Err(format!("unknown command tag {t}")),
        }
    }
}
