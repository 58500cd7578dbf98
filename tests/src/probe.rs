//! Real servers and real probes: a TCP connection that completes its
//! handshake and echoes a byte, a UDP datagram that gets its reply.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use crate::netns::{Netns, run_in};

/// How long a probe waits before calling the path closed.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(700);

/// Starts TCP and UDP echo servers on `ports` inside `ns` (threads that live
/// as long as the process; the namespace's deletion ends them).
pub fn serve(ns: &Netns, tcp_ports: &[u16], udp_ports: &[u16]) -> anyhow::Result<()> {
    for &port in tcp_ports {
        let listener = ns.run(move || TcpListener::bind(("0.0.0.0", port)))??;
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut c) = conn else { continue };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 64];
                    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                    while let Ok(n) = c.read(&mut buf) {
                        if n == 0 || c.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
    }
    for &port in udp_ports {
        let sock = ns.run(move || UdpSocket::bind(("0.0.0.0", port)))??;
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&buf[..n], from);
            }
        });
    }
    Ok(())
}

/// Whether a TCP connection from namespace `ns` to `to` completes and
/// echoes a byte.
pub fn tcp(ns: &str, to: SocketAddr) -> bool {
    run_in(ns, move || {
        let Ok(mut s) = TcpStream::connect_timeout(&to, PROBE_TIMEOUT) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(PROBE_TIMEOUT));
        let mut buf = [0u8; 1];
        s.write_all(b"z").is_ok() && s.read_exact(&mut buf).is_ok() && buf == *b"z"
    })
    .unwrap_or(false)
}

/// Whether a UDP datagram from namespace `ns` to `to` gets its echo back.
pub fn udp(ns: &str, to: SocketAddr) -> bool {
    run_in(ns, move || {
        let local = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
        let Ok(s) = UdpSocket::bind(local) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(PROBE_TIMEOUT));
        let mut buf = [0u8; 8];
        s.send_to(b"z", to).is_ok() && s.recv_from(&mut buf).is_ok_and(|(n, _)| n == 1 && buf[0] == b'z')
    })
    .unwrap_or(false)
}

/// Starts a server in `ns` on `port` (IPv4 and IPv6) that answers each
/// connection with the address it sees the client at, then echoes: what
/// the mesh tests use to see the source address a pod gets.
pub fn whoami_server(ns: &Netns, port: u16) -> anyhow::Result<()> {
    let l = ns.run(move || TcpListener::bind(("::", port)))??;
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            std::thread::spawn(move || {
                // An IPv4 client shows as ::ffff:a.b.c.d on the dual-stack socket.
                let peer = c.peer_addr().map(|a| a.ip().to_canonical().to_string()).unwrap_or_default();
                let _ = c.write_all(format!("{peer}\n").as_bytes());
                let mut buf = [0u8; 4096];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 || c.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(())
}

/// Connects from `ns` to a [`whoami_server`] at `to`, reads the greeting,
/// sends `payload` and reads it back. Returns the greeting (the address the
/// server saw), or `None` if any step failed.
pub fn converse(ns: &str, to: SocketAddr, payload: &'static [u8]) -> Option<String> {
    run_in(ns, move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
        let mut greeting = Vec::new();
        let mut b = [0u8; 1];
        while s.read_exact(&mut b).is_ok() && b[0] != b'\n' {
            greeting.push(b[0]);
        }
        s.write_all(payload).ok()?;
        let mut back = vec![0u8; payload.len()];
        s.read_exact(&mut back).ok()?;
        (back == payload).then(|| String::from_utf8_lossy(&greeting).into_owned())
    })
    .ok()
    .flatten()
}
