//! `[tls]`: PKI mode's certificate files on a client or a node (`docs/CONFIG.md`, "PKI mode").
//! Every file is read and checked here, so `check` reports a missing file, a key that is not the
//! certificate's, a chain that does not verify or a certificate that has expired (errors) and
//! one that expires within 30 days (a warning), each under its key and line.

use crate::error::Collector;
use crate::secret::resolve;
use serde::Deserialize;
use std::ops::Range;
use std::path::Path;
use toml::Spanned;
use wanmux_core::tls::{CertFiles, CertPaths, Usage, Which};

/// A node's `[tls]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNodeTls {
    cert_file: Option<Spanned<String>>,
    key_file: Option<Spanned<String>>,
    client_ca_file: Option<Spanned<String>>,
    crl_files: Option<Vec<Spanned<String>>>,
}

/// A client's `[tls]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawClientTls {
    ca_file: Option<Spanned<String>>,
    cert_file: Option<Spanned<String>>,
    key_file: Option<Spanned<String>>,
}

impl RawNodeTls {
    /// Reads and checks the node's files; `None` (with the errors recorded) if they cannot be
    /// used.
    pub(crate) fn convert(
        raw: &Spanned<RawNodeTls>,
        errs: &mut Collector<'_>,
        base_dir: &Path,
    ) -> Option<CertFiles> {
        let table = raw.span();
        let t = raw.get_ref();
        let crls = t.crl_files.as_deref().unwrap_or_default();
        let keys = Keys {
            cert: ("tls.cert_file", t.cert_file.as_ref()),
            key: ("tls.key_file", t.key_file.as_ref()),
            ca: ("tls.client_ca_file", t.client_ca_file.as_ref()),
            crls,
        };
        keys.load(
            errs,
            base_dir,
            &table,
            Usage::Node,
            "which clients' certificates the node takes",
        )
    }
}

impl RawClientTls {
    /// Reads and checks the client's files; `None` (with the errors recorded) if they cannot be
    /// used.
    pub(crate) fn convert(
        raw: &Spanned<RawClientTls>,
        errs: &mut Collector<'_>,
        base_dir: &Path,
    ) -> Option<CertFiles> {
        let table = raw.span();
        let t = raw.get_ref();
        let keys = Keys {
            cert: ("tls.cert_file", t.cert_file.as_ref()),
            key: ("tls.key_file", t.key_file.as_ref()),
            ca: ("tls.ca_file", t.ca_file.as_ref()),
            crls: &[],
        };
        keys.load(
            errs,
            base_dir,
            &table,
            Usage::Client,
            "the CA the nodes' certificates lead to",
        )
    }
}

/// The keys of one `[tls]` table.
struct Keys<'r> {
    cert: (&'static str, Option<&'r Spanned<String>>),
    key: (&'static str, Option<&'r Spanned<String>>),
    ca: (&'static str, Option<&'r Spanned<String>>),
    crls: &'r [Spanned<String>],
}

impl Keys<'_> {
    fn load(
        &self,
        errs: &mut Collector<'_>,
        base_dir: &Path,
        table: &Range<usize>,
        usage: Usage,
        ca_means: &str,
    ) -> Option<CertFiles> {
        let mut missing = false;
        let mut path = |(key, v): (&'static str, Option<&Spanned<String>>), what: &str| match v {
            Some(v) => Some(resolve(base_dir, v.get_ref())),
            None => {
                errs.push(
                    key,
                    Some(table.clone()),
                    format!("missing: [tls] needs {key} ({what}): PKI mode takes all of cert_file, key_file and the CA file"),
                );
                missing = true;
                None
            }
        };
        let cert = path(self.cert, "this end's certificate chain, PEM");
        let key = path(self.key, "its private key, PEM");
        let ca = path(self.ca, ca_means);
        if missing {
            return None;
        }
        let key = key?;
        if let Some(mode) = crate::secret::shared_mode(&key) {
            errs.warn(
                self.key.0,
                self.key.1.map(|v| v.span()),
                format!(
                    "{} can be read or changed by other users (mode {mode:o}); `chmod 600 {}`",
                    key.display(),
                    key.display()
                ),
            );
        }
        let paths = CertPaths {
            cert: cert?,
            key,
            ca: ca?,
            crls: self
                .crls
                .iter()
                .map(|c| resolve(base_dir, c.get_ref()))
                .collect(),
        };
        let place = |which: Which| -> (String, Option<Range<usize>>) {
            match which {
                Which::Cert => (self.cert.0.into(), self.cert.1.map(|v| v.span())),
                Which::Key => (self.key.0.into(), self.key.1.map(|v| v.span())),
                Which::Ca => (self.ca.0.into(), self.ca.1.map(|v| v.span())),
                Which::Crl(i) => (
                    format!("tls.crl_files[{i}]"),
                    self.crls.get(i).map(|v| v.span()),
                ),
            }
        };
        let files = match CertFiles::read(paths) {
            Ok(files) => files,
            Err(problems) => {
                for p in problems {
                    let (key, span) = place(p.which);
                    errs.push(key, span, p.message);
                }
                return None;
            }
        };
        let mut ok = true;
        for p in files.check(usage, std::time::SystemTime::now()) {
            let (key, span) = place(p.which);
            if p.error {
                ok = false;
                errs.push(key, span, p.message);
            } else {
                errs.warn(key, span, p.message);
            }
        }
        ok.then_some(files)
    }
}
