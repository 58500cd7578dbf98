//! Finding a pod's host-side interface by the other end of its veth: the
//! way that works behind a bridge.
//!
//! Routed CNIs (Calico and the like) leave a host route per pod address
//! that names the pod's veth, which `routes` reads. Bridge CNIs (flannel's
//! `cni0`, kubenet's `cbr0`) leave none: the whole pod range is one
//! connected route on the bridge, and each pod's veth is a port of it. What
//! ties a port to a pod is the veth's other end, which lives in the pod's
//! network namespace and holds the pod's addresses. rtnetlink tells both
//! halves without entering any namespace: a link dump names each veth's
//! peer (its index and the id of its namespace, `IFLA_LINK` and
//! `IFLA_LINK_NETNSID`), and an address dump can be asked for another
//! namespace by that id (`IFA_TARGET_NETNSID`, Linux 4.20) and filtered to
//! the peer's index. The link dump also gives each port's bridge and the
//! bridge's MAC, which the datapath needs for steering (`zt_ports`).
//!
//! A pod's addresses do not change while its veth lives, so each veth's
//! addresses are asked for once (until the CNI has assigned them: a veth
//! whose peer has none yet is asked again next time); a poll then costs one
//! link dump. Message building and parsing are pure and tested on bytes;
//! anything malformed is an error for that poll, never a panic.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd};

use thiserror::Error;

// rtnetlink numbers (linux/netlink.h, linux/rtnetlink.h, linux/if_link.h,
// linux/if_addr.h).
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINK: u16 = 5;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_LINK_NETNSID: u16 = 37;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_TARGET_NETNSID: u16 = 10;
const RT_SCOPE_UNIVERSE: u8 = 0;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const SOL_NETLINK: i32 = 270;
const NETLINK_GET_STRICT_CHK: i32 = 12;
/// The attribute type without the nested / byte-order flags.
const NLA_TYPE_MASK: u16 = 0x3fff;

const NLMSG_HDRLEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;
const IFADDRMSG_LEN: usize = 8;

/// What went wrong talking to the kernel.
#[derive(Debug, Error)]
pub enum LinksError {
    /// A socket call failed.
    #[error("netlink: {0}")]
    Io(#[from] std::io::Error),
    /// The kernel answered a request with an error.
    #[error("netlink request refused: {0}")]
    Refused(std::io::Error),
    /// An answer that does not parse.
    #[error("malformed netlink message: {0}")]
    Malformed(&'static str),
}

/// One interface of the node, as a link dump shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// `IFLA_INFO_KIND`: `veth`, `bridge`, ... (`None` for a physical one).
    pub kind: Option<String>,
    /// The bridge (or other master) it is enslaved to.
    pub master: Option<u32>,
    /// Its hardware address, when it is an Ethernet one.
    pub mac: Option<[u8; 6]>,
    /// A veth's other end: its index, in the namespace of `peer_netnsid`.
    pub peer_index: Option<u32>,
    /// The id (in this namespace) of the namespace of the other end, when
    /// that is another namespace.
    pub peer_netnsid: Option<i32>,
}

impl Link {
    /// A veth whose other end is in another namespace: a pod's, if any.
    fn peer(&self) -> Option<(i32, u32)> {
        match (self.kind.as_deref(), self.peer_netnsid, self.peer_index) {
            (Some("veth"), Some(nsid), Some(peer)) if nsid >= 0 => Some((nsid, peer)),
            _ => None,
        }
    }
}

/// One address of an address dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address {
    /// The interface holding it.
    pub index: u32,
    /// The address.
    pub ip: IpAddr,
    /// `RT_SCOPE_*`: 0 for global addresses, 253 for link-local.
    pub scope: u8,
}

/// The node's interfaces and the pod addresses behind its veths.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// Every interface, by index.
    pub links: HashMap<u32, Link>,
    /// Global addresses of veth peers → the host-side veth's index.
    pub by_peer_address: HashMap<IpAddr, u32>,
}

impl Snapshot {
    /// The MAC of the bridge `index` is a port of, if it is a port of a
    /// bridge (and not of a bond or a VRF).
    pub fn bridge_mac(&self, index: u32) -> Option<[u8; 6]> {
        let master = self.links.get(&self.links.get(&index)?.master?)?;
        if master.kind.as_deref() == Some("bridge") { master.mac } else { None }
    }
}

