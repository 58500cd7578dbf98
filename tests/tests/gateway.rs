//! The Ingress TLS gateway against real clients (`curl`, `openssl
//! s_client`, `testssl`, grpcio) on loopback: routing by host and path,
//! proxy headers, certificate selection by SNI, redirects, failover between
//! endpoints, Secret rotation under load, bad Secrets, slow or hostile
//! clients, WebSockets, gRPC to h2c backends, and the PROXY protocol. No root needed: the gateway and backends use 127.0.0.0/8
//! addresses, a different /24 per test so the tests can run in parallel.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::fs;
use std::io::{BufRead, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use testbed::cluster::{Proc, until, ztunnel_bin};
use testbed::gateway::{Pki, http_backend, service_yaml, tls_secret_yaml, write_atomic};

fn need(tool: &str) {
    let found =
        Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success());
    assert!(found, "`{tool}` is needed by this test; deploy/lib/install-deps.sh installs it");
}

/// A gateway on 127.0.N.1 (HTTPS 8443, HTTP 8080, admin 15021).
struct Gateway {
    _proc: Proc,
    ip: String,
    dir: PathBuf,
    access_log: PathBuf,
    log: PathBuf,
}

impl Gateway {
    fn start(net: u8, dir: &Path, extra: &[&str]) -> Self {
        let ip = format!("127.0.{net}.1");
        let manifests = dir.join("manifests");
        let log = dir.join("gateway.log");
        let access_log = dir.join("access.log");
        let mut args: Vec<String> = vec![
            "gateway".into(),
            "--local".into(),
            manifests.display().to_string(),
            "--https".into(),
            format!("{ip}:8443"),
            "--http".into(),
            format!("{ip}:8080"),
            "--admin".into(),
            format!("{ip}:15021"),
            "--access-log".into(),
            access_log.display().to_string(),
            "--poll-ms".into(),
            "100".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let child = Command::new(ztunnel_bin())
            .args(&args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(fs::File::create(&log).unwrap()))
            .spawn()
            .unwrap();
        let g = Gateway { _proc: Proc(child), ip, dir: dir.to_path_buf(), access_log, log };
        assert!(
            until(Duration::from_secs(20), || g.admin("/ready").contains("200 OK")),
            "gateway not ready: {}",
            g.logs()
        );
        g
    }

    fn admin(&self, path: &str) -> String {
        let Ok(mut s) = TcpStream::connect((self.ip.as_str(), 15021)) else { return String::new() };
        let _ = s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes());
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    fn logs(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `curl` over HTTPS to `host` (resolved to the gateway); returns (HTTP
    /// code and version line, body).
    fn curl(&self, host: &str, path: &str, extra: &[&str]) -> (String, String) {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "--cacert"])
            .arg(self.dir.join("pki/ca.crt"))
            .args(["--resolve", &format!("{host}:8443:{}", self.ip), "--resolve", &format!("{host}:8080:{}", self.ip)])
            .args(["-w", "\n%{http_code} %{http_version}"])
            .args(extra)
            .arg(if path.starts_with("http") { path.to_string() } else { format!("https://{host}:8443{path}") })
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
        (format!("{status}{}", String::from_utf8_lossy(&out.stderr).trim()), body.to_string())
    }

    /// `openssl s_client` handshake; returns its whole output.
    fn s_client(&self, args: &[&str]) -> String {
        let mut child = Command::new("openssl")
            .args(["s_client", "-connect", &format!("{}:8443", self.ip), "-CAfile"])
            .arg(self.dir.join("pki/ca.crt"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdin.take()); // EOF: s_client ends after the handshake
        let out = child.wait_with_output().unwrap();
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    }

    /// The serial of the certificate served for `sni`.
    fn served_serial(&self, sni: &str) -> String {
        let out = self.s_client(&["-servername", sni, "-showcerts"]);
        let pem: String = out
            .split_inclusive('\n')
            .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE-----"))
            .take_while(|l| !l.starts_with("-----END CERTIFICATE-----"))
            .collect::<String>()
            + "-----END CERTIFICATE-----\n";
        let mut x = Command::new("openssl")
            .args(["x509", "-noout", "-serial"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        x.stdin.take().unwrap().write_all(pem.as_bytes()).unwrap();
        String::from_utf8_lossy(&x.wait_with_output().unwrap().stdout).trim().to_string()
    }

    fn metric(&self, needle: &str) -> f64 {
        let m = self.admin("/metrics");
        m.lines().filter(|l| l.contains(needle)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
    }
}

fn backend(ip: &str, name: &'static str) {
    http_backend(TcpListener::bind((ip, 8080)).unwrap(), name);
}

fn setup(net: u8) -> (tempfile::TempDir, Pki) {
    need("curl");
    need("openssl");
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("manifests")).unwrap();
    let pki = Pki::new(&dir.path().join("pki")).unwrap();
    let _ = net;
    (dir, pki)
}

fn ingress(name: &str, body: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  ingressClassName: ztunnel\n{body}"
    )
}

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

/// A WebSocket opening handshake for `host` and `path`.
fn ws_request(host: &str, path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// A masked binary WebSocket frame (client to server) carrying `payload`.
fn ws_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x82];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= 0xffff => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Reads an HTTP response head (through the blank line) and no further.
fn read_head(s: &mut impl Read) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).to_ascii_lowercase()
}

/// Reads a whole response with a `Content-Length` body; returns (head, body).
fn read_response(s: &mut impl Read) -> (String, String) {
    let head = read_head(s);
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    (head, String::from_utf8_lossy(&body).to_string())
}

#[test]
fn websockets_are_switched_joined_to_the_backend_and_bounded() {
    let (dir, mut pki) = setup(7);
    let m = dir.path().join("manifests");
    backend("127.0.7.2", "ws");
    fs::write(m.join("svc.yaml"), service_yaml("chat", "ws", 80, 8080, &["127.0.7.2"])).unwrap();
    let (cert, key) = pki.issue(&["ws.example.com"], 90).unwrap();
    fs::write(m.join("secret.yaml"), tls_secret_yaml("chat", "ws-tls", &cert, &key)).unwrap();
    fs::write(
        m.join("ingress.yaml"),
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: chat, namespace: chat}\nspec:
  ingressClassName: ztunnel
  tls: [{hosts: [ws.example.com], secretName: ws-tls}]
  rules:
  - host: ws.example.com
    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: ws, port: {number: 80}}}}]}
  - host: plain.example.com
    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: ws, port: {number: 80}}}}]}
