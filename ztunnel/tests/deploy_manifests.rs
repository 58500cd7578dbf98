//! The Kubernetes manifests of `deploy/kubernetes` parse into `k8s-openapi`
//! types and are consistent with each other and with the binary: service
//! accounts, roles and bindings, selectors and labels, named ports, volumes,
//! the ConfigMap the CA publishes and the agent mounts, RBAC without
//! wildcards, and container arguments the real CLI accepts.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Namespace, PodTemplateSpec, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::IngressClass;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use policy::manifest::split_documents;

#[derive(Default)]
struct Objects {
    namespaces: Vec<Namespace>,
    accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    cluster_bindings: Vec<ClusterRoleBinding>,
    roles: Vec<Role>,
    bindings: Vec<RoleBinding>,
    /// (kind/name, namespace, template, selector labels)
    workloads: Vec<(String, String, PodTemplateSpec, BTreeMap<String, String>)>,
    services: Vec<Service>,
    classes: Vec<IngressClass>,
}

fn load() -> Objects {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes");
    let mut o = Objects::default();
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let mut listed = BTreeSet::new();
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(f).unwrap();
        let (docs, errors) = split_documents(&name, &text);
        assert!(errors.is_empty(), "{errors:?}");
        for raw in docs {
            let what = format!("{name}: {} {}", raw.kind, raw.display_name);
            match raw.kind.as_str() {
                "Kustomization" => {
                    for r in raw.value.get("resources").and_then(|r| r.as_sequence()).unwrap() {
                        listed.insert(r.as_str().unwrap().to_string());
                    }
                }
                "Namespace" => o.namespaces.push(must(raw.decode(&name), &what)),
                "ServiceAccount" => o.accounts.push(must(raw.decode(&name), &what)),
                "ClusterRole" => o.cluster_roles.push(must(raw.decode(&name), &what)),
                "ClusterRoleBinding" => o.cluster_bindings.push(must(raw.decode(&name), &what)),
                "Role" => o.roles.push(must(raw.decode(&name), &what)),
                "RoleBinding" => o.bindings.push(must(raw.decode(&name), &what)),
                "Service" => o.services.push(must(raw.decode(&name), &what)),
                "IngressClass" => o.classes.push(must(raw.decode(&name), &what)),
                "Deployment" => {
                    let d: Deployment = must(raw.decode(&name), &what);
                    let spec = d.spec.unwrap();
                    o.workloads.push((
                        format!("Deployment/{}", d.metadata.name.unwrap()),
                        d.metadata.namespace.unwrap(),
                        spec.template,
                        spec.selector.match_labels.unwrap(),
                    ));
                }
                "DaemonSet" => {
                    let d: DaemonSet = must(raw.decode(&name), &what);
                    let spec = d.spec.unwrap();
                    o.workloads.push((
                        format!("DaemonSet/{}", d.metadata.name.unwrap()),
                        d.metadata.namespace.unwrap(),
                        spec.template,
                        spec.selector.match_labels.unwrap(),
                    ));
                }
                other => panic!("{what}: unexpected kind {other}"),
            }
        }
    }
    let yaml: BTreeSet<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().to_string())
        .filter(|n| n != "kustomization.yaml")
        .collect();
    assert_eq!(listed, yaml, "kustomization.yaml lists every manifest");
    o
}

