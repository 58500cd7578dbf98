//! The Ingress TLS gateway against real clients (`curl`, `openssl
//! s_client`, `testssl`) on loopback: routing by host and path, proxy
//! headers, certificate selection by SNI, redirects, failover between
//! endpoints, Secret rotation under load, bad Secrets, slow or hostile
//! clients. WebSockets, gRPC and the PROXY protocol are in
//! `gateway_protocols.rs`. No root needed: the gateway and backends use
//! 127.0.0.0/8 addresses, a different /24 per test so the tests can run in
//! parallel.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

mod gateway_support;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gateway_support::{Gateway, backend, ingress, setup};
use testbed::cluster::until;
use testbed::gateway::{service_yaml, tls_secret_yaml, write_atomic};

#[test]
fn routes_headers_certificates_and_redirects() {
    let (dir, mut pki) = setup(1);
    let m = dir.path().join("manifests");
    for (i, name) in ["api", "web", "wild", "dflt"].iter().enumerate() {
        backend(&format!("127.0.1.{}", i + 2), name);
        fs::write(
            m.join(format!("svc-{name}.yaml")),
            service_yaml("shop", name, 80, 8080, &[&format!("127.0.1.{}", i + 2)]),
        )
        .unwrap();
    }
    let (cert, key) = pki.issue(&["shop.example.com", "*.apps.example.com"], 90).unwrap();
    fs::write(m.join("secret.yaml"), tls_secret_yaml("shop", "shop-tls", &cert, &key)).unwrap();
    fs::write(
        m.join("ingress.yaml"),
        ingress(
            "shop",
            "  defaultBackend: {service: {name: dflt, port: {number: 80}}}
  tls:
  - {hosts: [shop.example.com, '*.apps.example.com'], secretName: shop-tls}
  rules:
  - host: shop.example.com
    http:
      paths:
      - {path: /api, pathType: Prefix, backend: {service: {name: api, port: {number: 80}}}}
      - {path: /exact, pathType: Exact, backend: {service: {name: api, port: {name: http}}}}
      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}
  - host: '*.apps.example.com'
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: wild, port: {number: 80}}}}
",
        ),
    )
    .unwrap();
    let g = Gateway::start(1, dir.path(), &[]);

    // Routing, both HTTP versions, proxy headers.
    for version in ["--http1.1", "--http2"] {
        let want_version = if version == "--http2" { "200 2" } else { "200 1.1" };
        let (status, body) = g.curl("shop.example.com", "/api/v1?x=1", &[version]);
        assert_eq!(status, want_version, "{body}\n{}", g.logs());
        assert!(body.starts_with("api\npath=/api/v1?x=1\n"), "{body}");
        assert!(body.contains("x-forwarded-proto=https"), "{body}");
        assert!(body.contains("x-forwarded-for=127.0.0.1"), "{body}");
        assert!(body.contains("x-forwarded-host=shop.example.com:8443"), "{body}");
        assert!(body.contains("host=shop.example.com:8443"), "{body}");
    }
    let cases = [
        ("shop.example.com", "/apix", "web"), // Prefix is element-wise
        ("shop.example.com", "/exact", "api"),
        ("shop.example.com", "/exact/", "web"), // Exact means exact
        ("shop.example.com", "/", "web"),
        ("a.apps.example.com", "/anything", "wild"),
        ("b.a.apps.example.com", "/", "dflt"), // a wildcard covers one label
        ("other.example.org", "/", "dflt"),
    ];
    for (host, path, want) in cases {
        let (status, body) = g.curl(host, path, &["-k"]);
        assert!(status.starts_with("200"), "{host}{path}: {status}");
        assert!(body.starts_with(&format!("{want}\n")), "{host}{path} went to {body}");
    }

    // Certificates by SNI, ALPN, protocol floor, AEAD-only suites.
    let h2 = g.s_client(&["-servername", "shop.example.com", "-alpn", "h2,http/1.1"]);
    assert!(h2.contains("ALPN protocol: h2"), "{h2}");
    assert!(h2.contains("CN = shop.example.com"), "{h2}");
    assert!(h2.contains("Verify return code: 0 (ok)"), "{h2}");
    let h1 = g.s_client(&["-servername", "x.apps.example.com", "-alpn", "http/1.1"]);
    assert!(h1.contains("ALPN protocol: http/1.1"), "{h1}");
    assert!(h1.contains("Verify return code: 0 (ok)"), "wildcard Secret host: {h1}");
    for args in [&["-servername", "unknown.example.org"][..], &["-noservername"][..]] {
        let d = g.s_client(args);
        assert!(d.contains("ztunnel gateway default certificate"), "{args:?}: {d}");
    }
    let handshook = |out: &str| out.contains("New, TLSv1") && !out.contains("Cipher is (NONE)");
    assert!(handshook(&h2), "{h2}");
    let old = g.s_client(&["-servername", "shop.example.com", "-tls1_1"]);
    assert!(!handshook(&old), "TLS 1.1 accepted: {old}");
    let cbc = g.s_client(&["-servername", "shop.example.com", "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA256"]);
    assert!(!handshook(&cbc), "a CBC suite was accepted: {cbc}");
    let tls12 = g.s_client(&["-servername", "shop.example.com", "-tls1_2"]);
    assert!(tls12.contains("Protocol  : TLSv1.2") && tls12.contains("GCM"), "{tls12}");

    // Port 80: TLS hosts redirect, others are served.
    let (status, _) = g.curl("shop.example.com", "http://shop.example.com:8080/api?q=1", &["-D", "-"]);
    assert!(status.starts_with("308"), "{status}");
    let (_, headers) = g.curl("shop.example.com", "http://shop.example.com:8080/api?q=1", &["-i"]);
    assert!(headers.to_ascii_lowercase().contains("location: https://shop.example.com:8443/api?q=1"), "{headers}");
    let (status, body) = g.curl("plain.example.org", "http://plain.example.org:8080/p", &[]);
    assert!(status.starts_with("200") && body.starts_with("dflt\n"), "{status} {body}");
    assert!(body.contains("x-forwarded-proto=http\n"), "{body}");

    // Oversized headers: 431, the gateway lives on.
    let big = format!("X-Big: {}", "a".repeat(40_000));
    let (status, _) = g.curl("shop.example.com", "/", &["--http1.1", "-H", &big]);
    assert!(status.starts_with("431"), "{status}");
    let (status, _) = g.curl("shop.example.com", "/", &[]);
    assert!(status.starts_with("200"), "{status}");

    // Access log and metrics.
    let log = fs::read_to_string(&g.access_log).unwrap();
    let line = log.lines().find(|l| l.contains("/api/v1?x=1")).expect("access log line");
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["status"], 200);
    assert_eq!(v["route"], "shop/shop /api");
    assert_eq!(v["backend"], "shop/api:80");
    assert_eq!(v["endpoint"], "127.0.1.2:8080");
    assert!(
        g.metric("ztunnel_gateway_requests_total{host=\"shop.example.com\",route=\"shop/shop /api\",status=\"2xx\"}")
            >= 2.0
    );
    assert!(g.metric("ztunnel_gateway_request_duration_seconds_count{host=\"*.apps.example.com\"") >= 1.0);
    let dump = g.admin("/config_dump");
    assert!(dump.contains("shop/shop-tls") && !dump.contains("PRIVATE KEY"), "{dump}");
}

