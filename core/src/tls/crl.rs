//! Certificate revocation lists as `tls revoke` updates them and `check` looks at them.
//!
//! webpki parses a CRL and lists what it revokes, but keeps to itself what an issuer needs to
//! write the next one (the CRL number) and what `check` warns about (the next update), and it
//! checks the signature only while it verifies a certificate. [`Crl::parse`] has webpki parse the
//! list (so a CRL read here is one the node takes) and reads those few fields with a small DER
//! reader; [`Crl::signed_by`] checks the signature with webpki's algorithms.
//!
//! `tls revoke` keeps no state beside the CRL file: the file itself, once its signature checks
//! out against the CA, is the list of revoked serials and the last CRL number.

use rustls::pki_types::CertificateDer;

const INTEGER: u8 = 0x02;
const BIT_STRING: u8 = 0x03;
const OCTET_STRING: u8 = 0x04;
const OID: u8 = 0x06;
const BOOLEAN: u8 = 0x01;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
const SEQUENCE: u8 = 0x30;
const EXTENSIONS: u8 = 0xa0;
/// id-ce-cRLNumber, 2.5.29.20, as DER contents.
const CRL_NUMBER_OID: &[u8] = &[0x55, 0x1d, 0x14];
/// RFC 5280 §5.2.3: a CRL number has at most 20 octets.
pub const MAX_CRL_NUMBER_LEN: usize = 20;

/// A revocation list: what it revokes, its dates and number, and what its signature covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Crl {
    /// The issuer's name: DER contents of the Name (as webpki's `TrustAnchor::subject`).
    pub issuer: Vec<u8>,
    /// When it was made, seconds since the Unix epoch.
    pub this_update: u64,
    /// When its issuer promised the next one, seconds since the Unix epoch.
    pub next_update: u64,
    /// Its CRL number, big-endian without leading zeros (`None`: the list has none).
    pub number: Option<Vec<u8>>,
    /// The certificates it revokes.
    pub revoked: Vec<Revoked>,
    tbs: Vec<u8>,
    signature_alg: Vec<u8>,
    signature: Vec<u8>,
}

/// One revoked certificate of a [`Crl`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revoked {
    /// Its serial number: the DER contents of the INTEGER.
    pub serial: Vec<u8>,
    /// When it was revoked, seconds since the Unix epoch.
    pub at: u64,
    /// The reason code (RFC 5280 §5.3.1), if the list gives one.
    pub reason: Option<u8>,
    /// Since when the certificate was known or suspected to be bad (its invalidity date), if
    /// the list gives it; seconds since the Unix epoch.
    pub invalid_since: Option<u64>,
}

impl Crl {
    /// Parses a DER revocation list: webpki must take it, and its dates and extensions must
    /// read.
    pub fn parse(der: &[u8]) -> Result<Crl, String> {
        let list = webpki::BorrowedCertRevocationList::from_der(der)
            .map_err(|e| format!("a revocation list does not parse: {e}"))?;
        let mut revoked = Vec::new();
        for r in &list {
            let r = r.map_err(|e| format!("a revoked certificate does not parse: {e}"))?;
            revoked.push(Revoked {
                serial: r.serial_number.to_vec(),
                at: r.revocation_date.as_secs(),
                reason: r.reason_code.map(|c| c as u8),
                invalid_since: r.invalidity_date.map(|t| t.as_secs()),
            });
        }
        let mut crl = Crl::fields(der).ok_or("a revocation list's fields do not read")?;
        crl.revoked = revoked;
        Ok(crl)
    }

