//! The destination service catalogue: domain suffixes → service names.
//! Kept as data (`core/data/services.txt`, versioned) and overridable by
//! policy.

use std::collections::BTreeMap;

/// The service name used when a destination matches no catalogue entry.
pub const OTHER: &str = "other";

/// Services that hold files for others to fetch: the analytic's targets.
pub const STORAGE_SERVICES: &[&str] = &[
    "dropbox",
    "google_drive",
    "onedrive",
    "sharepoint",
    "box",
    "mega",
    "azure_blob",
    "aws_s3",
    "file_drop",
    "messaging",
    "code_hosting",
];

const BUILTIN: &str = include_str!("../data/services.txt");

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Catalogue {
    /// Reversed-label suffix → service. Patterns with `*` kept apart.
    exact: BTreeMap<String, String>,
    wildcard: Vec<(Vec<String>, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("service catalogue line {line}: {reason}")]
pub struct CatalogueError {
    pub line: usize,
    pub reason: String,
}

impl Default for Catalogue {
    fn default() -> Self {
        Catalogue::builtin()
    }
}

impl Catalogue {
    /// The catalogue shipped with this version.
    pub fn builtin() -> Self {
        // The built-in file is tested; failing to parse it is a build defect.
        Catalogue::parse(BUILTIN).unwrap_or_else(|e| panic!("built-in catalogue: {e}"))
    }

    pub fn parse(text: &str) -> Result<Self, CatalogueError> {
        let mut c = Catalogue {
            exact: BTreeMap::new(),
            wildcard: Vec::new(),
        };
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, rest) = line.split_once(':').ok_or_else(|| CatalogueError {
                line: i + 1,
                reason: "expected `service: suffix …`".into(),
            })?;
            let name = name.trim();
            if name.is_empty() || rest.split_whitespace().next().is_none() {
                return Err(CatalogueError {
                    line: i + 1,
                    reason: "a service needs a name and at least one suffix".into(),
                });
            }
            for suffix in rest.split_whitespace() {
                c.add(name, suffix);
            }
        }
        Ok(c)
    }

    /// Adds (or overrides) a suffix → service mapping.
    pub fn add(&mut self, service: &str, suffix: &str) {
        let suffix = suffix.trim_matches('.').to_ascii_lowercase();
        if suffix.contains('*') {
            let labels = suffix.split('.').map(str::to_string).collect();
            self.wildcard.push((labels, service.to_string()));
        } else {
            self.exact.insert(suffix, service.to_string());
        }
    }

    /// The service a destination name belongs to, if any (longest suffix wins).
    pub fn classify(&self, name: &str) -> Option<&str> {
        let name = name.trim_end_matches('.');
        let lower;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = name.to_ascii_lowercase();
            lower.as_str()
        } else {
            name
        };
        // Walk suffixes from the longest: the name itself, then drop labels.
        let mut rest = name;
        loop {
            if let Some(s) = self.exact.get(rest) {
                return Some(s);
            }
            match rest.split_once('.') {
                Some((_, tail)) if !tail.is_empty() => rest = tail,
                _ => break,
            }
        }
        let labels: Vec<&str> = name.split('.').collect();
        for (pattern, service) in &self.wildcard {
            if labels.len() >= pattern.len() {
                let tail = &labels[labels.len() - pattern.len()..];
                if tail.iter().zip(pattern).all(|(l, p)| p == "*" || l == p) {
                    return Some(service);
                }
            }
        }
        None
    }

    /// Every (service, suffix) pair, for display.
    pub fn entries(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = self
            .exact
            .iter()
            .map(|(k, s)| (s.clone(), k.clone()))
            .chain(self.wildcard.iter().map(|(p, s)| (s.clone(), p.join("."))))
            .collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_classifies_the_design_examples() {
        let c = Catalogue::builtin();
        assert_eq!(c.classify("content.dropboxapi.com"), Some("dropbox"));
        assert_eq!(c.classify("dropbox.com"), Some("dropbox"));
        assert_eq!(c.classify("notdropbox.com"), None);
        assert_eq!(c.classify("DRIVE.GOOGLE.COM."), Some("google_drive"));
        assert_eq!(c.classify("contoso.sharepoint.com"), Some("sharepoint"));
        assert_eq!(
            c.classify("my-bucket.s3.eu-west-1.amazonaws.com"),
            Some("aws_s3")
        );
        assert_eq!(c.classify("s3.amazonaws.com"), Some("aws_s3"));
        assert_eq!(c.classify("ec2.eu-west-1.amazonaws.com"), None);
        assert_eq!(c.classify("acct.blob.core.windows.net"), Some("azure_blob"));
        assert_eq!(c.classify("transfer.sh"), Some("file_drop"));
        assert_eq!(c.classify("example.com"), None);
        assert_eq!(c.classify(""), None);
    }

    #[test]
    fn bad_catalogue_lines_are_located() {
        let err = Catalogue::parse("dropbox: dropbox.com\nbroken line\n").unwrap_err();
        assert_eq!(err.line, 2);
        let err = Catalogue::parse("x:\n").unwrap_err();
        assert_eq!(err.line, 1);
    }

    #[test]
    fn longest_suffix_wins() {
        let mut c = Catalogue::builtin();
        c.add("corp_google", "corp.drive.google.com");
        assert_eq!(c.classify("a.corp.drive.google.com"), Some("corp_google"));
        assert_eq!(c.classify("drive.google.com"), Some("google_drive"));
    }
}
