//! The client address of a request, which keys the rate limit of anonymous requests and appears
//! in the request log and span (`client.address`).
//!
//! It is the TCP peer, unless the peer is one of `TRUSTED_PROXIES`: then it is the right-most hop
//! of the forwarding header (`TRUSTED_PROXY_HEADER`: `X-Forwarded-For`, or RFC 7239 `Forwarded`)
//! that is not itself a trusted proxy. Why right-most: every proxy appends the address it saw,
//! so hops to the right of the last trusted proxy's entry were written by trusted proxies, while
//! anything to the left may have been sent by the client itself. Why only behind a trusted peer:
//! otherwise any client could pick its own rate-limit bucket by sending the header.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;

use crate::AppState;

/// The client address the API settled on, in request and response extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClientAddr(pub(crate) IpAddr);

/// One IP network: an address and how many leading bits must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                masked(u128::from(net.to_bits()), 32, self.prefix)
                    == masked(u128::from(ip.to_bits()), 32, self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                masked(net.to_bits(), 128, self.prefix) == masked(ip.to_bits(), 128, self.prefix)
            }
            _ => false,
        }
    }
}

/// The top `prefix` of `width` bits of `bits`.
fn masked(bits: u128, width: u32, prefix: u8) -> u128 {
    let drop = width.saturating_sub(u32::from(prefix));
    bits.checked_shr(drop).unwrap_or(0)
}

/// `TRUSTED_PROXIES`: addresses and CIDR networks, comma-separated (`10.0.0.0/8, 192.168.1.7,
/// fd00::/8`); empty (the default) trusts no one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<Network>);

/// A `TRUSTED_PROXIES` entry that is neither an address nor a CIDR network.
#[derive(Debug, thiserror::Error)]
#[error(
    "{0:?} is not an IP address or CIDR network \
     (TRUSTED_PROXIES is a comma-separated list such as 10.0.0.0/8,192.168.1.7,fd00::/8)"
)]
pub struct TrustedProxiesError(String);

impl FromStr for TrustedProxies {
    type Err = TrustedProxiesError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                let bad = || TrustedProxiesError(entry.to_owned());
                let (addr, prefix) = match entry.split_once('/') {
                    Some((addr, prefix)) => (addr, Some(prefix)),
                    None => (entry, None),
                };
                let addr = IpAddr::from_str(addr).map_err(|_| bad())?.to_canonical();
                let width = if addr.is_ipv4() { 32 } else { 128 };
                let prefix = match prefix {
                    Some(p) => p
                        .parse::<u8>()
                        .ok()
                        .filter(|p| *p <= width)
                        .ok_or_else(bad)?,
                    None => width,
                };
                Ok(Network { addr, prefix })
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

impl TrustedProxies {
    /// Whether `ip` is a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(ip))
    }

    /// No proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `TRUSTED_PROXY_HEADER`: the header trusted proxies append the client address to. Only this
/// one is read: a proxy passes the other one on untouched, so the client could forge it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardingHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (nginx, Envoy, cloud load balancers).
    #[default]
    XForwardedFor,
    /// `Forwarded: for=client, for=proxy1` (RFC 7239).
    Forwarded,
}

/// A `TRUSTED_PROXY_HEADER` that is neither header.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a forwarding header: TRUSTED_PROXY_HEADER is x-forwarded-for or forwarded")]
pub struct ForwardingHeaderError(String);

impl FromStr for ForwardingHeader {
    type Err = ForwardingHeaderError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "x-forwarded-for" => Ok(Self::XForwardedFor),
            "forwarded" => Ok(Self::Forwarded),
            _ => Err(ForwardingHeaderError(s.to_owned())),
        }
    }
}

/// One hop of a forwarding header: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`, `[2001:db8::1]:80`,
/// or RFC 7239 quoted forms; `None` for `unknown`, obfuscated names and garbage.
fn hop(value: &str) -> Option<IpAddr> {
    let value = value.trim().trim_matches('"');
    IpAddr::from_str(value)
        .ok()
        .or_else(|| SocketAddr::from_str(value).ok().map(|s| s.ip()))
        .or_else(|| IpAddr::from_str(value.strip_prefix('[')?.strip_suffix(']')?).ok())
        .map(|ip| ip.to_canonical())
}

/// The hops of the forwarding header, left (client side) to right (nearest proxy), over all
/// header lines in order.
fn hops(headers: &HeaderMap, header: ForwardingHeader) -> Vec<Option<IpAddr>> {
    let name = match header {
        ForwardingHeader::XForwardedFor => "x-forwarded-for",
        ForwardingHeader::Forwarded => "forwarded",
    };
    let elements = headers
        .get_all(name)
        .iter()
        .flat_map(|value| value.to_str().unwrap_or("unknown").split(','))
        .map(str::to_owned)
        .collect::<Vec<_>>();
    elements
        .iter()
        .map(|element| match header {
            ForwardingHeader::XForwardedFor => hop(element),
            ForwardingHeader::Forwarded => element
                .split(';')
                .filter_map(|pair| pair.split_once('='))
                .find(|(key, _)| key.trim().eq_ignore_ascii_case("for"))
                .and_then(|(_, value)| hop(value)),
        })
        .collect()
}

