//! `ztunnel ca ...` as an operator runs it: init, a running `ca serve`
//! reading the example manifests, authorisation by node, every rotation step
//! through the CLI while a client keeps issuing and verifying, import of
//! operator material, exit codes and JSON output.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ca_server::{CaClient, ClientError};
use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};

fn ztunnel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ztunnel")).args(args).env("NO_COLOR", "1").output().expect("run ztunnel")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn workload() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/workload")
}

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn csr(id: &str) -> String {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.subject_alt_names = vec![SanType::URI(id.to_string().try_into().unwrap())];
    p.serialize_request(&key).unwrap().pem().unwrap()
}

fn verify(chain: &[String], bundle_pem: &str) -> Result<(), String> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(bundle_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap();
    let certs: Vec<CertificateDer<'static>> =
        chain.iter().map(|p| CertificateDer::from_pem_slice(p.as_bytes()).unwrap()).collect();
    v.verify_client_cert(&certs[0], &certs[1..], UnixTime::now()).map(|_| ()).map_err(|e| e.to_string())
}

const DB: &str = "spiffe://cluster.local/ns/default/sa/db";

fn start_serve(dir: &Path, port: u16, admin: u16) -> Serve {
    let child = Command::new(env!("CARGO_BIN_EXE_ztunnel"))
        .args(["ca", "serve", "--dir", dir.to_str().unwrap(), "--local", workload().to_str().unwrap()])
        .args(["--listen", &format!("127.0.0.1:{port}"), "--admin", &format!("127.0.0.1:{admin}"), "--poll-ms", "100"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "ca serve did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Serve(child)
}

#[test]
fn rotation_through_the_cli_under_continuous_issuance() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    let d = dir.to_str().unwrap();
    let out = ztunnel(&[
        "ca",
        "init",
        "--dir",
        d,
        "--node",
        "node-1",
        "--node",
        "node-2",
        "--min-propagation-secs",
        "1",
        "--max-ttl-secs",
        "2",
        "--default-ttl-secs",
        "2",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    // A second init refuses and changes nothing.
    assert_eq!(ztunnel(&["ca", "init", "--dir", d]).status.code(), Some(1));

    let (port, admin) = (free_port(), free_port());
    let _serve = start_serve(&dir, port, admin);
    let bundle = std::fs::read_to_string(dir.join("bundle.pem")).unwrap();
    let token = |n: &str| std::fs::read_to_string(dir.join("tokens").join(n)).unwrap().trim().to_string();
    let addr = format!("127.0.0.1:{port}");

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    // Authorisation from the manifests: default/db runs on node-1 only.
    rt.block_on(async {
        let n2 = CaClient::new(&addr, "localhost", &bundle, Some(token("node-2"))).unwrap();
        match n2.sign(&csr(DB), None).await {
            Err(ClientError::Refused { status: 403, body }) => assert!(body.error.contains("node-2"), "{body:?}"),
            other => panic!("{other:?}"),
        }
    });

    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let (stop, addr, bundle, tok) = (stop.clone(), addr.clone(), bundle.clone(), token("node-1"));
        rt.spawn(async move {
            let c = CaClient::new(&addr, "localhost", &bundle, Some(tok)).unwrap();
            let mut current = c.bundle(None, None).await.unwrap().unwrap();
            let (mut n, mut signers) = (0usize, std::collections::BTreeSet::new());
            while !stop.load(Ordering::Relaxed) {
                if let Some(b) = c.bundle(Some(current.version), None).await.unwrap() {
                    current = b;
                }
                let r = c.sign(&csr(DB), None).await.expect("issuance never fails during the rotation");
                verify(&r.chain, &current.pem()).expect("chain verifies against the bundle the client holds");
                signers.insert(r.bundle.signer);
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (n, signers)
        })
    };

    let step = |s: &str| {
        std::thread::sleep(Duration::from_millis(400));
        let out = ztunnel(&["ca", "rotate", s, "--dir", d, "-o", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        (out.status.code(), v)
    };
    // Out of order: refused with exit code 1.
    let (code, v) = step("switch");
    assert_eq!(code, Some(1));
    assert_eq!(v["outcome"], "refused");
    assert_eq!(step("prepare").0, Some(0));
    let (code, v) = step("prepare");
    assert_eq!((code, v["outcome"].as_str()), (Some(0), Some("unchanged")));
    assert_eq!(step("propagate").0, Some(0));
    std::thread::sleep(Duration::from_millis(800));
    let (code, v) = step("switch");
    assert_eq!(code, Some(0), "{v}");
    // Retire waits for leaves of the old root to expire (max TTL 2 s).
    let (code, v) = step("retire");
    assert_eq!(code, Some(1), "{v}");
    assert!(v["message"].as_str().unwrap().contains("may be valid until"), "{v}");
    std::thread::sleep(Duration::from_millis(2000));
    let (code, v) = step("retire");
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["status"]["stage"], "stable");
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let (n, signers) = rt.block_on(worker).unwrap();
    assert!(n > 10, "only {n} issuances");
    assert_eq!(signers.len(), 2, "{signers:?}");

    let out = ztunnel(&["ca", "status", "--dir", d, "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["bundle"].as_array().unwrap().len(), 1);
    assert!(!text(&out).contains("PRIVATE KEY"));
    let out = ztunnel(&["ca", "status", "--dir", d]);
    assert!(text(&out).contains("stage          stable"), "{}", text(&out));
}

#[test]
fn import_operator_material_in_the_usual_layouts() {
    let tmp = tempfile::tempdir().unwrap();
    // Make an "external" CA with the CLI itself, then lay it out as
    // cert-manager does.
    let ext = tmp.path().join("ext");
    assert!(ztunnel(&["ca", "init", "--dir", ext.to_str().unwrap()]).status.success());
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ext.join("state.json")).unwrap()).unwrap();
    let a = &state["active"];
    let layout = tmp.path().join("cm");
    std::fs::create_dir_all(&layout).unwrap();
    std::fs::write(layout.join("ca.crt"), a["root_pem"].as_str().unwrap()).unwrap();
    std::fs::write(layout.join("tls.crt"), a["intermediate_pem"].as_str().unwrap()).unwrap();
    std::fs::write(layout.join("tls.key"), a["intermediate_key"].as_str().unwrap()).unwrap();

    // Import into a new directory: initialises from it.
    let fresh = tmp.path().join("fresh");
    let out = ztunnel(&["ca", "import", "--dir", fresh.to_str().unwrap(), "--from", layout.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let out = ztunnel(&["ca", "status", "--dir", fresh.to_str().unwrap()]);
    assert!(text(&out).contains("root key      not held"), "{}", text(&out));

    // Import into an existing CA: prepares a rotation to it.
    let existing = tmp.path().join("existing");
    assert!(ztunnel(&["ca", "init", "--dir", existing.to_str().unwrap()]).status.success());
    let out = ztunnel(&["ca", "import", "--dir", existing.to_str().unwrap(), "--from", layout.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let out = ztunnel(&["ca", "status", "--dir", existing.to_str().unwrap(), "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["stage"], "prepared");

    // Mismatched key: a clear error, exit 2, nothing changed.
    std::fs::write(layout.join("tls.key"), a["root_key"].as_str().unwrap()).unwrap();
    let out = ztunnel(&[
        "ca",
        "import",
        "--dir",
        tmp.path().join("bad").to_str().unwrap(),
        "--from",
        layout.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("does not match"), "{}", text(&out));
    assert!(!tmp.path().join("bad").join("state.json").exists());
}
