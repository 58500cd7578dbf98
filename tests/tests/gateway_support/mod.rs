//! What the gateway test files share: a gateway process on a loopback
//! /24 with curl, `openssl s_client` and admin-endpoint helpers, HTTP
//! backends, and the manifest directory set-up.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure
#![allow(dead_code)] // each test file uses its own part

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use testbed::cluster::{Proc, until, ztunnel_bin};
use testbed::gateway::{Pki, http_backend};

pub fn need(tool: &str) {
    let found =
        Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success());
    assert!(found, "`{tool}` is needed by this test; deploy/lib/install-deps.sh installs it");
}

/// A gateway on 127.0.N.1 (HTTPS 8443, HTTP 8080, admin 15021).
pub struct Gateway {
    _proc: Proc,
    pub ip: String,
    pub dir: PathBuf,
    pub access_log: PathBuf,
    pub log: PathBuf,
}

impl Gateway {
    pub fn start(net: u8, dir: &Path, extra: &[&str]) -> Self {
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

    pub fn admin(&self, path: &str) -> String {
        let Ok(mut s) = TcpStream::connect((self.ip.as_str(), 15021)) else { return String::new() };
        let _ = s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes());
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    pub fn logs(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `curl` over HTTPS to `host` (resolved to the gateway); returns (HTTP
    /// code and version line, body).
    pub fn curl(&self, host: &str, path: &str, extra: &[&str]) -> (String, String) {
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
    pub fn s_client(&self, args: &[&str]) -> String {
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
    pub fn served_serial(&self, sni: &str) -> String {
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

    pub fn metric(&self, needle: &str) -> f64 {
        let m = self.admin("/metrics");
        m.lines().filter(|l| l.contains(needle)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
    }
}

pub fn backend(ip: &str, name: &'static str) {
    http_backend(TcpListener::bind((ip, 8080)).unwrap(), name);
}

pub fn setup(net: u8) -> (tempfile::TempDir, Pki) {
    need("curl");
    need("openssl");
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("manifests")).unwrap();
    let pki = Pki::new(&dir.path().join("pki")).unwrap();
    let _ = net;
    (dir, pki)
}

pub fn ingress(name: &str, body: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  ingressClassName: ztunnel\n{body}"
    )
}
