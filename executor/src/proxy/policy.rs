//! What a job may reach: domain patterns, the allow and deny lists, ports, fixed
//! name-to-address mappings, and which addresses count as not public.
//!
//! A name passing the lists is not enough: it must also resolve only to public
//! addresses, or an allowed name pointing at 127.0.0.1 or 169.254.169.254 would
//! open the host's own services and the cloud metadata endpoint (the hole the seed
//! service's name-only filter left, as in SSRF write-ups such as Capital One 2019).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use pysandbox_shared::MAX_REQUESTED_DOMAINS;

use super::target::{DomainName, Host, Malformed, Target};

/// One entry of an allow or deny list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainPattern {
    /// Exactly this name.
    Exact(DomainName),
    /// Every name strictly below this one (`*.example.com`), not the name itself.
    Wildcard(DomainName),
    /// Exactly this address, when used as an IP-literal target.
    Ip(IpAddr),
}

impl DomainPattern {
    /// Whether a target's host matches.
    pub fn matches(&self, host: &Host) -> bool {
        match (self, host) {
            (DomainPattern::Exact(pattern), Host::Name(name)) => pattern == name,
            (DomainPattern::Wildcard(parent), Host::Name(name)) => name.is_below(parent),
            (DomainPattern::Ip(pattern), Host::Ip(ip)) => pattern == ip,
            _ => false,
        }
    }

    /// Whether every host `other` matches is matched by `self` too.
    pub fn covers(&self, other: &DomainPattern) -> bool {
        match (self, other) {
            (DomainPattern::Exact(a), DomainPattern::Exact(b)) => a == b,
            (DomainPattern::Wildcard(parent), DomainPattern::Exact(name)) => name.is_below(parent),
            (DomainPattern::Wildcard(parent), DomainPattern::Wildcard(child)) => {
                child == parent || child.is_below(parent)
            }
            (DomainPattern::Ip(a), DomainPattern::Ip(b)) => a == b,
            _ => false,
        }
    }
}

impl FromStr for DomainPattern {
    type Err = PatternError;

    /// `example.com`, `*.example.com`, or an IP address (`192.0.2.7`, `2001:db8::1`,
    /// `[2001:db8::1]`), in the same normal form as targets.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.contains('/') {
            return Err(PatternError::Url);
        }
        if let Some(parent) = text.strip_prefix("*.") {
            if parent.contains('*') {
                return Err(PatternError::Star);
            }
            return match Host::parse(parent)? {
                Host::Ip(_) => Err(PatternError::WildcardIp),
                Host::Name(name) if name.label_count() < 2 => Err(PatternError::ShortWildcard),
                Host::Name(name) => Ok(DomainPattern::Wildcard(name)),
            };
        }
        if text.contains('*') {
            return Err(PatternError::Star);
        }
        let ipv6 = text.starts_with('[') || text.matches(':').count() > 1;
        if text.contains(':') && !ipv6 {
            return Err(PatternError::Port);
        }
        match Host::parse(text)? {
            Host::Name(name) => Ok(DomainPattern::Exact(name)),
            // An operator reading `0177.1` would not think of 127.0.0.1: only the
            // usual dotted-decimal form is accepted in a list.
            Host::Ip(IpAddr::V4(v4)) if !ipv6 && text.trim_end_matches('.') != v4.to_string() => {
                Err(PatternError::NonCanonicalIpv4(v4))
            }
            Host::Ip(ip) => Ok(DomainPattern::Ip(ip)),
        }
    }
}

impl fmt::Display for DomainPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DomainPattern::Exact(name) => name.fmt(f),
            DomainPattern::Wildcard(parent) => write!(f, "*.{parent}"),
            DomainPattern::Ip(ip) => ip.fmt(f),
        }
    }
}

/// Why a domain pattern is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("looks like a URL; give the domain name only")]
    Url,
    #[error("has a port; ports are allowed with allowed_ports")]
    Port,
    #[error("* may only be the whole first label, as in *.example.com")]
    Star,
    #[error("a wildcard must name a domain of at least two labels, as in *.example.com")]
    ShortWildcard,
    #[error("a wildcard cannot cover an IP address")]
    WildcardIp,
    #[error("write the IPv4 address as {0}")]
    NonCanonicalIpv4(Ipv4Addr),
    #[error("{0}")]
    Host(#[from] Malformed),
}

