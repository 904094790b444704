use super::*;

fn stats(app: &str, day: i64, running: u64, ratio: &[u64], svc: &[(&str, u64)]) -> AppDayStats {
    AppDayStats {
        app: app.into(),
        day,
        hosts_running: running,
        hosts_active: running / 2,
        hosts_new: 0,
        ratio_hist: ratio.to_vec(),
        volume_hist: vec![running],
        daily_out_hist: vec![],
        upload_windows_hist: vec![],
        services: svc
            .iter()
            .map(|(s, h)| {
                (
                    s.to_string(),
                    ServiceCount {
                        hosts: *h,
                        upload_hosts: 0,
                    },
                )
            })
            .collect(),
    }
}

fn submit(c: &str, epoch: u64, partials: Vec<AppDayStats>) -> Command {
    Command::SubmitPartials {
        collector_id: c.into(),
        epoch,
        partials,
    }
}

#[test]
fn partials_are_summed_over_collectors_and_idempotent_by_epoch() {
    let mut s = FleetState::default();
    let out = s.apply(
        1,
        &submit(
            "c1",
            1,
            vec![stats("winword.exe", 100, 10, &[1, 2], &[("dropbox", 1)])],
        ),
    );
    assert_eq!(
        out,
        Outcome::Partials {
            accepted: 1,
            duplicates: 0,
            expired: 0
        }
    );
    s.apply(
        2,
        &submit(
            "c2",
            7,
            vec![stats(
                "winword.exe",
                100,
                5,
                &[0, 1, 4],
                &[("dropbox", 2), ("box", 1)],
            )],
        ),
    );
    // A retry of the same epoch and an older epoch change nothing.
    let before = s.app_baseline("winword.exe");
    let out = s.apply(
        3,
        &submit("c1", 1, vec![stats("winword.exe", 100, 99, &[9], &[])]),
    );
    assert_eq!(
        out,
        Outcome::Partials {
            accepted: 0,
            duplicates: 1,
            expired: 0
        }
    );
    s.apply(
        4,
        &submit("c2", 3, vec![stats("winword.exe", 100, 99, &[9], &[])]),
    );
    assert_eq!(s.app_baseline("winword.exe"), before);
    let b = &before[0];
    assert_eq!(b.hosts_running, 15);
    assert_eq!(b.ratio_hist[..3], [1, 3, 4]);
    assert!(b.ratio_hist[3..].iter().all(|c| *c == 0));
    assert_eq!(b.services["dropbox"].hosts, 3);
    assert_eq!(b.services["box"].hosts, 1);
    // A newer epoch replaces (collectors send cumulative day statistics).
    s.apply(
        5,
        &submit(
            "c1",
            2,
            vec![stats("winword.exe", 100, 12, &[1, 2], &[("dropbox", 1)])],
        ),
    );
    assert_eq!(s.app_baseline("winword.exe")[0].hosts_running, 17);
    assert_eq!(s.baseline_version(), 5);
}

#[test]
fn order_of_collectors_does_not_change_the_state_hash_of_the_baseline() {
    let a = submit(
        "c1",
        1,
        vec![stats("excel.exe", 50, 3, &[1], &[("onedrive", 1)])],
    );
    let b = submit(
        "c2",
        1,
        vec![stats("excel.exe", 50, 4, &[0, 2], &[("onedrive", 2)])],
    );
    let mut s1 = FleetState::default();
    s1.apply(1, &a);
    s1.apply(2, &b);
    let mut s2 = FleetState::default();
    s2.apply(1, &b);
    s2.apply(2, &a);
    assert_eq!(s1.fleet_baseline(), s2.fleet_baseline());
}

#[test]
fn horizon_slides_and_old_days_are_rejected() {
    let mut s = FleetState::new(StateConfig {
        horizon_days: 3,
        ..Default::default()
    });
    for day in 10..15 {
        s.apply(
            day as u64,
            &submit("c1", day as u64, vec![stats("pwsh", day, 1, &[], &[])]),
        );
    }
    let days: Vec<i64> = s.app_baseline("pwsh").iter().map(|d| d.day).collect();
    assert_eq!(days, vec![12, 13, 14]);
    let out = s.apply(20, &submit("c1", 99, vec![stats("pwsh", 11, 1, &[], &[])]));
    assert_eq!(
        out,
        Outcome::Partials {
            accepted: 0,
            duplicates: 0,
            expired: 1
        }
    );
}

