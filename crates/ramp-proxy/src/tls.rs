//! TLS both ways: the listener's (the proxy's and the control API's) and the upstreams'.
//!
//! * **One crypto provider.** Everything uses rustls with *ring* ([`provider`]); the whole
//!   dependency tree has no other TLS stack (no OpenSSL, no aws-lc). Only TLS 1.3 and TLS 1.2
//!   are offered, with ring's suites: ECDHE key exchange and AEAD ciphers (AES-GCM,
//!   ChaCha20-Poly1305) only, so a client that offers TLS 1.0/1.1 or a weak suite is refused
//!   in the handshake (PCI DSS 4.0 requirement 4.2.1: strong cryptography, no fallback).
//! * **Listener** ([`ServerTls`]): a certificate chain and key (PEM files), optional client
//!   certificate authentication against a CA file (required or optional), ALPN `h2` and
//!   `http/1.1` for the proxy, `http/1.1` for the API. A certificate that has expired or is
//!   not valid yet, or a key that does not match it, is refused at load.
//! * **Upstreams** ([`UpstreamTls`]): server certificates verified against the system's roots
//!   or a CA file, with SNI (the URL's host or an explicit `server_name`), and optionally a
//!   client certificate (mTLS). A certificate that does not verify (wrong CA, wrong name,
//!   expired) fails the connection, which counts as a connect failure of that upstream; it is
//!   never accepted silently.
//! * **Reload.** Every file in use is watched ([`Certificates::reload_changed`], which the
//!   server runs on a timer, and [`Certificates::reload_all`], on SIGHUP). New material is
//!   loaded and checked in full before it replaces the old one; connections already open keep
//!   the keys they were made with, new handshakes use the new ones, nothing is dropped. A file
//!   that fails to load leaves the old material in use and is reported.
//! * **Inventory.** [`Certificates`] lists every certificate in use with its subject, issuer,
//!   serial, validity and SHA-256 fingerprint (requirement 4.2.1.1's inventory): the API's
//!   `GET /v1/certificates` and the days-to-expiry gauge in `/metrics` read it.

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme,
    SupportedProtocolVersion,
};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::SystemTime;

/// The protocol versions offered, newest first: TLS 1.3 and 1.2, nothing older.
static VERSIONS: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The one crypto provider: rustls' *ring* provider (its defaults are ECDHE and AEAD only).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or is not PEM.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A certificate is outside its validity period.
    #[error("{path}: the certificate {subject:?} {when}")]
    NotValid {
        /// The file.
        path: String,
        /// The certificate's subject.
        subject: String,
        /// "expired on …" or "is not valid before …".
        when: String,
    },
    /// rustls refused the material (e.g. a key that does not match the certificate).
    #[error("{what}: {source}")]
    Rustls {
        /// Which material.
        what: String,
        /// What rustls said.
        source: rustls::Error,
    },
    /// A CA file or the system store gave no usable root certificate.
    #[error("{0}")]
    Roots(String),
    /// `server_name` is not a DNS name or an IP address.
    #[error("server_name {0:?} is not a DNS name or an IP address")]
    ServerName(String),
}

fn file_error(path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// One certificate in use.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CertInfo {
    /// Who uses it: `api`, or `rollout NAME`.
    pub owner: String,
    /// What for: `listener`, `listener client CA`, `stable upstream CA`, `canary client
    /// certificate`, …
    pub role: String,
    /// The file it was loaded from.
    pub path: String,
    /// Its subject (RFC 4514).
    pub subject: String,
    /// Its issuer (RFC 4514).
    pub issuer: String,
    /// Its serial number, hex.
    pub serial: String,
    /// Start of validity, Unix seconds.
    pub not_before: i64,
    /// End of validity, Unix seconds.
    pub not_after: i64,
    /// SHA-256 of its DER encoding, hex.
    pub sha256: String,
}

