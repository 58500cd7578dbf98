//! Congestion control of the node-local legs.
//!
//! A captured connection is three TCP connections: pod → capture socket
//! (one veth on this node), the tunnel between the two nodes' proxies, and
//! delivery socket → pod (one veth on the destination node). Only the
//! tunnel crosses the network, and it keeps the node's congestion control.
//! On the two local legs there is no path to model: the peer is the proxy
//! or the pod a veth away. A pacing algorithm there — BBR, which many nodes
//! run by default — still arms a timer per burst it spaces out, and in a VM
//! each timer costs exits to the hypervisor: on the benchmark machine, BBR
//! on those legs halved the throughput of four streams (BENCHMARKS.md,
//! session 16). So those legs use a window-based algorithm (cubic by
//! default): the proxy sets it on its capture listener (inherited by every
//! accepted socket) and delivery sockets here, and the datapath's
//! `zt_sockops` sets it on the pods' ends (`ebpf/bpf/legs.h`).

use std::os::fd::AsFd;

/// The kernel's limit on an algorithm's name, without its NUL.
const NAME_MAX: usize = 15;

/// Where the kernel lists the algorithms it has.
const AVAILABLE: &str = "/proc/sys/net/ipv4/tcp_available_congestion_control";

/// Sets `name` as the socket's congestion control. Taken as an `OsString`
/// (what the option wants) so that a caller setting it on every new
/// connection converts the name once, not per connection.
pub fn set(fd: &impl AsFd, name: &std::ffi::OsString) -> std::io::Result<()> {
    nix::sys::socket::setsockopt(fd, nix::sys::socket::sockopt::TcpCongestion, name)
        .map_err(|e| std::io::Error::other(format!("TCP_CONGESTION {}: {e}", name.to_string_lossy())))
}

/// Checks that `name` is an algorithm this kernel has (before anything is
/// bound: a name the kernel lacks would fail every delivery).
pub fn validate(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > NAME_MAX || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(format!("{name:?} is not a congestion control name (1 to {NAME_MAX} letters, digits or _)"));
    }
    let list = std::fs::read_to_string(AVAILABLE).map_err(|e| format!("reading {AVAILABLE}: {e}"))?;
    if !list.split_whitespace().any(|a| a == name) {
        return Err(format!("this kernel has no {name:?} congestion control (it has: {})", list.trim()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn current(s: &std::net::TcpListener) -> String {
        let v = nix::sys::socket::getsockopt(s, nix::sys::socket::sockopt::TcpCongestion).unwrap();
        v.to_string_lossy().trim_end_matches('\0').to_string()
    }

    #[test]
    fn sets_an_available_algorithm_and_refuses_others() {
        // reno is built into every kernel.
        assert_eq!(validate("reno"), Ok(()));
        let s = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        set(&s, &"reno".into()).unwrap();
        assert_eq!(current(&s), "reno");
        let e = validate("no_such_cc").unwrap_err();
        assert!(e.contains("has no \"no_such_cc\""), "{e}");
        assert!(set(&s, &"no_such_cc".into()).is_err());
        assert_eq!(current(&s), "reno");
        for bad in ["", "bbr cubic", "a-very-long-name-indeed", "../x"] {
            assert!(validate(bad).unwrap_err().contains("not a congestion control name"), "{bad}");
        }
    }
}
