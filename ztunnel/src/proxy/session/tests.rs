//! The record layer against rustls' own stream in both roles, and against
//! itself, with key updates, fragmented handshakes and bad records.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A client and a server configuration around one self-signed
/// certificate, both allowing secret extraction.
fn configs() -> (Arc<ClientConfig>, Arc<ServerConfig>) {
    let ck = rcgen::generate_simple_self_signed(vec!["peer.test".into()]).unwrap();
    let cert = ck.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let mut c = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.enable_secret_extraction = true;
    let mut s = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    s.enable_secret_extraction = true;
    (Arc::new(c), Arc::new(s))
}

async fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (s, _) = l.accept().await.unwrap();
    (c, s)
}

fn name() -> ServerName<'static> {
    ServerName::try_from("peer.test").unwrap()
}

fn payload(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

/// Writes `mine` in uneven pieces (and then closes) while reading the
/// peer's bytes to EOF; returns what was read.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(io: S, mine: Vec<u8>) -> Vec<u8> {
    let (mut r, mut w) = tokio::io::split(io);
    let writer = tokio::spawn(async move {
        let mut at = 0;
        let mut step = 1;
        while at < mine.len() {
            let end = (at + step).min(mine.len());
            w.write_all(&mine[at..end]).await.unwrap();
            at = end;
            step = (step * 7 + 13) % 70_000 + 1;
        }
        w.shutdown().await.unwrap();
    });
    let mut got = Vec::new();
    r.read_to_end(&mut got).await.unwrap();
    writer.await.unwrap();
    got
}

#[tokio::test]
async fn both_sides_here_carry_bytes_across_many_key_updates_and_close_cleanly() {
    let (cc, sc) = configs();
    let (c, s) = tcp_pair().await;
    let server = tokio::spawn(async move { super::accept(&sc, s).await.unwrap() });
    let mut client = super::connect(cc, name(), c).await.unwrap();
    let mut server = server.await.unwrap();
    assert_eq!(server.server_name(), Some("peer.test"));
    assert_eq!(client.peer_certificates().len(), 1);
    // A key update every 5 records each way: ~150 of them in 2.5 MB.
    client.update_after(5);
    server.update_after(5);
    let (a, b) = (payload(2_500_000, 1), payload(1_300_000, 2));
    let (got_b, got_a) = tokio::join!(exchange(client, a.clone()), exchange(server, b.clone()));
    assert!(got_a == a && got_b == b, "bytes differ after key updates");
}

#[tokio::test]
async fn a_rustls_server_and_this_client_agree_through_key_updates_both_ways() {
    let (cc, sc) = configs();
    // The server's handshake messages arrive split over many records.
    let mut sc = ServerConfig::clone(&sc);
    sc.max_fragment_size = Some(100);
    let sc = Arc::new(sc);
    let (c, s) = tcp_pair().await;
    let server = tokio::spawn(async move {
        let mut tls = tokio_rustls::TlsAcceptor::from(sc).accept(s).await.unwrap();
        // rustls asks this side to update too (update_requested).
        let mut first = vec![0; 100_000];
        tls.read_exact(&mut first).await.unwrap();
        tls.get_mut().1.refresh_traffic_keys().unwrap();
        let b = payload(900_000, 4);
        let (mut r, mut w) = tokio::io::split(tls);
        let w = tokio::spawn(async move {
            w.write_all(&b).await.unwrap();
            w.shutdown().await.unwrap();
        });
        let mut rest = Vec::new();
        let mut b = vec![0; 65536];
        loop {
            match r.read(&mut b).await {
                Ok(0) => break,
                Ok(n) => rest.extend_from_slice(&b[..n]),
                Err(e) => panic!("rustls server read after {} bytes: {e:?}", rest.len() + 100_000),
            }
        }
        w.await.unwrap();
        first.extend(rest);
        first
    });
    let mut client = super::connect(cc, name(), c).await.unwrap();
    client.update_after(7);
    let a = payload(1_700_000, 3);
    let got = exchange(client, a.clone()).await;
    assert!(got == payload(900_000, 4), "client read wrong bytes");
    assert!(server.await.unwrap() == a, "rustls server read wrong bytes");
}

