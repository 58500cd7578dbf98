//! Helpers for ingress gateway tests and benchmarks: a throwaway PKI made
//! with the `openssl` CLI (as an operator would make one), Kubernetes
//! manifests for TLS Secrets and Services, and a small HTTP/1.1 backend
//! that reports what it received.

use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// A CA directory made with `openssl`.
#[derive(Debug)]
pub struct Pki {
    dir: PathBuf,
    serial: u32,
}

fn openssl(args: &[&str], dir: &Path) -> anyhow::Result<()> {
    let out = Command::new("openssl").args(args).current_dir(dir).output().context("running openssl")?;
    if !out.status.success() {
        bail!("openssl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

impl Pki {
    /// A new CA (`ca.crt`, `ca.key`) in `dir`.
    pub fn new(dir: &Path) -> anyhow::Result<Self> {
        fs::create_dir_all(dir)?;
        openssl(
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "3650",
                "-subj",
                "/CN=ztunnel test ingress CA",
            ],
            dir,
        )?;
        Ok(Self { dir: dir.to_path_buf(), serial: 0 })
    }

    /// The CA certificate's path.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// Issues a server certificate for `hosts`, valid from now for `days`
    /// (negative: already expired); returns (cert PEM, key PEM). Shaped
    /// like a public certificate (revocation pointers included) so TLS
    /// scanners judge the server, not the test PKI.
    pub fn issue(&mut self, hosts: &[&str], days: i64) -> anyhow::Result<(String, String)> {
        self.serial += 1;
        let name = format!("leaf{}", self.serial);
        let dir = &self.dir;
        openssl(
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={}", hosts[0]),
            ],
            dir,
        )?;
        let san: Vec<String> = hosts.iter().map(|h| format!("DNS:{h}")).collect();
        let ext = format!(
            "subjectAltName={}\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nbasicConstraints=critical,CA:FALSE\ncrlDistributionPoints=URI:http://crl.example.invalid/ca.crl\nauthorityInfoAccess=OCSP;URI:http://ocsp.example.invalid\n",
            san.join(",")
        );
        fs::write(dir.join(format!("{name}.ext")), ext)?;
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-set_serial",
                &format!("{}", 0x1000 + self.serial),
                "-days",
                &days.to_string(),
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.crt"),
            ],
            dir,
        )?;
        Ok((fs::read_to_string(dir.join(format!("{name}.crt")))?, fs::read_to_string(dir.join(format!("{name}.key")))?))
    }
}

fn indent(text: &str, by: usize) -> String {
    let pad = " ".repeat(by);
    text.lines().map(|l| format!("{pad}{l}\n")).collect()
}

/// A `kubernetes.io/tls` Secret manifest.
pub fn tls_secret_yaml(ns: &str, name: &str, cert: &str, key: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {ns}}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
        indent(cert, 4),
        indent(key, 4)
    )
}

/// A Service with one port (`http`) and an EndpointSlice of `endpoints`
/// (all ready) on `target_port`.
pub fn service_yaml(ns: &str, name: &str, port: u16, target_port: u16, endpoints: &[&str]) -> String {
    let mut eps = String::new();
    for e in endpoints {
        let _ = write!(eps, "- addresses: [\"{e}\"]\n  conditions: {{ready: true}}\n");
    }
    if endpoints.is_empty() {
        eps.push_str("[]\n");
    }
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  ports: [{{name: http, port: {port}}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: {ns}\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nports: [{{name: http, port: {target_port}}}]\nendpoints:{}{eps}",
        if endpoints.is_empty() { " " } else { "\n" }
    )
}

/// Writes `text` to `path` atomically (rename), so a poller never reads a
/// half-written file.
pub fn write_atomic(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp~");
    fs::write(&tmp, text)?;
    fs::rename(&tmp, path)?;
    Ok(())
}

/// Serves HTTP/1.1 on `listener` (keep-alive) until the process ends: each
/// response body is `name`, the request path and the proxy headers it got,
/// one per line (`path=...`, `peer=...` (the TCP source it saw), `host=...`,
/// `x-forwarded-for=...`, ...). A request with `Upgrade: websocket` (path
/// not starting with `/refuse`) is answered with a 101 and then echoed byte
/// for byte until EOF.
pub fn http_backend(listener: TcpListener, name: &'static str) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            std::thread::spawn(move || {
                let _ = serve_conn(conn, name);
            });
        }
    });
}

fn serve_conn(conn: std::net::TcpStream, name: &str) -> std::io::Result<()> {
    let peer = conn.peer_addr().map(|a| a.ip().to_string()).unwrap_or_default();
    let mut out = conn.try_clone()?;
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut headers = Vec::new();
        let mut length = 0usize;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 {
                return Ok(());
            }
            let h = h.trim_end().to_string();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                let k = k.trim().to_ascii_lowercase();
                if k == "content-length" {
                    length = v.trim().parse().unwrap_or(0);
                }
                headers.push((k, v.trim().to_string()));
            }
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body)?;
        let header = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.to_ascii_lowercase());
        if header("upgrade").as_deref() == Some("websocket") && !path.starts_with("/refuse") {
            // A WebSocket endpoint: switch, then echo every byte until EOF.
            let key = headers.iter().find(|(k, _)| k == "sec-websocket-key").map_or("", |(_, v)| v.as_str());
            write!(
                out,
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: for-{key}\r\nX-Backend: {name}\r\n\r\n"
            )?;
            let mut buf = [0u8; 4096];
            loop {
                let n = reader.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                out.write_all(&buf[..n])?;
            }
        }
        let mut text = format!("{name}\npath={path}\npeer={peer}\n");
        for (k, v) in &headers {
            if matches!(
                k.as_str(),
                "host" | "x-forwarded-for" | "x-forwarded-proto" | "x-forwarded-host" | "upgrade" | "connection"
            ) {
                let _ = writeln!(text, "{k}={v}");
            }
        }
        let _ = writeln!(text, "body-bytes={length}");
        write!(out, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{text}", text.len())?;
    }
}

/// A loopback listener on a free port of `ip` (any 127.0.0.0/8 address).
pub fn loopback_listener(ip: &str) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let l = TcpListener::bind((ip, 0))?;
    let a = l.local_addr()?;
    Ok((l, a))
}
