//! The Helm chart renders, lints and validates for every values file, its
//! semantics hold, and every container it defines would start with a
//! configuration the binaries accept.
//!
//! `helm/tests/validate.py` does the chart work (the real Helm SDK from PyPI
//! `helm-python-sdk`, Kubernetes schemas from PyPI `kubernetes-validate`, both
//! in `.ci/requirements.txt`) and writes, for each collector, aggregator and
//! agent container of each values file, the rendered TOML and the command
//! line as the pod runs it. This test then hands them to the binaries' own
//! argument and config code (clap, serde with `deny_unknown_fields`,
//! `validate()`), so a values key a binary does not know, a number written as
//! a float, or a flag that does not exist fails here.
//!
//! Skips (loudly) only when the Python modules are missing and `CI` is unset;
//! in CI a missing module is a failure.

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser;

#[derive(Parser)]
struct CollectorCmd {
    #[command(flatten)]
    args: outflow_collector::CollectorArgs,
}

#[derive(Parser)]
struct AggregatorCmd {
    #[command(flatten)]
    args: outflow_aggregator::AggregatorArgs,
}

/// One container invocation written by validate.py.
struct Invocation {
    name: String,
    component: String,
    toml: String,
    argv: Vec<String>,
    expect: serde_json::Value,
}

fn read_invocations(dir: &Path) -> Vec<Invocation> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| {
            let v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
            Invocation {
                name: p.file_name().unwrap().to_string_lossy().into_owned(),
                component: v["component"].as_str().unwrap().to_string(),
                toml: v["toml"].as_str().unwrap().to_string(),
                argv: v["argv"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a.as_str().unwrap().to_string())
                    .collect(),
                expect: v["expect"].clone(),
            }
        })
        .collect()
}

/// Points `--config` (either `--config=F` or `--config F`) at `file`.
fn with_config(argv: &[String], file: &Path) -> Vec<String> {
    let f = file.to_string_lossy().into_owned();
    let mut out = Vec::new();
    let mut it = argv.iter();
    while let Some(a) = it.next() {
        if a.starts_with("--config=") {
            out.push(format!("--config={f}"));
        } else if a == "--config" {
            it.next();
            out.push("--config".into());
            out.push(f.clone());
        } else {
            out.push(a.clone());
        }
    }
    out
}

fn check_invocation(inv: &Invocation, dir: &Path) -> Result<(), String> {
    let file = dir.join(format!("{}.toml", inv.name));
    std::fs::write(&file, &inv.toml).map_err(|e| e.to_string())?;
    let argv = with_config(&inv.argv, &file);
    let e = &inv.expect;
    match inv.component.as_str() {
        "collector" => {
            // argv[0] is the subcommand.
            let cmd = CollectorCmd::try_parse_from(
                std::iter::once("outflow-collector").chain(argv[1..].iter().map(String::as_str)),
            )
            .map_err(|e| format!("flags refused: {e}"))?;
            let cfg = cmd.args.resolve().map_err(|e| format!("{e:#}"))?;
            cfg.validate().map_err(|e| e.join("; "))?;
            let pod = e["pod"].as_str().unwrap();
            if cfg.id != pod {
                return Err(format!("id {} != pod {pod}", cfg.id));
            }
            if cfg.aggregators.len() as u64 != e["aggregators"].as_u64().unwrap() {
                return Err(format!("aggregators {:?}", cfg.aggregators));
            }
            if !cfg
                .advertised_endpoint()
                .starts_with(&format!("https://{pod}."))
            {
                return Err(format!("advertised {}", cfg.advertised_endpoint()));
            }
            // The chart mounts the certificate as server.pem / server-key.pem.
            if cfg.cert_stem != "server" || cfg.certs != Path::new("/etc/outflow/certs") {
                return Err(format!("certs {:?} stem {}", cfg.certs, cfg.cert_stem));
            }
        }
        "aggregator" => {
            let cmd = AggregatorCmd::try_parse_from(
                std::iter::once("outflow-aggregator").chain(argv[1..].iter().map(String::as_str)),
            )
            .map_err(|e| format!("flags refused: {e}"))?;
            // resolve() also runs validate().
            let cfg = cmd.args.resolve().map_err(|e| format!("{e:#}"))?;
            if cfg.id != e["raft_id"].as_u64().unwrap() {
                return Err(format!("raft id {} for {}", cfg.id, e["pod"]));
            }
            if cfg.peer_map().len() as u64 != e["replicas"].as_u64().unwrap() {
                return Err(format!("peers {:?}", cfg.peer_map()));
            }
            if cfg.join != e["join"].as_bool().unwrap() {
                return Err(format!("join = {}", cfg.join));
            }
            if cfg.certs.is_none() || cfg.insecure_plaintext {
                return Err("the aggregator would run without TLS".into());
            }
        }
        "agent" => {
            let cli = outflow_agent::cli::Cli::try_parse_from(
                std::iter::once("outflow-agent").chain(argv.iter().map(String::as_str)),
            )
            .map_err(|e| format!("flags refused: {e}"))?;
            let outflow_agent::cli::Command::Run(run) = cli.command else {
                return Err("the agent does not `run`".into());
            };
            let cfg = run.config().map_err(|e| format!("{e:#}"))?;
            cfg.validate().map_err(|e| e.join("; "))?;
            let node = e["node"].as_str().unwrap();
            if cfg.host_id.as_deref() != Some(node) {
                return Err(format!("host id {:?} != node {node}", cfg.host_id));
            }
            // No stem: the agent loads agent-<host id>.pem, the file the
            // chart provides for the node.
            if cfg.cert_stem.is_some() || cfg.output.is_some() {
                return Err(format!(
                    "cert_stem {:?} output {:?}",
                    cfg.cert_stem, cfg.output
                ));
            }
        }
        other => return Err(format!("unknown component {other}")),
    }
    Ok(())
}

