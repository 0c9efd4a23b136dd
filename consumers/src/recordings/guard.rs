//! What the archiver may connect to. URLs come from webhook payloads, so
//! without this guard anyone able to send a webhook could make the archiver
//! fetch from internal services (SSRF) and publish what it got.
//!
//! Three checks, unless `allow_private_targets` is set (or the URL was
//! built from a fixed-host template and `allow_private_templates` is): a URL must be
//! `http` or `https`; an address literal must be public ([`is_public`]);
//! a host name is resolved by [`GuardedResolver`], which drops every
//! non-public address, so the connection goes only to an address that
//! passed the check (no window for DNS rebinding between check and
//! connect). Each redirect hop passes the first two checks again, and its
//! host goes through the same resolver. Proxies are disabled: a proxy would
//! resolve the host itself.

use std::error::Error as StdError;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::{redirect, Url};

/// Most redirects followed for one download.
const MAX_REDIRECTS: usize = 5;

/// Why a target was refused. Final: retrying cannot change it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("scheme `{0}` is not http or https")]
    Scheme(String),
    #[error("URL has no host")]
    NoHost,
    #[error("address {0} is not public (loopback, private, link-local, ...)")]
    Address(IpAddr),
    #[error("host resolves only to non-public addresses")]
    Resolved,
    #[error("more than {MAX_REDIRECTS} redirects")]
    TooManyRedirects,
}

/// Checks what can be checked without a lookup: scheme, and the host when
/// it is an address literal.
pub(crate) fn check_url(url: &Url, allow_private: bool) -> Result<(), Refused> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Refused::Scheme(url.scheme().to_string()));
    }
    let host = url.host_str().ok_or(Refused::NoHost)?;
    // The URL parser has already turned every IPv4 spelling (decimal,
    // octal, hex) into dotted form, and IPv6 literals come bracketed.
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    let Ok(ip) = literal.parse::<IpAddr>() else {
        return Ok(());
    };
    if allow_private || is_public(ip) {
        Ok(())
    } else {
        Err(Refused::Address(ip))
    }
}

/// Whether `ip` is an ordinary public unicast address. Refused: loopback,
/// private (10/8, 172.16/12, 192.168/16), shared (100.64/10), link-local,
/// unspecified, broadcast, multicast, documentation, benchmarking and
/// reserved IPv4 ranges; IPv6 loopback, unspecified, multicast,
/// unique-local (fc00::/7), link- and site-local, documentation, Teredo;
/// and IPv6 forms that embed an IPv4 address (mapped, translated,
/// compatible, NAT64, 6to4) when that address is refused; local-use NAT64
/// always.
pub(crate) fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => public_v4(v4),
        IpAddr::V6(v6) => public_v6(v6),
    }
}

fn public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (b & 0xc0) == 64)
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (b & 0xfe) == 18)
        || a >= 240)
}

fn public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if let Some(v4) = ip.to_ipv4_mapped() {
        return public_v4(v4);
    }
    if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() {
        return false;
    }
    // The last 32 bits are an IPv4 address in IPv4-compatible (::a.b.c.d,
    // deprecated), IPv4-translated (::ffff:0:a.b.c.d, RFC 2765/6052: a
    // stack may send it to a.b.c.d) and well-known NAT64 (64:ff9b::/96).
    let compatible = s[..6] == [0; 6];
    let translated = s[..6] == [0, 0, 0, 0, 0xffff, 0];
    let nat64 = s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0; 4];
    if compatible || translated || nat64 {
        return public_v4(embedded(s[6], s[7]));
    }
    // 6to4 (2002::/16) carries the IPv4 address in bits 16..48.
    if s[0] == 0x2002 {
        return public_v4(embedded(s[1], s[2]));
    }
    !((s[0] & 0xfe00) == 0xfc00 // unique local
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] & 0xffc0) == 0xfec0 // site-local
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x2001 && s[1] == 0) // Teredo
        // The rest of 64:ff9b::/32, local-use NAT64 (64:ff9b:1::/48) among
        // it: the IPv4 address sits where the operator's prefix length puts
        // it, so it cannot be checked.
        || (s[0] == 0x64 && s[1] == 0xff9b))
}

/// Resolves host names and keeps only the addresses the guard allows.
pub(crate) struct GuardedResolver {
    pub(crate) allow_private: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|a| allow_private || is_public(a.ip()))
                .collect();
            if allowed.is_empty() && !found.is_empty() {
                return Err(Box::new(Refused::Resolved) as Box<dyn StdError + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// Follows up to [`MAX_REDIRECTS`] redirects, each checked by [`check_url`].
pub(crate) fn redirect_policy(allow_private: bool) -> redirect::Policy {
    redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= MAX_REDIRECTS {
            return attempt.error(Refused::TooManyRedirects);
        }
        match check_url(attempt.url(), allow_private) {
            Ok(()) => attempt.follow(),
            Err(refused) => attempt.error(refused),
        }
    })
}

