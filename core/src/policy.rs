//! Policy: which services are approved (per organisation, optionally per app)
//! and which findings are suppressed. Replicated by the aggregator; read by
//! the engine. Deterministic (ordered collections only).

use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// Services the organisation sanctions. An upload to an approved service
    /// needs much stronger evidence to alert.
    pub approved: Vec<ApprovedService>,
    /// Findings matching a suppression are not raised (counted instead).
    pub suppressions: Vec<Suppression>,
    /// Extra catalogue entries: `{service, suffix}` pairs.
    pub catalogue_additions: Vec<CatalogueEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovedService {
    pub service: String,
    /// Only for this app (normalised name); all apps when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Suppression {
    /// Every present field must match. `host` may end with `*` (prefix match).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// RFC 3339; the suppression lapses after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogueEntry {
    pub service: String,
    pub suffix: String,
}

impl Policy {
    pub fn is_approved(&self, app: &str, service: &str) -> bool {
        self.approved
            .iter()
            .any(|a| a.service == service && a.app.as_deref().is_none_or(|x| x == app))
    }

    /// The first suppression matching this finding at event time `at`.
    pub fn suppression_for(
        &self,
        app: &str,
        host: &str,
        service: &str,
        at: Timestamp,
    ) -> Option<&Suppression> {
        self.suppressions.iter().find(|s| {
            s.app.as_deref().is_none_or(|x| x == app)
                && s.service.as_deref().is_none_or(|x| x == service)
                && s.host.as_deref().is_none_or(|h| match h.strip_suffix('*') {
                    Some(prefix) => host.starts_with(prefix),
                    None => h == host,
                })
                && s.until
                    .as_deref()
                    .and_then(|u| Timestamp::parse_rfc3339(u).ok())
                    .is_none_or(|u| at <= u)
        })
    }

    /// Every problem with this policy.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errs = Vec::new();
        for (i, s) in self.suppressions.iter().enumerate() {
            if s.app.is_none() && s.host.is_none() && s.service.is_none() {
                errs.push(format!(
                    "suppression {i} matches everything: give at least one of app, host, service"
                ));
            }
            if let Some(u) = &s.until {
                if let Err(e) = Timestamp::parse_rfc3339(u) {
                    errs.push(format!("suppression {i}: until: {e}"));
                }
            }
            if s.reason.trim().is_empty() {
                errs.push(format!("suppression {i}: a reason is required"));
            }
        }
        for (i, a) in self.approved.iter().enumerate() {
            if a.service.trim().is_empty() {
                errs.push(format!("approved {i}: service must not be empty"));
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn approval_and_suppression_matching() {
        let p: Policy = serde_json::from_str(
            r#"{"approved":[{"service":"onedrive"},{"service":"dropbox","app":"dropbox.exe"}],
                "suppressions":[{"host":"build-*","app":"curl","reason":"CI uploads","until":"2030-01-01T00:00:00Z"}]}"#,
        )
        .unwrap();
        p.validate().unwrap();
        assert!(p.is_approved("winword.exe", "onedrive"));
        assert!(p.is_approved("dropbox.exe", "dropbox"));
        assert!(!p.is_approved("winword.exe", "dropbox"));
        let t = Timestamp::parse_rfc3339("2029-01-01T00:00:00Z").unwrap();
        assert!(p.suppression_for("curl", "build-7", "other", t).is_some());
        assert!(p.suppression_for("curl", "ws-7", "other", t).is_none());
        let late = Timestamp::parse_rfc3339("2031-01-01T00:00:00Z").unwrap();
        assert!(p
            .suppression_for("curl", "build-7", "other", late)
            .is_none());
    }

    #[test]
    fn validation_lists_problems() {
        let p: Policy = serde_json::from_str(
            r#"{"suppressions":[{"reason":""},{"app":"x","until":"soon","reason":"r"}]}"#,
        )
        .unwrap();
        assert_eq!(p.validate().unwrap_err().len(), 3);
    }
}
