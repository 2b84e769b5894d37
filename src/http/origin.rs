//! Where a request comes from: the client's address and the client certificate its
//! connection presented.
//!
//! Behind a load balancer the connection's peer is the balancer, so the client's address is
//! the one `X-Forwarded-For` names, but only when the peer is one of `server {
//! trusted_proxies }`: anyone else can write that header, and from them it is ignored. Read
//! from the right, each address a trusted proxy appended is skipped until one that is not a
//! trusted proxy: addresses left of that one were written by the client and are never used.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::http::HeaderMap;
use ipnet::IpNet;

use crate::certificate::ClientCertificate;

/// The verified client certificate of a request's connection, in its extensions.
#[derive(Clone)]
pub struct PeerCertificate(pub Arc<ClientCertificate>);

/// Where a request comes from, as the audit record and the policies see it.
#[derive(Debug, Clone)]
pub struct Origin {
    /// The client: the peer, or the address a trusted proxy forwarded for.
    pub client: IpAddr,
    /// The connection's peer (a proxy, when it differs from the client).
    pub peer: IpAddr,
    pub certificate: Option<Arc<ClientCertificate>>,
}

/// The most `X-Forwarded-For` entries read: a chain of proxies is a few long.
const MAX_HOPS: usize = 32;

impl Origin {
    pub fn of(
        peer: IpAddr,
        headers: &HeaderMap,
        trusted: &[IpNet],
        certificate: Option<Arc<ClientCertificate>>,
    ) -> Origin {
        let peer = canonical(peer);
        Origin {
            client: client_address(peer, headers, trusted),
            peer,
            certificate,
        }
    }

    /// The proxy the request came through, when the client is another address.
    pub fn proxy(&self) -> Option<IpAddr> {
        (self.client != self.peer).then_some(self.peer)
    }
}

fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(&canonical(*ip)));
    if !is_trusted(&peer) {
        return peer;
    }
    // Every header line as one list, read from its end without collecting the rest. What a
    // trusted proxy appended is an address; anything else (a line that is not text, an entry
    // that is not an address) ends the chain, and the last trusted hop is the client.
    let entries = headers.get_all("x-forwarded-for").iter().rev().flat_map(
        |v| -> Box<dyn Iterator<Item = Option<&str>>> {
            match v.to_str() {
                Ok(text) => Box::new(text.rsplit(',').map(Some)),
                Err(_) => Box::new(std::iter::once(None)),
            }
        },
    );
    let mut client = peer;
    for entry in entries.take(MAX_HOPS) {
        let Some(ip) = entry.and_then(|e| parse(e.trim())) else {
            return client;
        };
        client = ip;
        if !is_trusted(&ip) {
            return ip;
        }
    }
    client
}

/// An address as proxies write it: `192.0.2.7`, `2001:db8::1`, `192.0.2.7:4711`,
/// `[2001:db8::1]:4711`.
fn parse(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .map(canonical)
}

/// An IPv4 address carried in IPv6 (`::ffff:10.0.0.1`, as dual-stack sockets report it) as
/// the IPv4 address it is, so that IPv4 networks hold it.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn from(peer: &str, forwarded: &[&str], trusted: &[&str]) -> IpAddr {
        let mut headers = HeaderMap::new();
        for value in forwarded {
            headers.append("x-forwarded-for", value.parse().unwrap());
        }
        client_address(peer.parse().unwrap(), &headers, &nets(trusted))
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn the_header_of_an_untrusted_peer_is_ignored() {
        assert_eq!(from("203.0.113.9", &["10.20.0.5"], &[]), ip("203.0.113.9"));
        assert_eq!(
            from("203.0.113.9", &["10.20.0.5"], &["10.0.0.0/8"]),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn a_trusted_proxy_names_the_client() {
        let trusted = ["10.0.0.0/8"];
        assert_eq!(
            from("10.0.0.2", &["198.51.100.4"], &trusted),
            ip("198.51.100.4")
        );
        // No header: the proxy itself asked.
        assert_eq!(from("10.0.0.2", &[], &trusted), ip("10.0.0.2"));
        // With a port, or in brackets.
        assert_eq!(
            from("10.0.0.2", &["198.51.100.4:5000"], &trusted),
            ip("198.51.100.4")
        );
        assert_eq!(
            from("10.0.0.2", &["[2001:db8::7]:5000"], &trusted),
            ip("2001:db8::7")
        );
    }

    #[test]
    fn what_the_client_wrote_left_of_the_proxies_is_never_used() {
        let trusted = ["10.0.0.0/8"];
        // The client sent `X-Forwarded-For: 10.20.0.5` itself; the balancer appended its
        // real address.
        assert_eq!(
            from("10.0.0.2", &["10.20.0.5, 198.51.100.4"], &trusted),
            ip("198.51.100.4")
        );
        // The same over two header lines, and through two proxies.
        assert_eq!(
            from(
                "10.0.0.2",
                &["10.20.0.5", "198.51.100.4, 10.0.0.3"],
                &trusted
            ),
            ip("198.51.100.4")
        );
        // Garbage appended where an address should be: the last trusted hop is the client.
        assert_eq!(
            from(
                "10.0.0.2",
                &["198.51.100.4, not-an-address, 10.0.0.3"],
                &trusted
            ),
            ip("10.0.0.3")
        );
        // A line that is not text ends the chain too, whatever stands left of it.
        let mut headers = HeaderMap::new();
        headers.append("x-forwarded-for", "10.20.0.5".parse().unwrap());
        headers.append(
            "x-forwarded-for",
            axum::http::HeaderValue::from_bytes(b"\xff, 10.0.0.3").unwrap(),
        );
        assert_eq!(
            client_address(ip("10.0.0.2"), &headers, &nets(&trusted)),
            ip("10.0.0.2")
        );
        // Only proxies: the farthest one is the client.
        assert_eq!(
            from("10.0.0.2", &["10.0.0.9, 10.0.0.3"], &trusted),
            ip("10.0.0.9")
        );
    }

    #[test]
    fn ipv4_carried_in_ipv6_is_held_by_ipv4_networks() {
        assert_eq!(
            from("::ffff:10.0.0.2", &["198.51.100.4"], &["10.0.0.0/8"]),
            ip("198.51.100.4")
        );
        assert_eq!(
            from("10.0.0.2", &["::ffff:198.51.100.4"], &["10.0.0.0/8"]),
            ip("198.51.100.4")
        );
    }
}