/// What is known of a certificate: from its DER.
fn describe(
    owner: &str,
    role: &str,
    path: &Path,
    der: &CertificateDer<'_>,
) -> Result<CertInfo, TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| file_error(path, format!("not an X.509 certificate: {e}")))?;
    let validity = cert.validity();
    Ok(CertInfo {
        owner: owner.to_owned(),
        role: role.to_owned(),
        path: std::fs::canonicalize(path)
            .unwrap_or_else(|_| path.to_path_buf())
            .display()
            .to_string(),
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        serial: cert.raw_serial_as_string().replace(':', ""),
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
        sha256: Sha256::digest(der.as_ref())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    })
}

/// Seconds since the Unix epoch, now.
fn unix_now() -> i64 {
    // Checks certificates' validity periods, not a rollout decision.
    #[allow(clippy::disallowed_methods)]
    let now = SystemTime::now();
    now.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Refuses a certificate outside its validity period (a listener's or a client's own).
fn check_valid(info: &CertInfo) -> Result<(), TlsError> {
    let now = unix_now();
    let when = if now > info.not_after {
        format!("expired at Unix time {}", info.not_after)
    } else if now < info.not_before {
        format!("is not valid before Unix time {}", info.not_before)
    } else {
        return Ok(());
    };
    Err(TlsError::NotValid {
        path: info.path.clone(),
        subject: info.subject.clone(),
        when,
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| file_error(path, format!("no usable PEM private key: {e}")))
}

/// A certificate chain and its key, checked: parsed by the provider, matching, valid now.
fn certified_key(
    owner: &str,
    role: &str,
    cert: &Path,
    key: &Path,
) -> Result<(Arc<CertifiedKey>, Vec<CertInfo>), TlsError> {
    let chain = read_certs(cert)?;
    let infos = chain
        .iter()
        .map(|c| describe(owner, role, cert, c))
        .collect::<Result<Vec<_>, _>>()?;
    check_valid(&infos[0])?;
    let der = read_key(key)?;
    let certified =
        CertifiedKey::from_der(chain, der, &provider()).map_err(|source| TlsError::Rustls {
            what: format!("{} with the key {}", cert.display(), key.display()),
            source,
        })?;
    Ok((Arc::new(certified), infos))
}

/// Root certificates from a CA file.
fn roots_from(
    owner: &str,
    role: &str,
    path: &Path,
) -> Result<(RootCertStore, Vec<CertInfo>), TlsError> {
    let certs = read_certs(path)?;
    let mut infos = Vec::with_capacity(certs.len());
    let mut roots = RootCertStore::empty();
    for cert in certs {
        infos.push(describe(owner, role, path, &cert)?);
        roots
            .add(cert)
            .map_err(|e| file_error(path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok((roots, infos))
}

/// The system's root certificates (what `/etc/ssl/certs` holds on Debian).
fn system_roots() -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(TlsError::Roots(format!(
            "no system root certificates found ({}); set ca_file",
            found
                .errors
                .first()
                .map_or_else(|| "the store is empty".to_owned(), ToString::to_string)
        )));
    }
    Ok(roots)
}

/// The size and modification time of each file, to notice a change.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamps(Vec<Option<(u64, SystemTime)>>);

impl Stamps {
    fn of(paths: &[PathBuf]) -> Self {
        Stamps(
            paths
                .iter()
                .map(|p| {
                    std::fs::metadata(p)
                        .ok()
                        .and_then(|m| Some((m.len(), m.modified().ok()?)))
                })
                .collect(),
        )
    }
}

/// Whether the files are as they were at the last load, or at the last failed one (a broken
/// file is reported once, not at every check).
fn unchanged(now: &Stamps, loaded: &Mutex<Stamps>, failed: &Mutex<Option<Stamps>>) -> bool {
    loaded.lock().is_ok_and(|s| *s == *now) || failed.lock().is_ok_and(|f| f.as_ref() == Some(now))
}

fn remember(failed: &Mutex<Option<Stamps>>, now: &Stamps) {
    if let Ok(mut f) = failed.lock() {
        *f = Some(now.clone());
    }
}

/// What both kinds of TLS material keep to reload: the files' stamps when loaded, and when
/// loading failed, and their registration in the inventory.
struct Watched {
    stamps: Mutex<Stamps>,
    /// The files as they were when loading them last failed (reported once per change).
    failed: Mutex<Option<Stamps>>,
    registered: Registered,
}

impl Watched {
    fn new(stamps: Stamps, registered: Registered) -> Self {
        Watched {
            stamps: Mutex::new(stamps),
            failed: Mutex::new(None),
            registered,
        }
    }

    /// Builds new material when `force` or when a file changed; `None`: nothing to do. On
    /// success the inventory and the stamps are updated and the caller swaps the material in;
    /// a failure is remembered, so the same broken files are reported once.
    fn reload<T>(
        &self,
        paths: &[PathBuf],
        force: bool,
        build: impl FnOnce() -> Result<(T, Vec<CertInfo>), TlsError>,
    ) -> Result<Option<T>, TlsError> {
        let now = Stamps::of(paths);
        if !force && unchanged(&now, &self.stamps, &self.failed) {
            return Ok(None);
        }
        let (material, infos) = build().inspect_err(|_| remember(&self.failed, &now))?;
        self.registered.set(infos);
        if let Ok(mut s) = self.stamps.lock() {
            *s = now;
        }
        Ok(Some(material))
    }
}

/// Something that reloads itself from its files.
trait Reload: Send + Sync {
    /// Reloads (when `force`, or when a file changed). `Ok(true)`: new material is in use.
    fn reload(&self, force: bool) -> Result<bool, TlsError>;
}

/// Every certificate in use in this process, and the material that reloads.
#[derive(Default)]
pub struct Certificates {
    next: AtomicU64,
    entries: Mutex<BTreeMap<u64, Vec<CertInfo>>>,
    reloaders: Mutex<BTreeMap<u64, Weak<dyn Reload>>>,
    reloads: AtomicU64,
    reload_failures: AtomicU64,
    /// TLS handshakes that failed, by listener owner (old protocol versions, unknown CAs,
    /// missing client certificates, plain HTTP to a TLS port, timeouts).
    handshake_failures: Mutex<BTreeMap<String, u64>>,
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates")
            .field("in_use", &self.list().len())
            .finish_non_exhaustive()
    }
}

/// A registration in the inventory; dropping it removes the entries.
struct Registered {
    inventory: Arc<Certificates>,
    id: u64,
}

impl Registered {
    fn set(&self, infos: Vec<CertInfo>) {
        if let Ok(mut e) = self.inventory.entries.lock() {
            e.insert(self.id, infos);
        }
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Ok(mut e) = self.inventory.entries.lock() {
            e.remove(&self.id);
        }
        if let Ok(mut r) = self.inventory.reloaders.lock() {
            r.remove(&self.id);
        }
    }
}

/// What one reload pass did.
#[derive(Debug, Default)]
pub struct ReloadReport {
    /// How many sets of material were replaced.
    pub reloaded: usize,
    /// What could not be reloaded (the old material stays in use).
    pub failed: Vec<TlsError>,
}

impl Certificates {
    /// An empty inventory.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn register(self: &Arc<Self>) -> Registered {
        Registered {
            inventory: self.clone(),
            id: self.next.fetch_add(1, Ordering::Relaxed),
        }
    }

    fn watch(&self, id: u64, reload: Weak<dyn Reload>) {
        if let Ok(mut r) = self.reloaders.lock() {
            r.insert(id, reload);
        }
    }

    /// Every certificate in use, by owner and role.
    pub fn list(&self) -> Vec<CertInfo> {
        let mut all: Vec<CertInfo> = self
            .entries
            .lock()
            .map(|e| e.values().flatten().cloned().collect())
            .unwrap_or_default();
        all.sort_by(|a, b| (&a.owner, &a.role, &a.path).cmp(&(&b.owner, &b.role, &b.path)));
        all
    }

    /// Failed TLS handshakes since start, by listener owner.
    pub fn handshake_failures(&self) -> Vec<(String, u64)> {
        self.handshake_failures
            .lock()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default()
    }

    /// Material replaced since start.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// Reloads that failed since start (the old material stayed in use).
    pub fn reload_failures(&self) -> u64 {
        self.reload_failures.load(Ordering::Relaxed)
    }

    fn pass(&self, force: bool) -> ReloadReport {
        let reloaders: Vec<Arc<dyn Reload>> = self
            .reloaders
            .lock()
            .map(|r| r.values().filter_map(Weak::upgrade).collect())
            .unwrap_or_default();
        let mut report = ReloadReport::default();
        for r in reloaders {
            match r.reload(force) {
                Ok(true) => report.reloaded += 1,
                Ok(false) => {}
                Err(e) => report.failed.push(e),
            }
        }
        self.reloads
            .fetch_add(report.reloaded as u64, Ordering::Relaxed);
        self.reload_failures
            .fetch_add(report.failed.len() as u64, Ordering::Relaxed);
        report
    }

    /// Reloads every file in use (SIGHUP).
    pub fn reload_all(&self) -> ReloadReport {
        self.pass(true)
    }

    /// Reloads the material whose files changed since they were loaded (or since loading
    /// them last failed: a broken file is reported once, then again when it changes).
    pub fn reload_changed(&self) -> ReloadReport {
        self.pass(false)
    }
}

/// Whether a listener asks clients for a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// Every client must present a certificate the CA file verifies.
    Required,
    /// A client may present one; if it does, it must verify.
    Optional,
}

