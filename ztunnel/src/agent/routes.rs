//! Finding a pod's host-side interface the way a CNI leaves it: the route
//! to the pod's address. Reads the kernel's routing tables from
//! `/proc/net/route` and `/proc/net/ipv6_route` of the agent's network
//! namespace, so it works beside any CNI that routes pod addresses to veths.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A host route: destination prefix → interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Destination network.
    pub dest: IpAddr,
    /// Prefix length.
    pub prefix_len: u8,
    /// Whether the route has a gateway (then the interface is not the pod's).
    pub via_gateway: bool,
    /// Output interface.
    pub interface: String,
}

/// Parses `/proc/net/route` (IPv4; addresses in host byte order hex).
pub fn parse_ipv4(text: &str) -> Vec<Route> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            continue;
        }
        let (Ok(dest), Ok(gw), Ok(mask)) =
            (u32::from_str_radix(f[1], 16), u32::from_str_radix(f[2], 16), u32::from_str_radix(f[7], 16))
        else {
            continue;
        };
        // The file prints the in-memory (network order) value as a native
        // integer: its native-endian bytes are the address bytes.
        let dest = Ipv4Addr::from(dest.to_ne_bytes());
        let prefix_len = u8::try_from(mask.count_ones()).unwrap_or(0);
        out.push(Route { dest: IpAddr::V4(dest), prefix_len, via_gateway: gw != 0, interface: f[0].to_string() });
    }
    out
}

/// Parses `/proc/net/ipv6_route`.
pub fn parse_ipv6(text: &str) -> Vec<Route> {
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 || f[0].len() != 32 {
            continue;
        }
        let (Ok(dest), Ok(plen), Ok(gw)) =
            (u128::from_str_radix(f[0], 16), u8::from_str_radix(f[1], 16), u128::from_str_radix(f[4], 16))
        else {
            continue;
        };
        out.push(Route {
            dest: IpAddr::V6(Ipv6Addr::from(dest)),
            prefix_len: plen,
            via_gateway: gw != 0,
            interface: f[9].to_string(),
        });
    }
    out
}

/// Whether a route is a host route to a pod: full-length prefix, no
/// gateway, not loopback.
fn is_pod_route(r: &Route) -> bool {
    let full = if r.dest.is_ipv4() { 32 } else { 128 };
    r.prefix_len == full && !r.via_gateway && r.interface != "lo"
}

/// Every host route, by destination (the first one wins).
pub fn host_routes(routes: &[Route]) -> std::collections::HashMap<IpAddr, &str> {
    let mut out = std::collections::HashMap::new();
    for r in routes.iter().filter(|r| is_pod_route(r)) {
        out.entry(r.dest).or_insert(r.interface.as_str());
    }
    out
}

/// Reads both routing tables of the current network namespace.
pub fn read() -> std::io::Result<Vec<Route>> {
    let mut routes = parse_ipv4(&std::fs::read_to_string("/proc/net/route")?);
    if let Ok(v6) = std::fs::read_to_string("/proc/net/ipv6_route") {
        routes.extend(parse_ipv6(&v6));
    }
    Ok(routes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_routes_are_found() {
        let v4 = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                  eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                  ztv3\t0A01F40A\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0\n\
                  zt-link0\t0002F40A\t0164A8C0\t0003\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        let routes = parse_ipv4(v4);
        assert_eq!(routes.len(), 3);
        let pod: IpAddr = "10.244.1.10".parse().unwrap();
        let index = host_routes(&routes);
        assert_eq!(index.get(&pod), Some(&"ztv3"));
        let other: IpAddr = "10.244.2.10".parse().unwrap();
        assert_eq!(index.get(&other), None, "a /24 via a gateway is not a pod route");
        assert_eq!(index.len(), 1);
        let v6 = "fd000000000000000000000000000005 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000400 00000001 00000000 00000001     ztv7\n";
        let routes = parse_ipv6(v6);
        assert_eq!(host_routes(&routes).get(&"fd00::5".parse().unwrap()), Some(&"ztv7"));
    }

    #[test]
    fn garbage_lines_are_ignored() {
        assert!(parse_ipv4("header\nnot a route\n\nx y z\n").is_empty());
        assert!(parse_ipv6("zz 1 2 3\n").is_empty());
    }
}
