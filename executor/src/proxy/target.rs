//! Where a job asks the proxy to connect, parsed strictly and normalized once, before
//! any policy decision and before any DNS lookup.
//!
//! The danger is two parsers disagreeing: a name the policy reads as harmless that a
//! resolver reads as an address. glibc's `inet_aton`, behind `getaddrinfo`, takes
//! `2130706433`, `0x7f.1` and `0177.0.0.1` for 127.0.0.1 and `012.0.0.1` for
//! 10.0.0.1, while Rust's `Ipv4Addr::from_str` refuses them all (it stopped reading
//! leading zeros as decimal over CVE-2021-29922; the netmask package's
//! CVE-2021-28918 is the same confusion). So every host that ends in a number is
//! parsed here the way `inet_aton` does and treated as an IP literal, and only
//! letters-digits-hyphens names are ever handed to a resolver.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use idna::AsciiDenyList;

/// Longest host text looked at: a DNS name has at most 253 characters, and the
/// Unicode form it came from a few times that.
const MAX_HOST_INPUT: usize = 1024;
/// RFC 1035 limits, for the ASCII form.
const MAX_NAME_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

/// A DNS name in its one normal form: lowercase ASCII (IDNA applied), labels of
/// letters, digits and hyphens, no trailing dot, and not ending in a number.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DomainName(String);

impl DomainName {
    /// The name as text, e.g. `xn--bcher-kva.example`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// How many labels it has (`example.com` has 2).
    pub fn label_count(&self) -> usize {
        self.0.split('.').count()
    }

    /// Whether it lies strictly below `parent` (`a.example.com` below `example.com`,
    /// not `example.com` itself nor `badexample.com`).
    pub fn is_below(&self, parent: &DomainName) -> bool {
        self.0
            .strip_suffix(parent.as_str())
            .is_some_and(|prefix| prefix.len() > 1 && prefix.ends_with('.'))
    }
}

impl fmt::Display for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A host: a DNS name or an IP address. IPv4-mapped IPv6 addresses
/// (`::ffff:a.b.c.d`) become the IPv4 address they are, since that is where a
/// socket connected to them goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    Name(DomainName),
    Ip(IpAddr),
}

impl Host {
    /// Parses a host: `[v6]`, a bare IPv6 address, an IPv4 address in any form
    /// `inet_aton` accepts, or a domain name (Unicode or ASCII, any case, with or
    /// without one trailing dot).
    pub fn parse(text: &str) -> Result<Host, Malformed> {
        if text.is_empty() {
            return Err(Malformed::Empty);
        }
        if text.len() > MAX_HOST_INPUT {
            return Err(Malformed::TooLong);
        }
        if let Some(inner) = text.strip_prefix('[') {
            let inner = inner.strip_suffix(']').ok_or(Malformed::BadIpv6)?;
            return parse_ipv6(inner).map(Host::Ip);
        }
        if text.contains(':') {
            return parse_ipv6(text).map(Host::Ip);
        }
        // The URL deny list refuses what IDNA would otherwise pass through or map:
        // `%` (URL parsers percent-decode hosts), `@`, `/`, `\`, `:`, spaces and
        // control characters. UTS 46 maps case, full-width forms and ideographic
        // full stops, so `ＥＸＡＭＰＬＥ。com` and `example.com` are one name.
        let ascii = idna::domain_to_ascii_cow(text.as_bytes(), AsciiDenyList::URL)
            .map_err(|_| Malformed::Idna)?;
        let name = ascii.strip_suffix('.').unwrap_or(&ascii);
        if name.is_empty() {
            return Err(Malformed::Empty);
        }
        if ends_in_number(name) {
            return inet_aton(name)
                .map(|v4| Host::Ip(IpAddr::V4(v4)))
                .ok_or(Malformed::BadIpv4);
        }
        if name.len() > MAX_NAME_LEN {
            return Err(Malformed::TooLong);
        }
        for label in name.split('.') {
            if label.is_empty() {
                return Err(Malformed::EmptyLabel);
            }
            if label.len() > MAX_LABEL_LEN {
                return Err(Malformed::LongLabel);
            }
            let ldh = label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !ldh || label.starts_with('-') || label.ends_with('-') {
                return Err(Malformed::NotLdh(label.to_owned()));
            }
        }
        Ok(Host::Name(DomainName(name.to_owned())))
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(name) => name.fmt(f),
            Host::Ip(ip) => ip.fmt(f),
        }
    }
}

/// A host and port to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: Host,
    pub port: u16,
}