#[test]
fn helm_chart_renders_lints_validates_and_its_containers_would_start() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let script = root.join("helm/tests/validate.py");
    assert!(script.is_file(), "missing {}", script.display());
    let dump = tempfile::tempdir().unwrap();
    let out = match Command::new("python3")
        .arg(&script)
        .env("OUTFLOW_HELM_DUMP", dump.path())
        .current_dir(&root)
        .output()
    {
        Ok(o) => o,
        Err(e) => {
            if std::env::var_os("CI").is_none() {
                eprintln!("\n!!!! SKIPPED helm chart validation: cannot run python3 ({e}) !!!!\n");
                return;
            }
            panic!("cannot run python3 for {}: {e}", script.display());
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(2) && stdout.contains("MISSING-MODULES") {
        if std::env::var_os("CI").is_none() {
            eprintln!(
                "\n!!!! SKIPPED helm chart validation: {} \
                 (pip install -r .ci/requirements.txt) !!!!\n",
                stdout.trim()
            );
            return;
        }
        panic!("helm chart validation needs Python modules in CI: {stdout}");
    }
    assert!(
        out.status.success(),
        "helm/tests/validate.py failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("OK: ") && stdout.contains("values files"),
        "unexpected output from validate.py:\n{stdout}\n{stderr}"
    );
    println!("{stdout}");

    let invocations = read_invocations(dump.path());
    let count = |c: &str| invocations.iter().filter(|i| i.component == c).count();
    // defaults (3), cert-manager (3), 5 aggregators (5), grown 3 → 5 (5).
    assert!(
        count("aggregator") >= 16,
        "aggregators: {}",
        count("aggregator")
    );
    assert!(
        count("collector") >= 4,
        "collectors: {}",
        count("collector")
    );
    assert!(count("agent") >= 7, "agents: {}", count("agent"));
    let work = tempfile::tempdir().unwrap();
    let failures: Vec<String> = invocations
        .iter()
        .filter_map(|inv| {
            check_invocation(inv, work.path()).err().map(|e| {
                format!(
                    "{} ({}): {e}\n    argv: {}",
                    inv.name,
                    inv.component,
                    inv.argv.join(" ")
                )
            })
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} rendered containers would not start:\n{}",
        failures.len(),
        invocations.len(),
        failures.join("\n")
    );
    println!(
        "{} rendered containers accepted by the binaries' own flag and config parsing",
        invocations.len()
    );
}
