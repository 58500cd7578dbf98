//! The access log: one JSON line per request (client, host, method, path,
//! protocol, status, route, backend, endpoint, duration), to stdout or a
//! file, or off.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use http::Version;
use serde::Serialize;

/// One request.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Client address.
    pub client: SocketAddr,
    /// Over TLS.
    pub tls: bool,
    /// Method.
    pub method: String,
    /// Host header or `:authority`.
    pub host: String,
    /// Path and query.
    pub path: String,
    /// Client protocol.
    pub version: Version,
    /// Response status.
    pub status: u16,
    /// `namespace/ingress path` that matched, empty if none.
    pub route: String,
    /// `namespace/service:port`, empty if none.
    pub backend: String,
    /// The endpoint that served it.
    pub endpoint: Option<SocketAddr>,
    /// Time to response headers.
    pub duration: Duration,
}

impl Default for Entry {
    fn default() -> Self {
        Self {
            client: SocketAddr::from(([0, 0, 0, 0], 0)),
            tls: false,
            method: String::new(),
            host: String::new(),
            path: String::new(),
            version: Version::HTTP_11,
            status: 0,
            route: String::new(),
            backend: String::new(),
            endpoint: None,
            duration: Duration::ZERO,
        }
    }
}

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    client: String,
    scheme: &'static str,
    protocol: &'static str,
    method: &'a str,
    host: &'a str,
    path: &'a str,
    status: u16,
    route: &'a str,
    backend: &'a str,
    endpoint: Option<String>,
    duration_ms: f64,
}

fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// Where lines go.
pub struct AccessLog {
    out: Option<Mutex<Box<dyn Write + Send>>>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog").field("enabled", &self.out.is_some()).finish()
    }
}

impl AccessLog {
    /// No access log.
    pub fn off() -> Self {
        Self { out: None }
    }

    /// To standard output.
    pub fn stdout() -> Self {
        Self { out: Some(Mutex::new(Box::new(std::io::stdout()))) }
    }

    /// Appended to a file.
    pub fn file(path: &Path) -> std::io::Result<Self> {
        let f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self { out: Some(Mutex::new(Box::new(f))) })
    }

    /// Writes one line (errors are dropped: logging never fails a request).
    pub fn write(&self, e: &Entry) {
        let Some(out) = &self.out else { return };
        let line = Line {
            time: time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            client: e.client.to_string(),
            scheme: if e.tls { "https" } else { "http" },
            protocol: protocol(e.version),
            method: &e.method,
            host: &e.host,
            path: &e.path,
            status: e.status,
            route: &e.route,
            backend: &e.backend,
            endpoint: e.endpoint.map(|a| a.to_string()),
            duration_ms: e.duration.as_secs_f64() * 1000.0,
        };
        let Ok(mut text) = serde_json::to_vec(&line) else { return };
        text.push(b'\n');
        let mut w = match out.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let _ = w.write_all(&text);
    }
}
