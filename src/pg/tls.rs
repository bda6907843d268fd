//! rustls client configuration with libpq's `sslmode` semantics, shared by
//! the replication connection and by tokio-postgres (`MakeRustlsConnect`).
//!
//! The ring provider is named explicitly instead of relying on a process
//! default, so nothing depends on which rustls features other crates enable.

use std::future::Future;
use std::io::{self, BufReader};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::{Error as PemError, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::config::{CertCheck, TlsSettings, SYSTEM_ROOT_CERT};
use super::error::PgError;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the rustls client configuration for `settings`.
///
/// Call this once per connection attempt (it reads the certificate files),
/// or once and share the `Arc` for many.
pub fn client_config(settings: &TlsSettings) -> Result<Arc<ClientConfig>, PgError> {
    let provider = provider();
    let algs = provider.signature_verification_algorithms;
    let check = settings.cert_check();
    let verifier: Arc<dyn ServerCertVerifier> = match check {
        CertCheck::None => Arc::new(AcceptAnyCert { algs }),
        CertCheck::Chain | CertCheck::ChainAndName => {
            let path = settings.root_cert.as_deref().ok_or_else(|| {
                PgError::Tls(format!("sslmode={} needs a root certificate (sslrootcert)", settings.mode))
            })?;
            let roots = load_roots(path)?;
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| PgError::Tls(format!("cannot use root certificates from {}: {e}", path.display())))?;
            if check == CertCheck::Chain {
                Arc::new(ChainOnly { inner: webpki })
            } else {
                webpki
            }
        }
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PgError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match (&settings.client_cert, &settings.client_key) {
        (Some(cert), Some(key)) => {
            let chain = load_certs(cert)?;
            let key = load_key(key)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| PgError::Tls(format!("bad client certificate/key: {e}")))?
        }
        (Some(cert), None) => {
            return Err(PgError::Tls(format!("client certificate {} given without sslkey", cert.display())))
        }
        _ => builder.with_no_client_auth(),
    };
    // Like libpq 17: required for direct TLS, ignored by older servers.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(Arc::new(config))
}

/// The name rustls checks the certificate against (and sends as SNI when
/// it is a DNS name).
pub fn server_name(host: &str) -> Result<ServerName<'static>, PgError> {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(h.to_owned()).map_err(|_| PgError::Tls(format!("\"{host}\" is not a valid TLS server name")))
}