#[test]
fn failover_between_endpoints_and_unavailable_backends() {
    let (dir, _pki) = setup(2);
    let m = dir.path().join("manifests");
    backend("127.0.2.2", "up");
    // 127.0.2.3 listens on nothing: connections are refused.
    fs::write(m.join("a.yaml"), service_yaml("shop", "a", 80, 8080, &["127.0.2.2", "127.0.2.3"])).unwrap();
    fs::write(m.join("b.yaml"), service_yaml("shop", "b", 80, 8080, &["127.0.2.4", "127.0.2.5"])).unwrap();
    fs::write(m.join("c.yaml"), service_yaml("shop", "c", 80, 8080, &[])).unwrap();
    fs::write(
        m.join("ingress.yaml"),
        ingress(
            "routes",
            "  rules:
  - host: a.example.com
    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: a, port: {number: 80}}}}]}
  - host: b.example.com
    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: b, port: {number: 80}}}}]}
  - host: c.example.com
    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: c, port: {number: 80}}}}]}
  - host: gone.example.com
    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: missing, port: {number: 80}}}}]}
",
        ),
    )
    .unwrap();
    let g = Gateway::start(2, dir.path(), &["--no-https-redirect"]);
    for i in 0..20 {
        let (status, body) = g.curl("a.example.com", &format!("http://a.example.com:8080/{i}"), &[]);
        assert!(status.starts_with("200") && body.starts_with("up\n"), "request {i}: {status} {body}");
    }
    assert!(g.metric("ztunnel_gateway_backend_connect_failures_total") >= 1.0, "the down endpoint was tried");
    for host in ["b.example.com", "c.example.com", "gone.example.com"] {
        let (status, _) = g.curl(host, &format!("http://{host}:8080/"), &[]);
        assert!(status.starts_with("503"), "{host}: {status}");
    }
    let (status, _) = g.curl("nothing.example.com", "http://nothing.example.com:8080/", &[]);
    assert!(status.starts_with("404"), "{status}");

    // The last endpoint leaves the slice: 503 within a poll or two.
    write_atomic(&m.join("a.yaml"), &service_yaml("shop", "a", 80, 8080, &[])).unwrap();
    assert!(until(Duration::from_secs(5), || g
        .curl("a.example.com", "http://a.example.com:8080/", &[])
        .0
        .starts_with("503")));
    let dump = g.admin("/config_dump");
    assert!(dump.contains("Service shop/missing not found"), "{dump}");
}

