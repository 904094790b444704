use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr};

use outflow_core::telemetry::{
    DnsRecord, Event, HostEvent, NetRecord, ProcessEnd, ProcessStart, Transport,
};
use outflow_core::Timestamp;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

const MIB: u64 = 1 << 20;
const KIB: u64 = 1 << 10;
const MIN_US: i64 = 60_000_000;
const HOUR_US: i64 = 60 * MIN_US;
const DAY_US: i64 = 24 * HOUR_US;

#[derive(Clone, Debug)]
pub struct SimOptions {
    pub hosts: usize,
    pub days: u32,
    pub seed: u64,
    /// Injected incidents (kinds cycle through every kind).
    pub incidents: usize,
    /// First simulated day (midnight UTC).
    pub start: Timestamp,
    /// Incidents start after this many days (the engine's learning period).
    pub quiet_days: u32,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            hosts: 300,
            days: 3,
            seed: 1,
            incidents: 10,
            // 2026-01-05, a Monday.
            start: Timestamp::from_secs(1_767_571_200),
            quiet_days: 1,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentKind {
    /// A macro in Word uploads documents to cloud storage.
    OfficeMacroCloud,
    /// Word spawns PowerShell, which uploads.
    OfficeScriptHost,
    /// A tool never seen in the fleet (rclone) uploads to MEGA.
    UnknownTool,
    /// A trickle over hours, each minute unremarkable.
    LowAndSlow,
    /// An upload over 443 to a bare IP: no SNI, no DNS name.
    NoSni,
    /// No SNI, but the host resolved the destination's name first.
    DnsOnly,
}

pub const ALL_KINDS: [IncidentKind; 6] = [
    IncidentKind::OfficeMacroCloud,
    IncidentKind::OfficeScriptHost,
    IncidentKind::UnknownTool,
    IncidentKind::LowAndSlow,
    IncidentKind::NoSni,
    IncidentKind::DnsOnly,
];

/// One injected exfiltration: a line of the truth file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incident {
    pub id: String,
    pub kind: IncidentKind,
    pub host: String,
    pub app: String,
    pub pid: u32,
    pub start: String,
    pub end: String,
    pub bytes_out: u64,
    pub service: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimSummary {
    pub events: u64,
    pub hosts: usize,
    pub incidents: Vec<Incident>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Office,
    Developer,
    It,
    Server,
}

struct Host {
    name: String,
    role: Role,
    next_pid: u32,
    dropbox: bool,
    /// Heavy sync user: OneDrive uploads more.
    heavy_sync: bool,
    /// Browser uploader (video, large files) now and then.
    uploader: bool,
    rollout_at: Option<i64>,
    /// The host's browser: Chrome or Edge.
    chrome: bool,
}

/// Destination: IP pool base, SNI, port.
#[derive(Clone, Copy)]
struct Dest {
    net: [u8; 3],
    sni: Option<&'static str>,
}

const ONEDRIVE: Dest = Dest {
    net: [13, 107, 42],
    sni: Some("my.microsoftpersonalcontent.com"),
};
const ONEDRIVE_STORAGE: Dest = Dest {
    net: [13, 107, 43],
    sni: Some("contoso-my.sharepoint.com"),
};
const SHAREPOINT: Dest = Dest {
    net: [13, 107, 136],
    sni: Some("contoso.sharepoint.com"),
};
const DROPBOX: Dest = Dest {
    net: [162, 125, 1],
    sni: Some("content.dropboxapi.com"),
};
const DROPBOX_CLIENT: Dest = Dest {
    net: [162, 125, 2],
    sni: Some("client.dropbox.com"),
};
const GDRIVE: Dest = Dest {
    net: [142, 250, 1],
    sni: Some("www.googleapis.com"),
};
const YOUTUBE: Dest = Dest {
    net: [142, 250, 9],
    sni: Some("upload.youtube.com"),
};
const MEGA: Dest = Dest {
    net: [31, 216, 145],
    sni: Some("gfs270n108.userstorage.mega.co.nz"),
};
const TEAMS: Dest = Dest {
    net: [52, 112, 5],
    sni: Some("teams.microsoft.com"),
};
const OUTLOOK: Dest = Dest {
    net: [40, 97, 1],
    sni: Some("outlook.office365.com"),
};
const GITHUB: Dest = Dest {
    net: [140, 82, 112],
    sni: Some("github.com"),
};
const PSGALLERY: Dest = Dest {
    net: [13, 64, 1],
    sni: Some("www.powershellgallery.com"),
};
const WINUPDATE: Dest = Dest {
    net: [13, 107, 4],
    sni: Some("download.windowsupdate.com"),
};
const BLOB: Dest = Dest {
    net: [20, 60, 1],
    sni: Some("backupacct.blob.core.windows.net"),
};
const S3: Dest = Dest {
    net: [52, 216, 1],
    sni: Some("backups.s3.eu-west-1.amazonaws.com"),
};
const WETRANSFER: Dest = Dest {
    net: [52, 19, 3],
    sni: Some("wetransfer.com"),
};
const WEBMAIL: Dest = Dest {
    net: [142, 250, 27],
    sni: Some("mail.google.com"),
};
const PYPI: Dest = Dest {
    net: [151, 101, 0],
    sni: Some("files.pythonhosted.org"),
};
const ROLLOUT: Dest = Dest {
    net: [3, 120, 7],
    sni: Some("telemetry.vendor-agent.com"),
};
const WEB: [Dest; 6] = [
    Dest {
        net: [93, 184, 216],
        sni: Some("www.example.com"),
    },
    Dest {
        net: [151, 101, 65],
        sni: Some("www.nytimes.com"),
    },
    Dest {
        net: [104, 16, 132],
        sni: Some("cdn.jsdelivr.net"),
    },
    Dest {
        net: [142, 250, 74],
        sni: Some("www.google.com"),
    },
    Dest {
        net: [185, 199, 108],
        sni: Some("docs.github.com"),
    },
    Dest {
        net: [104, 244, 42],
        sni: Some("twitter.com"),
    },
];
const BARE_IP: Dest = Dest {
    net: [45, 77, 12],
    sni: None,
};

struct Gen {
    rng: ChaCha8Rng,
    events: Vec<Event>,
    host: String,
}

impl Gen {
    fn ip(&mut self, d: Dest) -> IpAddr {
        let last: u8 = self.rng.gen_range(1..250);
        IpAddr::V4(Ipv4Addr::new(d.net[0], d.net[1], d.net[2], last))
    }

