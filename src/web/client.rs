//! The client's address, the one way every part learns it (throttles, limits, metrics access).
//!
//! The reverse proxy's header (`ip_header`, `X-Real-IP` by default) is believed only when the TCP
//! peer is a configured proxy (`proxy.trusted`); from anyone else the header is ignored and the
//! peer's own address is the client's.

use std::net::IpAddr;

use ipnet::IpNet;
use rocket::request::{FromRequest, Outcome, Request};

use crate::config::Config;

/// The client's address, when known (a local test client has none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub Option<IpAddr>);

/// Whether `ip` is one of the trusted proxies.
pub fn trusted(proxies: &[IpNet], ip: IpAddr) -> bool {
    let ip = canonical(ip);
    proxies.iter().any(|net| net.contains(&ip))
}

/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, from a dual-stack socket) as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The client's address for a request whose TCP peer is `peer` and whose proxy header says
/// `header` (already parsed by Rocket from its `ip_header` setting).
pub fn resolve(proxies: &[IpNet], peer: Option<IpAddr>, header: Option<IpAddr>) -> Option<IpAddr> {
    match peer {
        Some(p) if trusted(proxies, p) => Some(canonical(header.unwrap_or(p))),
        other => other.map(canonical),
    }
}

#[rocket::async_trait]
impl<'r> FromRequest<'r> for ClientAddr {
    type Error = ();
    async fn from_request(req: &'r Request<'_>) -> Outcome<Self, ()> {
        Outcome::Success(ClientAddr(client_addr(req)))
    }
}

/// [`ClientAddr`] outside a guard (fairings, other guards).
pub fn client_addr(req: &Request<'_>) -> Option<IpAddr> {
    let proxies = req
        .rocket()
        .state::<Config>()
        .map(|c| c.trusted_proxies.as_slice())
        .unwrap_or_default();
    resolve(proxies, req.remote().map(|s| s.ip()), req.real_ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn the_header_counts_only_from_a_trusted_proxy() {
        let proxies: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        let spoofed = Some(ip("127.0.0.1"));
        assert_eq!(
            resolve(&proxies, Some(ip("203.0.113.9")), spoofed),
            Some(ip("203.0.113.9"))
        );
        assert_eq!(
            resolve(&proxies, Some(ip("10.1.2.3")), Some(ip("198.51.100.7"))),
            Some(ip("198.51.100.7"))
        );
        assert_eq!(
            resolve(&proxies, Some(ip("10.1.2.3")), None),
            Some(ip("10.1.2.3"))
        );
        assert_eq!(
            resolve(
                &proxies,
                Some(ip("::ffff:10.1.2.3")),
                Some(ip("198.51.100.7"))
            ),
            Some(ip("198.51.100.7"))
        );
        assert_eq!(
            resolve(&[], Some(ip("10.1.2.3")), spoofed),
            Some(ip("10.1.2.3"))
        );
        assert_eq!(resolve(&proxies, None, spoofed), None);
    }
}