/// A listener's TLS files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerTlsFiles {
    /// The certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates (PEM) that client certificates must chain to; `None`: no client
    /// certificates asked for.
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: required or optional.
    pub client_auth: ClientAuth,
}

/// Which application protocols a TLS listener offers over ALPN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alpn {
    /// `h2` and `http/1.1` (the proxy).
    H2AndHttp1,
    /// `http/1.1` (the API).
    Http1,
}

/// A listener's TLS configuration, reloaded when its files change.
pub struct ServerTls {
    files: ListenerTlsFiles,
    alpn: Alpn,
    owner: String,
    current: RwLock<Arc<ServerConfig>>,
    watched: Watched,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads and checks the files, registers their certificates under `owner` and watches
    /// them for changes.
    pub fn load(
        files: ListenerTlsFiles,
        alpn: Alpn,
        owner: &str,
        inventory: &Arc<Certificates>,
    ) -> Result<Arc<Self>, TlsError> {
        let stamps = Stamps::of(&Self::paths(&files));
        let (config, infos) = Self::build(&files, alpn, owner)?;
        let registered = inventory.register();
        registered.set(infos);
        let id = registered.id;
        let tls = Arc::new(ServerTls {
            files,
            alpn,
            owner: owner.to_owned(),
            current: RwLock::new(config),
            watched: Watched::new(stamps, registered),
        });
        let weak: Weak<dyn Reload> = Arc::downgrade(&(tls.clone() as Arc<dyn Reload>));
        inventory.watch(id, weak);
        Ok(tls)
    }

