//! CA core: issuance, CSR rejection, import, rotation — no network, no files
//! except what `openssl` needs to check our output independently.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ca::rotation::Stage;
use ca::{
    Authority, AuthorityParams, CaError, CaState, CsrError, IssuePolicy, KeyKind, Outcome, RotationError, Signer,
    SpiffeId, TrustDomain, validate_csr,
};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, IsCa, KeyPair, PKCS_ECDSA_P256_SHA256,
    PKCS_ECDSA_P384_SHA384, PKCS_ED25519, SanType,
};
use time::{Duration, OffsetDateTime, macros::datetime};

const NOW: OffsetDateTime = datetime!(2026-11-22 12:00 UTC);

fn td() -> TrustDomain {
    TrustDomain::new("cluster.local").unwrap()
}

fn csr_with(key: &KeyPair, sans: Vec<SanType>, ca: bool) -> String {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.subject_alt_names = sans;
    if ca {
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    }
    p.serialize_request(key).unwrap().pem().unwrap()
}

fn uri(s: &str) -> SanType {
    SanType::URI(s.to_string().try_into().unwrap())
}

fn p256() -> KeyPair {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap()
}

const API: &str = "spiffe://cluster.local/ns/bookstore/sa/api";

#[test]
fn accepts_supported_key_types() {
    for (alg, kind) in [
        (&PKCS_ECDSA_P256_SHA256, KeyKind::EcdsaP256),
        (&PKCS_ECDSA_P384_SHA384, KeyKind::EcdsaP384),
        (&PKCS_ED25519, KeyKind::Ed25519),
    ] {
        let key = KeyPair::generate_for(alg).unwrap();
        let v = validate_csr(csr_with(&key, vec![uri(API)], false).as_bytes(), &td()).unwrap();
        assert_eq!(v.key, kind);
        assert_eq!(v.identity.to_string(), API);
    }
}

#[test]
fn accepts_der_input() {
    let key = p256();
    let mut p = CertificateParams::default();
    p.subject_alt_names = vec![uri(API)];
    let der = p.serialize_request(&key).unwrap().der().to_vec();
    assert!(validate_csr(&der, &td()).is_ok());
}

#[test]
fn rejects_every_bad_request_with_its_reason() {
    let key = p256();
    type Check = fn(&CsrError) -> bool;
    let cases: Vec<(&str, Vec<u8>, Check)> = vec![
        ("empty", b"".to_vec(), |e| matches!(e, CsrError::Empty)),
        ("garbage DER", b"\x30\x03\x02\x01".to_vec(), |e| matches!(e, CsrError::Der(_))),
        ("random text", b"hello world".to_vec(), |e| matches!(e, CsrError::Der(_))),
        ("bad PEM", b"-----BEGIN CERTIFICATE REQUEST-----\n!!!\n-----END CERTIFICATE REQUEST-----\n".to_vec(), |e| {
            matches!(e, CsrError::Pem(_))
        }),
        ("oversized", vec![b'A'; 20_000], |e| matches!(e, CsrError::TooLarge(_))),
        ("no SAN", csr_with(&key, vec![], false).into_bytes(), |e| matches!(e, CsrError::NoIdentity)),
        (
            "two URIs",
            csr_with(&key, vec![uri(API), uri("spiffe://cluster.local/ns/a/sa/b")], false).into_bytes(),
            |e| matches!(e, CsrError::ManyIdentities(2)),
        ),
        (
            "extra DNS SAN",
            csr_with(&key, vec![uri(API), SanType::DnsName("api.example.com".try_into().unwrap())], false).into_bytes(),
            |e| matches!(e, CsrError::OtherSan(_)),
        ),
        (
            "IP SAN",
            csr_with(&key, vec![uri(API), SanType::IpAddress("10.0.0.1".parse().unwrap())], false).into_bytes(),
            |e| matches!(e, CsrError::OtherSan(_)),
        ),
        ("CA:true", csr_with(&key, vec![uri(API)], true).into_bytes(), |e| matches!(e, CsrError::CaRequested)),
        (
            "foreign domain",
            csr_with(&key, vec![uri("spiffe://evil.example/ns/bookstore/sa/api")], false).into_bytes(),
            |e| matches!(e, CsrError::ForeignTrustDomain { .. }),
        ),
        ("not SPIFFE", csr_with(&key, vec![uri("https://cluster.local/ns/a/sa/b")], false).into_bytes(), |e| {
            matches!(e, CsrError::Identity(_))
        }),
        ("bad path", csr_with(&key, vec![uri("spiffe://cluster.local/ns/a")], false).into_bytes(), |e| {
            matches!(e, CsrError::Identity(_))
        }),
        (
            "certificate not CSR",
            Authority::generate(&td(), NOW, AuthorityParams::default()).unwrap().root_pem.into_bytes(),
            |e| matches!(e, CsrError::Pem(_)),
        ),
    ];
    for (name, input, check) in cases {
        let err = validate_csr(&input, &td()).expect_err(name);
        assert!(check(&err), "{name}: unexpected error {err:?}");
        assert!(!err.to_string().is_empty());
    }
}

