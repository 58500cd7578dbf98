//! Validation and defaulting of `k8s-openapi` objects into the internal model,
//! following the API server (`pkg/apis/networking/validation` and the
//! defaulting functions of `networking/v1` and `core/v1`).

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::error::{FieldError, NsName, ObjectError};
use crate::labels::{Labels, Selector, validate_label_key, validate_label_value};
use crate::model::{
    IpBlock, NAMESPACE_NAME_LABEL, NamedPort, Namespace, NamespaceSelection, NetworkPolicy, Node, ObjectKey, Peer, Pod,
    PortMatch, PortRule, Protocol, Rule,
};

/// The namespace of an object that does not name one (as `kubectl apply`).
pub const DEFAULT_NAMESPACE: &str = "default";

fn name_of(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    kind: &str,
) -> Result<String, ObjectError> {
    match meta.name.as_deref() {
        Some(n) if !n.is_empty() => Ok(n.to_string()),
        _ => Err(ObjectError::new(kind, "<unnamed>", FieldError::new("metadata.name", "required value"))),
    }
}

fn labels_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Result<Labels, FieldError> {
    let mut out = Labels::new();
    for (k, v) in meta.labels.iter().flatten() {
        validate_label_key(k).map_err(|r| FieldError::new("metadata.labels", r))?;
        validate_label_value(v).map_err(|r| FieldError::new(format!("metadata.labels.{k}"), r))?;
        out.insert(k.clone(), v.clone());
    }
    Ok(out)
}

fn key_of(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    kind: &str,
) -> Result<ObjectKey, ObjectError> {
    let name = name_of(meta, kind)?;
    let namespace = meta.namespace.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| DEFAULT_NAMESPACE.into());
    Ok(ObjectKey::new(namespace, name))
}

/// Converts a Namespace, adding the `kubernetes.io/metadata.name` label the
/// API server sets on every namespace.
pub fn namespace(ns: &core::Namespace) -> Result<Namespace, ObjectError> {
    let name = name_of(&ns.metadata, "Namespace")?;
    let mut labels = labels_of(&ns.metadata).map_err(|e| ObjectError::new("Namespace", &name, e))?;
    labels.insert(NAMESPACE_NAME_LABEL.to_string(), name.clone());
    Ok(Namespace { name, labels })
}

/// Converts a Node: its InternalIP and ExternalIP addresses.
pub fn node(n: &core::Node) -> Result<Node, ObjectError> {
    let name = name_of(&n.metadata, "Node")?;
    let mut addresses = Vec::new();
    let addrs = n.status.as_ref().and_then(|s| s.addresses.as_ref());
    for (i, a) in addrs.into_iter().flatten().enumerate() {
        if a.type_ != "InternalIP" && a.type_ != "ExternalIP" {
            continue;
        }
        let ip: IpAddr = a.address.parse().map_err(|_| {
            ObjectError::new(
                "Node",
                &name,
                FieldError::new(
                    format!("status.addresses[{i}].address"),
                    format!("{:?} is not an IP address", a.address),
                ),
            )
        })?;
        if !addresses.contains(&ip) {
            addresses.push(ip);
        }
    }
    Ok(Node { name, addresses })
}

/// An IANA service name: at most 15 lowercase alphanumerics or '-', at least
/// one letter, no leading, trailing or doubled '-'.
pub fn validate_port_name(name: &str) -> Result<(), String> {
    let ok_chars = name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if name.is_empty() || name.len() > 15 {
        return Err(format!("port name {name:?} must be 1 to 15 characters (IANA_SVC_NAME)"));
    }
    if !ok_chars {
        return Err(format!("port name {name:?} must contain only lowercase alphanumerics and '-'"));
    }
    if !name.chars().any(|c| c.is_ascii_lowercase()) {
        return Err(format!("port name {name:?} must contain at least one letter"));
    }
    if name.starts_with('-') || name.ends_with('-') || name.contains("--") {
        return Err(format!("port name {name:?} must not begin or end with '-' or contain '--'"));
    }
    Ok(())
}

fn port_number(n: i32, field: &str) -> Result<u16, FieldError> {
    u16::try_from(n)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| FieldError::new(field, format!("{n} is not a valid port number (1-65535)")))
}

fn protocol(p: Option<&str>, field: &str) -> Result<Protocol, FieldError> {
    match p {
        None => Ok(Protocol::Tcp),
        Some(s) => Protocol::from_k8s(s).ok_or_else(|| {
            FieldError::new(field, format!("unsupported protocol {s:?}: must be one of TCP, UDP, SCTP"))
        }),
    }
}

