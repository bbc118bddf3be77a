//! TLS on rustls, with ring as the only crypto provider, over any runtime's socket.
//!
//! What each `sslmode` checks, as libpq does:
//!
//! | sslmode | chain | host name |
//! |---|---|---|
//! | `require` | no (but yes, like `verify-ca`, when a root certificate file exists) | no |
//! | `verify-ca` | yes | no |
//! | `verify-full` | yes | yes |
//!
//! Every mode checks that the server holds the key of the certificate it shows (the
//! handshake's signatures), so that channel binding means something even with `require`.
//! Chain checks use webpki directly ([`ChainVerifier`]): `verify-ca` is the chain check
//! without the name check, never a name error caught and ignored.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_rustls::rustls;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, SignatureScheme};

use aiopg_core::config::SslMode;
use aiopg_core::error::elide;
use aiopg_core::{Config, Error, ErrorKind, Result};
use aiopg_rt::BoxStream;

/// What one connection attempt needs to start TLS.
#[derive(Clone)]
pub(crate) struct TlsSetup {
    pub(crate) config: Arc<ClientConfig>,
    pub(crate) server_name: ServerName<'static>,
    /// The mode in force (`require` becomes `verify-ca` when a root certificate exists).
    pub(crate) mode: SslMode,
    /// Where the trusted certificates came from, for error messages.
    roots: Option<String>,
}

impl std::fmt::Debug for TlsSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSetup")
            .field("server_name", &self.server_name)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

/// A file in `~/.postgresql`, libpq's default place for certificates, if it exists.
fn default_file(name: &str) -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    let path = Path::new(&home).join(".postgresql").join(name);
    path.is_file().then_some(path)
}

fn tls_config_error(key: &'static str, message: String) -> Error {
    Error::config(key, message)
}

fn read_file(key: &'static str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        tls_config_error(
            key,
            format!(
                "cannot read {key} file {}: {e}",
                elide(&path.display().to_string())
            ),
        )
    })
}

fn certificates(key: &'static str, file: &File) -> Result<Vec<CertificateDer<'static>>> {
    let pem = file.read(key)?;
    let path = &file.path;
    let certs: std::result::Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&pem).collect();
    let certs = certs.map_err(|e| {
        tls_config_error(
            key,
            format!(
                "{key} file {} is not PEM certificates: {e}",
                elide(&path.display().to_string())
            ),
        )
    })?;
    if certs.is_empty() {
        return Err(tls_config_error(
            key,
            format!(
                "{key} file {} holds no certificate",
                elide(&path.display().to_string())
            ),
        ));
    }
    Ok(certs)
}

/// The crypto provider: ring, chosen explicitly.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The name the certificate is checked against and sent as SNI: the host name, or the
/// address when only `hostaddr` names the host.
fn server_name(host: &str) -> Result<ServerName<'static>> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(host.to_owned()).map_err(|_| {
        Error::config(
            "host",
            format!("{:?} is not a valid host name for TLS", elide(host)),
        )
    })
}

/// A file a TLS set-up reads, with its contents when it could be read (the error, if it
/// matters, comes from reading it again while building). No `Debug`: a key file is secret.
#[derive(Clone, PartialEq, Eq)]
struct File {
    path: PathBuf,
    contents: Option<Vec<u8>>,
}

impl File {
    fn load(path: Option<PathBuf>) -> Option<File> {
        let path = path?;
        let contents = std::fs::read(&path).ok();
        Some(File { path, contents })
    }

    /// The contents, or the error of reading the file, for setting `key`.
    fn read(&self, key: &'static str) -> Result<Vec<u8>> {
        match &self.contents {
            Some(c) => Ok(c.clone()),
            None => read_file(key, &self.path),
        }
    }
}

/// Everything a TLS client configuration is built from: the settings that go into it, and
/// the files it reads (the defaults in `~/.postgresql` resolved as libpq does), read on every
/// connect as libpq reads them, so that a rotated certificate takes effect at once.
#[derive(Clone, PartialEq, Eq)]
struct Inputs {
    mode: SslMode,
    crl_set: bool,
    key_set: bool,
    sni: bool,
    /// `sslrootcert=system`: the platform's store.
    system: bool,
    root: Option<File>,
    crl: Option<File>,
    cert: Option<File>,
    /// The key file given, else the default if it exists (used only with a certificate).
    key: Option<File>,
}

