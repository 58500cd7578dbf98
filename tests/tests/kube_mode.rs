//! Kubernetes mode against the fake API server (`testbed::fakeapi`): the
//! gateway and the CA read the same objects through kube-rs watchers that
//! local mode reads from files, and behave the same; they survive dropped
//! watches, `410 Gone` (relist), slow responses and an outage (fail static);
//! the CA authenticates agents by TokenReview, keeps its state in a Secret
//! and publishes the trust bundle in a ConfigMap. No root needed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::fs;
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use testbed::cluster::{until, ztunnel_bin};
use testbed::fakeapi::{TokenIdentity, b64};
use testbed::gateway::{Pki, http_backend, service_yaml};
use testbed::kubetest::{ca_in_secret, csr, http_get, local_api, pod, sign, spawn};

fn tls_secret(ns: &str, name: &str, cert: &str, key: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns},
        "type": "kubernetes.io/tls", "data": {"tls.crt": b64(cert.as_bytes()), "tls.key": b64(key.as_bytes())}})
}

fn curl(ip: &str, ca: &Path, host: &str, path: &str) -> (String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "--cacert"])
        .arg(ca)
        .args(["--resolve", &format!("{host}:8443:{ip}"), "-w", "\n%{http_code}"])
        .arg(format!("https://{host}:8443{path}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.to_string(), body.to_string())
}

fn served_serial(ip: &str, ca: &Path, sni: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {ip}:8443 -servername {sni} -CAfile {} </dev/null 2>/dev/null | openssl x509 -noout -serial",
            ca.display()
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn gateway_follows_the_api_server_through_relists_drops_and_outages() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (api, kubeconfig) = local_api(root);
    let mut pki = Pki::new(&root.join("pki")).unwrap();
    let (c1, k1) = pki.issue(&["shop.example.com", "new.example.com"], 90).unwrap();
    http_backend(TcpListener::bind(("127.0.6.2", 8080)).unwrap(), "web");
    api.apply_yaml(&service_yaml("shop", "web", 80, 8080, &["127.0.6.2"])).unwrap();
    api.apply(tls_secret("shop", "shop-tls", &c1, &k1));
    // A Secret of another type is not even sent (field selector).
    api.apply(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "other", "namespace": "shop"}, "type": "Opaque", "data": {"x": "eA=="}}));
    api.apply_yaml(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: web, namespace: shop}\nspec:\n  ingressClassName: ztunnel\n  tls: [{hosts: [shop.example.com, new.example.com], secretName: shop-tls}]\n  rules:\n  - host: shop.example.com\n    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]}\n",
    )
    .unwrap();

    let log = root.join("gateway.log");
    let _gw = spawn(
        &[
            "gateway",
            "--kube",
            "--secret-namespace",
            "shop",
            "--https",
            "127.0.6.1:8443",
            "--no-http",
            "--admin",
            "127.0.6.1:15021",
            "--access-log",
            "off",
        ],
        &kubeconfig,
        &log,
    );
    let logs = || fs::read_to_string(&log).unwrap_or_default();
    assert!(
        until(Duration::from_secs(20), || http_get("127.0.6.1:15021", "/ready").contains("200 OK")),
        "gateway not ready:\n{}",
        logs()
    );
    let ca = pki.ca();
    let (code, body) = curl("127.0.6.1", &ca, "shop.example.com", "/hello");
    assert_eq!(code, "200", "{body}\n{}", logs());
    assert!(body.starts_with("web\npath=/hello"), "{body}");
    let first = served_serial("127.0.6.1", &ca, "shop.example.com");

    // A Secret update through the API: the next handshake has it.
    let (c2, k2) = pki.issue(&["shop.example.com", "new.example.com"], 90).unwrap();
    api.apply(tls_secret("shop", "shop-tls", &c2, &k2));
    assert!(until(Duration::from_secs(5), || served_serial("127.0.6.1", &ca, "shop.example.com") != first));

    // History compacted and watches dropped: the watchers relist, and
    // changes made meanwhile arrive.
    let lists = api.lists("services");
    api.compact();
    api.drop_watches();
    api.apply_yaml(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: new, namespace: shop}\nspec:\n  ingressClassName: ztunnel\n  rules:\n  - host: new.example.com\n    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]}\n",
    )
    .unwrap();
    assert!(
        until(Duration::from_secs(15), || curl("127.0.6.1", &ca, "new.example.com", "/").0 == "200"),
        "change after compaction not seen\n{}",
        logs()
    );
    // (Services saw no event after the compaction: they must have relisted.)
    assert!(
        until(Duration::from_secs(10), || api.lists("services") > lists),
        "the watcher relisted after 410 Gone / a dropped watch\n{}",
        logs()
    );

    // An invalid object is rejected by name; the last good routes stay.
    api.apply_yaml(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: new, namespace: shop}\nspec:\n  ingressClassName: ztunnel\n  rules:\n  - host: NEW.example.com\n    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]}\n",
    )
    .unwrap();
    assert!(until(Duration::from_secs(5), || logs().contains("Ingress shop/new")), "{}", logs());
    assert_eq!(curl("127.0.6.1", &ca, "new.example.com", "/").0, "200");
    // ... also through a relist, where the invalid object is all the list
    // has: it is not taken for a deletion.
    let lists = api.lists("ingresses");
    api.compact();
    api.drop_watches();
    assert!(until(Duration::from_secs(15), || api.lists("ingresses") > lists), "no relist");
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(curl("127.0.6.1", &ca, "new.example.com", "/").0, "200", "{}", logs());

    // Outage: the gateway keeps serving what it knows; slow responses and
    // the return of the API server bring changes again.
    api.set_down(true);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(curl("127.0.6.1", &ca, "shop.example.com", "/").0, "200", "fail static");
    api.set_delay(Duration::from_millis(300));
    api.set_down(false);
    api.delete("Ingress", "shop", "new");
    assert!(
        until(Duration::from_secs(30), || curl("127.0.6.1", &ca, "new.example.com", "/").0 == "404"),
        "deletion after the outage not seen\n{}",
        logs()
    );
}

