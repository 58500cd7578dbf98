//! CSR parser fuzzing (proptest): arbitrary bytes, and valid requests with
//! bytes flipped, truncated or extended, never panic, and whatever is still
//! accepted names the identity the key's owner signed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ca::{TrustDomain, validate_csr};
use proptest::prelude::*;
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};

const API: &str = "spiffe://cluster.local/ns/bookstore/sa/api";

fn valid_der() -> Vec<u8> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::default();
    p.subject_alt_names = vec![SanType::URI(API.to_string().try_into().unwrap())];
    p.serialize_request(&key).unwrap().der().to_vec()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = validate_csr(&bytes, &TrustDomain::new("cluster.local").unwrap());
    }

    #[test]
    fn mutated_requests_are_rejected_or_unchanged_in_meaning(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
        cut in any::<prop::sample::Index>(),
        mode in 0u8..3,
    ) {
        let td = TrustDomain::new("cluster.local").unwrap();
        let mut der = valid_der();
        match mode {
            0 => for (i, x) in &flips { let i = i.index(der.len()); der[i] ^= x; },
            1 => der.truncate(cut.index(der.len())),
            _ => der.extend_from_slice(&[0x30, 0x00]),
        }
        if let Ok(v) = validate_csr(&der, &td) {
            // A flip that survives the signature check cannot have changed
            // the signed content; the identity is the one signed.
            prop_assert_eq!(v.identity.to_string(), API);
        }
        let pem = format!("-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            String::from_utf8_lossy(&der));
        let _ = validate_csr(pem.as_bytes(), &td);
    }
}
