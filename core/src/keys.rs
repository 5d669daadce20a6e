//! Key material: X25519 static keys and pre-shared keys, as 32 bytes written in base64 the way
//! WireGuard writes them. Secrets redact themselves in `Debug` so they never reach a log, are
//! zeroed when dropped (`zeroize`), and compare in constant time (`subtle`); public keys compare
//! in constant time too, so an allow-list lookup does not time how much of a key matched.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use std::fmt;
use subtle::ConstantTimeEq as _;
use zeroize::{Zeroize as _, Zeroizing};

/// Length in bytes of every key and PSK.
pub const KEY_LEN: usize = 32;

/// Why a base64 key did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The text is not base64.
    #[error("not valid base64")]
    Base64,
    /// The text decodes to the wrong number of bytes.
    #[error("decodes to {0} bytes, expected 32")]
    Length(usize),
}

fn decode32(text: &str) -> Result<[u8; KEY_LEN], KeyError> {
    // The decoded bytes may be a secret's: zeroed when dropped.
    let bytes = Zeroizing::new(STANDARD.decode(text.trim()).map_err(|_| KeyError::Base64)?);
    <[u8; KEY_LEN]>::try_from(bytes.as_slice()).map_err(|_| KeyError::Length(bytes.len()))
}

/// A static public key (X25519). Not secret.
#[derive(Clone, Copy, PartialOrd, Ord)]
pub struct PublicKey([u8; KEY_LEN]);

impl std::hash::Hash for PublicKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // As a derive would: the bytes, so equal keys hash equally.
        self.0.hash(state);
    }
}

/// A static private key (X25519). Redacted in `Debug`, zeroed when dropped.
#[derive(Clone)]
pub struct PrivateKey([u8; KEY_LEN]);

/// A pre-shared symmetric key mixed into the Noise handshake. Redacted in `Debug`, zeroed when
/// dropped.
#[derive(Clone)]
pub struct Psk([u8; KEY_LEN]);

macro_rules! constant_time_eq {
    ($t:ident) => {
        impl PartialEq for $t {
            fn eq(&self, other: &Self) -> bool {
                self.0.ct_eq(&other.0).into()
            }
        }

        impl Eq for $t {}
    };
}

constant_time_eq!(PublicKey);
constant_time_eq!(PrivateKey);
constant_time_eq!(Psk);

impl Drop for PrivateKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl Drop for Psk {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

macro_rules! key_common {
    ($t:ident) => {
        impl $t {
            /// Wraps raw key bytes.
            pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
                Self(bytes)
            }

            /// Parses the base64 text form (surrounding whitespace is ignored).
            pub fn from_base64(text: &str) -> Result<Self, KeyError> {
                decode32(text).map(Self)
            }

            /// The base64 text form.
            pub fn to_base64(&self) -> String {
                STANDARD.encode(self.0)
            }

            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
                &self.0
            }
        }

        impl std::str::FromStr for $t {
            type Err = KeyError;
            fn from_str(s: &str) -> Result<Self, KeyError> {
                Self::from_base64(s)
            }
        }
    };
}

key_common!(PublicKey);
key_common!(PrivateKey);
key_common!(Psk);

/// Generates a new X25519 static key pair with snow's key generator (OS randomness).
///
/// # Panics
///
/// If the operating system's random number generator fails, which leaves no safe way on.
#[cfg(feature = "io")]
pub fn generate_keypair() -> (PrivateKey, PublicKey) {
    // The DH function is the same in every wanmux pattern; any of the names would do.
    let params: snow::params::NoiseParams = "Noise_IK_25519_ChaChaPoly_BLAKE2s"
        .parse()
        // A fixed, valid protocol name.
        .expect("valid Noise protocol name");
    let mut pair = snow::Builder::new(params)
        .generate_keypair()
        // snow fails here only when no RNG or X25519 implementation resolves, and its default
        // resolver always provides both.
        .expect("snow resolves an RNG and X25519");
    let private = <[u8; KEY_LEN]>::try_from(pair.private.as_slice())
        // X25519 keys are 32 bytes.
        .expect("X25519 private keys are 32 bytes");
    pair.private.zeroize();
    let public =
        <[u8; KEY_LEN]>::try_from(pair.public.as_slice()).expect("X25519 public keys are 32 bytes");
    (PrivateKey(private), PublicKey(public))
}

#[cfg(feature = "keys")]
impl PrivateKey {
    /// The public half of this private key (X25519), what the peer pins or allow-lists; the
    /// `pubkey` command prints it, like `wg pubkey`.
    pub fn public_key(&self) -> PublicKey {
        use snow::resolvers::CryptoResolver as _;
        let mut dh = snow::resolvers::DefaultResolver
            .resolve_dh(&snow::params::DHChoice::Curve25519)
            // snow's default resolver always provides X25519.
            .expect("snow resolves X25519");
        dh.set(&self.0);
        let public = <[u8; KEY_LEN]>::try_from(dh.pubkey())
            // X25519 public keys are 32 bytes.
            .expect("X25519 public keys are 32 bytes");
        PublicKey(public)
    }
}

/// What `pubkey` prints for the private key in `text` (its base64 form, as `keygen` writes it,
/// surrounding whitespace allowed): `public_key = "…"`. The error never includes the key text.
#[cfg(feature = "io")]
pub fn pubkey(text: &str) -> Result<String, KeyError> {
    let private = PrivateKey::from_base64(text.trim())?;
    Ok(format!("public_key = \"{}\"\n", private.public_key()))
}