/// An address block, e.g. `127.0.0.0/8` or `fd00::/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
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
    type Err = String;

    /// `address/prefix` with no host bits set, or a bare address (a block of one).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = text.split_once('/').unwrap_or((text, ""));
        let network: IpAddr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IP address"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            "" => max,
            p => p
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= max && !prefix.starts_with('+'))
                .ok_or_else(|| format!("prefix must be from 0 to {max}"))?,
        };
        let exact = match network {
            IpAddr::V4(v4) => prefix_bits_v4(v4, prefix) == u32::from(v4),
            IpAddr::V6(v6) => prefix_bits_v6(v6, prefix) == u128::from(v6),
        };
        if !exact {
            return Err(format!("{addr} has bits set beyond the /{prefix} prefix"));
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
    Unspecified,
    Loopback,
    Private,
    /// 100.64.0.0/10, carrier-grade NAT (RFC 6598).
    SharedAddressSpace,
    LinkLocal,
    /// A cloud provider's instance metadata service (169.254.169.254, fd00:ec2::254).
    Metadata,
    Multicast,
    Broadcast,
    Documentation,
    /// Any other special-purpose block (IANA registries, RFC 6890).
    Reserved,
}

impl Special {
    /// "a loopback", as in "127.0.0.1 is a loopback address".
    fn article(self) -> &'static str {
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

fn classify_v4(ip: Ipv4Addr) -> Option<Special> {
    SPECIAL_V4
        .iter()
        .find(|(net, prefix, _)| prefix_bits_v4(ip, *prefix) == u32::from(Ipv4Addr::from(*net)))
        .map(|&(_, _, special)| special)
}

fn classify_v6(ip: Ipv6Addr) -> Option<Special> {
    let bits = u128::from(ip);
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    if bits >> 32 == 0x0064_ff9b << 64 {
        return classify_v4(Ipv4Addr::from(bits as u32));
    }
    if bits >> 112 == 0x2002 {
        return classify_v4(Ipv4Addr::from((bits >> 80) as u32));
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

/// The checked network policy of the executor, or of one job once narrowed.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    allowed: Vec<DomainPattern>,
    denied: Vec<DomainPattern>,
    ports: Vec<u16>,
    private_ok: Vec<Cidr>,
    resolve: BTreeMap<DomainName, Vec<IpAddr>>,
}

/// What the proxy must do to reach an allowed target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// Connect to one of these, already checked.
    Addresses(Vec<IpAddr>),
    /// Resolve this name, check every address, then connect to a checked one.
    Lookup(DomainName),
}

impl Policy {
    /// A policy from checked parts. `resolve` maps names to the addresses used for
    /// them instead of DNS.
    pub fn new(
        allowed: Vec<DomainPattern>,
        denied: Vec<DomainPattern>,
        ports: Vec<u16>,
        private_ok: Vec<Cidr>,
        resolve: BTreeMap<DomainName, Vec<IpAddr>>,
    ) -> Policy {
        Policy {
            allowed,
            denied,
            ports,
            private_ok,
            resolve,
        }
    }

    /// Whether any target at all may be reached; if not, a job gets no proxy.
    pub fn allows_anything(&self) -> bool {
        !self.allowed.is_empty()
    }

    /// The policy for a job that asks for `requested` (`None`: the whole allow
    /// list). Each entry must be covered by the configured allow list; the deny list,
    /// ports and address rules stay as configured.
    pub fn narrowed(&self, requested: Option<&[String]>) -> Result<Policy, NarrowError> {
        let Some(requested) = requested else {
            return Ok(self.clone());
        };
        if requested.len() > MAX_REQUESTED_DOMAINS {
            return Err(NarrowError::TooMany);
        }
        let mut allowed = Vec::with_capacity(requested.len());
        for entry in requested {
            let pattern: DomainPattern = entry.parse().map_err(|error| NarrowError::Invalid {
                entry: shown(entry),
                error,
            })?;
            if !self.allowed.iter().any(|a| a.covers(&pattern)) {
                return Err(NarrowError::NotAllowed {
                    entry: shown(entry),
                });
            }
            allowed.push(pattern);
        }
        Ok(Policy {
            allowed,
            ..self.clone()
        })
    }

