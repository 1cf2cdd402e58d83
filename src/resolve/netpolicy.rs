//! Where `tagpin serve` may connect. Whoever can create a pod chooses the registry hosts tagpin
//! connects to, so every registry, redirect target and token realm is checked after DNS
//! resolution: loopback, link-local (169.254.0.0/16 and fe80::/10, where the cloud metadata
//! services live; fd00:ec2::254 too), unspecified, broadcast and multicast addresses are refused
//! unless an `--allow-registry-cidr` covers them or the registry is named in
//! `--insecure-registry` (the operator named it). Private ranges stay allowed: in-cluster
//! registries live there.
//!
//! [`AddressPolicy::check_ip`] is pure; [`PolicyResolver`] applies it to DNS answers for reqwest,
//! and the registry client checks IP literals (which reqwest connects to without asking DNS).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// An address range (`10.0.0.0/8`, `fd00::/8`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (a, l) = s.split_once('/').unwrap_or((s, ""));
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{s:?} is not a CIDR (examples: 10.0.0.0/8, fd00::/8)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = if l.is_empty() {
            max
        } else {
            l.parse::<u8>()
                .ok()
                .filter(|n| *n <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0-{max}"))?
        };
        Ok(Self { addr, len })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:127.0.0.1`) is its IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Why an address is refused, for the warning (a short cause, never more).
pub fn forbidden_kind(ip: IpAddr) -> Option<&'static str> {
    match canonical(ip) {
        IpAddr::V4(v4) => v4_kind(v4),
        IpAddr::V6(v6) => v6_kind(v6),
    }
}

fn v4_kind(ip: Ipv4Addr) -> Option<&'static str> {
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if ip.is_unspecified() || ip.octets()[0] == 0 {
        Some("unspecified")
    } else if ip.is_multicast() || ip.is_broadcast() {
        Some("multicast or broadcast")
    } else {
        None
    }
}

const EC2_METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);

fn v6_kind(ip: Ipv6Addr) -> Option<&'static str> {
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.segments()[0] & 0xffc0 == 0xfe80 {
        Some("link-local")
    } else if ip == EC2_METADATA_V6 {
        Some("cloud metadata")
    } else if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_multicast() {
        Some("multicast or broadcast")
    } else {
        None
    }
}

/// The connection rules of one process. `open()` allows everything (`resolve` and `pin` act for
/// the person running them).
#[derive(Clone, Debug, Default)]
pub struct AddressPolicy {
    enforce: bool,
    allow: Vec<Cidr>,
    /// `host[:port]` named in `--insecure-registry`: the operator named them, so any address.
    named: Vec<String>,
}

impl AddressPolicy {
    pub fn open() -> Self {
        Self::default()
    }

    /// The `serve` rules: `allow` ranges (`--allow-registry-cidr`) and the hosts named in
    /// `--insecure-registry` (`host[:port]`).
    pub fn serve(allow: Vec<Cidr>, insecure: &[String]) -> Self {
        let named = insecure.iter().map(|h| h.to_ascii_lowercase()).collect();
        Self {
            enforce: true,
            allow,
            named,
        }
    }

    /// Whether `hostport` (`host[:port]` as in an image) was named by the operator.
    pub fn is_named(&self, hostport: &str) -> bool {
        self.named.iter().any(|n| n.eq_ignore_ascii_case(hostport))
    }

    /// Whether some named registry is on `host` (DNS answers carry no port).
    fn names_host(&self, host: &str) -> bool {
        self.named
            .iter()
            .any(|n| host_of(n).eq_ignore_ascii_case(host))
    }

    /// `Err(kind)` when an address may not be connected to.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), &'static str> {
        if !self.enforce || self.allow.iter().any(|c| c.contains(ip)) {
            return Ok(());
        }
        forbidden_kind(ip).map_or(Ok(()), Err)
    }

    /// Checks a URL's host (and port) before a request: an IP literal is checked here (reqwest
    /// connects to it without asking DNS); a name is checked by [`PolicyResolver`] at connect time.
    pub fn check_host(&self, host: &str, port: Option<u16>) -> Result<(), &'static str> {
        let hostport = match port {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        };
        if self.is_named(&hostport) {
            return Ok(());
        }
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        match literal.parse::<IpAddr>() {
            Ok(ip) => self.check_ip(ip),
            Err(_) => Ok(()),
        }
    }
}

/// `host` of `host[:port]`, `[v6]:port` or `v6`.
pub fn host_of(hostport: &str) -> &str {
    if let Some(rest) = hostport.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match hostport.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => hostport,
    }
}

/// DNS for registry requests: the system resolver, keeping only the addresses the policy
/// allows (all of them for a host the operator named).
#[derive(Clone, Debug)]
pub struct PolicyResolver(pub Arc<AddressPolicy>);

/// What a refused name resolves to, as the error reqwest reports.
#[derive(Debug, thiserror::Error)]
#[error("address not allowed ({kind})")]
pub struct NotAllowed {
    pub kind: &'static str,
}

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if policy.names_host(&host) {
                return Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs);
            }
            let mut refused = None;
            let allowed: Vec<SocketAddr> = addrs
                .into_iter()
                .filter(|a| match policy.check_ip(a.ip()) {
                    Ok(()) => true,
                    Err(kind) => {
                        refused = Some(kind);
                        false
                    }
                })
                .collect();
            match (allowed.is_empty(), refused) {
                (true, Some(kind)) => Err(Box::new(NotAllowed { kind }) as _),
                _ => Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn metadata_loopback_and_link_local_are_refused_private_ranges_are_not() {
        let p = AddressPolicy::serve(vec![], &[]);
        for (a, kind) in [
            ("169.254.169.254", "link-local"),
            ("169.254.0.1", "link-local"),
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("::1", "loopback"),
            ("fe80::1", "link-local"),
            ("febf::1", "link-local"),
            ("fd00:ec2::254", "cloud metadata"),
            ("::ffff:169.254.169.254", "link-local"),
            ("::ffff:127.0.0.1", "loopback"),
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "unspecified"),
            ("::", "unspecified"),
            ("224.0.0.1", "multicast or broadcast"),
            ("255.255.255.255", "multicast or broadcast"),
            ("ff02::1", "multicast or broadcast"),
        ] {
            assert_eq!(p.check_ip(ip(a)), Err(kind), "{a}");
        }
        for a in [
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "fd00::1",
            "fd00:ec2::253",
            "8.8.8.8",
            "2001:db8::1",
        ] {
            assert_eq!(p.check_ip(ip(a)), Ok(()), "{a}");
        }
    }

    #[test]
    fn allowed_ranges_and_named_hosts_open_the_door() {
        let p = AddressPolicy::serve(
            vec!["127.0.0.0/8".parse().unwrap(), "fe80::/10".parse().unwrap()],
            &[
                "metadata.internal:5000".into(),
                "169.254.10.10".into(),
                "127.0.0.9:5000".into(),
            ],
        );
        assert_eq!(p.check_ip(ip("127.0.0.1")), Ok(()));
        assert_eq!(p.check_ip(ip("fe80::9")), Ok(()));
        assert_eq!(p.check_ip(ip("169.254.169.254")), Err("link-local"));
        assert_eq!(p.check_host("169.254.10.10", None), Ok(()), "named");
        assert_eq!(
            p.check_host("169.254.10.10", Some(80)),
            Err("link-local"),
            "another port"
        );
        assert_eq!(p.check_host("169.254.169.254", None), Err("link-local"));
        assert_eq!(
            p.check_host("[::1]", None),
            Err("loopback"),
            "::1 is in no allowed range"
        );
        assert!(p.is_named("METADATA.internal:5000"));
        assert!(p.names_host("metadata.internal"));
        let strict = AddressPolicy::serve(vec![], &["127.0.0.9:5000".into()]);
        assert_eq!(strict.check_host("127.0.0.9", Some(5000)), Ok(()));
        assert_eq!(
            strict.check_host("127.0.0.9", Some(22)),
            Err("loopback"),
            "only the port named"
        );
        assert_eq!(AddressPolicy::open().check_ip(ip("127.0.0.1")), Ok(()));
    }

    #[test]
    fn cidrs_parse_and_match() {
        let c: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(c.contains(ip("10.1.200.3")));
        assert!(!c.contains(ip("10.2.0.1")));
        assert!(!c.contains(ip("::1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("127.0.0.1")));
        let one: Cidr = "169.254.169.254".parse().unwrap();
        assert_eq!(one.to_string(), "169.254.169.254/32");
        assert!(!one.contains(ip("169.254.169.253")));
        let v6: Cidr = "fd00:ec2::/32".parse().unwrap();
        assert!(v6.contains(ip("fd00:ec2::254")));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nope".parse::<Cidr>().is_err());
    }

    #[test]
    fn host_of_host_port_forms() {
        assert_eq!(host_of("reg.example:5000"), "reg.example");
        assert_eq!(host_of("reg.example"), "reg.example");
        assert_eq!(host_of("[::1]:5000"), "::1");
        assert_eq!(host_of("::1"), "::1");
        assert_eq!(host_of("127.0.0.1:1"), "127.0.0.1");
    }
}