    /// The fields webpki does not give; `revoked` left empty.
    fn fields(der: &[u8]) -> Option<Crl> {
        let mut input = der;
        let mut list = expect(&mut input, SEQUENCE)?;
        let tbs = next(&mut list)?;
        let signature_alg = expect(&mut list, SEQUENCE)?;
        let signature = bit_string(expect(&mut list, BIT_STRING)?)?;
        if tbs.tag != SEQUENCE {
            return None;
        }
        let mut t = tbs.value;
        expect(&mut t, INTEGER)?;
        expect(&mut t, SEQUENCE)?;
        let issuer = expect(&mut t, SEQUENCE)?;
        let this_update = time(next(&mut t)?)?;
        let next_update = time(next(&mut t)?)?;
        let mut number = None;
        while let Some(field) = next(&mut t) {
            if field.tag != EXTENSIONS {
                continue;
            }
            let mut outer = field.value;
            let mut extensions = expect(&mut outer, SEQUENCE)?;
            while !extensions.is_empty() {
                let mut ext = expect(&mut extensions, SEQUENCE)?;
                let oid = expect(&mut ext, OID)?;
                let mut value = next(&mut ext)?;
                if value.tag == BOOLEAN {
                    value = next(&mut ext)?;
                }
                if value.tag != OCTET_STRING || oid != CRL_NUMBER_OID {
                    continue;
                }
                let mut inner = value.value;
                let n = expect(&mut inner, INTEGER)?;
                let start = n.iter().position(|&b| b != 0).unwrap_or(n.len());
                number = Some(n[start..].to_vec());
            }
        }
        Some(Crl {
            issuer: issuer.to_vec(),
            this_update,
            next_update,
            number,
            revoked: Vec::new(),
            tbs: tbs.whole.to_vec(),
            signature_alg: signature_alg.to_vec(),
            signature: signature.to_vec(),
        })
    }

    /// Whether the CA certificate `ca` names this list's issuer.
    pub fn issued_by(&self, ca: &CertificateDer<'_>) -> bool {
        webpki::anchor_from_trusted_cert(ca).is_ok_and(|a| a.subject.as_ref() == self.issuer)
    }

    /// Whether the CA certificate `ca` issued this list: it names the issuer and its key
    /// verifies the signature.
    pub fn signed_by(&self, ca: &CertificateDer<'_>) -> bool {
        let Ok(anchor) = webpki::anchor_from_trusted_cert(ca) else {
            return false;
        };
        if anchor.subject.as_ref() != self.issuer {
            return false;
        }
        let mut spki = anchor.subject_public_key_info.as_ref();
        let (Some(key_alg), Some(key)) = (
            expect(&mut spki, SEQUENCE),
            expect(&mut spki, BIT_STRING).and_then(bit_string),
        ) else {
            return false;
        };
        webpki::ALL_VERIFICATION_ALGS.iter().any(|alg| {
            alg.public_key_alg_id().as_ref() == key_alg
                && alg.signature_alg_id().as_ref() == self.signature_alg.as_slice()
                && alg
                    .verify_signature(key, &self.tbs, &self.signature)
                    .is_ok()
        })
    }

    /// Whether it revokes the certificate of serial `serial` (DER contents of the INTEGER).
    pub fn revokes(&self, serial: &[u8]) -> bool {
        self.revoked.iter().any(|r| same_serial(&r.serial, serial))
    }
}

/// Whether two serials (DER contents of positive INTEGERs) are the same number.
pub fn same_serial(a: &[u8], b: &[u8]) -> bool {
    strip_zeros(a) == strip_zeros(b)
}

/// `n` + 1, big-endian without leading zeros; `None` past [`MAX_CRL_NUMBER_LEN`] octets (a
/// sign octet included).
pub fn next_number(n: &[u8]) -> Option<Vec<u8>> {
    let mut v = strip_zeros(n).to_vec();
    let mut i = v.len();
    loop {
        if i == 0 {
            v.insert(0, 1);
            break;
        }
        i -= 1;
        if v[i] == 0xff {
            v[i] = 0;
        } else {
            v[i] += 1;
            break;
        }
    }
    let len = v.len() + usize::from(v[0] >= 0x80);
    (len <= MAX_CRL_NUMBER_LEN).then_some(v)
}

/// A big-endian number for messages: decimal when it fits 128 bits, else hex.
pub fn number_text(n: &[u8]) -> String {
    let n = strip_zeros(n);
    if n.len() <= 16 {
        let v = n.iter().fold(0u128, |v, &b| (v << 8) | u128::from(b));
        v.to_string()
    } else {
        let hex: String = n.iter().map(|b| format!("{b:02x}")).collect();
        format!("0x{hex}")
    }
}

fn strip_zeros(n: &[u8]) -> &[u8] {
    let start = n.iter().position(|&b| b != 0).unwrap_or(n.len());
    &n[start..]
}

/// One DER element.
struct Tlv<'a> {
    tag: u8,
    value: &'a [u8],
    whole: &'a [u8],
}

