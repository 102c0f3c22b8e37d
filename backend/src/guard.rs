//! The SSRF guard: the crawler must not become a way into the operator's
//! own network.
//!
//! Clients name the URLs, so every address the crawler connects to is
//! checked. The check lives in the HTTP client's name resolver
//! ([`GuardedResolver`]): the addresses that pass are the very addresses the
//! client connects to, so a DNS answer cannot change between check and
//! connect (no rebinding), and every redirect hop and every robots.txt fetch
//! goes through the same resolver. [`check_literal`] is the cheap early
//! check the gateway runs at validation time (no DNS there: it runs on
//! reader threads that must not block).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ureq::http::Uri;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::NextTimeout;

/// Which addresses the crawler may connect to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuardPolicy {
    /// Allow everything (`--allow-private`: tests against loopback fixtures,
    /// intranet crawlers).
    pub allow_private: bool,
    /// Exceptions to the rule when `allow_private` is off: exact addresses
    /// that may be fetched although they are private.
    pub allow_addrs: Vec<IpAddr>,
}

impl GuardPolicy {
    pub fn permits(&self, ip: IpAddr) -> bool {
        self.allow_private || self.allow_addrs.contains(&ip) || !is_internal(ip)
    }
}

/// True for addresses a public crawler must never reach: private,
/// loopback, link-local, unspecified, shared (CGNAT), broadcast and
/// multicast, in v4 and v6, with v4 addresses embedded in v6 (mapped,
/// compatible, NAT64) judged as the v4 address they reach.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => is_internal_v6(v6),
    }
}

fn is_internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        // 0.0.0.0/8 "this network": Linux connects 0.x.y.z to the local host.
        || a == 0
        // 100.64.0.0/10 shared address space (carrier-grade NAT).
        || (a == 100 && (b & 0xc0) == 64)
}

fn is_internal_v6(ip: Ipv6Addr) -> bool {
    // `to_ipv4` covers both ::a.b.c.d (compatible, which also makes ::1 and
    // :: judge as 0.0.0.1 and 0.0.0.0) and ::ffff:a.b.c.d (mapped).
    if let Some(v4) = ip.to_ipv4() {
        return is_internal_v4(v4);
    }
    let s = ip.segments();
    // 64:ff9b::/96, the NAT64 well-known prefix, reaches the embedded v4.
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        let o = ip.octets();
        return is_internal_v4(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
    }
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_unique_local()
        || ip.is_unicast_link_local()
        // fec0::/10, deprecated site-local, still routed inside some networks.
        || (s[0] & 0xffc0) == 0xfec0
}

/// The validation-time check: refuses hosts that are internal by their
/// spelling alone (IP literals, `localhost`). Names that merely resolve to
/// internal addresses are caught later by [`GuardedResolver`].
pub fn check_literal(host: &url::Host<&str>, policy: &GuardPolicy) -> Result<(), PrivateAddress> {
    if policy.allow_private {
        return Ok(());
    }
    let refused = match host {
        url::Host::Ipv4(ip) => !policy.permits(IpAddr::V4(*ip)),
        url::Host::Ipv6(ip) => !policy.permits(IpAddr::V6(*ip)),
        url::Host::Domain(d) => {
            let d = d.trim_end_matches('.');
            d.eq_ignore_ascii_case("localhost") || d.to_ascii_lowercase().ends_with(".localhost")
        }
    };
    if refused {
        Err(PrivateAddress(host.to_string()))
    } else {
        Ok(())
    }
}

/// The error a refused host produces; the worker maps it to the stable
/// code `private_address`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrivateAddress(pub String);

impl fmt::Display for PrivateAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is a private, loopback or link-local address", self.0)
    }
}

impl std::error::Error for PrivateAddress {}

/// A ureq resolver that drops the addresses the policy refuses and fails
/// with [`PrivateAddress`] when none is left.
#[derive(Debug)]
pub struct GuardedResolver {
    policy: GuardPolicy,
    inner: DefaultResolver,
}

impl GuardedResolver {
    pub fn new(policy: GuardPolicy) -> Self {
        GuardedResolver {
            policy,
            inner: DefaultResolver::default(),
        }
    }
}