#[test]
fn lost_collectors_leave_the_shard_map_and_come_back() {
    let mut s = FleetState::default();
    let hb = |id: &str, ms| Command::CollectorHeartbeat {
        collector_id: id.into(),
        endpoint: format!("https://{id}:7201"),
        unix_ms: ms,
        hosts: 3,
    };
    s.apply(1, &hb("c1", 1_000));
    s.apply(2, &hb("c2", 1_000));
    assert_eq!(s.shard_map_version(), 2);
    // A repeated heartbeat does not bump the version.
    s.apply(3, &hb("c1", 5_000));
    assert_eq!(s.shard_map_version(), 2);
    let out = s.apply(
        4,
        &Command::Tick {
            unix_ms: 12_000,
            collector_timeout_ms: 10_000,
        },
    );
    assert_eq!(
        out,
        Outcome::Membership {
            shard_map_version: 4,
            changed: true
        }
    );
    let ids: Vec<String> = s.shard_members().into_iter().map(|m| m.0).collect();
    assert_eq!(ids, vec!["c1"]);
    assert!(!s.collectors()["c2"].alive);
    s.apply(5, &hb("c2", 13_000));
    assert_eq!(s.shard_members().len(), 2);
    assert_eq!(s.shard_map_version(), 5);
}

#[test]
fn policy_changes_are_audited_and_non_objects_rejected() {
    let mut s = FleetState::new(StateConfig {
        max_audit: 2,
        ..Default::default()
    });
    for i in 1..=3u64 {
        let p = serde_json::json!({"approved": [{"service": format!("svc{i}")}]});
        let out = s.apply(
            i,
            &Command::SetPolicy {
                principal: "admin".into(),
                unix_ms: i as i64,
                policy: p,
                comment: format!("change {i}"),
            },
        );
        assert_eq!(out, Outcome::Policy { version: i });
    }
    assert_eq!(s.audit().len(), 2);
    assert_eq!(s.audit()[0].index, 2);
    assert_eq!(s.audit()[1].principal, "admin");
    let out = s.apply(
        4,
        &Command::SetPolicy {
            principal: "admin".into(),
            unix_ms: 4,
            policy: serde_json::json!([1, 2]),
            comment: String::new(),
        },
    );
    assert!(matches!(out, Outcome::Rejected { .. }));
    assert_eq!(s.policy_version(), 3);
}

#[test]
fn alerts_are_deduplicated_and_retention_is_bounded() {
    let mut s = FleetState::new(StateConfig {
        max_alerts: 3,
        ..Default::default()
    });
    let rec = |id: &str, t| AlertRecord {
        id: id.into(),
        window_end_us: t,
        json: "{}".into(),
    };
    let out = s.apply(
        1,
        &Command::ReportAlerts {
            collector_id: "c1".into(),
            alerts: vec![rec("a", 10), rec("b", 20), rec("a", 10)],
        },
    );
    assert_eq!(
        out,
        Outcome::Alerts {
            added: 2,
            duplicates: 1
        }
    );
    s.apply(
        2,
        &Command::ReportAlerts {
            collector_id: "c1".into(),
            alerts: vec![rec("c", 5), rec("d", 30)],
        },
    );
    assert_eq!(s.alert_count(), 3);
    assert!(!s.has_alert("c"), "the oldest alert is evicted first");
    let since: Vec<&str> = s
        .alerts_since(15, 10)
        .iter()
        .map(|a| a.id.as_str())
        .collect();
    assert_eq!(since, vec!["b", "d"]);
}

#[test]
fn snapshot_restore_round_trips_and_hash_tracks_state() {
    let mut s = FleetState::default();
    s.apply(
        1,
        &submit("c1", 1, vec![stats("curl", 3, 2, &[1], &[("mega", 1)])]),
    );
    s.apply(
        2,
        &Command::ReportAlerts {
            collector_id: "c1".into(),
            alerts: vec![AlertRecord {
                id: "x".into(),
                window_end_us: 1,
                json: "{}".into(),
            }],
        },
    );
    s.set_raft_peer(1, Some("127.0.0.1:7101".into()));
    let mut r = FleetState::default();
    r.restore(&s.snapshot()).unwrap();
    assert_eq!(r.state_hash(), s.state_hash());
    assert_eq!(r.alerts_since(0, 10).len(), 1);
    let h = s.state_hash();
    s.apply(
        3,
        &Command::Tick {
            unix_ms: 0,
            collector_timeout_ms: 1,
        },
    );
    assert_ne!(s.state_hash(), h, "the applied index is part of the state");
    assert!(r.restore(b"not json").is_err());
}

#[test]
fn undecodable_commands_are_rejected_deterministically() {
    let mut s = FleetState::default();
    let out = s.apply_bytes(1, b"{\"type\":\"from_the_future\"}");
    assert!(matches!(out, Outcome::Rejected { .. }));
    assert_eq!(s.applied_index(), 1);
}

