//! Verdict events as a JSON flow log: one line per decision, with pod,
//! addresses, ports, protocol and the policy rule that allowed it, or the
//! policies that isolate the pod when it was denied.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use policy::compile::Compiler;
use policy::model::ObjectKey;
use policy::{Direction, Protocol};
use serde::Serialize;
use zt_ebpf::maps::ZtEvent;

/// One flow-log record. It borrows the names from the tables and formats
/// addresses and the time as it is written: the agent writes a few per new
/// connection, and building each field as a string first cost a dozen
/// allocations per record.
#[derive(Debug, Serialize)]
pub struct Record<'a> {
    /// Wall-clock time the agent read the event (RFC 3339, UTC).
    #[serde(serialize_with = "display")]
    pub time: Rfc3339,
    /// `allowed` or `denied`.
    pub verdict: &'static str,
    /// Why (`rule`, `not-isolated`, `self`, `node`, `denied`, `revoked`, ...).
    pub reason: &'static str,
    /// `ingress` or `egress`, from the pod's point of view.
    pub direction: &'static str,
    /// The local pod.
    #[serde(serialize_with = "display_opt")]
    pub pod: Option<&'a ObjectKey>,
    /// Source address and port.
    #[serde(serialize_with = "display")]
    pub src: Endpoint,
    /// Destination address and port.
    #[serde(serialize_with = "display")]
    pub dst: Endpoint,
    /// Protocol.
    #[serde(serialize_with = "display")]
    pub protocol: Protocol,
    /// The allowing policy (`namespace/name`).
    #[serde(serialize_with = "display_opt")]
    pub policy: Option<&'a ObjectKey>,
    /// Its rule index.
    pub rule: Option<usize>,
    /// For a denial (also audited or revoked): the policies that isolate the
    /// pod in that direction, none of whose rules admits the flow. Absent
    /// otherwise.
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "display_all")]
    pub isolated_by: Vec<&'a ObjectKey>,
}

fn display_all<T: std::fmt::Display, S: serde::Serializer>(v: &[T], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(ToString::to_string))
}

fn display<T: std::fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn display_opt<T: std::fmt::Display, S: serde::Serializer>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.collect_str(v),
        None => s.serialize_none(),
    }
}

/// An address, with its port when the protocol has ports (`10.0.0.1:80`,
/// `[fd00::1]:80`, `10.0.0.1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// Address.
    pub ip: IpAddr,
    /// Port, if the protocol has them.
    pub port: Option<u16>,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.ip, self.port) {
            (IpAddr::V6(ip), Some(p)) => write!(f, "[{ip}]:{p}"),
            (ip, Some(p)) => write!(f, "{ip}:{p}"),
            (ip, None) => write!(f, "{ip}"),
        }
    }
}

/// A wall-clock time, shown as RFC 3339 in UTC with milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rfc3339(std::time::SystemTime);

impl Rfc3339 {
    /// Now.
    pub fn now() -> Self {
        Self(std::time::SystemTime::now())
    }
}

fn addr(family: u8, a: [u32; 4]) -> IpAddr {
    let mut b = [0u8; 16];
    for (chunk, w) in b.chunks_exact_mut(4).zip(a) {
        chunk.copy_from_slice(&w.to_ne_bytes());
    }
    if family == 4 { IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])) } else { IpAddr::V6(Ipv6Addr::from(b)) }
}

fn reason(r: u8) -> &'static str {
    match r {
        0 => "denied",
        1 => "rule",
        2 => "not-isolated",
        3 => "self",
        4 => "node",
        5 => "unknown-endpoint",
        6 => "malformed",
        7 => "infrastructure",
        8 => "tracked",
        9 => "revoked",
        10 => "no-proxy",
        11 => "audit",
        _ => "unknown",
    }
}

impl std::fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let now = self.0.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let secs = now.as_secs();
        let (days, rem) = (secs / 86_400, secs % 86_400);
        // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
        let z = days as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        let y = yoe + era * 400 + i64::from(m <= 2);
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60,
            now.subsec_millis()
        )
    }
}

