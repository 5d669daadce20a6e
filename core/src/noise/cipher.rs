//! The transport keys of an established link, used in place on the link's own buffers.
//!
//! snow's transport state decrypts from one slice into another: its output must be initialised,
//! so the reader zeroed up to 64 KiB per message for it (and the writer the same for sealing),
//! about 4% of both daemons' CPU at 8 streams on loopback (`perf record` of both daemons). So
//! the handshake takes the Noise split's two keys from snow (`dangerously_get_raw_split`, the
//! `risky-raw-split` feature) and this module applies the same AEADs with ring directly, in
//! place: the reader opens a message where it lies in its read buffer, the writer copies the
//! plaintext into its output and seals it there. The writer's copy stays (the send buffer keeps
//! the plaintext for a resend); the reader's is gone, and so is the zeroing.
//!
//! What is on the wire does not change, and must not: Noise's transport encryption is the
//! cipher's AEAD with the split key, empty associated data, and a 96-bit nonce of four zero
//! bytes and the 64-bit message counter, big-endian for AES-GCM and little-endian for
//! ChaCha20-Poly1305 (the Noise specification, section 12). The tests check every message
//! against snow's own transport state, both ciphers, both directions.

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use zeroize::Zeroizing;

use super::handshake::Cipher;
use super::TAG_LEN;

/// One direction's key: seals, or opens, the messages of that direction.
pub(super) struct DirectionKey {
    key: LessSafeKey,
    cipher: Cipher,
}

impl DirectionKey {
    /// The key for `cipher` from 32 bytes of the Noise split.
    pub(super) fn new(cipher: Cipher, raw: &[u8; 32]) -> Self {
        let algorithm = match cipher {
            Cipher::ChaChaPoly => &aead::CHACHA20_POLY1305,
            Cipher::AesGcm => &aead::AES_256_GCM,
        };
        // Both algorithms take 32-byte keys, so this cannot fail.
        let key = UnboundKey::new(algorithm, raw).expect("a 32-byte key for a 256-bit AEAD");
        Self {
            key: LessSafeKey::new(key),
            cipher,
        }
    }

    fn nonce(&self, counter: u64) -> Nonce {
        let mut bytes = [0u8; 12];
        bytes[4..].copy_from_slice(&match self.cipher {
            Cipher::AesGcm => counter.to_be_bytes(),
            Cipher::ChaChaPoly => counter.to_le_bytes(),
        });
        Nonce::assume_unique_for_key(bytes)
    }

    /// Encrypts `buf[..len - TAG_LEN]` in place and writes the tag into its last [`TAG_LEN`]
    /// bytes. `buf` is the whole message: plaintext followed by room for the tag.
    pub(super) fn seal(&self, counter: u64, buf: &mut [u8]) {
        let split = buf.len() - TAG_LEN;
        let (plain, tag_out) = buf.split_at_mut(split);
        let tag = self
            .key
            .seal_in_place_separate_tag(self.nonce(counter), Aad::empty(), plain)
            // ring fails only for a plaintext over the AEAD's limit (about 256 GiB).
            .expect("a transport message is far below the AEAD's length limit");
        tag_out.copy_from_slice(tag.as_ref());
    }

    /// Decrypts the message `buf` (ciphertext and tag) in place; `Some(n)`: the plaintext is
    /// `buf[..n]`. `None`: it did not authenticate (`buf` is then garbage).
    pub(super) fn open(&self, counter: u64, buf: &mut [u8]) -> Option<usize> {
        self.key
            .open_in_place(self.nonce(counter), Aad::empty(), buf)
            .ok()
            .map(|plain| plain.len())
    }
}

/// Both directions of a link, from the finished handshake.
pub(super) struct TransportKeys {
    pub(super) send: DirectionKey,
    pub(super) recv: DirectionKey,
}