    /// Checks a target's name (or IP literal) and port; for a name, says whether it
    /// has fixed addresses or must be looked up. Nothing is resolved here.
    pub fn check_target(&self, target: &Target) -> Result<Destination, Refusal> {
        let host = &target.host;
        if self.denied.iter().any(|d| d.matches(host)) {
            return Err(Refusal::Denied);
        }
        if !self.allowed.iter().any(|a| a.matches(host)) {
            return Err(match host {
                Host::Ip(_) => Refusal::IpLiteral,
                Host::Name(_) => Refusal::NotAllowed,
            });
        }
        if !self.ports.contains(&target.port) {
            return Err(Refusal::Port(target.port));
        }
        match host {
            Host::Ip(ip) => {
                self.check_address(*ip, false)?;
                Ok(Destination::Addresses(vec![*ip]))
            }
            Host::Name(name) => match self.resolve.get(name) {
                Some(fixed) => {
                    for ip in fixed {
                        self.check_address(*ip, true)?;
                    }
                    Ok(Destination::Addresses(fixed.clone()))
                }
                None => Ok(Destination::Lookup(name.clone())),
            },
        }
    }

    /// Refuses an address that is not public, unless `allow_private_cidrs` holds it.
    /// `resolved` says it came from a name (for the reason's wording).
    pub fn check_address(&self, ip: IpAddr, resolved: bool) -> Result<(), Refusal> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match classify(ip) {
            Some(special) if !self.private_ok.iter().any(|c| c.contains(ip)) => {
                Err(Refusal::Address {
                    ip,
                    special,
                    resolved,
                })
            }
            _ => Ok(()),
        }
    }
}

/// A client's text in a message: printable, and cut at 100 characters.
pub fn shown(text: &str) -> String {
    text.chars()
        .take(100)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Why a job's `allowedDomains` is refused (the field is named by the caller).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NarrowError {
    #[error("must have at most {MAX_REQUESTED_DOMAINS} entries")]
    TooMany,
    #[error("{entry} is not a valid domain pattern: {error}")]
    Invalid { entry: String, error: PatternError },
    #[error("{entry} is not allowed by the executor's configuration")]
    NotAllowed { entry: String },
}

