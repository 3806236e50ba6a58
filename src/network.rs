//! Client networks: CIDR ranges (`match.source_ips`) and the peer address Envoy reports
//! (`source.address`, `ip:port` or `[ipv6]:port`).
//!
//! Every address is held as 128 bits, IPv4 as its IPv4-mapped IPv6 form (`::ffff:a.b.c.d`), so
//! an IPv4 range also holds a client Envoy reports on a dual-stack socket as `[::ffff:a.b.c.d]`.

use std::net::IpAddr;

/// `text` as an IP address: std's parser (`IpAddr::from_str`), strict (no zone, no brackets,
/// no leading zeros in IPv4, no surrounding spaces).
pub fn parse_ip(text: &str) -> Option<IpAddr> {
    text.parse().ok()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: u128,
    mask: u128,
}

fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

impl Cidr {
    /// `a.b.c.d/n`, `x:y::z/n`, or a single address (a /32 or /128). Bits set past the prefix
    /// are an error: `10.1.2.3/8` is more likely a typo than a way to write `10.0.0.0/8`.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, len) = match text.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (text, None),
        };
        let ip = parse_ip(addr)
            .ok_or_else(|| format!("\"{text}\" is not an IPv4 or IPv6 address or CIDR range"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = match len {
            None => max,
            Some(len) => len
                .parse::<u32>()
                .ok()
                .filter(|&n| n <= max && !len.starts_with('+'))
                .ok_or_else(|| format!("\"{text}\": the prefix length must be 0 to {max}"))?,
        };
        // IPv4 lives in the last 32 of the 128 bits.
        let prefix = prefix + (128 - max);
        let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
        let network = bits(ip);
        if network & !mask != 0 {
            // No address formatting here: it would cost the .wasm several KiB.
            return Err(format!(
                "\"{text}\" has bits set past its prefix length: write the range's first address"
            ));
        }
        Ok(Cidr { network, mask })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        bits(ip) & self.mask == self.network
    }

    /// `a.b.c.d/n` or `x::/n`, for tools (native only: formatting addresses would cost the
    /// `.wasm` several KiB).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn to_text(&self) -> String {
        let prefix = self.mask.leading_ones();
        let v6 = std::net::Ipv6Addr::from(self.network);
        match v6.to_ipv4_mapped().filter(|_| prefix >= 96) {
            Some(v4) => format!("{v4}/{}", prefix - 96),
            None => format!("{v6}/{prefix}"),
        }
    }
}

/// The IP of an Envoy address property: `1.2.3.4:5678`, `[::1]:5678`, or an address without a
/// port. `None` for anything else (a pipe path, garbage).
pub fn peer_ip(address: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(address).ok()?;
    let host = match text.strip_prefix('[') {
        Some(rest) => rest.split(']').next()?,
        // One colon: IPv4 with a port; more: a bare IPv6 address.
        None if text.matches(':').count() == 1 => text.split(':').next()?,
        None => text,
    };
    parse_ip(host)
}