impl Inputs {
    fn of(config: &Config) -> Inputs {
        let system = config.get_ssl_root_cert() == Some(Path::new("system"));
        let given_or = |given: Option<&Path>, default: &str| match given {
            Some(p) => Some(p.to_path_buf()),
            None => default_file(default),
        };
        Inputs {
            mode: config.get_ssl_mode(),
            crl_set: config.get_ssl_crl().is_some(),
            key_set: config.get_ssl_key().is_some(),
            sni: config.get_ssl_sni(),
            system,
            root: File::load(match config.get_ssl_root_cert() {
                Some(_) if system => None,
                given => given_or(given, "root.crt"),
            }),
            crl: File::load(given_or(config.get_ssl_crl(), "root.crl")),
            cert: File::load(given_or(config.get_ssl_cert(), "postgresql.crt")),
            key: File::load(given_or(config.get_ssl_key(), "postgresql.key")),
        }
    }

    /// Whether every file could be read: only then is the configuration worth keeping.
    fn complete(&self) -> bool {
        [&self.root, &self.crl, &self.cert, &self.key]
            .iter()
            .all(|f| f.as_ref().is_none_or(|f| f.contents.is_some()))
    }
}

/// A built configuration, shared by every connection made from the same inputs.
#[derive(Clone)]
struct Built {
    config: Arc<ClientConfig>,
    mode: SslMode,
    roots: Option<String>,
}

/// How many configurations are kept (the least recently used goes first).
const CACHED: usize = 16;
/// How long one built from the system's certificate store is kept: the store has no single
/// file to compare.
const SYSTEM_STORE_TTL: std::time::Duration = std::time::Duration::from_secs(300);

/// Configurations built, most recently used last. Sharing one across connections saves
/// parsing the certificates and building the trust anchors on each connect, and lets rustls
/// remember each server's key-exchange group, which spares the handshake a HelloRetryRequest
/// round trip with a server that accepts only one group (PostgreSQL's `ssl_ecdh_curve`).
static CACHE: std::sync::Mutex<Vec<(Inputs, std::time::Instant, Built)>> =
    std::sync::Mutex::new(Vec::new());

fn cached(inputs: &Inputs) -> Option<Built> {
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    let i = cache
        .iter()
        .position(|(k, at, _)| k == inputs && !(k.system && at.elapsed() > SYSTEM_STORE_TTL))?;
    let entry = cache.remove(i);
    let built = entry.2.clone();
    cache.push(entry);
    Some(built)
}

fn remember(inputs: Inputs, built: &Built) {
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    cache.retain(|(k, _, _)| *k != inputs);
    if cache.len() >= CACHED {
        cache.remove(0);
    }
    cache.push((inputs, std::time::Instant::now(), built.clone()));
}

/// The TLS settings for connecting to `host` (a TCP host name or address). The client
/// configuration is built once per set of inputs (see [`CACHE`]): the files are read on
/// every call, and one whose contents changed makes a new configuration; an error is never
/// kept.
pub(crate) fn setup(config: &Config, host: &str) -> Result<TlsSetup> {
    if config.get_ssl_password().is_some() {
        return Err(Error::config(
            "sslpassword",
            "encrypted client keys are not supported: decrypt the key file (for example \
             `openssl pkey -in key.pem -out plain.pem`) and leave sslpassword unset",
        ));
    }
    let server_name = server_name(host)?;
    let inputs = Inputs::of(config);
    let built = match cached(&inputs) {
        Some(b) => b,
        None => {
            let b = build(&inputs)?;
            if inputs.complete() {
                remember(inputs, &b);
            }
            b
        }
    };
    Ok(TlsSetup {
        config: built.config,
        server_name,
        mode: built.mode,
        roots: built.roots,
    })
}

