//! `outflow ctl`: the admin API from the command line. Human tables by
//! default, `--json` for scripts. A small HTTP/1.1 client (plain or TLS with
//! the admin certificate) keeps the dependency tree free of an HTTP stack.

use anyhow::{bail, Context as _};
use serde_json::Value;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

#[derive(Debug, clap::Args)]
pub struct CtlArgs {
    /// Admin API of any aggregator node.
    #[arg(
        long,
        env = "OUTFLOW_API",
        default_value = "http://127.0.0.1:7071",
        global = true
    )]
    pub api: String,
    /// Certificate directory: https uses ca.pem and the admin certificate.
    #[arg(long, global = true)]
    pub certs: Option<PathBuf>,
    /// Bearer token (when not using an admin certificate).
    #[arg(long, env = "OUTFLOW_API_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum CtlCommand {
    /// Fleet baselines: every app, or one app's days.
    Baselines { app: Option<String> },
    /// Recent alerts kept by the aggregators.
    Alerts {
        /// RFC 3339 time or microseconds since the epoch (window end).
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Nodes, leader, term, commit/applied indexes, state hashes, collectors.
    Cluster,
    /// Show or replace the replicated policy.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Raft membership.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum PolicyCommand {
    /// The current policy document and version.
    Show,
    /// Replace the policy with a JSON file (`-` for stdin).
    Set {
        file: PathBuf,
        /// Why (kept in the audit trail).
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Who changed the policy, when and to what.
    Audit,
}

#[derive(Debug, clap::Subcommand)]
pub enum NodeCommand {
    /// Add a node (start it first with `outflow aggregator --join`).
    Add {
        id: u64,
        /// Its gRPC address HOST:PORT.
        address: String,
        /// Add as a non-voting learner.
        #[arg(long)]
        learner: bool,
    },
    /// Remove a node from the group.
    Remove { id: u64 },
    /// Move leadership to another node.
    TransferLeader { to: u64 },
}

/// A client of one node's admin API.
pub struct Api {
    scheme_tls: bool,
    host: String,
    port: u16,
    certs: Option<PathBuf>,
    token: Option<String>,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

impl Api {
    /// `http(s)://HOST:PORT`; https presents `admin.pem` from `certs`.
    pub fn parse(url: &str, certs: Option<PathBuf>, token: Option<String>) -> anyhow::Result<Self> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            bail!("--api {url:?}: expected http://HOST:PORT or https://HOST:PORT");
        };
        let hostport = rest.trim_end_matches('/');
        let (host, port) = hostport
            .rsplit_once(':')
            .with_context(|| format!("--api {url:?}: missing :PORT"))?;
        let port: u16 = port
            .parse()
            .with_context(|| format!("--api {url:?}: bad port"))?;
        Ok(Api {
            scheme_tls: tls,
            host: host.trim_matches(['[', ']']).to_string(),
            port,
            certs,
            token,
        })
    }

    async fn connect(&self) -> anyhow::Result<Box<dyn Io>> {
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .with_context(|| {
                format!("connecting to the admin API at {}:{}", self.host, self.port)
            })?;
        if !self.scheme_tls {
            return Ok(Box::new(tcp));
        }
        let dir = self
            .certs
            .as_ref()
            .context("https needs --certs DIR (ca.pem, admin.pem)")?;
        outflow_pki::install_ring_provider();
        let cfg = outflow_pki::CertDir::new(dir).rustls_client_config("admin")?;
        let name = rustls::pki_types::ServerName::try_from(self.host.clone())
            .with_context(|| format!("bad server name {}", self.host))?;
        let tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(name, tcp)
            .await
            .context("TLS handshake")?;
        Ok(Box::new(tls))
    }

    /// One request; the JSON body of a 2xx answer, else an error with the API's message.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<Value> {
        let mut io = self.connect().await?;
        let body = body.unwrap_or_default();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}:{}\r\nConnection: close\r\nAccept: application/json\r\nContent-Length: {}\r\n",
            self.host,
            self.port,
            body.len()
        );
        if !body.is_empty() {
            req.push_str("Content-Type: application/json\r\n");
        }
        if let Some(t) = &self.token {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        req.push_str("\r\n");
        io.write_all(req.as_bytes()).await?;
        io.write_all(&body).await?;
        io.flush().await?;
        let mut raw = Vec::new();
        // A TLS peer may close without close_notify; keep what arrived.
        if let Err(e) = io.read_to_end(&mut raw).await {
            if raw.is_empty() {
                return Err(e).context("reading the admin API response");
            }
        }
        let (status, body) = parse_response(&raw)?;
        let v: Value = serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
        if !(200..300).contains(&status) {
            let msg = v
                .get("error")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string());
            bail!("{method} {path}: HTTP {status}: {msg}");
        }
        Ok(v)
    }
}