#[test]
fn a_batch_applies_each_command_at_one_index_and_does_not_nest() {
    let mut s = FleetState::default();
    let out = s.apply(
        7,
        &Command::Batch {
            commands: vec![
                submit("c1", 1, vec![stats("a", 1, 1, &[], &[])]),
                submit("c1", 1, vec![stats("a", 1, 5, &[], &[])]),
                Command::Batch { commands: vec![] },
            ],
        },
    );
    assert_eq!(
        out,
        Outcome::Batch {
            outcomes: vec![
                Outcome::Partials {
                    accepted: 1,
                    duplicates: 0,
                    expired: 0
                },
                Outcome::Partials {
                    accepted: 0,
                    duplicates: 1,
                    expired: 0
                },
                Outcome::Rejected {
                    reason: "batches do not nest".into()
                },
            ]
        }
    );
    assert_eq!(s.applied_index(), 7);
    assert_eq!(s.app_baseline("a")[0].hosts_running, 1);
    // JSON batches written by earlier versions still parse as a batch.
    let joined = format!(
        "{{\"type\":\"batch\",\"commands\":[{},{}]}}",
        serde_json::to_string(&submit("c2", 1, vec![])).unwrap(),
        serde_json::to_string(&Command::Tick {
            unix_ms: 1,
            collector_timeout_ms: 1
        })
        .unwrap()
    );
    assert!(
        matches!(s.apply_bytes(8, joined.as_bytes()), Outcome::Batch { outcomes } if outcomes.len() == 2)
    );
}

#[test]
fn binary_commands_round_trip_and_json_entries_still_decode() {
    let mut big = stats(
        "b\u{e9}",
        -3,
        u64::MAX,
        &[0, 1, 1 << 40],
        &[("s3", 7), ("gcs", 0)],
    );
    big.upload_windows_hist = vec![9, 0, u64::MAX];
    big.daily_out_hist = vec![1];
    let policy = Command::SetPolicy {
        principal: "admin".into(),
        unix_ms: -5,
        policy: serde_json::json!({"rules": [1, 2]}),
        comment: "c".into(),
    };
    let cmds = [
        submit("c1", 3, vec![stats("a", 20_000, 4, &[1, 2], &[]), big]),
        submit("", 0, vec![]),
        policy.clone(),
        Command::Batch {
            commands: vec![submit("c2", 1, vec![]), policy.clone()],
        },
    ];
    for c in &cmds {
        let bin = codec::encode(c);
        assert_eq!(bin[0], codec::BINARY);
        assert_eq!(codec::decode(&bin).as_ref(), Ok(c));
        // Every prefix is refused, never misread.
        for n in 0..bin.len() {
            assert!(codec::decode(&bin[..n]).is_err(), "prefix {n} of {c:?}");
        }
        let json = serde_json::to_vec(c).unwrap();
        assert_eq!(codec::decode(&json).as_ref(), Ok(c));
    }
    // A batch joined from binary and JSON entries, as the node builds it.
    let parts = [
        codec::encode(&cmds[0]),
        serde_json::to_vec(&policy).unwrap(),
    ];
    let mut joined = codec::batch_header(parts.len());
    for p in &parts {
        codec::append_entry(&mut joined, p);
    }
    assert_eq!(
        codec::decode(&joined),
        Ok(Command::Batch {
            commands: vec![cmds[0].clone(), policy]
        })
    );
    let mut trailing = codec::encode(&cmds[1]);
    trailing.push(0);
    assert!(codec::decode(&trailing).is_err());
    assert!(codec::decode(&[codec::BINARY, 9]).is_err());
    // The same state whichever encoding the log holds.
    let (mut a, mut b) = (FleetState::default(), FleetState::default());
    for (i, c) in cmds.iter().enumerate() {
        let i = i as u64 + 1;
        assert_eq!(
            a.apply_bytes(i, &codec::encode(c)),
            b.apply_bytes(i, &serde_json::to_vec(c).unwrap())
        );
    }
    assert_eq!(a.state_hash(), b.state_hash());
}

#[test]
fn older_days_fall_out_of_the_horizon_when_a_newer_day_arrives() {
    let mut s = FleetState::new(StateConfig {
        horizon_days: 2,
        ..Default::default()
    });
    s.apply(1, &submit("c1", 1, vec![stats("a", 10, 1, &[], &[])]));
    s.apply(2, &submit("c1", 2, vec![stats("b", 11, 1, &[], &[])]));
    assert_eq!(s.app_baseline("a").len(), 1);
    s.apply(3, &submit("c1", 3, vec![stats("b", 12, 1, &[], &[])]));
    assert!(s.app_baseline("a").is_empty(), "day 10 left the horizon");
    assert_eq!(s.app_baseline("b").len(), 2);
}