#[cfg(feature = "io")]
impl Psk {
    /// Generates a new PSK from the operating system's random number generator.
    ///
    /// # Panics
    ///
    /// If the operating system's random number generator fails.
    pub fn generate() -> Psk {
        use rand::TryRngCore as _;
        let mut key = [0u8; KEY_LEN];
        rand::rngs::OsRng
            .try_fill_bytes(&mut key)
            .expect("the OS random number generator failed");
        Psk(key)
    }
}

/// Writes base64 key text to a new file readable only by its owner (mode 0600 on Unix), the
/// form `private_key_file` and `psk_file` expect. Refuses to overwrite an existing file, so a
/// slip of the shell cannot destroy a key in use.
#[cfg(feature = "io")]
pub fn write_secret_file(path: &std::path::Path, base64: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path)?;
    writeln!(f, "{base64}")?;
    f.sync_all()
}

/// What `keygen` prints: with `psk`, one new PSK; otherwise a new key pair, whose private half
/// goes to `out` (then only the public key is printed) or to the output.
#[cfg(feature = "io")]
pub fn keygen(out: Option<&std::path::Path>, psk: bool) -> std::io::Result<String> {
    if psk {
        let psk = Psk::generate();
        return match out {
            Some(path) => write_secret_file(path, &psk.to_base64()).map(|()| String::new()),
            None => Ok(format!("psk = \"{}\"\n", psk.to_base64())),
        };
    }
    let (private, public) = generate_keypair();
    match out {
        Some(path) => {
            write_secret_file(path, &private.to_base64())?;
            Ok(format!("public_key = \"{public}\"\n"))
        }
        None => Ok(format!(
            "private_key = \"{}\"\npublic_key = \"{public}\"\n",
            private.to_base64()
        )),
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

impl fmt::Debug for Psk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Psk(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trip_and_errors() {
        let k = PublicKey::from_bytes([7; 32]);
        assert_eq!(PublicKey::from_base64(&k.to_base64()).unwrap(), k);
        assert_eq!(PublicKey::from_base64("%%%"), Err(KeyError::Base64));
        assert_eq!(PublicKey::from_base64("AAAA"), Err(KeyError::Length(3)));
    }

    #[test]
    fn keys_compare_by_value() {
        // Constant-time equality is still equality, and equal public keys hash alike (the
        // allow-list is a hash set).
        let (a, b) = ([3u8; 32], [4u8; 32]);
        assert_eq!(PrivateKey::from_bytes(a), PrivateKey::from_bytes(a));
        assert_ne!(PrivateKey::from_bytes(a), PrivateKey::from_bytes(b));
        assert_eq!(Psk::from_bytes(a), Psk::from_bytes(a));
        assert_ne!(Psk::from_bytes(a), Psk::from_bytes(b));
        let mut last = [3u8; 32];
        last[31] = 5;
        assert_ne!(PublicKey::from_bytes(a), PublicKey::from_bytes(last));
        let set: std::collections::HashSet<PublicKey> = [PublicKey::from_bytes(a)].into();
        assert!(set.contains(&PublicKey::from_bytes(a)));
        assert!(!set.contains(&PublicKey::from_bytes(b)));
    }

    #[test]
    fn secrets_are_redacted() {
        let p = PrivateKey::from_bytes([1; 32]);
        let dbg = format!("{p:?}");
        assert!(!dbg.contains(&p.to_base64()));
        assert!(format!("{:?}", Psk::from_bytes([2; 32])).contains("redacted"));
    }

    #[cfg(feature = "io")]
    #[test]
    fn keygen_writes_a_private_file_and_refuses_to_overwrite() {
        let dir = std::env::temp_dir().join(format!("wanmux-keygen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("k.key");
        let _ = std::fs::remove_file(&path);
        let printed = keygen(Some(&path), false).unwrap();
        assert!(printed.starts_with("public_key = "));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(PrivateKey::from_base64(&text).is_ok());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(keygen(Some(&path), false).is_err(), "must not overwrite");
        let both = keygen(None, false).unwrap();
        assert!(both.contains("private_key = ") && both.contains("public_key = "));
        assert!(keygen(None, true).unwrap().starts_with("psk = "));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(feature = "io")]
    #[test]
    fn generated_keys_are_fresh() {
        let (a_priv, a_pub) = generate_keypair();
        let (b_priv, b_pub) = generate_keypair();
        assert_ne!(a_priv, b_priv);
        assert_ne!(a_pub, b_pub);
        assert_ne!(Psk::generate(), Psk::generate());
    }

    #[cfg(feature = "io")]
    #[test]
    fn a_private_key_gives_its_public_key() {
        let (private, public) = generate_keypair();
        assert_eq!(private.public_key(), public);
        // As `pubkey` reads it from a key file: base64 and a newline.
        let text = format!("{}\n", private.to_base64());
        assert_eq!(
            pubkey(&text).unwrap(),
            format!("public_key = \"{public}\"\n")
        );
        // RFC 7748, section 6.1: Alice's key pair.
        let alice = PrivateKey::from_bytes(hex(
            "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
        ));
        let expected = hex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
        assert_eq!(alice.public_key(), PublicKey::from_bytes(expected));
        let err = pubkey("not a key").unwrap_err().to_string();
        assert!(
            !err.contains("not a key"),
            "the error repeats the input: {err}"
        );
    }

    #[cfg(feature = "io")]
    fn hex(s: &str) -> [u8; KEY_LEN] {
        let mut out = [0u8; KEY_LEN];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }
}
