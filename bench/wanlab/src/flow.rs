//! 5-tuple extraction from raw IPv4/IPv6 packets, for the per-flow limiter.
//!
//! Packets come from the kernel, but the parser still treats them as untrusted: every access is
//! bounds-checked and a malformed packet simply has no flow key.

/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;

/// A transport 5-tuple. IPv4 addresses are stored in the first four bytes of the 16-byte fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Source address bytes.
    pub src: [u8; 16],
    /// Destination address bytes.
    pub dst: [u8; 16],
    /// IP protocol number.
    pub proto: u8,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
}

/// Extracts the 5-tuple of a TCP or UDP packet. Returns `None` for other protocols, for
/// non-first fragments, for IPv6 packets with extension headers before the transport header, and
/// for anything truncated or malformed.
pub fn parse_flow(packet: &[u8]) -> Option<FlowKey> {
    let version = packet.first()? >> 4;
    let (proto, src, dst, l4) = match version {
        4 => {
            let ihl = usize::from(packet.first()? & 0x0f) * 4;
            if ihl < 20 {
                return None;
            }
            let frag = u16::from_be_bytes([*packet.get(6)?, *packet.get(7)?]) & 0x1fff;
            if frag != 0 {
                return None;
            }
            let mut src = [0u8; 16];
            let mut dst = [0u8; 16];
            src[..4].copy_from_slice(packet.get(12..16)?);
            dst[..4].copy_from_slice(packet.get(16..20)?);
            (*packet.get(9)?, src, dst, ihl)
        }
        6 => {
            let mut src = [0u8; 16];
            let mut dst = [0u8; 16];
            src.copy_from_slice(packet.get(8..24)?);
            dst.copy_from_slice(packet.get(24..40)?);
            (*packet.get(6)?, src, dst, 40)
        }
        _ => return None,
    };
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return None;
    }
    let ports = packet.get(l4..l4 + 4)?;
    Some(FlowKey {
        src,
        dst,
        proto,
        sport: u16::from_be_bytes([ports[0], ports[1]]),
        dport: u16::from_be_bytes([ports[2], ports[3]]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal IPv4 header (no options) followed by `l4` bytes.
    fn ipv4(proto: u8, sport: u16, dport: u16) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x45;
        p[9] = proto;
        p[12..16].copy_from_slice(&[10, 77, 1, 2]);
        p[16..20].copy_from_slice(&[10, 77, 2, 2]);
        p[20..22].copy_from_slice(&sport.to_be_bytes());
        p[22..24].copy_from_slice(&dport.to_be_bytes());
        p
    }

    #[test]
    fn parses_ipv4_tcp() {
        let key = parse_flow(&ipv4(PROTO_TCP, 40000, 5201)).unwrap();
        assert_eq!(key.proto, PROTO_TCP);
        assert_eq!((key.sport, key.dport), (40000, 5201));
        assert_eq!(&key.src[..4], &[10, 77, 1, 2]);
    }

    #[test]
    fn rejects_icmp_fragments_and_garbage() {
        assert!(parse_flow(&ipv4(1, 0, 0)).is_none());
        let mut frag = ipv4(PROTO_TCP, 1, 2);
        frag[7] = 1;
        assert!(parse_flow(&frag).is_none());
        for len in 0..24 {
            assert!(parse_flow(&ipv4(PROTO_TCP, 1, 2)[..len]).is_none());
        }
        assert!(parse_flow(&[0x4f; 30]).is_none());
        assert!(parse_flow(&[0x60; 41]).is_none());
    }
}