#[test]
fn rejects_a_tampered_signature() {
    let key = p256();
    let mut p = CertificateParams::default();
    p.subject_alt_names = vec![uri(API)];
    let mut der = p.serialize_request(&key).unwrap().der().to_vec();
    let last = der.len() - 3;
    der[last] ^= 0x55;
    assert!(matches!(validate_csr(&der, &td()), Err(CsrError::BadSignature)));
}

#[test]
fn rejects_trailing_bytes() {
    let key = p256();
    let mut p = CertificateParams::default();
    p.subject_alt_names = vec![uri(API)];
    let mut der = p.serialize_request(&key).unwrap().der().to_vec();
    der.extend_from_slice(b"xx");
    assert!(matches!(validate_csr(&der, &td()), Err(CsrError::Trailing(2))));
}

fn issue_for(auth: &Authority, id: &str, ttl: Option<Duration>, policy: &IssuePolicy) -> ca::Issued {
    let key = p256();
    let v = validate_csr(csr_with(&key, vec![uri(id)], false).as_bytes(), &td()).unwrap();
    Signer::new(auth).unwrap().issue(&v, &SpiffeId::parse(id).unwrap(), ttl, policy, NOW).unwrap()
}

#[test]
fn issued_certificate_has_exactly_the_authorised_identity_and_clamped_lifetime() {
    let auth = Authority::generate(&td(), NOW, AuthorityParams::default()).unwrap();
    let policy = IssuePolicy::default();
    let leaf = issue_for(&auth, API, None, &policy);
    assert_eq!(leaf.not_after, NOW + Duration::hours(24));
    assert_eq!(leaf.not_before, NOW - Duration::minutes(5));
    assert_eq!(leaf.chain.len(), 2);
    assert_eq!(leaf.serial.len(), 32, "128-bit serial");
    let long = issue_for(&auth, API, Some(Duration::days(30)), &policy);
    assert_eq!(long.not_after, NOW + policy.max_ttl);
    let short = issue_for(&auth, API, Some(Duration::seconds(1)), &policy);
    assert_eq!(short.not_after, NOW + policy.min_ttl);
    assert_ne!(leaf.serial, long.serial);

    let (_, pem) = x509_parser::pem::parse_x509_pem(leaf.chain[0].as_bytes()).unwrap();
    let cert = pem.parse_x509().unwrap();
    assert!(cert.subject().iter().next().is_none(), "empty subject");
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert!(san.critical, "SAN is critical when the subject is empty");
    let names: Vec<String> = san.value.general_names.iter().map(|n| n.to_string()).collect();
    assert_eq!(names, vec![format!("URI({API})")]);
    assert!(!cert.basic_constraints().unwrap().unwrap().value.ca);
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && !ku.key_cert_sign());
}