/// Builds the record of an event, naming pods and policies from the
/// compiled state.
pub fn record<'a>(e: &ZtEvent, compiler: &'a Compiler) -> Record<'a> {
    let tables = compiler.tables();
    let proto = Protocol::from_number(e.protocol);
    let direction = if e.direction == 0 { Direction::Ingress } else { Direction::Egress };
    let denial = matches!(reason(e.reason), "denied" | "revoked" | "audit");
    let port = |p: u16| proto.has_ports().then(|| u16::from_be(p));
    let rule = (e.rule != 0).then(|| tables.rules.get(&e.rule)).flatten();
    Record {
        time: Rfc3339::now(),
        // Audit mode: policy denies the flow, the datapath let it through.
        verdict: match (e.allowed, e.reason) {
            (_, zt_ebpf::maps::REASON_AUDIT) => "audit",
            (1, _) => "allowed",
            _ => "denied",
        },
        reason: reason(e.reason),
        direction: match direction {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        },
        pod: tables.endpoints.get(&e.endpoint).map(|x| &x.pod),
        src: Endpoint { ip: addr(e.family, e.src), port: port(e.sport) },
        dst: Endpoint { ip: addr(e.family, e.dst), port: port(e.dport) },
        protocol: proto,
        policy: rule.map(|r| &r.policy),
        rule: rule.map(|r| r.index),
        isolated_by: if denial { compiler.isolated_by(e.endpoint, direction).collect() } else { Vec::new() },
    }
}

/// Writes records as JSON lines, buffered: the agent flushes once per batch
/// of events ([`FlowLog::flush`]) instead of a few syscalls per record.
pub struct FlowLog {
    out: std::io::BufWriter<Box<dyn Write + Send>>,
    /// Size-based rotation of a flow-log file.
    rotation: Option<Rotation>,
}

/// When and how a flow-log file is rotated: once it holds `max_bytes`, at
/// the end of a batch (so a record is never split across files), `PATH`
/// becomes `PATH.1`, `PATH.1` becomes `PATH.2` and so on, the oldest
/// beyond `keep` is deleted, and a new `PATH` is opened. A node agent runs
/// for months; without this a busy node's log would fill its disk.
#[derive(Debug, Clone)]
pub struct Rotation {
    /// The flow-log file.
    pub path: PathBuf,
    /// Rotate once the file holds this many bytes.
    pub max_bytes: u64,
    /// Rotated files kept (`PATH.1` … `PATH.keep`); 0 keeps none.
    pub keep: usize,
    /// Bytes in the current file.
    written: u64,
}

impl Rotation {
    /// Rotation of `path` at `max_bytes`, keeping `keep` old files.
    pub fn new(path: PathBuf, max_bytes: u64, keep: usize) -> Self {
        Self { path, max_bytes, keep, written: 0 }
    }

    fn rotated(&self, n: usize) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{n}"));
        PathBuf::from(p)
    }

    /// Shifts the files by one and opens a fresh `path`. When `path` is
    /// not there (an earlier rotation moved it and then failed to open the
    /// new one, or someone removed it) nothing is shifted: retries must not
    /// push the kept files out one by one.
    fn rotate(&self) -> std::io::Result<std::fs::File> {
        let gone = |r: std::io::Result<()>| match r {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
        if self.path.exists() {
            if self.keep == 0 {
                gone(std::fs::remove_file(&self.path))?;
            } else {
                gone(std::fs::remove_file(self.rotated(self.keep)))?;
                for n in (1..self.keep).rev() {
                    gone(std::fs::rename(self.rotated(n), self.rotated(n + 1)))?;
                }
                std::fs::rename(&self.path, self.rotated(1))?;
            }
        }
        open_append(&self.path)
    }
}

/// Opens a flow-log file for appending (created if missing).
pub fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new().create(true).append(true).open(path)
}

