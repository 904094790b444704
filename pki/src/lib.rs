//! Outflow's identities and certificates.
//!
//! Identity is bound to the certificate: the subject CN is the identity name
//! (the host id for agents) and a SAN URI `urn:outflow:<role>:<name>` carries
//! the role. [`identity_from_der`] is THE one place that maps a peer
//! certificate to a [`PeerIdentity`]; servers call [`peer_identity`] on a
//! request and never parse certificates themselves.
//!
//! [`CertDir`] reads the PEM files written by `outflow certs dev` (see
//! [`generate_dev`]) and builds tonic/rustls TLS configurations from them.
//! rustls always runs with the `ring` provider.

mod cli;
mod dev;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use x509_parser::extensions::GeneralName;

pub use cli::{run, CertsArgs, CertsCommand, DevArgs};
pub use dev::{generate_dev, CertSpec, DevCa, DevFiles, DevOptions, IssuedCert};

/// Prefix of the SAN URI that carries an Outflow identity.
pub const URN_PREFIX: &str = "urn:outflow:";

/// What a certificate holder may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// An endpoint agent: may only send telemetry for its own host id.
    Agent,
    /// An importer: may send telemetry on behalf of any host.
    Importer,
    /// A collector process.
    Collector,
    /// An aggregator (Raft) node.
    Aggregator,
    /// A server certificate shared by collectors and aggregators (dev setups).
    Server,
    /// An operator using `outflow ctl` / the admin API.
    Admin,
}

impl Role {
    /// Every role, in a fixed order.
    pub const ALL: [Role; 6] = [
        Role::Agent,
        Role::Importer,
        Role::Collector,
        Role::Aggregator,
        Role::Server,
        Role::Admin,
    ];

    /// The role's name as written in the SAN URI.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Importer => "importer",
            Role::Collector => "collector",
            Role::Aggregator => "aggregator",
            Role::Server => "server",
            Role::Admin => "admin",
        }
    }

    /// Whether certificates of this role are also TLS server certificates.
    pub fn is_server(self) -> bool {
        matches!(self, Role::Server | Role::Collector | Role::Aggregator)
    }

    /// Whether this role may act as a cluster member (collector or aggregator
    /// talking to an aggregator).
    pub fn is_cluster_member(self) -> bool {
        self.is_server()
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = PkiError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| PkiError::UnknownRole(s.to_string()))
    }
}

/// Who is on the other end of a mutually authenticated connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerIdentity {
    /// Identity name: the host id for agents, the node/collector id or
    /// `server` for servers, the operator's name for admins.
    pub name: String,
    pub role: Role,
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.role, self.name)
    }
}

/// Everything that can go wrong with certificates and keys.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot read {path}: {source} (run `outflow certs dev --out DIR` to create dev certificates)")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("the peer presented no client certificate")]
    NoCertificate,
    #[error("certificate is not valid X.509 DER: {0}")]
    BadCertificate(String),
    #[error("certificate carries no `urn:outflow:<role>:<name>` SAN URI")]
    MissingIdentity,
    #[error("certificate carries more than one Outflow identity URI")]
    AmbiguousIdentity,
    #[error("malformed identity URI `{0}` (expected urn:outflow:<role>:<name>)")]
    BadIdentityUri(String),
    #[error("unknown role `{0}` (expected one of agent, importer, collector, aggregator, server, admin)")]
    UnknownRole(String),
    #[error("certificate subject CN `{cn}` does not match its identity name `{name}`")]
    NameMismatch { cn: String, name: String },
    #[error("certificate has expired (or is not yet valid)")]
    Expired,
    #[error("certificate was not issued by the trusted Outflow CA")]
    UnknownIssuer,
    #[error("certificate rejected: {0}")]
    Rejected(String),
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration failed: {0}")]
    Tls(String),
}