",
    )
    .unwrap();
    let g = Gateway::start(7, dir.path(), &["--idle-timeout-secs", "2", "--max-connections", "4"]);
    let connect = || {
        let s = TcpStream::connect("127.0.7.1:8080").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    };

    // Plain HTTP: the switch, with a frame sent right behind the request
    // (before the 101), then a megabyte each way.
    let mut ws = connect();
    let early = ws_frame(b"hello");
    ws.write_all(ws_request("plain.example.com", "/chat").as_bytes()).unwrap();
    ws.write_all(&early).unwrap();
    let head = read_head(&mut ws);
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket") && head.contains("connection: upgrade"), "{head}");
    assert!(head.contains("sec-websocket-accept: for-dghlihnhbxbszsbub25jzq=="), "{head}");
    let mut echo = vec![0u8; early.len()];
    ws.read_exact(&mut echo).unwrap();
    assert_eq!(echo, early);
    let big = ws_frame(&(0..1 << 20).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let mut writer = ws.try_clone().unwrap();
    let sent = big.clone();
    let t = std::thread::spawn(move || writer.write_all(&sent).unwrap());
    let mut back = vec![0u8; big.len()];
    ws.read_exact(&mut back).unwrap();
    t.join().unwrap();
    assert!(back == big, "the megabyte came back changed");
    assert_eq!(g.metric("ztunnel_gateway_websockets "), 1.0, "{}", g.admin("/metrics"));

    // Traffic keeps it open past the idle timeout; silence closes it.
    for i in 0..8 {
        let f = ws_frame(format!("ping {i}").as_bytes());
        ws.write_all(&f).unwrap();
        let mut e = vec![0u8; f.len()];
        ws.read_exact(&mut e).unwrap();
        assert_eq!(e, f);
        std::thread::sleep(Duration::from_millis(400));
    }
    let start = Instant::now();
    let mut b = [0u8; 16];
    assert!(matches!(ws.read(&mut b), Ok(0) | Err(_)), "an idle WebSocket stays open");
    let idle = start.elapsed();
    assert!(idle >= Duration::from_millis(1500) && idle < Duration::from_secs(5), "closed after {idle:?}");
    assert!(until(Duration::from_secs(2), || g.metric("ztunnel_gateway_websockets ") == 0.0));
    assert!(until(Duration::from_secs(2), || g.metric("ztunnel_gateway_connections ") == 0.0));

    // Over TLS with a real client (openssl s_client).
    let mut client = Command::new("openssl")
        .args(["s_client", "-quiet", "-nocommands", "-connect", "127.0.7.1:8443"])
        .args(["-servername", "ws.example.com", "-verify_return_error", "-CAfile"])
        .arg(pki.ca())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let got = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut stdout = client.stdout.take().unwrap();
    let sink = got.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let frame = ws_frame(b"over tls \x00\xff\r\n\r\n binary");
    let mut stdin = client.stdin.take().unwrap();
    stdin.write_all(ws_request("ws.example.com", "/chat").as_bytes()).unwrap();
    stdin.write_all(&frame).unwrap();
    stdin.flush().unwrap();
    let echoed = until(Duration::from_secs(10), || got.lock().unwrap().ends_with(&frame));
    let text = String::from_utf8_lossy(&got.lock().unwrap()).to_string();
    assert!(echoed && text.starts_with("HTTP/1.1 101"), "{text}");
    let _ = client.kill();
    let _ = client.wait();

    // A backend that does not switch answers as usual, and the connection
    // stays an HTTP one.
    let mut s = connect();
    s.write_all(ws_request("plain.example.com", "/refuse").as_bytes()).unwrap();
    let (head, body) = read_response(&mut s);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(body.contains("upgrade=websocket") && body.contains("path=/refuse"), "{body}");
    s.write_all(b"GET /again HTTP/1.1\r\nHost: plain.example.com\r\n\r\n").unwrap();
    let (head, body) = read_response(&mut s);
    assert!(head.starts_with("http/1.1 200") && body.contains("path=/again"), "{head}{body}");
    drop(s);

    // Other upgrades (h2c) stay hop-by-hop: the backend sees none of it.
    let mut s = connect();
    s.write_all(
        b"GET /h2c HTTP/1.1\r\nHost: plain.example.com\r\nConnection: Upgrade, HTTP2-Settings\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
    )
    .unwrap();
    let (head, body) = read_response(&mut s);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!body.contains("upgrade=") && !body.contains("connection="), "{body}");
    drop(s);

    // WebSockets count against --max-connections (4) after they switch.
    let open: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut ws = connect();
            ws.write_all(ws_request("plain.example.com", "/chat").as_bytes()).unwrap();
            assert!(read_head(&mut ws).starts_with("http/1.1 101"));
            ws
        })
        .collect();
    // The gauge moves once the gateway holds the upgraded connection, a
    // moment after the 101 has gone out.
    assert!(
        until(Duration::from_secs(3), || g.metric("ztunnel_gateway_websockets ") == 4.0),
        "{}",
        g.metric("ztunnel_gateway_websockets ")
    );
    let mut fifth = connect();
    let _ = fifth.write_all(ws_request("plain.example.com", "/chat").as_bytes());
    assert_eq!(read_head(&mut fifth), "", "a fifth connection was served");
    assert!(g.metric("ztunnel_gateway_connections_refused_total") >= 1.0);
    drop(open);
    assert!(until(Duration::from_secs(3), || g.metric("ztunnel_gateway_websockets ") == 0.0));

    let log = fs::read_to_string(&g.access_log).unwrap();
    let line = log.lines().find(|l| l.contains("\"status\":101")).expect("a 101 in the access log");
    assert!(line.contains("chat/chat /"), "{line}");
}