/// Why the proxy refused a request; the text is the reason the job and the
/// response's `violations` see.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("malformed request: {0}")]
    BadRequest(&'static str),
    #[error("malformed target: {0}")]
    Malformed(#[from] Malformed),
    #[error("only http:// URLs and CONNECT are supported")]
    Scheme,
    #[error("Host header does not match the request target")]
    HostMismatch,
    #[error("in denied domains")]
    Denied,
    #[error("not in allowed domains")]
    NotAllowed,
    #[error("IP address not in allowed domains")]
    IpLiteral,
    #[error("port {0} not allowed")]
    Port(u16),
    #[error("{}", address_reason(*ip, *special, *resolved))]
    Address {
        ip: IpAddr,
        special: Special,
        resolved: bool,
    },
    #[error("too many concurrent connections (limit {0})")]
    TooManyConnections(u32),
    #[error("too many open connections to the proxy (limit {0}); this one was closed")]
    TooManyClientConnections(u32),
    #[error("the executor's proxies are at their connection limit ({0}); this one was closed")]
    ExecutorBusy(u32),
    #[error("byte limit of {0} bytes per job reached")]
    Bytes(u64),
}

fn address_reason(ip: IpAddr, special: Special, resolved: bool) -> String {
    match resolved {
        true => format!("resolves to {ip}, {} address", special.article()),
        false => format!("{ip} is {} address", special.article()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(text: &str) -> DomainPattern {
        text.parse()
            .unwrap_or_else(|e| panic!("{text:?} does not parse: {e}"))
    }

    fn host(text: &str) -> Host {
        Host::parse(text).unwrap()
    }

    fn target(text: &str) -> Target {
        Target::parse_authority(text, None).unwrap()
    }

    #[test]
    fn patterns_parse_to_one_normal_form() {
        assert_eq!(pattern("Example.COM.").to_string(), "example.com");
        assert_eq!(pattern("*.Example.com").to_string(), "*.example.com");
        assert_eq!(pattern("*.bücher.de").to_string(), "*.xn--bcher-kva.de");
        assert_eq!(pattern("192.0.2.7").to_string(), "192.0.2.7");
        assert_eq!(pattern("2001:db8::1").to_string(), "2001:db8::1");
        assert_eq!(pattern("[2001:DB8::1]").to_string(), "2001:db8::1");
        assert_eq!(pattern("::ffff:192.0.2.7").to_string(), "192.0.2.7");
        assert_eq!(pattern("localhost").to_string(), "localhost");
    }

    #[test]
    fn malformed_patterns_are_refused_with_a_reason() {
        for (text, want) in [
            ("*", PatternError::Star),
            ("*example.com", PatternError::Star),
            ("a.*.example.com", PatternError::Star),
            ("*.*.example.com", PatternError::Star),
            ("**.example.com", PatternError::Star),
            ("*.com", PatternError::ShortWildcard),
            ("*.com.", PatternError::ShortWildcard),
            ("*.1.2.3.4", PatternError::WildcardIp),
            ("https://example.com", PatternError::Url),
            ("example.com/path", PatternError::Url),
            ("10.0.0.0/8", PatternError::Url),
            ("example.com:443", PatternError::Port),
            ("1.2.3.4:80", PatternError::Port),
            (
                "0177.0.0.1",
                PatternError::NonCanonicalIpv4(Ipv4Addr::new(127, 0, 0, 1)),
            ),
            (
                "2130706433",
                PatternError::NonCanonicalIpv4(Ipv4Addr::new(127, 0, 0, 1)),
            ),
            ("", PatternError::Host(Malformed::Empty)),
            ("a..com", PatternError::Host(Malformed::EmptyLabel)),
            ("*.", PatternError::Host(Malformed::Empty)),
            (
                "a_b.com",
                PatternError::Host(Malformed::NotLdh("a_b".into())),
            ),
            (" example.com", PatternError::Host(Malformed::Idna)),
            ("ex ample.com", PatternError::Host(Malformed::Idna)),
            ("1.2.3.999", PatternError::Host(Malformed::BadIpv4)),
            ("[::1", PatternError::Host(Malformed::BadIpv6)),
        ] {
            assert_eq!(text.parse::<DomainPattern>(), Err(want), "{text:?}");
        }
    }

    #[test]
    fn exact_and_wildcard_matching() {
        let exact = pattern("allowed.test");
        assert!(exact.matches(&host("allowed.test")));
        assert!(exact.matches(&host("ALLOWED.test.")));
        for other in [
            "a.allowed.test",
            "evil-allowed.test",
            "allowed.test.evil.com",
            "allowedxtest",
        ] {
            assert!(!exact.matches(&host(other)), "{other}");
        }
        let wild = pattern("*.wild.test");
        assert!(wild.matches(&host("a.wild.test")));
        assert!(wild.matches(&host("a.b.wild.test")));
        for other in [
            "wild.test",
            "evilwild.test",
            "a.wild.test.evil.com",
            "wild.test.a",
        ] {
            assert!(!wild.matches(&host(other)), "{other}");
        }
        let ip = pattern("192.0.2.7");
        assert!(ip.matches(&host("192.0.2.7")));
        assert!(ip.matches(&host("3221225991")));
        assert!(ip.matches(&host("[::ffff:192.0.2.7]")));
        assert!(!ip.matches(&host("192.0.2.8")));
        assert!(!exact.matches(&host("192.0.2.7")));
    }

    #[test]
    fn coverage_for_narrowing() {
        let wild = pattern("*.example.com");
        assert!(wild.covers(&pattern("a.example.com")));
        assert!(wild.covers(&pattern("*.example.com")));
        assert!(wild.covers(&pattern("*.a.example.com")));
        assert!(!wild.covers(&pattern("example.com")));
        assert!(!wild.covers(&pattern("*.com.example")));
        let exact = pattern("a.example.com");
        assert!(exact.covers(&pattern("A.Example.com")));
        assert!(!exact.covers(&pattern("*.a.example.com")));
        assert!(!exact.covers(&pattern("b.example.com")));
        assert!(pattern("192.0.2.7").covers(&pattern("::ffff:192.0.2.7")));
        assert!(!pattern("192.0.2.7").covers(&pattern("192.0.2.8")));
    }

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

    fn policy() -> Policy {
        let resolve = [
            ("allowed.test", vec!["127.0.0.1"]),
            ("a.wild.test", vec!["127.0.0.2"]),
            ("private.test", vec!["10.0.0.1"]),
            ("mixed.test", vec!["127.0.0.1", "169.254.169.254"]),
        ]
        .into_iter()
        .map(|(name, ips)| {
            let Host::Name(name) = host(name) else {
                unreachable!()
            };
            (name, ips.iter().map(|ip| ip.parse().unwrap()).collect())
        })
        .collect();
        Policy::new(
            [
                "allowed.test",
                "*.wild.test",
                "private.test",
                "mixed.test",
                "192.0.2.7",
                "127.0.0.1",
                "public.test",
            ]
            .iter()
            .map(|p| pattern(p))
            .collect(),
            vec![pattern("blocked.wild.test")],
            vec![80, 443],
            vec!["127.0.0.0/8".parse().unwrap()],
            resolve,
        )
    }

    #[test]
    fn targets_are_checked_name_first_then_port_then_address() {
        let policy = policy();
        let check = |text: &str| policy.check_target(&target(text));
        let lo = |ip: &str| Ok(Destination::Addresses(vec![ip.parse().unwrap()]));
        assert_eq!(check("allowed.test:80"), lo("127.0.0.1"));
        assert_eq!(check("a.wild.test:443"), lo("127.0.0.2"));
        assert_eq!(check("127.0.0.1:80"), lo("127.0.0.1"));
        assert_eq!(check("0177.1:80"), lo("127.0.0.1"));
        assert_eq!(check("[::ffff:127.0.0.1]:80"), lo("127.0.0.1"));
        assert_eq!(
            check("public.test:443"),
            Ok(Destination::Lookup(match host("public.test") {
                Host::Name(n) => n,
                Host::Ip(_) => unreachable!(),
            }))
        );
        assert_eq!(check("blocked.wild.test:80"), Err(Refusal::Denied));
        assert_eq!(check("wild.test:80"), Err(Refusal::NotAllowed));
        assert_eq!(check("evil-allowed.test:80"), Err(Refusal::NotAllowed));
        assert_eq!(check("allowed.test.evil.com:80"), Err(Refusal::NotAllowed));
        assert_eq!(check("127.0.0.2:80"), Err(Refusal::IpLiteral));
        assert_eq!(check("2130706434:80"), Err(Refusal::IpLiteral));
        assert_eq!(check("allowed.test:22"), Err(Refusal::Port(22)));
        let private = check("private.test:80").unwrap_err();
        assert_eq!(
            private.to_string(),
            "resolves to 10.0.0.1, a private address"
        );
        let mixed = check("mixed.test:80").unwrap_err();
        assert_eq!(
            mixed.to_string(),
            "resolves to 169.254.169.254, a cloud metadata address"
        );
        let listed_but_special = check("192.0.2.7:80").unwrap_err();
        assert_eq!(
            listed_but_special.to_string(),
            "192.0.2.7 is a documentation address"
        );
    }

    #[test]
    fn narrowing_only_narrows() {
        let policy = policy();
        let entries = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let narrow = policy.narrowed(Some(&entries(&["Allowed.Test."]))).unwrap();
        assert!(narrow.check_target(&target("allowed.test:80")).is_ok());
        assert_eq!(
            narrow.check_target(&target("a.wild.test:80")),
            Err(Refusal::NotAllowed)
        );
        let wild = policy
            .narrowed(Some(&entries(&["*.wild.test", "x.wild.test"])))
            .unwrap();
        assert!(wild.check_target(&target("a.wild.test:80")).is_ok());
        assert_eq!(
            wild.check_target(&target("blocked.wild.test:80")),
            Err(Refusal::Denied),
            "the deny list still wins"
        );
        let none = policy.narrowed(Some(&[])).unwrap();
        assert!(!none.allows_anything());
        assert!(policy.narrowed(None).unwrap().allows_anything());
        for (list, want) in [
            (
                vec!["evil.com"],
                "evil.com is not allowed by the executor's configuration",
            ),
            (
                vec!["allowed.test", "wild.test"],
                "wild.test is not allowed by the executor's configuration",
            ),
            (
                vec!["*.test"],
                "*.test is not a valid domain pattern: a wildcard must name a domain of at least two labels, as in *.example.com",
            ),
            (
                vec!["127.0.0.2"],
                "127.0.0.2 is not allowed by the executor's configuration",
            ),
        ] {
            let err = policy.narrowed(Some(&entries(&list))).unwrap_err();
            assert_eq!(err.to_string(), want, "{list:?}");
        }
        let many = vec!["allowed.test".to_string(); MAX_REQUESTED_DOMAINS + 1];
        assert_eq!(
            policy.narrowed(Some(&many)).unwrap_err(),
            NarrowError::TooMany
        );
    }
}