/// Installs rustls' `ring` crypto provider as the process default (needed by
/// tonic's TLS server and by [`CertDir::rustls_server_config`]). Safe to call
/// any number of times.
pub fn install_ring_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Maps a peer certificate (DER) to its identity. THE one place that does.
///
/// Requires exactly one SAN URI `urn:outflow:<role>:<name>` with a known role
/// and a non-empty name; when the subject has a CN it must equal the name.
/// Does not check the signature or validity period: the TLS handshake did
/// that (see [`CertDir::verify_client`] to do it outside a handshake).
pub fn identity_from_der(der: &[u8]) -> Result<PeerIdentity, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| PkiError::BadCertificate(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| PkiError::BadCertificate(e.to_string()))?;
    let mut found: Option<PeerIdentity> = None;
    if let Some(san) = san {
        for gn in &san.value.general_names {
            if let GeneralName::URI(uri) = gn {
                let Some(rest) = uri.strip_prefix(URN_PREFIX) else {
                    continue;
                };
                let (role, name) = rest
                    .split_once(':')
                    .ok_or_else(|| PkiError::BadIdentityUri(uri.to_string()))?;
                if name.is_empty() {
                    return Err(PkiError::BadIdentityUri(uri.to_string()));
                }
                let id = PeerIdentity {
                    name: name.to_string(),
                    role: role.parse()?,
                };
                if found.is_some() {
                    return Err(PkiError::AmbiguousIdentity);
                }
                found = Some(id);
            }
        }
    }
    let id = found.ok_or(PkiError::MissingIdentity)?;
    if let Some(cn) = cert.subject().iter_common_name().next() {
        let cn = cn
            .as_str()
            .map_err(|e| PkiError::BadCertificate(format!("subject CN: {e}")))?;
        if cn != id.name {
            return Err(PkiError::NameMismatch {
                cn: cn.to_string(),
                name: id.name,
            });
        }
    }
    Ok(id)
}

/// The identity of the peer of a tonic request served over mutual TLS.
/// `UNAUTHENTICATED` when there is no verified client certificate or it
/// carries no valid Outflow identity.
pub fn peer_identity<T>(req: &tonic::Request<T>) -> Result<PeerIdentity, tonic::Status> {
    let certs = req.peer_certs().ok_or_else(|| {
        tonic::Status::unauthenticated("a client certificate issued by the Outflow CA is required")
    })?;
    let leaf = certs.first().ok_or_else(|| {
        tonic::Status::unauthenticated("a client certificate issued by the Outflow CA is required")
    })?;
    identity_from_der(leaf.as_ref())
        .map_err(|e| tonic::Status::unauthenticated(format!("client certificate refused: {e}")))
}

/// A directory of PEM files as written by `outflow certs dev`:
/// `ca.pem`, `<stem>.pem` and `<stem>-key.pem`.
#[derive(Debug, Clone)]
pub struct CertDir {
    dir: PathBuf,
}

impl CertDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        CertDir { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn read(&self, file: &str) -> Result<String, PkiError> {
        let path = self.dir.join(file);
        std::fs::read_to_string(&path).map_err(|source| PkiError::Read { path, source })
    }

    /// The CA certificate (PEM).
    pub fn ca_pem(&self) -> Result<String, PkiError> {
        self.read("ca.pem")
    }

    /// `<stem>.pem` (certificate, PEM).
    pub fn cert_pem(&self, stem: &str) -> Result<String, PkiError> {
        self.read(&format!("{stem}.pem"))
    }

    /// `<stem>-key.pem` (private key, PEM).
    pub fn key_pem(&self, stem: &str) -> Result<String, PkiError> {
        self.read(&format!("{stem}-key.pem"))
    }