#[test]
fn the_authorised_identity_must_be_the_requested_one() {
    let auth = Authority::generate(&td(), NOW, AuthorityParams::default()).unwrap();
    let key = p256();
    let v = validate_csr(csr_with(&key, vec![uri(API)], false).as_bytes(), &td()).unwrap();
    let other = SpiffeId::parse("spiffe://cluster.local/ns/bookstore/sa/db").unwrap();
    let err = Signer::new(&auth).unwrap().issue(&v, &other, None, &IssuePolicy::default(), NOW).unwrap_err();
    assert!(matches!(err, CaError::IdentityMismatch { .. }));
}

#[test]
fn leaves_never_outlive_the_intermediate() {
    let params = AuthorityParams { root_validity: Duration::days(10), intermediate_validity: Duration::hours(2) };
    let auth = Authority::generate(&td(), NOW, params).unwrap();
    let leaf = issue_for(&auth, API, None, &IssuePolicy::default());
    assert_eq!(leaf.not_after, auth.intermediate_info().unwrap().not_after);
}

#[test]
fn keys_never_print() {
    let auth = Authority::generate(&td(), NOW, AuthorityParams::default()).unwrap();
    let state = CaState::new(td(), auth.clone(), IssuePolicy::default(), NOW);
    let shown = format!("{auth:?} {state:?} {:?}", Signer::new(&auth).unwrap());
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");
    let status = serde_json::to_string(&state.status(NOW).unwrap()).unwrap();
    assert!(!status.contains("PRIVATE KEY"));
    assert!(!serde_json::to_string(&state.bundle(NOW)).unwrap().contains("PRIVATE KEY"));
    // The persisted state does hold them (it is written 0600).
    assert!(state.to_json().contains("PRIVATE KEY"));
}

#[test]
fn import_checks_the_material() {
    let a = Authority::generate(&td(), NOW, AuthorityParams::default()).unwrap();
    let b = Authority::generate(&td(), NOW, AuthorityParams::default()).unwrap();
    let p = AuthorityParams::default();
    // cert-manager / Istio plug-in layout: root, intermediate chain, key.
    let imported =
        Authority::import(&td(), &a.root_pem, &a.intermediate_pem, a.intermediate_key.expose(), NOW, p).unwrap();
    assert!(imported.root_key.is_none());
    assert_eq!(imported.intermediate_pem, a.intermediate_pem);
    // A chain file that ends with the root.
    let chain = format!("{}{}", a.intermediate_pem, a.root_pem);
    let imported = Authority::import(&td(), &a.root_pem, &chain, a.intermediate_key.expose(), NOW, p).unwrap();
    assert!(imported.chain_pem.is_empty());
    // Root and root key: an intermediate is generated.
    let root_key = a.root_key.as_ref().unwrap().expose();
    let own = Authority::import(&td(), &a.root_pem, &a.root_pem, root_key, NOW, p).unwrap();
    assert!(own.root_key.is_some());
    assert_ne!(own.intermediate_pem, a.intermediate_pem);
    issue_for(&own, API, None, &IssuePolicy::default());

    for (what, root, chain, key) in [
        ("key of another CA", &a.root_pem, &a.intermediate_pem, b.intermediate_key.expose()),
        ("intermediate of another root", &a.root_pem, &b.intermediate_pem, b.intermediate_key.expose()),
        ("garbage root", &"not a cert".to_string(), &a.intermediate_pem, a.intermediate_key.expose()),
        (
            "garbage key",
            &a.root_pem,
            &a.intermediate_pem,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        ),
    ] {
        assert!(Authority::import(&td(), root, chain, key, NOW, p).is_err(), "{what} accepted");
    }
    // A leaf is not a CA.
    let leaf = issue_for(&a, API, None, &IssuePolicy::default());
    let err = Authority::import(&td(), &a.root_pem, &leaf.chain[0], a.intermediate_key.expose(), NOW, p).unwrap_err();
    assert!(err.to_string().contains("not a CA"), "{err}");
    // Expired material.
    let later = NOW + Duration::days(400);
    let err =
        Authority::import(&td(), &a.root_pem, &a.intermediate_pem, a.intermediate_key.expose(), later, p).unwrap_err();
    assert!(err.to_string().contains("not valid now"), "{err}");
}

