//! Service translation at the socket, the loader's side: the Service maps
//! the agent writes (`zt_svc`, `zt_svc_backends`, `zt_svc_cidr`; see
//! `bpf/services.h` and `maps.h`) and the cgroup programs' attachment,
//! with the node-local legs' `sock_ops` program beside them (`bpf/legs.h`).

use std::collections::HashSet;
use std::path::Path;

use crate::loader::{AttachError, SyncError, conv, del_ok, prog_err, take};
use crate::maps;

/// The Service maps of a loaded object (see `zt_svc` in maps.h): written
/// by the agent as Services and their endpoints change.
pub struct ServiceMaps {
    svc: aya::maps::HashMap<aya::maps::MapData, maps::ZtSvcKey, maps::ZtSvcValue>,
    backends: aya::maps::HashMap<aya::maps::MapData, maps::ZtBackendKey, maps::ZtBackend>,
}

impl ServiceMaps {
    /// Takes the Service maps out of a loaded object.
    pub fn take(bpf: &mut aya::Ebpf) -> Result<Self, SyncError> {
        use crate::map_names::{SVC, SVC_BACKENDS};
        Ok(Self {
            svc: conv(SVC, aya::maps::HashMap::try_from(take(bpf, SVC)?))?,
            backends: conv(SVC_BACKENDS, aya::maps::HashMap::try_from(take(bpf, SVC_BACKENDS)?))?,
        })
    }

    /// Writes backend list `id`.
    pub fn put_backends(&mut self, id: u32, backends: &[std::net::SocketAddr]) -> Result<(), SyncError> {
        for (i, b) in backends.iter().enumerate() {
            let index = u32::try_from(i).unwrap_or(u32::MAX);
            conv("zt_svc_backends", self.backends.insert(maps::ZtBackendKey { id, index }, maps::backend(*b), 0))?;
        }
        Ok(())
    }

    /// Deletes backend list `id` of `count` entries.
    pub fn del_backends(&mut self, id: u32, count: u32) -> Result<(), SyncError> {
        for index in 0..count {
            del_ok("zt_svc_backends", self.backends.remove(&maps::ZtBackendKey { id, index }))?;
        }
        Ok(())
    }

    /// Points a frontend at backend list `id` of `count` entries.
    pub fn put_frontend(&mut self, k: maps::ZtSvcKey, id: u32, count: u32) -> Result<(), SyncError> {
        conv("zt_svc", self.svc.insert(k, maps::ZtSvcValue { id, count }, 0))
    }

    /// Removes a frontend.
    pub fn del_frontend(&mut self, k: maps::ZtSvcKey) -> Result<(), SyncError> {
        del_ok("zt_svc", self.svc.remove(&k))
    }

    /// What a previous agent left: every frontend and every backend key.
    pub fn existing(&self) -> (Vec<(maps::ZtSvcKey, maps::ZtSvcValue)>, Vec<maps::ZtBackendKey>) {
        (self.svc.iter().flatten().collect(), self.backends.keys().flatten().collect())
    }

    /// Deletes one backend entry.
    pub fn del_backend(&mut self, k: maps::ZtBackendKey) -> Result<(), SyncError> {
        del_ok("zt_svc_backends", self.backends.remove(&k))
    }
}

/// Makes the Service CIDR trie hold exactly `cidrs` (network, prefix
/// length), adding before removing.
pub fn set_service_cidrs(bpf: &mut aya::Ebpf, cidrs: &[(std::net::IpAddr, u8)]) -> Result<(), SyncError> {
    use aya::maps::lpm_trie::Key;
    let name = crate::map_names::SVC_CIDR;
    let mut trie: aya::maps::LpmTrie<_, maps::ZtSvcCidrKey, u8> =
        conv(name, aya::maps::LpmTrie::try_from(bpf.map_mut(name).ok_or(SyncError::Missing(name))?))?;
    let want: HashSet<(u32, maps::ZtSvcCidrKey)> = cidrs.iter().map(|(n, p)| maps::svc_cidr_key(*n, *p)).collect();
    for (p, k) in &want {
        conv(name, trie.insert(&Key::new(*p, *k), 1, 0))?;
    }
    let stale: Vec<(u32, maps::ZtSvcCidrKey)> =
        trie.keys().flatten().map(|k| (k.prefix_len(), k.data())).filter(|k| !want.contains(k)).collect();
    for (p, k) in stale {
        del_ok(name, trie.remove(&Key::new(p, k)))?;
    }
    Ok(())
}

