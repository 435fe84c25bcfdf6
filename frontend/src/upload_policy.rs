//! Where uploads may go: `UPLOAD_ALLOWED_HOSTS`, and the addresses refused when it
//! is empty.
//!
//! The frontend must not become a way to reach what its caller could not (SSRF).
//! With no allow list, an upload host's every address must be public: the shared
//! classifier ([`pysandbox_shared::net`]) refuses private, shared (CGNAT),
//! reserved, documentation, multicast, link-local and metadata, loopback and
//! unspecified addresses, in their IPv4-mapped, NAT64 and 6to4 forms too; and the
//! host's own interface addresses are refused even when public, since a service
//! bound to `0.0.0.0` answers on them as it would on loopback (review M1).
//!
//! A refusal names the address and never the port, and nothing is connected to, so
//! the answer is the same whether a port is open or not: no port scanning.

use std::net::IpAddr;
use std::str::FromStr;

use pysandbox_shared::net::{canonical, classify, Cidr};
use url::Host;

use crate::error::ApiError;
use crate::request::UploadUrl;

/// `UPLOAD_ALLOWED_HOSTS`: host names, IP addresses and CIDR blocks,
/// comma-separated. When empty, any host may be used whose addresses pass
/// [`refusal`]; when not, only these, and their addresses are not checked (the
/// operator vouches for them: this is how a private file service is opened).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedHosts(Vec<AllowedHost>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum AllowedHost {
    Name(String),
    Block(Cidr),
}

impl FromStr for AllowedHosts {
    type Err = String;

    fn from_str(list: &str) -> Result<Self, Self::Err> {
        let mut hosts = Vec::new();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let bare = entry
                .strip_prefix('[')
                .and_then(|e| e.strip_suffix(']'))
                .unwrap_or(entry);
            let host = if let Ok(ip) = bare.parse::<IpAddr>() {
                AllowedHost::Block(Cidr::single(ip))
            } else if bare.contains('/') {
                let block = bare
                    .parse::<Cidr>()
                    .map_err(|e| format!("{entry:?} is not a valid CIDR block: {e}"))?;
                AllowedHost::Block(block)
            } else {
                match Host::parse(entry) {
                    Ok(Host::Domain(name)) => AllowedHost::Name(name),
                    Ok(Host::Ipv4(ip)) => AllowedHost::Block(Cidr::single(ip.into())),
                    Ok(Host::Ipv6(ip)) => AllowedHost::Block(Cidr::single(ip.into())),
                    Err(_) => {
                        return Err(format!(
                            "{entry:?} is not a host name, IP address or CIDR block"
                        ))
                    }
                }
            };
            hosts.push(host);
        }
        Ok(AllowedHosts(hosts))
    }
}

impl AllowedHosts {
    /// Whether the list is empty (any host whose addresses pass may be used).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `host` is on the list: a name by name, an address by block
    /// (`::ffff:10.0.0.1` counts as 10.0.0.1).
    pub fn contains(&self, host: &Host<&str>) -> bool {
        let ip = match host {
            Host::Domain(domain) => {
                return self.0.iter().any(|allowed| match allowed {
                    AllowedHost::Name(name) => name.eq_ignore_ascii_case(domain),
                    AllowedHost::Block(_) => false,
                })
            }
            Host::Ipv4(v4) => IpAddr::V4(*v4),
            Host::Ipv6(v6) => canonical(IpAddr::V6(*v6)),
        };
        self.0.iter().any(|allowed| match allowed {
            AllowedHost::Block(block) => block.contains(ip),
            AllowedHost::Name(_) => false,
        })
    }

    /// Refuses an upload URL off a non-empty list, naming the field the caller used.
    pub fn check(&self, target: &UploadUrl) -> Result<(), ApiError> {
        match target.url.host() {
            Some(host) if self.is_empty() || self.contains(&host) => Ok(()),
            host => Err(ApiError::InvalidField {
                field: target.field.to_owned(),
                reason: format!(
                    "host {} is not in UPLOAD_ALLOWED_HOSTS",
                    host.map(|h| h.to_string()).unwrap_or_default()
                ),
            }),
        }
    }
}

/// Why an upload to `ip` is refused when `UPLOAD_ALLOWED_HOSTS` is empty, as in
/// "a private address", or `None` when it may go ahead. `own` are this host's
/// interface addresses.
pub fn refusal(ip: IpAddr, own: &[IpAddr]) -> Option<String> {
    if let Some(special) = classify(ip) {
        return Some(format!("{} address", special.article()));
    }
    let ip = canonical(ip);
    own.iter()
        .any(|&mine| canonical(mine) == ip)
        .then(|| "an address of this host".to_owned())
}