/// A gRPC server (grpcio, `tests/peers/grpc_peer.py`) on `addr`, ready.
fn grpc_server(addr: &str) -> Proc {
    let mut child = Command::new("/usr/bin/python3")
        .arg(grpc_peer())
        .args(["serve", addr])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready", "gRPC server on {addr}");
    Proc(child)
}

fn grpc_peer() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/grpc_peer.py")
}

#[test]
fn grpc_to_h2c_backends_with_streams_trailers_and_failover() {
    let (dir, pki) = setup(8);
    let have = Command::new("/usr/bin/python3").args(["-c", "import grpc"]).status().is_ok_and(|s| s.success());
    assert!(have, "python3-grpcio is needed by this test; deploy/lib/install-deps.sh installs it");
    let m = dir.path().join("manifests");
    let mut server = grpc_server("127.0.8.2:50051");
    // 127.0.8.3 listens on nothing: connections are refused.
    let svc = service_yaml("rpc", "echo", 80, 50051, &["127.0.8.2", "127.0.8.3"]);
    let svc =
        svc.replace("{name: http, port: 80}]\n---", "{name: http, port: 80, appProtocol: kubernetes.io/h2c}]\n---");
    assert!(svc.contains("appProtocol"), "{svc}");
    fs::write(m.join("svc.yaml"), svc).unwrap();
    let mut pki = pki;
    let (cert, key) = pki.issue(&["grpc.example.com"], 90).unwrap();
    fs::write(m.join("secret.yaml"), tls_secret_yaml("rpc", "grpc-tls", &cert, &key)).unwrap();
    fs::write(
        m.join("ingress.yaml"),
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: echo, namespace: rpc}\nspec:
  ingressClassName: ztunnel
  tls: [{hosts: [grpc.example.com], secretName: grpc-tls}]
  rules:
  - host: grpc.example.com
    http: {paths: [{path: /zt.Echo, pathType: Prefix, backend: {service: {name: echo, port: {number: 80}}}}]}
",
    )
    .unwrap();
    let g = Gateway::start(8, dir.path(), &[]);
    assert!(g.admin("/config_dump").contains("rpc/echo:80 h2c"), "{}", g.admin("/config_dump"));
    let call = || {
        let out = Command::new("/usr/bin/python3")
            .arg(grpc_peer())
            .args(["call", "127.0.8.1:8443"])
            .arg(pki.ca())
            .arg("grpc.example.com")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "gRPC client: {text}{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_str::<serde_json::Value>(&text).unwrap()
    };
    // Unary, server streaming, and an error status, which travels in the
    // response's trailers: all three need HTTP/2 end to end.
    for _ in 0..3 {
        let v = call();
        assert!(v["say"].as_str().unwrap().starts_with("echo:hello (grpc client: grpc-python/"), "{v}");
        assert_eq!(v["count"], serde_json::json!(["0", "1", "2", "3", "4"]));
        assert_eq!(v["fail"], serde_json::json!({"code": "NOT_FOUND", "details": "no such thing: x"}));
    }
    assert!(g.metric("ztunnel_gateway_backend_connect_failures_total") >= 1.0, "the down endpoint was tried");

    // The backend restarts: the gateway's shared connection to it is gone,
    // and the next calls go out on a new one.
    drop(server);
    server = grpc_server("127.0.8.2:50051");
    let v = call();
    assert_eq!(v["count"], serde_json::json!(["0", "1", "2", "3", "4"]), "{v}");
    let log = fs::read_to_string(&g.access_log).unwrap();
    assert!(log.lines().any(|l| l.contains("/zt.Echo/Count") && l.contains("\"status\":200")), "{log}");
    drop(server);
}