/// Loads the socket programs — Service translation and the node-local
/// legs' congestion control (`zt_sockops`, see `bpf/legs.h`) — and
/// attaches them to the cgroup at `cgroup` (a cgroup v2 directory; every
/// socket of a process in it or below is seen), with bpf links that live as
/// long as the object, or pinned under `pin_dir` as `socket-<program>` so
/// that they outlive the agent. Pins a previous agent left there are
/// replaced: the new links are attached first, then the old ones removed
/// (while both are attached, the first translates and the second finds a
/// backend address, not a frontend, and leaves it).
pub fn attach_socket_programs(bpf: &mut aya::Ebpf, cgroup: &Path, pin_dir: Option<&Path>) -> Result<(), AttachError> {
    use aya::programs::links::{FdLink, LinkError};
    use aya::programs::{CgroupAttachMode, CgroupSockAddr, SockOps};
    let file = std::fs::File::open(cgroup).map_err(|e| AttachError::Pin {
        path: cgroup.display().to_string(),
        reason: format!("opening the cgroup: {e}"),
    })?;
    let where_ = cgroup.display().to_string();
    let pin = |name: &str, fd: Result<FdLink, LinkError>| -> Result<(), AttachError> {
        let Some(dir) = pin_dir else { return Ok(()) };
        let fd = fd.map_err(|e| AttachError::Pin { path: where_.clone(), reason: e.to_string() })?;
        let path = dir.join(format!("socket-{name}"));
        // The new link is attached (held by its descriptor) before the
        // predecessor's pin goes, which detaches the old one: no moment
        // without translation.
        if path.exists() {
            std::fs::remove_file(&path)
                .map_err(|e| AttachError::Pin { path: path.display().to_string(), reason: e.to_string() })?;
        }
        fd.pin(&path).map_err(|e| AttachError::Pin { path: path.display().to_string(), reason: e.to_string() })?;
        Ok(())
    };
    for name in crate::programs::SOCKET {
        let prog: &mut CgroupSockAddr = bpf
            .program_mut(name)
            .ok_or(AttachError::Missing(name))?
            .try_into()
            .map_err(prog_err("load", name, &where_))?;
        prog.load().map_err(prog_err("load", name, &where_))?;
        // A bpf link (kernel 5.7+): links to a cgroup always coexist with
        // other links and programs there, and the kernel wants no flags.
        let id = prog.attach(&file, CgroupAttachMode::Single).map_err(prog_err("attach", name, &where_))?;
        if pin_dir.is_some() {
            let link = prog.take_link(id).map_err(prog_err("pin", name, &where_))?;
            pin(name, link.try_into())?;
        }
    }
    let name = crate::programs::SOCK_OPS;
    let prog: &mut SockOps =
        bpf.program_mut(name).ok_or(AttachError::Missing(name))?.try_into().map_err(prog_err("load", name, &where_))?;
    prog.load().map_err(prog_err("load", name, &where_))?;
    let id = prog.attach(&file, CgroupAttachMode::Single).map_err(prog_err("attach", name, &where_))?;
    if pin_dir.is_some() {
        let link = prog.take_link(id).map_err(prog_err("pin", name, &where_))?;
        pin(name, link.try_into())?;
    }
    Ok(())
}

/// Sets the congestion control the pods' ends of node-local legs switch to
/// (`zt_local_cc`, see maps.h); `None` leaves them alone. The name must fit
/// the kernel's 15 characters.
pub fn set_local_cc(bpf: &mut aya::Ebpf, name: Option<&str>) -> Result<(), SyncError> {
    let map = crate::map_names::LOCAL_CC;
    let mut value = maps::ZtLocalCc::default();
    if let Some(n) = name {
        let bytes = n.as_bytes();
        if bytes.is_empty() || bytes.len() >= value.name.len() {
            return Err(SyncError::Invalid(format!("congestion control name {n:?}: 1 to 15 characters")));
        }
        value.name[..bytes.len()].copy_from_slice(bytes);
    }
    let mut array: aya::maps::Array<_, maps::ZtLocalCc> =
        conv(map, aya::maps::Array::try_from(bpf.map_mut(map).ok_or(SyncError::Missing(map))?))?;
    conv(map, array.set(0, value, 0))
}

/// Removes pinned socket program links under `pin_dir` (an agent started
/// without Service translation).
pub fn unpin_socket_programs(pin_dir: &Path) {
    for name in crate::programs::SOCKET.into_iter().chain([crate::programs::SOCK_OPS]) {
        let path = pin_dir.join(format!("socket-{name}"));
        if let Ok(link) = aya::programs::links::PinnedLink::from_pin(&path) {
            let _ = link.unpin();
        }
    }
}
