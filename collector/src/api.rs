//! The collector's HTTP API: `/metrics` (Prometheus), `/healthz`, `/readyz`
//! and the evidence behind an alert, `/api/v1/evidence?alert=ID` or
//! `/api/v1/evidence?host=H&start=TS&end=TS[&pid=N]`.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use outflow_core::{Event, Timestamp};
use serde::Deserialize;

use crate::metrics::Metrics;
use crate::store::Store;

#[derive(Clone)]
pub struct ApiState {
    pub collector_id: String,
    pub metrics: Arc<Metrics>,
    pub store: Store,
    /// Required bearer token for evidence; `Err` = evidence disabled (off
    /// loopback without a token).
    pub evidence_auth: Result<Option<String>, String>,
}

/// `Some(refusal)` when the request may not read evidence.
fn refusal(s: &ApiState, headers: &axum::http::HeaderMap) -> Option<Response> {
    match &s.evidence_auth {
        Err(why) => Some(bad(StatusCode::FORBIDDEN, why.clone())),
        Ok(None) => None,
        Ok(Some(token)) => {
            let given = headers
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            if given == Some(token.as_str()) {
                None
            } else {
                Some(bad(
                    StatusCode::UNAUTHORIZED,
                    "evidence requires `Authorization: Bearer <api_token>`".into(),
                ))
            }
        }
    }
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/v1/evidence", get(evidence))
        .with_state(state)
}

async fn metrics(State(s): State<ApiState>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(&s.collector_id),
    )
        .into_response()
}

async fn readyz(State(s): State<ApiState>) -> Response {
    if s.metrics.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: replaying the batch log\n",
        )
            .into_response()
    }
}

#[derive(Debug, Deserialize)]
pub struct EvidenceQuery {
    pub alert: Option<String>,
    pub host: Option<String>,
    pub start: Option<String>,
    pub end: Option<String>,
    pub pid: Option<u32>,
}

fn bad(status: StatusCode, msg: String) -> Response {
    (status, Json(serde_json::json!({ "error": msg }))).into_response()
}