    #[allow(clippy::too_many_arguments)]
    fn start(
        &mut self,
        ts: i64,
        pid: u32,
        name: &str,
        exe: &str,
        ppid: u32,
        parent: &str,
        user: &str,
        cmdline: &str,
    ) {
        self.events.push(Event::ProcessStart(ProcessStart {
            ts: Timestamp(ts),
            host: self.host.to_string(),
            pid,
            name: name.to_string(),
            ppid: Some(ppid),
            exe: Some(exe.to_string()),
            cmdline: Some(cmdline.to_string()),
            user: Some(user.to_string()),
            parent_name: Some(parent.to_string()),
        }));
    }

    fn end(&mut self, ts: i64, pid: u32) {
        self.events.push(Event::ProcessEnd(ProcessEnd {
            ts: Timestamp(ts),
            host: self.host.to_string(),
            pid,
        }));
    }

    /// Traffic of `pid` to `d` from `from` for `minutes`, one delta per
    /// minute, with per-minute volumes drawn around `out`/`inb`.
    fn flow(&mut self, from: i64, minutes: i64, pid: u32, d: Dest, out: u64, inb: u64) {
        let ip = self.ip(d);
        self.flow_ip(from, minutes, pid, ip, d.sni, out, inb);
    }

    #[allow(clippy::too_many_arguments)]
    fn flow_ip(
        &mut self,
        from: i64,
        minutes: i64,
        pid: u32,
        ip: IpAddr,
        sni: Option<&str>,
        out: u64,
        inb: u64,
    ) {
        for m in 0..minutes.max(1) {
            let jitter_o = self.rng.gen_range(0.6..1.4);
            let jitter_i = self.rng.gen_range(0.6..1.4);
            let ts = from + (m + 1) * MIN_US - self.rng.gen_range(0..5_000_000);
            self.events.push(Event::Net(NetRecord {
                ts: Timestamp(ts),
                host: self.host.to_string(),
                pid,
                proto: Transport::Tcp,
                dst_ip: ip,
                dst_port: 443,
                bytes_out: (out as f64 * jitter_o) as u64,
                bytes_in: (inb as f64 * jitter_i) as u64,
                sni: sni.map(str::to_string),
                domain: None,
            }));
        }
    }

