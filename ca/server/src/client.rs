//! A client of the CA API, for node agents, the CLI and tests.
//!
//! One HTTP/2 connection over TLS, multiplexed by concurrent callers and
//! re-established when it breaks. The server is verified against the
//! newest trust bundle the client has seen (a bootstrap bundle at first,
//! then every bundle the CA returns), so a root rotation never locks a
//! client out: the new root reaches it (propagate) before the CA's own
//! certificate moves to the new intermediate (switch).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ca::TrustBundle;
use ca::api::{ErrorBody, SignRequest, SignResponse};
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ClientConfig;
use rustls::RootCertStore;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

use crate::tls::pem_certs;

/// Client failures.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No usable trust anchor.
    #[error("no trusted root certificate in the bundle")]
    NoRoots,
    /// Invalid server name.
    #[error("invalid server name {0:?}")]
    ServerName(String),
    /// TCP connect failed.
    #[error("connect to {addr}: {source}")]
    Connect {
        /// Address.
        addr: String,
        /// Cause.
        source: std::io::Error,
    },
    /// TLS handshake failed (e.g. the CA is not trusted).
    #[error("TLS with {addr}: {source}")]
    Tls {
        /// Address.
        addr: String,
        /// Cause.
        source: std::io::Error,
    },
    /// HTTP-level failure.
    #[error("HTTP: {0}")]
    Http(String),
    /// The CA answered with an error.
    #[error("CA refused ({status}, {}): {}", .body.reason, .body.error)]
    Refused {
        /// HTTP status.
        status: u16,
        /// Error body.
        body: ErrorBody,
    },
    /// The answer did not parse.
    #[error("bad answer from the CA: {0}")]
    Decode(String),
    /// No answer in time.
    #[error("timed out")]
    Timeout,
}

impl ClientError {
    /// Whether retrying later may help (the CA is down or overloaded),
    /// as opposed to a refusal that will not change.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Refused { status, .. } => *status >= 500,
            ClientError::NoRoots | ClientError::ServerName(_) | ClientError::Decode(_) => false,
            _ => true,
        }
    }
}

/// The CA API client.
pub struct CaClient {
    addr: String,
    server_name: ServerName<'static>,
    token: Option<String>,
    roots: Mutex<Arc<RootCertStore>>,
    /// Version of the bundle `roots` came from (none: the bootstrap bundle).
    trusted_version: std::sync::atomic::AtomicU64,
    conn: tokio::sync::Mutex<Option<SendRequest<Full<Bytes>>>>,
    timeout: Duration,
}

impl std::fmt::Debug for CaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaClient").field("addr", &self.addr).field("server_name", &self.server_name).finish()
    }
}

fn store(pem: &str) -> Result<RootCertStore, ClientError> {
    let mut roots = RootCertStore::empty();
    for c in pem_certs(pem) {
        let _ = roots.add(c);
    }
    if roots.is_empty() {
        return Err(ClientError::NoRoots);
    }
    Ok(roots)
}

impl CaClient {
    /// A client for the CA at `addr` (`host:port`), whose certificate names
    /// `server_name`, trusting the roots in `bundle_pem`, authenticating
    /// with `token` (signing needs it; bundle and status do not).
    pub fn new(addr: &str, server_name: &str, bundle_pem: &str, token: Option<String>) -> Result<Self, ClientError> {
        let server_name =
            ServerName::try_from(server_name.to_string()).map_err(|_| ClientError::ServerName(server_name.into()))?;
        Ok(Self {
            addr: addr.to_string(),
            server_name,
            token,
            roots: Mutex::new(Arc::new(store(bundle_pem)?)),
            trusted_version: std::sync::atomic::AtomicU64::new(0),
            conn: tokio::sync::Mutex::new(None),
            timeout: Duration::from_secs(10),
        })
    }

