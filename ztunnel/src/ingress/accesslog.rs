//! The access log: one JSON line per request (client, host, method, path,
//! protocol, status, route, backend, endpoint, duration), to stdout or a
//! file, or off; buffered, flushed every 200 ms.

use std::cell::RefCell;
use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::uri::PathAndQuery;
use http::{Method, Version};

/// One request. Cheap to fill: shared strings and cheaply cloned URI
/// parts, formatted only when the line is written.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Client address.
    pub client: SocketAddr,
    /// The same, formatted once per connection.
    pub client_text: Option<Arc<str>>,
    /// Over TLS.
    pub tls: bool,
    /// Method.
    pub method: Method,
    /// Host header or `:authority`.
    pub host: String,
    /// Path and query.
    pub path: Option<PathAndQuery>,
    /// Client protocol.
    pub version: Version,
    /// Response status.
    pub status: u16,
    /// `namespace/ingress path` that matched.
    pub route: Option<Arc<str>>,
    /// `namespace/service:port`.
    pub backend: Option<Arc<str>>,
    /// The endpoint that served it.
    pub endpoint: Option<SocketAddr>,
    /// Time to response headers.
    pub duration: Duration,
}

impl Default for Entry {
    fn default() -> Self {
        Self {
            client: SocketAddr::from(([0, 0, 0, 0], 0)),
            client_text: None,
            tls: false,
            method: Method::GET,
            host: String::new(),
            path: None,
            version: Version::HTTP_11,
            status: 0,
            route: None,
            backend: None,
            endpoint: None,
            duration: Duration::ZERO,
        }
    }
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

/// Appends `s` as a JSON string (quotes and escapes included): hosts and
/// paths come from clients.
fn json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    if !s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        // The common case: nothing to escape.
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        return;
    }
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let mut b = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            }
        }
    }
    out.push(b'"');
}

thread_local! {
    /// The line being formatted (reused: no allocation per request).
    static LINE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// The formatted current second, reused for every line in that second.
    static SECOND: RefCell<(i64, String)> = const { RefCell::new((i64::MIN, String::new())) };
}

fn timestamp(out: &mut Vec<u8>) {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = i64::try_from(since.as_secs()).unwrap_or(0);
    SECOND.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            // The calendar is worked out once per second, not per line.
            let f = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
            let text = time::OffsetDateTime::from_unix_timestamp(secs)
                .ok()
                .and_then(|t| t.format(&f).ok())
                .unwrap_or_default();
            *c = (secs, text);
        }
        out.extend_from_slice(c.1.as_bytes());
    });
    let _ = write!(out, ".{:06}Z", since.subsec_micros());
}

/// One line of JSON for `e` (appended to `out`, newline included).
pub fn format(out: &mut Vec<u8>, e: &Entry) {
    out.extend_from_slice(b"{\"time\":\"");
    timestamp(out);
    out.extend_from_slice(b"\",\"client\":\"");
    match &e.client_text {
        Some(t) => out.extend_from_slice(t.as_bytes()),
        None => {
            let _ = write!(out, "{}", e.client);
        }
    }
    out.extend_from_slice(b"\",\"scheme\":\"");
    out.extend_from_slice(if e.tls { b"https" } else { b"http" });
    out.extend_from_slice(b"\",\"protocol\":\"");
    out.extend_from_slice(protocol(e.version).as_bytes());
    out.extend_from_slice(b"\",\"method\":");
    json_str(out, e.method.as_str());
    out.extend_from_slice(b",\"host\":");
    json_str(out, &e.host);
    out.extend_from_slice(b",\"path\":");
    json_str(out, e.path.as_ref().map_or("", |p| p.as_str()));
    let _ = write!(out, ",\"status\":{},\"route\":", e.status);
    json_str(out, e.route.as_deref().unwrap_or(""));
    out.extend_from_slice(b",\"backend\":");
    json_str(out, e.backend.as_deref().unwrap_or(""));
    match e.endpoint {
        Some(a) => {
            let _ = write!(out, ",\"endpoint\":\"{a}\"");
        }
        None => out.extend_from_slice(b",\"endpoint\":null"),
    }
    let us = e.duration.as_micros();
    let _ = writeln!(out, ",\"duration_ms\":{}.{:03}}}", us / 1000, us % 1000);
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
        LINE.with(|line| {
            let mut line = line.borrow_mut();
            line.clear();
            format(&mut line, e);
            let _ = lock(out).write_all(&line);
        });
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        if let Some(s) = &self.out {
            let _ = lock(s).flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_json_and_escape_client_text() {
        let e = Entry {
            host: "evil\"host\n".into(),
            path: Some(PathAndQuery::from_static("/a/b?x=1")),
            status: 200,
            route: Some("n/i /".into()),
            endpoint: Some("10.0.0.1:80".parse().unwrap()),
            duration: Duration::from_micros(1500),
            ..Entry::default()
        };
        let mut out = Vec::new();
        format(&mut out, &e);
        assert_eq!(out.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["host"], "evil\"host\n");
        assert_eq!(v["path"], "/a/b?x=1");
        assert_eq!(v["status"], 200);
        assert_eq!(v["backend"], "");
        assert_eq!(v["endpoint"], "10.0.0.1:80");
        assert_eq!(v["duration_ms"], 1.5);
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
    }
}
