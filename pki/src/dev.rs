//! A development CA and the certificates of a local cluster (rcgen, ECDSA
//! P-256). Keys are generated at run time; nothing secret is in the repo.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::{PkiError, Role, URN_PREFIX};

/// What `outflow certs dev` makes.
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// One agent certificate (`agent-<host>.pem`) per host id.
    pub hosts: Vec<String>,
    /// Extra DNS names / IP addresses for `server.pem` (besides localhost,
    /// 127.0.0.1 and ::1).
    pub server_names: Vec<String>,
    /// Validity of the issued certificates, in days.
    pub validity_days: u32,
    /// Keep an existing `ca.pem`/`ca-key.pem` in the directory (so more
    /// certificates can be added to a running setup) instead of a new CA.
    pub reuse_ca: bool,
}

impl Default for DevOptions {
    fn default() -> Self {
        DevOptions {
            hosts: Vec::new(),
            server_names: Vec::new(),
            validity_days: 365,
            reuse_ca: true,
        }
    }
}

/// The files written by [`generate_dev`].
#[derive(Debug, Clone, Default)]
pub struct DevFiles {
    pub written: Vec<PathBuf>,
    /// Whether the CA was created now (false: an existing one was reused).
    pub new_ca: bool,
}

/// What to put in one certificate.
#[derive(Debug, Clone)]
pub struct CertSpec {
    /// Identity name (subject CN and the name in the SAN URI).
    pub name: String,
    pub role: Role,
    /// Extra DNS names / IPs (server certificates).
    pub dns_names: Vec<String>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl CertSpec {
    /// Valid from one hour ago for `days` days.
    pub fn new(name: impl Into<String>, role: Role, days: u32) -> Self {
        let now = OffsetDateTime::now_utc();
        CertSpec {
            name: name.into(),
            role,
            dns_names: Vec::new(),
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(i64::from(days)),
        }
    }

    /// A certificate whose validity ended yesterday (for negative tests).
    pub fn expired(name: impl Into<String>, role: Role) -> Self {
        let now = OffsetDateTime::now_utc();
        CertSpec {
            name: name.into(),
            role,
            dns_names: Vec::new(),
            not_before: now - Duration::days(30),
            not_after: now - Duration::days(1),
        }
    }
}

/// A certificate and its key, both PEM.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

impl IssuedCert {
    /// Writes `<stem>.pem` and `<stem>-key.pem` (the key 0600 on Unix).
    pub fn write(&self, dir: &Path, stem: &str) -> Result<Vec<PathBuf>, PkiError> {
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}-key.pem"));
        write_file(&cert, &self.cert_pem, false)?;
        write_file(&key, &self.key_pem, true)?;
        Ok(vec![cert, key])
    }
}

