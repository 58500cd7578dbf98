//! The Ingress gateway's protocol features against real peers on
//! loopback: WebSockets (switching, joining, limits), gRPC to h2c backends
//! (grpcio client and server: streams, trailers, failover) and the PROXY
//! protocol with HSTS. The gateway and backends use 127.0.0.0/8 addresses,
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