#[test]
fn secret_rotation_under_load_and_bad_secrets_keep_the_old_certificate() {
    let (dir, mut pki) = setup(3);
    let m = dir.path().join("manifests");
    backend("127.0.3.2", "web");
    fs::write(m.join("svc.yaml"), service_yaml("shop", "web", 80, 8080, &["127.0.3.2"])).unwrap();
    fs::write(
        m.join("ingress.yaml"),
        ingress(
            "web",
            "  tls: [{hosts: [shop.example.com], secretName: shop-tls}]
  rules:
  - host: shop.example.com
    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]}
",
        ),
    )
    .unwrap();
    let secret = m.join("secret.yaml");
    let (c1, k1) = pki.issue(&["shop.example.com"], 90).unwrap();
    fs::write(&secret, tls_secret_yaml("shop", "shop-tls", &c1, &k1)).unwrap();
    let g = Arc::new(Gateway::start(3, dir.path(), &[]));
    let first = g.served_serial("shop.example.com");
    assert!(first.starts_with("serial="), "{first}");

    // Clients open a new TLS connection per request, verifying the chain,
    // while the Secret is replaced.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let (g, stop, ok, failed, failures) =
                (g.clone(), stop.clone(), ok.clone(), failed.clone(), failures.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let (status, body) = g.curl("shop.example.com", "/", &[]);
                    if status.starts_with("200") && body.starts_with("web\n") {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                        failures.lock().unwrap().push(status);
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let (c2, k2) = pki.issue(&["shop.example.com"], 90).unwrap();
    write_atomic(&secret, &tls_secret_yaml("shop", "shop-tls", &c2, &k2)).unwrap();
    let start = Instant::now();
    assert!(
        until(Duration::from_secs(5), || g.served_serial("shop.example.com") != first),
        "new certificate not served"
    );
    let switched_after = start.elapsed();
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let second = g.served_serial("shop.example.com");
    assert_ne!(second, first);
    assert_eq!(failed.load(Ordering::Relaxed), 0, "failed requests during rotation: {:?}", failures.lock().unwrap());
    assert!(ok.load(Ordering::Relaxed) >= 20, "only {} requests", ok.load(Ordering::Relaxed));
    eprintln!("rotation: {} requests, 0 failed, new certificate after {switched_after:?}", ok.load(Ordering::Relaxed));

    // Bad Secrets are rejected with a reason; the good certificate stays.
    let (c3, _k3) = pki.issue(&["shop.example.com"], 90).unwrap();
    let (expired, expired_key) = pki.issue(&["shop.example.com"], -1).unwrap();
    let bad = [
        ("key_mismatch", tls_secret_yaml("shop", "shop-tls", &c3, &k2)),
        (
            "bad_certificate",
            tls_secret_yaml("shop", "shop-tls", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", &k2),
        ),
        ("expired", tls_secret_yaml("shop", "shop-tls", &expired, &expired_key)),
    ];
    for (reason, text) in bad {
        write_atomic(&secret, &text).unwrap();
        let label = format!("ztunnel_gateway_secret_rejections_total{{secret=\"shop/shop-tls\",reason=\"{reason}\"}}");
        assert!(until(Duration::from_secs(5), || g.metric(&label) >= 1.0), "{reason} not rejected: {}", g.logs());
        assert_eq!(g.served_serial("shop.example.com"), second, "{reason}: the previous certificate keeps serving");
        let (status, _) = g.curl("shop.example.com", "/", &[]);
        assert!(status.starts_with("200"), "{reason}: {status}");
    }
    assert!(g.logs().contains("does not match the certificate"), "{}", g.logs());
    // A document missing tls.key is rejected at parse time; still serving.
    write_atomic(&secret, "apiVersion: v1\nkind: Secret\nmetadata: {name: shop-tls, namespace: shop}\ntype: kubernetes.io/tls\nstringData: {tls.crt: x}\n").unwrap();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(g.served_serial("shop.example.com"), second);

    // Deleting the Secret falls back to the default certificate.
    fs::remove_file(&secret).unwrap();
    assert!(until(Duration::from_secs(5), || g
        .s_client(&["-servername", "shop.example.com"])
        .contains("ztunnel gateway default certificate")));
}

#[test]
fn slow_and_hostile_clients_cannot_exhaust_the_gateway() {
    let (dir, _pki) = setup(4);
    let m = dir.path().join("manifests");
    backend("127.0.4.2", "web");
    fs::write(m.join("svc.yaml"), service_yaml("shop", "web", 80, 8080, &["127.0.4.2"])).unwrap();
    fs::write(m.join("ingress.yaml"), ingress("web", "  defaultBackend: {service: {name: web, port: {number: 80}}}\n"))
        .unwrap();
    let g = Gateway::start(
        4,
        dir.path(),
        &[
            "--handshake-timeout-secs",
            "1",
            "--header-timeout-secs",
            "1",
            "--idle-timeout-secs",
            "2",
            "--max-connections",
            "16",
        ],
    );
    let closed_within = |mut s: TcpStream, send: &[u8]| {
        let start = Instant::now();
        let _ = s.write_all(send);
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return start.elapsed(),
                Ok(_) => {}
            }
        }
    };
    // Silent TLS client, slow HTTP header, idle keep-alive: all closed.
    let silent = closed_within(TcpStream::connect("127.0.4.1:8443").unwrap(), b"");
    assert!(silent < Duration::from_secs(3), "silent TLS client held {silent:?}");
    let slow = closed_within(TcpStream::connect("127.0.4.1:8080").unwrap(), b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: 1");
    assert!(slow < Duration::from_secs(3), "slowloris held {slow:?}");
    let idle = closed_within(TcpStream::connect("127.0.4.1:8080").unwrap(), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(idle < Duration::from_secs(4), "idle keep-alive held {idle:?}");
    // Counted just after the close the client saw: allow a moment.
    let counted = |needle: &str| until(Duration::from_secs(2), || g.metric(needle) >= 1.0);
    assert!(counted("ztunnel_gateway_tls_handshake_failures_total{reason=\"timeout\"}"));

    // Garbage on the TLS port.
    let garbage =
        closed_within(TcpStream::connect("127.0.4.1:8443").unwrap(), b"\x16\x03\x01\x00\x05garbage-garbage\r\n\r\n");
    assert!(garbage < Duration::from_secs(2));
    assert!(
        counted("ztunnel_gateway_tls_handshake_failures_total{reason=\"invalid_message\"}"),
        "{}",
        g.admin("/metrics")
    );

    // A flood of silent connections hits the connection cap; once they time
    // out the gateway serves again.
    let flood: Vec<TcpStream> = (0..40).filter_map(|_| TcpStream::connect("127.0.4.1:8443").ok()).collect();
    std::thread::sleep(Duration::from_millis(300));
    assert!(g.metric("ztunnel_gateway_connections_refused_total") >= 1.0, "{}", g.admin("/metrics"));
    std::thread::sleep(Duration::from_millis(1500));
    let (status, _) = g.curl("any.example.com", "/", &["-k"]);
    assert!(status.starts_with("200"), "after the flood: {status}");
    drop(flood);
}

#[test]
fn testssl_finds_no_high_or_critical_issue() {
    let (dir, mut pki) = setup(5);
    let have = Command::new("sh").args(["-c", "command -v testssl"]).output().is_ok_and(|o| o.status.success());
    if !have {
        let msg = "SKIPPED testssl_finds_no_high_or_critical_issue: testssl not installed (deploy/lib/install-deps.sh)";
        assert!(!std::env::var("CI").is_ok_and(|v| v == "true"), "{msg}");
        eprintln!("{msg}");
        return;
    }
    let m = dir.path().join("manifests");
    backend("127.0.5.2", "web");
    fs::write(m.join("svc.yaml"), service_yaml("shop", "web", 80, 8080, &["127.0.5.2"])).unwrap();
    let (cert, key) = pki.issue(&["shop.example.com"], 365).unwrap();
    fs::write(m.join("secret.yaml"), tls_secret_yaml("shop", "shop-tls", &cert, &key)).unwrap();
    fs::write(
        m.join("ingress.yaml"),
        ingress(
            "web",
            "  tls: [{hosts: [shop.example.com], secretName: shop-tls}]\n  defaultBackend: {service: {name: web, port: {number: 80}}}\n",
        ),
    )
    .unwrap();
    let g = Gateway::start(5, dir.path(), &[]);
    let json = dir.path().join("testssl.json");
    let out = Command::new("timeout")
        .args(["600", "testssl", "--quiet", "--color", "0", "--warnings", "off", "--add-ca"])
        .arg(pki.ca())
        .arg("--jsonfile")
        .arg(&json)
        .args(["--ip", "127.0.5.1", "shop.example.com:8443"])
        .output()
        .unwrap();
    let text = fs::read_to_string(&json)
        .unwrap_or_else(|_| panic!("no testssl report: {}", String::from_utf8_lossy(&out.stdout)));
    let findings: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    let bad: Vec<String> = findings
        .iter()
        .filter(|f| matches!(f["severity"].as_str(), Some("HIGH" | "CRITICAL")))
        .map(|f| format!("{} {}: {}", f["severity"], f["id"], f["finding"]))
        .collect();
    assert!(bad.is_empty(), "testssl findings:\n{}", bad.join("\n"));
    // It did test what matters.
    for id in ["TLS1_1", "cipher_order", "BREACH", "secure_renego"] {
        assert!(findings.iter().any(|f| f["id"] == id), "testssl did not report {id}");
    }
    let _ = g;
}