fn parse_response(raw: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("malformed HTTP response (no header end)")?;
    let head = std::str::from_utf8(&raw[..end]).context("non-UTF-8 HTTP headers")?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .context("malformed HTTP status line")?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let mut body = raw[end + 4..].to_vec();
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(nl) = rest.windows(2).position(|w| w == b"\r\n") {
            let line = std::str::from_utf8(&rest[..nl])?;
            let size = usize::from_str_radix(line.split(';').next().unwrap_or("0").trim(), 16)?;
            rest = &rest[nl + 2..];
            if size == 0 || rest.len() < size {
                break;
            }
            out.extend_from_slice(&rest[..size]);
            rest = rest.get(size + 2..).unwrap_or(&[]);
        }
        body = out;
    }
    Ok((status, body))
}

fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut w: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<String>, out: &mut String| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w[i]))
            .collect();
        out.push_str(s.join("  ").trim_end());
        out.push('\n');
    };
    line(headers.iter().map(|s| s.to_string()).collect(), &mut out);
    for r in rows {
        line(r, &mut out);
    }
    out
}

fn s(v: &Value, k: &str) -> String {
    match v.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(x) => x.to_string(),
    }
}

fn render(cmd: &CtlCommand, v: &Value) -> String {
    match cmd {
        CtlCommand::Cluster => {
            let mut out = format!(
                "leader {}  term {}  commit {}  (answered by node {})\n\n",
                s(v, "leader"),
                s(v, "term"),
                s(v, "commit_index"),
                s(v, "answered_by")
            );
            let rows = v["nodes"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|n| {
                    let h = s(n, "state_hash");
                    vec![
                        s(n, "id"),
                        s(n, "address"),
                        s(n, "role"),
                        s(n, "term"),
                        s(n, "commit_index"),
                        s(n, "applied_index"),
                        h.chars().take(16).collect(),
                    ]
                })
                .collect();
            out.push_str(&table(
                &[
                    "ID",
                    "ADDRESS",
                    "ROLE",
                    "TERM",
                    "COMMIT",
                    "APPLIED",
                    "STATE HASH",
                ],
                rows,
            ));
            let cs = v["collectors"].as_array().cloned().unwrap_or_default();
            out.push_str(&format!(
                "\ncollectors (shard map version {}):\n",
                s(v, "shard_map_version")
            ));
            let rows = cs
                .iter()
                .map(|c| {
                    vec![
                        s(c, "id"),
                        s(c, "endpoint"),
                        s(c, "alive"),
                        s(c, "hosts"),
                        s(c, "last_seen_ms"),
                    ]
                })
                .collect();
            out.push_str(&table(
                &["COLLECTOR", "ENDPOINT", "ALIVE", "HOSTS", "LAST SEEN (ms)"],
                rows,
            ));
            out
        }
        CtlCommand::Baselines { app: None } => {
            let rows = v["apps"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|a| {
                    let mut svc: Vec<(String, u64)> = a["services"]
                        .as_object()
                        .map(|m| {
                            m.iter()
                                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                                .collect()
                        })
                        .unwrap_or_default();
                    svc.sort_by(|x, y| y.1.cmp(&x.1).then(x.0.cmp(&y.0)));
                    let top: Vec<String> = svc
                        .iter()
                        .take(3)
                        .map(|(k, n)| format!("{k}:{n}"))
                        .collect();
                    vec![
                        s(a, "app"),
                        s(a, "days"),
                        s(a, "hosts_running"),
                        s(a, "hosts_active"),
                        s(a, "hosts_new"),
                        top.join(" "),
                    ]
                })
                .collect();
            let mut out = table(
                &[
                    "APP",
                    "DAYS",
                    "HOSTS",
                    "ACTIVE",
                    "NEW",
                    "TOP SERVICES (hosts)",
                ],
                rows,
            );
            out.push_str(&format!(
                "\napplied index {}{}\n",
                s(v, "applied_index"),
                if v["stale"] == Value::Bool(true) {
                    " (STALE: no quorum read)"
                } else {
                    ""
                }
            ));
            out
        }
        CtlCommand::Baselines { app: Some(_) } => {
            let rows = v["days"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|d| {
                    let services = d["services"]
                        .as_object()
                        .map(|m| {
                            m.iter()
                                .map(|(k, c)| format!("{k}:{}", c["hosts"]))
                                .collect::<Vec<_>>()
                                .join(" ")
                        })
                        .unwrap_or_default();
                    vec![
                        s(d, "day"),
                        s(d, "hosts_running"),
                        s(d, "hosts_active"),
                        s(d, "hosts_new"),
                        services,
                    ]
                })
                .collect();
            format!(
                "{}\n{}",
                s(v, "app"),
                table(&["DAY", "HOSTS", "ACTIVE", "NEW", "SERVICES (hosts)"], rows)
            )
        }
        CtlCommand::Alerts { .. } => {
            let rows = v["alerts"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|a| {
                    vec![
                        s(a, "window_end"),
                        s(a, "severity"),
                        s(a, "host"),
                        s(a, "app"),
                        s(a, "service"),
                        s(a, "bytes_out"),
                        s(a, "score"),
                        s(a, "id"),
                    ]
                })
                .collect();
            table(
                &[
                    "WINDOW END",
                    "SEVERITY",
                    "HOST",
                    "APP",
                    "SERVICE",
                    "BYTES OUT",
                    "SCORE",
                    "ID",
                ],
                rows,
            )
        }
        CtlCommand::Policy {
            command: PolicyCommand::Audit,
        } => {
            let rows = v["audit"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|a| {
                    vec![
                        s(a, "index"),
                        s(a, "unix_ms"),
                        s(a, "principal"),
                        s(a, "action"),
                        s(a, "comment"),
                    ]
                })
                .collect();
            table(&["INDEX", "UNIX MS", "WHO", "ACTION", "COMMENT"], rows)
        }
        CtlCommand::Policy {
            command: PolicyCommand::Show,
        } => {
            format!(
                "policy version {}\n{}\n",
                s(v, "version"),
                serde_json::to_string_pretty(&v["policy"]).unwrap_or_default()
            )
        }
        _ => format!("{}\n", serde_json::to_string_pretty(v).unwrap_or_default()),
    }
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `outflow ctl`.
pub fn run(args: CtlArgs) -> anyhow::Result<ExitCode> {
    let api = Api::parse(&args.api, args.certs.clone(), args.token.clone())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let v = rt.block_on(async {
        match &args.command {
            CtlCommand::Baselines { app: None } => api.call("GET", "/api/v1/baselines", None).await,
            CtlCommand::Baselines { app: Some(a) } => {
                api.call("GET", &format!("/api/v1/baselines/{}", enc(a)), None)
                    .await
            }
            CtlCommand::Alerts { since, limit } => {
                let mut q = vec![];
                if let Some(s) = since {
                    q.push(format!("since={}", enc(s)));
                }
                if let Some(l) = limit {
                    q.push(format!("limit={l}"));
                }
                let path = if q.is_empty() {
                    "/api/v1/alerts".to_string()
                } else {
                    format!("/api/v1/alerts?{}", q.join("&"))
                };
                api.call("GET", &path, None).await
            }
            CtlCommand::Cluster => api.call("GET", "/api/v1/cluster", None).await,
            CtlCommand::Policy {
                command: PolicyCommand::Show | PolicyCommand::Audit,
            } => api.call("GET", "/api/v1/policy", None).await,
            CtlCommand::Policy {
                command: PolicyCommand::Set { file, comment },
            } => {
                let body = if file.as_os_str() == "-" {
                    let mut b = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)?;
                    b
                } else {
                    std::fs::read(file)
                        .with_context(|| format!("reading policy file {}", file.display()))?
                };
                let _: Value = serde_json::from_slice(&body)
                    .with_context(|| format!("policy file {} is not JSON", file.display()))?;
                api.call(
                    "PUT",
                    &format!("/api/v1/policy?comment={}", enc(comment)),
                    Some(body),
                )
                .await
            }
            CtlCommand::Node {
                command:
                    NodeCommand::Add {
                        id,
                        address,
                        learner,
                    },
            } => {
                let body = serde_json::json!({"id": id, "address": address, "learner": learner});
                api.call("POST", "/api/v1/nodes", Some(body.to_string().into_bytes()))
                    .await
            }
            CtlCommand::Node {
                command: NodeCommand::Remove { id },
            } => {
                api.call("DELETE", &format!("/api/v1/nodes/{id}"), None)
                    .await
            }
            CtlCommand::Node {
                command: NodeCommand::TransferLeader { to },
            } => {
                let body = serde_json::json!({"to": to});
                api.call(
                    "POST",
                    "/api/v1/leader",
                    Some(body.to_string().into_bytes()),
                )
                .await
            }
        }
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", render(&args.command, &v));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_responses() {
        let (st, b) = parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").unwrap();
        assert_eq!((st, b.as_slice()), (200, &b"{}"[..]));
        let raw = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let (st, b) = parse_response(raw).unwrap();
        assert_eq!((st, b.as_slice()), (404, &b"abcde"[..]));
        assert!(parse_response(b"garbage").is_err());
    }

    #[test]
    fn api_urls_are_checked() {
        assert!(Api::parse("127.0.0.1:7071", None, None).is_err());
        let a = Api::parse("https://[::1]:7071/", None, None).unwrap();
        assert!(a.scheme_tls && a.host == "::1" && a.port == 7071);
    }

    #[test]
    fn tables_align_columns() {
        let t = table(&["A", "LONGER"], vec![vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    LONGER\nxyz  1\n");
    }
}
