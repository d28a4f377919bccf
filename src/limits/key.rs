//! A rate limit's key as one 64-bit number, hashed from the request's bytes (no copy, no
//! allocation). SipHash-1-3 with fixed keys: the same number in every instance and version, so
//! fleet-wide limits name the same key in their store; the table's bucket choice adds a
//! per-process secret on top, so the fixed keys give clients no handle on the local table.

use siphasher::sip::SipHasher13;
use std::hash::Hasher;
use std::net::IpAddr;

const K0: u64 = 0x7269_6e67_7072_6f78; // "ringprox"
const K1: u64 = 0x796c_696d_6974_7321; // "ylimits!"

/// The key of these parts, in order (each length-prefixed, so `("ab", "c")` is not `("a",
/// "bc")`); never 0, which marks an empty slot.
pub fn of(parts: &[&[u8]]) -> u64 {
    let mut h = SipHasher13::new_with_keys(K0, K1);
    for part in parts {
        h.write(&(part.len() as u32).to_le_bytes());
        h.write(part);
    }
    h.finish().max(1)
}

/// An address as the bytes keys are made of: 4 for IPv4 (an IPv4-mapped IPv6 address
/// included), 16 for IPv6.
pub fn ip_octets(ip: IpAddr, buf: &mut [u8; 16]) -> &[u8] {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            buf[..4].copy_from_slice(&v4.octets());
            &buf[..4]
        }
        IpAddr::V6(v6) => {
            *buf = v6.octets();
            &buf[..]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_and_parts_are_delimited() {
        // The same number in every process and build: fleet instances share store keys.
        assert_eq!(of(&[b"10.0.0.1"]), of(&[b"10.0.0.1"]));
        assert_ne!(of(&[b"ab", b"c"]), of(&[b"a", b"bc"]));
        // Pinned: a change would split a fleet running two versions into two limits.
        assert_eq!(of(&[b"x"]), 0x1a05_15ef_7c1b_23ae);
        let mut a = [0u8; 16];
        let mut b = [0u8; 16];
        let v4 = ip_octets("10.1.2.3".parse().unwrap(), &mut a).to_vec();
        assert_eq!(v4, [10, 1, 2, 3]);
        assert_eq!(
            ip_octets("::ffff:10.1.2.3".parse().unwrap(), &mut b),
            &v4[..]
        );
    }
}