    fn dns(&mut self, ts: i64, query: &str, ip: IpAddr) {
        self.events.push(Event::Dns(DnsRecord {
            ts: Timestamp(ts),
            host: self.host.to_string(),
            query: query.to_string(),
            answers: vec![ip],
            pid: None,
        }));
    }

    fn internal(&mut self, ts: i64, pid: u32, out: u64, inb: u64) {
        self.events.push(Event::Net(NetRecord {
            ts: Timestamp(ts),
            host: self.host.to_string(),
            pid,
            proto: Transport::Tcp,
            dst_ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 20)),
            dst_port: 445,
            bytes_out: out,
            bytes_in: inb,
            sni: None,
            domain: None,
        }));
    }
}

fn user_of(host: &str) -> String {
    format!("CONTOSO\\u{}", &host[host.len().saturating_sub(4)..])
}

/// Simulates the fleet, writing telemetry JSONL to `out` in event-time order.
/// `progress` is called after each simulated day with (day, days).
pub fn simulate(
    opts: &SimOptions,
    out: &mut dyn Write,
    mut progress: impl FnMut(u32, u32),
) -> io::Result<SimSummary> {
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let mut hosts: Vec<Host> = (0..opts.hosts)
        .map(|i| {
            let r: f64 = rng.gen();
            let role = if r < 0.60 {
                Role::Office
            } else if r < 0.75 {
                Role::Developer
            } else if r < 0.85 {
                Role::It
            } else {
                Role::Server
            };
            let name = match role {
                Role::Server => format!("srv-{i:04}"),
                _ => format!("ws-{i:04}"),
            };
            Host {
                name,
                role,
                next_pid: rng.gen_range(1000..5000),
                dropbox: rng.gen_bool(0.2),
                heavy_sync: rng.gen_bool(0.15),
                uploader: rng.gen_bool(0.25),
                rollout_at: None,
                chrome: rng.gen_bool(0.6),
            }
        })
        .collect();
    // A fleet-wide rollout of a new agent in the middle of the run.
    let rollout_day = (opts.days / 2).max(1).min(opts.days.saturating_sub(1)) as i64;
    for h in hosts.iter_mut().filter(|h| h.role != Role::Server) {
        if rng.gen_bool(0.8) {
            h.rollout_at = Some(
                opts.start.0 + rollout_day * DAY_US + 10 * HOUR_US + rng.gen_range(0..2 * HOUR_US),
            );
        }
    }

    // Incidents: on workstations, after the quiet days, kinds cycling.
    let mut incidents_plan: Vec<(usize, IncidentKind, i64)> = Vec::new();
    let workstations: Vec<usize> = hosts
        .iter()
        .enumerate()
        .filter(|(_, h)| h.role == Role::Office || h.role == Role::Developer)
        .map(|(i, _)| i)
        .collect();
    let eligible_days = opts.days.saturating_sub(opts.quiet_days).max(1);
    let mut used = Vec::new();
    for k in 0..opts.incidents {
        if workstations.is_empty() {
            break;
        }
        let mut hi = *workstations.choose(&mut rng).unwrap_or(&0);
        for _ in 0..20 {
            if !used.contains(&hi) {
                break;
            }
            hi = *workstations.choose(&mut rng).unwrap_or(&0);
        }
        used.push(hi);
        let kind = ALL_KINDS[k % ALL_KINDS.len()];
        let day =
            i64::from(opts.quiet_days.min(opts.days - 1)) + rng.gen_range(0..eligible_days) as i64;
        let hour = if kind == IncidentKind::LowAndSlow {
            9
        } else {
            rng.gen_range(9..16)
        };
        let at = opts.start.0 + day * DAY_US + hour * HOUR_US + rng.gen_range(0..50) * MIN_US;
        incidents_plan.push((hi, kind, at));
    }

    let mut summary = SimSummary {
        hosts: hosts.len(),
        ..SimSummary::default()
    };
    let mut line = String::with_capacity(256);
    let mut writer = io::BufWriter::with_capacity(1 << 20, out);
    for day in 0..opts.days {
        let day0 = opts.start.0 + i64::from(day) * DAY_US;
        let weekday = (i64::from(day) % 7) < 5;
        let mut day_events: Vec<Event> = Vec::new();
        for (hi, h) in hosts.iter_mut().enumerate() {
            let mut g = Gen {
                rng: ChaCha8Rng::seed_from_u64(
                    opts.seed ^ ((hi as u64) << 20) ^ u64::from(day) << 48,
                ),
                events: Vec::new(),
                host: h.name.clone(),
            };
            if day == 0 {
                g.events.push(Event::Host(HostEvent {
                    ts: Timestamp(day0),
                    host: h.name.clone(),
                    os: Some("windows".into()),
                    labels: [("role".to_string(), format!("{:?}", h.role).to_lowercase())]
                        .into_iter()
                        .collect(),
                }));
            }
            simulate_host_day(&mut g, h, day0, weekday);
            for (ihost, kind, at) in &incidents_plan {
                if *ihost == hi && *at >= day0 && *at < day0 + DAY_US {
                    let inc = inject(&mut g, h, *kind, *at, summary.incidents.len());
                    summary.incidents.push(inc);
                }
            }
            day_events.append(&mut g.events);
        }
        day_events.sort_by_key(|e| e.ts());
        for e in &day_events {
            line.clear();
            e.write_json(&mut line);
            line.push('\n');
            writer.write_all(line.as_bytes())?;
        }
        summary.events += day_events.len() as u64;
        progress(day + 1, opts.days);
    }
    writer.flush()?;
    Ok(summary)
}

