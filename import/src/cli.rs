//! `outflow import`: the command-line edge.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::{import, ImportConfig, ImportOptions};

/// `outflow import [--sysmon FILE]… [--pcap FILE]… [--zeek DIR]… --out FILE|-`
#[derive(Args, Debug, Clone)]
pub struct ImportArgs {
    /// Sysmon JSON lines (NXLog or Winlogbeat), or a .zip of them. Repeatable.
    #[arg(long, value_name = "FILE")]
    pub sysmon: Vec<PathBuf>,
    /// A pcap or pcapng capture, or a .zip of them. Repeatable.
    #[arg(long, value_name = "FILE")]
    pub pcap: Vec<PathBuf>,
    /// A Zeek log directory (conn, ssl, dns; TSV or JSON), or one log file. Repeatable.
    #[arg(long, value_name = "DIR")]
    pub zeek: Vec<PathBuf>,
    /// Where to write telemetry JSONL; `-` for stdout.
    #[arg(long, value_name = "FILE|-")]
    pub out: String,
    /// A TOML file with the options below (flags win).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Length of a `net` delta interval, seconds [default: 60].
    #[arg(long)]
    pub interval_secs: Option<u64>,
    /// Clock-skew tolerance between Sysmon and the captures, seconds [default: 60].
    #[arg(long)]
    pub clock_skew_secs: Option<f64>,
    /// Window for recognising one UDP datagram in two captures, ms [default: 2000].
    #[arg(long)]
    pub duplicate_window_ms: Option<u64>,
    /// How many rejections the summary lists one by one [default: 20].
    #[arg(long)]
    pub max_listed_rejections: Option<usize>,
    /// Exit non-zero if any input was rejected (the output is still written).
    #[arg(long)]
    pub strict: bool,
}

impl ImportArgs {
    /// The configuration: defaults, then the file, then flags.
    pub fn config(&self) -> anyhow::Result<ImportConfig> {
        let mut cfg = match &self.config {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading config {}", p.display()))?;
                toml::from_str::<ImportConfig>(&text)
                    .with_context(|| format!("config {} is not valid", p.display()))?
            }
            None => ImportConfig::default(),
        };
        if let Some(v) = self.interval_secs {
            cfg.interval_secs = v;
        }
        if let Some(v) = self.clock_skew_secs {
            cfg.clock_skew_secs = v;
        }
        if let Some(v) = self.duplicate_window_ms {
            cfg.duplicate_window_ms = v;
        }
        if let Some(v) = self.max_listed_rejections {
            cfg.max_listed_rejections = v;
        }
        cfg.validate()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        Ok(cfg)
    }
}

/// Runs an import; the summary goes to stderr.
pub fn run(args: ImportArgs) -> anyhow::Result<ExitCode> {
    let opts = ImportOptions {
        sysmon: args.sysmon.clone(),
        pcap: args.pcap.clone(),
        zeek: args.zeek.clone(),
        config: args.config()?,
    };
    let report = if args.out == "-" {
        let stdout = std::io::stdout();
        let mut w = BufWriter::with_capacity(1 << 16, stdout.lock());
        let r = import(&opts, &mut w)?;
        w.flush()?;
        r
    } else {
        let f = File::create(&args.out).with_context(|| format!("creating {}", args.out))?;
        let mut w = BufWriter::with_capacity(1 << 16, f);
        let r = import(&opts, &mut w).with_context(|| format!("writing {}", args.out))?;
        w.flush()?;
        r
    };
    eprint!("{report}");
    let opened = report.sysmon.files + report.zeek.files + report.pcap.files;
    if opened == 0 {
        anyhow::bail!("none of the inputs could be read (see the rejections above)");
    }
    if args.strict && report.total_rejected() > 0 {
        eprintln!(
            "outflow import: {} inputs rejected (--strict)",
            report.total_rejected()
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        args: ImportArgs,
    }

    fn parse(argv: &[&str]) -> ImportArgs {
        T::try_parse_from(std::iter::once("import").chain(argv.iter().copied()))
            .unwrap()
            .args
    }

    #[test]
    fn flags_win_over_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("import.toml");
        std::fs::write(&cfg, "interval_secs = 300\nclock_skew_secs = 5.0\n").unwrap();
        let c = cfg.to_str().unwrap();
        let a = parse(&[
            "--zeek",
            "x",
            "--out",
            "-",
            "--config",
            c,
            "--interval-secs",
            "30",
        ]);
        let got = a.config().unwrap();
        assert_eq!((got.interval_secs, got.clock_skew_secs), (30, 5.0));
        std::fs::write(&cfg, "interval = 30\n").unwrap();
        let err = parse(&["--out", "-", "--config", c]).config().unwrap_err();
        assert!(format!("{err:#}").contains("unknown field"), "{err:#}");
        let err = parse(&["--out", "-", "--interval-secs", "0"])
            .config()
            .unwrap_err();
        assert!(err.to_string().contains("interval_secs"), "{err}");
    }

    #[test]
    fn writes_the_file_and_strict_fails_on_rejections() {
        let dir = tempfile::tempdir().unwrap();
        let up = crate::synthetic::write_synthetic_upload(dir.path()).unwrap();
        let out = dir.path().join("out.jsonl");
        let o = out.to_str().unwrap();
        let s = up.sysmon.to_str().unwrap();
        let p = up.pcaps[0].to_str().unwrap();
        let code = run(parse(&["--sysmon", s, "--pcap", p, "--out", o, "--strict"])).unwrap();
        assert_eq!(code, ExitCode::SUCCESS);
        let text = std::fs::read_to_string(&out).unwrap();
        assert!(text.lines().count() > 5);
        assert!(text.contains("content.dropboxapi.com"));
        // A missing input is a rejection: --strict turns it into a failure,
        // and the rest is still written.
        let code = run(parse(&[
            "--sysmon",
            s,
            "--pcap",
            "nope.pcap",
            "--out",
            o,
            "--strict",
        ]))
        .unwrap();
        assert_eq!(code, ExitCode::FAILURE);
        assert!(std::fs::read_to_string(&out)
            .unwrap()
            .contains("process_start"));
        let code = run(parse(&["--sysmon", s, "--pcap", "nope.pcap", "--out", o])).unwrap();
        assert_eq!(code, ExitCode::SUCCESS);
        // No input at all, or none readable, is an error.
        assert!(run(parse(&["--out", o])).is_err());
        let err = run(parse(&["--pcap", "nope.pcap", "--out", o])).unwrap_err();
        assert!(err.to_string().contains("none of the inputs"), "{err}");
    }
}
