//! Per-(app, day) mergeable statistics as the aggregator stores them.
//!
//! Interim copy of the engine's `outflow_core::baseline::AppDayStats` (same
//! fields as the proto `AppDayPartial`); replaced by a re-export once the
//! engine's baseline module lands, so the wire and snapshot shapes must stay
//! identical to it.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Hosts of an app that talked to one destination service on one day.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceCount {
    /// Hosts that sent anything to the service.
    pub hosts: u64,
    /// Hosts whose busiest window to the service was an upload.
    pub upload_hosts: u64,
}

/// One (app, day) of integer statistics; every count is a number of hosts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppDayStats {
    pub app: String,
    /// Days since the Unix epoch (UTC).
    pub day: i64,
    pub hosts_running: u64,
    pub hosts_active: u64,
    pub hosts_new: u64,
    pub ratio_hist: Vec<u64>,
    pub volume_hist: Vec<u64>,
    pub daily_out_hist: Vec<u64>,
    pub services: BTreeMap<String, ServiceCount>,
}

fn add_hist(into: &mut Vec<u64>, from: &[u64]) {
    if into.len() < from.len() {
        into.resize(from.len(), 0);
    }
    for (a, b) in into.iter_mut().zip(from) {
        *a = a.saturating_add(*b);
    }
}

impl AppDayStats {
    /// Pure addition: order-independent, so replicas agree whatever order
    /// collectors' partials are summed in.
    pub fn merge(&mut self, other: &AppDayStats) {
        self.hosts_running = self.hosts_running.saturating_add(other.hosts_running);
        self.hosts_active = self.hosts_active.saturating_add(other.hosts_active);
        self.hosts_new = self.hosts_new.saturating_add(other.hosts_new);
        add_hist(&mut self.ratio_hist, &other.ratio_hist);
        add_hist(&mut self.volume_hist, &other.volume_hist);
        add_hist(&mut self.daily_out_hist, &other.daily_out_hist);
        for (name, c) in &other.services {
            let e = self.services.entry(name.clone()).or_default();
            e.hosts = e.hosts.saturating_add(c.hosts);
            e.upload_hosts = e.upload_hosts.saturating_add(c.upload_hosts);
        }
    }
}
