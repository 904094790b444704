//! `outflow-agent`: the endpoint agent binary (see `outflow_agent::cli`).

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = outflow_agent::cli::Cli::parse();
    match outflow_agent::cli::main_with(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("outflow-agent: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
