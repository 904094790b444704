//! Fleet messages (fleet.proto) ↔ engine types: per-(app, day) partials,
//! the fleet baseline and the shard map.

use outflow_core::baseline::{
    AppDayStats, FleetBaseline, PERSISTENCE_BUCKETS, RATIO_BUCKETS, VOLUME_BUCKETS,
};
use outflow_core::shard::{Member, ShardMap};

use crate::pb;

fn fixed(mut v: Vec<u64>, len: usize) -> Vec<u64> {
    // Histograms have a fixed shape; a peer with another shape would make
    // merges meaningless, so extra buckets fold into the last one.
    if v.len() > len {
        let extra: u64 = v[len..].iter().sum();
        v.truncate(len);
        if let Some(last) = v.last_mut() {
            *last += extra;
        }
    }
    v.resize(len, 0);
    v
}

pub fn partial_to_pb(s: &AppDayStats) -> pb::AppDayPartial {
    pb::AppDayPartial {
        app: s.app.clone(),
        day: s.day,
        hosts_running: s.hosts_running,
        hosts_active: s.hosts_active,
        ratio_hist: s.ratio_hist.clone(),
        volume_hist: s.volume_hist.clone(),
        daily_out_hist: s.daily_out_hist.clone(),
        services: s
            .services
            .iter()
            .map(|(name, c)| pb::ServiceCount {
                service: name.clone(),
                hosts: c.hosts,
                upload_hosts: c.upload_hosts,
            })
            .collect(),
        hosts_new: s.hosts_new,
        upload_windows_hist: s.upload_windows_hist.clone(),
    }
}

pub fn partial_from_pb(p: pb::AppDayPartial) -> AppDayStats {
    let mut s = AppDayStats::empty(&p.app, p.day);
    s.hosts_running = p.hosts_running;
    s.hosts_active = p.hosts_active;
    s.hosts_new = p.hosts_new;
    s.ratio_hist = fixed(p.ratio_hist, RATIO_BUCKETS);
    s.volume_hist = fixed(p.volume_hist, VOLUME_BUCKETS);
    s.daily_out_hist = fixed(p.daily_out_hist, VOLUME_BUCKETS);
    s.upload_windows_hist = fixed(p.upload_windows_hist, PERSISTENCE_BUCKETS);
    for c in p.services {
        let e = s.services.entry(c.service).or_default();
        e.hosts += c.hosts;
        e.upload_hosts += c.upload_hosts;
    }
    s
}

pub fn baseline_to_pb(b: &FleetBaseline, version: u64, horizon_days: u32) -> pb::FleetBaselineMsg {
    pb::FleetBaselineMsg {
        version,
        horizon_days,
        newest_day: b.newest_day().unwrap_or(0),
        apps: b
            .apps
            .iter()
            .map(|(app, days)| pb::AppBaseline {
                app: app.clone(),
                days: days.values().map(partial_to_pb).collect(),
            })
            .collect(),
    }
}

pub fn baseline_from_pb(m: pb::FleetBaselineMsg) -> FleetBaseline {
    let mut b = FleetBaseline::new();
    for app in m.apps {
        for mut d in app.days {
            if d.app.is_empty() {
                d.app = app.app.clone();
            }
            b.add(&partial_from_pb(d));
        }
    }
    b
}

pub fn shard_map_to_pb(m: &ShardMap) -> pb::ShardMap {
    pb::ShardMap {
        version: m.version,
        members: m
            .members
            .iter()
            .map(|x| pb::ShardMember {
                collector_id: x.collector_id.clone(),
                endpoint: x.endpoint.clone(),
            })
            .collect(),
        vnodes_per_member: m.vnodes_per_member,
    }
}

pub fn shard_map_from_pb(m: pb::ShardMap) -> ShardMap {
    ShardMap::new(
        m.version,
        m.members
            .into_iter()
            .map(|x| Member {
                collector_id: x.collector_id,
                endpoint: x.endpoint,
            })
            .collect(),
        if m.vnodes_per_member == 0 {
            outflow_core::shard::DEFAULT_VNODES
        } else {
            m.vnodes_per_member
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use outflow_core::baseline::ServiceCount;

    #[test]
    fn partials_baselines_and_shard_maps_round_trip() {
        let mut s = AppDayStats::empty("winword.exe", 19_800);
        s.hosts_running = 5;
        s.hosts_active = 2;
        s.hosts_new = 1;
        s.ratio_hist[40] = 2;
        s.volume_hist[50] = 1;
        s.services.insert(
            "dropbox".into(),
            ServiceCount {
                hosts: 2,
                upload_hosts: 1,
            },
        );
        assert_eq!(partial_from_pb(partial_to_pb(&s)), s);
        let b = FleetBaseline::from_partials([&s]);
        let m = baseline_to_pb(&b, 7, 14);
        assert_eq!(m.newest_day, 19_800);
        assert_eq!(baseline_from_pb(m), b);

        let map = ShardMap::new(
            3,
            vec![
                Member {
                    collector_id: "c2".into(),
                    endpoint: "https://b".into(),
                },
                Member {
                    collector_id: "c1".into(),
                    endpoint: "https://a".into(),
                },
            ],
            64,
        );
        let back = shard_map_from_pb(shard_map_to_pb(&map));
        assert_eq!(back, map);
        assert_eq!(back.owner("ws-1"), map.owner("ws-1"));
    }

    #[test]
    fn odd_histogram_shapes_are_normalised() {
        let p = pb::AppDayPartial {
            app: "x".into(),
            ratio_hist: vec![1; RATIO_BUCKETS + 3],
            volume_hist: vec![1],
            ..Default::default()
        };
        let s = partial_from_pb(p);
        assert_eq!(s.ratio_hist.len(), RATIO_BUCKETS);
        assert_eq!(s.ratio_hist.iter().sum::<u64>(), (RATIO_BUCKETS + 3) as u64);
        assert_eq!(s.volume_hist.len(), VOLUME_BUCKETS);
    }
}