fn roots(state: &CaState, now: OffsetDateTime) -> Vec<String> {
    state.bundle(now).roots.into_iter().map(|r| r.authority).collect()
}

#[test]
fn full_rotation_with_preconditions_and_idempotence() {
    let old = Authority::generate(&td(), NOW, AuthorityParams::default()).unwrap();
    let old_id = old.id.clone();
    let mut s = CaState::new(td(), old, IssuePolicy::default(), NOW);
    let v0 = s.version;
    assert_eq!(roots(&s, NOW), vec![old_id.clone()]);

    // Steps out of order are refused with the stage named.
    for r in [s.clone().propagate(NOW), s.clone().switch(NOW, true)] {
        assert!(matches!(r, Err(CaError::Rotation(RotationError::WrongStage { .. }))), "{r:?}");
    }
    assert_eq!(s.clone().retire(NOW, false).unwrap(), Outcome::Unchanged);
    assert_eq!(s.clone().abort(NOW).unwrap(), Outcome::Unchanged);

    let mut generated = 0;
    let t1 = NOW + Duration::minutes(1);
    assert_eq!(
        s.prepare(t1, || {
            generated += 1;
            Authority::generate(&td(), t1, AuthorityParams::default())
        })
        .unwrap(),
        Outcome::Changed
    );
    assert_eq!(s.prepare(t1, || unreachable!("idempotent prepare generates nothing")).unwrap(), Outcome::Unchanged);
    assert_eq!(generated, 1);
    let Stage::Prepared { next, .. } = &s.stage else { panic!() };
    let new_id = next.id.clone();
    assert_eq!(roots(&s, t1), vec![old_id.clone()], "prepared roots are not trusted yet");
    assert_eq!(s.bundle(t1).signer, old_id);

    let t2 = t1 + Duration::minutes(1);
    assert_eq!(s.propagate(t2).unwrap(), Outcome::Changed);
    assert_eq!(s.propagate(t2).unwrap(), Outcome::Unchanged);
    assert_eq!(roots(&s, t2), vec![old_id.clone(), new_id.clone()]);
    assert_eq!(s.bundle(t2).signer, old_id, "old intermediate still signs");

    // Too early to switch: the bundle needs time to reach every agent.
    let err = s.switch(t2 + Duration::seconds(5), false).unwrap_err();
    assert!(matches!(err, CaError::Rotation(RotationError::NotYet { step: "switch", .. })), "{err}");
    let t3 = t2 + s.min_propagation;
    assert_eq!(s.switch(t3, false).unwrap(), Outcome::Changed);
    assert_eq!(s.switch(t3, false).unwrap(), Outcome::Unchanged);
    assert_eq!(s.bundle(t3).signer, new_id);
    assert_eq!(roots(&s, t3), vec![new_id.clone(), old_id.clone()]);
    let leaf = issue_for(&s.active, API, None, &s.policy);
    assert_eq!(leaf.authority, new_id);

    // Leaves of the old intermediate may live for max_ttl after the switch.
    let err = s.retire(t3 + Duration::hours(1), false).unwrap_err();
    assert!(matches!(err, CaError::Rotation(RotationError::NotYet { step: "retire", .. })), "{err}");
    let t4 = t3 + s.policy.max_ttl;
    assert_eq!(s.retire(t4, false).unwrap(), Outcome::Changed);
    assert_eq!(s.retire(t4, false).unwrap(), Outcome::Unchanged);
    assert_eq!(roots(&s, t4), vec![new_id.clone()]);
    assert_eq!(s.stage, Stage::Stable);
    assert!(s.version > v0);

    // The state survives a round trip through its persisted form.
    let back = CaState::from_json(&s.to_json()).unwrap();
    assert_eq!(back, s);
}

