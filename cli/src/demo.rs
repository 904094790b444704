//! `outflow demo`: a simulated fleet scored live, alerts printed as they
//! fire, then the result judged against the simulator's truth.
//!
//! By default the whole distributed system runs on loopback (see
//! [`crate::demo_cluster`]); `--embedded` scores the fleet with one
//! in-process engine and no network.

use std::io::{self, BufReader, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use outflow_core::alert::human_bytes;
use outflow_core::{Alert, Engine};
use outflow_sim::eval::{evaluate, render};
use outflow_sim::{simulate, SimOptions};

use crate::replay::{render_summary, run_stream, EngineFlags};

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// One in-process engine, no network: the fleet's telemetry is scored
    /// directly (no certificates, aggregators, collectors or agents).
    #[arg(long)]
    pub embedded: bool,
    /// Simulated hosts (default: 150 on the cluster, 300 embedded).
    #[arg(long)]
    pub hosts: Option<usize>,
    /// Simulated days (the first is the learning period).
    #[arg(long, default_value_t = 3)]
    pub days: u32,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    #[arg(long, default_value_t = 10)]
    pub incidents: usize,
    /// Print alerts as JSON lines instead of one-line summaries.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub engine: EngineFlags,
    #[command(flatten)]
    pub cluster: crate::demo_cluster::ClusterFlags,
}

pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    if args.embedded {
        run_embedded(args)
    } else {
        let (cfg, policy) = args.engine.resolve()?;
        let days = args.days.max(2);
        let opts = SimOptions {
            hosts: args.hosts.unwrap_or(150).max(1),
            days,
            seed: args.seed,
            incidents: args.incidents,
            start: crate::demo_cluster::recent_start(days),
            ..SimOptions::default()
        };
        let fleet = crate::demo_cluster::Fleet {
            opts,
            json: args.json,
            policy,
        };
        crate::demo_cluster::run(fleet, cfg, args.cluster)
    }
}

fn run_embedded(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let (cfg, policy) = args.engine.resolve()?;
    let opts = SimOptions {
        hosts: args.hosts.unwrap_or(300).max(1),
        days: args.days.max(2),
        seed: args.seed,
        incidents: args.incidents,
        ..SimOptions::default()
    };
    eprintln!(
        "outflow demo: simulating {} hosts over {} days (seed {}) with {} injected exfiltration incidents;\n\
         the first day is the learning period. Alerts print as they fire.",
        opts.hosts, opts.days, opts.seed, opts.incidents
    );
    let (reader, mut writer) = io::pipe().context("creating the simulator pipe")?;
    let sim_opts = opts.clone();
    let sim = std::thread::spawn(move || {
        let r = simulate(&sim_opts, &mut writer, |_, _| {});
        drop(writer);
        r
    });
    let mut engine = Engine::new(cfg, policy);
    let mut input = BufReader::with_capacity(1 << 20, reader);
    let bar = io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new_spinner();
        b.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        b
    });
    let mut alerts: Vec<Alert> = Vec::new();
    let stdout = io::stdout();
    let json = args.json;
    let mut on_alert = |a: &Alert| -> io::Result<()> {
        let line = if json {
            a.to_json()
        } else {
            format!(
                "[{:<8}] {} {} {} on {} → {} {} (score {:.1}, id {})",
                a.severity.as_str(),
                a.window_end,
                a.kind,
                a.app,
                a.host,
                a.service,
                human_bytes(a.bytes_out),
                a.score,
                &a.id[..12]
            )
        };
        match &bar {
            Some(b) => b.println(line),
            None => {
                let mut o = stdout.lock();
                writeln!(o, "{line}")?;
            }
        }
        alerts.push(a.clone());
        Ok(())
    };
    let result = run_stream(&mut input, &mut engine, false, &mut on_alert, &mut |b| {
        if let Some(bar) = &bar {
            bar.set_message(format!("event time {}", engine_time_hint(b)));
            bar.tick();
        }
    })?;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let summary = match result {
        Ok(s) | Err((s, _)) => s,
    };
    let sim = sim
        .join()
        .map_err(|_| anyhow::anyhow!("the simulator thread panicked"))?
        .context("simulating")?;
    eprint!("{}", render_summary(&summary));
    eprintln!("\nAgainst the simulator's truth:");
    eprint!("{}", render(&evaluate(&sim.incidents, &alerts)));
    Ok(ExitCode::SUCCESS)
}

fn engine_time_hint(bytes: u64) -> String {
    format!("{} read", human_bytes(bytes))
}
