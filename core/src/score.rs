//! Scoring: how surprising is this upload for this app, judged against the
//! app's peers (other hosts), with every factor's contribution reported.
//!
//! Each peer factor is `-log10` of a smoothed peer tail probability, counted
//! in host-days (each host contributes at most one observation per app per
//! day): "on how many other host-days did this app reach this?". Context
//! factors (lineage, the host's own history, approval) add or subtract fixed
//! amounts. A thin baseline (few peers) is said so, weighs less, and caps the
//! severity at medium.

use crate::alert::{human_bytes, thousands, Reason, Severity};
use crate::app::{is_office_app, is_script_host};
use crate::baseline::{persistence_bucket, ratio_bucket, volume_bucket, PeerView};
use crate::catalogue::STORAGE_SERVICES;
use crate::config::EngineConfig;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FindingKind {
    /// One window of one process.
    Window,
    /// A process's uploads over its day so far (low and slow).
    Cumulative,
}

pub struct ScoreInput<'a> {
    pub cfg: &'a EngineConfig,
    pub kind: FindingKind,
    pub app: &'a str,
    pub parent_app: Option<&'a str>,
    pub out: u64,
    pub inb: u64,
    pub service: &'a str,
    pub approved: bool,
    pub view: &'a PeerView,
    /// The judged host's own earlier days with this app in the horizon:
    /// (day, highest window volume bucket, day's outbound bytes).
    pub own_history: &'a [(i64, Option<u8>, u64)],
    /// Whether the host has telemetry from earlier days at all (otherwise
    /// "first use" means nothing).
    pub host_has_history: bool,
    /// The biggest destination had no TLS server name and no DNS answer.
    pub unnamed_destination: bool,
    /// Windows that uploaded: 1 for a window finding, the process's count
    /// of the day for a cumulative one.
    pub upload_windows: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Scored {
    pub score: f64,
    pub severity: Severity,
    pub reasons: Vec<Reason>,
    pub thin: bool,
}

/// `-log10((k + 1) / (n + 2))`: the surprise of reaching what `k` of `n` peer
/// observations reached (add-one smoothing: never infinite).
fn surprise(k: u64, n: u64) -> f64 {
    -(((k + 1) as f64) / ((n + 2) as f64)).log10()
}

/// Peer support: behaviour seen on many other host-days is common however
/// big the fleet is ("count peers"), so a factor shrinks as the number of peer
/// host-days that did the same grows: 1 with none, ½ with
/// `COMMON_PEER_DAYS`.
fn support(k: u64) -> f64 {
    1.0 / (1.0 + k as f64 / COMMON_PEER_DAYS)
}

const COMMON_PEER_DAYS: f64 = 10.0;