    /// Trusts `bundle` for future connections (a no-op for the version
    /// already trusted, so answers that repeat the bundle cost nothing).
    pub fn trust(&self, bundle: &TrustBundle) {
        use std::sync::atomic::Ordering;
        if self.trusted_version.load(Ordering::Relaxed) == bundle.version {
            return;
        }
        if let Ok(s) = store(&bundle.pem())
            && let Ok(mut r) = self.roots.lock()
        {
            *r = Arc::new(s);
            self.trusted_version.store(bundle.version, Ordering::Relaxed);
        }
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, ClientError> {
        let roots = self.roots.lock().map(|r| r.clone()).map_err(|_| ClientError::NoRoots)?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| ClientError::Http(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let tcp = TcpStream::connect(&self.addr)
            .await
            .map_err(|e| ClientError::Connect { addr: self.addr.clone(), source: e })?;
        let _ = tcp.set_nodelay(true);
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| ClientError::Tls { addr: self.addr.clone(), source: e })?;
        let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(send)
    }

    async fn sender(&self) -> Result<SendRequest<Full<Bytes>>, ClientError> {
        let mut guard = self.conn.lock().await;
        if let Some(s) = guard.as_ref()
            && !s.is_closed()
        {
            return Ok(s.clone());
        }
        let s = self.connect().await?;
        *guard = Some(s.clone());
        Ok(s)
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(header::HeaderName, String)],
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let mut last = None;
        // One retry on a fresh connection if the pooled one broke.
        for _ in 0..2 {
            let mut send = self.sender().await?;
            let uri = format!("https://{}{path}", self.addr);
            let mut b = Request::builder().method(method.clone()).uri(uri);
            for (k, v) in headers {
                b = b.header(k, v);
            }
            if body.is_some() {
                b = b.header(header::CONTENT_TYPE, "application/json");
            }
            let req = b
                .body(Full::new(Bytes::from(body.clone().unwrap_or_default())))
                .map_err(|e| ClientError::Http(e.to_string()))?;
            let fut = async {
                send.ready().await.map_err(|e| ClientError::Http(e.to_string()))?;
                let resp = send.send_request(req).await.map_err(|e| ClientError::Http(e.to_string()))?;
                let status = resp.status();
                let bytes = resp.into_body().collect().await.map_err(|e| ClientError::Http(e.to_string()))?;
                Ok::<_, ClientError>((status, bytes.to_bytes()))
            };
            match tokio::time::timeout(timeout, fut).await {
                Ok(Ok(r)) => return Ok(r),
                Ok(Err(e)) => {
                    *self.conn.lock().await = None;
                    last = Some(e);
                }
                Err(_) => {
                    *self.conn.lock().await = None;
                    return Err(ClientError::Timeout);
                }
            }
        }
        Err(last.unwrap_or(ClientError::Timeout))
    }

    fn refused(status: StatusCode, body: &[u8]) -> ClientError {
        let body = serde_json::from_slice(body).unwrap_or_else(|_| ErrorBody {
            reason: "unknown".into(),
            error: String::from_utf8_lossy(body).chars().take(200).collect(),
        });
        ClientError::Refused { status: status.as_u16(), body }
    }

    /// Asks for a certificate. The returned bundle is trusted from then on.
    pub async fn sign(&self, csr_pem: &str, ttl: Option<Duration>) -> Result<SignResponse, ClientError> {
        let body = serde_json::to_vec(&SignRequest { csr: csr_pem.to_string(), ttl_seconds: ttl.map(|d| d.as_secs()) })
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        let headers: Vec<(header::HeaderName, String)> =
            self.token.iter().map(|t| (header::AUTHORIZATION, format!("Bearer {t}"))).collect();
        let (status, bytes) = self.request(Method::POST, "/v1/sign", Some(body), &headers, self.timeout).await?;
        if status != StatusCode::OK {
            return Err(Self::refused(status, &bytes));
        }
        let r: SignResponse = serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))?;
        self.trust(&r.bundle);
        Ok(r)
    }

    /// The trust bundle. With `known` and `wait`, waits up to `wait` for a
    /// version other than `known`; `None` means it did not change.
    pub async fn bundle(&self, known: Option<u64>, wait: Option<Duration>) -> Result<Option<TrustBundle>, ClientError> {
        let path = match wait {
            Some(w) => format!("/v1/bundle?wait={}", w.as_secs()),
            None => "/v1/bundle".to_string(),
        };
        let headers: Vec<(header::HeaderName, String)> =
            known.iter().map(|v| (header::IF_NONE_MATCH, format!("\"{v}\""))).collect();
        let timeout = self.timeout + wait.unwrap_or_default();
        let (status, bytes) = self.request(Method::GET, &path, None, &headers, timeout).await?;
        match status {
            StatusCode::NOT_MODIFIED => Ok(None),
            StatusCode::OK => {
                let b: TrustBundle = serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))?;
                self.trust(&b);
                Ok(Some(b))
            }
            s => Err(Self::refused(s, &bytes)),
        }
    }

    /// The CA status (JSON).
    pub async fn status(&self) -> Result<serde_json::Value, ClientError> {
        let (status, bytes) = self.request(Method::GET, "/v1/status", None, &[], self.timeout).await?;
        if status != StatusCode::OK {
            return Err(Self::refused(status, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }
}