fn alloc_pid(h: &mut Host) -> u32 {
    h.next_pid += 4 * (1 + (h.next_pid % 3));
    if h.next_pid > 60_000 {
        h.next_pid = 1000 + h.next_pid % 997;
    }
    h.next_pid
}

fn simulate_host_day(g: &mut Gen, h: &mut Host, day0: i64, weekday: bool) {
    let user = user_of(&h.name);
    if h.role == Role::Server {
        simulate_server_day(g, h, day0, &user);
        return;
    }
    if !weekday && !g.rng.gen_bool(0.1) {
        return;
    }
    let login = day0 + 8 * HOUR_US + g.rng.gen_range(0..60) * MIN_US;
    let logout = day0 + 17 * HOUR_US + g.rng.gen_range(0..90) * MIN_US;
    let explorer = alloc_pid(h);
    g.start(
        login,
        explorer,
        "explorer.exe",
        r"C:\Windows\explorer.exe",
        900,
        "userinit.exe",
        &user,
        "explorer.exe",
    );

    // OneDrive: heartbeats, periodic sync uploads and downloads.
    let od = alloc_pid(h);
    g.start(
        login + 20_000_000,
        od,
        "OneDrive.exe",
        r"C:\Users\u\AppData\Local\Microsoft\OneDrive\OneDrive.exe",
        explorer,
        "explorer.exe",
        &user,
        "OneDrive.exe /background",
    );
    let mut t = login + MIN_US;
    while t < logout {
        g.flow(t, 1, od, ONEDRIVE, 6 * KIB, 9 * KIB);
        if g.rng.gen_bool(if h.heavy_sync { 0.25 } else { 0.08 }) {
            let mins = g.rng.gen_range(1..6);
            let hi = if h.heavy_sync { 60 } else { 15 };
            let per = g.rng.gen_range(1..hi) * MIB;
            g.flow(t, mins, od, ONEDRIVE_STORAGE, per, per / 50);
        }
        if g.rng.gen_bool(0.05) {
            let per = g.rng.gen_range(1..30) * MIB;
            g.flow(t, 2, od, ONEDRIVE_STORAGE, per / 60, per);
        }
        t += 10 * MIN_US;
    }
    g.end(logout, od);

    if h.dropbox {
        let db = alloc_pid(h);
        g.start(
            login + 30_000_000,
            db,
            "Dropbox.exe",
            r"C:\Program Files (x86)\Dropbox\Client\Dropbox.exe",
            explorer,
            "explorer.exe",
            &user,
            "Dropbox.exe /systemstartup",
        );
        let mut t = login + MIN_US;
        while t < logout {
            g.flow(t, 1, db, DROPBOX_CLIENT, 4 * KIB, 12 * KIB);
            if g.rng.gen_bool(0.1) {
                let per = g.rng.gen_range(1..40) * MIB;
                let mins_n = g.rng.gen_range(1..4);
                g.flow(t, mins_n, db, DROPBOX, per, per / 80);
            }
            t += 15 * MIN_US;
        }
        g.end(logout, db);
    }

    // Browser: mostly downloading; some users upload big files now and then.
    let browser = if h.chrome { "chrome.exe" } else { "msedge.exe" };
    let br = alloc_pid(h);
    g.start(
        login + MIN_US,
        br,
        browser,
        &format!(r"C:\Program Files\Browser\{browser}"),
        explorer,
        "explorer.exe",
        &user,
        browser,
    );
    let mut t = login + 2 * MIN_US;
    while t < logout {
        if g.rng.gen_bool(0.5) {
            let d = WEB[g.rng.gen_range(0..WEB.len())];
            let mins = g.rng.gen_range(1..8);
            let inb = g.rng.gen_range(200..4000) * KIB;
            g.flow(t, mins, br, d, inb / 30, inb);
        }
        t += 6 * MIN_US;
    }
    // Everyday uploads: webmail attachments, forms, documents edited online.
    if g.rng.gen_bool(0.4) {
        for _ in 0..g.rng.gen_range(1..4) {
            let at = login + g.rng.gen_range(0..8) * HOUR_US + g.rng.gen_range(0..60) * MIN_US;
            let dest = [GDRIVE, WEBMAIL, SHAREPOINT, WEB[4], DROPBOX][g.rng.gen_range(0..5)];
            let size = g.rng.gen_range(1024..6000) * KIB;
            g.flow(at, 1, br, dest, size, size / 20);
        }
    }
    if h.uploader && g.rng.gen_bool(0.3) {
        let at = login + g.rng.gen_range(1..7) * HOUR_US;
        let dest = [YOUTUBE, GDRIVE, WETRANSFER][g.rng.gen_range(0..3)];
        let per = g.rng.gen_range(5..60) * MIB;
        let mins_n = g.rng.gen_range(2..10);
        g.flow(at, mins_n, br, dest, per, per / 40);
    }
    g.end(logout, br);

    // Teams: meetings are symmetric.
    let teams = alloc_pid(h);
    g.start(
        login + 40_000_000,
        teams,
        "Teams.exe",
        r"C:\Users\u\AppData\Local\Microsoft\Teams\Teams.exe",
        explorer,
        "explorer.exe",
        &user,
        "Teams.exe --system-initiated",
    );
    for _ in 0..g.rng.gen_range(0..4) {
        let at = login + g.rng.gen_range(0..8) * HOUR_US;
        let per = g.rng.gen_range(2..8) * MIB;
        let mins_n = g.rng.gen_range(15..60);
        g.flow(at, mins_n, teams, TEAMS, per, per + per / 10);
    }
    g.end(logout, teams);

    // Outlook: sync downloads, attachments sent now and then.
    let ol = alloc_pid(h);
    g.start(
        login + 50_000_000,
        ol,
        "OUTLOOK.EXE",
        r"C:\Program Files\Microsoft Office\root\Office16\OUTLOOK.EXE",
        explorer,
        "explorer.exe",
        &user,
        "OUTLOOK.EXE",
    );
    let mut t = login + MIN_US;
    while t < logout {
        g.flow(t, 1, ol, OUTLOOK, 20 * KIB, 200 * KIB);
        if g.rng.gen_bool(0.06) {
            let per = g.rng.gen_range(1..20) * MIB;
            g.flow(t, 1, ol, OUTLOOK, per, 50 * KIB);
        }
        t += 12 * MIN_US;
    }
    g.end(logout, ol);

    // Office: quiet, with occasional saves to SharePoint.
    for app in ["WINWORD.EXE", "EXCEL.EXE", "POWERPNT.EXE"] {
        if !g.rng.gen_bool(0.6) {
            continue;
        }
        let pid = alloc_pid(h);
        let s = login + g.rng.gen_range(0..6) * HOUR_US + g.rng.gen_range(0..60) * MIN_US;
        let e = (s + g.rng.gen_range(20..180) * MIN_US).min(logout);
        g.start(
            s,
            pid,
            app,
            &format!(r"C:\Program Files\Microsoft Office\root\Office16\{app}"),
            explorer,
            "explorer.exe",
            &user,
            app,
        );
        g.flow(s, 1, pid, SHAREPOINT, 30 * KIB, 400 * KIB);
        for _ in 0..g.rng.gen_range(0..4) {
            let span = ((e - s) / MIN_US).max(1);
            let at = s + g.rng.gen_range(0..span) * MIN_US;
            let hi = if g.rng.gen_bool(0.1) { 20_000 } else { 6000 };
            let size = g.rng.gen_range(200..hi) * KIB;
            g.flow(at, 1, pid, SHAREPOINT, size, size / 30);
        }
        g.internal(s + MIN_US, pid, 5 * KIB, 300 * KIB);
        g.end(e, pid);
    }

    // IT admins: PowerShell downloads modules and updates.
    if h.role == Role::It {
        for _ in 0..g.rng.gen_range(1..5) {
            let pid = alloc_pid(h);
            let s = login + g.rng.gen_range(0..8) * HOUR_US;
            g.start(
                s,
                pid,
                "powershell.exe",
                r"C:\Windows\System32\WindowsPowerShell\v1.0\powershell.exe",
                explorer,
                "explorer.exe",
                &user,
                "powershell.exe -NoProfile",
            );
            let d = if g.rng.gen_bool(0.5) {
                PSGALLERY
            } else {
                GITHUB
            };
            let inb = g.rng.gen_range(1..80) * MIB;
            let mins_n = g.rng.gen_range(1..4);
            g.flow(s, mins_n, pid, d, inb / 100, inb);
            if g.rng.gen_bool(0.2) {
                // An admin posting a log bundle to a ticketing system.
                g.flow(s + 5 * MIN_US, 1, pid, WEB[4], 2 * MIB, 40 * KIB);
            }
            g.end(s + 15 * MIN_US, pid);
        }
    }

    // Developers: git pushes/pulls and pip downloads.
    if h.role == Role::Developer {
        for _ in 0..g.rng.gen_range(1..6) {
            let pid = alloc_pid(h);
            let s = login + g.rng.gen_range(0..8) * HOUR_US;
            g.start(
                s,
                pid,
                "git.exe",
                r"C:\Program Files\Git\bin\git.exe",
                explorer,
                "explorer.exe",
                &user,
                "git push",
            );
            let out = g.rng.gen_range(10..3000) * KIB;
            g.flow(s, 1, pid, GITHUB, out, out / 5 + 20 * KIB);
            g.end(s + 2 * MIN_US, pid);
        }
        let pid = alloc_pid(h);
        let s = login + g.rng.gen_range(0..6) * HOUR_US;
        g.start(
            s,
            pid,
            "python.exe",
            r"C:\Python312\python.exe",
            explorer,
            "explorer.exe",
            &user,
            "python -m pip install -r requirements.txt",
        );
        let inb = g.rng.gen_range(5..200) * MIB;
        g.flow(s, 2, pid, PYPI, inb / 200, inb);
        g.end(s + 3 * MIN_US, pid);
    }

    // The new agent rolled out mid-run: telemetry uploads, modest.
    if let Some(at) = h.rollout_at {
        if at < day0 + DAY_US {
            let start = at.max(login);
            let pid = alloc_pid(h);
            g.start(
                start,
                pid,
                "VendorAgent.exe",
                r"C:\Program Files\Vendor\VendorAgent.exe",
                700,
                "services.exe",
                "NT AUTHORITY\\SYSTEM",
                "VendorAgent.exe --service",
            );
            let mut t = start + MIN_US;
            let mut first = true;
            while t < logout {
                let per = if first { 3 * MIB } else { 200 * KIB };
                first = false;
                g.flow(t, 1, pid, ROLLOUT, per, 30 * KIB);
                t += 30 * MIN_US;
            }
            g.end(logout, pid);
        }
    }
}