impl Target {
    /// Parses `host:port` or `[v6]:port` (a CONNECT target, a URL's authority, a
    /// `Host` header); the port may be left out only when `default_port` is given.
    pub fn parse_authority(text: &str, default_port: Option<u16>) -> Result<Target, Malformed> {
        if text.contains('@') {
            return Err(Malformed::UserInfo);
        }
        let (host, port) = if text.starts_with('[') {
            let end = text.find(']').ok_or(Malformed::BadIpv6)?;
            let (host, rest) = text.split_at(end + 1);
            let port = match rest {
                "" => None,
                rest => Some(rest.strip_prefix(':').ok_or(Malformed::BadPort)?),
            };
            (Host::parse(host)?, port)
        } else {
            match text.split_once(':') {
                Some((host, port)) => (Host::parse(host)?, Some(port)),
                None => (Host::parse(text)?, None),
            }
        };
        let port = match port {
            Some(port) => parse_port(port)?,
            None => default_port.ok_or(Malformed::MissingPort)?,
        };
        Ok(Target { host, port })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(IpAddr::V6(v6)) => write!(f, "[{v6}]:{}", self.port),
            host => write!(f, "{host}:{}", self.port),
        }
    }
}

/// Why a host or target does not parse. Shown to the job, so it says what is
/// wrong without echoing much of the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("empty host")]
    Empty,
    #[error("host name too long")]
    TooLong,
    #[error("not a valid domain name")]
    Idna,
    #[error("empty label in host name")]
    EmptyLabel,
    #[error("label longer than 63 characters")]
    LongLabel,
    #[error("label {0:?} is not letters, digits and hyphens")]
    NotLdh(String),
    #[error("ends in a number but is not a valid IPv4 address")]
    BadIpv4,
    #[error("not a valid IPv6 address")]
    BadIpv6,
    #[error("user info (@) in the target")]
    UserInfo,
    #[error("invalid port")]
    BadPort,
    #[error("no port")]
    MissingPort,
}

/// A port: 1 to 65535 in plain decimal, no sign, no leading zero, nothing after.
fn parse_port(text: &str) -> Result<u16, Malformed> {
    let plain = !text.is_empty()
        && text.len() <= 5
        && text.bytes().all(|b| b.is_ascii_digit())
        && !text.starts_with('0');
    match text.parse::<u16>() {
        Ok(port) if plain => Ok(port),
        _ => Err(Malformed::BadPort),
    }
}

/// An IPv6 address without zone id (`%eth0`), IPv4-mapped ones turned to IPv4.
fn parse_ipv6(text: &str) -> Result<IpAddr, Malformed> {
    let v6: Ipv6Addr = text.parse().map_err(|_| Malformed::BadIpv6)?;
    Ok(match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    })
}

/// Whether the last label is a number (decimal, or hex with `0x`): the WHATWG URL
/// standard's "ends in a number", which makes a host an IPv4 address or invalid.
fn ends_in_number(name: &str) -> bool {
    let last = name.rsplit('.').next().unwrap_or(name);
    let hex = last
        .strip_prefix("0x")
        .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
    hex || (!last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()))
}

/// IPv4 as glibc's `inet_aton(3)` reads it: one to four parts, each decimal, octal
/// (leading `0`) or hex (`0x`); the last part fills all remaining bytes, so `127.1`
/// is 127.0.0.1 and `2130706433` is too.
fn inet_aton(text: &str) -> Option<Ipv4Addr> {
    let parts = text
        .split('.')
        .map(c_number)
        .collect::<Option<Vec<u64>>>()?;
    if parts.len() > 4 {
        return None;
    }
    let (&last, init) = parts.split_last()?;
    if init.iter().any(|&part| part > 0xff) || last >= 1 << (8 * (4 - init.len())) {
        return None;
    }
    let value = init
        .iter()
        .enumerate()
        .fold(last, |acc, (i, &part)| acc | part << (24 - 8 * i));
    u32::try_from(value).ok().map(Ipv4Addr::from)
}