    fn paths(files: &ListenerTlsFiles) -> Vec<PathBuf> {
        let mut p = vec![files.cert.clone(), files.key.clone()];
        p.extend(files.client_ca.clone());
        p
    }

    fn build(
        files: &ListenerTlsFiles,
        alpn: Alpn,
        owner: &str,
    ) -> Result<(Arc<ServerConfig>, Vec<CertInfo>), TlsError> {
        let (key, mut infos) = certified_key(owner, "listener", &files.cert, &files.key)?;
        let builder = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(VERSIONS)
            .map_err(|source| TlsError::Rustls {
                what: "protocol versions".into(),
                source,
            })?;
        let builder = match &files.client_ca {
            Some(ca) => {
                let (roots, ca_infos) = roots_from(owner, "listener client CA", ca)?;
                infos.extend(ca_infos);
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
                let verifier = match files.client_auth {
                    ClientAuth::Required => verifier,
                    ClientAuth::Optional => verifier.allow_unauthenticated(),
                };
                builder.with_client_cert_verifier(
                    verifier
                        .build()
                        .map_err(|e| file_error(ca, format!("cannot verify clients: {e}")))?,
                )
            }
            None => builder.with_no_client_auth(),
        };
        let mut config =
            builder.with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(key)));
        config.alpn_protocols = match alpn {
            Alpn::H2AndHttp1 => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            Alpn::Http1 => vec![b"http/1.1".to_vec()],
        };
        Ok((Arc::new(config), infos))
    }

    /// Counts a handshake on this listener that failed or timed out.
    pub fn handshake_failed(&self) {
        if let Ok(mut m) = self.watched.registered.inventory.handshake_failures.lock() {
            *m.entry(self.owner.clone()).or_insert(0) += 1;
        }
    }

    /// The acceptor for the next handshake (with the material loaded last).
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let config = self
            .current
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|e| e.into_inner().clone());
        tokio_rustls::TlsAcceptor::from(config)
    }
}