/// A dump request for every link (strict checking: the header is all zero).
fn link_request(seq: u32) -> Vec<u8> {
    let mut m = header(RTM_GETLINK, seq, IFINFOMSG_LEN);
    m.extend_from_slice(&[0; IFINFOMSG_LEN]);
    finish(m)
}

/// A dump request for the addresses of interface `index` of the namespace
/// with id `nsid`, of one family.
fn address_request(seq: u32, family: u8, nsid: i32, index: u32) -> Vec<u8> {
    let mut m = header(RTM_GETADDR, seq, IFADDRMSG_LEN + 8);
    m.extend_from_slice(&[family, 0, 0, 0]);
    m.extend_from_slice(&index.to_ne_bytes());
    m.extend_from_slice(&8u16.to_ne_bytes());
    m.extend_from_slice(&IFA_TARGET_NETNSID.to_ne_bytes());
    m.extend_from_slice(&nsid.to_ne_bytes());
    finish(m)
}

fn header(kind: u16, seq: u32, body: usize) -> Vec<u8> {
    let mut m = Vec::with_capacity(NLMSG_HDRLEN + body);
    m.extend_from_slice(&0u32.to_ne_bytes()); // length, set by `finish`
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m
}

fn finish(mut m: Vec<u8>) -> Vec<u8> {
    let len = u32::try_from(m.len()).unwrap_or(u32::MAX);
    m[..4].copy_from_slice(&len.to_ne_bytes());
    m
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// The messages of one `recv`: (type, payload). Stops at the end or at a
/// message whose length does not fit.
fn messages(buf: &[u8]) -> Result<Vec<(u16, &[u8])>, LinksError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + NLMSG_HDRLEN <= buf.len() {
        let len = u32_at(buf, at).ok_or(LinksError::Malformed("header"))? as usize;
        if len < NLMSG_HDRLEN || at + len > buf.len() {
            return Err(LinksError::Malformed("message length"));
        }
        let kind = u16_at(buf, at + 4).ok_or(LinksError::Malformed("header"))?;
        out.push((kind, &buf[at + NLMSG_HDRLEN..at + len]));
        at += align4(len);
    }
    Ok(out)
}

/// The attributes of a message body: (type without flags, payload).
fn attributes(mut b: &[u8]) -> Result<Vec<(u16, &[u8])>, LinksError> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = u16_at(b, 0).ok_or(LinksError::Malformed("attribute"))? as usize;
        let kind = u16_at(b, 2).ok_or(LinksError::Malformed("attribute"))? & NLA_TYPE_MASK;
        if len < 4 || len > b.len() {
            return Err(LinksError::Malformed("attribute length"));
        }
        out.push((kind, &b[4..len]));
        b = &b[align4(len).min(b.len())..];
    }
    Ok(out)
}

