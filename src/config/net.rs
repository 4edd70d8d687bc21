//! Network values of the settings: networks (`10.0.0.0/8`), the proxies whose forwarding headers
//! are believed, and who a request comes from according to them.
//!
//! Behind a proxy (nginx, HAProxy, Azure App Service's front end) every TCP connection comes from
//! the proxy. The client's own address is then in `X-Forwarded-For`, which anybody can also send,
//! so it is believed only when the TCP peer is a proxy the operator listed
//! (`BANTER_TRUSTED_PROXIES`). The same goes for `X-Forwarded-Proto`, which says whether the
//! browser used HTTPS.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use axum::http::HeaderMap;

/// A network: an address and a prefix length (`10.0.0.0/8`, `::1/128`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// The prefix length: 0 for a network that holds every address of its family.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
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

impl FromStr for IpNet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or network (a.b.c.d/n)"))?;
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(Self { addr, prefix })
    }
}

impl fmt::Display for IpNet {
    /// A single address as itself (`127.0.0.1`), a wider network with its prefix: the way an
    /// operator writes them in `BANTER_TRUSTED_PROXIES`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let single = if self.addr.is_ipv4() { 32 } else { 128 };
        if self.prefix == single {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

/// The client of one request, as far as we can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    /// The client's address: the TCP peer, or what trusted proxies say it is.
    pub addr: IpAddr,
    /// Whether the browser reached us over HTTPS (our own TLS, or a trusted proxy's).
    pub https: bool,
}

/// The proxies whose forwarding headers are believed, and where that list came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
    source: TrustSource,
}

/// Where the list of trusted proxies came from, for the start-up line and `/readyz`: an operator
/// reading either must be able to tell a deliberate empty list from a forgotten setting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TrustSource {
    /// `BANTER_TRUSTED_PROXIES` is not set, and no platform default applies: nobody is trusted.
    #[default]
    Unset,
    /// `BANTER_TRUSTED_PROXIES` (or `--trusted-proxies`), possibly empty.
    Setting,
    /// The setting is not set and Banter runs on Azure App Service: its front end's ranges.
    AppService,
}

impl TrustSource {
    /// The name `/readyz` and the logs use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unset => "unset",
            Self::Setting => "setting",
            Self::AppService => "azure-app-service-default",
        }
    }
}

impl TrustedProxies {
    /// A list the operator gave.
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self::from_source(nets, TrustSource::Setting)
    }

    pub fn from_source(nets: Vec<IpNet>, source: TrustSource) -> Self {
        Self { nets, source }
    }

    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|net| net.contains(ip))
    }

    pub fn nets(&self) -> &[IpNet] {
        &self.nets
    }

    pub fn source(&self) -> TrustSource {
        self.source
    }

    /// Who sent a request that reached us from `peer`. `X-Forwarded-For` lists the addresses a
    /// request passed through, each proxy appending the one it received it from; so it is read
    /// from the right, and the first address that is not a trusted proxy is the client. Whatever
    /// stands left of that was written by the client itself and is ignored.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap, own_tls: bool) -> Client {
        let peer = peer.to_canonical();
        if !self.trusts(peer) {
            return Client {
                addr: peer,
                https: own_tls,
            };
        }
        let mut addr = peer;
        // Split as bytes, not as text: a client may send bytes that are not ASCII (HTTP allows
        // them), and a proxy appends its entries to the line the client sent, so refusing the
        // whole line would hide the entries the proxies wrote.
        let hops = headers
            .get_all("x-forwarded-for")
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .collect::<Vec<_>>();
        for hop in hops.iter().rev() {
            // An entry we cannot read ends the chain: we cannot tell who wrote what is left of it,
            // so the last hop we could read stands for the client.
            let Some(ip) = std::str::from_utf8(hop).ok().and_then(parse_hop) else {
                break;
            };
            addr = ip;
            if !self.trusts(ip) {
                break;
            }
        }
        // The scheme the last proxy saw: the one that terminated TLS, closest to us. Several
        // header lines are one list (RFC 9110), so that is the last entry of the last line.
        let https = match headers
            .get_all("x-forwarded-proto")
            .iter()
            .next_back()
            .and_then(|v| v.as_bytes().rsplit(|b| *b == b',').next())
        {
            Some(proto) => proto.trim_ascii().eq_ignore_ascii_case(b"https"),
            None => own_tls,
        };
        Client { addr, https }
    }
}

/// The value of `BANTER_TRUSTED_PROXIES`: networks, comma separated. An empty value (or `none`)
/// is a list too, an empty one: "trust nobody", which also turns off the App Service default.
/// That is why the whole value is parsed here rather than split by clap, which would hand an
/// empty value to `IpNet` and refuse it.
impl FromStr for TrustedProxies {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().eq_ignore_ascii_case("none") {
            return Ok(Self::new(Vec::new()));
        }
        let nets = s
            .split(',')
            .filter(|entry| !entry.trim().is_empty())
            .map(str::parse)
            .collect::<Result<Vec<IpNet>, _>>()?;
        Ok(Self::new(nets))
    }
}

impl fmt::Display for TrustedProxies {
    /// The networks, comma separated (the setting's own syntax), or `none`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nets.is_empty() {
            return f.write_str("none");
        }
        for (i, net) in self.nets.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{net}")?;
        }
        Ok(())
    }
}

/// One `X-Forwarded-For` entry: `1.2.3.4`, `1.2.3.4:5678` (Azure adds the port), `::1` or
/// `[::1]:5678`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Some(rest) = hop.strip_prefix('[') {
        let (ip, _) = rest.split_once(']')?;
        return ip.parse::<IpAddr>().ok().map(|ip| ip.to_canonical());
    }
    let (ip, port) = hop.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    ip.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