fn percentile(k: u64, n: u64) -> f64 {
    if n == 0 {
        0.0
    } else {
        100.0 * (n - k.min(n)) as f64 / n as f64
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

pub fn score_finding(i: &ScoreInput<'_>) -> Scored {
    score_finding_detail(i, true)
}

/// The score alone, without reasons (most judged windows score low; their
/// explanations would be built for nothing). Score, severity and thinness
/// equal `score_finding`'s.
pub fn score_only(i: &ScoreInput<'_>) -> Scored {
    score_finding_detail(i, false)
}

fn score_finding_detail(i: &ScoreInput<'_>, render: bool) -> Scored {
    let v = i.view;
    let peers = v.peer_hosts;
    let thin = peers < i.cfg.min_peers;
    // With a thin baseline peer evidence counts in proportion to the peers.
    let weight = if thin {
        (peers as f64 / i.cfg.min_peers.max(1) as f64).clamp(0.0, 1.0) * 0.5
    } else {
        1.0
    };
    let mut reasons = Vec::new();
    // Without words only the contributions are kept (no allocation), in the
    // same order, so they sum to the same score.
    let mut bare = [0.0f64; 16];
    let mut n_bare = 0;
    let mut push =
        |factor: &str, value: f64, pct: f64, contribution: f64, detail: &dyn Fn() -> String| {
            if render {
                reasons.push(Reason {
                    factor: factor.to_string(),
                    value: round3(value),
                    peers,
                    percentile: round3(pct),
                    contribution: round3(contribution),
                    detail: detail(),
                });
            } else if let Some(slot) = bare.get_mut(n_bare) {
                *slot = round3(contribution);
                n_bare += 1;
            }
        };

    // Volume: this window (or this day) against peers' busiest windows (days).
    let vb = volume_bucket(i.out);
    let (hist, unit) = match i.kind {
        FindingKind::Window => (&v.volume_hist, "window"),
        FindingKind::Cumulative => (&v.daily_out_hist, "day"),
    };
    let (k, n) = PeerView::tail(hist, vb);
    let c = surprise(k, n).min(4.0) * support(k) * weight;
    push("volume", i.out as f64, percentile(k, n), c, &|| {
        format!(
            "{} out in one {unit}; {} of {} peer host-days of {} reached this",
            human_bytes(i.out),
            thousands(k),
            thousands(n),
            i.app
        )
    });

    // Persistence (low and slow): how many windows of the day uploaded,
    // against peers' busiest days.
    if i.kind == FindingKind::Cumulative {
        let pb = persistence_bucket(i.upload_windows);
        let (k, n) = PeerView::tail(&v.upload_windows_hist, pb);
        let c = surprise(k, n).min(3.0) * support(k) * weight;
        push(
            "persistence",
            i.upload_windows as f64,
            percentile(k, n),
            c,
            &|| {
                format!(
                "uploaded in {} windows today; {} of {} peer host-days of {} uploaded that often",
                i.upload_windows,
                thousands(k),
                thousands(n),
                i.app
            )
            },
        );
    }

    // Direction: the outbound:inbound ratio.
    let rb = ratio_bucket(i.out, i.inb, i.cfg.ratio_smoothing_bytes);
    let (k, n) = PeerView::tail(&v.ratio_hist, rb);
    let c = surprise(k, n).min(3.0) * 0.5 * support(k) * weight;
    let ratio = i.out as f64 / i.inb.max(1) as f64;
    push("ratio", ratio, percentile(k, n), c, &|| {
        format!(
            "outbound:inbound {:.0}:1; {} of {} peer host-days with uploads reached this",
            ratio,
            thousands(k),
            thousands(n)
        )
    });

    // Destination: how many peer host-days of this app uploaded to this service.
    if i.approved {
        push("approved_service", 0.0, 0.0, -3.0, &|| {
            format!("{} is approved by policy for {}", i.service, i.app)
        });
    } else {
        let k = v.services.get(i.service).map_or(0, |s| s.upload_hosts);
        let n = v.active_host_days;
        // A service no peer uploaded to is as surprising as the app's uploads
        // are concentrated. An app whose peers upload to many services (a
        // browser) often meets a new one; one that only ever saves to
        // SharePoint (Word) does not (Good–Turing: new kinds appear at the
        // rate distinct kinds did).
        // The same holds for a service few peers used: an app that spreads
        // its uploads over many services gives little weight to any one.
        let distinct = v.services.values().filter(|s| s.upload_hosts > 0).count() as u64;
        let uploads: u64 = v.services.values().map(|s| s.upload_hosts).sum();
        let base = surprise(k, n).min(surprise(distinct, uploads));
        let mut c = base.min(3.0) * 1.25 * support(k) * weight;
        // File storage and sharing is what the analytic is about: uploading
        // there is worse than elsewhere, unless peers of the app already do.
        let storage = STORAGE_SERVICES.contains(&i.service);
        if storage && k == 0 {
            c += 0.5;
        }
        push("destination", k as f64, percentile(k, n), c, &|| {
            format!(
                "{} uploaded to {}{} on {} of {} network-active peer host-days",
                i.app,
                i.service,
                if storage {
                    " (file storage/sharing)"
                } else {
                    ""
                },
                thousands(k),
                thousands(n)
            )
        });
    }

    if i.unnamed_destination {
        // TLS clients send the server name; an upload to a bare address with
        // no DNS answer on the host either is deliberate or is rare tooling.
        push("unnamed_destination", 1.0, 0.0, 1.5, &|| {
            "the destination has no TLS server name and no DNS answer on the host: it hides its name".to_string()
        });
    }

    // Network prevalence: does this app normally talk to the Internet at all?
    let (a, r) = (
        v.active_host_days,
        v.running_host_days.max(v.active_host_days),
    );
    let c = surprise(a, r).min(2.5) * weight;
    push(
        "network_prevalence",
        if r == 0 { 0.0 } else { a as f64 / r as f64 },
        if r == 0 {
            0.0
        } else {
            100.0 * a as f64 / r as f64
        },
        c,
        &|| {
            format!(
                "{} made outbound HTTPS connections on {} of {} peer host-days it ran",
                i.app,
                thousands(a),
                thousands(r)
            )
        },
    );

    // Lineage: an Office app spawning a script host.
    if let Some(parent) = i.parent_app {
        if is_office_app(parent) && is_script_host(i.app) {
            push("lineage", 1.0, 0.0, 2.0, &|| {
                format!("{} was started by {}", i.app, parent)
            });
        }
    }

    // First network use of the app on this host within the horizon: the
    // analytic's "normally does not initiate network communications", judged
    // on the host itself.
    if i.host_has_history && !i.own_history.iter().any(|(_, maxv, _)| maxv.is_some()) {
        push("host_first_use", 1.0, 0.0, 1.0, &|| {
            format!("{} has not sent anything out from this host before", i.app)
        });
    }

    // The host's own history with this app.
    let similar_days = i
        .own_history
        .iter()
        .filter(|(_, maxv, total)| match i.kind {
            FindingKind::Window => maxv.is_some_and(|m| m + 2 >= vb),
            FindingKind::Cumulative => volume_bucket(*total) + 2 >= vb,
        })
        .count();
    if similar_days > 0 {
        push("host_history", similar_days as f64, 0.0, -1.5, &|| {
            format!(
                "this host moved similar volumes with {} on {} earlier day(s)",
                i.app, similar_days
            )
        });
    }

    if thin {
        // Learning: judge a new or rare app by adoption and by sheer volume.
        let others_new = v.new_today;
        if others_new >= 3 {
            push("rollout", others_new as f64, 0.0, -1.5, &|| {
                format!(
                    "{} other hosts started running {} today: a rollout",
                    others_new, i.app
                )
            });
        } else {
            push("rollout", others_new as f64, 0.0, 1.0, &|| {
                format!(
                    "{} runs on {} other host(s): not a fleet rollout",
                    i.app, peers
                )
            });
        }
        let mib = i.out as f64 / (16u64 << 20) as f64;
        let c = if mib > 1.0 {
            mib.log2().min(4.0) + 1.0
        } else {
            0.0
        };
        push("absolute_volume", i.out as f64, 0.0, c, &|| {
            format!("{} out with no established baseline", human_bytes(i.out))
        });
        push("thin_baseline", peers as f64, 0.0, 0.0, &|| {
            format!(
                "only {} peer host(s) run {} (minimum {}): learning; severity capped at medium",
                peers, i.app, i.cfg.min_peers
            )
        });
    }

    let score: f64 = if render {
        reasons.iter().map(|r| r.contribution).sum()
    } else {
        bare[..n_bare].iter().sum()
    };
    let mut severity = if score >= i.cfg.critical_score {
        Severity::Critical
    } else if score >= i.cfg.high_score {
        Severity::High
    } else if score >= i.cfg.medium_score {
        Severity::Medium
    } else {
        Severity::Low
    };
    if thin && severity > Severity::Medium {
        severity = Severity::Medium;
    }
    Scored {
        score,
        severity,
        reasons,
        thin,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::baseline::{FleetBaseline, HostAppDay};

    fn view(hosts: u64, upload_hosts: u64, big: u8) -> PeerView {
        let mut fleet = FleetBaseline::new();
        for h in 0..hosts {
            let hd = HostAppDay {
                running: true,
                active: true,
                max_volume: Some(if h < upload_hosts { big } else { 30 }),
                max_ratio: Some(if h < upload_hosts { 50 } else { 36 }),
                out_total: 1 << 20,
                services: [("sharepoint".to_string(), h < upload_hosts)]
                    .into_iter()
                    .collect(),
                ..HostAppDay::default()
            };
            fleet.add(&hd.contribution("winword.exe", 10));
        }
        fleet.peer_view("winword.exe", 10, 14, [])
    }

    fn input<'a>(
        cfg: &'a EngineConfig,
        v: &'a PeerView,
        service: &'a str,
        out: u64,
    ) -> ScoreInput<'a> {
        ScoreInput {
            cfg,
            kind: FindingKind::Window,
            app: "winword.exe",
            parent_app: Some("explorer.exe"),
            out,
            inb: out / 400,
            service,
            approved: false,
            view: v,
            own_history: &[],
            host_has_history: false,
            unnamed_destination: false,
            upload_windows: 1,
        }
    }

    #[test]
    fn rare_upload_to_new_service_scores_high_and_explains_itself() {
        let cfg = EngineConfig::default();
        // Half the hosts save to SharePoint; none ever moved 200 MiB.
        let v = view(300, 150, 44);
        let s = score_finding(&input(&cfg, &v, "dropbox", 200 << 20));
        assert!(!s.thin);
        assert!(s.score >= cfg.alert_score, "{s:?}");
        let factors: Vec<&str> = s.reasons.iter().map(|r| r.factor.as_str()).collect();
        assert_eq!(
            factors,
            ["volume", "ratio", "destination", "network_prevalence"]
        );
        let total: f64 = s.reasons.iter().map(|r| r.contribution).sum();
        assert!((total - s.score).abs() < 1e-9);
        assert!(s.reasons.iter().all(|r| r.peers == 300));
    }

    #[test]
    fn common_behaviour_scores_low() {
        let cfg = EngineConfig::default();
        // 150 of 300 hosts save big files to SharePoint.
        let v = view(300, 150, 48);
        let s = score_finding(&input(&cfg, &v, "sharepoint", 8 << 20));
        assert!(s.score < cfg.alert_score, "{s:?}");
    }

    #[test]
    fn thin_baseline_cannot_reach_high() {
        let cfg = EngineConfig {
            high_score: 6.0,
            critical_score: 6.2,
            ..EngineConfig::default()
        };
        let v = view(2, 0, 30);
        let mut i = input(&cfg, &v, "mega", 4 << 30);
        i.app = "rclone";
        let s = score_finding(&i);
        assert!(s.thin);
        assert!(s.score >= cfg.high_score, "{s:?}");
        assert_eq!(s.severity, Severity::Medium);
        assert!(s.reasons.iter().any(|r| r.factor == "thin_baseline"));
    }

    #[test]
    fn lineage_history_and_approval_move_the_score() {
        let cfg = EngineConfig::default();
        let v = view(300, 20, 44);
        let base = score_finding(&input(&cfg, &v, "dropbox", 50 << 20)).score;
        let mut i = input(&cfg, &v, "dropbox", 50 << 20);
        i.app = "powershell.exe";
        i.parent_app = Some("winword.exe");
        let lineage = score_finding(&i).score;
        assert!((lineage - base - 2.0).abs() < 0.6, "{base} {lineage}");
        let hist = [(9, Some(volume_bucket(50 << 20)), 50u64 << 20)];
        let mut i = input(&cfg, &v, "dropbox", 50 << 20);
        i.own_history = &hist;
        assert!(score_finding(&i).score < base - 1.0);
        let mut i = input(&cfg, &v, "dropbox", 50 << 20);
        i.approved = true;
        assert!(score_finding(&i).score < base - 3.0);
    }

    #[test]
    fn score_only_scores_the_same_without_reasons() {
        let cfg = EngineConfig::default();
        for (hosts, uploaders, service, out) in [
            (40, 0, "dropbox", 200u64 << 20),
            (40, 30, "sharepoint", 8 << 20),
            (2, 0, "dropbox", 64 << 20),
        ] {
            let v = view(hosts, uploaders, 20);
            let mut i = input(&cfg, &v, service, out);
            i.parent_app = Some("winword.exe");
            i.kind = FindingKind::Cumulative;
            let full = score_finding(&i);
            let bare = score_only(&i);
            assert_eq!(full.score.to_bits(), bare.score.to_bits());
            assert_eq!((full.severity, full.thin), (bare.severity, bare.thin));
            assert!(full.reasons.len() >= 4 && bare.reasons.is_empty());
            assert!(full.reasons.iter().all(|r| !r.detail.is_empty()));
        }
    }
}