fn open(path: &Path, what: &str) -> Result<BufReader<std::fs::File>, PgError> {
    std::fs::File::open(path)
        .map(BufReader::new)
        .map_err(|e| PgError::Tls(format!("could not open {what} \"{}\": {e}", path.display())))
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PgError> {
    let mut r = open(path, "certificate file")?;
    let certs: Vec<_> = CertificateDer::pem_reader_iter(&mut r)
        .collect::<Result<_, _>>()
        .map_err(|e| PgError::Tls(format!("could not read certificates from \"{}\": {e}", path.display())))?;
    if certs.is_empty() {
        return Err(PgError::Tls(format!("no PEM certificates found in \"{}\"", path.display())));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, PgError> {
    let mut r = open(path, "private key file")?;
    PrivateKeyDer::from_pem_reader(&mut r).map_err(|e| match e {
        PemError::NoItemsFound => PgError::Tls(format!("no private key found in \"{}\"", path.display())),
        e => PgError::Tls(format!("could not read private key \"{}\": {e}", path.display())),
    })
}

/// Files tried for `sslrootcert=system` (we carry no trust store of our own).
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

fn load_roots(path: &Path) -> Result<RootCertStore, PgError> {
    let path = if path == Path::new(SYSTEM_ROOT_CERT) {
        let from_env = std::env::var_os("SSL_CERT_FILE").map(std::path::PathBuf::from);
        from_env
            .into_iter()
            .chain(SYSTEM_BUNDLES.iter().map(std::path::PathBuf::from))
            .find(|p| p.is_file())
            .ok_or_else(|| PgError::Tls("sslrootcert=system: no system CA bundle found".into()))?
    } else {
        if !path.exists() {
            return Err(PgError::Tls(format!(
                "root certificate file \"{}\" does not exist; either provide the file or change sslmode to disable server certificate verification",
                path.display()
            )));
        }
        path.to_path_buf()
    };
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(load_certs(&path)?);
    if added == 0 {
        return Err(PgError::Tls(format!("no usable root certificates in \"{}\"", path.display())));
    }
    Ok(roots)
}

/// sslmode=require (no root cert): any certificate, but the handshake
/// signatures are still checked so the session keys belong to the
/// certificate that was presented (which channel binding relies on).
#[derive(Debug)]
struct AcceptAnyCert {
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// verify-ca: the full webpki check, minus the host name.
///
/// webpki checks the chain before the name, so a name error proves the
/// chain was fine. rustls reports it as `NotValidForName` or, since 0.23.x,
/// `NotValidForNameContext`; both are accepted here.
#[derive(Debug)]
struct ChainOnly {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Turns a failed handshake into a message that says what to change.
pub(crate) fn handshake_error(e: io::Error, target: &str) -> PgError {
    let detail = match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(c)) => format!("server certificate rejected: {c:?}"),
        Some(other) => other.to_string(),
        None => e.to_string(),
    };
    PgError::Tls(format!("TLS handshake with {target} failed: {detail}"))
}

// ---------------------------------------------------------------------------
// Channel binding (tls-server-end-point, RFC 5929).

/// The certificate hash SCRAM-SHA-256-PLUS binds to: the hash of the
/// server certificate with the certificate's own signature hash, where MD5
/// and SHA-1 are upgraded to SHA-256. `None` when the algorithm has no such
/// hash (Ed25519, RSA-PSS) or we lack it (SHA-512): then we simply do not
/// offer channel binding.
pub fn tls_server_end_point(cert_der: &[u8]) -> Option<Vec<u8>> {
    const RSA_PREFIX: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA_PREFIX: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04];
    let oid = signature_algorithm_oid(cert_der)?;
    let sha384 = if let Some(last) = oid.strip_prefix(RSA_PREFIX) {
        match last {
            [0x04] | [0x05] | [0x0b] => false,
            [0x0c] => true,
            _ => return None,
        }
    } else if let Some(rest) = oid.strip_prefix(ECDSA_PREFIX) {
        match rest {
            [0x01] | [0x03, 0x02] => false,
            [0x03, 0x03] => true,
            _ => return None,
        }
    } else {
        return None;
    };
    let suite = if sha384 {
        rustls::crypto::ring::cipher_suite::TLS13_AES_256_GCM_SHA384
    } else {
        rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256
    };
    let hash = suite.tls13()?.common.hash_provider.hash(cert_der);
    Some(hash.as_ref().to_vec())
}

/// One DER TLV: (tag, contents, rest). Only definite lengths (DER).
fn der_tlv(buf: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = buf.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |a, &b| (a << 8) | b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm SEQUENCE
/// { algorithm OID, ... }, signature }.
fn signature_algorithm_oid(cert: &[u8]) -> Option<&[u8]> {
    let (0x30, body, _) = der_tlv(cert)? else {
        return None;
    };
    let (_, _tbs, rest) = der_tlv(body)?;
    let (0x30, alg, _) = der_tlv(rest)? else {
        return None;
    };
    let (0x06, oid, _) = der_tlv(alg)? else {
        return None;
    };
    Some(oid)
}

// ---------------------------------------------------------------------------
// tokio-postgres integration.

/// `MakeTlsConnect` for tokio-postgres, with the same verification rules as
/// the replication connection. tokio-postgres must run with its own
/// `sslmode=require` for the verifying modes; the verifier does the rest.
#[derive(Clone)]
pub struct MakeRustlsConnect {
    config: Arc<ClientConfig>,
}

impl MakeRustlsConnect {
    pub fn new(settings: &TlsSettings) -> Result<MakeRustlsConnect, PgError> {
        Ok(MakeRustlsConnect { config: client_config(settings)? })
    }

    pub fn from_config(config: Arc<ClientConfig>) -> MakeRustlsConnect {
        MakeRustlsConnect { config }
    }
}

impl<S> tokio_postgres::tls::MakeTlsConnect<S> for MakeRustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, io::Error> {
        // tokio-postgres asks for a connector even for Unix sockets (domain
        // ""), where it never uses it; only fail once a handshake is due.
        Ok(RustlsConnect { config: self.config.clone(), server_name: server_name(domain).map_err(|e| e.to_string()) })
    }
}

pub struct RustlsConnect {
    config: Arc<ClientConfig>,
    server_name: Result<ServerName<'static>, String>,
}

impl<S> tokio_postgres::tls::TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let name = self.server_name.map_err(io::Error::other)?;
            let s = tokio_rustls::TlsConnector::from(self.config).connect(name, stream).await?;
            Ok(RustlsStream(s))
        })
    }
}

