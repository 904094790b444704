//! The Helm chart renders, lints and validates for every values file, and its
//! semantics hold: runs `helm/tests/validate.py` (real Helm SDK from PyPI
//! `helm-python-sdk`, Kubernetes schemas from PyPI `kubernetes-validate`,
//! both listed in `.ci/requirements.txt`).
//!
//! Skips (loudly) only when those Python modules are missing and `CI` is
//! unset; in CI a missing module is a failure.

use std::path::Path;
use std::process::Command;

#[test]
fn helm_chart_renders_lints_validates_and_keeps_its_promises() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let script = root.join("helm/tests/validate.py");
    assert!(script.is_file(), "missing {}", script.display());
    let out = match Command::new("python3")
        .arg(&script)
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
}
