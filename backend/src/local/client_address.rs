//! Whose request it is: the address every per-client limit counts.
//!
//! The peer of the TCP connection, unless that peer is a reverse proxy the
//! operator named (`--trusted-proxy`): then the client is the nearest
//! address in the header the proxies write (`X-Forwarded-For`, or
//! `Forwarded: for=` if the operator says so) that is not itself a trusted
//! proxy. Only that one header is read: proxies pass the other through as
//! the client sent it. Without trusted proxies both are ignored: anyone can
//! write them, and believing them would let one client pass for many.

use std::net::IpAddr;
use std::str::FromStr;

use axum::http::HeaderMap;

/// Networks whose connections come from reverse proxies, and the header
/// those proxies append the client's address to.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    networks: Vec<Network>,
    header: ForwardedHeader,
}

/// Which header the trusted proxies write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For` (nginx, Caddy, Traefik, HAProxy, AWS ALB).
    #[default]
    XForwardedFor,
    /// `Forwarded: for=` (RFC 7239).
    Forwarded,
}

/// An address block: `10.0.0.0/8`, `fd00::/8`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    base: IpAddr,
    prefix: u8,
}

impl FromStr for Network {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let base: IpAddr = address
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR block"))?;
        let base = base.to_canonical();
        let bits = if base.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => prefix
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|&prefix| prefix <= bits)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {bits}"))?,
            None => bits,
        };
        Ok(Self { base, prefix })
    }
}

impl Network {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.base, ip.to_canonical()) {
            (IpAddr::V4(base), IpAddr::V4(ip)) => same_prefix(
                u32::from(base).into(),
                u32::from(ip).into(),
                32,
                self.prefix,
            ),
            (IpAddr::V6(base), IpAddr::V6(ip)) => {
                same_prefix(u128::from(base), u128::from(ip), 128, self.prefix)
            }
            _ => false,
        }
    }
}

fn same_prefix(a: u128, b: u128, bits: u8, prefix: u8) -> bool {
    if prefix == 0 {
        return true;
    }
    let shift = u32::from(bits - prefix);
    (a >> shift) == (b >> shift)
}

impl TrustedProxies {
    pub fn new(networks: Vec<Network>, header: ForwardedHeader) -> Self {
        Self { networks, header }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.networks.iter().any(|network| network.contains(ip))
    }

    /// The client behind a request from `peer`.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.contains(peer) {
            return peer;
        }
        // Each proxy appends the address it heard from: walk back from the
        // nearest hop past our own proxies. The first untrusted hop is the
        // client; what lies before it is the client's to write.
        let hops = forwarded_for(headers, self.header);
        hops.iter()
            .rev()
            .copied()
            .find(|hop| !self.contains(*hop))
            // Every hop is a trusted proxy: the farthest one is the client
            // as far as anyone can tell.
            .or_else(|| hops.first().copied())
            .unwrap_or(peer)
    }
}

/// The addresses `header` lists, nearest last. Each comma-separated entry
/// is read on its own, from raw bytes: an entry the client wrote unreadable
/// cannot hide the ones the proxies appended after it. An unreadable entry
/// ends the list there: what came before it cannot be attributed.
fn forwarded_for(headers: &HeaderMap, header: ForwardedHeader) -> Vec<IpAddr> {
    let name = match header {
        ForwardedHeader::XForwardedFor => "x-forwarded-for",
        ForwardedHeader::Forwarded => "forwarded",
    };
    let entries: Vec<Option<IpAddr>> = headers
        .get_all(name)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .map(|entry| {
            let entry = std::str::from_utf8(entry).ok()?;
            match header {
                ForwardedHeader::XForwardedFor => parse_hop(entry),
                ForwardedHeader::Forwarded => entry.split(';').find_map(|pair| {
                    let (key, value) = pair.split_once('=')?;
                    if key.trim().eq_ignore_ascii_case("for") {
                        parse_hop(value)
                    } else {
                        None
                    }
                }),
            }
        })
        .collect();
    // Keep the trustworthy tail: from the nearest entry back to the first
    // one that cannot be read.
    let mut hops: Vec<IpAddr> = entries.iter().rev().map_while(|hop| *hop).collect();
    hops.reverse();
    hops
}

