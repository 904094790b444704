//! App names: the normalised executable name is the unit fleets are compared by.

/// The app of a process whose start was never seen.
pub const UNKNOWN_APP: &str = "unknown";

/// Lower-cased basename of an executable path or name:
/// `C:\…\WINWORD.EXE` → `winword.exe`, `/usr/bin/python3.11` → `python3.11`.
pub fn normalise_app(name_or_path: &str) -> String {
    let trimmed = name_or_path.trim().trim_matches('"');
    let base = trimmed
        .rsplit(['/', '\\'])
        .find(|s| !s.is_empty())
        .unwrap_or("");
    if base.is_empty() {
        return UNKNOWN_APP.to_string();
    }
    base.to_lowercase()
}

/// Office applications: their network use is mostly sync and save.
pub fn is_office_app(app: &str) -> bool {
    matches!(
        app,
        "winword.exe"
            | "excel.exe"
            | "powerpnt.exe"
            | "outlook.exe"
            | "msaccess.exe"
            | "mspub.exe"
            | "onenote.exe"
            | "visio.exe"
            | "soffice.bin"
            | "libreoffice"
    )
}

/// Script hosts and living-off-the-land binaries an Office app should not spawn.
pub fn is_script_host(app: &str) -> bool {
    matches!(
        app,
        "powershell.exe"
            | "pwsh.exe"
            | "pwsh"
            | "cmd.exe"
            | "wscript.exe"
            | "cscript.exe"
            | "mshta.exe"
            | "rundll32.exe"
            | "regsvr32.exe"
            | "certutil.exe"
            | "bitsadmin.exe"
            | "curl.exe"
            | "curl"
            | "wget"
            | "bash"
            | "sh"
            | "python.exe"
            | "python3"
    ) || app.starts_with("python3.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_paths_and_case() {
        assert_eq!(
            normalise_app(r"C:\Program Files\Microsoft Office\WINWORD.EXE"),
            "winword.exe"
        );
        assert_eq!(normalise_app("/usr/bin/python3.11"), "python3.11");
        assert_eq!(normalise_app("\"C:\\x\\PowerShell.exe\""), "powershell.exe");
        assert_eq!(normalise_app("curl"), "curl");
        assert_eq!(normalise_app("/opt/tool/"), "tool");
        assert_eq!(normalise_app("  "), "unknown");
    }

    #[test]
    fn lineage_sets() {
        assert!(is_office_app("excel.exe"));
        assert!(is_script_host("powershell.exe"));
        assert!(is_script_host("python3.12"));
        assert!(!is_script_host("onedrive.exe"));
    }
}
