//! `outflow eval`: alerts judged against a simulator truth file.

use std::collections::{BTreeMap, BTreeSet};

use outflow_core::{Alert, Timestamp};
use serde::Serialize;

use crate::Incident;

/// An alert matches an incident on the same host and app whose window
/// overlaps the incident, or comes within this long after its end.
pub const MATCH_SLACK_US: i64 = 3600 * 1_000_000;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct IncidentResult {
    pub id: String,
    pub kind: String,
    pub host: String,
    pub app: String,
    pub detected: bool,
    /// Seconds from the incident's start to the end of the first matching
    /// alert's window.
    pub time_to_detect_secs: Option<f64>,
    pub alerts: usize,
    pub max_severity: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EvalReport {
    pub incidents: usize,
    pub detected: usize,
    pub recall: f64,
    pub alerts: usize,
    pub true_positive_alerts: usize,
    pub false_positive_alerts: usize,
    /// Distinct (host, app) pairs with false alerts: what an analyst triages.
    pub false_positive_groups: Vec<(String, String)>,
    /// True-positive alerts / all alerts.
    pub precision: f64,
    pub median_time_to_detect_secs: Option<f64>,
    pub max_time_to_detect_secs: Option<f64>,
    pub per_incident: Vec<IncidentResult>,
}

fn ts(s: &str) -> Option<i64> {
    Timestamp::parse_rfc3339(s).ok().map(|t| t.0)
}

pub fn evaluate(truth: &[Incident], alerts: &[Alert]) -> EvalReport {
    let mut matched = vec![false; alerts.len()];
    let mut per_incident = Vec::new();
    for inc in truth {
        let (Some(s), Some(e)) = (ts(&inc.start), ts(&inc.end)) else {
            continue;
        };
        let mut first: Option<i64> = None;
        let mut count = 0;
        let mut max_sev = None;
        for (i, a) in alerts.iter().enumerate() {
            let (Some(ws), Some(we)) = (ts(&a.window_start), ts(&a.window_end)) else {
                continue;
            };
            if a.host == inc.host && a.app == inc.app && ws <= e + MATCH_SLACK_US && we >= s {
                matched[i] = true;
                count += 1;
                first = Some(first.map_or(we, |f: i64| f.min(we)));
                max_sev = max_sev.max(Some(a.severity));
            }
        }
        per_incident.push(IncidentResult {
            id: inc.id.clone(),
            kind: serde_json::to_value(inc.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            host: inc.host.clone(),
            app: inc.app.clone(),
            detected: count > 0,
            time_to_detect_secs: first.map(|f| (f - s) as f64 / 1e6),
            alerts: count,
            max_severity: max_sev.map(|s| s.as_str().to_string()),
        });
    }
    let detected = per_incident.iter().filter(|r| r.detected).count();
    let tp = matched.iter().filter(|m| **m).count();
    let groups: BTreeSet<(String, String)> = alerts
        .iter()
        .zip(&matched)
        .filter(|(_, m)| !**m)
        .map(|(a, _)| (a.host.clone(), a.app.clone()))
        .collect();
    let mut ttd: Vec<f64> = per_incident
        .iter()
        .filter_map(|r| r.time_to_detect_secs)
        .collect();
    ttd.sort_by(f64::total_cmp);
    EvalReport {
        incidents: per_incident.len(),
        detected,
        recall: if per_incident.is_empty() {
            1.0
        } else {
            detected as f64 / per_incident.len() as f64
        },
        alerts: alerts.len(),
        true_positive_alerts: tp,
        false_positive_alerts: alerts.len() - tp,
        false_positive_groups: groups.into_iter().collect(),
        precision: if alerts.is_empty() {
            1.0
        } else {
            tp as f64 / alerts.len() as f64
        },
        median_time_to_detect_secs: ttd.get(ttd.len() / 2).copied(),
        max_time_to_detect_secs: ttd.last().copied(),
        per_incident,
    }
}

/// A human table of the report.
pub fn render(r: &EvalReport) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "incidents {}  detected {}  recall {:.2}\nalerts {}  true {}  false {}  precision {:.2}  false (host, app) groups {}\n",
        r.incidents,
        r.detected,
        r.recall,
        r.alerts,
        r.true_positive_alerts,
        r.false_positive_alerts,
        r.precision,
        r.false_positive_groups.len()
    ));
    if let (Some(m), Some(x)) = (r.median_time_to_detect_secs, r.max_time_to_detect_secs) {
        s.push_str(&format!("time to detect: median {m:.0} s, max {x:.0} s\n"));
    }
    s.push_str(&format!(
        "{:<7} {:<20} {:<10} {:<16} {:<9} {:>8} {:<9}\n",
        "id", "kind", "host", "app", "detected", "ttd (s)", "severity"
    ));
    for i in &r.per_incident {
        s.push_str(&format!(
            "{:<7} {:<20} {:<10} {:<16} {:<9} {:>8} {:<9}\n",
            i.id,
            i.kind,
            i.host,
            i.app,
            if i.detected { "yes" } else { "NO" },
            i.time_to_detect_secs
                .map(|t| format!("{t:.0}"))
                .unwrap_or_else(|| "-".into()),
            i.max_severity.clone().unwrap_or_else(|| "-".into())
        ));
    }
    let mut by_app: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, app) in &r.false_positive_groups {
        *by_app.entry(app).or_default() += 1;
    }
    for (h, a) in &r.false_positive_groups {
        s.push_str(&format!("false positive group: {a} on {h}\n"));
    }
    s
}