impl Reload for ServerTls {
    fn reload(&self, force: bool) -> Result<bool, TlsError> {
        let built = self.watched.reload(&Self::paths(&self.files), force, || {
            Self::build(&self.files, self.alpn, &self.owner)
        })?;
        let Some(config) = built else {
            return Ok(false);
        };
        if let Ok(mut c) = self.current.write() {
            *c = config;
        }
        Ok(true)
    }
}

/// An upstream's TLS files.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpstreamTlsFiles {
    /// CA certificates (PEM) the upstream's certificate must chain to; `None`: the system's
    /// roots.
    pub ca_file: Option<PathBuf>,
    /// A client certificate chain (PEM) for mTLS.
    pub client_cert: Option<PathBuf>,
    /// Its key.
    pub client_key: Option<PathBuf>,
    /// The name to verify and send as SNI instead of the URL's host.
    pub server_name: Option<String>,
}

/// A server-certificate verifier whose roots can be replaced.
#[derive(Debug)]
struct ReloadingVerifier(RwLock<Arc<WebPkiServerVerifier>>);

impl ReloadingVerifier {
    fn get(&self) -> Arc<WebPkiServerVerifier> {
        self.0
            .read()
            .map(|v| v.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }
}

impl ServerCertVerifier for ReloadingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.get()
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.get().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.get().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.get().supported_verify_schemes()
    }
}

/// A client certificate that can be replaced.
#[derive(Debug)]
struct ReloadingClientCert(RwLock<Option<Arc<CertifiedKey>>>);

impl rustls::client::ResolvesClientCert for ReloadingClientCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.read().ok().and_then(|k| k.clone())
    }

    fn has_certs(&self) -> bool {
        self.0.read().is_ok_and(|k| k.is_some())
    }
}