fn must<T>(r: Result<T, policy::ManifestError>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn account_exists(o: &Objects, ns: &str, name: &str) -> bool {
    o.accounts.iter().any(|a| a.metadata.name.as_deref() == Some(name) && a.metadata.namespace.as_deref() == Some(ns))
}

#[test]
fn references_are_consistent() {
    let o = load();
    let ns: BTreeSet<String> = o.namespaces.iter().map(|n| n.metadata.name.clone().unwrap()).collect();
    assert!(ns.contains("ztunnel-system"));
    for a in &o.accounts {
        assert!(ns.contains(a.metadata.namespace.as_deref().unwrap()), "ServiceAccount in a declared namespace");
    }

    // Bindings name roles that exist and service accounts that exist.
    for b in &o.cluster_bindings {
        assert!(
            o.cluster_roles.iter().any(|r| r.metadata.name.as_deref() == Some(&b.role_ref.name)),
            "ClusterRoleBinding {:?} names a missing ClusterRole",
            b.metadata.name
        );
        for s in b.subjects.iter().flatten() {
            assert!(account_exists(&o, s.namespace.as_deref().unwrap(), &s.name), "missing subject {s:?}");
        }
    }
    for b in &o.bindings {
        let ns = b.metadata.namespace.as_deref().unwrap();
        let found = match b.role_ref.kind.as_str() {
            "Role" => o.roles.iter().any(|r| {
                r.metadata.name.as_deref() == Some(&b.role_ref.name) && r.metadata.namespace.as_deref() == Some(ns)
            }),
            _ => o.cluster_roles.iter().any(|r| r.metadata.name.as_deref() == Some(&b.role_ref.name)),
        };
        assert!(found, "RoleBinding {ns}/{:?} names a missing role", b.metadata.name);
        for s in b.subjects.iter().flatten() {
            assert!(account_exists(&o, s.namespace.as_deref().unwrap(), &s.name), "missing subject {s:?}");
        }
    }

    // Workloads: service account, selector ⊆ labels, probes on named ports,
    // mounts of declared volumes.
    let mut sa_of = BTreeMap::new();
    for (name, ns, template, selector) in &o.workloads {
        let spec = template.spec.as_ref().unwrap();
        let sa = spec.service_account_name.clone().unwrap();
        assert!(account_exists(&o, ns, &sa), "{name}: ServiceAccount {sa}");
        sa_of.insert(name.clone(), sa);
        let labels = template.metadata.as_ref().unwrap().labels.clone().unwrap();
        for (k, v) in selector {
            assert_eq!(labels.get(k), Some(v), "{name}: selector {k}={v} matches its template");
        }
        let volumes: BTreeSet<String> = spec.volumes.iter().flatten().map(|v| v.name.clone()).collect();
        for c in &spec.containers {
            let ports: BTreeSet<String> = c.ports.iter().flatten().filter_map(|p| p.name.clone()).collect();
            for probe in [&c.readiness_probe, &c.liveness_probe] {
                let probe = probe.as_ref().unwrap_or_else(|| panic!("{name}: readiness and liveness probes"));
                match &probe.http_get.as_ref().unwrap().port {
                    IntOrString::String(p) => assert!(ports.contains(p), "{name}: probe port {p}"),
                    IntOrString::Int(p) => panic!("{name}: probe on a port number {p}; name it"),
                }
            }
            for m in c.volume_mounts.iter().flatten() {
                assert!(volumes.contains(&m.name), "{name}: mount of undeclared volume {}", m.name);
            }
            let res = c.resources.as_ref().unwrap_or_else(|| panic!("{name}: resources"));
            assert!(res.requests.is_some() && res.limits.is_some(), "{name}: requests and limits");
            let sc = c.security_context.as_ref().unwrap();
            assert_ne!(sc.privileged, Some(true), "{name}: no blanket privileged");
            assert_eq!(sc.allow_privilege_escalation, Some(false), "{name}");
        }
    }

    // Services select a workload and target its named ports.
    for s in &o.services {
        let spec = s.spec.as_ref().unwrap();
        let selector = spec.selector.clone().unwrap();
        let target = o
            .workloads
            .iter()
            .find(|(_, ns, t, _)| {
                Some(ns) == s.metadata.namespace.as_ref()
                    && selector
                        .iter()
                        .all(|(k, v)| t.metadata.as_ref().unwrap().labels.as_ref().unwrap().get(k) == Some(v))
            })
            .unwrap_or_else(|| panic!("Service {:?} selects no workload", s.metadata.name));
        let ports: BTreeSet<String> = target
            .2
            .spec
            .as_ref()
            .unwrap()
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten().filter_map(|p| p.name.clone()))
            .collect();
        for p in spec.ports.iter().flatten() {
            match &p.target_port {
                Some(IntOrString::String(name)) => {
                    assert!(ports.contains(name), "{:?}: targetPort {name}", s.metadata.name)
                }
                other => panic!("{:?}: targetPort should name a container port, is {other:?}", s.metadata.name),
            }
        }
    }

    // The agent mounts the trust bundle ConfigMap the CA publishes, and
    // presents a token with the audience the CA checks.
    let args = |kind: &str| -> Vec<String> {
        let (_, _, t, _) = o.workloads.iter().find(|(n, ..)| n.starts_with(kind)).unwrap();
        t.spec.as_ref().unwrap().containers[0].args.clone().unwrap()
    };
    let flag = |args: &[String], f: &str| -> String {
        args.iter()
            .find_map(|a| a.strip_prefix(&format!("--{f}=")))
            .unwrap_or_else(|| panic!("--{f} in {args:?}"))
            .to_string()
    };
    let ca = args("Deployment/ztunnel-ca");
    let (_, _, agent, _) = o.workloads.iter().find(|(n, ..)| n == "DaemonSet/ztunnel-agent").unwrap();
    let agent_spec = agent.spec.as_ref().unwrap();
    let bundle_cm = agent_spec.volumes.iter().flatten().find_map(|v| v.config_map.as_ref()).unwrap();
    assert_eq!(bundle_cm.name, flag(&ca, "bundle-configmap"));
    let token = agent_spec.volumes.iter().flatten().find_map(|v| v.projected.as_ref()).unwrap();
    let sat = token.sources.iter().flatten().find_map(|s| s.service_account_token.as_ref()).unwrap();
    assert_eq!(sat.audience.as_deref(), Some(flag(&ca, "token-audience").as_str()));
    assert_eq!(flag(&ca, "agent-service-account"), format!("ztunnel-system/{}", sa_of["DaemonSet/ztunnel-agent"]));
    assert_eq!(agent_spec.host_network, Some(true));

    // The IngressClass names the gateway's controller.
    assert!(
        o.classes
            .iter()
            .any(|c| c.spec.as_ref().and_then(|s| s.controller.as_deref()) == Some("ztunnel.dev/ingress-gateway"))
    );
}

