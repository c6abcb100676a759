//! Webhook targets: which URLs the gateway may POST a client's webhook to.
//!
//! A webhook is an outbound request to a URL a client chose, so it must not become a way
//! into the network the gateway runs in (SSRF): only `http`/`https`, no credentials in the
//! URL, and no address that is loopback, private, link-local (cloud metadata services live at
//! 169.254.169.254), carrier-grade NAT, unspecified, multicast or reserved — unless the
//! operator allows a range explicitly (tests on loopback, an internal receiver).
//!
//! A host name is checked twice: its syntax here when the task is submitted, and every
//! address it resolves to at delivery time ([`TargetPolicy::allows`]), by the host that
//! resolves it — a name that resolves to a private address is refused then, and the
//! connection is made to the checked address only, so DNS cannot be re-pointed in between.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Longest webhook URL accepted.
pub const MAX_URL_BYTES: usize = 2048;

/// Why a webhook URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// Not an absolute `http(s)://host[:port][/path]` URL.
    #[error("`{0}` is not an absolute http(s) URL")]
    Malformed(String),
    /// A scheme other than http or https.
    #[error("webhook URLs must use http or https, not `{0}`")]
    Scheme(String),
    /// `user:password@` in the URL.
    #[error("webhook URLs must not carry credentials")]
    Credentials,
    /// Longer than [`MAX_URL_BYTES`].
    #[error("webhook URLs are at most {MAX_URL_BYTES} bytes")]
    TooLong,
    /// The address is not public and the policy does not allow it.
    #[error("webhook target {0} is a loopback, private, link-local or reserved address")]
    Forbidden(IpAddr),
}

/// The host part of a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetHost {
    /// An IP literal (checked already when parsed under a policy).
    Ip(IpAddr),
    /// A DNS name (lower-cased), checked after resolution.
    Name(String),
}

/// A parsed webhook URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookTarget {
    /// The URL as given (trimmed).
    pub url: String,
    /// `http` or `https`.
    pub scheme: String,
    /// Host name or address.
    pub host: TargetHost,
    /// The port (the scheme's default when absent).
    pub port: u16,
    /// Path and query (`/` when absent).
    pub path: String,
}

/// An IP range in CIDR notation (`10.0.0.0/8`, `::1/128`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `address/prefix` (a bare address is a single host).
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let text = text.trim();
        let (address, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let network: IpAddr = address
            .parse()
            .map_err(|_| format!("`{text}` is not an IP address or CIDR range"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{text}`: the prefix length must be 0-{max}"))?,
            None => max,
        };
        Ok(Cidr { network, prefix })
    }

    /// Whether `ip` is inside this range (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Which non-public addresses a deployment allows webhooks to reach.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetPolicy {
    /// Ranges allowed although not public (empty: public addresses only).
    pub allow: Vec<Cidr>,
}

impl TargetPolicy {
    /// Whether a webhook may be sent to `ip`.
    pub fn allows(&self, ip: IpAddr) -> bool {
        is_public(ip) || self.allow.iter().any(|c| c.contains(ip))
    }

    /// Parses and checks a webhook URL: its syntax, and its address when it is an IP literal.
    pub fn check(&self, url: &str) -> Result<WebhookTarget, TargetError> {
        let target = parse(url)?;
        if let TargetHost::Ip(ip) = target.host {
            if !self.allows(ip) {
                return Err(TargetError::Forbidden(ip));
            }
        }
        Ok(target)
    }
}

/// IPv4-mapped and IPv4-compatible-by-NAT64 IPv6 addresses, as the IPv4 address they reach.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// Whether `ip` is a globally routable unicast address.
pub fn is_public(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT, 100.64.0.0/10
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    let nat64 = ip.segments()[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
    if nat64 {
        // 64:ff9b::/96 reaches the embedded IPv4 address.
        let [.., a, b, c, d] = ip.octets();
        return is_public_v4(Ipv4Addr::new(a, b, c, d));
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local, fc00::/7
        || (first & 0xffc0) == 0xfe80 // link-local, fe80::/10
        || (first & 0xffc0) == 0xfec0 // site-local (deprecated), fec0::/10
        || first == 0x2001 && ip.segments()[1] == 0x0db8 // documentation
        || u128::from(ip) >> 96 == 0) // IPv4-compatible and other ::/96 forms
}

/// Parses `http(s)://host[:port][/path][?query]` (no fragment is sent, so it is dropped).
pub fn parse(url: &str) -> Result<WebhookTarget, TargetError> {
    let url = url.trim();
    if url.len() > MAX_URL_BYTES {
        return Err(TargetError::TooLong);
    }
    let malformed = || TargetError::Malformed(url.chars().take(100).collect());
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(malformed());
    }
    let (scheme, rest) = url.split_once("://").ok_or_else(malformed)?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err(TargetError::Scheme(scheme.chars().take(20).collect()));
    }
    let rest = rest.split('#').next().unwrap_or("");
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    if authority.contains('@') {
        return Err(TargetError::Credentials);
    }
    let (host, port) = split_host_port(authority).ok_or_else(malformed)?;
    let port = match port {
        Some(p) => p,
        None if scheme == "https" => 443,
        None => 80,
    };
    let host = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        TargetHost::Ip(IpAddr::V6(v6.parse().map_err(|_| malformed())?))
    } else if let Ok(v4) = host.parse::<Ipv4Addr>() {
        TargetHost::Ip(IpAddr::V4(v4))
    } else if valid_host_name(host) {
        TargetHost::Name(host.trim_end_matches('.').to_ascii_lowercase())
    } else {
        return Err(malformed());
    };
    let path = match path {
        "" => "/".to_string(),
        p if p.starts_with('?') => format!("/{p}"),
        p => p.to_string(),
    };
    Ok(WebhookTarget {
        url: url.to_string(),
        scheme,
        host,
        port,
        path,
    })
}

fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    if authority.is_empty() {
        return None;
    }
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']')?;
        let (host, rest) = authority.split_at(end + 1);
        match rest {
            "" => (host, None),
            r => (host, Some(r.strip_prefix(':')?)),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p != 0)?),
        None => None,
    };
    Some((host, port))
}

/// Letters, digits, hyphens and dots, labels of 1-63 characters, 253 at most; integers and
/// other forms some resolvers read as addresses (`2130706433`, `0x7f.1`) are refused, since
/// they would dodge the address check.
fn valid_host_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() || host.len() > 253 {
        return false;
    }
    let labels_ok = host.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    });
    let last = host.rsplit('.').next().unwrap_or("");
    let numeric_tail = last.bytes().all(|b| b.is_ascii_digit())
        || (last.len() > 2 && last[..2].eq_ignore_ascii_case("0x"));
    labels_ok && !numeric_tail
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public_only() -> TargetPolicy {
        TargetPolicy::default()
    }

    #[test]
    fn parses_urls() {
        let t = parse("https://hooks.example.com/a/b?x=1#frag").unwrap();
        assert_eq!(t.scheme, "https");
        assert_eq!(t.host, TargetHost::Name("hooks.example.com".into()));
        assert_eq!(t.port, 443);
        assert_eq!(t.path, "/a/b?x=1");
        let t = parse("http://[2606:4700::1111]:8080").unwrap();
        assert_eq!(t.port, 8080);
        assert_eq!(t.path, "/");
        assert_eq!(t.host, TargetHost::Ip("2606:4700::1111".parse().unwrap()));
        assert_eq!(parse("HTTP://Example.COM?q").unwrap().path, "/?q");
    }

    #[test]
    fn refuses_malformed_urls() {
        for bad in [
            "",
            "example.com/hook",
            "https://",
            "https://:443/x",
            "https://exa mple.com/",
            "https://exa_mple.com/",
            "https://example.com:0/",
            "https://example.com:99999/",
            "https://[::1/",
            "https://2130706433/",
            "https://0x7f.1/",
            "https://-bad.example/",
        ] {
            assert!(
                matches!(parse(bad), Err(TargetError::Malformed(_))),
                "{bad} -> {:?}",
                parse(bad)
            );
        }
        assert_eq!(
            parse("ftp://example.com/"),
            Err(TargetError::Scheme("ftp".into()))
        );
        assert_eq!(
            parse("file:///etc/passwd"),
            Err(TargetError::Scheme("file".into()))
        );
        assert_eq!(
            parse("https://user:pw@example.com/"),
            Err(TargetError::Credentials)
        );
        assert_eq!(
            parse(&format!("https://e.com/{}", "a".repeat(MAX_URL_BYTES))),
            Err(TargetError::TooLong)
        );
    }

    #[test]
    fn refuses_non_public_addresses_unless_allowed() {
        for bad in [
            "http://127.0.0.1:9000/hook",
            "http://10.1.2.3/",
            "http://172.16.0.1/",
            "http://192.168.1.1/",
            "http://169.254.169.254/latest/meta-data",
            "http://100.64.0.1/",
            "http://0.0.0.0/",
            "http://224.0.0.1/",
            "http://255.255.255.255/",
            "http://[::1]/",
            "http://[fe80::1]/",
            "http://[fd00::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:a9fe:a9fe]/",
            "http://[64:ff9b::a00:1]/",
            "http://[::]/",
        ] {
            assert!(
                matches!(public_only().check(bad), Err(TargetError::Forbidden(_))),
                "{bad} -> {:?}",
                public_only().check(bad)
            );
        }
        for good in [
            "https://8.8.8.8/x",
            "http://[2606:4700::1111]/",
            "https://[64:ff9b::808:808]/",
            "https://hooks.example.com/",
        ] {
            public_only().check(good).unwrap();
        }
        let loopback = TargetPolicy {
            allow: vec![
                Cidr::parse("127.0.0.0/8").unwrap(),
                Cidr::parse("::1").unwrap(),
            ],
        };
        loopback.check("http://127.0.0.1:9000/hook").unwrap();
        loopback.check("http://[::1]:9000/hook").unwrap();
        loopback.check("http://[::ffff:127.0.0.1]/").unwrap();
        assert!(loopback.check("http://10.0.0.1/").is_err());
    }

    #[test]
    fn cidrs() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains("10.255.0.1".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("1.2.3.4".parse().unwrap()));
        assert!(Cidr::parse("fd00::/8")
            .unwrap()
            .contains("fdab::1".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nope").is_err());
    }
}