/// An upstream's TLS client configuration; its CA file and client certificate reload when
/// they change.
pub struct UpstreamTls {
    files: UpstreamTlsFiles,
    owner: String,
    which: &'static str,
    verifier: Arc<ReloadingVerifier>,
    client_cert: Arc<ReloadingClientCert>,
    config: Arc<ClientConfig>,
    server_name: Option<ServerName<'static>>,
    watched: Watched,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

type Material = (
    Arc<WebPkiServerVerifier>,
    Option<Arc<CertifiedKey>>,
    Vec<CertInfo>,
);

impl UpstreamTls {
    /// Loads and checks the files for upstream `which` (`stable` or `canary`), registers
    /// their certificates under `owner` and watches them.
    pub fn load(
        files: UpstreamTlsFiles,
        which: &'static str,
        owner: &str,
        inventory: &Arc<Certificates>,
    ) -> Result<Arc<Self>, TlsError> {
        let server_name = match &files.server_name {
            Some(n) => Some(
                ServerName::try_from(n.trim_start_matches('[').trim_end_matches(']').to_owned())
                    .map_err(|_| TlsError::ServerName(n.clone()))?,
            ),
            None => None,
        };
        let stamps = Stamps::of(&Self::paths(&files));
        let (verifier, cert, infos) = Self::build(&files, which, owner)?;
        let verifier = Arc::new(ReloadingVerifier(RwLock::new(verifier)));
        let client_cert = Arc::new(ReloadingClientCert(RwLock::new(cert)));
        let config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(VERSIONS)
            .map_err(|source| TlsError::Rustls {
                what: "protocol versions".into(),
                source,
            })?
            .dangerous()
            // Not a relaxation: the verifier is rustls' WebPKI verifier; this only lets its
            // roots be replaced on reload.
            .with_custom_certificate_verifier(verifier.clone())
            .with_client_cert_resolver(client_cert.clone());
        // ALPN (`http/1.1`) is set by the connector.
        let registered = inventory.register();
        registered.set(infos);
        let id = registered.id;
        let tls = Arc::new(UpstreamTls {
            files,
            owner: owner.to_owned(),
            which,
            verifier,
            client_cert,
            config: Arc::new(config),
            server_name,
            watched: Watched::new(stamps, registered),
        });
        let weak: Weak<dyn Reload> = Arc::downgrade(&(tls.clone() as Arc<dyn Reload>));
        inventory.watch(id, weak);
        Ok(tls)
    }

    fn paths(files: &UpstreamTlsFiles) -> Vec<PathBuf> {
        files
            .ca_file
            .iter()
            .chain(&files.client_cert)
            .chain(&files.client_key)
            .cloned()
            .collect()
    }

    fn build(files: &UpstreamTlsFiles, which: &str, owner: &str) -> Result<Material, TlsError> {
        let mut infos = Vec::new();
        let roots = match &files.ca_file {
            Some(ca) => {
                let (roots, ca_infos) = roots_from(owner, &format!("{which} upstream CA"), ca)?;
                infos.extend(ca_infos);
                roots
            }
            None => system_roots()?,
        };
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| TlsError::Roots(format!("{which} upstream: {e}")))?;
        let cert = match (&files.client_cert, &files.client_key) {
            (Some(cert), Some(key)) => {
                let (k, cert_infos) =
                    certified_key(owner, &format!("{which} client certificate"), cert, key)?;
                infos.extend(cert_infos);
                Some(k)
            }
            (None, None) => None,
            (Some(p), None) | (None, Some(p)) => {
                return Err(file_error(
                    p,
                    "client_cert and client_key go together: set both or neither",
                ));
            }
        };
        Ok((verifier, cert, infos))
    }

    /// The client configuration (its verifier and client certificate follow reloads).
    pub fn client_config(&self) -> ClientConfig {
        (*self.config).clone()
    }

    /// The name verified and sent as SNI instead of the URL's host, if set.
    pub fn server_name(&self) -> Option<&ServerName<'static>> {
        self.server_name.as_ref()
    }
}

impl Reload for UpstreamTls {
    fn reload(&self, force: bool) -> Result<bool, TlsError> {
        let paths = Self::paths(&self.files);
        if paths.is_empty() {
            return Ok(false);
        }
        let built = self.watched.reload(&paths, force, || {
            Self::build(&self.files, self.which, &self.owner).map(|(v, c, infos)| ((v, c), infos))
        })?;
        let Some((verifier, cert)) = built else {
            return Ok(false);
        };
        if let Ok(mut v) = self.verifier.0.write() {
            *v = verifier;
        }
        if let Ok(mut c) = self.client_cert.0.write() {
            *c = cert;
        }
        Ok(true)
    }
}

/// Days until `info` expires (negative once it has), from now.
pub fn days_to_expiry(info: &CertInfo) -> f64 {
    (info.not_after - unix_now()) as f64 / 86_400.0
}
