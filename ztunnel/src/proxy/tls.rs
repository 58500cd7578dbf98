//! mTLS for HBONE: certificates and verifiers that read the secret cache on
//! every handshake.
//!
//! - The client (source node) presents the **source workload's**
//!   certificate and expects the **destination workload's** identity from
//!   the server; it names that identity in SNI (`<sa>.<ns>.hbone.invalid`).
//! - The server (destination node) presents the certificate of the identity
//!   the SNI names, if it holds one (only identities of its own pods), and
//!   requires a client certificate chaining to the current trust bundle,
//!   valid now, with exactly one SPIFFE ID in the bundle's trust domain.
//!   Whether that identity owns the claimed source address is checked per
//!   tunnel (see `inbound`).
//! - TLS 1.3 only, ALPN `h2`, aws-lc-rs.

use std::sync::Arc;

use ca::SpiffeId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, verify_server_cert_signed_by_trust_anchor};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, DistinguishedName, Error, ServerConfig, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::identity::SecretCache;

const SNI_SUFFIX: &str = ".hbone.invalid";

/// The SNI naming `id` (the trust domain is the bundle's).
pub fn sni_for(id: &SpiffeId) -> String {
    format!("{}.{}{SNI_SUFFIX}", id.service_account(), id.namespace())
}

/// The identity an SNI names. Namespaces have no dots, so the last label
/// before the suffix is the namespace and the rest the service account.
pub fn identity_from_sni(sni: &str, cache: &SecretCache) -> Option<SpiffeId> {
    let rest = sni.strip_suffix(SNI_SUFFIX)?;
    let (sa, ns) = rest.rsplit_once('.')?;
    let td = cache.bundle()?.trust_domain().clone();
    SpiffeId::new(&td, ns, sa).ok()
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn identity_error(e: impl std::fmt::Display) -> Error {
    Error::General(format!("peer identity: {e}"))
}

/// Checks the peer's leaf names exactly one workload in `cache`'s trust
/// domain, and returns it.
pub fn peer_identity(cache: &SecretCache, end_entity: &CertificateDer<'_>) -> Result<SpiffeId, Error> {
    let id = ca::peer::identity_of(end_entity).map_err(identity_error)?;
    let bundle = cache.bundle().ok_or_else(|| Error::General("no trust bundle yet".into()))?;
    if id.trust_domain() != bundle.trust_domain() {
        return Err(identity_error(format!("{id} is not in trust domain {}", bundle.trust_domain())));
    }
    Ok(id)
}

/// Presents one workload's current certificate.
#[derive(Debug)]
struct ClientCert {
    cache: Arc<SecretCache>,
    id: SpiffeId,
}

impl ResolvesClientCert for ClientCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.cache.cert(&self.id).map(|c| c.certified.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The handshake-signature part of both verifiers: the provider's
/// algorithms, nothing of our own.
macro_rules! signature_methods {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider.signature_verification_algorithms.supported_schemes()
        }
    };
}

/// Verifies the server: chain to the current bundle (validity, serverAuth)
/// and exactly the expected workload identity. Host names play no part.
#[derive(Debug)]
struct ServerVerifier {
    cache: Arc<SecretCache>,
    expect: SpiffeId,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let bundle = self.cache.bundle().ok_or_else(|| Error::General("no trust bundle yet".into()))?;
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &bundle.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let id = peer_identity(&self.cache, end_entity)?;
        if id != self.expect {
            return Err(identity_error(format!("server is {id}, expected {}", self.expect)));
        }
        Ok(ServerCertVerified::assertion())
    }

    signature_methods!();
}

/// Requires a client certificate that chains to the current bundle and
/// names one workload of its trust domain.
#[derive(Debug)]
struct ClientVerifier {
    cache: Arc<SecretCache>,
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for ClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let bundle = self.cache.bundle().ok_or_else(|| Error::General("no trust bundle yet".into()))?;
        bundle.client_verifier.verify_client_cert(end_entity, intermediates, now)?;
        peer_identity(&self.cache, end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    signature_methods!();
}

/// Presents the certificate of the identity named in SNI.
#[derive(Debug)]
struct ServerCerts {
    cache: Arc<SecretCache>,
}

impl ResolvesServerCert for ServerCerts {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let id = identity_from_sni(hello.server_name()?, &self.cache)?;
        self.cache.cert(&id).map(|c| c.certified.clone())
    }
}

/// Client configuration for tunnels from `src` to `dst`.
pub fn client_config(cache: &Arc<SecretCache>, src: &SpiffeId, dst: &SpiffeId) -> Result<Arc<ClientConfig>, Error> {
    let provider = provider();
    let mut c = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ServerVerifier {
            cache: cache.clone(),
            expect: dst.clone(),
            provider,
        }))
        .with_client_cert_resolver(Arc::new(ClientCert { cache: cache.clone(), id: src.clone() }));
    c.alpn_protocols = vec![b"h2".to_vec()];
    // Each pooled connection is long-lived and bound to one identity pair;
    // resumption would skip the per-handshake checks and a session cache
    // costs ~14 KiB per configuration.
    c.resumption = rustls::client::Resumption::disabled();
    // The traffic secrets go to `session`'s record layer after the
    // handshake (rustls keeps the key schedule).
    c.enable_secret_extraction = true;
    Ok(Arc::new(c))
}

/// Server configuration of the HBONE listener.
pub fn server_config(cache: &Arc<SecretCache>) -> Result<Arc<ServerConfig>, Error> {
    let provider = provider();
    let mut c = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(ClientVerifier { cache: cache.clone(), provider }))
        .with_cert_resolver(Arc::new(ServerCerts { cache: cache.clone() }));
    c.alpn_protocols = vec![b"h2".to_vec()];
    // Clients never resume (see `client_config`): no tickets to mint.
    c.send_tls13_tickets = 0;
    c.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    c.enable_secret_extraction = true;
    Ok(Arc::new(c))
}
