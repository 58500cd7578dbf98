//! The backend side of a request: what is stripped before it is forwarded
//! (hop-by-hop headers, upgrades other than WebSockets) and the forwarding
//! itself — endpoint order, pooled or fresh connections (HTTP/1.1, over TLS
//! for `https` backends, or HTTP/2 for h2c ones), and the no-replay rule.

use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use tracing::{debug, warn};

use super::accesslog::Entry;
use super::pool::{BackendTls, Pool, PooledBody};
use super::routes::BackendProtocol;
use super::server::Shared;

/// Headers that belong to one hop and are never forwarded (RFC 9110 7.6.1).
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes the hop-by-hop headers, and those the `Connection` header names.
pub(super) fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()))
        .filter_map(|s| HeaderName::from_bytes(s.as_bytes()).ok())
        .collect();
    for n in named.iter().chain(HOP_BY_HOP.iter()) {
        h.remove(n);
    }
}

/// Whether `req` asks to become a WebSocket (RFC 6455 4.1): an HTTP/1.1
/// GET with `Upgrade: websocket` and `upgrade` among its `Connection`
/// options. Only this switch is forwarded; other upgrades (`h2c`, TLS) stay
/// hop-by-hop and are stripped, since they would hand the rest of the
/// client's connection to one backend, past routing.
pub(super) fn is_websocket_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.method() == http::Method::GET
        && has_token(req.headers(), header::CONNECTION, "upgrade")
        && has_token(req.headers(), header::UPGRADE, "websocket")
}

/// Whether a 101 answer switches to a WebSocket.
pub(super) fn is_websocket_switch(h: &HeaderMap) -> bool {
    has_token(h, header::CONNECTION, "upgrade") && has_token(h, header::UPGRADE, "websocket")
}

/// Whether the comma-separated values of `name` include `token`, ignoring
/// case (`Connection: keep-alive, Upgrade`).
pub(super) fn has_token(h: &HeaderMap, name: HeaderName, token: &str) -> bool {
    h.get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Sends the request to the target's endpoints in turn until one accepts
/// the connection. A request that was not written (connect failure, or a
/// pooled connection the backend had closed) moves on untouched; one that
/// was written and failed is a 502, never replayed. An h2c backend gets the
/// request as HTTP/2 on the endpoint's shared connection, by the same rule.
pub(super) async fn forward(
    shared: &Arc<Shared>,
    pool: &Arc<Pool>,
    target: &super::routes::Target,
    req: Request<Incoming>,
    entry: &mut Option<Entry>,
) -> Result<Response<PooledBody>, StatusCode> {
    let h2 = target.protocol == BackendProtocol::H2c;
    let connector = if target.protocol == BackendProtocol::Https { shared.backend_connector() } else { None };
    let tls = match (target.protocol, &connector) {
        (BackendProtocol::Https, Some(connector)) => Some(BackendTls { connector, server_name: &target.server_name }),
        (BackendProtocol::Https, None) => {
            // Never downgraded to plain HTTP: the backend asked for TLS.
            if !shared.warned_no_backend_ca.swap(true, std::sync::atomic::Ordering::Relaxed) {
                warn!(backend = %target.label, "backend port is appProtocol https but the gateway has no --backend-ca: answering 502");
            }
            return Err(StatusCode::BAD_GATEWAY);
        }
        _ => None,
    };
    let mut req = if h2 { as_http2(req)? } else { req };
    for addr in target.attempt_order() {
        // At most one retry on a fresh connection when a pooled one had
        // been closed under us.
        for fresh in [false, true] {
            let conn = match pool.get(h2, fresh, addr, shared.limits.connect_timeout, tls).await {
                Ok(c) => c,
                Err(e) => {
                    shared.metrics.backend_connect_failures.inc();
                    if matches!(e, super::pool::ConnectError::Tls { .. }) {
                        // A certificate that does not chain to --backend-ca
                        // or does not name the Service: a configuration
                        // error to see, not a passing outage.
                        warn!(endpoint = %addr, backend = %target.label, error = %e, "backend TLS failed; trying the next endpoint");
                    } else {
                        debug!(endpoint = %addr, error = %e, "backend connect failed; trying the next endpoint");
                    }
                    break;
                }
            };
            if let Some(e) = entry.as_mut() {
                e.endpoint = Some(addr);
            }
            let reused = conn.reused();
            match conn.send(pool, req).await {
                Ok(resp) => return Ok(resp),
                Err(mut e) => match e.take_message() {
                    Some(r) if reused => {
                        req = r;
                        continue; // stale pooled connection: once more, fresh
                    }
                    Some(r) => {
                        req = r;
                        break;
                    }
                    None => {
                        debug!(endpoint = %addr, error = %e.error(), "backend failed after the request was sent");
                        return Err(StatusCode::BAD_GATEWAY);
                    }
                },
            }
        }
    }
    Err(StatusCode::SERVICE_UNAVAILABLE)
}

/// The request as HTTP/2 sends it: the host in `:authority`, taken from an
/// absolute URI, instead of a `Host` header.
fn as_http2(req: Request<Incoming>) -> Result<Request<Incoming>, StatusCode> {
    let (mut parts, body) = req.into_parts();
    let host = parts.headers.remove(header::HOST);
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = host
        .as_ref()
        .and_then(|h| h.to_str().ok())
        .and_then(|h| Uri::builder().scheme("http").authority(h).path_and_query(path).build().ok())
        .ok_or(StatusCode::BAD_REQUEST)?;
    parts.version = Version::HTTP_2;
    Ok(Request::from_parts(parts, body))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use http::{Method, Request, Version};

    use super::is_websocket_upgrade;

    fn req(method: Method, version: Version, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method(method).version(version).uri("/chat");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn only_http11_get_websocket_upgrades_are_forwarded() {
        let ws = [("connection", "keep-alive, Upgrade"), ("upgrade", "WebSocket")];
        assert!(is_websocket_upgrade(&req(Method::GET, Version::HTTP_11, &ws)));
        // Split across two Connection headers.
        let split = [("connection", "keep-alive"), ("connection", "upgrade"), ("upgrade", "websocket")];
        assert!(is_websocket_upgrade(&req(Method::GET, Version::HTTP_11, &split)));
        assert!(!is_websocket_upgrade(&req(Method::POST, Version::HTTP_11, &ws)));
        assert!(!is_websocket_upgrade(&req(Method::GET, Version::HTTP_10, &ws)));
        assert!(!is_websocket_upgrade(&req(Method::GET, Version::HTTP_11, &[("upgrade", "websocket")])));
        let h2c = [("connection", "Upgrade, HTTP2-Settings"), ("upgrade", "h2c")];
        assert!(!is_websocket_upgrade(&req(Method::GET, Version::HTTP_11, &h2c)));
        let bogus = [("connection", "upgraded"), ("upgrade", "websockets")];
        assert!(!is_websocket_upgrade(&req(Method::GET, Version::HTTP_11, &bogus)));
    }
}
