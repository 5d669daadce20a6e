//! PKI mode's certificates (`docs/PROTOCOL.md`, "PKI mode"): the operator's CA, each node's
//! certificate chain and key, each client's, read from PEM files and checked before use.
//!
//! The QUIC code (`crate::quic`) builds rustls' stock verifiers from these
//! (`WebPkiServerVerifier`, `WebPkiClientVerifier`); this module only reads files and says what
//! is wrong with them, so that `wanmux-config` (which has no I/O drivers) can check a config:
//! [`CertFiles::check`] parses every file, checks that the key matches the certificate, that the
//! chain leads to the CA, and when the certificate expires.
//!
//! A PKI client's identity is [`spki_hash`]: the SHA-256 of its certificate's
//! SubjectPublicKeyInfo, so a renewed certificate with the same key stays the same client.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};

pub mod crl;

use crl::Crl;

/// Length of a client certificate's identity, [`spki_hash`].
pub const SPKI_HASH_LEN: usize = 32;

/// A certificate that expires within this long is worth a warning (`check`, and the daemons at
/// start).
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);

/// A revocation list whose next update comes within this long is worth a warning (`check`):
/// `tls revoke` makes them valid for 30 days by default, and re-signs one on demand.
pub const CRL_UPDATE_WARNING: Duration = Duration::from_secs(7 * 24 * 3600);

/// How `allowed_clients` writes a client certificate's identity: `sha256:` and the base64 of
/// [`spki_hash`].
pub const SPKI_PREFIX: &str = "sha256:";

/// What [`CertFiles::check`]'s warning says of a chain that does not verify against the CA file
/// (a warning only: the other ends may trust another CA).
const NOT_FROM_CA: &str = "does not lead to the CA";

/// What a certificate is for, which decides the extended key usage it must carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    /// A node's certificate (TLS server authentication).
    Node,
    /// A client's certificate (TLS client authentication).
    Client,
}

/// A certificate chain, its private key and the CA (or CAs) that the other end's certificates
/// must lead to, as read from PEM files: a node's `[tls]` or a client's.
#[derive(Debug)]
pub struct CertFiles {
    /// This end's certificate first, then the intermediates (if any).
    pub chain: Vec<CertificateDer<'static>>,
    /// The chain's private key.
    pub key: PrivateKeyDer<'static>,
    /// The CA certificates the other end's chain must lead to.
    pub roots: Vec<CertificateDer<'static>>,
    /// Certificate revocation lists (nodes only: of client certificates).
    pub crls: Vec<CertificateRevocationListDer<'static>>,
    /// For each of `crls`, the file of `paths.crls` it came from (by index), so that a problem
    /// names its `crl_files` entry.
    pub crl_sources: Vec<usize>,
    /// Where they were read from, for reloads and messages.
    pub paths: CertPaths,
}

impl Clone for CertFiles {
    fn clone(&self) -> Self {
        CertFiles {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            roots: self.roots.clone(),
            crls: self.crls.clone(),
            crl_sources: self.crl_sources.clone(),
            paths: self.paths.clone(),
        }
    }
}

/// The files a [`CertFiles`] was read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertPaths {
    /// The certificate chain (`cert_file`).
    pub cert: PathBuf,
    /// Its private key (`key_file`).
    pub key: PathBuf,
    /// The CA (`ca_file` on a client, `client_ca_file` on a node).
    pub ca: PathBuf,
    /// Revocation lists (`crl_files`, nodes only).
    pub crls: Vec<PathBuf>,
}

/// Which of the files a problem is about, so the config can name its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    /// `cert_file`.
    Cert,
    /// `key_file`.
    Key,
    /// `ca_file` or `client_ca_file`.
    Ca,
    /// `crl_files[i]`.
    Crl(usize),
}

/// A problem with the files: an error (the files cannot be used) or a warning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The file it is about.
    pub which: Which,
    /// An error, or only a warning.
    pub error: bool,
    /// What is wrong, and what to do about it.
    pub message: String,
}

