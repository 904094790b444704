//! `outflow sim`: a seeded fleet's telemetry and its truth file.

use std::fs::File;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use outflow_sim::{simulate, SimOptions};

#[derive(Args, Debug)]
pub struct SimArgs {
    /// Number of hosts.
    #[arg(long, default_value_t = 300)]
    pub hosts: usize,
    /// Number of simulated days.
    #[arg(long, default_value_t = 3)]
    pub days: u32,
    /// Seed: the same seed gives the same bytes.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Injected exfiltration incidents (kinds cycle).
    #[arg(long, default_value_t = 10)]
    pub incidents: usize,
    /// Telemetry JSONL output ('-' for stdout).
    #[arg(long)]
    pub out: String,
    /// Truth file: one incident per line (JSON).
    #[arg(long)]
    pub truth: Option<PathBuf>,
}

pub fn run(args: SimArgs) -> anyhow::Result<ExitCode> {
    if args.hosts == 0 || args.days == 0 {
        anyhow::bail!("--hosts and --days must be at least 1");
    }
    let opts = SimOptions {
        hosts: args.hosts,
        days: args.days,
        seed: args.seed,
        incidents: args.incidents,
        ..SimOptions::default()
    };
    let mut out: Box<dyn Write> = if args.out == "-" {
        Box::new(io::stdout().lock())
    } else {
        Box::new(File::create(&args.out).with_context(|| format!("cannot create {}", args.out))?)
    };
    let bar = (io::stderr().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::new(u64::from(args.days));
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "simulating day {pos}/{len} {bar:30} {elapsed}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let summary = simulate(&opts, &mut out, |d, _| {
        if let Some(b) = &bar {
            b.set_position(u64::from(d));
        }
    })
    .context("writing telemetry")?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if let Some(t) = &args.truth {
        let mut w = BufWriter::new(
            File::create(t).with_context(|| format!("cannot create {}", t.display()))?,
        );
        for i in &summary.incidents {
            serde_json::to_writer(&mut w, i)?;
            w.write_all(b"\n")?;
        }
        w.flush()?;
    }
    eprintln!(
        "sim: {} hosts, {} days, {} events, {} incidents (seed {})",
        summary.hosts,
        args.days,
        summary.events,
        summary.incidents.len(),
        args.seed
    );
    Ok(ExitCode::SUCCESS)
}
