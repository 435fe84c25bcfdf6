//! Which IP addresses are not public destinations, and address blocks.
//!
//! The executor's egress proxy and the frontend's upload check both refuse
//! special addresses; one table here keeps their rules from drifting apart
//! (an SSRF filter that forgets one form, such as `::ffff:127.0.0.1` or a NAT64
//! address, is the usual way past it).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An address block, e.g. `127.0.0.0/8` or `fd00::/8`, as configured by an
/// operator to open private destinations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The block of `ip` alone; an address with an embedded IPv4 address (see
    /// [`canonical`]) becomes that IPv4 address.
    pub fn single(ip: IpAddr) -> Cidr {
        let network = canonical(ip);
        let prefix = if network.is_ipv4() { 32 } else { 128 };
        Cidr { network, prefix }
    }

    /// Whether `ip` lies inside.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_bits_v4(ip, self.prefix) == u32::from(net),
            (IpAddr::V6(net), IpAddr::V6(ip)) => prefix_bits_v6(ip, self.prefix) == u128::from(net),
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// `address/prefix` with no host bits set, or a bare address (a block of one).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = text.split_once('/').unwrap_or((text, ""));
        let network: IpAddr = addr
            .parse()
            .map_err(|_| CidrError::NotAnAddress(addr.to_owned()))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            "" => max,
            p => p
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= max && !prefix.starts_with('+'))
                .ok_or(CidrError::Prefix { max })?,
        };
        let exact = match network {
            IpAddr::V4(v4) => prefix_bits_v4(v4, prefix) == u32::from(v4),
            IpAddr::V6(v6) => prefix_bits_v6(v6, prefix) == u128::from(v6),
        };
        if !exact {
            return Err(CidrError::HostBits { network, prefix });
        }
        Ok(Cidr { network, prefix })
    }
}

fn prefix_bits_v4(ip: Ipv4Addr, prefix: u8) -> u32 {
    u32::from(ip)
        .checked_shr(32 - u32::from(prefix))
        .map_or(0, |bits| bits << (32 - u32::from(prefix)))
}

fn prefix_bits_v6(ip: Ipv6Addr, prefix: u8) -> u128 {
    u128::from(ip)
        .checked_shr(128 - u32::from(prefix))
        .map_or(0, |bits| bits << (128 - u32::from(prefix)))
}

/// Why an address is not a public destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Special {
    /// `0.0.0.0` or `::` (Linux connects them to the local host).
    Unspecified,
    /// 127.0.0.0/8, ::1.
    Loopback,
    /// RFC 1918 blocks and unique local fc00::/7.
    Private,
    /// 100.64.0.0/10, carrier-grade NAT (RFC 6598).
    SharedAddressSpace,
    /// 169.254.0.0/16, fe80::/10.
    LinkLocal,
    /// A cloud provider's instance metadata service (169.254.169.254, fd00:ec2::254).
    Metadata,
    /// 224.0.0.0/4, ff00::/8.
    Multicast,
    /// 255.255.255.255.
    Broadcast,
    /// TEST-NET blocks, 2001:db8::/32, 3fff::/20.
    Documentation,
    /// Any other special-purpose block (IANA registries, RFC 6890).
    Reserved,
}

impl Special {
    /// "a loopback", as in "127.0.0.1 is a loopback address".
    pub fn article(self) -> &'static str {
        match self {
            Special::Unspecified => "an unspecified",
            Special::Loopback => "a loopback",
            Special::Private => "a private",
            Special::SharedAddressSpace => "a shared (carrier-grade NAT)",
            Special::LinkLocal => "a link-local",
            Special::Metadata => "a cloud metadata",
            Special::Multicast => "a multicast",
            Special::Broadcast => "a broadcast",
            Special::Documentation => "a documentation",
            Special::Reserved => "a reserved",
        }
    }
}

/// IPv4 special-purpose blocks, most specific first.
const SPECIAL_V4: &[([u8; 4], u8, Special)] = &[
    ([169, 254, 169, 254], 32, Special::Metadata),
    ([0, 0, 0, 0], 32, Special::Unspecified),
    ([255, 255, 255, 255], 32, Special::Broadcast),
    ([0, 0, 0, 0], 8, Special::Reserved),
    ([10, 0, 0, 0], 8, Special::Private),
    ([100, 64, 0, 0], 10, Special::SharedAddressSpace),
    ([127, 0, 0, 0], 8, Special::Loopback),
    ([169, 254, 0, 0], 16, Special::LinkLocal),
    ([172, 16, 0, 0], 12, Special::Private),
    ([192, 0, 0, 0], 24, Special::Reserved),
    ([192, 0, 2, 0], 24, Special::Documentation),
    ([192, 88, 99, 0], 24, Special::Reserved),
    ([192, 168, 0, 0], 16, Special::Private),
    ([198, 18, 0, 0], 15, Special::Reserved),
    ([198, 51, 100, 0], 24, Special::Documentation),
    ([203, 0, 113, 0], 24, Special::Documentation),
    ([224, 0, 0, 0], 4, Special::Multicast),
    ([240, 0, 0, 0], 4, Special::Reserved),
];

