//! `outflow`: one binary for every server-side role and tool.
//!
//! Each subcommand's arguments and behaviour live in the crate that owns the
//! role; this file only dispatches.

use clap::{Parser, Subcommand};

/// Events are parsed on one thread and dropped on another: mimalloc frees
/// across threads far more cheaply than the system allocator.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod demo;
mod demo_cluster;
mod eval;
mod replay;
mod replay_sharded;
mod sim;

#[derive(Parser)]
#[command(
    name = "outflow",
    version,
    about = "Finds processes sending data out that they never normally send (MITRE AN1511), judged against the whole fleet."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Everything on loopback, no set-up: dev certificates, 3 aggregators, 2 collectors,
    /// a simulated fleet of mTLS agents, alerts live, admin API on 127.0.0.1:7070
    /// (`--embedded`: one in-process engine).
    Demo(demo::DemoArgs),
    /// Stream telemetry JSONL through the engine in event time.
    Replay(replay::ReplayArgs),
    /// Simulate a fleet: telemetry JSONL and a truth file.
    Sim(sim::SimArgs),
    /// Score alerts against a simulator truth file.
    Eval(eval::EvalArgs),
    /// Certificates: a dev CA and the certificates of a local cluster.
    Certs(outflow_pki::CertsArgs),
    /// One aggregator (Raft) node: fleet baselines, shard map, policy, admin API.
    Aggregator(outflow_aggregator::AggregatorArgs),
    /// Query and administer the aggregator cluster through its admin API.
    Ctl(outflow_aggregator::ctl::CtlArgs),
    /// A collector: mTLS ingest, durable windows, scoring, OTLP alerts.
    Collector(outflow_collector::CollectorArgs),
    /// Import Sysmon logs, Zeek logs and packet captures as telemetry JSONL.
    Import(outflow_import::cli::ImportArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result: anyhow::Result<std::process::ExitCode> = match cli.command {
        Command::Demo(a) => demo::run(a),
        Command::Replay(a) => replay::run(a),
        Command::Sim(a) => sim::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Certs(args) => outflow_pki::run(args),
        Command::Aggregator(a) => outflow_aggregator::run(a),
        Command::Ctl(a) => outflow_aggregator::ctl::run(a),
        Command::Collector(args) => outflow_collector::run(args),
        Command::Import(args) => outflow_import::cli::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("outflow: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
