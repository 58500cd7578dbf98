//! Fuzzing of manifest parsing with proptest (cargo-fuzz needs a nightly
//! toolchain, which these machines do not have): arbitrary text, and valid
//! manifests with random fields replaced by random values. Parsing must never
//! panic, every document must be accounted for (object, ignored or error),
//! and every error must name the file.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::fs;
use std::path::Path;

use policy::manifest::parse_str;
use proptest::prelude::*;
use serde_norway::{Mapping, Value};

fn corpus() -> Vec<Value> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
    let mut docs = Vec::new();
    for dir in ["workload", "policies"] {
        let mut files: Vec<_> = fs::read_dir(root.join(dir)).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        for f in files {
            let text = fs::read_to_string(&f).unwrap();
            for d in serde_norway::Deserializer::from_str(&text) {
                docs.push(<Value as serde::Deserialize>::deserialize(d).unwrap());
            }
        }
    }
    docs
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| Value::Number(n.into())),
        any::<f64>().prop_map(|n| Value::Number(n.into())),
        "[a-zA-Z0-9./:_ -]{0,20}".prop_map(Value::String),
        prop::sample::select(vec![
            "TCP",
            "UDP",
            "SCTP",
            "In",
            "NotIn",
            "Exists",
            "10.0.0.0/8",
            "::/0",
            "1.2.3.4/33",
            "http",
            "-1",
            "65536",
            "Ingress",
            "Egress"
        ])
        .prop_map(|s| Value::String(s.into())),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Sequence),
            prop::collection::vec(("[a-zA-Z]{1,8}", inner), 0..4)
                .prop_map(|kv| Value::Mapping(kv.into_iter().map(|(k, v)| (Value::String(k), v)).collect::<Mapping>())),
        ]
    })
}

/// Replaces the node reached by following `path` (indices taken modulo the
/// container sizes) with `new`.
fn mutate(v: &mut Value, path: &[usize], new: Value) {
    let Some((first, rest)) = path.split_first() else {
        *v = new;
        return;
    };
    match v {
        Value::Mapping(m) if !m.is_empty() => {
            let i = first % m.len();
            let key = m.keys().nth(i).cloned().unwrap();
            if rest.is_empty() || !matches!(m.get(&key), Some(Value::Mapping(_) | Value::Sequence(_))) {
                m.insert(key, new);
            } else if let Some(child) = m.get_mut(&key) {
                mutate(child, rest, new);
            }
        }
        Value::Sequence(s) if !s.is_empty() => {
            let i = first % s.len();
            mutate(&mut s[i], rest, new);
        }
        other => *other = new,
    }
}

fn check(text: &str, docs: usize) -> Result<(), TestCaseError> {
    let parsed = parse_str("fuzz.yaml", text);
    for e in &parsed.errors {
        prop_assert!(e.to_string().starts_with("fuzz.yaml: "), "{}", e);
    }
    if docs > 0 {
        let accounted = parsed.objects.len() + parsed.ignored.len() + parsed.errors.len();
        prop_assert!(accounted >= 1, "every document is accounted for");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in "(?s).{0,400}") {
        check(&text, 0)?;
    }

    #[test]
    fn arbitrary_yaml_values_never_panic(v in value()) {
        let text = serde_norway::to_string(&v).unwrap();
        check(&text, 0)?;
    }

    #[test]
    fn mutated_manifests_are_rejected_precisely(
        doc in prop::sample::select(corpus()),
        path in prop::collection::vec(any::<usize>(), 0..6),
        new in value(),
        keep_good in any::<bool>(),
    ) {
        let mut bad = doc.clone();
        mutate(&mut bad, &path, new);
        let mut text = serde_norway::to_string(&bad).unwrap();
        if keep_good {
            text.push_str("---\n");
            text.push_str(&serde_norway::to_string(&doc).unwrap());
        }
        let parsed = parse_str("fuzz.yaml", &text);
        for e in &parsed.errors {
            prop_assert!(e.to_string().starts_with("fuzz.yaml: document "), "{}", e);
        }
        if keep_good {
            // The untouched copy is always the last object: a bad neighbour
            // never hides it.
            prop_assert!(!parsed.objects.is_empty(), "good document lost: {:?}", parsed.errors);
        }
    }
}
