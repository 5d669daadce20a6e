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

/// Length of a client certificate's identity, [`spki_hash`].
pub const SPKI_HASH_LEN: usize = 32;

/// A certificate that expires within this long is worth a warning (`check`, and the daemons at
/// start).
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);

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
        let key = PrivateKeyDer::from_pem_file(&paths.key)
            .map_err(|e| err(Which::Key, pem_message(&paths.key, "a private key", &e)))
            .ok();
        let roots = read_certs(&paths.ca).map_err(|m| err(Which::Ca, m)).ok();
        let mut crls = Vec::new();
        for (i, path) in paths.crls.iter().enumerate() {
            match read_crls(path) {
                Ok(mut c) => crls.append(&mut c),
                Err(m) => err(Which::Crl(i), m),
            }
        }
        match (chain, key, roots) {
            (Some(chain), Some(key), Some(roots)) if problems.is_empty() => Ok(CertFiles {
                chain,
                key,
                roots,
                crls,
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
    /// a warning, with the date.
    pub fn check(&self, usage: Usage, now: SystemTime) -> Vec<Problem> {
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

/// Every certificate of a PEM file; at least one.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
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
            self.key.serialize_pem()
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
            params.not_before = day!(not_before);
            params.not_after = day!(not_after);
            let cert = params.signed_by(&key, &self.cert, &self.key)?;
            let spki = spki_hash(cert.der()).ok_or(Error::CouldNotParseCertificate)?;
            Ok(Issued {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
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
        let issued = ca
            .issue(name, usage, now, now + Duration::from_secs(86_400) * days)
            .map_err(Error::other)?;
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
        crate::keys::write_secret_file(&key, issued.key_pem.trim_end())?;
        let mut text = format!(
            "certificate: {} (cert_file)\nkey: {} (key_file)\nvalid for {} days from today\n",
            cert.display(),
            key.display(),
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
}