/// Builds the client configuration from `inputs`.
fn build(inputs: &Inputs) -> Result<Built> {
    let provider = provider();
    let mut mode = inputs.mode;
    let system = inputs.system;
    let root_file = inputs.root.as_ref();
    if system {
        // libpq 16: the system's authorities only make sense with the host name checked.
        mode = SslMode::VerifyFull;
    } else if mode == SslMode::Require && root_file.is_some() {
        // libpq: with a root certificate at hand, `require` checks the chain.
        mode = SslMode::VerifyCa;
    }
    let verify = matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull);
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
        .map_err(|e| Error::new(ErrorKind::Tls, format!("TLS set-up: {e}"), None))?;
    let algs = provider.signature_verification_algorithms;
    let mut roots_label = None;
    let verifier: Arc<dyn ServerCertVerifier> = if verify {
        let (anchors_der, label) = if system {
            let found = rustls_native_certs::load_native_certs();
            if found.certs.is_empty() {
                return Err(tls_config_error(
                    "sslrootcert",
                    format!(
                        "sslrootcert=system: no certificate authority found in the system's \
                         store{}",
                        found
                            .errors
                            .first()
                            .map(|e| format!(" ({e})"))
                            .unwrap_or_default()
                    ),
                ));
            }
            (found.certs, "the system's certificate store".to_owned())
        } else {
            let Some(path) = root_file else {
                return Err(tls_config_error(
                    "sslrootcert",
                    format!(
                        "sslmode={} checks the server's certificate, but no root certificate \
                         was given and ~/.postgresql/root.crt does not exist: set sslrootcert \
                         to the certificate authority's file, use sslrootcert=system for the \
                         system's, or use sslmode=require",
                        mode
                    ),
                ));
            };
            let certs = certificates("sslrootcert", path)?;
            (
                certs,
                format!("sslrootcert ({})", elide(&path.path.display().to_string())),
            )
        };
        let mut anchors = Vec::new();
        for der in &anchors_der {
            match webpki::anchor_from_trusted_cert(der) {
                Ok(a) => anchors.push(a.to_owned()),
                // One unusable entry in the system store does not spoil the rest.
                Err(_) if system => {}
                Err(e) => {
                    return Err(tls_config_error(
                        "sslrootcert",
                        format!("{label} holds a certificate that cannot be a trust anchor: {e}"),
                    ))
                }
            }
        }
        let crl_file = inputs.crl.as_ref();
        let mut crls = Vec::new();
        if let Some(path) = crl_file {
            let pem = path.read("sslcrl")?;
            for der in CertificateRevocationListDer::pem_slice_iter(&pem) {
                let der = der.map_err(|e| {
                    tls_config_error("sslcrl", format!("sslcrl file is not PEM CRLs: {e}"))
                })?;
                let crl = webpki::OwnedCertRevocationList::from_der(der.as_ref()).map_err(|e| {
                    tls_config_error("sslcrl", format!("sslcrl file holds a bad CRL: {e}"))
                })?;
                crls.push(webpki::CertRevocationList::from(crl));
            }
            if crls.is_empty() {
                return Err(tls_config_error(
                    "sslcrl",
                    "the sslcrl file holds no certificate revocation list".into(),
                ));
            }
        }
        roots_label = Some(label);
        Arc::new(ChainVerifier {
            anchors,
            crls,
            check_name: mode == SslMode::VerifyFull,
            algs,
        })
    } else {
        if inputs.crl_set {
            return Err(tls_config_error(
                "sslcrl",
                format!(
                    "sslcrl is only checked when the chain is (sslmode=verify-ca or \
                     verify-full); sslmode={mode} checks no certificate"
                ),
            ));
        }
        Arc::new(NoChainVerifier { algs })
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);

    let mut tls = match &inputs.cert {
        Some(cert_file) => {
            let chain = certificates("sslcert", cert_file)?;
            let key_file = match &inputs.key {
                Some(f) => f,
                None => {
                    return Err(tls_config_error(
                        "sslkey",
                        "a client certificate is set but no key: set sslkey (the default, \
                         ~/.postgresql/postgresql.key, does not exist)"
                            .into(),
                    ))
                }
            };
            let pem = key_file.read("sslkey")?;
            if String::from_utf8_lossy(&pem).contains("ENCRYPTED") {
                return Err(tls_config_error(
                    "sslkey",
                    "the sslkey file is encrypted, which aiopg does not support: decrypt it \
                     (openssl pkey -in key.pem -out plain.pem)"
                        .into(),
                ));
            }
            // PKCS#8, PKCS#1 (RSA) and SEC1 (EC) keys.
            let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
                tls_config_error(
                    "sslkey",
                    format!(
                        "sslkey file {} holds no usable private key (PKCS#8, PKCS#1 or SEC1 \
                         PEM): {e}",
                        elide(&key_file.path.display().to_string())
                    ),
                )
            })?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                tls_config_error(
                    "sslkey",
                    format!("the client certificate and key do not go together: {e}"),
                )
            })?
        }
        None => {
            if inputs.key_set {
                return Err(tls_config_error(
                    "sslcert",
                    "sslkey is set but no client certificate: set sslcert too".into(),
                ));
            }
            builder.with_no_client_auth()
        }
    };
    // PostgreSQL 17 needs ALPN for direct TLS; older servers ignore it.
    tls.alpn_protocols = vec![b"postgresql".to_vec()];
    // SNI carries host names only; rustls never sends it for an IP address.
    tls.enable_sni = inputs.sni;
    Ok(Built {
        config: Arc::new(tls),
        mode,
        roots: roots_label,
    })
}