impl TransportKeys {
    /// Splits a finished handshake: the first key of Noise's `Split()` is the initiator's sending
    /// key, the second the responder's. The raw bytes are zeroed once the keys are built.
    pub(super) fn split(
        hs: &mut snow::HandshakeState,
        cipher: Cipher,
    ) -> Result<Self, snow::Error> {
        if !hs.is_handshake_finished() {
            return Err(snow::Error::State(
                snow::error::StateProblem::HandshakeNotFinished,
            ));
        }
        let (first, second) = hs.dangerously_get_raw_split();
        let (first, second) = (Zeroizing::new(first), Zeroizing::new(second));
        let (send, recv) = if hs.is_initiator() {
            (&first, &second)
        } else {
            (&second, &first)
        };
        Ok(Self {
            send: DirectionKey::new(cipher, send),
            recv: DirectionKey::new(cipher, recv),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::noise::handshake::Mode;
    use crate::noise::handshake::Pattern;

    /// An NNpsk0 handshake run with snow to the end, the split of both ends by this module and
    /// by snow's own transport state.
    fn pair(
        cipher: Cipher,
    ) -> (
        TransportKeys,
        TransportKeys,
        snow::StatelessTransportState,
        snow::StatelessTransportState,
    ) {
        let mode = Mode {
            pattern: Pattern::NnPsk0,
            cipher,
        };
        let psk = [7u8; 32];
        let build = || snow::Builder::new(mode.params()).psk(0, &psk).unwrap();
        let mut i = build().build_initiator().unwrap();
        let mut r = build().build_responder().unwrap();
        let (mut a, mut b) = ([0u8; 256], [0u8; 256]);
        let n = i.write_message(b"", &mut a).unwrap();
        r.read_message(&a[..n], &mut b).unwrap();
        let n = r.write_message(b"", &mut a).unwrap();
        i.read_message(&a[..n], &mut b).unwrap();
        let ki = TransportKeys::split(&mut i, cipher).unwrap();
        let kr = TransportKeys::split(&mut r, cipher).unwrap();
        (
            ki,
            kr,
            i.into_stateless_transport_mode().unwrap(),
            r.into_stateless_transport_mode().unwrap(),
        )
    }

    #[test]
    fn every_message_is_what_snow_would_send_and_opens_what_snow_sent() {
        for cipher in [Cipher::ChaChaPoly, Cipher::AesGcm] {
            let (ki, kr, si, sr) = pair(cipher);
            // Counters past 2^32 and past a byte boundary catch a nonce of the wrong byte order.
            for counter in [0u64, 1, 255, 256, 70_000, 1 << 33, u64::MAX - 1] {
                for len in [0usize, 1, 100, 65_519] {
                    let plain: Vec<u8> = (0..len)
                        .map(|i| (i as u64).wrapping_mul(31).wrapping_add(counter) as u8)
                        .collect();
                    // Ours sealed, from the initiator: byte for byte snow's message.
                    let mut ours = plain.clone();
                    ours.resize(len + TAG_LEN, 0);
                    ki.send.seal(counter, &mut ours);
                    let mut theirs = vec![0u8; len + TAG_LEN];
                    let n = si.write_message(counter, &plain, &mut theirs).unwrap();
                    assert_eq!(
                        &ours[..],
                        &theirs[..n],
                        "{cipher:?} counter {counter} len {len}"
                    );
                    // snow's, from the responder, opened by ours at the initiator.
                    let mut msg = vec![0u8; len + TAG_LEN];
                    let n = sr.write_message(counter, &plain, &mut msg).unwrap();
                    msg.truncate(n);
                    assert_eq!(ki.recv.open(counter, &mut msg), Some(len));
                    assert_eq!(&msg[..len], &plain[..]);
                    // Ours from the responder, opened by snow at the initiator.
                    let mut ours = plain.clone();
                    ours.resize(len + TAG_LEN, 0);
                    kr.send.seal(counter, &mut ours);
                    let mut out = vec![0u8; len + TAG_LEN];
                    let n = si.read_message(counter, &ours, &mut out).unwrap();
                    assert_eq!(&out[..n], &plain[..]);
                }
            }
        }
    }

    #[test]
    fn a_changed_byte_or_counter_does_not_open() {
        for cipher in [Cipher::ChaChaPoly, Cipher::AesGcm] {
            let (ki, kr, _, _) = pair(cipher);
            let mut msg = b"frames".to_vec();
            msg.resize(6 + TAG_LEN, 0);
            ki.send.seal(5, &mut msg);
            for at in 0..msg.len() {
                let mut bad = msg.clone();
                bad[at] ^= 1;
                assert_eq!(kr.recv.open(5, &mut bad), None, "byte {at} changed");
            }
            assert_eq!(kr.recv.open(6, &mut msg.clone()), None, "another counter");
            // The other direction's key does not open it either.
            assert_eq!(
                ki.recv.open(5, &mut msg.clone()),
                None,
                "the wrong direction"
            );
            assert_eq!(kr.recv.open(5, &mut msg), Some(6));
            assert_eq!(&msg[..6], b"frames");
        }
    }

    #[test]
    fn an_unfinished_handshake_does_not_split() {
        let mode = Mode {
            pattern: Pattern::NnPsk0,
            cipher: Cipher::AesGcm,
        };
        let mut hs = snow::Builder::new(mode.params())
            .psk(0, &[1u8; 32])
            .unwrap()
            .build_initiator()
            .unwrap();
        assert!(TransportKeys::split(&mut hs, Cipher::AesGcm).is_err());
    }
}
