//! The importer without the rest of the `outflow` binary, for quick runs and
//! speed measurements: `cargo run -p outflow-import --release --example import
//! -- --sysmon FILE --pcap FILE --out -` (same flags as `outflow import`).

use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: outflow_import::cli::ImportArgs,
}

fn main() -> std::process::ExitCode {
    match outflow_import::cli::run(Cli::parse().args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("import: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
