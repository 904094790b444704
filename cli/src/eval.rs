//! `outflow eval`: recall, precision, false (host, app) groups, time to detect.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use outflow_core::Alert;
use outflow_sim::eval::{evaluate, render};
use outflow_sim::Incident;
use serde::de::DeserializeOwned;

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Truth file written by `outflow sim --truth`.
    #[arg(long)]
    pub truth: PathBuf,
    /// Alerts (JSON lines) written by `outflow replay`.
    #[arg(long)]
    pub alerts: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn read_jsonl<T: DeserializeOwned>(p: &Path) -> anyhow::Result<Vec<T>> {
    let text =
        std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{} line {}", p.display(), i + 1))
        })
        .collect()
}

pub fn run(args: EvalArgs) -> anyhow::Result<ExitCode> {
    let truth: Vec<Incident> = read_jsonl(&args.truth)?;
    let alerts: Vec<Alert> = read_jsonl(&args.alerts)?;
    let report = evaluate(&truth, &alerts);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(ExitCode::SUCCESS)
}
