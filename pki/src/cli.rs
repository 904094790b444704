//! `outflow certs …`

use std::path::PathBuf;
use std::process::ExitCode;

use crate::{generate_dev, DevOptions};

/// Certificates for Outflow (dev CA and local-cluster certificates).
#[derive(Debug, clap::Args)]
pub struct CertsArgs {
    #[command(subcommand)]
    pub command: CertsCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum CertsCommand {
    /// A dev CA (reused if DIR already has one) and certificates for local
    /// runs: server, admin, importer, and one agent certificate per host id.
    Dev(DevArgs),
}

#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Directory to write the PEM files into (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// Host ids to issue agent certificates for (`agent-<host>.pem`).
    #[arg(long, value_delimiter = ',')]
    pub hosts: Vec<String>,
    /// Extra DNS names or IPs for the server certificate (besides localhost,
    /// 127.0.0.1 and ::1).
    #[arg(long, value_delimiter = ',')]
    pub server_names: Vec<String>,
    /// Validity of the issued certificates in days.
    #[arg(long, default_value_t = 365)]
    pub days: u32,
    /// Make a new CA even if DIR already holds one.
    #[arg(long)]
    pub new_ca: bool,
}

/// Runs `outflow certs`.
pub fn run(args: CertsArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        CertsCommand::Dev(a) => {
            if a.days == 0 {
                anyhow::bail!("--days must be at least 1");
            }
            let files = generate_dev(
                &a.out,
                &DevOptions {
                    hosts: a.hosts,
                    server_names: a.server_names,
                    validity_days: a.days,
                    reuse_ca: !a.new_ca,
                },
            )?;
            eprintln!(
                "outflow certs: {} files written to {} ({})",
                files.written.len(),
                a.out.display(),
                if files.new_ca {
                    "new dev CA"
                } else {
                    "existing CA reused"
                }
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
