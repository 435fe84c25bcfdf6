//! What a job may reach: domain patterns, the allow and deny lists, ports, fixed
//! name-to-address mappings, and which addresses count as not public.
//!
//! A name passing the lists is not enough: it must also resolve only to public
//! addresses, or an allowed name pointing at 127.0.0.1 or 169.254.169.254 would
//! open the host's own services and the cloud metadata endpoint (the hole the seed
//! service's name-only filter left, as in SSRF write-ups such as Capital One 2019).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use pysandbox_shared::net::{classify, Cidr, Special};
use pysandbox_shared::text::shown;
use pysandbox_shared::MAX_REQUESTED_DOMAINS;

use super::ask::{AskLink, Asker};
use super::target::{DomainName, Host, Malformed, Target};

/// The most characters of a client's text quoted in a message.
pub const MAX_SHOWN_CHARS: usize = 100;

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

/// The checked network policy of the executor, or of one job once narrowed.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    allowed: Vec<DomainPattern>,
    denied: Vec<DomainPattern>,
    ports: Vec<u16>,
    private_ok: Vec<Cidr>,
    resolve: BTreeMap<DomainName, Vec<IpAddr>>,
    /// The ask callback, which decides targets neither list covers.
    ask: Option<Asker>,
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
            ask: None,
        }
    }

    /// The same policy, with the ask callback deciding targets neither list covers.
    pub fn with_ask(self, ask: Asker) -> Policy {
        Policy {
            ask: Some(ask),
            ..self
        }
    }

    /// Links the ask callback, if any, to the job's connection, where its questions
    /// go and its answers come back.
    pub fn link_asks(&mut self, link: AskLink) {
        if let Some(ask) = &mut self.ask {
            *ask = ask.linked(link);
        }
    }

    /// The ask callback, when targets no list covers may be asked about.
    pub(super) fn asker(&self) -> Option<&Asker> {
        self.ask.as_ref()
    }

    /// Whether any target at all may be reached (through the allow list or the ask
    /// callback); if not, a job gets no proxy.
    pub fn allows_anything(&self) -> bool {
        !self.allowed.is_empty() || self.ask.is_some()
    }

    /// The policy for a job that asks for `requested` (`None`: the whole allow
    /// list). Each entry must be covered by the configured allow list; the deny list,
    /// ports and address rules stay as configured. A job that narrows the list has
    /// said what it needs: the ask callback is never asked about anything else.
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
                entry: shown(entry, MAX_SHOWN_CHARS),
                error,
            })?;
            if !self.allowed.iter().any(|a| a.covers(&pattern)) {
                return Err(NarrowError::NotAllowed {
                    entry: shown(entry, MAX_SHOWN_CHARS),
                });
            }
            allowed.push(pattern);
        }
        Ok(Policy {
            allowed,
            ask: None,
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
        self.destination(target)
    }

    /// Checks a target's port and, for an IP literal or a name with fixed
    /// addresses, those addresses: everything but the lists. What the ask callback
    /// allows must pass this too.
    pub fn destination(&self, target: &Target) -> Result<Destination, Refusal> {
        if !self.ports.contains(&target.port) {
            return Err(Refusal::Port(target.port));
        }
        match &target.host {
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
    #[error("not in allowed domains, and refused by the ask callback")]
    AskRefused,
    #[error("not in allowed domains, and the ask callback gave no valid answer")]
    AskFailed,
    #[error("not in allowed domains, and the ask callback did not answer within {0} ms")]
    AskTimedOut(u64),
    #[error("not in allowed domains, and this job asked the ask callback {0} questions already")]
    AskLimit(u32),
}

impl Refusal {
    /// The kind of refusal, for metrics: one of [`crate::metrics::REFUSALS`].
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::BadRequest(_) => "bad_request",
            Refusal::Malformed(_) => "malformed_target",
            Refusal::Scheme => "scheme",
            Refusal::HostMismatch => "host_mismatch",
            Refusal::Denied => "denied",
            Refusal::NotAllowed => "not_allowed",
            Refusal::IpLiteral => "ip_literal",
            Refusal::Port(_) => "port",
            Refusal::Address { .. } => "address",
            Refusal::TooManyConnections(_) => "too_many_connections",
            Refusal::TooManyClientConnections(_) => "too_many_client_connections",
            Refusal::ExecutorBusy(_) => "executor_busy",
            Refusal::Bytes(_) => "bytes",
            Refusal::AskRefused => "ask_refused",
            Refusal::AskFailed => "ask_failed",
            Refusal::AskTimedOut(_) => "ask_timed_out",
            Refusal::AskLimit(_) => "ask_limit",
        }
    }
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

    /// Each refusal is counted under its own label of `/metrics`, in the order the
    /// metrics list them.
    #[test]
    fn every_refusal_is_counted_under_its_own_label() {
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let refusals = [
            Refusal::BadRequest("x"),
            Refusal::Malformed(Malformed::Empty),
            Refusal::Scheme,
            Refusal::HostMismatch,
            Refusal::Denied,
            Refusal::NotAllowed,
            Refusal::IpLiteral,
            Refusal::Port(22),
            Refusal::Address {
                ip,
                special: classify(ip).unwrap(),
                resolved: true,
            },
            Refusal::TooManyConnections(1),
            Refusal::TooManyClientConnections(1),
            Refusal::ExecutorBusy(1),
            Refusal::Bytes(1),
            Refusal::AskRefused,
            Refusal::AskFailed,
            Refusal::AskTimedOut(1),
            Refusal::AskLimit(1),
        ];
        assert_eq!(refusals.map(|r| r.kind()), crate::metrics::REFUSALS);
    }

    /// A job that narrows the list is never asked about anything else; one that
    /// does not keeps the callback, and the callback alone is network enough.
    #[test]
    fn narrowing_drops_the_ask_callback() {
        let asker = Asker::new(super::super::ask::AskSettings {
            url: "http://c.test/".into(),
            token: None,
            timeout: std::time::Duration::from_secs(1),
            max_per_job: 1,
        });
        let policy = policy().with_ask(asker.clone());
        assert!(policy.narrowed(None).unwrap().asker().is_some());
        let narrowed = policy.narrowed(Some(&["allowed.test".to_owned()])).unwrap();
        assert!(narrowed.asker().is_none());
        let only_asks = Policy::default().with_ask(asker);
        assert!(only_asks.allows_anything());
        assert!(!only_asks.narrowed(Some(&[])).unwrap().allows_anything());
        // The checks an answer cannot lift, made before asking.
        assert_eq!(
            policy.destination(&target("unlisted.test:22")),
            Err(Refusal::Port(22))
        );
        assert_eq!(
            policy
                .destination(&target("192.0.2.7:80"))
                .unwrap_err()
                .to_string(),
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
        // The maximum itself is allowed (a mutant moving the bound went unnoticed).
        assert!(policy.narrowed(Some(&many[1..])).is_ok());
    }
}