/// The addresses of this host's interfaces, read afresh (addresses come and go
/// with DHCP and VPNs; one netlink dump per upload batch is cheap).
pub fn interface_addresses() -> nix::Result<Vec<IpAddr>> {
    let addresses = nix::ifaddrs::getifaddrs()?
        .filter_map(|interface| {
            let address = interface.address?;
            if let Some(v4) = address.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                address.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .collect();
    Ok(addresses)
}

#[cfg(test)]
mod tests {
    use url::Url;

    use super::*;

    fn target(url: &str, field: &'static str) -> UploadUrl {
        UploadUrl {
            field,
            url: Url::parse(url).unwrap(),
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn every_special_range_and_form_is_refused() {
        for (text, why) in [
            ("127.0.0.1", "a loopback address"),
            ("::1", "a loopback address"),
            ("::ffff:127.0.0.1", "a loopback address"),
            ("64:ff9b::7f00:1", "a loopback address"),
            ("2002:7f00:1::", "a loopback address"),
            ("0.0.0.0", "an unspecified address"),
            ("::", "an unspecified address"),
            ("0.1.2.3", "a reserved address"),
            ("10.0.0.1", "a private address"),
            ("172.16.5.4", "a private address"),
            ("192.168.1.1", "a private address"),
            ("::ffff:192.168.1.1", "a private address"),
            ("64:ff9b::a00:1", "a private address"),
            ("2002:a00:1::1", "a private address"),
            ("fd12::1", "a private address"),
            ("100.64.0.1", "a shared (carrier-grade NAT) address"),
            ("169.254.169.254", "a cloud metadata address"),
            ("::ffff:169.254.169.254", "a cloud metadata address"),
            ("fd00:ec2::254", "a cloud metadata address"),
            ("169.254.0.1", "a link-local address"),
            ("fe80::1", "a link-local address"),
            ("224.0.0.1", "a multicast address"),
            ("ff02::1", "a multicast address"),
            ("255.255.255.255", "a broadcast address"),
            ("192.0.2.1", "a documentation address"),
            ("2001:db8::1", "a documentation address"),
            ("240.0.0.1", "a reserved address"),
            ("fec0::1", "a reserved address"),
        ] {
            assert_eq!(refusal(ip(text), &[]).as_deref(), Some(why), "{text}");
        }
        for public in ["93.184.215.14", "2606:4700:4700::1111", "::ffff:8.8.8.8"] {
            assert_eq!(refusal(ip(public), &[]), None, "{public}");
        }
    }

    #[test]
    fn this_hosts_own_addresses_are_refused_in_every_form() {
        let own = [ip("93.184.215.14"), ip("2606:4700::5")];
        for text in [
            "93.184.215.14",
            "::ffff:93.184.215.14",
            "64:ff9b::5db8:d70e",
            "2002:5db8:d70e::1",
            "2606:4700::5",
        ] {
            assert_eq!(
                refusal(ip(text), &own).as_deref(),
                Some("an address of this host"),
                "{text}"
            );
        }
        assert_eq!(refusal(ip("93.184.215.15"), &own), None);
    }

    #[test]
    fn this_host_has_addresses() {
        let own = interface_addresses().unwrap();
        assert!(own.contains(&ip("127.0.0.1")), "{own:?}");
    }

    #[test]
    fn allowed_hosts_parse_names_addresses_and_blocks() {
        let hosts: AllowedHosts = " Files.Example ,127.0.0.1,[::1],, ::2 ,10.0.0.0/8, fd00::/8"
            .parse()
            .unwrap();
        let block = |text: &str| AllowedHost::Block(text.parse().unwrap());
        assert_eq!(
            hosts,
            AllowedHosts(vec![
                AllowedHost::Name("files.example".into()),
                block("127.0.0.1/32"),
                block("::1/128"),
                block("::2/128"),
                block("10.0.0.0/8"),
                block("fd00::/8"),
            ])
        );
        assert!("".parse::<AllowedHosts>().unwrap().is_empty());
        for (bad, why) in [
            ("a b", "\"a b\" is not a host name, IP address or CIDR block"),
            (
                "http://x/",
                "\"http://x/\" is not a valid CIDR block: \"http:\" is not an IP address",
            ),
            (
                "10.0.0.1/8",
                "\"10.0.0.1/8\" is not a valid CIDR block: 10.0.0.1 has bits set beyond the /8 prefix",
            ),
        ] {
            assert_eq!(bad.parse::<AllowedHosts>().unwrap_err(), why, "{bad}");
        }
    }

    #[test]
    fn a_non_empty_list_refuses_other_hosts_naming_the_field() {
        let hosts: AllowedHosts = "files.example,127.0.0.1,::1,10.1.0.0/16".parse().unwrap();
        for ok in [
            "http://FILES.example/up",
            "https://files.example:8443/",
            "http://127.0.0.1:9/",
            "http://[::1]/",
            "http://10.1.2.3/",
            "http://[::ffff:10.1.2.3]/",
        ] {
            assert_eq!(hosts.check(&target(ok, "fileUploadUrl")), Ok(()), "{ok}");
        }
        assert_eq!(
            hosts.check(&target("http://example.com/", "file_upload_url")),
            Err(ApiError::InvalidField {
                field: "file_upload_url".into(),
                reason: "host example.com is not in UPLOAD_ALLOWED_HOSTS".into(),
            })
        );
        for refused in ["http://[::2]/", "http://10.2.0.1/"] {
            assert!(
                hosts.check(&target(refused, "fileUploadUrl")).is_err(),
                "{refused}"
            );
        }
        let empty = AllowedHosts::default();
        assert_eq!(
            empty.check(&target("http://169.254.169.254/", "fileUploadUrl")),
            Ok(())
        );
    }
}