#[test]
fn ca_authenticates_by_token_review_keeps_state_in_a_secret_and_publishes_the_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (api, kubeconfig) = local_api(root);

    // The operator creates the CA state and stores it in the Secret.
    let ca_dir = root.join("ca");
    ca_in_secret(&api, &ca_dir);
    api.apply(pod("shop", "web-1", "node-1", "web", "10.244.1.5"));
    api.apply(pod("shop", "db-1", "node-2", "db", "10.244.2.5"));
    let agent = |node: &str| TokenIdentity {
        username: "system:serviceaccount:ztunnel-system:ztunnel-agent".into(),
        node: Some(node.into()),
        audiences: vec!["ztunnel-ca".into()],
    };
    api.add_token("agent-node-1", agent("node-1"));
    api.add_token("agent-node-2", agent("node-2"));
    api.add_token(
        "app-token",
        TokenIdentity {
            username: "system:serviceaccount:shop:web".into(),
            node: Some("node-1".into()),
            audiences: vec!["ztunnel-ca".into()],
        },
    );
    api.add_token("wrong-audience", TokenIdentity { audiences: vec!["kubernetes".into()], ..agent("node-1") });
    api.add_token("unbound", TokenIdentity { node: None, ..agent("node-1") });

    let log = root.join("ca.log");
    let addr = "127.0.0.1:25012";
    let _ca = spawn(
        &["ca", "serve", "--kube", "--listen", addr, "--admin", "127.0.0.1:25022", "--poll-ms", "200"],
        &kubeconfig,
        &log,
    );
    let logs = || fs::read_to_string(&log).unwrap_or_default();
    assert!(
        until(Duration::from_secs(20), || http_get("127.0.0.1:25022", "/ready").contains("200")),
        "CA not ready\n{}",
        logs()
    );

    // The bundle ConfigMap holds the same roots as the operator's bundle.pem.
    let bundle_file = ca_dir.join("bundle.pem");
    let published = || {
        api.get("ConfigMap", "ztunnel-system", "ztunnel-trust-bundle")
            .and_then(|c| c["data"]["root-cert.pem"].as_str().map(str::to_string))
    };
    assert!(until(Duration::from_secs(10), || published().is_some()), "no bundle ConfigMap\n{}", logs());
    assert_eq!(published().unwrap().trim(), fs::read_to_string(&bundle_file).unwrap().trim());

    // Issuance for an identity on the caller's node; the chain verifies.
    let web = csr(root, "spiffe://cluster.local/ns/shop/sa/web");
    let (code, body) = sign(addr, &bundle_file, "agent-node-1", &web);
    assert_eq!(code, "200", "{body}\n{}", logs());
    let v: Value = serde_json::from_str(&body).unwrap();
    let chain: Vec<String> = v["chain"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_string()).collect();
    fs::write(root.join("leaf.pem"), &chain[0]).unwrap();
    fs::write(root.join("inter.pem"), chain[1..].concat()).unwrap();
    let verify = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(&bundle_file)
        .arg("-untrusted")
        .arg(root.join("inter.pem"))
        .arg(root.join("leaf.pem"))
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));

    // Denials: another node's identity, tokens that are not node agents',
    // the wrong audience, no node binding, unknown tokens.
    assert_eq!(sign(addr, &bundle_file, "agent-node-2", &web).0, "403");
    for bad in ["app-token", "wrong-audience", "unbound", "forged"] {
        let (code, body) = sign(addr, &bundle_file, bad, &web);
        assert_eq!(code, "401", "{bad}: {body}\n{}", logs());
    }
    assert!(logs().contains("not a node agent"), "{}", logs());
    let reviews = api.reviews();
    assert_eq!(sign(addr, &bundle_file, "agent-node-1", &web).0, "200");
    assert_eq!(api.reviews(), reviews, "a positive review is cached");

    // The pod index follows the API: the pod moves to node-2.
    api.apply(pod("shop", "web-1", "node-2", "web", "10.244.2.6"));
    assert!(until(Duration::from_secs(5), || sign(addr, &bundle_file, "agent-node-1", &web).0 == "403"));
    assert_eq!(sign(addr, &bundle_file, "agent-node-2", &web).0, "200");

    // Rotation through the CLI against the Secret: each step reads it and
    // writes it back under its resourceVersion; the servers pick it up and
    // the published bundle carries both roots once propagated.
    for step in ["prepare", "propagate"] {
        let out = Command::new(ztunnel_bin())
            .args(["ca", "rotate", step, "--kube"])
            .env("KUBECONFIG", &kubeconfig)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let status = Command::new(ztunnel_bin())
        .args(["ca", "status", "--kube", "-o", "json"])
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .unwrap();
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["stage"], "propagated", "{status}");
    assert!(
        until(Duration::from_secs(10), || published().is_some_and(|p| p.matches("BEGIN CERTIFICATE").count() == 2)),
        "bundle not updated after the rotation step\n{}",
        logs()
    );
    // `init --kube` refuses to overwrite the existing CA.
    let again =
        Command::new(ztunnel_bin()).args(["ca", "init", "--kube"]).env("KUBECONFIG", &kubeconfig).output().unwrap();
    assert_eq!(again.status.code(), Some(1), "{}", String::from_utf8_lossy(&again.stderr));

    // API outage: TokenReview cannot be made; callers get 503, not a grant
    // and not a permanent refusal; a cached review still works.
    api.set_down(true);
    let (code, _) = sign(addr, &bundle_file, "agent-node-2-uncached", &web);
    assert!(code == "503" || code == "401", "{code}\n{}", logs());
    api.add_token("agent-node-2-new", agent("node-2"));
    let (code, body) = sign(addr, &bundle_file, "agent-node-2-new", &web);
    assert_eq!(code, "503", "{body}");
    assert_eq!(sign(addr, &bundle_file, "agent-node-2", &web).0, "200", "cached review during the outage");
    api.set_down(false);
    assert_eq!(sign(addr, &bundle_file, "agent-node-2-new", &web).0, "200");
}