    /// The CA certificate as DER.
    pub fn ca_der(&self) -> Result<CertificateDer<'static>, PkiError> {
        let pem = self.ca_pem()?;
        first_cert(&pem, &self.dir.join("ca.pem"))
    }

    /// The identity in `<stem>.pem`.
    pub fn identity(&self, stem: &str) -> Result<PeerIdentity, PkiError> {
        let pem = self.cert_pem(stem)?;
        let der = first_cert(&pem, &self.dir.join(format!("{stem}.pem")))?;
        identity_from_der(der.as_ref())
    }

    /// tonic server TLS: `server.pem` as identity, client certificates from
    /// the CA required (mutual TLS).
    pub fn server_tls(&self) -> Result<tonic::transport::ServerTlsConfig, PkiError> {
        self.server_tls_with("server")
    }

    /// Like [`server_tls`](Self::server_tls) with another certificate stem.
    pub fn server_tls_with(
        &self,
        stem: &str,
    ) -> Result<tonic::transport::ServerTlsConfig, PkiError> {
        install_ring_provider();
        let identity =
            tonic::transport::Identity::from_pem(self.cert_pem(stem)?, self.key_pem(stem)?);
        Ok(tonic::transport::ServerTlsConfig::new()
            .identity(identity)
            .client_ca_root(tonic::transport::Certificate::from_pem(self.ca_pem()?)))
    }

    /// tonic client TLS presenting `<stem>.pem` (e.g. `agent-ws-1`, `server`,
    /// `importer`, `admin`) and trusting only the CA. The server name checked
    /// is `localhost`; use [`client_tls_for`](Self::client_tls_for) otherwise.
    pub fn client_tls(&self, stem: &str) -> Result<tonic::transport::ClientTlsConfig, PkiError> {
        self.client_tls_for(stem, "localhost")
    }

    /// tonic client TLS presenting `<stem>.pem`, checking the server
    /// certificate for `domain`.
    pub fn client_tls_for(
        &self,
        stem: &str,
        domain: &str,
    ) -> Result<tonic::transport::ClientTlsConfig, PkiError> {
        install_ring_provider();
        let identity =
            tonic::transport::Identity::from_pem(self.cert_pem(stem)?, self.key_pem(stem)?);
        Ok(tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(self.ca_pem()?))
            .identity(identity)
            .domain_name(domain))
    }

    /// A rustls server configuration for HTTP APIs (axum): `server.pem` as
    /// identity, a client certificate from the CA optional (handlers decide,
    /// e.g. require the admin role off loopback). ALPN `http/1.1`.
    pub fn rustls_server_config(&self) -> Result<Arc<rustls::ServerConfig>, PkiError> {
        install_ring_provider();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = Arc::new(self.root_store()?);
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
                .allow_unauthenticated()
                .build()
                .map_err(|e| PkiError::Tls(e.to_string()))?;
        let (chain, key) = self.chain_and_key("server")?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| PkiError::Tls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| PkiError::Tls(e.to_string()))?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }

    /// A rustls client configuration trusting the CA and presenting
    /// `<stem>.pem` (for HTTP clients of the admin API).
    pub fn rustls_client_config(&self, stem: &str) -> Result<Arc<rustls::ClientConfig>, PkiError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (chain, key) = self.chain_and_key(stem)?;
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| PkiError::Tls(e.to_string()))?
            .with_root_certificates(self.root_store()?)
            .with_client_auth_cert(chain, key)
            .map_err(|e| PkiError::Tls(e.to_string()))?;
        Ok(Arc::new(cfg))
    }

    fn root_store(&self) -> Result<rustls::RootCertStore, PkiError> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.ca_der()?)
            .map_err(|e| PkiError::Tls(format!("ca.pem: {e}")))?;
        Ok(roots)
    }

    /// The certificate chain and private key of `<stem>` as rustls types.
    pub fn chain_and_key(
        &self,
        stem: &str,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), PkiError> {
        let cert_path = self.dir.join(format!("{stem}.pem"));
        let key_path = self.dir.join(format!("{stem}-key.pem"));
        let chain: Vec<CertificateDer<'static>> =
            rustls_pemfile::certs(&mut self.cert_pem(stem)?.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| PkiError::Pem {
                    path: cert_path.clone(),
                    reason: e.to_string(),
                })?;
        if chain.is_empty() {
            return Err(PkiError::Pem {
                path: cert_path,
                reason: "no CERTIFICATE block".into(),
            });
        }
        let key = rustls_pemfile::private_key(&mut self.key_pem(stem)?.as_bytes())
            .map_err(|e| PkiError::Pem {
                path: key_path.clone(),
                reason: e.to_string(),
            })?
            .ok_or(PkiError::Pem {
                path: key_path,
                reason: "no PRIVATE KEY block".into(),
            })?;
        Ok((chain, key))
    }

    /// Verifies a client certificate chain against this directory's CA as a
    /// TLS server would, at `now`, then maps it to an identity. Tells an
    /// expired certificate ([`PkiError::Expired`]) from one of another CA
    /// ([`PkiError::UnknownIssuer`]).
    pub fn verify_client(
        &self,
        chain: &[CertificateDer<'static>],
        now: std::time::SystemTime,
    ) -> Result<PeerIdentity, PkiError> {
        let (leaf, rest) = chain.split_first().ok_or(PkiError::NoCertificate)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(self.root_store()?),
            provider,
        )
        .build()
        .map_err(|e| PkiError::Tls(e.to_string()))?;
        let now = UnixTime::since_unix_epoch(
            now.duration_since(std::time::UNIX_EPOCH)
                .map_err(|e| PkiError::Tls(e.to_string()))?,
        );
        verifier
            .verify_client_cert(leaf, rest, now)
            .map_err(|e| match e {
                rustls::Error::InvalidCertificate(rustls::CertificateError::Expired)
                | rustls::Error::InvalidCertificate(rustls::CertificateError::ExpiredContext {
                    ..
                })
                | rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidYet)
                | rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidYetContext { .. },
                ) => PkiError::Expired,
                rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
                | rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature) => {
                    PkiError::UnknownIssuer
                }
                other => PkiError::Rejected(other.to_string()),
            })?;
        identity_from_der(leaf.as_ref())
    }
}

