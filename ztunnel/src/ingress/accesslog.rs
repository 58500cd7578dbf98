//! The access log: one JSON line per request (client, host, method, path,
//! protocol, status, route, backend, endpoint, duration), to stdout or a
//! file, or off; buffered, flushed every 200 ms.

use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
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

type Sink = Arc<Mutex<BufWriter<Box<dyn Write + Send>>>>;

/// Where lines go. Writes are buffered and flushed every 200 ms by a
/// background thread (like nginx's `access_log ... buffer= flush=`), so a
/// request costs no write system call.
pub struct AccessLog {
    out: Option<Sink>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog").field("enabled", &self.out.is_some()).finish()
    }
}

fn lock(s: &Sink) -> std::sync::MutexGuard<'_, BufWriter<Box<dyn Write + Send>>> {
    match s.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl AccessLog {
    /// No access log.
    pub fn off() -> Self {
        Self { out: None }
    }

    /// To standard output.
    pub fn stdout() -> Self {
        Self::to(Box::new(std::io::stdout()))
    }

    /// Appended to a file.
    pub fn file(path: &Path) -> std::io::Result<Self> {
        let f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self::to(Box::new(f)))
    }

    fn to(w: Box<dyn Write + Send>) -> Self {
        let sink: Sink = Arc::new(Mutex::new(BufWriter::with_capacity(64 * 1024, w)));
        let weak = Arc::downgrade(&sink);
        std::thread::spawn(move || {
            while let Some(s) = weak.upgrade() {
                let _ = lock(&s).flush();
                drop(s);
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        Self { out: Some(sink) }
    }

    /// Whether lines are written at all.
    pub fn enabled(&self) -> bool {
        self.out.is_some()
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
        let mut w = lock(out);
        if serde_json::to_writer(&mut *w, &line).is_ok() {
            let _ = w.write_all(b"\n");
        }
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        if let Some(s) = &self.out {
            let _ = lock(s).flush();
        }
    }
}