impl CertFiles {
    /// Reads the files; every file that cannot be read or parsed is an error in the list.
    pub fn read(paths: CertPaths) -> Result<CertFiles, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut err = |which, message: String| {
            problems.push(Problem {
                which,
                error: true,
                message,
            })
        };
        let chain = read_certs(&paths.cert)
            .map_err(|m| err(Which::Cert, m))
            .ok();
        let key = regular_file(&paths.key)
            .and_then(|()| {
                PrivateKeyDer::from_pem_file(&paths.key)
                    .map_err(|e| pem_message(&paths.key, "a private key", &e))
            })
            .map_err(|m| err(Which::Key, m))
            .ok();
        let roots = read_certs(&paths.ca).map_err(|m| err(Which::Ca, m)).ok();
        let (mut crls, mut crl_sources) = (Vec::new(), Vec::new());
        for (i, path) in paths.crls.iter().enumerate() {
            match regular_file(path).and_then(|()| read_crls(path)) {
                Ok(c) => {
                    crl_sources.extend(std::iter::repeat_n(i, c.len()));
                    crls.extend(c);
                }
                Err(m) => err(Which::Crl(i), m),
            }
        }
        match (chain, key, roots) {
            (Some(chain), Some(key), Some(roots)) if problems.is_empty() => Ok(CertFiles {
                chain,
                key,
                roots,
                crls,
                crl_sources,
                paths,
            }),
            _ => Err(problems),
        }
    }

    /// The same from PEM text (tests, and tools that hold the PEM already); `paths` are empty.
    pub fn from_pem(
        chain: &str,
        key: &str,
        ca: &str,
        crls: &[String],
    ) -> Result<CertFiles, rustls::pki_types::pem::Error> {
        Ok(CertFiles {
            chain: CertificateDer::pem_slice_iter(chain.as_bytes()).collect::<Result<_, _>>()?,
            key: PrivateKeyDer::from_pem_slice(key.as_bytes())?,
            roots: CertificateDer::pem_slice_iter(ca.as_bytes()).collect::<Result<_, _>>()?,
            crls: crls
                .iter()
                .map(|c| CertificateRevocationListDer::from_pem_slice(c.as_bytes()))
                .collect::<Result<_, _>>()?,
            crl_sources: (0..crls.len()).collect(),
            paths: CertPaths {
                cert: PathBuf::new(),
                key: PathBuf::new(),
                ca: PathBuf::new(),
                crls: Vec::new(),
            },
        })
    }

    /// Checks the files as `usage`'s end at time `now`: the key matches the certificate (an
    /// error); the chain verifies against the CA of `roots` (an error when it does not verify,
    /// expired or not yet valid included; only a warning when it leads to another CA, since a
    /// client's `ca_file` vouches for the nodes and need not have issued the client's own
    /// certificate); and a certificate of the chain that expires within [`EXPIRY_WARNING`] is
    /// a warning, with the date. The revocation lists are checked too (see
    /// [`CertFiles::check_crls`]).
    pub fn check(&self, usage: Usage, now: SystemTime) -> Vec<Problem> {
        let mut problems = self.check_chain(usage, now);
        problems.extend(self.check_crls(now));
        problems
    }

    /// The revocation lists at time `now`: each must be of a CA of `roots` and carry its
    /// signature (an error when it names that CA and its signature does not verify: the node
    /// would refuse that CA's every client); one of no CA there revokes nothing (a warning); and
    /// with any list at all, each CA of `roots` needs one of its own, since the node refuses a
    /// certificate whose revocation status no list gives (an error). A list past its next
    /// update, or within [`CRL_UPDATE_WARNING`] of it, is a warning: the node still applies it.
    pub fn check_crls(&self, now: SystemTime) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut push = |which, error, message: String| {
            problems.push(Problem {
                which,
                error,
                message,
            })
        };
        let now = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let day = |secs: u64| date(UnixTime::since_unix_epoch(Duration::from_secs(secs)));
        let mut covered = vec![false; self.roots.len()];
        for (der, &file) in self.crls.iter().zip(&self.crl_sources) {
            let which = Which::Crl(file);
            let crl = match Crl::parse(der.as_ref()) {
                Ok(c) => c,
                Err(m) => {
                    push(which, true, m);
                    continue;
                }
            };
            let named: Vec<usize> = (0..self.roots.len())
                .filter(|&i| crl.issued_by(&self.roots[i]))
                .collect();
            if named.is_empty() {
                push(
                    which,
                    false,
                    "a revocation list in this file is not of a CA in client_ca_file: it revokes \
                     nothing here"
                        .into(),
                );
                continue;
            }
            let mut signed = false;
            for i in named {
                if crl.signed_by(&self.roots[i]) {
                    covered[i] = true;
                    signed = true;
                }
            }
            if !signed {
                push(
                    which,
                    true,
                    "a revocation list in this file names a CA of client_ca_file as its issuer, \
                     but that CA's key did not sign it: the node would refuse every client \
                     certificate of that CA"
                        .into(),
                );
                continue;
            }
            let renew = "re-sign it: wanmux-server tls revoke --ca CA_DIR --crl FILE";
            let within = CRL_UPDATE_WARNING.as_secs();
            if now >= crl.next_update {
                push(
                    which,
                    false,
                    format!(
                        "a revocation list in this file was due to be replaced on {} (its next \
                         update): the node still applies it, but other tools take it as stale; \
                         {renew}",
                        day(crl.next_update)
                    ),
                );
            } else if now.saturating_add(within) >= crl.next_update {
                push(
                    which,
                    false,
                    format!(
                        "a revocation list in this file is due to be replaced on {} (its next \
                         update, within {} days); {renew}",
                        day(crl.next_update),
                        within / 86_400
                    ),
                );
            }
        }
        if !self.crls.is_empty() {
            for (i, _) in covered.iter().enumerate().filter(|(_, c)| !**c) {
                push(
                    Which::Ca,
                    true,
                    format!(
                        "no revocation list in crl_files is of the CA of this file's certificate \
                         {}: with crl_files set, the node refuses every client certificate whose \
                         revocation status no list gives, so every client of that CA; add its \
                         list (wanmux-server tls revoke --ca CA_DIR --crl FILE makes an empty \
                         one)",
                        i + 1
                    ),
                );
            }
        }
        problems
    }

    /// [`CertFiles::check`] of the key and chain.
    fn check_chain(&self, usage: Usage, now: SystemTime) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut push = |which, error, message: String| {
            problems.push(Problem {
                which,
                error,
                message,
            })
        };
        let provider = rustls::crypto::ring::default_provider();
        match rustls::sign::CertifiedKey::from_der(
            self.chain.clone(),
            self.key.clone_key(),
            &provider,
        ) {
            Ok(certified) => {
                if let Err(e) = certified.keys_match() {
                    push(
                        Which::Key,
                        true,
                        format!("this key is not the key of cert_file's certificate ({e})"),
                    );
                }
            }
            Err(rustls::Error::InconsistentKeys(_)) => push(
                Which::Key,
                true,
                "this key is not the key of cert_file's certificate".into(),
            ),
            Err(e) => push(Which::Key, true, format!("cannot use this key: {e}")),
        }
        let anchors: Vec<_> = self
            .roots
            .iter()
            .filter_map(|c| webpki::anchor_from_trusted_cert(c).ok())
            .map(|a| a.to_owned())
            .collect();
        if anchors.len() != self.roots.len() {
            push(
                Which::Ca,
                true,
                "a certificate in this file cannot be a CA (it does not parse as one)".into(),
            );
        }
        let Some((leaf, intermediates)) = self.chain.split_first() else {
            return problems;
        };
        let leaf = match webpki::EndEntityCert::try_from(leaf) {
            Ok(l) => l,
            Err(e) => {
                push(
                    Which::Cert,
                    true,
                    format!("the first certificate does not parse: {e}"),
                );
                return problems;
            }
        };
        let eku = match usage {
            Usage::Node => webpki::KeyUsage::server_auth(),
            Usage::Client => webpki::KeyUsage::client_auth(),
        };
        let at = |t: SystemTime| {
            leaf.verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &anchors,
                intermediates,
                UnixTime::since_unix_epoch(
                    t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default(),
                ),
                eku,
                None,
                None,
            )
            .map(|_| ())
        };
        let ca = match usage {
            Usage::Node => "client_ca_file",
            Usage::Client => "ca_file",
        };
        match at(now) {
            Ok(()) => {
                if let Err(webpki::Error::CertExpired { not_after, .. }) = at(now + EXPIRY_WARNING)
                {
                    push(
                        Which::Cert,
                        false,
                        format!(
                            "a certificate of this chain expires on {} (within 30 days): issue a \
                             new one",
                            date(not_after)
                        ),
                    );
                }
            }
            Err(webpki::Error::CertExpired { not_after, .. }) => push(
                Which::Cert,
                true,
                format!(
                    "a certificate of this chain expired on {}: issue a new one",
                    date(not_after)
                ),
            ),
            Err(webpki::Error::CertNotValidYet { not_before, .. }) => push(
                Which::Cert,
                true,
                format!(
                    "a certificate of this chain is not valid before {} (is the clock right?)",
                    date(not_before)
                ),
            ),
            Err(webpki::Error::UnknownIssuer) => push(
                Which::Cert,
                false,
                format!(
                    "this chain {NOT_FROM_CA} in {ca}: fine only if the other ends trust \
                     another CA that issued it"
                ),
            ),
            Err(e) => push(
                Which::Cert,
                true,
                format!("this chain does not verify: {e}"),
            ),
        }
        problems
    }

    /// The rustls roots of [`CertFiles::roots`].
    pub fn root_store(&self) -> Result<Arc<rustls::RootCertStore>, rustls::Error> {
        let mut store = rustls::RootCertStore::empty();
        for c in &self.roots {
            store.add(c.clone())?;
        }
        Ok(Arc::new(store))
    }
}