/// Counts what passes through to the buffered writer.
struct Counting<'a, W> {
    inner: &'a mut W,
    count: &'a mut u64,
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(b)?;
        *self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl FlowLog {
    /// A flow log writing to `out`.
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Self { out: std::io::BufWriter::with_capacity(64 * 1024, out), rotation: None }
    }

    /// A flow log appending to the file of `rotation` and rotating it.
    pub fn rotating(mut rotation: Rotation) -> std::io::Result<Self> {
        let file = open_append(&rotation.path)?;
        rotation.written = file.metadata()?.len();
        let mut log = Self::new(Box::new(file));
        log.rotation = Some(rotation);
        Ok(log)
    }

    /// Writes one event and returns its record. IO errors are logged,
    /// never fatal: enforcement does not depend on the log.
    pub fn write<'a>(&mut self, e: &ZtEvent, compiler: &'a Compiler) -> Record<'a> {
        let rec = record(e, compiler);
        let mut count = 0u64;
        let mut out = Counting { inner: &mut self.out, count: &mut count };
        let res =
            serde_json::to_writer(&mut out, &rec).map_err(std::io::Error::other).and_then(|()| out.write_all(b"\n"));
        if let Err(err) = res {
            tracing::warn!(error = %err, "writing the flow log");
        }
        if let Some(r) = &mut self.rotation {
            r.written += count;
        }
        rec
    }

    /// Pushes buffered records out (after each batch of events), and
    /// rotates the file if it is full. A failed rotation is logged and
    /// retried after the next batch; the records keep going to the file
    /// that is open.
    pub fn flush(&mut self) {
        if let Err(err) = self.out.flush() {
            tracing::warn!(error = %err, "writing the flow log");
        }
        let Some(r) = &mut self.rotation else { return };
        if r.written < r.max_bytes {
            return;
        }
        match r.rotate() {
            Ok(file) => {
                r.written = 0;
                self.out = std::io::BufWriter::with_capacity(64 * 1024, Box::new(file));
            }
            Err(err) => tracing::warn!(error = %err, path = %r.path.display(), "rotating the flow log"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_name_addresses_ports_and_reason() {
        let mut e = ZtEvent { family: 4, protocol: 6, allowed: 0, reason: 0, direction: 1, ..Default::default() };
        e.src[0] = u32::from_ne_bytes([10, 0, 0, 1]);
        e.dst[0] = u32::from_ne_bytes([10, 0, 0, 2]);
        e.sport = 40000u16.to_be();
        e.dport = 443u16.to_be();
        let compiler = Compiler::new(policy::Scope::Cluster);
        let r = record(&e, &compiler);
        assert_eq!((r.src.to_string(), r.dst.to_string()), ("10.0.0.1:40000".into(), "10.0.0.2:443".into()));
        assert_eq!(
            (r.verdict, r.reason, r.direction, r.protocol.to_string()),
            ("denied", "denied", "egress", "TCP".into())
        );
        assert!(r.policy.is_none() && r.pod.is_none());
        let time = r.time.to_string();
        assert!(time.ends_with('Z') && time.len() == 24, "{time}");
        // Audit mode: let through, reported as what policy would have done.
        let audit = ZtEvent { allowed: 1, reason: zt_ebpf::maps::REASON_AUDIT, ..e };
        let r = record(&audit, &compiler);
        assert_eq!((r.verdict, r.reason), ("audit", "audit"));
    }

    /// A denial names the policies isolating the pod in that direction; an
    /// allowed flow, or a direction nothing isolates, names none.
    #[test]
    fn denials_name_the_isolating_policies() {
        let yaml = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: n}\nspec: {nodeName: x}\nstatus: {podIP: 10.0.0.1}\n\
                    ---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: n}\nspec: {podSelector: {}}\n\
                    ---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: n}\nspec: {podSelector: {}, ingress: [{ports: [{port: 80}]}]}\n";
        let parsed = policy::parse_str("t.yaml", yaml);
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        let cluster = policy::Cluster::from_objects(parsed.objects.into_iter().map(|(_, o)| o));
        let compiler = Compiler::from_cluster(policy::Scope::Cluster, &cluster);
        let ep = compiler.tables().endpoint_of(&ObjectKey::new("n", "a")).unwrap();
        let denied =
            ZtEvent { family: 4, protocol: 6, endpoint: ep, allowed: 0, reason: 0, direction: 0, ..Default::default() };
        let names = |e: &ZtEvent| record(e, &compiler).isolated_by.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(names(&denied), ["n/deny", "n/web"]);
        let audited = ZtEvent { allowed: 1, reason: zt_ebpf::maps::REASON_AUDIT, ..denied };
        assert_eq!(names(&audited), ["n/deny", "n/web"]);
        assert!(names(&ZtEvent { allowed: 1, reason: 1, ..denied }).is_empty(), "allowed: none");
        assert!(names(&ZtEvent { direction: 1, ..denied }).is_empty(), "no policy isolates egress");
        let line = serde_json::to_value(record(&denied, &compiler)).unwrap();
        assert_eq!(line["isolated_by"], serde_json::json!(["n/deny", "n/web"]));
        let line = serde_json::to_value(record(&ZtEvent { allowed: 1, reason: 1, ..denied }, &compiler)).unwrap();
        assert!(line.get("isolated_by").is_none(), "absent when empty: {line}");
    }

    /// Rotation keeps whole lines, at most `keep` old files, and the newest
    /// records in the file itself.
    #[test]
    fn a_full_file_is_rotated_between_batches() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flows.jsonl");
        std::fs::write(&path, "{\"old\":true}\n").unwrap();
        let mut log = FlowLog::rotating(Rotation::new(path.clone(), 1000, 2)).unwrap();
        let compiler = Compiler::new(policy::Scope::Cluster);
        let mut e = ZtEvent { family: 4, protocol: 6, allowed: 1, reason: 2, ..Default::default() };
        for batch in 0..20u16 {
            for i in 0..3u16 {
                e.sport = (batch * 10 + i).to_be();
                log.write(&e, &compiler);
            }
            log.flush();
        }
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        let files = [path.clone(), dir.path().join("flows.jsonl.1"), dir.path().join("flows.jsonl.2")];
        for f in &files {
            let text = read(f);
            // The file itself may just have been started afresh.
            assert!(f.exists() && (f == &path || !text.is_empty()), "{} is missing", f.display());
            assert!(text.is_empty() || text.ends_with('\n'), "a record split across files");
            for l in text.lines() {
                serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{l}: {e}"));
            }
            // Rotated at the first flush past 1,000 bytes: at most one batch over.
            assert!(text.len() < 1000 + 3 * 300, "{}: {} bytes", f.display(), text.len());
        }
        assert!(!dir.path().join("flows.jsonl.3").exists(), "only two old files are kept");
        assert!(!files.iter().any(|f| read(f).contains("\"old\"")), "the oldest records rotated away");
        let newest = if read(&path).is_empty() { read(&files[1]) } else { read(&path) };
        let last = newest.lines().last().map(str::to_string).unwrap_or_default();
        assert!(last.contains(":192\""), "the newest record is the last one written: {last}");
        // A file removed from under the agent: the next rotation opens a
        // new one and leaves the kept files where they are.
        let kept = read(&files[1]);
        std::fs::remove_file(&path).unwrap();
        let mut log = FlowLog::rotating(Rotation::new(path.clone(), 1, 2)).unwrap();
        std::fs::remove_file(&path).unwrap();
        log.write(&e, &compiler);
        log.flush();
        assert!(path.exists() && read(&path).is_empty(), "a new file is opened");
        assert_eq!(read(&files[1]), kept, "nothing shifted");
        // keep = 0: the file is started afresh.
        let mut log = FlowLog::rotating(Rotation::new(path.clone(), 10, 0)).unwrap();
        log.write(&e, &compiler);
        log.flush();
        assert!(read(&path).is_empty());
        log.write(&e, &compiler);
        log.write(&e, &compiler);
        log.flush();
        assert_eq!(read(&path), "", "rotated again after this batch");
    }

    /// The JSON line: IPv6 endpoints bracketed, no ports for a protocol
    /// without them, absent names as null.
    #[test]
    fn writes_one_json_line_per_event() {
        let mut e = ZtEvent { family: 6, protocol: 6, allowed: 1, reason: 2, direction: 0, ..Default::default() };
        let v6 = |s: &str| {
            let o = s.parse::<Ipv6Addr>().unwrap().octets();
            [0, 4, 8, 12].map(|i| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]))
        };
        e.src = v6("fd00::1");
        e.dst = v6("fd00::2");
        e.sport = 40000u16.to_be();
        e.dport = 8080u16.to_be();
        let mut icmp = ZtEvent { family: 4, protocol: 1, allowed: 0, reason: 0, direction: 1, ..Default::default() };
        icmp.src[0] = u32::from_ne_bytes([10, 0, 0, 1]);
        icmp.dst[0] = u32::from_ne_bytes([10, 0, 0, 2]);
        let out = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut log = FlowLog::new(Box::new(Shared(out.clone())));
        let compiler = Compiler::new(policy::Scope::Cluster);
        log.write(&e, &compiler);
        log.write(&icmp, &compiler);
        log.flush();
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["src"], "[fd00::1]:40000");
        assert_eq!(lines[0]["dst"], "[fd00::2]:8080");
        assert_eq!(
            (&lines[0]["verdict"], &lines[0]["reason"], &lines[0]["direction"], &lines[0]["protocol"]),
            (&"allowed".into(), &"not-isolated".into(), &"ingress".into(), &"TCP".into())
        );
        assert!(lines[0]["pod"].is_null() && lines[0]["policy"].is_null() && lines[0]["rule"].is_null());
        assert_eq!((&lines[1]["src"], &lines[1]["dst"]), (&"10.0.0.1".into(), &"10.0.0.2".into()));
        assert_eq!(lines[1]["protocol"], "ICMP");
        assert!(lines[1]["time"].as_str().is_some_and(|t| t.len() == 24 && t.ends_with('Z')), "{text}");
    }
}
