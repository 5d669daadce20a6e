//! Loading keys given inline (`private_key = "…"`) or in a file (`private_key_file = "…"`).

use crate::error::Collector;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use toml::Spanned;
use wanmux_core::keys::KeyError;

/// Key files hold 44 characters of base64 and maybe a newline; anything far larger is not a key
/// file (or is `/dev/zero`), so reading stops here.
const MAX_KEY_FILE: u64 = 4096;

/// The outcome of loading one key, which the mode rules need to tell apart: a key that was
/// configured but failed to load already has its error, and must not also be reported missing.
pub(crate) enum Loaded<K> {
    /// Neither the inline key nor the file key was given.
    Absent,
    /// Given, but wrong; the error is recorded.
    Failed,
    /// Given and valid.
    Ok(K),
}

impl<K> Loaded<K> {
    /// True when the key was configured, valid or not.
    pub(crate) fn is_present(&self) -> bool {
        !matches!(self, Loaded::Absent)
    }
}

/// Where one key may come from: `<prefix>.<name>` inline or `<prefix>.<name>_file`.
pub(crate) struct KeySource<'a> {
    /// Key path of the section, e.g. `server`.
    pub(crate) prefix: &'a str,
    /// Key name, e.g. `private_key`.
    pub(crate) name: &'a str,
    pub(crate) inline: Option<&'a Spanned<String>>,
    pub(crate) file: Option<&'a Spanned<String>>,
}

impl KeySource<'_> {
    /// Loads the key, recording any error. Relative file paths resolve against `base_dir`.
    pub(crate) fn load<K>(&self, errs: &mut Collector<'_>, base_dir: &Path) -> Loaded<K>
    where
        K: FromStr<Err = KeyError>,
    {
        let inline_key = format!("{}.{}", self.prefix, self.name);
        let file_key = format!("{}.{}_file", self.prefix, self.name);
        match (self.inline, self.file) {
            (None, None) => Loaded::Absent,
            (Some(_), Some(file)) => {
                errs.push(
                    file_key,
                    Some(file.span()),
                    format!("set either {inline_key} or {}_file, not both", self.name),
                );
                Loaded::Failed
            }
            (Some(text), None) => match K::from_str(text.get_ref()) {
                Ok(k) => Loaded::Ok(k),
                Err(e) => {
                    errs.push(inline_key, Some(text.span()), key_error_message(&e));
                    Loaded::Failed
                }
            },
            (None, Some(file)) => {
                let path = resolve(base_dir, file.get_ref());
                if let Some(mode) = shared_mode(&path) {
                    let msg = format!(
                        "{} can be read or changed by other users (mode {mode:o}); \
                         `chmod 600 {}`",
                        path.display(),
                        path.display()
                    );
                    errs.warn(file_key.clone(), Some(file.span()), msg);
                }
                match read_key_file(&path) {
                    Ok(text) => match K::from_str(&text) {
                        Ok(k) => Loaded::Ok(k),
                        Err(e) => {
                            let msg = format!("{}: {}", path.display(), key_error_message(&e));
                            errs.push(file_key, Some(file.span()), msg);
                            Loaded::Failed
                        }
                    },
                    Err(e) => {
                        let msg = format!("cannot read {}: {e}", path.display());
                        errs.push(file_key, Some(file.span()), msg);
                        Loaded::Failed
                    }
                }
            }
        }
    }
}

/// The message for a key that did not parse. Never includes the key text.
pub(crate) fn key_error_message(e: &KeyError) -> String {
    format!("{e} (expected the base64 form of a 32-byte key)")
}

/// `path` as written if absolute, else relative to `base_dir` (the config file's directory).
pub(crate) fn resolve(base_dir: &Path, path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base_dir.join(p)
    }
}

/// The file's permission bits if its group or other users have any access to it (a secret key
/// file should be `0600`); `None` if not, or if they cannot be read.
#[cfg(unix)]
pub(crate) fn shared_mode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then_some(mode)
}

#[cfg(not(unix))]
pub(crate) fn shared_mode(_path: &Path) -> Option<u32> {
    None
}

/// The file's text, zeroed when dropped (it is a secret key's).
fn read_key_file(path: &Path) -> std::io::Result<zeroize::Zeroizing<String>> {
    wanmux_core::files::regular_file(path)?;
    // Room for all of it at once: growing would leave copies behind in freed memory.
    let mut text = zeroize::Zeroizing::new(String::with_capacity(MAX_KEY_FILE as usize + 1));
    std::fs::File::open(path)?
        .take(MAX_KEY_FILE)
        .read_to_string(&mut text)?;
    Ok(text)
}