/// `YYYY-MM-DD` of `t` (UTC), for messages.
fn date(t: UnixTime) -> String {
    let (y, m, d) = civil(t.as_secs());
    format!("{y:04}-{m:02}-{d:02}")
}

/// Year, month and day (UTC) of `secs` since the Unix epoch.
fn civil(secs: u64) -> (i64, i64, i64) {
    let days = (secs / 86_400) as i64;
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn pem_message(path: &Path, what: &str, e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        Error::Io(io) => format!("cannot read {}: {io}", path.display()),
        Error::NoItemsFound => format!("{} holds no PEM {what}", path.display()),
        other => format!("{} is not valid PEM: {other:?}", path.display()),
    }
}

/// [`crate::files::regular_file`], its error naming the file.
fn regular_file(path: &Path) -> Result<(), String> {
    crate::files::regular_file(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Every certificate of a PEM file; at least one.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    regular_file(path)?;
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_message(path, "certificate", &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_message(path, "certificate", &e))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// Every revocation list of a PEM file; at least one, and each one parses.
fn read_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let crls = CertificateRevocationListDer::pem_file_iter(path)
        .map_err(|e| pem_message(path, "X509 CRL", &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_message(path, "X509 CRL", &e))?;
    if crls.is_empty() {
        return Err(format!("{} holds no PEM X509 CRL", path.display()));
    }
    for c in &crls {
        webpki::OwnedCertRevocationList::from_der(c.as_ref())
            .map_err(|e| format!("{}: a revocation list does not parse: {e}", path.display()))?;
    }
    Ok(crls)
}

/// A client certificate's identity: SHA-256 of its SubjectPublicKeyInfo (the whole DER
/// structure, as HTTP public key pinning hashes it). `None` if the certificate does not parse.
pub fn spki_hash(cert: &CertificateDer<'_>) -> Option<[u8; SPKI_HASH_LEN]> {
    let parsed = rustls::server::ParsedCertificate::try_from(cert).ok()?;
    let spki = parsed.subject_public_key_info();
    let digest = ring::digest::digest(&ring::digest::SHA256, spki.as_ref());
    digest.as_ref().try_into().ok()
}

/// `sha256:` and the base64 of `hash`, as `allowed_clients` lists it.
pub fn spki_text(hash: &[u8; SPKI_HASH_LEN]) -> String {
    use base64::Engine as _;
    format!(
        "{SPKI_PREFIX}{}",
        base64::engine::general_purpose::STANDARD.encode(hash)
    )
}

/// Whether `name` is something a node's certificate can be checked against: a DNS name or an
/// IP address.
pub fn check_server_name(name: &str) -> Result<(), String> {
    rustls::pki_types::ServerName::try_from(name)
        .map(|_| ())
        .map_err(|_| format!("{name:?} is not a DNS name or IP address a certificate can carry"))
}

/// Making PKI mode's certificates (`wanmux-server tls ca` and `tls issue`, and the tests): an
/// operator CA, and node or client certificates it issues, all with Ed25519 keys (rcgen).
#[cfg(feature = "io")]
pub mod issue {
    use super::{civil, spki_hash, Usage, SPKI_HASH_LEN};
    use rcgen::{
        BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
        ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams,
        SerialNumber,
    };
    use std::time::{Duration, SystemTime};

    pub use rcgen::Error;

    /// How long `tls ca` makes a CA valid: 10 years.
    pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);
    /// How long `tls issue` makes a certificate valid: 1 year.
    pub const CERT_VALIDITY: Duration = Duration::from_secs(365 * 86_400);

    /// A certificate and its key, PEM, with the identity a client certificate has at a node.
    #[derive(Debug)]
    pub struct Issued {
        /// The certificate, PEM.
        pub cert_pem: String,
        /// Its private key (PKCS#8), PEM.
        pub key_pem: String,
        /// The SHA-256 of its SubjectPublicKeyInfo ([`super::spki_text`] writes it as
        /// `allowed_clients` lists it).
        pub spki: [u8; SPKI_HASH_LEN],
        /// Its serial number, which a revocation list names.
        pub serial: u64,
    }

    /// An operator CA: its certificate and key.
    pub struct Ca {
        cert: rcgen::Certificate,
        key: KeyPair,
    }

    impl std::fmt::Debug for Ca {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Ca").finish_non_exhaustive()
        }
    }

    /// The day of `t` (UTC), as rcgen takes it.
    fn ymd(t: SystemTime) -> (i32, u8, u8) {
        let secs = t
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let (y, m, d) = civil(secs);
        (y as i32, m as u8, d as u8)
    }

    macro_rules! day {
        ($t:expr) => {{
            let (y, m, d) = ymd($t);
            rcgen::date_time_ymd(y, m, d)
        }};
    }

    /// `key` as the PEM of a PKCS#8 version 1 structure (RFC 5208: the private key alone),
    /// which OpenSSL 3.0 and Python's `cryptography` read. ring writes Ed25519 keys as version 2
    /// (RFC 5958, the public key too), which they refuse; every loader here takes both, so key
    /// files of earlier releases still load.
    pub(crate) fn key_pem(key: &KeyPair) -> String {
        // RFC 8410's Ed25519 PKCS#8: SEQUENCE { version, AlgorithmIdentifier { 1.3.101.112 },
        // OCTET STRING { OCTET STRING seed } } and, in version 2, [1] the public key after it.
        const V2: [u8; 16] = [
            0x30, 0x51, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        const V1: [u8; 16] = [
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        let der = key.serialized_der();
        let (Some(head), Some(seed)) = (der.get(..16), der.get(16..48)) else {
            return key.serialize_pem();
        };
        if head != V2 {
            return key.serialize_pem();
        }
        let v1 = [&V1[..], seed].concat();
        use base64::Engine as _;
        let text = base64::engine::general_purpose::STANDARD.encode(v1);
        let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
        for line in text.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
            pem.push('\n');
        }
        pem.push_str("-----END PRIVATE KEY-----\n");
        pem
    }

    fn random_serial() -> u64 {
        // 63 bits: a positive INTEGER in DER.
        rand::random::<u64>() >> 1
    }

    impl Ca {
        /// A new CA with an Ed25519 key, valid from today until `not_after`.
        pub fn generate(not_after: SystemTime) -> Result<Ca, Error> {
            let key = KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
            Ca::with_key(key, SystemTime::now(), not_after)
        }

        /// The CA of `key_pem` (a key `tls ca` made), to issue with: its name follows from its
        /// key, so the certificate made here names the same issuer as the one `tls ca` wrote.
        pub fn from_key_pem(key_pem: &str) -> Result<Ca, Error> {
            let key = KeyPair::from_pem(key_pem)?;
            let now = SystemTime::now();
            Ca::with_key(key, now, now + CA_VALIDITY)
        }

        fn with_key(
            key: KeyPair,
            not_before: SystemTime,
            not_after: SystemTime,
        ) -> Result<Ca, Error> {
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            let id = ring::digest::digest(&ring::digest::SHA256, &key.public_key_der());
            let hex: String = id.as_ref()[..6]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            params
                .distinguished_name
                .push(DnType::CommonName, format!("wanmux CA {hex}"));
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            params.key_identifier_method = KeyIdMethod::Sha256;
            params.not_before = day!(not_before);
            params.not_after = day!(not_after);
            let cert = params.self_signed(&key)?;
            Ok(Ca { cert, key })
        }

        /// The CA's certificate, PEM (`ca_file`, `client_ca_file`).
        pub fn cert_pem(&self) -> String {
            self.cert.pem()
        }

        /// The CA's private key, PEM: keep it off the nodes and clients.
        pub fn key_pem(&self) -> String {
            key_pem(&self.key)
        }

        /// A certificate for `name` (a node's DNS name or IP address, or a client's name) for
        /// `usage`, with a new Ed25519 key, valid from `not_before` to `not_after` (whole days,
        /// UTC).
        pub fn issue(
            &self,
            name: &str,
            usage: Usage,
            not_before: SystemTime,
            not_after: SystemTime,
        ) -> Result<Issued, Error> {
            let key = KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
            self.issue_for(&key, name, usage, day!(not_before), day!(not_after))
        }

        /// [`Ca::issue`] valid until `not_after` to the second (since yesterday), for tests of
        /// expiry.
        #[cfg(test)]
        pub(crate) fn issue_until(
            &self,
            name: &str,
            usage: Usage,
            not_after: SystemTime,
        ) -> Result<Issued, Error> {
            let key = KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
            let unix = |t: SystemTime| {
                let secs = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
                let secs = i64::try_from(secs.as_secs()).unwrap_or(i64::MAX);
                time::OffsetDateTime::from_unix_timestamp(secs).expect("a time rcgen takes")
            };
            let yesterday = SystemTime::now() - Duration::from_secs(86_400);
            self.issue_for(&key, name, usage, unix(yesterday), unix(not_after))
        }

        /// [`Ca::issue`] for the existing key of `key_pem` (a renewal: the certificate keeps
        /// the identity of the one it replaces, see [`super::spki_hash`]).
        pub fn renew(
            &self,
            key_pem: &str,
            name: &str,
            usage: Usage,
            not_before: SystemTime,
            not_after: SystemTime,
        ) -> Result<Issued, Error> {
            let key = KeyPair::from_pem(key_pem)?;
            self.issue_for(&key, name, usage, day!(not_before), day!(not_after))
        }

        fn issue_for(
            &self,
            key: &KeyPair,
            name: &str,
            usage: Usage,
            not_before: time::OffsetDateTime,
            not_after: time::OffsetDateTime,
        ) -> Result<Issued, Error> {
            let mut params = CertificateParams::new(vec![name.to_owned()])?;
            params.distinguished_name.push(DnType::CommonName, name);
            params.extended_key_usages = vec![match usage {
                Usage::Node => ExtendedKeyUsagePurpose::ServerAuth,
                Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
            }];
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.use_authority_key_identifier_extension = true;
            let serial = random_serial();
            params.serial_number = Some(SerialNumber::from(serial));
            params.not_before = not_before;
            params.not_after = not_after;
            let cert = params.signed_by(key, &self.cert, &self.key)?;
            let spki = spki_hash(cert.der()).ok_or(Error::CouldNotParseCertificate)?;
            Ok(Issued {
                cert_pem: cert.pem(),
                key_pem: key_pem(key),
                spki,
                serial,
            })
        }

        /// A revocation list of this CA naming the certificates of `serials`, valid for
        /// `valid` from now (PEM, for `crl_files`).
        pub fn revocation_list(&self, serials: &[u64], valid: Duration) -> Result<String, Error> {
            let now = SystemTime::now();
            let params = CertificateRevocationListParams {
                this_update: day!(now - Duration::from_secs(86_400)),
                next_update: day!(now + valid),
                crl_number: SerialNumber::from(random_serial()),
                issuing_distribution_point: None,
                revoked_certs: serials
                    .iter()
                    .map(|s| RevokedCertParams {
                        serial_number: SerialNumber::from(*s),
                        revocation_time: day!(now - Duration::from_secs(86_400)),
                        reason_code: None,
                        invalidity_date: None,
                    })
                    .collect(),
                key_identifier_method: KeyIdMethod::Sha256,
            };
            params.signed_by(&self.cert, &self.key)?.pem()
        }
    }

    /// `tls ca --out DIR`: a new CA in `dir` (created if need be): `ca.pem`, its certificate
    /// (for `ca_file` and `client_ca_file`), and `ca.key`, its key (mode 0600). Refuses to
    /// overwrite either. Returns what to print.
    pub fn make_ca(dir: &std::path::Path) -> std::io::Result<String> {
        let ca = Ca::generate(SystemTime::now() + CA_VALIDITY).map_err(std::io::Error::other)?;
        std::fs::create_dir_all(dir)?;
        let (cert, key) = (dir.join("ca.pem"), dir.join("ca.key"));
        write_new(&cert, &ca.cert_pem())?;
        crate::keys::write_secret_file(&key, ca.key_pem().trim_end())?;
        Ok(format!(
            "CA certificate: {} (ca_file on clients, client_ca_file on nodes)\nCA key: {} \
             (keep it off the nodes and clients; `tls issue --ca` reads it)\n",
            cert.display(),
            key.display()
        ))
    }

    /// `tls issue --ca CA_DIR --name NAME --out DIR [--client]`: a certificate of the CA in
    /// `ca_dir` (as [`make_ca`] wrote it) for `name`, valid `days` days from today:
    /// `DIR/NAME.pem` and `DIR/NAME.key` (mode 0600). The result is checked against
    /// `ca_dir/ca.pem` before it is written (with the checks of `check`). Returns what to print:
    /// for a client, the `sha256:` identity that `allowed_clients` may list.
    pub fn issue_files(
        ca_dir: &std::path::Path,
        name: &str,
        out: &std::path::Path,
        usage: Usage,
        days: u32,
    ) -> std::io::Result<String> {
        issue_into(ca_dir, name, out, usage, days, None)
    }

    /// `tls issue ... --key KEY`: as [`issue_files`] for the existing private key in the PEM
    /// file `key` (a renewal that keeps the identity, so the nodes' `allowed_clients` and a
    /// running client's session stay as they are): writes `DIR/NAME.pem` only.
    pub fn renew_files(
        ca_dir: &std::path::Path,
        name: &str,
        key: &std::path::Path,
        out: &std::path::Path,
        usage: Usage,
        days: u32,
    ) -> std::io::Result<String> {
        issue_into(ca_dir, name, out, usage, days, Some(key))
    }

    fn issue_into(
        ca_dir: &std::path::Path,
        name: &str,
        out: &std::path::Path,
        usage: Usage,
        days: u32,
        old_key: Option<&std::path::Path>,
    ) -> std::io::Result<String> {
        use std::io::{Error, ErrorKind};
        if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("--name {name:?}: a DNS name, an IP address or a plain client name"),
            ));
        }
        if usage == Usage::Node {
            super::check_server_name(name).map_err(|m| Error::new(ErrorKind::InvalidInput, m))?;
        }
        let read = |f: &str| {
            let path = ca_dir.join(f);
            std::fs::read_to_string(&path)
                .map_err(|e| Error::new(e.kind(), format!("{}: {e}", path.display())))
        };
        let (ca_pem, key_pem) = (read("ca.pem")?, read("ca.key")?);
        let ca = Ca::from_key_pem(&key_pem).map_err(|e| {
            Error::new(
                ErrorKind::InvalidData,
                format!("{}: {e}", ca_dir.join("ca.key").display()),
            )
        })?;
        let now = SystemTime::now();
        let until = now + Duration::from_secs(86_400) * days;
        let issued = match old_key {
            None => ca.issue(name, usage, now, until).map_err(Error::other),
            Some(path) => {
                let pem = std::fs::read_to_string(path)
                    .map_err(|e| Error::new(e.kind(), format!("{}: {e}", path.display())))?;
                ca.renew(&pem, name, usage, now, until).map_err(|e| {
                    Error::new(
                        ErrorKind::InvalidData,
                        format!("{}: not a private key to renew with ({e})", path.display()),
                    )
                })
            }
        }?;
        let files = super::CertFiles::from_pem(&issued.cert_pem, &issued.key_pem, &ca_pem, &[])
            .map_err(|e| Error::new(ErrorKind::InvalidData, format!("{e:?}")))?;
        let bad = |p: &super::Problem| p.error || p.message.contains(super::NOT_FROM_CA);
        if let Some(p) = files.check(usage, now).into_iter().find(bad) {
            return Err(Error::new(
                ErrorKind::InvalidData,
                format!(
                    "the new certificate does not check out against {} ({}): is ca.pem the \
                     certificate of ca.key, made by `tls ca`?",
                    ca_dir.join("ca.pem").display(),
                    p.message
                ),
            ));
        }
        std::fs::create_dir_all(out)?;
        let (cert, key) = (
            out.join(format!("{name}.pem")),
            out.join(format!("{name}.key")),
        );
        write_new(&cert, &issued.cert_pem)?;
        let key = match old_key {
            None => {
                crate::keys::write_secret_file(&key, issued.key_pem.trim_end())?;
                key.display().to_string()
            }
            Some(old) => format!("{} (the same key, not copied)", old.display()),
        };
        let mut text = format!(
            "certificate: {} (cert_file)\nkey: {key} (key_file)\nvalid for {} days from today\n",
            cert.display(),
            days
        );
        if usage == Usage::Client {
            text.push_str(&format!(
                "identity: \"{}\" (for the nodes' allowed_clients, to take only named clients)\n",
                super::spki_text(&issued.spki)
            ));
        }
        Ok(text)
    }

    /// How long `tls revoke` makes a revocation list valid by default (its next update).
    pub const CRL_VALIDITY_DAYS: u32 = 30;

    /// `tls revoke --ca CA_DIR --crl FILE [--cert CERT] [--next-update DAYS]`: adds the
    /// certificate of the PEM file `cert` (one the CA in `ca_dir` issued, as [`make_ca`] wrote
    /// it) to the revocation list `crl` of that CA, or makes the list if there is none; without
    /// `cert`, signs the list again as it is (a new next update). The list is read back from
    /// `crl` itself, which keeps no state beside it: its signature must verify against
    /// `ca_dir/ca.pem`, and every serial it revoked stays (with its date and reason). The new
    /// list has the next CRL number, is valid `days` days (next update), and replaces `crl` at
    /// once (a temporary file renamed over it; mode 0644). Returns what to print.
    pub fn revoke_files(
        ca_dir: &std::path::Path,
        crl_path: &std::path::Path,
        cert: Option<&std::path::Path>,
        days: u32,
    ) -> std::io::Result<String> {
        use super::crl::{next_number, number_text, same_serial, Crl, Revoked};
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};
        use std::io::{Error, ErrorKind};
        use std::path::Path;
        let bad = |path: &Path, m: &dyn std::fmt::Display| {
            Error::new(ErrorKind::InvalidData, format!("{}: {m}", path.display()))
        };
        let read = |path: &Path| {
            std::fs::read_to_string(path)
                .map_err(|e| Error::new(e.kind(), format!("{}: {e}", path.display())))
        };
        let (ca_pem, ca_key) = (ca_dir.join("ca.pem"), ca_dir.join("ca.key"));
        let ca_der = CertificateDer::from_pem_slice(read(&ca_pem)?.as_bytes())
            .map_err(|e| bad(&ca_pem, &format!("holds no PEM certificate ({e:?})")))?;
        let ca = Ca::from_key_pem(&read(&ca_key)?).map_err(|e| bad(&ca_key, &e))?;

        let target = match cert {
            None => None,
            Some(path) => {
                let der = CertificateDer::from_pem_slice(read(path)?.as_bytes())
                    .map_err(|e| bad(path, &format!("holds no PEM certificate ({e:?})")))?;
                let serial = client_of(&der, &ca_der)
                    .map_err(|m| bad(path, &format!("{m} (the CA: {})", ca_pem.display())))?;
                let spki = super::spki_hash(&der).ok_or_else(|| bad(path, &"does not parse"))?;
                Some((serial, spki))
            }
        };

        let (mut revoked, number) = match std::fs::read_to_string(crl_path) {
            Ok(text) => {
                let der = CertificateRevocationListDer::from_pem_slice(text.as_bytes())
                    .map_err(|e| bad(crl_path, &format!("holds no PEM X509 CRL ({e:?})")))?;
                let old = Crl::parse(der.as_ref()).map_err(|m| bad(crl_path, &m))?;
                if !old.signed_by(&ca_der) {
                    return Err(bad(
                        crl_path,
                        &format!(
                            "is not a revocation list of the CA in {} (another CA named it or \
                             signed it): left as it is",
                            ca_pem.display()
                        ),
                    ));
                }
                (old.revoked, old.number.unwrap_or_default())
            }
            Err(e) if e.kind() == ErrorKind::NotFound => (Vec::new(), Vec::new()),
            Err(e) => return Err(Error::new(e.kind(), format!("{}: {e}", crl_path.display()))),
        };

        let now = SystemTime::now();
        let secs = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs()
        };
        let mut said = String::new();
        if let Some((serial, spki)) = &target {
            let what = format!(
                "serial {}, identity \"{}\"",
                number_text(serial),
                super::spki_text(spki)
            );
            if revoked.iter().any(|r| same_serial(&r.serial, serial)) {
                said.push_str(&format!("already revoked: {what}\n"));
            } else {
                revoked.push(Revoked {
                    serial: serial.clone(),
                    at: secs(now),
                    reason: None,
                    invalid_since: None,
                });
                said.push_str(&format!("revoked: {what}\n"));
            }
        }
        let number = next_number(&number)
            .ok_or_else(|| bad(crl_path, &"its CRL number is at its maximum (20 octets)"))?;
        let date = |s: u64| {
            time::OffsetDateTime::from_unix_timestamp(i64::try_from(s).unwrap_or(i64::MAX))
                .map_err(|e| bad(crl_path, &format!("a date out of range: {e}")))
        };
        let next_update = now + Duration::from_secs(86_400) * days;
        let params = CertificateRevocationListParams {
            this_update: date(secs(now))?,
            next_update: date(secs(next_update))?,
            crl_number: SerialNumber::from_slice(&number),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|r| {
                    Ok(RevokedCertParams {
                        serial_number: SerialNumber::from_slice(&r.serial),
                        revocation_time: date(r.at)?,
                        reason_code: r.reason.and_then(reason),
                        invalidity_date: r.invalid_since.map(date).transpose()?,
                    })
                })
                .collect::<std::io::Result<_>>()?,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let pem = params
            .signed_by(&ca.cert, &ca.key)
            .and_then(|c| c.pem())
            .map_err(Error::other)?;
        // What the nodes will check, checked before it replaces anything.
        let made = CertificateRevocationListDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| Error::other(format!("{e:?}")))
            .and_then(|der| Crl::parse(der.as_ref()).map_err(Error::other))?;
        if !made.signed_by(&ca_der) {
            return Err(bad(
                &ca_pem,
                &"is not the certificate of ca.key: is this the directory `tls ca` made?",
            ));
        }
        write_atomic(crl_path, &pem)?;
        said.push_str(&format!(
            "revocation list: {} (crl_files on the nodes), CRL number {}, {} certificate{} \
             revoked, next update {} (run this again before then, with or without --cert)\n\
             reload the nodes that list it (SIGHUP): the links of certificate clients close \
             and dial again under the new list, so a revoked certificate's links end at once\n",
            crl_path.display(),
            number_text(&number),
            revoked.len(),
            if revoked.len() == 1 { "" } else { "s" },
            super::date(rustls::pki_types::UnixTime::since_unix_epoch(
                next_update
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
            )),
        ));
        Ok(said)
    }

    /// The serial of `cert` (DER contents of the INTEGER) when it is a client certificate that
    /// the CA of `ca` issued, or why not. Its dates do not matter: an expired certificate may be
    /// revoked too.
    fn client_of(
        cert: &rustls::pki_types::CertificateDer<'_>,
        ca: &rustls::pki_types::CertificateDer<'_>,
    ) -> Result<Vec<u8>, String> {
        use rustls::pki_types::UnixTime;
        let leaf = webpki::EndEntityCert::try_from(cert).map_err(|e| format!("{e}"))?;
        let anchor = webpki::anchor_from_trusted_cert(ca)
            .map_err(|e| format!("the CA certificate does not parse: {e}"))?;
        let at = |t: UnixTime| {
            leaf.verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                std::slice::from_ref(&anchor),
                &[],
                t,
                webpki::KeyUsage::client_auth(),
                None,
                None,
            )
            .map(|_| ())
        };
        let now = UnixTime::now();
        let verified = match at(now) {
            Err(webpki::Error::CertExpired { not_after, .. }) => at(UnixTime::since_unix_epoch(
                Duration::from_secs(not_after.as_secs().saturating_sub(1)),
            )),
            Err(webpki::Error::CertNotValidYet { not_before, .. }) => at(not_before),
            other => other,
        };
        match verified {
            Ok(()) => Ok(leaf.serial().to_vec()),
            Err(webpki::Error::UnknownIssuer) => {
                Err("the CA did not issue this certificate".into())
            }
            Err(webpki::Error::RequiredEkuNotFoundContext(_)) => Err(
                "not a client's certificate: only nodes check revocation lists, of client \
                 certificates"
                    .into(),
            ),
            Err(e) => Err(format!(
                "this certificate does not verify against the CA: {e}"
            )),
        }
    }

    /// rcgen's revocation reason of code `c` (RFC 5280 §5.3.1).
    fn reason(c: u8) -> Option<rcgen::RevocationReason> {
        use rcgen::RevocationReason as R;
        Some(match c {
            0 => R::Unspecified,
            1 => R::KeyCompromise,
            2 => R::CaCompromise,
            3 => R::AffiliationChanged,
            4 => R::Superseded,
            5 => R::CessationOfOperation,
            6 => R::CertificateHold,
            8 => R::RemoveFromCrl,
            9 => R::PrivilegeWithdrawn,
            10 => R::AaCompromise,
            _ => return None,
        })
    }

    /// Replaces `path` with `text` at once: a temporary file beside it, mode 0644, synced, then
    /// renamed over it, so a node that reloads meanwhile reads the old list or the new one.
    fn write_atomic(path: &std::path::Path, text: &str) -> std::io::Result<()> {
        use std::io::Write as _;
        let named = |e: std::io::Error, p: &std::path::Path| {
            std::io::Error::new(e.kind(), format!("{}: {e}", p.display()))
        };
        let name = path.file_name().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{}: not a file name", path.display()),
            )
        })?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => std::path::Path::new("."),
        };
        let tmp = dir.join(format!(
            ".{}.tmp-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let _ = std::fs::remove_file(&tmp);
        let written = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt as _;
                f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
            }
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(named(e, path));
        }
        // The rename itself, on disk.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Writes `text` to the new file `path` (never over an existing one).
    fn write_new(path: &std::path::Path, text: &str) -> std::io::Result<()> {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()
    }
}