#[test]
fn forced_steps_skip_the_wait_and_say_so() {
    let mut s = CaState::new(
        td(),
        Authority::generate(&td(), NOW, AuthorityParams::default()).unwrap(),
        IssuePolicy::default(),
        NOW,
    );
    s.prepare(NOW, || Authority::generate(&td(), NOW, AuthorityParams::default())).unwrap();
    s.propagate(NOW).unwrap();
    s.switch(NOW, true).unwrap();
    s.retire(NOW, true).unwrap();
    assert!(s.history.last().unwrap().event.contains("forced"));
    assert_eq!(s.bundle(NOW).roots.len(), 1);
}

#[test]
fn abort_from_every_stage_returns_to_the_old_signer() {
    let base = CaState::new(
        td(),
        Authority::generate(&td(), NOW, AuthorityParams::default()).unwrap(),
        IssuePolicy::default(),
        NOW,
    );
    let old_id = base.active.id.clone();
    for steps in 1..=3 {
        let mut s = base.clone();
        s.prepare(NOW, || Authority::generate(&td(), NOW, AuthorityParams::default())).unwrap();
        if steps >= 2 {
            s.propagate(NOW).unwrap();
        }
        if steps >= 3 {
            s.switch(NOW, true).unwrap();
        }
        let t = NOW + Duration::minutes(10);
        assert_eq!(s.abort(t).unwrap(), Outcome::Changed);
        assert_eq!(s.abort(t).unwrap(), Outcome::Unchanged);
        assert_eq!(s.stage, Stage::Stable);
        assert_eq!(s.active.id, old_id);
        let trusted = roots(&s, t);
        if steps == 3 {
            // Leaves the new intermediate signed stay verifiable until they expire.
            assert_eq!(trusted.len(), 2, "{trusted:?}");
            assert_eq!(roots(&s, t + s.policy.max_ttl + Duration::seconds(1)), vec![old_id.clone()]);
            assert_eq!(s.tick(t + s.policy.max_ttl + Duration::seconds(1)), Outcome::Changed);
            assert!(s.retained.is_empty());
        } else {
            assert_eq!(trusted, vec![old_id.clone()]);
        }
    }
}

#[test]
fn prepare_with_imported_material_is_idempotent_and_exclusive() {
    let mut s = CaState::new(
        td(),
        Authority::generate(&td(), NOW, AuthorityParams::default()).unwrap(),
        IssuePolicy::default(),
        NOW,
    );
    let a = Authority::generate(&td(), NOW, AuthorityParams::default()).unwrap();
    let b = Authority::generate(&td(), NOW, AuthorityParams::default()).unwrap();
    assert_eq!(s.prepare_with(NOW, a.clone()).unwrap(), Outcome::Changed);
    assert_eq!(s.prepare_with(NOW, a).unwrap(), Outcome::Unchanged);
    assert!(matches!(s.prepare_with(NOW, b), Err(CaError::Rotation(RotationError::AlreadyPrepared(_)))));
}

#[test]
fn intermediate_renewal_keeps_the_root() {
    let mut s = CaState::new(
        td(),
        Authority::generate(&td(), NOW, AuthorityParams::default()).unwrap(),
        IssuePolicy::default(),
        NOW,
    );
    let before = s.active.clone();
    s.renew_intermediate(NOW, Duration::days(30)).unwrap();
    assert_eq!(s.active.root_pem, before.root_pem);
    assert_ne!(s.active.intermediate_pem, before.intermediate_pem);
    assert_eq!(s.bundle(NOW).roots.len(), 1);
    s.prepare(NOW, || Authority::generate(&td(), NOW, AuthorityParams::default())).unwrap();
    assert!(s.renew_intermediate(NOW, Duration::days(30)).is_err(), "not during a rotation");
}

#[test]
fn corrupt_state_is_an_error_not_a_panic() {
    for bad in ["", "{}", "not json", r#"{"format": 99}"#] {
        assert!(CaState::from_json(bad).is_err());
    }
}