async fn evidence(
    State(s): State<ApiState>,
    headers: axum::http::HeaderMap,
    Query(q): Query<EvidenceQuery>,
) -> Response {
    if let Some(r) = refusal(&s, &headers) {
        return r;
    }
    let (host, start, end, pid, alert) = if let Some(id) = &q.alert {
        let json = match s.store.alert_json(id) {
            Ok(Some(j)) => j,
            Ok(None) => {
                return bad(
                    StatusCode::NOT_FOUND,
                    format!("no alert `{id}` on this collector (expired or raised elsewhere)"),
                )
            }
            Err(e) => return bad(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        };
        let a: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
        let field = |k: &str| a.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
        let pid = a.get("pid").and_then(|v| v.as_u64()).map(|p| p as u32);
        (
            field("host"),
            field("window_start"),
            field("window_end"),
            pid,
            Some(a),
        )
    } else {
        match (&q.host, &q.start, &q.end) {
            (Some(h), Some(st), Some(en)) => (h.clone(), st.clone(), en.clone(), q.pid, None),
            _ => {
                return bad(
                    StatusCode::BAD_REQUEST,
                    "give `alert=ID`, or `host`, `start` and `end` (RFC 3339)".into(),
                )
            }
        }
    };
    let parse = |what: &str, v: &str| {
        Timestamp::parse_rfc3339(v).map_err(|e| {
            Box::new(bad(
                StatusCode::BAD_REQUEST,
                format!("{what} `{v}` is not RFC 3339: {e}"),
            ))
        })
    };
    let start_ts = match parse("start", &start) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let end_ts = match parse("end", &end) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let store = s.store.clone();
    let h = host.clone();
    let found =
        tokio::task::spawn_blocking(move || collect_evidence(&store, &h, start_ts, end_ts, pid))
            .await;
    match found {
        Ok(Ok(events)) => Json(serde_json::json!({
            "host": host,
            "window_start": start,
            "window_end": end,
            "pid": pid,
            "alert": alert,
            "events": events,
        }))
        .into_response(),
        Ok(Err(e)) => bad(StatusCode::INTERNAL_SERVER_ERROR, e),
        Err(e) => bad(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The stored events of `host` behind a window: its network records in
/// `(start, end]` (of `pid` when given), the process starts/ends of the pids
/// involved, and DNS answers, as telemetry JSON objects (DESIGN.md §2).
pub fn collect_evidence(
    store: &Store,
    host: &str,
    start: Timestamp,
    end: Timestamp,
    pid: Option<u32>,
) -> Result<Vec<serde_json::Value>, String> {
    // Process starts may precede the window by far: look back a day for them.
    let lookback = start.saturating_sub_us(outflow_core::time::MICROS_PER_DAY);
    let batches = store
        .batches_of_host(host, lookback.as_micros(), end.as_micros())
        .map_err(|e| e.to_string())?;
    let mut net = Vec::new();
    let mut procs: BTreeMap<u32, Vec<Event>> = BTreeMap::new();
    let mut dns = Vec::new();
    for b in batches {
        let events = match outflow_proto::batch_events(b.batch) {
            Ok(e) => e,
            Err(_) => continue,
        };
        for e in events {
            let ts = e.ts();
            match &e {
                Event::Net(n) if ts > start && ts <= end && pid.is_none_or(|p| p == n.pid) => {
                    net.push(e)
                }
                Event::ProcessStart(p) if ts <= end => procs.entry(p.pid).or_default().push(e),
                Event::ProcessEnd(p) if ts >= start => procs.entry(p.pid).or_default().push(e),
                Event::Dns(_) if ts > start && ts <= end => dns.push(e),
                _ => {}
            }
        }
    }
    let pids: std::collections::BTreeSet<u32> = net
        .iter()
        .filter_map(|e| match e {
            Event::Net(n) => Some(n.pid),
            _ => None,
        })
        .chain(pid)
        .collect();
    let mut out: Vec<Event> = Vec::new();
    for p in pids {
        if let Some(v) = procs.remove(&p) {
            // The latest start at or before the window, and any end after it.
            let last_start = v
                .iter()
                .filter(|e| matches!(e, Event::ProcessStart(_)))
                .max_by_key(|e| e.ts())
                .cloned();
            out.extend(last_start);
            out.extend(v.into_iter().filter(|e| matches!(e, Event::ProcessEnd(_))));
        }
    }
    out.extend(dns);
    out.extend(net);
    out.sort_by_key(|e| e.ts());
    Ok(out
        .iter()
        .filter_map(|e| serde_json::from_str(&e.to_json_line()).ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(auth: Result<Option<String>, String>) -> (tempfile::TempDir, ApiState) {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let s = ApiState {
            collector_id: "c1".into(),
            metrics: Arc::new(Metrics::default()),
            store,
            evidence_auth: auth,
        };
        (tmp, s)
    }

    #[test]
    fn evidence_needs_the_token_and_is_off_without_one_off_loopback() {
        let mut h = axum::http::HeaderMap::new();
        let (_t, open) = state(Ok(None));
        assert!(refusal(&open, &h).is_none());
        let (_t, off) = state(Err("off loopback".into()));
        assert_eq!(refusal(&off, &h).unwrap().status(), StatusCode::FORBIDDEN);
        let (_t, tok) = state(Ok(Some("s3cret".into())));
        assert_eq!(
            refusal(&tok, &h).unwrap().status(),
            StatusCode::UNAUTHORIZED
        );
        h.insert(
            axum::http::header::AUTHORIZATION,
            "Bearer wrong".parse().unwrap(),
        );
        assert!(refusal(&tok, &h).is_some());
        h.insert(
            axum::http::header::AUTHORIZATION,
            "Bearer s3cret".parse().unwrap(),
        );
        assert!(refusal(&tok, &h).is_none());
    }
}