#[cfg(all(test, feature = "io"))]
mod tests {
    use super::issue::{issue_files, make_ca};
    use super::*;

    /// The keys `tls ca` and `tls issue` write are PKCS#8 version 1, which OpenSSL 3.0 reads
    /// (a trial could not inspect them: `openssl pkey` said "unsupported" to ring's version 2),
    /// and they load here as before, with the same key.
    #[test]
    fn key_files_are_pkcs8_version_1_and_load() {
        let ca =
            issue::Ca::generate(SystemTime::now() + Duration::from_secs(86_400)).expect("a CA");
        let pem = ca.key_pem();
        let der = PrivateKeyDer::from_pem_slice(pem.as_bytes()).expect("PEM");
        let der = der.secret_der();
        assert_eq!(der.len(), 48, "version 1 holds the seed alone");
        assert_eq!(&der[..5], &[0x30, 0x2e, 0x02, 0x01, 0x00], "version 0 (v1)");
        // The CA made again from that file signs with the same key: its name follows from it.
        let again = issue::Ca::from_key_pem(&pem).expect("loads");
        assert_eq!(again.cert_pem().len(), ca.cert_pem().len());
        let issued = ca
            .issue(
                "node.example",
                Usage::Node,
                SystemTime::now(),
                SystemTime::now() + Duration::from_secs(86_400),
            )
            .expect("issue");
        CertFiles::from_pem(&issued.cert_pem, &issued.key_pem, &ca.cert_pem(), &[])
            .expect("rustls takes the version 1 key");
        // OpenSSL, where the machine has it, reads it too.
        let file = std::env::temp_dir().join(format!("wanmux-v1-key-{}.pem", std::process::id()));
        std::fs::write(&file, &issued.key_pem).expect("write");
        if let Ok(out) = std::process::Command::new("openssl")
            .args(["pkey", "-noout", "-in"])
            .arg(&file)
            .output()
        {
            assert!(
                out.status.success(),
                "openssl pkey: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let _ = std::fs::remove_file(&file);
    }

    #[test]
    fn tls_ca_and_tls_issue_make_files_that_check_out_and_never_overwrite() {
        let dir = std::env::temp_dir().join(format!("wanmux-tls-tools-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (ca, out) = (dir.join("ca"), dir.join("out"));
        make_ca(&ca).expect("tls ca");
        assert!(make_ca(&ca).is_err(), "a second CA over the first");
        let said = issue_files(&ca, "laptop", &out, Usage::Client, 60).expect("tls issue");
        issue_files(&ca, "node.example", &out, Usage::Node, 60).expect("tls issue");
        assert!(
            issue_files(&ca, "laptop", &out, Usage::Client, 60).is_err(),
            "overwrite"
        );
        assert!(
            issue_files(&ca, "../x", &out, Usage::Client, 60).is_err(),
            "a path"
        );
        assert!(
            issue_files(&ca, "no name", &out, Usage::Node, 60).is_err(),
            "a node name"
        );

        let files = |name: &str| {
            CertFiles::read(CertPaths {
                cert: out.join(format!("{name}.pem")),
                key: out.join(format!("{name}.key")),
                ca: ca.join("ca.pem"),
                crls: Vec::new(),
            })
            .expect("readable")
        };
        let client = files("laptop");
        assert!(client.check(Usage::Client, SystemTime::now()).is_empty());
        assert!(files("node.example")
            .check(Usage::Node, SystemTime::now())
            .is_empty());
        let id = spki_hash(&client.chain[0]).expect("an identity");
        assert!(said.contains(&spki_text(&id)), "{said}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            for key in [ca.join("ca.key"), out.join("laptop.key")] {
                let mode = std::fs::metadata(&key).unwrap().permissions().mode();
                assert_eq!(mode & 0o077, 0, "{}", key.display());
            }
        }

        // A ca.pem of another CA than ca.key: refused before anything is written.
        let other = dir.join("other");
        make_ca(&other).expect("another CA");
        std::fs::copy(other.join("ca.pem"), ca.join("ca.pem")).expect("copy");
        let e = issue_files(&ca, "laptop-2", &out, Usage::Client, 60).expect_err("mismatch");
        assert!(e.to_string().contains("ca.pem"), "{e}");
        assert!(!out.join("laptop-2.pem").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn tls_issue_with_a_key_renews_under_the_same_identity() {
        use super::issue::renew_files;
        let dir = std::env::temp_dir().join(format!("wanmux-tls-renew-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (ca, out, renewed) = (dir.join("ca"), dir.join("out"), dir.join("renewed"));
        make_ca(&ca).expect("tls ca");
        let first = issue_files(&ca, "a", &out, Usage::Client, 60).expect("tls issue");
        let key = out.join("a.key");
        let said = renew_files(&ca, "a", &key, &renewed, Usage::Client, 90).expect("renew");
        let id = |text: &str| {
            text.lines()
                .find(|l| l.starts_with("identity: "))
                .map(str::to_owned)
        };
        assert!(id(&first).is_some());
        assert_eq!(id(&said), id(&first), "{said}");
        assert!(!renewed.join("a.key").exists(), "the key is not copied");
        let files = CertFiles::read(CertPaths {
            cert: renewed.join("a.pem"),
            key: key.clone(),
            ca: ca.join("ca.pem"),
            crls: Vec::new(),
        })
        .expect("readable");
        assert!(files.check(Usage::Client, SystemTime::now()).is_empty());
        assert_ne!(
            std::fs::read(renewed.join("a.pem")).unwrap(),
            std::fs::read(out.join("a.pem")).unwrap()
        );
        // Not a key: an error naming the file, nothing written.
        let e = renew_files(&ca, "b", &out.join("a.pem"), &renewed, Usage::Client, 90)
            .expect_err("a certificate is no key");
        assert!(e.to_string().contains("a.pem"), "{e}");
        assert!(!renewed.join("b.pem").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn crl_of(path: &Path) -> crl::Crl {
        let der = CertificateRevocationListDer::from_pem_file(path).expect("a PEM CRL");
        crl::Crl::parse(der.as_ref()).expect("a CRL")
    }

    fn serial_of(path: &Path) -> Vec<u8> {
        let der = CertificateDer::from_pem_file(path).expect("a PEM certificate");
        let leaf = webpki::EndEntityCert::try_from(&der).expect("parses");
        leaf.serial().to_vec()
    }

    #[test]
    fn tls_revoke_keeps_what_the_list_revoked_and_counts_up() {
        use super::issue::revoke_files;
        let dir = std::env::temp_dir().join(format!("wanmux-tls-revoke-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (ca, out, crl) = (dir.join("ca"), dir.join("out"), dir.join("crl/clients.crl"));
        make_ca(&ca).expect("tls ca");
        for name in ["a", "b"] {
            issue_files(&ca, name, &out, Usage::Client, 60).expect("tls issue --client");
        }
        issue_files(&ca, "node.example", &out, Usage::Node, 60).expect("tls issue");
        let (a, b) = (out.join("a.pem"), out.join("b.pem"));

        // No directory for the list yet: an error, and nothing written.
        assert!(revoke_files(&ca, &crl, Some(&a), 30).is_err());
        std::fs::create_dir_all(crl.parent().unwrap()).unwrap();
        let said = revoke_files(&ca, &crl, Some(&a), 30).expect("revoke a");
        assert!(said.starts_with("revoked: serial"), "{said}");
        let one = crl_of(&crl);
        assert_eq!(one.number.as_deref(), Some(&[1][..]));
        assert!(one.revokes(&serial_of(&a)) && !one.revokes(&serial_of(&b)));
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(one.next_update.abs_diff(now + 30 * 86_400) < 60);

        revoke_files(&ca, &crl, Some(&b), 10).expect("revoke b");
        let two = crl_of(&crl);
        assert_eq!(two.number.as_deref(), Some(&[2][..]));
        assert!(two.revokes(&serial_of(&a)) && two.revokes(&serial_of(&b)));
        assert_eq!(
            two.revoked[0], one.revoked[0],
            "a's entry is kept as it was"
        );
        assert!(two.next_update.abs_diff(now + 10 * 86_400) < 60);

        let said = revoke_files(&ca, &crl, Some(&a), 30).expect("a again");
        assert!(said.starts_with("already revoked"), "{said}");
        let said = revoke_files(&ca, &crl, None, 30).expect("signed again");
        assert!(said.contains("2 certificates revoked"), "{said}");
        let four = crl_of(&crl);
        assert_eq!(four.number.as_deref(), Some(&[4][..]));
        assert_eq!(four.revoked, two.revoked);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&crl).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o644);
        }
        let left: Vec<_> = std::fs::read_dir(crl.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("clients.crl")]);

        // The node's files with the list check out; a client of the CA it revoked fails to
        // verify as the node verifies it (rustls with the list).
        let files = CertFiles::read(CertPaths {
            cert: out.join("node.example.pem"),
            key: out.join("node.example.key"),
            ca: ca.join("ca.pem"),
            crls: vec![crl.clone()],
        })
        .expect("readable");
        assert!(files.check(Usage::Node, SystemTime::now()).is_empty());

        // Refused, leaving the list as it was: a node certificate, a certificate or a list of
        // another CA, a ca.pem that is not ca.key's.
        let before = std::fs::read(&crl).unwrap();
        let e = revoke_files(&ca, &crl, Some(&out.join("node.example.pem")), 30).unwrap_err();
        assert!(e.to_string().contains("not a client's certificate"), "{e}");
        let other = dir.join("other");
        make_ca(&other).expect("another CA");
        issue_files(&other, "c", &out, Usage::Client, 60).expect("c");
        let e = revoke_files(&ca, &crl, Some(&out.join("c.pem")), 30).unwrap_err();
        assert!(e.to_string().contains("did not issue"), "{e}");
        let e = revoke_files(&other, &crl, None, 30).unwrap_err();
        assert!(
            e.to_string().contains("not a revocation list of the CA"),
            "{e}"
        );
        std::fs::copy(other.join("ca.pem"), ca.join("ca.pem")).unwrap();
        let fresh = dir.join("crl/fresh.crl");
        let e = revoke_files(&ca, &fresh, None, 30).unwrap_err();
        assert!(e.to_string().contains("ca.pem"), "{e}");
        assert!(!fresh.exists());
        assert_eq!(std::fs::read(&crl).unwrap(), before);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// PEM of a DER revocation list.
    fn crl_pem(der: &[u8]) -> String {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN X509 CRL-----\n{}\n-----END X509 CRL-----\n",
            lines.join("\n")
        )
    }

    #[test]
    fn check_says_when_a_list_is_due_stale_of_another_ca_or_not_signed() {
        let day = Duration::from_secs(86_400);
        let now = SystemTime::now();
        let ca = issue::Ca::generate(now + 365 * day).expect("a CA");
        let other = issue::Ca::generate(now + 365 * day).expect("another CA");
        let node = ca
            .issue("node.example", Usage::Node, now - day, now + 300 * day)
            .expect("a node certificate");
        let client = ca
            .issue("a", Usage::Client, now - day, now + 300 * day)
            .expect("a client certificate");
        let check = |crls: &[String]| {
            let files = CertFiles::from_pem(&node.cert_pem, &node.key_pem, &ca.cert_pem(), crls)
                .expect("PEM");
            files.check(Usage::Node, now)
        };
        let fine = ca.revocation_list(&[client.serial], 30 * day).unwrap();
        assert_eq!(check(std::slice::from_ref(&fine)), vec![]);
        let parsed = crl_of_pem(&fine);
        assert!(parsed.revokes(&client.serial.to_be_bytes()));

        // Due within a week: a warning naming the list, with the date.
        let due = ca.revocation_list(&[], 3 * day).unwrap();
        let p = check(&[fine.clone(), due]);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].which == Which::Crl(1) && !p[0].error && p[0].message.contains("due to be"),
            "{p:?}"
        );
        // Past it: a warning too (the node still applies it).
        let p = ca.revocation_list(&[], 3 * day).unwrap();
        let files =
            CertFiles::from_pem(&node.cert_pem, &node.key_pem, &ca.cert_pem(), &[p]).expect("PEM");
        let p = files.check(Usage::Node, now + 5 * day);
        assert!(
            p.len() == 1 && !p[0].error && p[0].message.contains("was due"),
            "{p:?}"
        );

        // Of another CA only: it revokes nothing, and the node's CA has no list (an error:
        // the node would refuse all its clients).
        let p = check(&[other.revocation_list(&[], 30 * day).unwrap()]);
        assert!(
            p.iter().any(|p| p.which == Which::Crl(0) && !p.error),
            "{p:?}"
        );
        assert!(p.iter().any(|p| p.which == Which::Ca && p.error), "{p:?}");

        // The CA's name but not its signature: an error.
        let mut der = CertificateRevocationListDer::from_pem_slice(fine.as_bytes())
            .unwrap()
            .to_vec();
        let last = der.len() - 1;
        der[last] ^= 1;
        let p = check(&[crl_pem(&der)]);
        assert!(
            p.iter()
                .any(|p| p.which == Which::Crl(0) && p.error && p.message.contains("did not sign")),
            "{p:?}"
        );
    }

    fn crl_of_pem(pem: &str) -> crl::Crl {
        let der = CertificateRevocationListDer::from_pem_slice(pem.as_bytes()).expect("PEM");
        crl::Crl::parse(der.as_ref()).expect("a CRL")
    }
}
