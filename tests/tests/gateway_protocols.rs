//! The Ingress gateway's protocol features against real peers on
//! loopback: WebSockets (switching, joining, limits), gRPC to h2c backends
//! (grpcio client and server: streams, trailers, failover), the PROXY
//! protocol with HSTS, and TLS to `https` backends. The gateway and backends use 127.0.0.0/8 addresses,
//! a different /24 per test (none shared with `gateway.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

mod gateway_support;

use std::fs;
use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway_support::{Gateway, backend, ingress, setup};
use testbed::cluster::{Proc, until};
use testbed::gateway::{service_yaml, tls_secret_yaml};

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
    grpc_server_with(addr, &[])
}

/// A gRPC server; with a certificate and key (`tls`), over TLS.
fn grpc_server_with(addr: &str, tls: &[&Path]) -> Proc {
    let mut child = Command::new("/usr/bin/python3")
        .arg(grpc_peer())
        .args(["serve", addr])
        .args(tls)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready", "gRPC server on {addr}");
    Proc(child)
}

/// The gRPC client's three calls to `grpc.example.com` through the gateway
/// at `addr` (trusting `ca`): its JSON report. `context` goes into the
/// failure message.
fn grpc_call(addr: &str, ca: &Path, context: &str) -> serde_json::Value {
    let out = Command::new("/usr/bin/python3")
        .arg(grpc_peer())
        .args(["call", addr])
        .arg(ca)
        .arg("grpc.example.com")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "gRPC client: {text}{}\n{context}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(&text).unwrap()
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
    let call = || grpc_call("127.0.8.1:8443", &pki.ca(), "");
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

/// An HTTPS backend (Python's `ssl`): answers every GET with `name`, the
/// SNI it was asked for and the path; HTTP/1.1 keep-alive.
fn tls_backend(ip: &str, port: u16, cert: &Path, key: &Path, name: &str) -> Proc {
    const SERVER: &str = r#"
import http.server, ssl, sys
ip, port, cert, key, name = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
def on_sni(sock, server_name, _ctx):
    sock.zt_sni = server_name
ctx.sni_callback = on_sni
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = f"{name}\nsni={getattr(self.connection, 'zt_sni', None)}\npath={self.path}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
srv = http.server.ThreadingHTTPServer((ip, port), H)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
"#;
    let child = Command::new("python3")
        .args(["-c", SERVER, ip, &port.to_string()])
        .arg(cert)
        .arg(key)
        .arg(name)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(until(Duration::from_secs(10), || TcpStream::connect((ip, port)).is_ok()), "TLS backend did not start");
    Proc(child)
}

/// A Service whose one port (443) has `appProtocol: https`, endpoints on
/// `target_port`.
fn https_service(name: &str, target_port: u16, endpoint: &str) -> String {
    service_yaml("shop", name, 443, target_port, &[endpoint])
        .replace("ports: [{name: http, port: 443}]", "ports: [{name: http, port: 443, appProtocol: https}]")
}

#[test]
fn https_backends_get_tls_with_the_service_name_verified_and_never_plain_http() {
    let (dir, mut pki) = setup(11);
    let m = dir.path().join("manifests");
    let write_pair = |pki: &mut testbed::gateway::Pki, host: &str, stem: &str| -> (PathBuf, PathBuf) {
        let (cert, key) = pki.issue(&[host], 30).unwrap();
        let (c, k) = (dir.path().join(format!("{stem}.crt")), dir.path().join(format!("{stem}.key")));
        fs::write(&c, cert).unwrap();
        fs::write(&k, key).unwrap();
        (c, k)
    };
    // A backend with a certificate for its Service's name, one whose
    // certificate names another Service, and one that speaks plain HTTP.
    let (c, k) = write_pair(&mut pki, "secure.shop.svc", "secure");
    let _secure = tls_backend("127.0.11.2", 8443, &c, &k, "secure");
    let (c, k) = write_pair(&mut pki, "other.shop.svc", "misnamed");
    let _misnamed = tls_backend("127.0.11.3", 8443, &c, &k, "misnamed");
    backend("127.0.11.4", "plain");
    let mut svcs = vec![
        https_service("secure", 8443, "127.0.11.2"),
        https_service("misnamed", 8443, "127.0.11.3"),
        https_service("plain", 8080, "127.0.11.4"),
    ];
    let mut rules = String::from("  rules:\n");
    for s in ["secure", "misnamed", "plain"] {
        rules.push_str(&format!(
            "  - host: {s}.example.com\n    http:\n      paths:\n      - {{path: /, pathType: Prefix, backend: {{service: {{name: {s}, port: {{number: 443}}}}}}}}\n"
        ));
    }
    svcs.push(ingress("tls-backends", &rules));
    fs::write(m.join("all.yaml"), svcs.join("---\n")).unwrap();
    // The backend CA file, as a mounted ConfigMap would hold it.
    let ca = dir.path().join("backend-ca.pem");
    let ca1 = fs::read_to_string(dir.path().join("pki/ca.crt")).unwrap();
    fs::write(&ca, &ca1).unwrap();
    let g = Gateway::start(11, dir.path(), &["--backend-ca", ca.to_str().unwrap()]);

    let get = |g: &Gateway, host: &str, path: &str| g.curl(host, &format!("http://{host}:8080{path}"), &[]);
    let (status, body) = get(&g, "secure.example.com", "/orders?id=7");
    assert!(status.starts_with("200"), "{status} {body}\n{}", g.logs());
    assert!(body.contains("secure\nsni=secure.shop.svc\npath=/orders?id=7\n"), "{body}");
    // Kept alive: the second request reuses the TLS connection.
    let (status, _) = get(&g, "secure.example.com", "/again");
    assert!(status.starts_with("200"), "{status}");

    // A certificate for another name, and a backend without TLS: refused,
    // never sent the request in the clear.
    let (status, body) = get(&g, "misnamed.example.com", "/x");
    assert!(!status.starts_with("200") && !body.contains("misnamed"), "{status} {body}");
    let (status, body) = get(&g, "plain.example.com", "/x");
    assert!(!status.starts_with("200") && !body.contains("plain"), "{status} {body}");
    let logs = g.logs();
    assert!(logs.contains("backend TLS failed") && logs.contains("shop/misnamed"), "{logs}");

    // Rotation of the backend CA without a restart: a backend with a
    // certificate from a second CA is refused until the file trusts both.
    let mut pki2 = testbed::gateway::Pki::new(&dir.path().join("pki2")).unwrap();
    let (c, k) = write_pair(&mut pki2, "rotated.shop.svc", "rotated");
    let _rotated = tls_backend("127.0.11.5", 8443, &c, &k, "rotated");
    let rule = "  rules:\n  - host: rotated.example.com\n    http:\n      paths:\n      - {path: /, pathType: Prefix, backend: {service: {name: rotated, port: {number: 443}}}}\n";
    let manifest = [https_service("rotated", 8443, "127.0.11.5"), ingress("rotated", rule)].join("---\n");
    testbed::gateway::write_atomic(&m.join("rotated.yaml"), &manifest).unwrap();
    assert!(
        until(Duration::from_secs(5), || g.admin("/config_dump").contains("rotated.example.com")),
        "{}",
        g.admin("/config_dump")
    );
    let (status, _) = get(&g, "rotated.example.com", "/before");
    assert!(!status.starts_with("200"), "a CA not in --backend-ca was trusted: {status}");
    let ca2 = fs::read_to_string(dir.path().join("pki2/ca.crt")).unwrap();
    testbed::gateway::write_atomic(&ca, &format!("{ca1}{ca2}")).unwrap();
    assert!(
        until(Duration::from_secs(5), || get(&g, "rotated.example.com", "/after").0.starts_with("200")),
        "the rotated CA file was not picked up\n{}",
        g.logs()
    );
    assert!(get(&g, "secure.example.com", "/still").0.starts_with("200"));
    // A broken file is reported and the certificates in use stay.
    testbed::gateway::write_atomic(&ca, "not a certificate\n").unwrap();
    assert!(until(Duration::from_secs(5), || g.logs().contains("backend CA file rejected")), "{}", g.logs());
    assert!(get(&g, "rotated.example.com", "/kept").0.starts_with("200"));
    drop(g);

    // Without --backend-ca the gateway cannot check a backend's certificate:
    // 502, and it says why.
    let g = Gateway::start(11, dir.path(), &[]);
    let (status, body) = get(&g, "secure.example.com", "/x");
    assert!(status.starts_with("502") && !body.contains("secure\n"), "{status} {body}");
    assert!(g.logs().contains("no --backend-ca"), "{}", g.logs());

    // A --backend-ca that holds no certificate is refused at start.
    let bad = dir.path().join("not-a-ca.pem");
    fs::write(&bad, "hello\n").unwrap();
    let out = Command::new(testbed::cluster::ztunnel_bin())
        .args(["gateway", "--local"])
        .arg(&m)
        .args(["--https", "127.0.11.1:9443", "--http", "127.0.11.1:9080", "--admin", "127.0.11.1:9021", "--backend-ca"])
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--backend-ca"), "{err}");
}

/// gRPC to an `https` backend: the backend chooses HTTP/2 by ALPN, so
/// unary and streaming calls and a status in trailers go through over TLS
/// (verified against `--backend-ca` and the Service's name), several calls
/// on one shared connection; a WebSocket's request would still be offered
/// HTTP/1.1 only (see the WebSocket test), and HTTP/1.1-only TLS backends
/// keep working (see the https test).
#[test]
fn grpc_to_https_backends_chooses_http2_by_alpn() {
    let (dir, mut pki) = setup(12);
    let have = Command::new("/usr/bin/python3").args(["-c", "import grpc"]).status().is_ok_and(|s| s.success());
    assert!(have, "python3-grpcio is needed by this test; deploy/lib/install-deps.sh installs it");
    let m = dir.path().join("manifests");
    let (cert, key) = pki.issue(&["echo.rpc.svc"], 30).unwrap();
    let (c, k) = (dir.path().join("backend.crt"), dir.path().join("backend.key"));
    fs::write(&c, cert).unwrap();
    fs::write(&k, key).unwrap();
    let _server = grpc_server_with("127.0.12.2:50051", &[&c, &k]);
    let svc = service_yaml("rpc", "echo", 443, 50051, &["127.0.12.2"])
        .replace("ports: [{name: http, port: 443}]", "ports: [{name: http, port: 443, appProtocol: https}]");
    assert!(svc.contains("appProtocol: https"), "{svc}");
    fs::write(m.join("svc.yaml"), svc).unwrap();
    let (cert, key) = pki.issue(&["grpc.example.com"], 90).unwrap();
    fs::write(m.join("secret.yaml"), tls_secret_yaml("rpc", "grpc-tls", &cert, &key)).unwrap();
    fs::write(
        m.join("ingress.yaml"),
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: echo, namespace: rpc}\nspec:
  ingressClassName: ztunnel
  tls: [{hosts: [grpc.example.com], secretName: grpc-tls}]
  rules:
  - host: grpc.example.com
    http: {paths: [{path: /zt.Echo, pathType: Prefix, backend: {service: {name: echo, port: {number: 443}}}}]}
",
    )
    .unwrap();
    let ca = dir.path().join("backend-ca.pem");
    fs::copy(dir.path().join("pki/ca.crt"), &ca).unwrap();
    // One serving thread, so that one pool sees every call.
    let g = Gateway::start(12, dir.path(), &["--backend-ca", ca.to_str().unwrap(), "--threads", "1"]);
    for _ in 0..3 {
        let v = grpc_call("127.0.12.1:8443", &pki.ca(), &g.logs());
        assert!(v["say"].as_str().unwrap().starts_with("echo:hello (grpc client: grpc-python/"), "{v}");
        assert_eq!(v["count"], serde_json::json!(["0", "1", "2", "3", "4"]));
        assert_eq!(v["fail"], serde_json::json!({"code": "NOT_FOUND", "details": "no such thing: x"}));
    }
    let log = fs::read_to_string(&g.access_log).unwrap();
    assert!(log.lines().any(|l| l.contains("/zt.Echo/Count") && l.contains("\"status\":200")), "{log}");
    // Nine calls from three clients, one TLS connection to the backend
    // (`ss`: the gateway's established connections to the backend's port).
    let ss = Command::new("ss").args(["-Htn", "state", "established", "dst", "127.0.12.2:50051"]).output().unwrap();
    let conns = String::from_utf8_lossy(&ss.stdout).lines().count();
    assert_eq!(conns, 1, "calls share one HTTP/2 connection:\n{}", String::from_utf8_lossy(&ss.stdout));
}
