//! The buyer's address behind a load balancer: `X-Forwarded-For` and `Forwarded` (RFC 7239)
//! are honoured only from the configured trusted proxies (`http.trusted_proxies`), for the
//! per-client rate limit and order review's client rule alike.
//!
//! Invariants: a request from a peer that is not a trusted proxy is keyed on the peer, what
//! ever its headers say (anyone can write a header). From a trusted peer the client is the
//! nearest address in the chain that is not itself a trusted proxy, read from the right (the
//! hop the trusted proxy added), so a client cannot smuggle an address in front of the chain.
//! `Forwarded` wins over `X-Forwarded-For` when both are present; a chain that does not
//! parse falls back to the peer. At most [`crate::limits::TRUSTED_PROXIES_MAX`] entries.

use std::net::IpAddr;

use hyper::HeaderMap;

/// One trusted entry: an address, or a network in CIDR form (`10.0.0.0/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrustedNet {
    addr: IpAddr,
    prefix_len: u8,
}

impl TrustedNet {
    /// Parses `addr` or `addr/prefix`; the error says what is wrong (config validation).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or network"))?;
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = match prefix {
            None => bits,
            Some(prefix) => prefix
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= bits)
                .ok_or_else(|| format!("{text:?} has a bad prefix length"))?,
        };
        Ok(Self { addr, prefix_len })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// An IPv4 address mapped into IPv6 (a dual-stack socket's peer) as the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// The trusted proxies of one server.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    nets: Vec<TrustedNet>,
}

impl TrustedProxies {
    pub fn new(nets: Vec<TrustedNet>) -> Self {
        debug_assert!(nets.len() <= crate::limits::TRUSTED_PROXIES_MAX);
        Self { nets }
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|net| net.contains(ip))
    }

    /// The client a request is from: the peer, or (from a trusted peer) the forwarded one.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if self.nets.is_empty() || !self.trusts(peer) {
            return peer;
        }
        let chain = match headers.get_all(hyper::header::FORWARDED).iter().next() {
            Some(_) => forwarded_chain(headers),
            None => x_forwarded_for_chain(headers),
        };
        let Some(chain) = chain else {
            return peer;
        };
        // From the right: skip the trusted hops; the first untrusted one is the client. A
        // chain of trusted hops only names its leftmost as the client.
        let mut client = peer;
        for hop in chain.iter().rev() {
            client = *hop;
            if !self.trusts(*hop) {
                break;
            }
        }
        canonical(client)
    }
}

/// The addresses of every `X-Forwarded-For` header, in order; `None` if one does not parse.
fn x_forwarded_for_chain(headers: &HeaderMap) -> Option<Vec<IpAddr>> {
    let mut chain = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        for item in value.to_str().ok()?.split(',') {
            chain.push(parse_node(item.trim())?);
        }
    }
    (!chain.is_empty()).then_some(chain)
}

/// The `for=` addresses of every `Forwarded` header (RFC 7239), in order; `None` if one does
/// not parse (an obfuscated or `unknown` node included: the client is then not known).
fn forwarded_chain(headers: &HeaderMap) -> Option<Vec<IpAddr>> {
    let mut chain = Vec::new();
    for value in headers.get_all(hyper::header::FORWARDED) {
        for element in value.to_str().ok()?.split(',') {
            for pair in element.split(';') {
                let Some((name, value)) = pair.trim().split_once('=') else {
                    continue;
                };
                if name.trim().eq_ignore_ascii_case("for") {
                    chain.push(parse_node(value.trim().trim_matches('"'))?);
                }
            }
        }
    }
    (!chain.is_empty()).then_some(chain)
}

/// One node: `1.2.3.4`, `1.2.3.4:5678`, `[2001:db8::1]`, `[2001:db8::1]:5678`, `2001:db8::1`.
fn parse_node(text: &str) -> Option<IpAddr> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = text.strip_prefix('[') {
        let (addr, _) = rest.split_once(']')?;
        return addr.parse().ok();
    }
    let (addr, port) = text.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    addr.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().unwrap());
        }
        map
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn proxies(nets: &[&str]) -> TrustedProxies {
        TrustedProxies::new(nets.iter().map(|n| TrustedNet::parse(n).unwrap()).collect())
    }

    #[test]
    fn a_forwarded_address_counts_only_from_a_trusted_peer() {
        let trusted = proxies(&["10.0.0.0/8"]);
        let xff = headers(&[("x-forwarded-for", "203.0.113.7")]);
        assert_eq!(trusted.client(ip("10.1.2.3"), &xff), ip("203.0.113.7"));
        assert_eq!(trusted.client(ip("192.0.2.1"), &xff), ip("192.0.2.1"));
        assert_eq!(proxies(&[]).client(ip("10.1.2.3"), &xff), ip("10.1.2.3"));
    }

    #[test]
    fn the_client_is_the_rightmost_untrusted_hop() {
        let trusted = proxies(&["10.0.0.1", "10.0.0.2"]);
        // A client that writes its own header cannot put an address before its own.
        let chain = headers(&[("x-forwarded-for", "1.1.1.1, 198.51.100.9, 10.0.0.2")]);
        assert_eq!(trusted.client(ip("10.0.0.1"), &chain), ip("198.51.100.9"));
        let split = headers(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "198.51.100.9"),
        ]);
        assert_eq!(trusted.client(ip("10.0.0.1"), &split), ip("198.51.100.9"));
        let garbage = headers(&[("x-forwarded-for", "not-an-ip")]);
        assert_eq!(trusted.client(ip("10.0.0.1"), &garbage), ip("10.0.0.1"));
    }

    #[test]
    fn forwarded_is_read_and_wins_over_x_forwarded_for() {
        let trusted = proxies(&["127.0.0.1", "::1"]);
        let both = headers(&[
            (
                "forwarded",
                r#"for=192.0.2.60;proto=http, for="[2001:db8::7]:4711""#,
            ),
            ("x-forwarded-for", "198.51.100.1"),
        ]);
        assert_eq!(trusted.client(ip("127.0.0.1"), &both), ip("2001:db8::7"));
        let port = headers(&[("forwarded", "for=192.0.2.60:8080")]);
        assert_eq!(trusted.client(ip("::1"), &port), ip("192.0.2.60"));
        let unknown = headers(&[("forwarded", "for=unknown")]);
        assert_eq!(trusted.client(ip("127.0.0.1"), &unknown), ip("127.0.0.1"));
    }

    #[test]
    fn networks_parse_with_their_bounds() {
        assert!(TrustedNet::parse("10.0.0.0/8").is_ok());
        assert!(TrustedNet::parse("2001:db8::/32").is_ok());
        assert!(TrustedNet::parse("10.0.0.0/33").is_err());
        assert!(TrustedNet::parse("proxy.local").is_err());
        let all = TrustedNet::parse("0.0.0.0/0").unwrap();
        assert!(all.contains(ip("8.8.8.8")));
        assert!(all.contains(ip("::ffff:8.8.8.8")));
    }
}