#[test]
fn rbac_has_no_wildcards_and_only_the_ca_and_gateway_read_secrets() {
    let o = load();
    let mut rules: Vec<(String, &PolicyRule)> = Vec::new();
    for r in &o.cluster_roles {
        rules.extend(r.rules.iter().flatten().map(|x| (r.metadata.name.clone().unwrap(), x)));
    }
    for r in &o.roles {
        rules.extend(r.rules.iter().flatten().map(|x| (r.metadata.name.clone().unwrap(), x)));
    }
    for (role, rule) in rules {
        let all = rule.verbs.iter().chain(rule.resources.iter().flatten()).chain(rule.api_groups.iter().flatten());
        assert!(all.clone().all(|v| v != "*"), "{role}: wildcard in {rule:?}");
        let writes = rule.verbs.iter().any(|v| matches!(v.as_str(), "create" | "update" | "patch" | "delete"));
        let secrets = rule.resources.iter().flatten().any(|r| r == "secrets");
        if secrets {
            assert!(role == "ztunnel-ca" || role == "ztunnel-gateway-tls-secrets", "{role} reads secrets");
            if role == "ztunnel-ca" {
                assert!(rule.resource_names.is_some(), "the CA reads its own Secret by name only");
            }
        }
        if writes {
            assert_eq!(role, "ztunnel-ca", "{role} writes {rule:?}");
        }
    }
}

#[test]
fn only_the_ca_can_read_the_ca_secret() {
    let o = load();
    // Secret access for anyone else comes only from namespace RoleBindings
    // outside ztunnel-system, matching the gateway's --secret-namespace.
    for b in &o.cluster_bindings {
        assert_ne!(b.role_ref.name, "ztunnel-gateway-tls-secrets", "TLS Secret access must be per namespace");
    }
    let granted: BTreeSet<String> = o
        .bindings
        .iter()
        .filter(|b| b.role_ref.name == "ztunnel-gateway-tls-secrets")
        .map(|b| b.metadata.namespace.clone().unwrap())
        .collect();
    assert!(!granted.contains("ztunnel-system"), "the gateway could read the CA's Secret");
    let (_, _, gw, _) = o.workloads.iter().find(|(n, ..)| n == "Deployment/ztunnel-gateway").unwrap();
    let args = gw.spec.as_ref().unwrap().containers[0].args.clone().unwrap();
    let wanted: BTreeSet<String> = args
        .iter()
        .filter_map(|a| a.strip_prefix("--secret-namespace="))
        .flat_map(|v| v.split(',').map(str::to_string))
        .collect();
    assert!(!wanted.is_empty(), "the gateway must be told which namespaces it may read Secrets in");
    assert_eq!(wanted, granted, "--secret-namespace and the RoleBindings agree");
}

#[test]
fn container_arguments_are_accepted_by_the_binary() {
    let o = load();
    for (name, _, t, _) in &o.workloads {
        for c in &t.spec.as_ref().unwrap().containers {
            let args = c.args.clone().unwrap();
            // clap stops at the first invalid argument; `--help` at the end
            // is reached only if every argument before it parsed.
            let out = Command::new(env!("CARGO_BIN_EXE_ztunnel")).args(&args).arg("--help").output().unwrap();
            assert!(
                out.status.success(),
                "{name}: `ztunnel {}` rejected: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