fn simulate_server_day(g: &mut Gen, h: &mut Host, day0: i64, _user: &str) {
    let sys = "NT AUTHORITY\\SYSTEM";
    // Nightly backup to object storage.
    let pid = alloc_pid(h);
    let s = day0 + HOUR_US + g.rng.gen_range(0..60) * MIN_US;
    g.start(
        s,
        pid,
        "backup-agent.exe",
        r"C:\Program Files\Backup\backup-agent.exe",
        700,
        "services.exe",
        sys,
        "backup-agent.exe --nightly",
    );
    let dest = if g.rng.gen_bool(0.5) { BLOB } else { S3 };
    let mins = g.rng.gen_range(10..40);
    let per = g.rng.gen_range(20..120) * MIB;
    g.flow(s, mins, pid, dest, per, per / 200);
    g.end(s + (mins + 1) * MIN_US, pid);
    // Windows Update downloads.
    let pid = alloc_pid(h);
    let s = day0 + 3 * HOUR_US + g.rng.gen_range(0..60) * MIN_US;
    g.start(
        s,
        pid,
        "svchost.exe",
        r"C:\Windows\System32\svchost.exe",
        700,
        "services.exe",
        sys,
        "svchost.exe -k netsvcs",
    );
    let inb = g.rng.gen_range(10..300) * MIB;
    g.flow(s, 5, pid, WINUPDATE, inb / 300, inb / 5);
    g.end(s + 6 * MIN_US, pid);
    // A service answering internal clients all day.
    let pid = alloc_pid(h);
    g.start(
        day0 + 5 * MIN_US,
        pid,
        "sqlservr.exe",
        r"C:\Program Files\SQL\sqlservr.exe",
        700,
        "services.exe",
        sys,
        "sqlservr.exe",
    );
    for i in 0..24 {
        g.internal(day0 + i * HOUR_US + 30 * MIN_US, pid, 40 * MIB, 2 * MIB);
    }
}

