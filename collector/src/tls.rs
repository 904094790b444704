//! Mutual TLS for ingest, with the handshake done here rather than inside
//! tonic, so refused handshakes are counted by reason
//! (`outflow_collector_rejects_total{reason="tls_…"}`) instead of vanishing
//! in the transport. Certificates from another CA, expired ones and missing
//! ones still never reach the service.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use outflow_pki::CertDir;
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, Error as TlsError};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;

use crate::metrics::{Metrics, RejectReason};

/// Longest a client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The ingest server's rustls configuration: `<stem>.pem` as identity, a
/// client certificate from the CA required, ALPN `h2` (gRPC).
pub fn ingest_server_config(
    certs: &CertDir,
    stem: &str,
) -> Result<Arc<rustls::ServerConfig>, outflow_pki::PkiError> {
    outflow_pki::install_ring_provider();
    let tls = |e: String| outflow_pki::PkiError::Tls(e);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certs.ca_der()?).map_err(|e| tls(e.to_string()))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| tls(e.to_string()))?;
    let (chain, key) = certs.chain_and_key(stem)?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| tls(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// Why a handshake failed, as a reject reason.
pub fn handshake_reason(e: &io::Error) -> RejectReason {
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<TlsError>()) else {
        return RejectReason::TlsHandshake;
    };
    match tls {
        TlsError::NoCertificatesPresented => RejectReason::TlsNoCertificate,
        TlsError::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                RejectReason::TlsUnknownCa
            }
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => RejectReason::TlsExpired,
            _ => RejectReason::TlsBadCertificate,
        },
        _ => RejectReason::TlsHandshake,
    }
}

/// Accepts TCP connections and completes their TLS handshakes concurrently;
/// established streams come out of the returned stream (tonic's incoming).
/// Stops when the stream is dropped (server shut down).
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    metrics: Arc<Metrics>,
) -> ReceiverStream<io::Result<TlsStream<TcpStream>>> {
    let acceptor = TlsAcceptor::from(config);
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: back off.
                        tracing::warn!(error = %e, "cannot accept an ingest connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = tx.closed() => return,
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let metrics = metrics.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => {
                        let reason = handshake_reason(&e);
                        metrics.reject(reason);
                        tracing::debug!(%peer, reason = reason.as_str(), error = %e, "TLS handshake refused");
                    }
                    Err(_) => {
                        metrics.reject(RejectReason::TlsHandshake);
                        tracing::debug!(%peer, "TLS handshake timed out");
                    }
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