impl Resolver for GuardedResolver {
    fn resolve(
        &self,
        uri: &Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let all = self.inner.resolve(uri, config, timeout)?;
        let mut kept = self.empty();
        for addr in all.iter() {
            if self.policy.permits(addr.ip()) {
                kept.push(*addr);
            }
        }
        if kept.is_empty() {
            let host = uri.host().unwrap_or_default().to_string();
            return Err(ureq::Error::Other(Box::new(PrivateAddress(host))));
        }
        Ok(kept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn internal(s: &str) -> bool {
        is_internal(s.parse().unwrap())
    }

    #[test]
    fn classifies_v4() {
        for ip in [
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "127.0.0.1",
            "127.255.0.9",
            "169.254.169.254",
            "0.0.0.0",
            "0.1.2.3",
            "100.64.0.1",
            "255.255.255.255",
            "224.0.0.1",
        ] {
            assert!(internal(ip), "{ip} should be internal");
        }
        for ip in [
            "8.8.8.8",
            "93.184.216.34",
            "172.32.0.1",
            "100.128.0.1",
            "1.1.1.1",
        ] {
            assert!(!internal(ip), "{ip} should be public");
        }
    }

    #[test]
    fn classifies_v6_including_embedded_v4() {
        for ip in [
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "fec0::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a00:1",
        ] {
            assert!(internal(ip), "{ip} should be internal");
        }
        for ip in [
            "2001:4860:4860::8888",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2606:4700::1111",
        ] {
            assert!(!internal(ip), "{ip} should be public");
        }
    }

    #[test]
    fn policy_exceptions() {
        let strict = GuardPolicy::default();
        assert!(!strict.permits("127.0.0.1".parse().unwrap()));
        assert!(strict.permits("8.8.8.8".parse().unwrap()));
        let open = GuardPolicy {
            allow_private: true,
            ..Default::default()
        };
        assert!(open.permits("10.0.0.1".parse().unwrap()));
        let one = GuardPolicy {
            allow_private: false,
            allow_addrs: vec!["127.0.0.1".parse().unwrap()],
        };
        assert!(one.permits("127.0.0.1".parse().unwrap()));
        assert!(!one.permits("127.0.0.2".parse().unwrap()));
    }

    #[test]
    fn literal_hosts() {
        let strict = GuardPolicy::default();
        let host = |s: &str| url::Url::parse(s).unwrap();
        for u in [
            "http://127.0.0.1/",
            "http://[::1]/",
            "http://localhost:8080/",
            "http://a.localhost/",
            "http://LOCALHOST./",
            "http://10.1.2.3/",
            "http://[::ffff:192.168.0.1]/",
        ] {
            let u = host(u);
            assert!(check_literal(&u.host().unwrap(), &strict).is_err(), "{u}");
        }
        for u in [
            "http://example.com/",
            "http://8.8.8.8/",
            "http://localhost.example.com/",
        ] {
            let u = host(u);
            assert!(check_literal(&u.host().unwrap(), &strict).is_ok(), "{u}");
        }
        let open = GuardPolicy {
            allow_private: true,
            ..Default::default()
        };
        assert!(check_literal(&host("http://127.0.0.1/").host().unwrap(), &open).is_ok());
    }

    #[test]
    fn resolver_refuses_before_connecting() {
        let r = GuardedResolver::new(GuardPolicy::default());
        let config = ureq::config::Config::default();
        let timeout = NextTimeout::default();
        for uri in [
            "http://10.0.0.1/",
            "http://localhost/",
            "http://[::1]:8080/",
            "http://169.254.169.254/latest",
        ] {
            let uri: Uri = uri.parse().unwrap();
            let err = r.resolve(&uri, &config, timeout).unwrap_err();
            match err {
                ureq::Error::Other(e) => assert!(e.downcast_ref::<PrivateAddress>().is_some()),
                other => panic!("{uri}: unexpected {other:?}"),
            }
        }
        let open = GuardedResolver::new(GuardPolicy {
            allow_private: true,
            ..Default::default()
        });
        let uri: Uri = "http://127.0.0.1:9/".parse().unwrap();
        let addrs = open.resolve(&uri, &config, timeout).unwrap();
        assert_eq!(addrs.len(), 1);
    }
}
