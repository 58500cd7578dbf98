//! The backend side of a request: what is stripped before it is forwarded
//! (hop-by-hop headers, upgrades other than WebSockets) and the forwarding
//! itself — endpoint order, pooled or fresh connections (HTTP/1.1, over TLS
//! for `https` backends, which may choose HTTP/2 by ALPN, or HTTP/2 for h2c
//! ones), and the no-replay rule.

use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use tracing::{debug, warn};

use super::accesslog::Entry;
use super::pool::{BackendTls, Checkout, Pool, PooledBody};
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
/// request as HTTP/2 on the endpoint's shared connection, by the same rule,
/// and so does an `https` backend that chose HTTP/2 (except a WebSocket's
/// request, which offers it HTTP/1.1 only).
pub(super) async fn forward(
    shared: &Arc<Shared>,
    pool: &Arc<Pool>,
    target: &super::routes::Target,
    req: Request<Incoming>,
    entry: &mut Option<Entry>,
) -> Result<Response<PooledBody>, StatusCode> {
    let h2c = target.protocol == BackendProtocol::H2c;
    let connectors = if target.protocol == BackendProtocol::Https { shared.backend_connector() } else { None };
    let h2 = !is_websocket_upgrade(&req);
    let tls = match (target.protocol, &connectors) {
        (BackendProtocol::Https, Some(connectors)) => {
            Some(BackendTls { connectors, server_name: &target.server_name, h2 })
        }
        (BackendProtocol::Https, None) => {
            // Never downgraded to plain HTTP: the backend asked for TLS.
            if !shared.warned_no_backend_ca.swap(true, std::sync::atomic::Ordering::Relaxed) {
                warn!(backend = %target.label, "backend port is appProtocol https but the gateway has no --backend-ca: answering 502");
            }
            return Err(StatusCode::BAD_GATEWAY);
        }
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut req = req;
    for addr in target.attempt_order() {
        // At most one retry on a fresh connection when a pooled one had
        // been closed under us.
        for fresh in [false, true] {
            let conn = match pool.get(h2c, fresh, addr, shared.limits.connect_timeout, tls).await {
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
            // The request in the form of the connection's protocol (a
            // request handed back unsent may go out on the other one).
            req = match &conn {
                Checkout::H2(_) => as_http2(req, scheme)?,
                Checkout::H1(_) => as_http1(req),
            };
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
/// absolute URI, instead of a `Host` header. (Already in that form: kept.)
fn as_http2<B>(req: Request<B>, scheme: &str) -> Result<Request<B>, StatusCode> {
    if req.version() == Version::HTTP_2 {
        return Ok(req);
    }
    let (mut parts, body) = req.into_parts();
    let host = parts.headers.remove(header::HOST);
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = host
        .as_ref()
        .and_then(|h| h.to_str().ok())
        .and_then(|h| Uri::builder().scheme(scheme).authority(h).path_and_query(path).build().ok())
        .ok_or(StatusCode::BAD_REQUEST)?;
    parts.version = Version::HTTP_2;
    Ok(Request::from_parts(parts, body))
}

/// The request as HTTP/1.1 sends it: the host in a `Host` header and the
/// target in origin form. (Already in that form: kept.)
fn as_http1<B>(req: Request<B>) -> Request<B> {
    if req.version() != Version::HTTP_2 {
        return req;
    }
    let (mut parts, body) = req.into_parts();
    if let Some(host) = parts.uri.authority().and_then(|a| http::HeaderValue::from_str(a.as_str()).ok()) {
        parts.headers.insert(header::HOST, host);
    }
    parts.uri = parts.uri.path_and_query().map_or_else(|| Uri::from_static("/"), |pq| Uri::from(pq.clone()));
    parts.version = Version::HTTP_11;
    Request::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use http::{Method, Request, Version};

    use super::{as_http1, as_http2, is_websocket_upgrade};

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

    #[test]
    fn a_request_changes_form_between_http1_and_http2_and_back() {
        let r = Request::builder().uri("/zt.Echo/Say?x=1").header("host", "grpc.example.com").body(()).unwrap();
        let h2 = as_http2(r, "https").unwrap();
        assert_eq!(h2.version(), Version::HTTP_2);
        assert_eq!(h2.uri().to_string(), "https://grpc.example.com/zt.Echo/Say?x=1");
        assert!(h2.headers().get("host").is_none(), "the authority replaces Host");
        let again = as_http2(h2, "http").unwrap();
        assert_eq!(again.uri().scheme_str(), Some("https"), "already HTTP/2: kept");
        let h1 = as_http1(again);
        assert_eq!(h1.version(), Version::HTTP_11);
        assert_eq!(h1.uri().to_string(), "/zt.Echo/Say?x=1");
        assert_eq!(h1.headers()["host"], "grpc.example.com");
        // Without a Host there is no authority to send: 400.
        let bare = Request::builder().uri("/").body(()).unwrap();
        assert_eq!(as_http2(bare, "http").unwrap_err(), http::StatusCode::BAD_REQUEST);
    }
}
