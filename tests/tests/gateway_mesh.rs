//! The ingress gateway as a pod in the mesh: a client outside the cluster
//! reaches a backend pod on another node through the gateway. The gateway
//! terminates the client's TLS; its request to the backend is pod traffic,
//! so the node agents carry it in an mTLS tunnel under the gateway's own
//! identity (the node-to-node link never shows the payload), the backend
//! sees the gateway pod's address, and NetworkPolicy at the backend decides
//! whether the gateway may reach it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::fs;
use std::net::{Ipv4Addr, TcpListener};
use std::process::Command;
use std::time::Duration;

use testbed::cluster::{
    LinkCapture, Proc, admin_get, ca_init, ca_serve_args, example_manifests, mesh_agent_args, spawn_args, until,
};
use testbed::gateway::{Pki, http_backend, service_yaml, tls_secret_yaml};
use testbed::{Testbed, require_root};

const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 50);
const WEB_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 11);
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 50);
const MARKER: &str = "ZT-GATEWAY-PLAINTEXT-MARKER-7d2a";

fn gateway_pod() -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: ingress, labels: {{name: ingress}}}}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {{name: gateway, namespace: ingress, labels: {{app: ztunnel-gateway}}}}\n\
         spec: {{nodeName: node-1, serviceAccountName: ztunnel-gateway, containers: [{{name: gateway, image: ztunnel}}]}}\n\
         status: {{phase: Running, podIP: {GATEWAY_IP}, podIPs: [{{ip: {GATEWAY_IP}}}]}}\n"
    )
}

fn web_policy(from_namespace: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: web-from-ingress, namespace: default}}\n\
         spec:\n  podSelector: {{matchLabels: {{role: web}}}}\n  ingress:\n  - from:\n    - namespaceSelector: {{matchLabels: {{name: {from_namespace}}}}}\n"
    )
}