/// A TLS stream that can report channel-binding data to tokio-postgres.
pub struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S> RustlsStream<S> {
    pub fn get_ref(&self) -> &tokio_rustls::client::TlsStream<S> {
        &self.0
    }
}

impl<S> tokio_postgres::tls::TlsStream for RustlsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn channel_binding(&self) -> tokio_postgres::tls::ChannelBinding {
        let (_, conn) = self.0.get_ref();
        match conn.peer_certificates().and_then(|c| c.first()).and_then(|c| tls_server_end_point(c)) {
            Some(h) => tokio_postgres::tls::ChannelBinding::tls_server_end_point(h),
            None => tokio_postgres::tls::ChannelBinding::none(),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::config::SslMode;

    #[test]
    fn der_walk_rejects_garbage() {
        assert_eq!(signature_algorithm_oid(&[]), None);
        assert_eq!(signature_algorithm_oid(&[0x30, 0x85, 1, 1, 1, 1, 1]), None);
        assert_eq!(signature_algorithm_oid(&[0x30, 0x05, 0x30, 0x00]), None);
        assert_eq!(tls_server_end_point(&[0x30, 0x00]), None);
    }

    #[test]
    fn der_walk_finds_oid() {
        // SEQ { SEQ{} , SEQ { OID sha256WithRSA, NULL }, BITSTRING }
        let oid = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b];
        let mut alg = vec![0x06, oid.len() as u8];
        alg.extend_from_slice(&oid);
        alg.extend_from_slice(&[0x05, 0x00]);
        let mut body = vec![0x30, 0x00, 0x30, alg.len() as u8];
        body.extend_from_slice(&alg);
        body.extend_from_slice(&[0x03, 0x01, 0x00]);
        let mut cert = vec![0x30, body.len() as u8];
        cert.extend_from_slice(&body);
        assert_eq!(signature_algorithm_oid(&cert), Some(&oid[..]));
        assert_eq!(tls_server_end_point(&cert).map(|h| h.len()), Some(32));
    }

    #[test]
    fn config_for_modes() {
        let s = TlsSettings { mode: SslMode::Require, root_cert: None, client_cert: None, client_key: None };
        client_config(&s).unwrap();
        let s = TlsSettings {
            mode: SslMode::VerifyFull,
            root_cert: Some("/nonexistent/ca.pem".into()),
            client_cert: None,
            client_key: None,
        };
        let e = client_config(&s).unwrap_err();
        assert!(matches!(e, PgError::Tls(_)), "{e}");
        assert!(server_name("db.internal").is_ok());
        assert!(server_name("127.0.0.1").is_ok());
        assert!(server_name("[::1]").is_ok());
        assert!(server_name("").is_err());
    }
}