#[cfg(test)]
mod tests {
    /// The forms `parse_ip` (std's parser) accepts and refuses, as the own parser it replaced
    /// did (which was checked against std over 200,000 inputs).
    #[test]
    fn accepted_and_refused_address_forms() {
        for ok in [
            "1.2.3.4",
            "0.0.0.0",
            "255.255.255.255",
            "::",
            "::1",
            "1::",
            "1:2:3:4:5:6:7:8",
            "1:2:3:4:5:6:7::",
            "::2:3:4:5:6:7:8",
            "1::8",
            "::ffff:1.2.3.4",
            "::1.2.3.4",
            "1:2:3:4:5:6:1.2.3.4",
            "1:2:3:4:5::1.2.3.4",
            "0001:2::",
            "ABCD:ef01::",
            "1::2:3:4:5:6:7",
            "::0.0.0.0",
            "a:b:c:d:e:f:1.2.3.4",
        ] {
            assert!(super::parse_ip(ok).is_some(), "{ok:?} refused");
        }
        for bad in [
            "",
            "256.1.1.1",
            "01.2.3.4",
            "1.2.3",
            "1.2.3.4.5",
            "1.2.3.04",
            "1.2.3.-4",
            "+1.2.3.4",
            "1.2.3.4 ",
            " 1.2.3.4",
            "1234.1.1.1",
            "1:2:3:4:5:6:7:8:9",
            "1:2:3:4:5:6:7:1.2.3.4",
            "1.2.3.4::",
            "12345::",
            ":::",
            "1:::2",
            "::1::",
            "1:2",
            ":1::",
            "1::2:",
            "[::1]",
            "fe80::1%eth0",
            "::ffff:01.2.3.4",
            "g::",
            "1::2:3:4:5:6:7:8",
        ] {
            assert_eq!(super::parse_ip(bad), None, "{bad:?} accepted");
        }
        assert_eq!(
            super::parse_ip("::ffff:1.2.3.4"),
            Some(IpAddr::V6(std::net::Ipv6Addr::new(
                0, 0, 0, 0, 0, 0xffff, 0x102, 0x304
            )))
        );
    }

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_hold_their_addresses() {
        let v4 = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(v4.contains(ip("10.255.1.2")));
        assert!(!v4.contains(ip("11.0.0.1")));
        assert!(v4.contains(ip("::ffff:10.1.2.3")), "IPv4-mapped IPv6");
        assert!(
            !v4.contains(ip("::a01:203")),
            "IPv4-compatible is another address"
        );
        let one = Cidr::parse("192.168.1.7").unwrap();
        assert!(one.contains(ip("192.168.1.7")) && !one.contains(ip("192.168.1.8")));
        let all4 = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all4.contains(ip("1.2.3.4")) && !all4.contains(ip("2001:db8::1")));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")) && !v6.contains(ip("2001:db9::1")));
        let all = Cidr::parse("::/0").unwrap();
        assert!(all.contains(ip("2001:db8::1")) && all.contains(ip("1.2.3.4")));
        assert!(Cidr::parse("::1/128").unwrap().contains(ip("::1")));
    }

    #[test]
    fn ranges_print_as_written() {
        for text in [
            "10.0.0.0/8",
            "192.168.1.7/32",
            "2001:db8::/32",
            "::/0",
            "0.0.0.0/0",
        ] {
            assert_eq!(Cidr::parse(text).unwrap().to_text(), text);
        }
    }

    #[test]
    fn bad_ranges_say_why() {
        assert_eq!(
            Cidr::parse("10.1.2.3/8").unwrap_err(),
            "\"10.1.2.3/8\" has bits set past its prefix length: write the range's first address"
        );
        assert_eq!(
            Cidr::parse("10.0.0.0/33").unwrap_err(),
            "\"10.0.0.0/33\": the prefix length must be 0 to 32"
        );
        assert_eq!(
            Cidr::parse("2001:db8::1/16").unwrap_err(),
            "\"2001:db8::1/16\" has bits set past its prefix length: write the range's first address"
        );
        for bad in [
            "",
            "10.0.0",
            "host.example",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "1::/x",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn peer_addresses_as_envoy_reports_them() {
        assert_eq!(peer_ip(b"127.0.0.1:50312"), Some(ip("127.0.0.1")));
        assert_eq!(peer_ip(b"[::1]:50312"), Some(ip("::1")));
        assert_eq!(peer_ip(b"[::ffff:10.0.0.1]:1"), Some(ip("::ffff:10.0.0.1")));
        assert_eq!(peer_ip(b"2001:db8::1"), Some(ip("2001:db8::1")));
        assert_eq!(peer_ip(b"10.0.0.1"), Some(ip("10.0.0.1")));
        assert_eq!(peer_ip(b"/tmp/envoy.sock"), None);
        assert_eq!(peer_ip(b"\xff:1"), None);
        assert_eq!(peer_ip(b""), None);
    }
}