#[test]
fn ingress_traffic_enters_the_mesh_with_the_gateway_identity() {
    if !require_root("ingress_traffic_enters_the_mesh_with_the_gateway_identity") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let manifests = example_manifests(root).unwrap();
    let mut pki = Pki::new(&root.join("pki")).unwrap();
    let (cert, key) = pki.issue(&["shop.example.com"], 90).unwrap();
    fs::write(manifests.join("gateway-pod.yaml"), gateway_pod()).unwrap();
    fs::write(manifests.join("web-policy.yaml"), web_policy("ingress")).unwrap();
    fs::write(manifests.join("web-service.yaml"), service_yaml("default", "web", 80, 80, &[&WEB_IP.to_string()]))
        .unwrap();
    fs::write(manifests.join("web-tls.yaml"), tls_secret_yaml("default", "shop-tls", &cert, &key)).unwrap();
    fs::write(
        manifests.join("web-ingress.yaml"),
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: shop, namespace: default}\nspec:\n  ingressClassName: ztunnel\n  tls: [{hosts: [shop.example.com], secretName: shop-tls}]\n  rules:\n  - host: shop.example.com\n    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]}\n",
    )
    .unwrap();

    let nodes = ["node-1", "node-2"];
    let mut tb = Testbed::with_prefix("ztgw", &nodes).unwrap();
    tb.add_pod("ingress/gateway", 0, GATEWAY_IP).unwrap();
    tb.add_pod("default/web", 1, WEB_IP).unwrap();
    tb.add_external(CLIENT_IP).unwrap();
    let web_ns = tb.pod("default/web").unwrap().ns.name().to_string();
    let gw_ns = tb.pod("ingress/gateway").unwrap().ns.name().to_string();
    let client_ns = tb.external.as_ref().unwrap().ns.name().to_string();
    let listener = tb.pod("default/web").unwrap().ns.run(|| TcpListener::bind(("0.0.0.0", 80))).unwrap().unwrap();
    http_backend(listener, "web");
    let ns: Vec<String> = tb.nodes.iter().map(|n| n.ns.name().to_string()).collect();

    let ca_dir = root.join("ca");
    ca_init(&ca_dir, &[]).unwrap();
    let (d, m) = (ca_dir.to_str().unwrap(), manifests.to_str().unwrap());
    let _ca = spawn_args(&ns[0], &ca_serve_args(d, m), &root.join("ca.log")).unwrap();
    let _agents: Vec<Proc> = (0..2)
        .map(|i| {
            let flows = root.join(format!("{}.flows.jsonl", nodes[i]));
            let args = mesh_agent_args(m, nodes[i], i, d, None, flows.to_str().unwrap());
            spawn_args(&ns[i], &args, &root.join(format!("{}.log", nodes[i]))).unwrap()
        })
        .collect();
    let gw_args: Vec<String> = ["gateway", "--local", m, "--poll-ms", "100"].iter().map(|s| s.to_string()).collect();
    let _gateway = spawn_args(&gw_ns, &gw_args, &root.join("gateway.log")).unwrap();
    let logs = || -> String {
        ["node-1.log", "node-2.log", "gateway.log", "ca.log"]
            .iter()
            .map(|f| format!("--- {f}\n{}", fs::read_to_string(root.join(f)).unwrap_or_default()))
            .collect()
    };
    let ready = until(Duration::from_secs(30), || {
        admin_get(&ns[0], 15021, "/config_dump").contains("spiffe://cluster.local/ns/ingress/sa/ztunnel-gateway")
            && admin_get(&ns[1], 15021, "/config_dump").contains("spiffe://cluster.local/ns/default/sa/web")
            && admin_get(&gw_ns, 15021, "/ready").contains("200 OK")
    });
    assert!(ready, "agents or gateway not ready\n{}", logs());

    let curl = |path: &str| -> (String, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &client_ns, "curl", "-sS", "--max-time", "10", "--cacert"])
            .arg(pki.ca())
            .args(["--resolve", &format!("shop.example.com:443:{GATEWAY_IP}"), "-w", "\n%{http_code}"])
            .arg(format!("https://shop.example.com{path}"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (format!("{code}{}", String::from_utf8_lossy(&out.stderr).trim()), body.to_string())
    };

    // Through the gateway, across the link inside the mesh's TLS.
    let pcap = root.join("link.pcap");
    let capture = LinkCapture::start(&ns[0], "zt-link0", &pcap).unwrap();
    let (code, body) = curl(&format!("/{MARKER}"));
    let (captured, summary) = capture.stop().unwrap();
    assert_eq!(code, "200", "{body}\n{}", logs());
    assert!(body.starts_with("web\n"), "{body}");
    assert!(body.contains(&format!("peer={GATEWAY_IP}")), "the backend sees the gateway pod: {body}");
    assert!(body.contains(&format!("x-forwarded-for={CLIENT_IP}")), "{body}");
    assert!(!captured.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()), "request crossed the link in plaintext");
    assert!(summary.contains(".15008"), "through HBONE:\n{summary}");
    let inbound = admin_get(&ns[1], 15021, "/metrics");
    assert!(
        inbound.contains("source_identity=\"spiffe://cluster.local/ns/ingress/sa/ztunnel-gateway\""),
        "the backend's node saw the gateway identity:\n{inbound}"
    );

    // NetworkPolicy at the backend decides: only namespace `other` may
    // reach it now, so the gateway cannot (and says so), then may again.
    fs::write(manifests.join("web-policy.yaml"), web_policy("other")).unwrap();
    let denied = until(Duration::from_secs(5), || matches!(curl("/denied").0.as_str(), "502" | "503"));
    assert!(denied, "the gateway still reached the backend after the policy change\n{}", logs());
    // Refused at the backend's node: by its proxy's policy check, or by the
    // datapath at the pod's veth (which also cuts the gateway's pooled,
    // now revoked, connection) if the maps changed first.
    let m = admin_get(&ns[1], 15021, "/metrics");
    assert!(
        m.contains("ztunnel_tunnel_failures_total{reason=\"policy\"}")
            || m.contains("ztunnel_flows_total{direction=\"ingress\",verdict=\"denied\""),
        "{m}"
    );
    fs::write(manifests.join("web-policy.yaml"), web_policy("ingress")).unwrap();
    assert!(until(Duration::from_secs(5), || curl("/again").0 == "200"), "{}", logs());
    let _ = web_ns;
}