/// IPv6 special-purpose blocks inside global unicast (2000::/3), most specific
/// first; everything outside 2000::/3 is special anyway.
const SPECIAL_V6: &[(u128, u8, Special)] = &[
    (0x2001_0db8 << 96, 32, Special::Documentation),
    // 2001::/23 holds Teredo (2001::/32), benchmarking and ORCHID.
    (0x2001 << 112, 23, Special::Reserved),
    (0x3fff << 112, 20, Special::Documentation),
];

/// How `ip` is special, or `None` for a public unicast address. Addresses that
/// embed an IPv4 address (NAT64 64:ff9b::/96, 6to4 2002::/16) are judged by it,
/// since that is where the traffic ends up.
pub fn classify(ip: IpAddr) -> Option<Special> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

/// The IPv4 address that traffic to `ip` ends up at, for the forms that embed one:
/// IPv4-mapped (`::ffff:a.b.c.d`), NAT64 (64:ff9b::/96, RFC 6052) and 6to4
/// (2002::/16, RFC 3056).
pub fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = u128::from(ip);
    if let Some(v4) = ip.to_ipv4_mapped() {
        Some(v4)
    } else if bits >> 32 == 0x0064_ff9b << 64 {
        Some(Ipv4Addr::from(bits as u32))
    } else if bits >> 112 == 0x2002 {
        Some(Ipv4Addr::from((bits >> 80) as u32))
    } else {
        None
    }
}

/// `ip`, or the IPv4 address it embeds (see [`embedded_v4`]): the form to compare
/// addresses in.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => embedded_v4(v6).map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<Special> {
    SPECIAL_V4
        .iter()
        .find(|(net, prefix, _)| prefix_bits_v4(ip, *prefix) == u32::from(Ipv4Addr::from(*net)))
        .map(|&(_, _, special)| special)
}

fn classify_v6(ip: Ipv6Addr) -> Option<Special> {
    if let Some(v4) = embedded_v4(ip) {
        return classify_v4(v4);
    }
    if ip.is_unspecified() {
        return Some(Special::Unspecified);
    }
    if ip.is_loopback() {
        return Some(Special::Loopback);
    }
    if ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
        return Some(Special::Metadata);
    }
    let within = |net: u128, prefix: u8| prefix_bits_v6(ip, prefix) == net;
    if within(0xfc00 << 112, 7) {
        return Some(Special::Private);
    }
    if within(0xfe80 << 112, 10) {
        return Some(Special::LinkLocal);
    }
    if within(0xff00 << 112, 8) {
        return Some(Special::Multicast);
    }
    if !within(0x2000 << 112, 3) {
        return Some(Special::Reserved);
    }
    SPECIAL_V6
        .iter()
        .find(|(net, prefix, _)| within(*net, *prefix))
        .map(|&(_, _, special)| special)
}