#[tokio::test]
async fn this_server_and_a_rustls_client_agree_and_a_requested_key_update_is_answered() {
    let (cc, sc) = configs();
    // The client's handshake messages arrive split over many records.
    let mut cc = ClientConfig::clone(&cc);
    cc.max_fragment_size = Some(100);
    let cc = Arc::new(cc);
    let (c, s) = tcp_pair().await;
    let client = tokio::spawn(async move {
        let mut tls = tokio_rustls::TlsConnector::from(cc).connect(name(), c).await.unwrap();
        let mut x = [0; 1];
        tls.read_exact(&mut x).await.unwrap();
        tls.write_all(b"hello ").await.unwrap();
        tls.flush().await.unwrap();
        // key_update with update_requested, between two records.
        tls.get_mut().1.refresh_traffic_keys().unwrap();
        tls.write_all(b"world!").await.unwrap();
        tls.flush().await.unwrap();
        exchange(tls, payload(600_000, 6)).await
    });
    let mut server = super::accept(&sc, s).await.unwrap();
    server.write_all(b"x").await.unwrap();
    server.flush().await.unwrap();
    // (The seq counts the server's session tickets too.)
    let before = server.tx.seq();
    assert!(before >= 1);
    let mut hello = [0; 12];
    server.read_exact(&mut hello).await.unwrap();
    assert_eq!(&hello, b"hello world!");
    // Answered: this side sent its own key_update and moved to its
    // next key (the rustls client reads the rest under it).
    assert_eq!((server.tx.seq(), server.rx.seq()), (0, 1), "tx was at {before}");
    server.update_after(3);
    let got = exchange(server, payload(800_000, 5)).await;
    assert!(got == payload(600_000, 6), "server read wrong bytes");
    assert!(client.await.unwrap() == payload(800_000, 5), "rustls client read wrong bytes");
}

#[tokio::test]
async fn tampered_truncated_or_unprotected_records_end_the_connection_with_an_error() {
    // The server side talks to a raw socket once the handshake is done
    // by a rustls client whose socket is then taken over.
    for case in 0..3 {
        let (cc, sc) = configs();
        let (c, s) = tcp_pair().await;
        let client = tokio::spawn(async move {
            let tls = tokio_rustls::TlsConnector::from(cc).connect(name(), c).await.unwrap();
            let (mut raw, _) = tls.into_inner();
            match case {
                // A record whose body was altered on the way.
                0 => {
                    raw.write_all(&[
                        23, 3, 3, 0, 20, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20,
                    ])
                    .await
                }
                // A plaintext handshake record after the handshake.
                1 => raw.write_all(&[22, 3, 3, 0, 4, 1, 0, 0, 0]).await,
                // Half a record, then EOF.
                _ => raw.write_all(&[23, 3, 3, 1, 0, 9, 9]).await,
            }
            .unwrap();
            raw.shutdown().await.unwrap();
            // Whatever the server answers, it must not hang.
            let mut sink = Vec::new();
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), raw.read_to_end(&mut sink)).await;
        });
        let mut server = super::accept(&sc, s).await.unwrap();
        let mut buf = [0; 64];
        let e = server.read(&mut buf).await.unwrap_err();
        let want = if case == 2 { std::io::ErrorKind::UnexpectedEof } else { std::io::ErrorKind::InvalidData };
        assert_eq!(e.kind(), want, "case {case}: {e}");
        drop(server);
        client.await.unwrap();
    }
}

#[tokio::test]
async fn a_failed_handshake_is_an_error_on_both_sides_and_the_peer_gets_an_alert() {
    let (_, sc) = configs();
    let (other, _) = configs();
    let (c, s) = tcp_pair().await;
    // The client trusts another certificate.
    let client = tokio::spawn(async move { super::connect(other, name(), c).await });
    let server = super::accept(&sc, s).await;
    let ce = client.await.unwrap().unwrap_err();
    assert!(ce.to_string().contains("invalid peer certificate"), "{ce}");
    let se = server.unwrap_err();
    // The server learnt why from the client's alert, not from a reset.
    assert!(se.to_string().to_lowercase().contains("alert"), "{se}");
}