/// The guard's refusal somewhere in an error's cause chain.
pub(crate) fn find_refusal(error: &(dyn StdError + 'static)) -> Option<Refused> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(refused) = e.downcast_ref::<Refused>() {
            return Some(refused.clone());
        }
        current = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn non_public_addresses_are_refused() {
        for text in [
            "127.0.0.1",
            "127.255.0.9",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.254",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "0.1.2.3",
            "100.64.0.1",
            "192.0.0.8",
            "198.18.0.1",
            "192.0.2.1",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "::",
            "::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "2001:0:4136:e378::1",
            "::ffff:10.0.0.1",
            "::ffff:127.0.0.1",
            "::10.0.0.1",
            "64:ff9b::a00:1",
            "2002:c0a8:101::1",
        ] {
            assert!(!is_public(ip(text)), "{text} should be refused");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for text in [
            "93.184.216.34",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2606:2800:220:1:248:1893:25c8:1946",
            "::ffff:93.184.216.34",
            "64:ff9b::808:808",
            "2002:5db8:d822::1",
        ] {
            assert!(is_public(ip(text)), "{text} should pass");
        }
    }

    /// Each IPv6 form that carries an IPv4 address, with a non-public one
    /// (refused) and a public one (allowed, except local-use NAT64).
    #[test]
    fn ipv6_forms_embedding_ipv4_are_judged_by_the_ipv4_address() {
        let forms = [
            ("mapped", "::ffff:127.0.0.1", "::ffff:8.8.8.8"),
            ("translated", "::ffff:0:127.0.0.1", "::ffff:0:8.8.8.8"),
            ("translated", "::ffff:0:a9fe:a9fe", "::ffff:0:5db8:d822"),
            ("translated", "::ffff:0:a00:1", "::ffff:0:808:808"),
            ("compatible", "::127.0.0.1", "::8.8.8.8"),
            ("compatible", "::192.168.1.1", "::1.1.1.1"),
            ("NAT64", "64:ff9b::127.0.0.1", "64:ff9b::8.8.8.8"),
            ("NAT64", "64:ff9b::a9fe:a9fe", "64:ff9b::5db8:d822"),
            ("6to4", "2002:7f00:1::1", "2002:808:808::1"),
            ("6to4", "2002:a9fe:a9fe::1", "2002:5db8:d822::1"),
        ];
        for (form, private, public) in forms {
            assert!(
                !is_public(ip(private)),
                "{form} {private} should be refused"
            );
            assert!(is_public(ip(public)), "{form} {public} should pass");
        }
        for local_use in [
            "64:ff9b:1::a00:1",
            "64:ff9b:1:808:808::",
            "64:ff9b:1::808:808",
        ] {
            assert!(!is_public(ip(local_use)), "local-use NAT64 {local_use}");
        }
        let url = Url::parse("http://[::ffff:0:127.0.0.1]:8080/api/").unwrap();
        assert_eq!(
            check_url(&url, false),
            Err(Refused::Address(ip("::ffff:0:7f00:1")))
        );
    }

    #[test]
    fn urls_are_checked_before_any_connection() {
        let check = |u: &str, allow| check_url(&Url::parse(u).unwrap(), allow);
        assert_eq!(
            check("file:///etc/passwd", false),
            Err(Refused::Scheme("file".into()))
        );
        assert_eq!(
            check("ftp://93.184.216.34/r.mp3", true),
            Err(Refused::Scheme("ftp".into()))
        );
        assert_eq!(
            check("http://10.0.0.1/r.mp3", false),
            Err(Refused::Address(ip("10.0.0.1")))
        );
        assert_eq!(
            check("http://[::1]:8080/r.mp3", false),
            Err(Refused::Address(ip("::1")))
        );
        assert_eq!(
            check("http://2130706433/r.mp3", false),
            Err(Refused::Address(ip("127.0.0.1"))),
            "a decimal host is an IPv4 literal"
        );
        assert_eq!(check("http://127.0.0.1:9/r.mp3", true), Ok(()));
        assert_eq!(check("https://recordings.example/r.mp3", false), Ok(()));
    }

    #[tokio::test]
    async fn the_resolver_drops_non_public_addresses() {
        let refused = GuardedResolver {
            allow_private: false,
        }
        .resolve("localhost".parse().unwrap())
        .await
        .err()
        .expect("localhost is refused");
        assert_eq!(find_refusal(refused.as_ref()), Some(Refused::Resolved));
        let allowed = GuardedResolver {
            allow_private: true,
        }
        .resolve("localhost".parse().unwrap())
        .await
        .expect("allowed when configured");
        assert!(allowed.into_iter().all(|a| a.ip().is_loopback()));
    }
}
