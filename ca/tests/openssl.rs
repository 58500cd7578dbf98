//! Issued chains checked by an independent implementation: `openssl verify`
//! and `openssl x509 -text`, and CSRs made by `openssl req` (RSA sizes).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use ca::{Authority, AuthorityParams, CaState, CsrError, IssuePolicy, Signer, SpiffeId, TrustDomain, validate_csr};
use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use time::OffsetDateTime;

fn openssl(args: &[&str], dir: &Path) -> (bool, String) {
    let out =
        Command::new("openssl").args(args).current_dir(dir).output().expect("openssl is installed by the test script");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

const API: &str = "spiffe://cluster.local/ns/bookstore/sa/api";

fn issue(auth: &Authority, now: OffsetDateTime) -> ca::Issued {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.subject_alt_names = vec![SanType::URI(API.to_string().try_into().unwrap())];
    let csr = p.serialize_request(&key).unwrap().pem().unwrap();
    let td = TrustDomain::new("cluster.local").unwrap();
    let v = validate_csr(csr.as_bytes(), &td).unwrap();
    Signer::new(auth).unwrap().issue(&v, &SpiffeId::parse(API).unwrap(), None, &IssuePolicy::default(), now).unwrap()
}

#[test]
fn openssl_verifies_the_chain_and_sees_only_the_identity() {
    let dir = tempfile::tempdir().unwrap();
    let td = TrustDomain::new("cluster.local").unwrap();
    let now = OffsetDateTime::now_utc();
    let auth = Authority::generate(&td, now, AuthorityParams::default()).unwrap();
    let leaf = issue(&auth, now);
    std::fs::write(dir.path().join("leaf.pem"), &leaf.chain[0]).unwrap();
    std::fs::write(dir.path().join("int.pem"), &leaf.chain[1]).unwrap();
    let state = CaState::new(td.clone(), auth.clone(), IssuePolicy::default(), now);
    std::fs::write(dir.path().join("bundle.pem"), state.bundle(now).pem()).unwrap();

    let (ok, out) = openssl(
        &["verify", "-CAfile", "bundle.pem", "-untrusted", "int.pem", "-purpose", "sslclient", "leaf.pem"],
        dir.path(),
    );
    assert!(ok, "{out}");
    let (ok, out) = openssl(
        &["verify", "-CAfile", "bundle.pem", "-untrusted", "int.pem", "-purpose", "sslserver", "leaf.pem"],
        dir.path(),
    );
    assert!(ok, "{out}");

    let (ok, text) = openssl(&["x509", "-in", "leaf.pem", "-noout", "-text"], dir.path());
    assert!(ok, "{text}");
    assert!(text.contains(&format!("URI:{API}")), "{text}");
    assert!(text.contains("X509v3 Subject Alternative Name: critical"), "{text}");
    assert!(text.contains("TLS Web Server Authentication, TLS Web Client Authentication"), "{text}");
    assert!(text.contains("CA:FALSE"), "{text}");
    assert!(text.contains("Digital Signature"), "{text}");
    assert!(!text.contains("DNS:") && !text.contains("IP Address:"), "{text}");

    // A chain from another CA does not verify against this bundle.
    let other = Authority::generate(&td, now, AuthorityParams::default()).unwrap();
    let foreign = issue(&other, now);
    std::fs::write(dir.path().join("foreign.pem"), &foreign.chain[0]).unwrap();
    std::fs::write(dir.path().join("foreign-int.pem"), &foreign.chain[1]).unwrap();
    let (ok, _) =
        openssl(&["verify", "-CAfile", "bundle.pem", "-untrusted", "foreign-int.pem", "foreign.pem"], dir.path());
    assert!(!ok, "a foreign chain verified");
}

#[test]
fn during_rotation_both_generations_verify_against_the_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let td = TrustDomain::new("cluster.local").unwrap();
    let now = OffsetDateTime::now_utc();
    let mut state = CaState::new(
        td.clone(),
        Authority::generate(&td, now, AuthorityParams::default()).unwrap(),
        IssuePolicy::default(),
        now,
    );
    let old_leaf = issue(&state.active, now);
    state.prepare(now, || Authority::generate(&td, now, AuthorityParams::default())).unwrap();
    state.propagate(now).unwrap();
    state.switch(now, true).unwrap();
    let new_leaf = issue(&state.active, now);
    std::fs::write(dir.path().join("bundle.pem"), state.bundle(now).pem()).unwrap();
    for (name, leaf) in [("old", &old_leaf), ("new", &new_leaf)] {
        std::fs::write(dir.path().join(format!("{name}.pem")), &leaf.chain[0]).unwrap();
        std::fs::write(dir.path().join(format!("{name}-int.pem")), &leaf.chain[1]).unwrap();
        let (ok, out) = openssl(
            &["verify", "-CAfile", "bundle.pem", "-untrusted", &format!("{name}-int.pem"), &format!("{name}.pem")],
            dir.path(),
        );
        assert!(ok, "{name}: {out}");
    }
    // After retire only the new generation verifies.
    state.retire(now, true).unwrap();
    std::fs::write(dir.path().join("bundle.pem"), state.bundle(now).pem()).unwrap();
    let (ok, _) = openssl(&["verify", "-CAfile", "bundle.pem", "-untrusted", "old-int.pem", "old.pem"], dir.path());
    assert!(!ok);
    let (ok, out) = openssl(&["verify", "-CAfile", "bundle.pem", "-untrusted", "new-int.pem", "new.pem"], dir.path());
    assert!(ok, "{out}");
}

#[test]
fn rsa_requests_from_openssl_are_sized() {
    let dir = tempfile::tempdir().unwrap();
    let td = TrustDomain::new("cluster.local").unwrap();
    for (bits, ok) in [("1024", false), ("2048", true)] {
        let (done, out) = openssl(
            &[
                "req",
                "-new",
                "-newkey",
                &format!("rsa:{bits}"),
                "-nodes",
                "-keyout",
                "k.pem",
                "-out",
                "r.pem",
                "-subj",
                "/",
                "-addext",
                &format!("subjectAltName=URI:{API}"),
            ],
            dir.path(),
        );
        assert!(done, "{out}");
        let csr = std::fs::read(dir.path().join("r.pem")).unwrap();
        let r = validate_csr(&csr, &td);
        if ok {
            assert!(r.is_ok(), "{r:?}");
        } else {
            assert!(matches!(r, Err(CsrError::RsaSize(1024))), "{r:?}");
        }
    }
    // P-521 is not on the list.
    let (done, out) = openssl(
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-521",
            "-nodes",
            "-keyout",
            "k.pem",
            "-out",
            "r.pem",
            "-subj",
            "/",
            "-addext",
            &format!("subjectAltName=URI:{API}"),
        ],
        dir.path(),
    );
    assert!(done, "{out}");
    let csr = std::fs::read(dir.path().join("r.pem")).unwrap();
    assert!(matches!(validate_csr(&csr, &td), Err(CsrError::KeyType(_))));
}