/// A PROXY protocol v2 header for a TCP over IPv4 client `src`.
fn proxy_v2(src: std::net::SocketAddrV4, command: u8) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x20 | command, 0x11, 0, 12]);
    h.extend_from_slice(&src.ip().octets());
    h.extend_from_slice(&[127, 0, 10, 1]);
    h.extend_from_slice(&src.port().to_be_bytes());
    h.extend_from_slice(&8080u16.to_be_bytes());
    h
}

#[test]
fn behind_a_load_balancer_the_proxy_protocol_names_the_client_and_https_sends_hsts() {
    let (dir, mut pki) = setup(10);
    let m = dir.path().join("manifests");
    backend("127.0.10.2", "web");
    fs::write(m.join("svc.yaml"), service_yaml("shop", "web", 80, 8080, &["127.0.10.2"])).unwrap();
    let (cert, key) = pki.issue(&["lb.example.com"], 90).unwrap();
    fs::write(m.join("secret.yaml"), tls_secret_yaml("shop", "lb-tls", &cert, &key)).unwrap();
    fs::write(
        m.join("ingress.yaml"),
        ingress(
            "web",
            "  tls: [{hosts: [lb.example.com], secretName: lb-tls}]\n  defaultBackend: {service: {name: web, port: {number: 80}}}\n",
        ),
    )
    .unwrap();
    let g = Gateway::start(
        10,
        dir.path(),
        &[
            "--proxy-protocol",
            "--handshake-timeout-secs",
            "1",
            "--hsts-max-age-secs",
            "31536000",
            "--hsts-include-subdomains",
        ],
    );

    // A real client sending a v1 header, then TLS; HTTPS responses carry
    // the HSTS policy.
    let (status, body) = g.curl("lb.example.com", "/curl", &["--haproxy-protocol", "-i"]);
    assert!(status.starts_with("200") && body.contains("path=/curl"), "{status} {body}");
    assert!(
        body.to_ascii_lowercase().contains("strict-transport-security: max-age=31536000; includesubdomains\r\n"),
        "{body}"
    );
    // Without one, the same request is refused.
    let (status, _) = g.curl("lb.example.com", "/bare", &[]);
    assert!(!status.starts_with("200"), "served without a PROXY header: {status}");
    assert!(g.metric("ztunnel_gateway_proxy_header_rejections_total") >= 1.0, "{}", g.admin("/metrics"));

    let request = |header: &[u8], split: bool, path: &str| -> (String, String) {
        let mut s = TcpStream::connect("127.0.10.1:8080").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: plain.example.com\r\nConnection: close\r\n\r\n");
        if split {
            // The header in two segments, the request in a third.
            s.write_all(&header[..header.len() / 2]).unwrap();
            std::thread::sleep(Duration::from_millis(100));
            s.write_all(&header[header.len() / 2..]).unwrap();
            std::thread::sleep(Duration::from_millis(100));
            s.write_all(req.as_bytes()).unwrap();
        } else {
            s.write_all(&[header, req.as_bytes()].concat()).unwrap();
        }
        read_response(&mut s)
    };
    // v2 from the client 203.0.113.7, the request in the same segment: the
    // backend and the access log see that client, not the balancer.
    let (head, body) = request(&proxy_v2("203.0.113.7:4242".parse().unwrap(), 1), false, "/v2");
    assert!(head.starts_with("http/1.1 200") && body.contains("x-forwarded-for=203.0.113.7\n"), "{head}{body}");
    assert!(!head.contains("strict-transport-security"), "HSTS over plain HTTP: {head}");
    let (_, body) = request(&proxy_v2("198.51.100.9:5353".parse().unwrap(), 1), true, "/split");
    assert!(body.contains("x-forwarded-for=198.51.100.9\n"), "{body}");
    let (_, body) = request(b"PROXY TCP6 2001:db8::7 2001:db8::1 4242 80\r\n", false, "/v1");
    assert!(body.contains("x-forwarded-for=2001:db8::7\n"), "{body}");
    // LOCAL (the balancer's health check): served as the TCP peer.
    let (head, body) = request(&proxy_v2("192.0.2.1:1".parse().unwrap(), 0), false, "/health");
    assert!(head.starts_with("http/1.1 200") && body.contains("x-forwarded-for=127.0.0.1\n"), "{head}{body}");

    // A malformed header and a silent connection are closed, unserved.
    let closed = |send: &[u8]| {
        let mut s = TcpStream::connect("127.0.10.1:8080").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(send).unwrap();
        let start = Instant::now();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        (out, start.elapsed())
    };
    let (out, _) = closed(b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 80\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
    let (out, waited) = closed(b"");
    assert!(out.is_empty() && waited < Duration::from_secs(3), "silent connection held {waited:?}");

    let log = fs::read_to_string(&g.access_log).unwrap();
    let line = log.lines().find(|l| l.contains("\"/v2\"")).expect("access log line");
    assert!(line.contains("203.0.113.7:4242"), "{line}");
}