/// `203.0.113.7`, `"[2001:db8::1]:4711"`, `203.0.113.7:80`.
fn parse_hop(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim().trim_matches('"');
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Some(rest) = entry.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    let (host, port) = entry.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().unwrap());
        }
        map
    }

    fn proxies(networks: &[&str]) -> TrustedProxies {
        TrustedProxies::new(
            networks.iter().map(|n| n.parse().unwrap()).collect(),
            ForwardedHeader::XForwardedFor,
        )
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn networks_parse_and_match() {
        let net: Network = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains(ip("10.1.200.3")));
        assert!(!net.contains(ip("10.2.0.1")));
        assert!(net.contains(ip("::ffff:10.1.0.9")), "v4-mapped");
        let v6: Network = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:1::5")));
        assert!(!v6.contains(ip("10.1.0.1")));
        let one: Network = "127.0.0.1".parse().unwrap();
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        assert!(
            "0.0.0.0/0"
                .parse::<Network>()
                .unwrap()
                .contains(ip("8.8.8.8"))
        );
        assert!("10.0.0.0/33".parse::<Network>().is_err());
        assert!("example.com".parse::<Network>().is_err());
    }

    #[test]
    fn forwarded_headers_are_ignored_unless_the_peer_is_a_trusted_proxy() {
        let spoofed = headers(&[("x-forwarded-for", "198.51.100.1")]);
        assert_eq!(
            proxies(&[]).client(ip("203.0.113.9"), &spoofed),
            ip("203.0.113.9")
        );
        let trusted = proxies(&["10.0.0.0/8"]);
        assert_eq!(
            trusted.client(ip("203.0.113.9"), &spoofed),
            ip("203.0.113.9")
        );
        assert_eq!(trusted.client(ip("10.0.0.2"), &spoofed), ip("198.51.100.1"));
    }

    #[test]
    fn the_client_is_the_nearest_hop_that_is_not_a_proxy() {
        let trusted = proxies(&["10.0.0.0/8"]);
        // The client wrote the first entry itself; only the tail is ours.
        let chain = headers(&[("x-forwarded-for", "1.2.3.4, 198.51.100.7, 10.0.0.5")]);
        assert_eq!(trusted.client(ip("10.0.0.2"), &chain), ip("198.51.100.7"));
        let split = headers(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-for", "198.51.100.7"),
        ]);
        assert_eq!(trusted.client(ip("10.0.0.2"), &split), ip("198.51.100.7"));
        // Garbage before the real hop does not hide it.
        let junk = headers(&[("x-forwarded-for", "not-an-ip, 198.51.100.7")]);
        assert_eq!(trusted.client(ip("10.0.0.2"), &junk), ip("198.51.100.7"));
        // No header at all: the proxy itself.
        assert_eq!(
            trusted.client(ip("10.0.0.2"), &HeaderMap::new()),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn forwarded_is_read_as_rfc_7239_writes_it_when_chosen() {
        let trusted = TrustedProxies::new(
            vec!["10.0.0.0/8".parse().unwrap()],
            ForwardedHeader::Forwarded,
        );
        let forwarded = headers(&[(
            "forwarded",
            "for=192.0.2.60;proto=https, For=\"[2001:db8:cafe::17]:4711\"",
        )]);
        assert_eq!(
            trusted.client(ip("10.9.9.9"), &forwarded),
            ip("2001:db8:cafe::17")
        );
        let port = headers(&[("forwarded", "for=192.0.2.60:8080")]);
        assert_eq!(trusted.client(ip("10.9.9.9"), &port), ip("192.0.2.60"));
        let hidden = headers(&[("forwarded", "for=_hidden, for=unknown")]);
        assert_eq!(trusted.client(ip("10.9.9.9"), &hidden), ip("10.9.9.9"));
    }

    #[test]
    fn only_the_chosen_header_counts_so_a_client_cannot_write_the_other() {
        // nginx appends to X-Forwarded-For and passes the client's own
        // Forwarded through: that one must not be believed.
        let spoof = headers(&[
            ("forwarded", "for=203.0.113.99"),
            ("x-forwarded-for", "198.51.100.7"),
        ]);
        assert_eq!(
            proxies(&["10.0.0.0/8"]).client(ip("10.0.0.2"), &spoof),
            ip("198.51.100.7")
        );
        // An unreadable part written by the client cannot hide the hop the
        // proxy appended to the same line.
        let mut folded = HeaderMap::new();
        folded.insert(
            "x-forwarded-for",
            axum::http::HeaderValue::from_bytes(b"\xff\xfe, 198.51.100.8").unwrap(),
        );
        assert_eq!(
            proxies(&["10.0.0.0/8"]).client(ip("10.0.0.2"), &folded),
            ip("198.51.100.8")
        );
    }
}