fn first_cert(pem: &str, path: &Path) -> Result<CertificateDer<'static>, PkiError> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .ok_or_else(|| PkiError::Pem {
            path: path.to_path_buf(),
            reason: "no CERTIFICATE block".into(),
        })?
        .map_err(|e| PkiError::Pem {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

/// Parses every certificate of a PEM string (for tests and tools).
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| PkiError::Pem {
            path: PathBuf::from("<pem>"),
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn dev_dir(hosts: &[&str]) -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        generate_dev(
            tmp.path(),
            &DevOptions {
                hosts: hosts.iter().map(|h| h.to_string()).collect(),
                ..DevOptions::default()
            },
        )
        .unwrap();
        tmp
    }

    #[test]
    fn dev_ca_issues_certificates_with_identities() {
        let tmp = dev_dir(&["ws-1", "ws-2"]);
        let dir = CertDir::new(tmp.path());
        for f in [
            "ca.pem",
            "ca-key.pem",
            "server.pem",
            "server-key.pem",
            "admin.pem",
            "admin-key.pem",
            "importer.pem",
            "importer-key.pem",
            "agent-ws-1.pem",
            "agent-ws-1-key.pem",
            "agent-ws-2.pem",
        ] {
            assert!(tmp.path().join(f).exists(), "{f} missing");
        }
        let id = dir.identity("agent-ws-1").unwrap();
        assert_eq!(
            id,
            PeerIdentity {
                name: "ws-1".into(),
                role: Role::Agent
            }
        );
        assert_eq!(dir.identity("server").unwrap().role, Role::Server);
        assert_eq!(dir.identity("admin").unwrap().role, Role::Admin);
        assert_eq!(dir.identity("importer").unwrap().role, Role::Importer);
        // Each certificate verifies against the CA, as a TLS server would.
        let chain = certs_from_pem(&dir.cert_pem("agent-ws-2").unwrap()).unwrap();
        let v = dir.verify_client(&chain, SystemTime::now()).unwrap();
        assert_eq!(v.name, "ws-2");
        // TLS configurations build.
        dir.server_tls().unwrap();
        dir.client_tls("agent-ws-1").unwrap();
        dir.rustls_server_config().unwrap();
        dir.rustls_client_config("admin").unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn private_keys_are_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = dev_dir(&["ws-1"]);
        for f in ["ca-key.pem", "server-key.pem", "agent-ws-1-key.pem"] {
            let mode = std::fs::metadata(tmp.path().join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "{f} is readable by others: {mode:o}");
        }
    }

    #[test]
    fn foreign_ca_and_expired_certificates_are_told_apart() {
        let tmp = dev_dir(&[]);
        let dir = CertDir::new(tmp.path());
        let ca = DevCa::load(tmp.path()).unwrap();
        let foreign = DevCa::new("Evil CA").unwrap();

        let foreign_cert = foreign
            .issue(&CertSpec::new("ws-1", Role::Agent, 30))
            .unwrap();
        let chain = certs_from_pem(&foreign_cert.cert_pem).unwrap();
        let err = dir.verify_client(&chain, SystemTime::now()).unwrap_err();
        assert!(matches!(err, PkiError::UnknownIssuer), "{err}");
        // Its identity parses fine: only the chain check refuses it.
        assert_eq!(identity_from_der(&foreign_cert.der).unwrap().name, "ws-1");

        let expired = ca.issue(&CertSpec::expired("ws-1", Role::Agent)).unwrap();
        let chain = certs_from_pem(&expired.cert_pem).unwrap();
        let err = dir.verify_client(&chain, SystemTime::now()).unwrap_err();
        assert!(matches!(err, PkiError::Expired), "{err}");

        let good = ca.issue(&CertSpec::new("ws-1", Role::Agent, 30)).unwrap();
        let chain = certs_from_pem(&good.cert_pem).unwrap();
        assert!(dir.verify_client(&chain, SystemTime::now()).is_ok());
        assert!(matches!(
            dir.verify_client(&[], SystemTime::now()),
            Err(PkiError::NoCertificate)
        ));
    }

    #[test]
    fn existing_ca_is_reused_for_new_hosts() {
        let tmp = dev_dir(&["ws-1"]);
        let ca_before = std::fs::read_to_string(tmp.path().join("ca.pem")).unwrap();
        let files = generate_dev(
            tmp.path(),
            &DevOptions {
                hosts: vec!["ws-9".into()],
                ..DevOptions::default()
            },
        )
        .unwrap();
        assert!(!files.new_ca);
        let ca_after = std::fs::read_to_string(tmp.path().join("ca.pem")).unwrap();
        assert_eq!(ca_before, ca_after);
        let dir = CertDir::new(tmp.path());
        let chain = certs_from_pem(&dir.cert_pem("agent-ws-9").unwrap()).unwrap();
        assert_eq!(
            dir.verify_client(&chain, SystemTime::now()).unwrap().name,
            "ws-9"
        );
    }

    #[test]
    fn certificates_without_a_valid_identity_are_refused() {
        // A plain certificate without our URI.
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["ws-1".to_string()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert!(matches!(
            identity_from_der(cert.der()),
            Err(PkiError::MissingIdentity)
        ));
        // CN different from the URI name.
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ws-2");
        params.subject_alt_names.push(rcgen::SanType::URI(
            "urn:outflow:agent:ws-1".try_into().unwrap(),
        ));
        let cert = params.self_signed(&key).unwrap();
        assert!(matches!(
            identity_from_der(cert.der()),
            Err(PkiError::NameMismatch { .. })
        ));
        // Unknown role.
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names.push(rcgen::SanType::URI(
            "urn:outflow:root:ws-1".try_into().unwrap(),
        ));
        let cert = params.self_signed(&key).unwrap();
        assert!(matches!(
            identity_from_der(cert.der()),
            Err(PkiError::UnknownRole(_))
        ));
        assert!(identity_from_der(b"not a certificate").is_err());
        // Bad host ids never become file names.
        let tmp = tempfile::tempdir().unwrap();
        let err = generate_dev(
            tmp.path(),
            &DevOptions {
                hosts: vec!["../etc".into()],
                ..DevOptions::default()
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("../etc"), "{err}");
    }

    #[test]
    fn roles_round_trip() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>().unwrap(), r);
        }
        assert!("root".parse::<Role>().is_err());
    }
}