/// A certificate authority able to issue Outflow certificates.
pub struct DevCa {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl DevCa {
    /// A fresh self-signed CA named `cn`, valid ten years.
    pub fn new(cn: &str) -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        dn.push(DnType::OrganizationName, "Outflow dev");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(3650);
        let cert = params.self_signed(&key)?;
        Ok(DevCa {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads `ca.pem` and `ca-key.pem` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, PkiError> {
        let read = |f: &str| {
            let path = dir.join(f);
            std::fs::read_to_string(&path).map_err(|source| PkiError::Read { path, source })
        };
        let cert_pem = read("ca.pem")?;
        let key_pem = read("ca-key.pem")?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| PkiError::Pem {
            path: dir.join("ca-key.pem"),
            reason: e.to_string(),
        })?;
        let der = crate::certs_from_pem(&cert_pem)?
            .into_iter()
            .next()
            .ok_or_else(|| PkiError::Pem {
                path: dir.join("ca.pem"),
                reason: "no CERTIFICATE block".into(),
            })?;
        let issuer = Issuer::from_ca_cert_der(&der, key).map_err(|e| PkiError::Pem {
            path: dir.join("ca.pem"),
            reason: e.to_string(),
        })?;
        Ok(DevCa { cert_pem, issuer })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Writes `ca.pem` and `ca-key.pem`.
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>, PkiError> {
        let cert = dir.join("ca.pem");
        let key = dir.join("ca-key.pem");
        write_file(&cert, &self.cert_pem, false)?;
        write_file(&key, &self.key_pem(), true)?;
        Ok(vec![cert, key])
    }

    /// Issues a certificate for `spec`: CN = name, SAN URI
    /// `urn:outflow:<role>:<name>`, EKU serverAuth+clientAuth for server
    /// roles (with DNS SANs localhost, 127.0.0.1, ::1 and `spec.dns_names`),
    /// clientAuth otherwise.
    pub fn issue(&self, spec: &CertSpec) -> Result<IssuedCert, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, spec.name.as_str());
        dn.push(DnType::OrganizationName, "Outflow dev");
        params.distinguished_name = dn;
        let uri = format!("{URN_PREFIX}{}:{}", spec.role.as_str(), spec.name);
        params
            .subject_alt_names
            .push(SanType::URI(uri.as_str().try_into()?));
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        if spec.role.is_server() {
            let mut names = vec![
                "localhost".to_string(),
                "127.0.0.1".to_string(),
                "::1".to_string(),
            ];
            names.extend(spec.dns_names.iter().cloned());
            for n in names {
                let san = match n.parse::<IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName(n.as_str().try_into()?),
                };
                if !params.subject_alt_names.contains(&san) {
                    params.subject_alt_names.push(san);
                }
            }
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
        } else {
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
        params.not_before = spec.not_before;
        params.not_after = spec.not_after;
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        })
    }
}

/// Writes a dev CA (or reuses the one in `dir`) and the certificates of a
/// local cluster: `server`, `admin`, `importer`, and `agent-<host>` per host.
pub fn generate_dev(dir: &Path, opts: &DevOptions) -> Result<DevFiles, PkiError> {
    std::fs::create_dir_all(dir).map_err(|source| PkiError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files = DevFiles::default();
    let have_ca = dir.join("ca.pem").exists() && dir.join("ca-key.pem").exists();
    let ca = if opts.reuse_ca && have_ca {
        DevCa::load(dir)?
    } else {
        let ca = DevCa::new("Outflow dev CA")?;
        files.written.extend(ca.write(dir)?);
        files.new_ca = true;
        ca
    };
    let days = opts.validity_days;
    let mut server = CertSpec::new("server", Role::Server, days);
    server.dns_names = opts.server_names.clone();
    files
        .written
        .extend(ca.issue(&server)?.write(dir, "server")?);
    files.written.extend(
        ca.issue(&CertSpec::new("admin", Role::Admin, days))?
            .write(dir, "admin")?,
    );
    files.written.extend(
        ca.issue(&CertSpec::new("importer", Role::Importer, days))?
            .write(dir, "importer")?,
    );
    for host in &opts.hosts {
        validate_host_id(host)?;
        files.written.extend(
            ca.issue(&CertSpec::new(host.as_str(), Role::Agent, days))?
                .write(dir, &format!("agent-{host}"))?,
        );
    }
    Ok(files)
}

/// Host ids become file names and URI parts: keep them to a safe alphabet.
fn validate_host_id(host: &str) -> Result<(), PkiError> {
    let ok = !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !host.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(PkiError::Rejected(format!(
            "host id `{host}` must be 1-253 characters of A-Z a-z 0-9 - _ . (not starting with '.')"
        )))
    }
}

fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), PkiError> {
    let err = |source| PkiError::Write {
        path: path.to_path_buf(),
        source,
    };
    #[cfg(unix)]
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        if private {
            opts.mode(0o600);
        }
        let mut f = opts.open(path).map_err(err)?;
        f.write_all(contents.as_bytes()).map_err(err)?;
        Ok(())
    }
    #[cfg(not(unix))]
    {
        let _ = private;
        std::fs::write(path, contents).map_err(err)
    }
}
