//! Verdict events as a JSON flow log: one line per decision, with pod,
//! addresses, ports, protocol and the policy rule that allowed it.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use policy::Protocol;
use policy::compile::Tables;
use serde::Serialize;
use zt_ebpf::maps::ZtEvent;

/// One flow-log record.
#[derive(Debug, Serialize, PartialEq)]
pub struct Record {
    /// Wall-clock time the agent read the event (RFC 3339, UTC).
    pub time: String,
    /// `allowed` or `denied`.
    pub verdict: &'static str,
    /// Why (`rule`, `not-isolated`, `self`, `node`, `denied`, `revoked`, ...).
    pub reason: &'static str,
    /// `ingress` or `egress`, from the pod's point of view.
    pub direction: &'static str,
    /// The local pod.
    pub pod: Option<String>,
    /// Source address and port.
    pub src: String,
    /// Destination address and port.
    pub dst: String,
    /// Protocol.
    pub protocol: String,
    /// The allowing policy (`namespace/name`).
    pub policy: Option<String>,
    /// Its rule index.
    pub rule: Option<usize>,
}

fn addr(family: u8, a: [u32; 4]) -> IpAddr {
    let bytes: Vec<u8> = a.iter().flat_map(|w| w.to_ne_bytes()).collect();
    if family == 4 {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        let mut b = [0u8; 16];
        b.copy_from_slice(&bytes);
        IpAddr::V6(Ipv6Addr::from(b))
    }
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
        _ => "unknown",
    }
}

fn rfc3339_now() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
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
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem % 3600 / 60, rem % 60, now.subsec_millis())
}

/// Builds the record of an event, naming pods and policies from the tables.
pub fn record(e: &ZtEvent, tables: &Tables) -> Record {
    let proto = Protocol::from_number(e.protocol);
    let (src, dst) = (addr(e.family, e.src), addr(e.family, e.dst));
    let port = |p: u16| {
        if proto.has_ports() { format!(":{}", u16::from_be(p)) } else { String::new() }
    };
    let rule = (e.rule != 0).then(|| tables.rules.get(&e.rule)).flatten();
    let fmt = |ip: IpAddr, p: String| {
        if ip.is_ipv6() && !p.is_empty() { format!("[{ip}]{p}") } else { format!("{ip}{p}") }
    };
    Record {
        time: rfc3339_now(),
        verdict: if e.allowed == 1 { "allowed" } else { "denied" },
        reason: reason(e.reason),
        direction: if e.direction == 0 { "ingress" } else { "egress" },
        pod: tables.endpoints.get(&e.endpoint).map(|x| x.pod.to_string()),
        src: fmt(src, port(e.sport)),
        dst: fmt(dst, port(e.dport)),
        protocol: proto.to_string(),
        policy: rule.map(|r| r.policy.to_string()),
        rule: rule.map(|r| r.index),
    }
}

/// Writes records as JSON lines, buffered: the agent flushes once per batch
/// of events ([`FlowLog::flush`]) instead of a few syscalls per record.
pub struct FlowLog {
    out: std::io::BufWriter<Box<dyn Write + Send>>,
}

impl FlowLog {
    /// A flow log writing to `out`.
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Self { out: std::io::BufWriter::with_capacity(64 * 1024, out) }
    }

    /// Writes one event and returns its record. IO errors are logged,
    /// never fatal: enforcement does not depend on the log.
    pub fn write(&mut self, e: &ZtEvent, tables: &Tables) -> Record {
        let rec = record(e, tables);
        let res = serde_json::to_writer(&mut self.out, &rec)
            .map_err(std::io::Error::other)
            .and_then(|()| self.out.write_all(b"\n"));
        if let Err(err) = res {
            tracing::warn!(error = %err, "writing the flow log");
        }
        rec
    }

    /// Pushes buffered records out (after each batch of events).
    pub fn flush(&mut self) {
        if let Err(err) = self.out.flush() {
            tracing::warn!(error = %err, "writing the flow log");
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
        let r = record(&e, &Tables::default());
        assert_eq!((r.src.as_str(), r.dst.as_str()), ("10.0.0.1:40000", "10.0.0.2:443"));
        assert_eq!((r.verdict, r.reason, r.direction, r.protocol.as_str()), ("denied", "denied", "egress", "TCP"));
        assert!(r.policy.is_none() && r.pod.is_none());
        assert!(r.time.ends_with('Z') && r.time.len() == 24, "{}", r.time);
    }
}