/// The per-address bounds. Zero turns one off.
#[derive(Debug, Clone, Copy)]
pub struct AddressBounds {
    /// New Engine.IO sessions per second, refilled continuously.
    pub connect_rate: f64,
    /// New sessions at once, before the rate applies.
    pub connect_burst: u32,
    /// Socket.IO connections open at once.
    pub max_open: u32,
}

/// Why a client was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Too many new sessions lately; try again after this long.
    Rate(Duration),
    /// Too many connections open.
    Open,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rate(after) => write!(
                f,
                "too many new connections from your address; try again in {} ms",
                after.as_millis().max(1)
            ),
            Self::Open => f.write_str("too many open connections from your address"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn nets(list: &[&str]) -> TrustedProxies {
        TrustedProxies::new(list.iter().map(|s| s.parse().unwrap()).collect())
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks_parse_and_contain() {
        let net: IpNet = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains(ip("10.200.3.4")));
        assert!(!net.contains(ip("11.0.0.1")));
        assert!(net.contains(ip("::ffff:10.1.2.3")), "IPv4-mapped IPv6");
        let one: IpNet = "192.168.1.7".parse().unwrap();
        assert!(one.contains(ip("192.168.1.7")) && !one.contains(ip("192.168.1.8")));
        let v6: IpNet = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")));
        for bad in ["", "10.0.0.0/33", "10.0.0/8", "::/129", "x", "10.0.0.0/-1"] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_setting_is_one_list_and_an_empty_one_trusts_nobody() {
        let t: TrustedProxies = " 127.0.0.1, 10.0.0.0/8,::1/128 ".parse().unwrap();
        assert_eq!(t.source(), TrustSource::Setting);
        assert_eq!(
            t.to_string(),
            "127.0.0.1,10.0.0.0/8,::1",
            "as an operator writes it"
        );
        assert!(t.trusts(ip("10.9.8.7")) && t.trusts(ip("::1")));
        for empty in ["", "  ", "none", "None", ",,"] {
            let t: TrustedProxies = empty.parse().unwrap();
            assert!(t.nets().is_empty(), "{empty:?}");
            assert!(!t.trusts(ip("127.0.0.1")));
        }
        assert!("127.0.0.1,none".parse::<TrustedProxies>().is_err());
        assert!("127.0.0.1;10.0.0.1".parse::<TrustedProxies>().is_err());
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = nets(&["127.0.0.1", "10.0.0.0/8"]);
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 1.2.3.4, 10.0.0.5")]);
        // From an untrusted peer: the peer, whatever the header says.
        assert_eq!(trusted.client(ip("8.8.8.8"), &h, false).addr, ip("8.8.8.8"));
        // From a trusted proxy: the rightmost untrusted hop. 6.6.6.6 was written by the client.
        assert_eq!(
            trusted.client(ip("127.0.0.1"), &h, false).addr,
            ip("1.2.3.4")
        );
        // Several header lines count as one list, in order.
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "1.2.3.4:5555"),
        ]);
        assert_eq!(
            trusted.client(ip("10.1.1.1"), &h, false).addr,
            ip("1.2.3.4")
        );
        // An unreadable hop ends the chain at the last readable one.
        let h = headers(&[("x-forwarded-for", "1.2.3.4, garbage, 10.0.0.9")]);
        assert_eq!(
            trusted.client(ip("127.0.0.1"), &h, false).addr,
            ip("10.0.0.9")
        );
        // Bracketed IPv6 with a port; no header at all.
        let h = headers(&[("x-forwarded-for", "[2001:db8::1]:443")]);
        assert_eq!(
            trusted.client(ip("127.0.0.1"), &h, false).addr,
            ip("2001:db8::1")
        );
        assert_eq!(
            trusted
                .client(ip("127.0.0.1"), &HeaderMap::new(), false)
                .addr,
            ip("127.0.0.1")
        );
    }

    #[test]
    fn forwarded_proto_is_believed_only_from_trusted_proxies() {
        let trusted = nets(&["127.0.0.1"]);
        let h = headers(&[("x-forwarded-proto", "https")]);
        assert!(trusted.client(ip("127.0.0.1"), &h, false).https);
        assert!(!trusted.client(ip("9.9.9.9"), &h, false).https);
        assert!(trusted.client(ip("9.9.9.9"), &h, true).https, "our own TLS");
        let h = headers(&[("x-forwarded-proto", "https, http")]);
        assert!(!trusted.client(ip("127.0.0.1"), &h, true).https);
        // Several lines are one list: the client's own line comes first, the proxy's last.
        let h = headers(&[
            ("x-forwarded-proto", "https"),
            ("x-forwarded-proto", "http"),
        ]);
        assert!(!trusted.client(ip("127.0.0.1"), &h, false).https);
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-proto",
            HeaderValue::from_bytes(b"\x80").unwrap(),
        );
        h.append("x-forwarded-proto", HeaderValue::from_static("http"));
        assert!(!trusted.client(ip("127.0.0.1"), &h, true).https);
    }

    /// Found by `tests/properties.rs`: bytes that are not ASCII, which a client may send and nginx
    /// passes on, once made the whole line unreadable, and with it the address nginx appended
    /// (`$proxy_add_x_forwarded_for`): every such client then counted as the proxy itself.
    #[test]
    fn a_client_cannot_hide_the_proxys_entry_with_bytes_that_are_not_ascii() {
        let trusted = nets(&["127.0.0.1"]);
        let mut h = HeaderMap::new();
        let line = HeaderValue::from_bytes(b"\xff\x80 6.6.6.6, 203.0.113.5").unwrap();
        h.append("x-forwarded-for", line);
        assert_eq!(
            trusted.client(ip("127.0.0.1"), &h, false).addr,
            ip("203.0.113.5")
        );
    }
}