/// Runs the TLS handshake over `stream`. Returns the TLS stream and the channel-binding data
/// of the server's certificate (`tls-server-end-point`), when its algorithm has one.
pub(crate) async fn handshake(
    setup: &TlsSetup,
    stream: BoxStream,
) -> Result<(BoxStream, Option<Vec<u8>>)> {
    let connector = futures_rustls::TlsConnector::from(setup.config.clone());
    let tls = connector
        .connect(setup.server_name.clone(), stream)
        .await
        .map_err(|e| handshake_error(setup, e))?;
    let end_point = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| end_point_hash(c.as_ref()));
    Ok((Box::new(tls), end_point))
}

fn handshake_error(setup: &TlsSetup, e: std::io::Error) -> Error {
    let name = match &setup.server_name {
        ServerName::DnsName(d) => d.as_ref().to_owned(),
        ServerName::IpAddress(ip) => IpAddr::from(*ip).to_string(),
        _ => "the server".to_owned(),
    };
    let hint = match e.get_ref().and_then(|r| r.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)) => format!(
            ": the server's certificate is not signed by a certificate authority in {}",
            setup.roots.as_deref().unwrap_or("the trusted roots")
        ),
        Some(rustls::Error::InvalidCertificate(CertificateError::NotValidForName))
        | Some(rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
            ..
        })) => format!(
            ": the server's certificate is not valid for the host name {} (sslmode=verify-full \
             checks the name; verify-ca does not)",
            elide(&name)
        ),
        Some(rustls::Error::InvalidCertificate(CertificateError::Revoked)) => {
            ": the server's certificate is revoked (sslcrl)".to_owned()
        }
        _ => String::new(),
    };
    Error::new(
        ErrorKind::Tls,
        format!(
            "TLS handshake with {} failed (sslmode={}){hint}",
            elide(&name),
            setup.mode
        ),
        Some(Box::new(e)),
    )
}