/// Why a [`Cidr`] does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// The part before `/` is no IP address.
    #[error("{0:?} is not an IP address")]
    NotAnAddress(String),
    /// The prefix is no number in range.
    #[error("prefix must be from 0 to {max}")]
    Prefix {
        /// 32 or 128.
        max: u8,
    },
    /// The address has bits set beyond the prefix (a typo as often as not).
    #[error("{network} has bits set beyond the /{prefix} prefix")]
    HostBits {
        /// The address as written.
        network: IpAddr,
        /// The prefix length.
        prefix: u8,
    },
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        let lo: Cidr = "127.0.0.0/8".parse().unwrap();
        assert!(lo.contains("127.255.0.1".parse().unwrap()));
        assert!(!lo.contains("128.0.0.1".parse().unwrap()));
        assert!(!lo.contains("::1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        let one: Cidr = "10.1.2.3".parse().unwrap();
        assert!(one.contains("10.1.2.3".parse().unwrap()));
        assert!(!one.contains("10.1.2.4".parse().unwrap()));
        let ula: Cidr = "fd00::/8".parse().unwrap();
        assert!(ula.contains("fd12::1".parse().unwrap()));
        assert!(!ula.contains("fc00::1".parse().unwrap()));
        for bad in [
            "127.0.0.1/8",
            "10.0.0.0/33",
            "10.0.0.0/+8",
            "0177.0.0.0/8",
            "x/8",
            "::/129",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn address_classes() {
        let class = |text: &str| classify(text.parse().unwrap());
        for (text, want) in [
            ("0.0.0.0", Some(Special::Unspecified)),
            ("0.1.2.3", Some(Special::Reserved)),
            ("10.1.2.3", Some(Special::Private)),
            ("100.64.0.1", Some(Special::SharedAddressSpace)),
            ("100.127.255.255", Some(Special::SharedAddressSpace)),
            ("100.128.0.1", None),
            ("127.0.0.1", Some(Special::Loopback)),
            ("127.255.255.254", Some(Special::Loopback)),
            ("169.254.169.254", Some(Special::Metadata)),
            ("169.254.1.1", Some(Special::LinkLocal)),
            ("172.16.0.1", Some(Special::Private)),
            ("172.31.255.255", Some(Special::Private)),
            ("172.32.0.1", None),
            ("192.0.0.8", Some(Special::Reserved)),
            ("192.0.2.1", Some(Special::Documentation)),
            ("192.168.1.1", Some(Special::Private)),
            ("198.18.0.1", Some(Special::Reserved)),
            ("198.51.100.1", Some(Special::Documentation)),
            ("203.0.113.9", Some(Special::Documentation)),
            ("224.0.0.1", Some(Special::Multicast)),
            ("239.255.255.250", Some(Special::Multicast)),
            ("240.0.0.1", Some(Special::Reserved)),
            ("255.255.255.255", Some(Special::Broadcast)),
            ("8.8.8.8", None),
            ("1.1.1.1", None),
            ("::", Some(Special::Unspecified)),
            ("::1", Some(Special::Loopback)),
            ("::ffff:127.0.0.1", Some(Special::Loopback)),
            ("::ffff:8.8.8.8", None),
            ("::127.0.0.1", Some(Special::Reserved)),
            ("64:ff9b::7f00:1", Some(Special::Loopback)),
            ("64:ff9b::a9fe:a9fe", Some(Special::Metadata)),
            ("64:ff9b::808:808", None),
            ("64:ff9b:1::1", Some(Special::Reserved)),
            ("2002:7f00:1::", Some(Special::Loopback)),
            ("2002:0a00:0001::1", Some(Special::Private)),
            ("2002:0808:0808::1", None),
            ("2001::1", Some(Special::Reserved)),
            ("2001:db8::1", Some(Special::Documentation)),
            ("3fff::1", Some(Special::Documentation)),
            ("fc00::1", Some(Special::Private)),
            ("fd00:ec2::254", Some(Special::Metadata)),
            ("fd12:3456::1", Some(Special::Private)),
            ("fe80::1", Some(Special::LinkLocal)),
            ("fec0::1", Some(Special::Reserved)),
            ("ff02::1", Some(Special::Multicast)),
            ("100::1", Some(Special::Reserved)),
            ("2606:4700:4700::1111", None),
            ("2a00:1450:4001::200e", None),
        ] {
            assert_eq!(class(text), want, "{text}");
        }
    }

    #[test]
    fn embedded_ipv4_forms_are_compared_as_their_ipv4_address() {
        for (text, want) in [
            ("::ffff:192.0.2.1", "192.0.2.1"),
            ("64:ff9b::c000:201", "192.0.2.1"),
            ("2002:c000:0201::1", "192.0.2.1"),
            ("192.0.2.1", "192.0.2.1"),
            ("2606:4700::1", "2606:4700::1"),
            ("64:ff9b:1::c000:201", "64:ff9b:1::c000:201"),
        ] {
            assert_eq!(
                canonical(text.parse().unwrap()),
                want.parse::<IpAddr>().unwrap(),
                "{text}"
            );
        }
    }

    #[test]
    fn cidr_errors_say_what_is_wrong() {
        for (text, want) in [
            ("x/8", "\"x\" is not an IP address"),
            ("10.0.0.0/33", "prefix must be from 0 to 32"),
            ("::/129", "prefix must be from 0 to 128"),
            ("127.0.0.1/8", "127.0.0.1 has bits set beyond the /8 prefix"),
        ] {
            assert_eq!(
                text.parse::<Cidr>().unwrap_err().to_string(),
                want,
                "{text}"
            );
        }
        assert_eq!(
            "10.0.0.0/8".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/8"
        );
    }
}
