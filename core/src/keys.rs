//! Key material: X25519 static keys and pre-shared keys, as 32 bytes written in base64 the way
//! WireGuard writes them. Secrets redact themselves in `Debug` so they never reach a log.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use std::fmt;

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
    let bytes = STANDARD.decode(text.trim()).map_err(|_| KeyError::Base64)?;
    <[u8; KEY_LEN]>::try_from(bytes.as_slice()).map_err(|_| KeyError::Length(bytes.len()))
}

/// A static public key (X25519). Not secret.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; KEY_LEN]);

/// A static private key (X25519). Redacted in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKey([u8; KEY_LEN]);

/// A pre-shared symmetric key mixed into the Noise handshake. Redacted in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Psk([u8; KEY_LEN]);

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
    fn secrets_are_redacted() {
        let p = PrivateKey::from_bytes([1; 32]);
        let dbg = format!("{p:?}");
        assert!(!dbg.contains(&p.to_base64()));
        assert!(format!("{:?}", Psk::from_bytes([2; 32])).contains("redacted"));
    }
}