/// The next element of `input` (low tag numbers and lengths of up to 4 octets, all a CRL
/// needs), or `None` if it is cut short.
fn next<'a>(input: &mut &'a [u8]) -> Option<Tlv<'a>> {
    let data = *input;
    let (&tag, rest) = data.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (bytes, after) = rest.split_at(n);
        rest = after;
        bytes.iter().fold(0usize, |l, &b| (l << 8) | usize::from(b))
    };
    if rest.len() < len {
        return None;
    }
    let header = data.len() - rest.len();
    let (value, after) = rest.split_at(len);
    *input = after;
    Some(Tlv {
        tag,
        value,
        whole: &data[..header + len],
    })
}

/// The contents of the next element, which must have tag `tag`.
fn expect<'a>(input: &mut &'a [u8], tag: u8) -> Option<&'a [u8]> {
    next(input).filter(|t| t.tag == tag).map(|t| t.value)
}

/// A BIT STRING's bits, whole octets only.
fn bit_string(v: &[u8]) -> Option<&[u8]> {
    match v.split_first() {
        Some((0, bits)) => Some(bits),
        _ => None,
    }
}

/// A UTCTime or GeneralizedTime (`Z` only, as RFC 5280 has them), in seconds since the epoch.
fn time(t: Tlv<'_>) -> Option<u64> {
    let s = t.value;
    if !s
        .iter()
        .take(s.len().saturating_sub(1))
        .all(u8::is_ascii_digit)
        || s.last() != Some(&b'Z')
    {
        return None;
    }
    let num = |b: &[u8]| b.iter().fold(0i64, |v, &d| v * 10 + i64::from(d - b'0'));
    let (year, rest) = match (t.tag, s.len()) {
        (UTC_TIME, 13) => {
            let yy = num(&s[..2]);
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &s[2..])
        }
        (GENERALIZED_TIME, 15) => (num(&s[..4]), &s[4..]),
        _ => return None,
    };
    let (month, day) = (num(&rest[0..2]), num(&rest[2..4]));
    let (h, m, sec) = (num(&rest[4..6]), num(&rest[6..8]), num(&rest[8..10]));
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    let secs = days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + sec;
    u64::try_from(secs).ok()
}

/// Days since the Unix epoch of a date (Howard Hinnant's days-from-civil).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crl_numbers_count_up_to_twenty_octets() {
        assert_eq!(next_number(&[]), Some(vec![1]));
        assert_eq!(next_number(&[0, 0, 7]), Some(vec![8]));
        assert_eq!(next_number(&[0xff]), Some(vec![1, 0]));
        assert_eq!(next_number(&[1, 0xff, 0xff]), Some(vec![2, 0, 0]));
        assert_eq!(next_number(&[0x7f; 20]).map(|v| v.len()), Some(20));
        assert_eq!(next_number(&[0xff; 19]).map(|v| v.len()), Some(20));
        assert_eq!(next_number(&[0xff; 20]), None, "21 octets");
        let mut top = [0xff; 20];
        top[0] = 0x7f;
        assert_eq!(next_number(&top), None, "20 octets and a sign octet");
        assert_eq!(number_text(&[1, 0]), "256");
        assert_eq!(number_text(&[0xab; 17]).len(), 2 + 34);
    }

    #[test]
    fn times_read_as_rfc_5280_writes_them() {
        let t = |tag, s: &str| {
            time(Tlv {
                tag,
                value: s.as_bytes(),
                whole: &[],
            })
        };
        assert_eq!(t(UTC_TIME, "700101000000Z"), Some(0));
        assert_eq!(t(UTC_TIME, "000301000000Z"), Some(951_868_800));
        assert_eq!(t(GENERALIZED_TIME, "20491231235959Z"), Some(2_524_607_999));
        assert_eq!(t(GENERALIZED_TIME, "20500101000000Z"), Some(2_524_608_000));
        assert_eq!(t(UTC_TIME, "700101000000+0100"), None);
        assert_eq!(t(UTC_TIME, "70010100000+Z"), None);
        assert_eq!(t(UTC_TIME, "701301000000Z"), None);
        assert_eq!(t(OCTET_STRING, "700101000000Z"), None);
    }

    #[test]
    fn cut_short_elements_are_none_never_a_panic() {
        let der = [SEQUENCE, 0x84, 0xff, 0xff, 0xff, 0xff, 0x00];
        for end in 0..=der.len() {
            let mut input = &der[..end];
            assert!(next(&mut input).is_none());
            assert!(Crl::parse(&der[..end]).is_err());
        }
    }
}