fn string(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Whether a dump is over, after an error check: `Ok(true)` at
/// `NLMSG_DONE`.
fn control(kind: u16, body: &[u8]) -> Result<bool, LinksError> {
    match kind {
        NLMSG_DONE => {
            // With strict checking, DONE carries the dump's error code.
            match u32_at(body, 0).map(|c| c as i32) {
                Some(code) if code < 0 => Err(LinksError::Refused(std::io::Error::from_raw_os_error(-code))),
                _ => Ok(true),
            }
        }
        NLMSG_ERROR => {
            let code = u32_at(body, 0).ok_or(LinksError::Malformed("error message"))? as i32;
            if code < 0 {
                Err(LinksError::Refused(std::io::Error::from_raw_os_error(-code)))
            } else {
                Ok(false) // an acknowledgement
            }
        }
        _ => Ok(false),
    }
}

/// Parses one `recv` of a link dump: the links, and whether the dump ended.
pub fn parse_links(buf: &[u8]) -> Result<(Vec<Link>, bool), LinksError> {
    let mut links = Vec::new();
    for (kind, body) in messages(buf)? {
        if control(kind, body)? {
            return Ok((links, true));
        }
        if kind != RTM_NEWLINK {
            continue;
        }
        let index = u32_at(body, 4).ok_or(LinksError::Malformed("ifinfomsg"))?;
        let mut link = Link { index, ..Link::default() };
        for (t, v) in attributes(body.get(IFINFOMSG_LEN..).ok_or(LinksError::Malformed("ifinfomsg"))?)? {
            match t {
                IFLA_IFNAME => link.name = string(v),
                IFLA_ADDRESS => link.mac = v.try_into().ok(),
                IFLA_MASTER => link.master = u32_at(v, 0).filter(|&m| m != 0),
                IFLA_LINK => link.peer_index = u32_at(v, 0).filter(|&p| p != 0 && p != index),
                IFLA_LINK_NETNSID => link.peer_netnsid = u32_at(v, 0).map(|n| n as i32),
                IFLA_LINKINFO => {
                    for (it, iv) in attributes(v)? {
                        if it == IFLA_INFO_KIND {
                            link.kind = Some(string(iv));
                        }
                    }
                }
                _ => {}
            }
        }
        links.push(link);
    }
    Ok((links, false))
}

/// Parses one `recv` of an address dump: the addresses, and whether the
/// dump ended.
pub fn parse_addresses(buf: &[u8]) -> Result<(Vec<Address>, bool), LinksError> {
    let mut out = Vec::new();
    for (kind, body) in messages(buf)? {
        if control(kind, body)? {
            return Ok((out, true));
        }
        if kind != RTM_NEWADDR {
            continue;
        }
        let (Some(&family), Some(&scope), Some(index)) = (body.first(), body.get(3), u32_at(body, 4)) else {
            return Err(LinksError::Malformed("ifaddrmsg"));
        };
        let (mut local, mut address) = (None, None);
        for (t, v) in attributes(body.get(IFADDRMSG_LEN..).ok_or(LinksError::Malformed("ifaddrmsg"))?)? {
            let ip = match (family, v.len()) {
                (AF_INET, 4) => <[u8; 4]>::try_from(v).ok().map(|a| IpAddr::V4(Ipv4Addr::from(a))),
                (AF_INET6, 16) => <[u8; 16]>::try_from(v).ok().map(|a| IpAddr::V6(Ipv6Addr::from(a))),
                _ => None,
            };
            match t {
                IFA_LOCAL => local = ip,
                IFA_ADDRESS => address = ip,
                _ => {}
            }
        }
        // IFA_LOCAL is the interface's own address (IFA_ADDRESS is the
        // peer's on a point-to-point link); IPv6 has only IFA_ADDRESS.
        if let Some(ip) = local.or(address) {
            out.push(Address { index, ip, scope });
        }
    }
    Ok((out, false))
}

/// A route netlink socket with strict checking (needed for the address
/// dump's namespace and interface filters).
struct Socket {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl Socket {
    fn open() -> Result<Self, LinksError> {
        use nix::sys::socket::{self as sock, AddressFamily, NetlinkAddr, SockFlag, SockProtocol, SockType, sockopt};
        let fd =
            sock::socket(AddressFamily::Netlink, SockType::Raw, SockFlag::SOCK_CLOEXEC, SockProtocol::NetlinkRoute)
                .map_err(std::io::Error::from)?;
        let on: nix::libc::c_int = 1;
        #[allow(unsafe_code)]
        // SAFETY: a valid descriptor, and an int option passed by pointer
        // with its exact size.
        let rc = unsafe {
            nix::libc::setsockopt(
                fd.as_raw_fd(),
                SOL_NETLINK,
                NETLINK_GET_STRICT_CHK,
                (&raw const on).cast(),
                std::mem::size_of::<nix::libc::c_int>() as nix::libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        // The kernel answers at once; a bound wait keeps a wedged dump from
        // stalling the agent's loop.
        let timeout = nix::sys::time::TimeVal::new(2, 0);
        sock::setsockopt(&fd, sockopt::ReceiveTimeout, &timeout).map_err(std::io::Error::from)?;
        sock::bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(std::io::Error::from)?;
        Ok(Self { fd, seq: 0, buf: vec![0; 64 * 1024] })
    }

    /// Sends one dump request and feeds each answer to `parse` until it
    /// reports the dump's end.
    fn dump<T>(
        &mut self,
        request: impl FnOnce(u32) -> Vec<u8>,
        parse: impl Fn(&[u8]) -> Result<(Vec<T>, bool), LinksError>,
    ) -> Result<Vec<T>, LinksError> {
        use nix::sys::socket::{MsgFlags, recv, send};
        self.seq = self.seq.wrapping_add(1);
        let req = request(self.seq);
        send(self.fd.as_raw_fd(), &req, MsgFlags::empty()).map_err(std::io::Error::from)?;
        let mut out = Vec::new();
        loop {
            let n = recv(self.fd.as_raw_fd(), &mut self.buf, MsgFlags::empty()).map_err(std::io::Error::from)?;
            if n == 0 {
                return Err(LinksError::Malformed("empty answer"));
            }
            let (items, done) = parse(&self.buf[..n])?;
            out.extend(items);
            if done {
                return Ok(out);
            }
        }
    }
}

/// Remembers each veth's peer addresses between polls.
#[derive(Debug, Default)]
pub struct PeerAddresses {
    /// Host-side veth index → (its peer, that peer's global addresses).
    known: HashMap<u32, ((i32, u32), Vec<IpAddr>)>,
}

impl PeerAddresses {
    /// Dumps the node's links, asks for the addresses of veths not seen
    /// before (or seen without any), and returns the snapshot.
    pub fn refresh(&mut self) -> Result<Snapshot, LinksError> {
        let mut sock = Socket::open()?;
        let links = sock.dump(link_request, parse_links)?;
        let mut snap = Snapshot::default();
        let mut known = HashMap::new();
        for link in &links {
            let Some(peer) = link.peer() else { continue };
            let addrs = match self.known.remove(&link.index) {
                Some((p, addrs)) if p == peer && !addrs.is_empty() => addrs,
                _ => {
                    let mut addrs = Vec::new();
                    for family in [AF_INET, AF_INET6] {
                        // A namespace without IPv6 (or a peer that is gone
                        // by now) answers with an error: no addresses.
                        match sock.dump(|seq| address_request(seq, family, peer.0, peer.1), parse_addresses) {
                            Ok(found) => addrs.extend(
                                found
                                    .into_iter()
                                    .filter(|a| a.index == peer.1 && a.scope == RT_SCOPE_UNIVERSE)
                                    .map(|a| a.ip),
                            ),
                            Err(LinksError::Refused(e)) => {
                                tracing::debug!(veth = %link.name, family, error = %e, "peer addresses");
                            }
                            Err(e) => return Err(e),
                        }
                    }
                    addrs
                }
            };
            for ip in &addrs {
                snap.by_peer_address.entry(*ip).or_insert(link.index);
            }
            known.insert(link.index, (peer, addrs));
        }
        self.known = known;
        snap.links = links.into_iter().map(|l| (l.index, l)).collect();
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const NLM_F_MULTI: u16 = 0x2;

    /// An attribute, padded.
    fn attr(kind: u16, v: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&u16::try_from(4 + v.len()).unwrap().to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(v);
        while a.len() % 4 != 0 {
            a.push(0);
        }
        a
    }

    fn message(kind: u16, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&u32::try_from(NLMSG_HDRLEN + body.len()).unwrap().to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&NLM_F_MULTI.to_ne_bytes());
        m.extend_from_slice(&1u32.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(body);
        m
    }

    fn link(index: u32, attrs: &[Vec<u8>]) -> Vec<u8> {
        let mut b = vec![0u8; IFINFOMSG_LEN];
        b[4..8].copy_from_slice(&index.to_ne_bytes());
        for a in attrs {
            b.extend_from_slice(a);
        }
        message(RTM_NEWLINK, &b)
    }

    fn kind(k: &str) -> Vec<u8> {
        attr(IFLA_LINKINFO | 0x8000, &attr(IFLA_INFO_KIND, format!("{k}\0").as_bytes()))
    }

    #[test]
    fn a_veth_its_bridge_and_its_peer_are_read() {
        let mac = [0x02, 0, 0, 0, 0, 0x10];
        let mut buf = link(4, &[attr(IFLA_IFNAME, b"cni0\0"), attr(IFLA_ADDRESS, &mac), kind("bridge")]);
        buf.extend(link(
            9,
            &[
                attr(IFLA_IFNAME, b"veth1234\0"),
                attr(IFLA_ADDRESS, &[2, 0, 0, 0, 0, 9]),
                attr(IFLA_MASTER, &4u32.to_ne_bytes()),
                attr(IFLA_LINK, &2u32.to_ne_bytes()),
                attr(IFLA_LINK_NETNSID, &3i32.to_ne_bytes()),
                kind("veth"),
            ],
        ));
        buf.extend(message(NLMSG_DONE, &0i32.to_ne_bytes()));
        let (links, done) = parse_links(&buf).unwrap();
        assert!(done);
        assert_eq!(links.len(), 2);
        let veth = &links[1];
        assert_eq!((veth.index, veth.name.as_str(), veth.kind.as_deref()), (9, "veth1234", Some("veth")));
        assert_eq!((veth.master, veth.peer_index, veth.peer_netnsid), (Some(4), Some(2), Some(3)));
        assert_eq!(veth.peer(), Some((3, 2)));
        let snap = Snapshot { links: links.into_iter().map(|l| (l.index, l)).collect(), ..Snapshot::default() };
        assert_eq!(snap.bridge_mac(9), Some(mac));
        assert_eq!(snap.bridge_mac(4), None, "the bridge is no port");
    }

    #[test]
    fn only_veths_with_a_peer_elsewhere_have_a_peer() {
        let same_ns = Link { kind: Some("veth".into()), peer_index: Some(2), ..Link::default() };
        assert_eq!(same_ns.peer(), None);
        let unassigned = Link { peer_netnsid: Some(-1), ..same_ns.clone() };
        assert_eq!(unassigned.peer(), None);
        let vxlan = Link { kind: Some("vxlan".into()), peer_netnsid: Some(0), ..same_ns };
        assert_eq!(vxlan.peer(), None);
    }

    fn addr_msg(family: u8, scope: u8, index: u32, attrs: &[Vec<u8>]) -> Vec<u8> {
        let mut b = vec![family, 24, 0, scope];
        b.extend_from_slice(&index.to_ne_bytes());
        for a in attrs {
            b.extend_from_slice(a);
        }
        message(RTM_NEWADDR, &b)
    }

    #[test]
    fn addresses_prefer_the_local_one() {
        let mut buf =
            addr_msg(AF_INET, 0, 2, &[attr(IFA_ADDRESS, &[10, 244, 1, 1]), attr(IFA_LOCAL, &[10, 244, 1, 5])]);
        let v6: Ipv6Addr = "fd00::5".parse().unwrap();
        buf.extend(addr_msg(AF_INET6, 0, 2, &[attr(IFA_ADDRESS, &v6.octets())]));
        buf.extend(addr_msg(AF_INET6, 253, 2, &[attr(IFA_ADDRESS, &"fe80::1".parse::<Ipv6Addr>().unwrap().octets())]));
        let (addrs, done) = parse_addresses(&buf).unwrap();
        assert!(!done, "no DONE yet: the dump goes on");
        let ips: Vec<(IpAddr, u8)> = addrs.iter().map(|a| (a.ip, a.scope)).collect();
        assert_eq!(
            ips,
            vec![("10.244.1.5".parse().unwrap(), 0), (IpAddr::V6(v6), 0), ("fe80::1".parse().unwrap(), 253)]
        );
    }

    #[test]
    fn kernel_errors_are_reported() {
        let mut err = (-19i32).to_ne_bytes().to_vec(); // ENODEV
        err.extend_from_slice(&[0; NLMSG_HDRLEN]);
        match parse_addresses(&message(NLMSG_ERROR, &err)) {
            Err(LinksError::Refused(e)) => assert_eq!(e.raw_os_error(), Some(19)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse_links(&message(NLMSG_DONE, &(-22i32).to_ne_bytes())), Err(LinksError::Refused(_))));
        // An acknowledgement (error 0) is no error.
        assert_eq!(parse_links(&message(NLMSG_ERROR, &[0; 20])).unwrap(), (vec![], false));
    }

    #[test]
    fn requests_have_their_length_and_filters() {
        let r = address_request(7, AF_INET6, 5, 2);
        assert_eq!(u32_at(&r, 0), Some(u32::try_from(r.len()).unwrap()));
        assert_eq!(u16_at(&r, 4), Some(RTM_GETADDR));
        assert_eq!(u32_at(&r, 8), Some(7));
        assert_eq!(r[NLMSG_HDRLEN], AF_INET6);
        assert_eq!(u32_at(&r, NLMSG_HDRLEN + 4), Some(2));
        assert_eq!(
            attributes(&r[NLMSG_HDRLEN + IFADDRMSG_LEN..]).unwrap(),
            vec![(IFA_TARGET_NETNSID, &5i32.to_ne_bytes()[..])]
        );
        let l = link_request(1);
        assert_eq!(l.len(), NLMSG_HDRLEN + IFINFOMSG_LEN);
        assert!(l[NLMSG_HDRLEN..].iter().all(|&b| b == 0), "strict checking wants an empty header");
    }

    proptest::proptest! {
        #[test]
        fn garbage_never_panics(buf in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = parse_links(&buf);
            let _ = parse_addresses(&buf);
        }

        #[test]
        fn cut_answers_are_errors_not_panics(cut in 0usize..120) {
            let mut buf = link(9, &[attr(IFLA_IFNAME, b"veth0\0"), kind("veth")]);
            buf.extend(message(NLMSG_DONE, &0i32.to_ne_bytes()));
            let cut = cut.min(buf.len());
            let _ = parse_links(&buf[..cut]);
        }
    }
}