/// A number as C's `strtoul(s, 0)` reads it, with nothing after it.
fn c_number(text: &str) -> Option<u64> {
    let (digits, radix) = if let Some(hex) = text.strip_prefix("0x") {
        (hex, 16)
    } else if text.len() > 1 && text.starts_with('0') {
        (&text[1..], 8)
    } else {
        (text, 10)
    };
    if digits.is_empty() {
        // `0x` alone is 0 to inet_aton; an empty part (`1..2`) is invalid.
        return (radix == 16).then_some(0);
    }
    // from_str_radix would take a leading `+`; more than 16 digits overflow anyway.
    if digits.len() > 16 || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> Host {
        Host::Ip(text.parse().unwrap())
    }

    fn name(text: &str) -> Host {
        Host::Name(DomainName(text.into()))
    }

    #[test]
    fn every_ipv4_spelling_is_an_ip_literal() {
        for (text, want) in [
            ("127.0.0.1", "127.0.0.1"),
            ("2130706433", "127.0.0.1"),
            ("0x7f000001", "127.0.0.1"),
            ("0X7F000001", "127.0.0.1"),
            ("0177.1", "127.0.0.1"),
            ("0177.0.0.1", "127.0.0.1"),
            ("0x7f.1", "127.0.0.1"),
            ("127.1", "127.0.0.1"),
            ("127.0.1", "127.0.0.1"),
            ("012.0.0.1", "10.0.0.1"),
            ("0", "0.0.0.0"),
            ("0.0.0.0", "0.0.0.0"),
            ("0x", "0.0.0.0"),
            ("169.254.43518", "169.254.169.254"),
            ("127.0.0.1.", "127.0.0.1"),
            ("１２７.０.０.１", "127.0.0.1"),
            ("127。0。0。1", "127.0.0.1"),
            ("4294967295", "255.255.255.255"),
            ("255.255.255.255", "255.255.255.255"),
            ("0xff.0xff.0xff.0xff", "255.255.255.255"),
            ("0x0000000000000001", "0.0.0.1"),
        ] {
            assert_eq!(Host::parse(text), Ok(ip(want)), "{text}");
        }
    }

    #[test]
    fn numbers_that_are_no_ipv4_address_are_malformed_not_names() {
        for text in [
            "4294967296",
            "256.0.0.1",
            "1.2.3.4.5",
            "08.0.0.1",
            "foo.1",
            "example.0x10",
            "1..2",
            "1.2.3.256",
            "99999999999999999999999",
            "0x100000000",
            // A part before the last one is a byte: 256 does not carry into the
            // part before it (1.256.0.1 is not 2.0.0.1, nor 1.0.0.1).
            "1.256.0.1",
            "0.383.0.1",
            // More than 16 digits are refused, even when they are leading zeros.
            "0x00000000000000001",
        ] {
            assert_eq!(Host::parse(text), Err(Malformed::BadIpv4), "{text}");
        }
        // Not ending in a number: an ordinary name, left to the policy and the
        // address checks.
        assert_eq!(
            Host::parse("127.0.0.1.nip.io"),
            Ok(name("127.0.0.1.nip.io"))
        );
        assert_eq!(Host::parse("0x7f.example"), Ok(name("0x7f.example")));
        assert_eq!(Host::parse("0x1g"), Ok(name("0x1g")));
    }

    #[test]
    fn ipv6_literals_and_embedded_ipv4() {
        assert_eq!(Host::parse("[::1]"), Ok(ip("::1")));
        assert_eq!(Host::parse("::1"), Ok(ip("::1")));
        assert_eq!(Host::parse("[::ffff:127.0.0.1]"), Ok(ip("127.0.0.1")));
        assert_eq!(Host::parse("[::FFFF:7f00:1]"), Ok(ip("127.0.0.1")));
        assert_eq!(Host::parse("[64:ff9b::7f00:1]"), Ok(ip("64:ff9b::7f00:1")));
        for bad in ["[fe80::1%eth0]", "[::1", "[1.2.3.4]", "[::g]", "[]"] {
            assert_eq!(Host::parse(bad), Err(Malformed::BadIpv6), "{bad}");
        }
    }

    #[test]
    fn names_are_lowercased_idna_mapped_and_lose_one_trailing_dot() {
        assert_eq!(Host::parse("Example.COM."), Ok(name("example.com")));
        assert_eq!(
            Host::parse("bücher.example"),
            Ok(name("xn--bcher-kva.example"))
        );
        assert_eq!(
            Host::parse("BÜCHER.example"),
            Ok(name("xn--bcher-kva.example"))
        );
        assert_eq!(
            Host::parse("xn--bcher-kva.example"),
            Ok(name("xn--bcher-kva.example"))
        );
        assert_eq!(Host::parse("ｅｘａｍｐｌｅ。com"), Ok(name("example.com")));
        assert_eq!(Host::parse("localhost"), Ok(name("localhost")));
    }

    #[test]
    fn malformed_names() {
        let long_label = format!("{}.com", "a".repeat(64));
        let long_name = format!("{}com", "abcdefghi.".repeat(26));
        for (text, want) in [
            ("", Malformed::Empty),
            (".", Malformed::Empty),
            ("a..b", Malformed::EmptyLabel),
            ("example.com..", Malformed::EmptyLabel),
            (".example.com", Malformed::EmptyLabel),
            (long_label.as_str(), Malformed::LongLabel),
            (long_name.as_str(), Malformed::TooLong),
            ("under_score.com", Malformed::NotLdh("under_score".into())),
            ("*.example.com", Malformed::NotLdh("*".into())),
            ("-lead.com", Malformed::NotLdh("-lead".into())),
            ("trail-.com", Malformed::NotLdh("trail-".into())),
            ("a%2ecom", Malformed::Idna),
            ("a b.com", Malformed::Idna),
            ("a/b.com", Malformed::Idna),
            ("a\\b.com", Malformed::Idna),
            ("a\0.com", Malformed::Idna),
            ("xn--zz.example", Malformed::Idna),
        ] {
            assert_eq!(Host::parse(text), Err(want), "{text:?}");
        }
        assert_eq!(Host::parse(&"a".repeat(2000)), Err(Malformed::TooLong));
    }

    /// RFC 1035's limits are the limits: a 63-character label and a 253-character
    /// name are names, one more character is not; input up to 1024 bytes is read.
    #[test]
    fn names_at_the_length_limits() {
        let at_limit = format!(
            "{0}.{1}.{2}.{3}",
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61)
        );
        assert_eq!(at_limit.len(), MAX_NAME_LEN);
        assert_eq!(Host::parse(&at_limit), Ok(name(&at_limit)));
        assert_eq!(
            Host::parse(&format!("{at_limit}d")),
            Err(Malformed::TooLong)
        );
        // Soft hyphens (U+00AD, two bytes each) are dropped by IDNA.
        let padded = format!("{}examples.com", "\u{ad}".repeat(506));
        assert_eq!(padded.len(), MAX_HOST_INPUT);
        assert_eq!(Host::parse(&padded), Ok(name("examples.com")));
        assert_eq!(Host::parse(&format!("{padded}.")), Err(Malformed::TooLong));
    }

    #[test]
    fn authorities() {
        let parse = |text| Target::parse_authority(text, None);
        assert_eq!(
            parse("Example.com.:443"),
            Ok(Target {
                host: name("example.com"),
                port: 443
            })
        );
        assert_eq!(parse("[::1]:80").unwrap().to_string(), "[::1]:80");
        assert_eq!(parse("0177.1:8080").unwrap().to_string(), "127.0.0.1:8080");
        assert_eq!(
            Target::parse_authority("example.com", Some(80))
                .unwrap()
                .to_string(),
            "example.com:80"
        );
        for (text, want) in [
            ("example.com", Malformed::MissingPort),
            ("[::1]", Malformed::MissingPort),
            ("example.com:", Malformed::BadPort),
            ("example.com:0", Malformed::BadPort),
            ("example.com:65536", Malformed::BadPort),
            ("example.com:080", Malformed::BadPort),
            ("example.com:+80", Malformed::BadPort),
            ("example.com:80 ", Malformed::BadPort),
            ("example.com:80x", Malformed::BadPort),
            ("example.com:8:0", Malformed::BadPort),
            ("example.com:１２", Malformed::BadPort),
            ("[::1]x:80", Malformed::BadPort),
            ("[::1]:80:80", Malformed::BadPort),
            ("user@example.com:80", Malformed::UserInfo),
            (":80", Malformed::Empty),
            ("::1:80", Malformed::Empty),
        ] {
            assert_eq!(parse(text), Err(want), "{text:?}");
        }
    }

    #[test]
    fn subdomains() {
        let d = |s: &str| DomainName(s.into());
        assert!(d("a.example.com").is_below(&d("example.com")));
        assert!(d("a.b.example.com").is_below(&d("example.com")));
        assert!(!d("example.com").is_below(&d("example.com")));
        assert!(!d("badexample.com").is_below(&d("example.com")));
        assert!(!d("example.com.evil").is_below(&d("example.com")));
        assert_eq!(d("a.example.com").label_count(), 3);
    }
}

/// Properties over arbitrary input: parsing never panics, and a parsed target
/// prints as text that parses back to itself.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_authority_parses_or_is_refused_and_round_trips(text in "\\PC{0,80}") {
            if let Ok(target) = Target::parse_authority(&text, Some(80)) {
                let shown = target.to_string();
                prop_assert_eq!(Target::parse_authority(&shown, None), Ok(target));
            }
        }

        #[test]
        fn hostlike_authorities_round_trip(
            text in "([a-zA-Z0-9-]{1,12}\\.){0,3}[a-zA-Z0-9-]{1,12}\\.?(:[0-9]{1,6})?|\\[[0-9a-fA-F:.]{2,40}\\](:[0-9]{1,5})?|[0-9x.]{1,20}(:[0-9]{1,5})?",
        ) {
            if let Ok(target) = Target::parse_authority(&text, Some(443)) {
                prop_assert_eq!(Target::parse_authority(&target.to_string(), None), Ok(target));
            }
        }
    }
}