/// Starts a process of `h` at `at` (a pid allocated for it) and returns its pid.
#[allow(clippy::too_many_arguments)]
fn launch(
    g: &mut Gen,
    h: &mut Host,
    at: i64,
    parent: (u32, &str),
    user: &str,
    name: &str,
    exe: &str,
    cmdline: &str,
) -> u32 {
    let pid = alloc_pid(h);
    g.start(at, pid, name, exe, parent.0, parent.1, user, cmdline);
    pid
}

const WINWORD: &str = r"C:\Program Files\Microsoft Office\root\Office16\WINWORD.EXE";
const EXCEL: &str = r"C:\Program Files\Microsoft Office\root\Office16\EXCEL.EXE";
const POWERSHELL: &str = r"C:\Windows\System32\WindowsPowerShell\v1.0\powershell.exe";

fn inject(g: &mut Gen, h: &mut Host, kind: IncidentKind, at: i64, n: usize) -> Incident {
    let user = user_of(&h.name);
    let explorer = (900, "explorer.exe");
    // Each kind: the uploading process, then `mins` minutes of `per` bytes a
    // minute to its destination; the process ends two minutes after the
    // upload starts plus its length (Word in the macro case stays open).
    let (app, pid, mins, per, service) = match kind {
        IncidentKind::OfficeMacroCloud => {
            let cmd = r#"WINWORD.EXE /n "C:\Users\u\Downloads\invoice.docm""#;
            let pid = launch(g, h, at, explorer, &user, "WINWORD.EXE", WINWORD, cmd);
            let mins = g.rng.gen_range(4..10);
            let per = g.rng.gen_range(15..40) * MIB;
            g.flow(at + MIN_US, mins, pid, DROPBOX, per, per / 300);
            ("winword.exe", pid, mins, per, "dropbox")
        }
        IncidentKind::OfficeScriptHost => {
            let word = launch(
                g,
                h,
                at,
                explorer,
                &user,
                "WINWORD.EXE",
                WINWORD,
                "WINWORD.EXE",
            );
            let cmd = "powershell.exe -nop -w hidden -enc SQBFAFgA...";
            let parent = (word, "WINWORD.EXE");
            let pid = launch(
                g,
                h,
                at + 30_000_000,
                parent,
                &user,
                "powershell.exe",
                POWERSHELL,
                cmd,
            );
            let mins = g.rng.gen_range(3..8);
            let per = g.rng.gen_range(10..30) * MIB;
            g.flow(at + MIN_US, mins, pid, GDRIVE, per, per / 200);
            ("powershell.exe", pid, mins, per, "google_drive")
        }
        IncidentKind::UnknownTool => {
            let cmd = "rclone.exe copy C:\\Users\\u\\Documents mega:backup";
            let exe = r"C:\Users\Public\rclone.exe";
            let pid = launch(g, h, at, explorer, &user, "rclone.exe", exe, cmd);
            let mins = g.rng.gen_range(5..15);
            let per = g.rng.gen_range(40..120) * MIB;
            g.flow(at + MIN_US, mins, pid, MEGA, per, per / 500);
            ("rclone.exe", pid, mins, per, "mega")
        }
        IncidentKind::LowAndSlow => {
            let cmd = "EXCEL.EXE /e report.xlsm";
            let pid = launch(g, h, at, explorer, &user, "EXCEL.EXE", EXCEL, cmd);
            let mins = 8 * 60;
            let per = g.rng.gen_range(180..300) * KIB;
            g.flow(at + MIN_US, mins, pid, GDRIVE, per, per / 40);
            ("excel.exe", pid, mins, per, "google_drive")
        }
        IncidentKind::NoSni => {
            let cmd = "powershell.exe -File C:\\Users\\Public\\sync.ps1";
            let pid = launch(g, h, at, explorer, &user, "powershell.exe", POWERSHELL, cmd);
            let mins = g.rng.gen_range(3..8);
            let per = g.rng.gen_range(20..60) * MIB;
            g.flow(at + MIN_US, mins, pid, BARE_IP, per, per / 400);
            ("powershell.exe", pid, mins, per, "other")
        }
        IncidentKind::DnsOnly => {
            let pid = launch(g, h, at, explorer, &user, "EXCEL.EXE", EXCEL, "EXCEL.EXE");
            let ip = g.ip(DROPBOX);
            g.dns(at + 10_000_000, "content.dropboxapi.com", ip);
            let mins = g.rng.gen_range(3..8);
            let per = g.rng.gen_range(15..40) * MIB;
            g.flow_ip(at + MIN_US, mins, pid, ip, None, per, per / 300);
            ("excel.exe", pid, mins, per, "dropbox")
        }
    };
    let end = at + (mins + 2) * MIN_US;
    if kind != IncidentKind::OfficeMacroCloud {
        g.end(end, pid);
    }
    Incident {
        id: format!("inc-{:02}", n + 1),
        kind,
        host: h.name.clone(),
        app: app.to_string(),
        pid,
        start: Timestamp(at).to_rfc3339(),
        end: Timestamp(end).to_rfc3339(),
        bytes_out: per * mins as u64,
        service: service.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(opts: &SimOptions) -> (Vec<u8>, SimSummary) {
        let mut buf = Vec::new();
        let s = simulate(opts, &mut buf, |_, _| {}).unwrap();
        (buf, s)
    }

    #[test]
    fn same_seed_same_bytes_and_every_line_parses() {
        let opts = SimOptions {
            hosts: 20,
            days: 2,
            incidents: 6,
            ..SimOptions::default()
        };
        let (a, sa) = run(&opts);
        let (b, _) = run(&opts);
        assert_eq!(a, b);
        let (c, _) = run(&SimOptions {
            seed: 2,
            ..opts.clone()
        });
        assert_ne!(a, c);
        let text = String::from_utf8(a).unwrap();
        let mut last = i64::MIN;
        let mut n = 0;
        for line in text.lines() {
            let e = outflow_core::telemetry::parse_line(line).unwrap();
            assert!(e.ts().0 >= last, "not in event-time order");
            last = e.ts().0;
            n += 1;
        }
        assert_eq!(n, sa.events);
        assert_eq!(sa.incidents.len(), 6);
        let kinds: std::collections::BTreeSet<_> = sa
            .incidents
            .iter()
            .map(|i| format!("{:?}", i.kind))
            .collect();
        assert_eq!(kinds.len(), 6);
        // Incidents happen after the learning day.
        for i in &sa.incidents {
            assert!(Timestamp::parse_rfc3339(&i.start).unwrap().0 >= opts.start.0 + DAY_US);
        }
    }
}