/// RFC 5929's `tls-server-end-point`: the hash of the server's certificate, with the hash of
/// its signature algorithm (MD5 and SHA-1 raised to SHA-256). `None` for algorithms that
/// define no hash (Ed25519, Ed448) or one ring lacks.
pub(crate) fn end_point_hash(der: &[u8]) -> Option<Vec<u8>> {
    use ring::digest;
    let alg = match signature_hash(der)? {
        Hash::Sha256 => &digest::SHA256,
        Hash::Sha384 => &digest::SHA384,
        Hash::Sha512 => &digest::SHA512,
    };
    Some(digest::digest(alg, der).as_ref().to_vec())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

/// The hash of a certificate's signature algorithm, for channel binding.
fn signature_hash(der: &[u8]) -> Option<Hash> {
    use x509_cert::der::{asn1::ContextSpecific, Decode, Reader, SliceReader, TagNumber};
    use x509_cert::spki::AlgorithmIdentifierOwned;
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    let alg = &cert.signature_algorithm;
    let oid = alg.oid.to_string();
    let by_hash_oid = |oid: &str| match oid {
        // SHA-1 (and MD5) are raised to SHA-256.
        "1.3.14.3.2.26" | "1.2.840.113549.2.5" | "2.16.840.1.101.3.4.2.1" => Some(Hash::Sha256),
        "2.16.840.1.101.3.4.2.2" => Some(Hash::Sha384),
        "2.16.840.1.101.3.4.2.3" => Some(Hash::Sha512),
        _ => None,
    };
    match oid.as_str() {
        // RSA PKCS#1 v1.5 with MD5, SHA-1, SHA-256; ECDSA and DSA with SHA-1, SHA-256.
        "1.2.840.113549.1.1.4"
        | "1.2.840.113549.1.1.5"
        | "1.2.840.113549.1.1.11"
        | "1.2.840.10045.4.1"
        | "1.2.840.10045.4.3.2"
        | "1.2.840.10040.4.3"
        | "2.16.840.1.101.3.4.3.2" => Some(Hash::Sha256),
        "1.2.840.113549.1.1.12" | "1.2.840.10045.4.3.3" => Some(Hash::Sha384),
        "1.2.840.113549.1.1.13" | "1.2.840.10045.4.3.4" => Some(Hash::Sha512),
        // RSASSA-PSS: the hash is in the parameters ([0] hashAlgorithm, SHA-1 by default).
        "1.2.840.113549.1.1.10" => {
            let params = alg.parameters.as_ref()?;
            let mut r = SliceReader::new(params.value()).ok()?;
            let hash =
                ContextSpecific::<AlgorithmIdentifierOwned>::decode_explicit(&mut r, TagNumber::N0)
                    .ok()?;
            let _ = r.remaining_len();
            match hash {
                Some(h) => by_hash_oid(&h.value.oid.to_string()),
                None => Some(Hash::Sha256),
            }
        }
        // Ed25519, Ed448 and anything else: no binding.
        _ => None,
    }
}

/// Checks nothing about the certificate (`sslmode=require`), but still the handshake's
/// signatures: the server must hold the key of the certificate it shows.
#[derive(Debug)]
struct NoChainVerifier {
    algs: WebPkiSupportedAlgorithms,
}

/// Checks the chain against the trusted roots (and the CRLs), and the host name when asked.
#[derive(Debug)]
struct ChainVerifier {
    anchors: Vec<rustls::pki_types::TrustAnchor<'static>>,
    crls: Vec<webpki::CertRevocationList<'static>>,
    check_name: bool,
    algs: WebPkiSupportedAlgorithms,
}

fn pki_error(e: webpki::Error) -> rustls::Error {
    use webpki::Error as E;
    rustls::Error::InvalidCertificate(match e {
        E::UnknownIssuer => CertificateError::UnknownIssuer,
        E::CertExpired { .. } => CertificateError::Expired,
        E::CertNotValidYet { .. } => CertificateError::NotValidYet,
        E::CertRevoked => CertificateError::Revoked,
        E::CertNotValidForName(_) => CertificateError::NotValidForName,
        E::UnknownRevocationStatus => CertificateError::UnknownRevocationStatus,
        E::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        other => CertificateError::Other(rustls::OtherError(Arc::new(other))),
    })
}

macro_rules! handshake_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algs.supported_schemes()
        }
    };
}

impl ServerCertVerifier for NoChainVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        // Still a certificate: one that does not parse gets no further.
        webpki::EndEntityCert::try_from(end_entity).map_err(pki_error)?;
        Ok(ServerCertVerified::assertion())
    }

    handshake_signatures!();
}

impl ServerCertVerifier for ChainVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let cert = webpki::EndEntityCert::try_from(end_entity).map_err(pki_error)?;
        let crls: Vec<&webpki::CertRevocationList<'_>> = self.crls.iter().collect();
        // As libpq asks OpenSSL (CRL_CHECK | CRL_CHECK_ALL): every certificate of the chain
        // must have a known status, from CRLs that have not expired.
        let revocation = match webpki::RevocationOptionsBuilder::new(&crls) {
            Ok(b) => Some(
                b.with_depth(webpki::RevocationCheckDepth::Chain)
                    .with_status_policy(webpki::UnknownStatusPolicy::Deny)
                    .with_expiration_policy(webpki::ExpirationPolicy::Enforce)
                    .build(),
            ),
            Err(_) => None,
        };
        cert.verify_for_usage(
            self.algs.all,
            &self.anchors,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            revocation,
            None,
        )
        .map_err(pki_error)?;
        if self.check_name {
            cert.verify_is_valid_for_subject_name(server_name)
                .map_err(pki_error)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    handshake_signatures!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_has_no_end_point() {
        assert_eq!(end_point_hash(b"not a certificate"), None);
        assert_eq!(end_point_hash(&[]), None);
    }
}