/// The client address of a request from `peer` with `headers` (see the module doc).
pub(crate) fn client_ip(
    peer: IpAddr,
    headers: &HeaderMap,
    proxies: &TrustedProxies,
    header: ForwardingHeader,
) -> IpAddr {
    let peer = peer.to_canonical();
    if !proxies.contains(peer) {
        return peer;
    }
    let mut nearest = peer;
    for hop in hops(headers, header).into_iter().rev() {
        match hop {
            // Beyond an unreadable hop nothing can be trusted: the proxy that wrote it is as far
            // as we can see.
            None => return nearest,
            Some(ip) if !proxies.contains(ip) => return ip,
            Some(ip) => nearest = ip,
        }
    }
    nearest
}

/// Middleware: settles the client address once, for the rate limit (request extension), the
/// server span (`client.address`) and the request log line (response extension).
pub(crate) async fn layer(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| {
            client_ip(
                peer.ip(),
                request.headers(),
                &state.config.trusted_proxies,
                state.config.trusted_proxy_header,
            )
        })
        .map(ClientAddr);
    if let Some(ClientAddr(ip)) = client {
        tracing::Span::current().record("client.address", tracing::field::display(ip));
        request.extensions_mut().insert(ClientAddr(ip));
    }
    let mut response = next.run(request).await;
    if let Some(client) = client {
        response.extensions_mut().insert(client);
    }
    response
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn headers(name: &'static str, values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(name, HeaderValue::from_str(v).unwrap());
        }
        headers
    }

    fn proxies(s: &str) -> TrustedProxies {
        s.parse().unwrap()
    }

    fn xff(peer: &str, trusted: &str, values: &[&str]) -> IpAddr {
        client_ip(
            ip(peer),
            &headers("x-forwarded-for", values),
            &proxies(trusted),
            ForwardingHeader::XForwardedFor,
        )
    }

    #[test]
    fn trusted_proxies_parse_addresses_and_networks_and_refuse_garbage() {
        let p = proxies(" 10.0.0.0/8, 192.168.1.7 ,fd00::/8,");
        assert!(p.contains(ip("10.200.3.4")));
        assert!(p.contains(ip("192.168.1.7")));
        assert!(!p.contains(ip("192.168.1.8")));
        assert!(p.contains(ip("fd12::1")));
        assert!(!p.contains(ip("fe80::1")));
        // IPv4 peers of a dual-stack listener arrive as ::ffff:a.b.c.d.
        assert!(p.contains(ip("::ffff:10.1.1.1")));
        assert!(proxies("0.0.0.0/0").contains(ip("8.8.8.8")));
        assert!(proxies("").is_empty());
        for bad in ["10.0.0.0/33", "10.0.0", "proxy.internal", "10.0.0.0/x"] {
            let error = bad.parse::<TrustedProxies>().unwrap_err().to_string();
            assert!(
                error.contains(bad) && error.contains("TRUSTED_PROXIES"),
                "{error}"
            );
        }
    }

    #[test]
    fn the_header_is_ignored_unless_the_peer_is_a_trusted_proxy() {
        assert_eq!(xff("192.0.2.9", "", &["203.0.113.7"]), ip("192.0.2.9"));
        assert_eq!(
            xff("192.0.2.9", "10.0.0.0/8", &["203.0.113.7"]),
            ip("192.0.2.9")
        );
    }

    #[test]
    fn behind_trusted_proxies_the_right_most_untrusted_hop_is_the_client() {
        let trusted = "10.0.0.0/8";
        // A client forging the left part of the header does not move its address.
        assert_eq!(
            xff("10.0.0.5", trusted, &["1.1.1.1, 203.0.113.7"]),
            ip("203.0.113.7")
        );
        // Chained proxies: skip every trusted hop.
        assert_eq!(
            xff("10.0.0.5", trusted, &["203.0.113.7, 10.1.1.1", "10.2.2.2"]),
            ip("203.0.113.7")
        );
        // Ports and IPv6 forms.
        assert_eq!(
            xff("10.0.0.5", trusted, &["203.0.113.7:5123"]),
            ip("203.0.113.7")
        );
        assert_eq!(
            xff("10.0.0.5", trusted, &["[2001:db8::7]:443"]),
            ip("2001:db8::7")
        );
        // Only trusted hops: the left-most of them.
        assert_eq!(xff("10.0.0.5", trusted, &["10.9.9.9"]), ip("10.9.9.9"));
        // No header: the proxy itself.
        assert_eq!(xff("10.0.0.5", trusted, &[]), ip("10.0.0.5"));
        // An unreadable hop stops the walk at the proxy that wrote it.
        assert_eq!(
            xff("10.0.0.5", trusted, &["203.0.113.7, unknown, 10.1.1.1"]),
            ip("10.1.1.1")
        );
    }

    #[test]
    fn the_forwarded_header_is_read_when_chosen_and_only_then() {
        let h = headers(
            "forwarded",
            &[
                r#"for=1.1.1.1, for="[2001:db8:cafe::17]:4711";proto=https, For=10.1.1.1;by=10.0.0.5"#,
            ],
        );
        let trusted = proxies("10.0.0.0/8");
        assert_eq!(
            client_ip(ip("10.0.0.5"), &h, &trusted, ForwardingHeader::Forwarded),
            ip("2001:db8:cafe::17")
        );
        assert_eq!(
            client_ip(
                ip("10.0.0.5"),
                &h,
                &trusted,
                ForwardingHeader::XForwardedFor
            ),
            ip("10.0.0.5")
        );
        assert_eq!(
            "Forwarded".parse::<ForwardingHeader>().unwrap(),
            ForwardingHeader::Forwarded
        );
        assert!(
            "x-real-ip"
                .parse::<ForwardingHeader>()
                .unwrap_err()
                .to_string()
                .contains("TRUSTED_PROXY_HEADER")
        );
    }
}