/// Converts a Pod: labels, addresses, node, service account, named ports.
/// Pods in phase Succeeded or Failed have released their addresses.
pub fn pod(p: &core::Pod) -> Result<Pod, ObjectError> {
    let key = key_of(&p.metadata, "Pod")?;
    let err = |e: FieldError| ObjectError::new("Pod", key.to_string(), e);
    let labels = labels_of(&p.metadata).map_err(err)?;
    let spec = p.spec.as_ref();
    let status = p.status.as_ref();
    let terminated = matches!(status.and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"));

    let mut ips: Vec<IpAddr> = Vec::new();
    if !terminated {
        let listed: Vec<(String, &str)> = match status.and_then(|s| s.pod_ips.as_ref()) {
            Some(list) if !list.is_empty() => {
                list.iter().enumerate().map(|(i, a)| (format!("status.podIPs[{i}].ip"), a.ip.as_str())).collect()
            }
            _ => status
                .and_then(|s| s.pod_ip.as_deref())
                .filter(|s| !s.is_empty())
                .map(|ip| vec![("status.podIP".to_string(), ip)])
                .unwrap_or_default(),
        };
        for (field, s) in listed {
            let ip: IpAddr =
                s.parse().map_err(|_| err(FieldError::new(field, format!("{s:?} is not an IP address"))))?;
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
    }

    let mut named: BTreeMap<String, NamedPort> = BTreeMap::new();
    if let Some(spec) = spec {
        // Ports of regular containers, and of restartable init containers
        // (sidecars), which run for the life of the pod.
        let sidecars = spec
            .init_containers
            .iter()
            .flatten()
            .enumerate()
            .filter(|(_, c)| c.restart_policy.as_deref() == Some("Always"))
            .map(|(i, c)| (format!("spec.initContainers[{i}]"), c));
        let containers = spec.containers.iter().enumerate().map(|(i, c)| (format!("spec.containers[{i}]"), c));
        for (cpath, c) in containers.chain(sidecars) {
            for (j, port) in c.ports.iter().flatten().enumerate() {
                let path = format!("{cpath}.ports[{j}]");
                let number = port_number(port.container_port, &format!("{path}.containerPort")).map_err(err)?;
                let proto = protocol(port.protocol.as_deref(), &format!("{path}.protocol")).map_err(err)?;
                let Some(name) = port.name.as_deref() else {
                    continue;
                };
                validate_port_name(name).map_err(|r| err(FieldError::new(format!("{path}.name"), r)))?;
                if named.contains_key(name) {
                    return Err(err(FieldError::new(format!("{path}.name"), format!("duplicate port name {name:?}"))));
                }
                named.insert(name.to_string(), NamedPort { name: name.to_string(), protocol: proto, port: number });
            }
        }
    }

    Ok(Pod {
        labels,
        ips,
        node: spec.and_then(|s| s.node_name.clone()).filter(|n| !n.is_empty()),
        service_account: spec
            .and_then(|s| s.service_account_name.clone().or_else(|| s.service_account.clone()))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".into()),
        named_ports: named.into_values().collect(),
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        key,
    })
}

/// Parses a CIDR the way the API server does (`ParseCIDRSloppy`): host bits
/// may be set and are cleared.
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let net: IpNet = s.trim().parse().map_err(|_| format!("{s:?} is not a valid CIDR"))?;
    Ok(net.trunc())
}

fn ip_block(b: &net::IPBlock, path: &str) -> Result<IpBlock, FieldError> {
    let cidr = parse_cidr(&b.cidr).map_err(|r| FieldError::new(format!("{path}.cidr"), r))?;
    let mut except = Vec::new();
    for (i, e) in b.except.iter().flatten().enumerate() {
        let field = format!("{path}.except[{i}]");
        let ex = parse_cidr(e).map_err(|r| FieldError::new(&field, r))?;
        let strict_subset = cidr.contains(&ex) && ex.prefix_len() > cidr.prefix_len();
        if !strict_subset {
            return Err(FieldError::new(field, format!("{ex} must be a strict subset of `cidr` {cidr}")));
        }
        if !except.contains(&ex) {
            except.push(ex);
        }
    }
    except.sort();
    Ok(IpBlock { cidr, except })
}

fn peer(p: &net::NetworkPolicyPeer, path: &str) -> Result<Peer, FieldError> {
    match (&p.pod_selector, &p.namespace_selector, &p.ip_block) {
        (None, None, None) => {
            Err(FieldError::new(path, "must specify a peer (podSelector, namespaceSelector or ipBlock)"))
        }
        (_, _, Some(_)) if p.pod_selector.is_some() || p.namespace_selector.is_some() => {
            Err(FieldError::new(path, "may not specify both ipBlock and another peer"))
        }
        (_, _, Some(b)) => Ok(Peer::IpBlock(ip_block(b, &format!("{path}.ipBlock"))?)),
        (pods, nss, None) => {
            let pods = match pods {
                Some(s) => Selector::from_k8s(s, &format!("{path}.podSelector"))?,
                None => Selector::everything(),
            };
            let namespaces = match nss {
                Some(s) => NamespaceSelection::Matching(Selector::from_k8s(s, &format!("{path}.namespaceSelector"))?),
                None => NamespaceSelection::Own,
            };
            Ok(Peer::Pods { namespaces, pods })
        }
    }
}

fn port_rule(p: &net::NetworkPolicyPort, path: &str) -> Result<PortRule, FieldError> {
    let protocol = protocol(p.protocol.as_deref(), &format!("{path}.protocol"))?;
    let port = match (&p.port, p.end_port) {
        (None, None) => PortMatch::Any,
        (None, Some(_)) => {
            return Err(FieldError::new(
                format!("{path}.endPort"),
                "may not be specified when `port` is not specified",
            ));
        }
        (Some(IntOrString::Int(n)), end) => {
            let start = port_number(*n, &format!("{path}.port"))?;
            let end = match end {
                None => start,
                Some(e) => {
                    let e = port_number(e, &format!("{path}.endPort"))?;
                    if e < start {
                        return Err(FieldError::new(
                            format!("{path}.endPort"),
                            format!("{e} must be greater than or equal to `port` {start}"),
                        ));
                    }
                    e
                }
            };
            PortMatch::Range { start, end }
        }
        (Some(IntOrString::String(s)), end) => {
            if end.is_some() {
                return Err(FieldError::new(
                    format!("{path}.endPort"),
                    "may not be specified when `port` is a named port",
                ));
            }
            validate_port_name(s).map_err(|r| FieldError::new(format!("{path}.port"), r))?;
            PortMatch::Named(s.clone())
        }
    };
    Ok(PortRule { protocol, port })
}

fn rule(
    peers: Option<&Vec<net::NetworkPolicyPeer>>,
    ports: Option<&Vec<net::NetworkPolicyPort>>,
    path: &str,
    peer_field: &str,
) -> Result<Rule, FieldError> {
    let peers = match peers {
        Some(list) if !list.is_empty() => Some(
            list.iter()
                .enumerate()
                .map(|(i, p)| peer(p, &format!("{path}.{peer_field}[{i}]")))
                .collect::<Result<Vec<_>, _>>()?,
        ),
        _ => None,
    };
    let ports = match ports {
        Some(list) if !list.is_empty() => Some(
            list.iter()
                .enumerate()
                .map(|(i, p)| port_rule(p, &format!("{path}.ports[{i}]")))
                .collect::<Result<Vec<_>, _>>()?,
        ),
        _ => None,
    };
    Ok(Rule { peers, ports })
}

/// Converts a NetworkPolicy, validating it and defaulting `policyTypes`
/// (`[Ingress]`, plus `Egress` when `spec.egress` is non-empty) and port
/// protocols (TCP).
pub fn network_policy(np: &net::NetworkPolicy) -> Result<NetworkPolicy, ObjectError> {
    let key = key_of(&np.metadata, "NetworkPolicy")?;
    let err = |e: FieldError| ObjectError::new("NetworkPolicy", NsName(Some(&key.namespace), &key.name).to_string(), e);
    let spec = np.spec.clone().unwrap_or_default();
    let pod_selector = match &spec.pod_selector {
        Some(s) => Selector::from_k8s(s, "spec.podSelector").map_err(err)?,
        None => Selector::everything(),
    };

    let (mut has_ingress, mut has_egress) = (false, false);
    match &spec.policy_types {
        Some(types) if !types.is_empty() => {
            if types.len() > 2 {
                return Err(err(FieldError::new("spec.policyTypes", "may not have more than 2 entries")));
            }
            for (i, t) in types.iter().enumerate() {
                match t.as_str() {
                    "Ingress" => has_ingress = true,
                    "Egress" => has_egress = true,
                    other => {
                        return Err(err(FieldError::new(
                            format!("spec.policyTypes[{i}]"),
                            format!("unsupported value {other:?}: must be Ingress or Egress"),
                        )));
                    }
                }
            }
        }
        _ => {
            has_ingress = true;
            has_egress = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
        }
    }

    // Rules are validated even for a direction the policy types leave out,
    // as the API server does, but only kept for the directions that apply.
    let ingress = spec
        .ingress
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, r)| rule(r.from.as_ref(), r.ports.as_ref(), &format!("spec.ingress[{i}]"), "from"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    let egress = spec
        .egress
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, r)| rule(r.to.as_ref(), r.ports.as_ref(), &format!("spec.egress[{i}]"), "to"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;

    Ok(NetworkPolicy {
        key,
        pod_selector,
        ingress: has_ingress.then_some(ingress),
        egress: has_egress.then_some(egress),
    })
}

#[cfg(test)]
mod tests;
