//! A short fuzz run on stable Rust (the cargo-fuzz targets in `fuzz/` need nightly): random
//! and mutated input to the functions that read untrusted bytes.
//!
//! * `webhook::verify_and_parse` of each provider: never panics; only a body signed with the
//!   secret verifies (a mutation of a signed request never does); a signed body either parses
//!   or is `Unparseable` under its SHA-256 (kept raw by the endpoint).
//! * Definition TOML: `Definition::from_toml` + `compile` against the real step kinds never
//!   panic, whatever the text (random, or mutations of the workflow files).
//! * Saga input: resolving each workflow's parameters against any JSON input and each step
//!   kind's `validate` (what `Engine::start` does before writing anything) never panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, OnceLock};

use chrono::{DateTime, TimeZone, Utc};
use http::{HeaderMap, HeaderName, HeaderValue};
use paysaga_core::{CompiledDefinition, Definition, StepKind};
use paysaga_providers::webhook::{self, WebhookError, BLAAIZ_TIMESTAMP};
use paysaga_providers::Provider;
use proptest::prelude::*;
use secrecy::SecretString;
use serde_json::{json, Value};

const SECRET: &str = "whsec-fuzz-3b7c";

fn secret() -> SecretString {
    SecretString::from(SECRET)
}

fn now() -> DateTime<Utc> {
    Utc.timestamp_opt(1_763_900_000, 0).single().unwrap()
}

fn provider(i: u8) -> Provider {
    Provider::ALL[usize::from(i) % 3]
}

fn header_map(pairs: &[(HeaderName, String)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.append(k.clone(), v);
        }
    }
    h
}

fn signed(p: Provider, body: &[u8], at: DateTime<Utc>) -> HeaderMap {
    header_map(&webhook::sign(p, &secret(), body, at))
}

/// Valid bodies of each provider, to mutate.
fn seeds(p: Provider) -> Vec<Vec<u8>> {
    let values = match p {
        Provider::Lumanu => vec![
            json!({"id": "evt_1", "event_type": "payable.paid", "data": {"id": "pay_1"}}),
            json!({"id": 7, "event_type": "transfer.updated", "data": {"id": "tr", "funding_id": "f"}}),
        ],
        Provider::Blaaiz => vec![
            json!({"event_type": "customer.status_changed", "customer_id": "cus_1", "event_id": "e1", "type": "customer"}),
            json!({"transaction_id": "tx_1", "transaction_status": "SUCCESSFUL", "event_id": "e2", "type": "payout"}),
        ],
        Provider::Lean => vec![
            json!({"type": "payment.updated", "event_id": "e3", "payload": {"intent_id": "in_1", "status": "ACCEPTED_BY_BANK"}}),
            json!({"type": "payment_source.beneficiary.created", "event_id": "e4", "payload": {"customer_id": "c", "payment_destination_id": "d"}}),
        ],
    };
    values
        .into_iter()
        .map(|v| serde_json::to_vec(&v).unwrap())
        .collect()
}

/// One edit of a byte string.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Truncate(usize),
    Splice(usize, Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Delete),
        any::<usize>().prop_map(Mutation::Truncate),
        (
            any::<usize>(),
            prop::sample::select(vec![
                b"\\u0000".to_vec(),
                b"\xff\xfe".to_vec(),
                b"[[[[[[[[".to_vec(),
                b"}".to_vec(),
                b"1e999".to_vec(),
                b"\"\\ud800\"".to_vec(),
                b"-9223372036854775809".to_vec(),
                b"null".to_vec(),
            ])
        )
            .prop_map(|(i, s)| Mutation::Splice(i, s)),
    ]
}

/// Applies `m`; returns whether the bytes changed.
fn apply(bytes: &mut Vec<u8>, m: &Mutation) -> bool {
    let before = bytes.clone();
    let at = |i: usize, len: usize| if len == 0 { 0 } else { i % len };
    match m {
        Mutation::Flip(i, b) if !bytes.is_empty() => {
            let i = at(*i, bytes.len());
            bytes[i] ^= b;
        }
        Mutation::Insert(i, b) => {
            let i = at(*i, bytes.len() + 1);
            bytes.insert(i, *b);
        }
        Mutation::Delete(i) if !bytes.is_empty() => {
            let i = at(*i, bytes.len());
            bytes.remove(i);
        }
        Mutation::Truncate(i) => bytes.truncate(at(*i, bytes.len() + 1)),
        Mutation::Splice(i, s) => {
            let i = at(*i, bytes.len() + 1);
            bytes.splice(i..i, s.iter().copied());
        }
        _ => {}
    }
    *bytes != before
}

/// What an unsigned or wrongly signed request may be refused with.
fn is_refusal(e: &WebhookError) -> bool {
    matches!(
        e,
        WebhookError::MissingSignature { .. }
            | WebhookError::BadSignature
            | WebhookError::StaleTimestamp { .. }
    )
}

/// A verified body is either parsed or `Unparseable` under its SHA-256; a parsed event has an
/// id and type and holds no U+0000 (which the inbox could not store).
fn check_signed_outcome(body: &[u8], r: &Result<webhook::ParsedEvent, WebhookError>) {
    match r {
        Ok(e) => {
            assert!(!e.event_id.is_empty() && !e.event_type.is_empty());
            assert!(e.payload.is_object());
            assert!(!serde_json::to_string(&e.payload)
                .unwrap()
                .contains("\\u0000"));
        }
        Err(WebhookError::Unparseable {
            fallback_event_id, ..
        }) => assert_eq!(fallback_event_id, &webhook::fallback_event_id(body)),
        Err(other) => panic!("a correctly signed body was refused: {other:?}"),
    }
}

fn header_names() -> Vec<HeaderName> {
    vec![
        webhook::LUMANU_SIGNATURE,
        webhook::BLAAIZ_SIGNATURE,
        BLAAIZ_TIMESTAMP,
        webhook::LEAN_SIGNATURE,
        HeaderName::from_static("content-type"),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Random bytes and random signature headers never verify (and never panic).
    #[test]
    fn random_requests_never_verify(
        p in any::<u8>(),
        body in prop::collection::vec(any::<u8>(), 0..512),
        headers in prop::collection::vec(
            (0..5usize, prop_oneof![
                "[0-9a-fA-F]{0,130}",
                "sha512=[0-9a-f]{0,140}",
                "-?[0-9]{1,25}",
                "\\PC{0,40}",
            ]),
            0..6,
        ),
        at in any::<i64>(),
    ) {
        let p = provider(p);
        let names = header_names();
        let pairs: Vec<_> = headers.into_iter().map(|(i, v)| (names[i].clone(), v)).collect();
        let h = header_map(&pairs);
        let now = Utc.timestamp_opt(at % 100_000_000_000, 0).single().unwrap_or_else(now);
        let r = webhook::verify_and_parse(p, &h, &body, &secret(), now);
        prop_assert!(matches!(&r, Err(e) if is_refusal(e)), "{p}: {r:?}");
    }

    /// A signed request with its body, signature or timestamp mutated never verifies; the
    /// untouched one does.
    #[test]
    fn mutated_signed_requests_never_verify(
        p in any::<u8>(),
        seed in any::<prop::sample::Index>(),
        target in 0..3u8,
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let p = provider(p);
        let seeds = seeds(p);
        let body = seeds[seed.index(seeds.len())].clone();
        let headers = webhook::sign(p, &secret(), &body, now());
        let r = webhook::verify_and_parse(p, &header_map(&headers), &body, &secret(), now());
        prop_assert!(r.is_ok(), "{p}: the seed verifies: {r:?}");

        let mut body2 = body.clone();
        let mut headers2 = headers.clone();
        let changed = match target {
            0 => {
                // Mutations may cancel out (insert a byte, then delete it): what counts is
                // whether the body differs in the end.
                for m in &mutations {
                    apply(&mut body2, m);
                }
                body2 != body
            }
            _ => {
                // The signature header (1) or, for Blaaiz, the timestamp (2).
                let i = if target == 2 && p == Provider::Blaaiz { 0 } else { headers2.len() - 1 };
                let mut value = headers2[i].1.clone().into_bytes();
                let c = mutations.iter().fold(false, |c, m| apply(&mut value, m) | c);
                headers2[i].1 = String::from_utf8_lossy(&value).into_owned();
                c && headers2[i].1 != headers[i].1
            }
        };
        let r = webhook::verify_and_parse(p, &header_map(&headers2), &body2, &secret(), now());
        if changed {
            // Hex is case-insensitive and surrounding whitespace is trimmed: such edits of
            // the header still name the same signature.
            let same_signature = target != 0
                && headers2.iter().zip(&headers).all(|(a, b)| a.1.trim().eq_ignore_ascii_case(&b.1));
            if !same_signature {
                prop_assert!(matches!(&r, Err(e) if is_refusal(e)), "{p} mutated ({target}): {r:?}");
            }
        } else {
            prop_assert!(r.is_ok());
        }
    }

    /// Any body, correctly signed (mutations of valid bodies and random bytes), verifies and
    /// then parses or is unparseable; nothing panics.
    #[test]
    fn signed_arbitrary_bodies_parse_or_are_kept_as_unparseable(
        p in any::<u8>(),
        seed in any::<prop::sample::Index>(),
        mutations in prop::collection::vec(mutation(), 0..6),
        random in prop::option::of(prop::collection::vec(any::<u8>(), 0..256)),
    ) {
        let p = provider(p);
        let seeds = seeds(p);
        let body = match random {
            Some(bytes) => bytes,
            None => {
                let mut b = seeds[seed.index(seeds.len())].clone();
                for m in &mutations {
                    apply(&mut b, m);
                }
                b
            }
        };
        let r = webhook::verify_and_parse(p, &signed(p, &body, now()), &body, &secret(), now());
        check_signed_outcome(&body, &r);
    }

    /// Definition TOML: random text and mutations of the real workflow files never panic the
    /// parser or the compiler.
    #[test]
    fn definition_toml_never_panics(
        file in 0..3usize,
        mutations in prop::collection::vec(mutation(), 0..8),
        random in prop::option::of("\\PC{0,300}"),
    ) {
        let text = match random {
            Some(t) => t.into_bytes(),
            None => {
                let mut t = workflow_texts()[file].clone().into_bytes();
                for m in &mutations {
                    apply(&mut t, m);
                }
                t
            }
        };
        compile_toml(&String::from_utf8_lossy(&text));
    }

    /// Saga input: any JSON (random values, mutations of the example inputs) against each
    /// workflow's parameters and step kinds' `validate` never panics.
    #[test]
    fn saga_input_validation_never_panics(
        file in 0..3usize,
        mutations in prop::collection::vec(mutation(), 0..6),
        random in prop::option::of(json_value()),
    ) {
        let input = match random {
            Some(v) => v,
            None => {
                let mut t = example_inputs()[file].clone().into_bytes();
                for m in &mutations {
                    apply(&mut t, m);
                }
                match serde_json::from_slice(&t) {
                    Ok(v) => v,
                    Err(_) => return Ok(()),
                }
            }
        };
        for w in compiled() {
            let _ = validate_input(w, &input);
        }
    }
}

/// Arbitrary JSON, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        "\\PC{0,20}".prop_map(Value::String),
        prop::sample::select(vec![
            "$.input", "$$x", "", "0", "-1", "1e3", "USD", "NG", "\u{0}"
        ])
        .prop_map(|s| Value::String(s.to_string())),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "amount",
                    "currency",
                    "payee",
                    "email",
                    "customer",
                    "documents",
                    "payout",
                    "destination",
                    "app_user_id",
                    "workspace_id",
                    "description",
                    "invoice",
                    "type",
                    "document_id",
                    "file_category",
                    "method",
                    "wallet_id",
                    "iban",
                    "x",
                ])
                .prop_map(str::to_string),
                inner,
                0..6,
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn repo_file(path: &str) -> String {
    std::fs::read_to_string(format!("{}/../../{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

const WORKFLOWS: [&str; 3] = ["lumanu_prefund", "blaaiz_kyc_payout", "lean_payout"];

fn workflow_texts() -> &'static [String] {
    static T: OnceLock<Vec<String>> = OnceLock::new();
    T.get_or_init(|| {
        WORKFLOWS
            .iter()
            .map(|w| repo_file(&format!("workflows/{w}.toml")))
            .collect()
    })
}

fn example_inputs() -> &'static [String] {
    static T: OnceLock<Vec<String>> = OnceLock::new();
    T.get_or_init(|| {
        WORKFLOWS
            .iter()
            .map(|w| repo_file(&format!("workflows/examples/{w}.json")))
            .collect()
    })
}

fn kinds() -> &'static [Arc<dyn StepKind>] {
    static K: OnceLock<Vec<Arc<dyn StepKind>>> = OnceLock::new();
    K.get_or_init(paysaga_providers::steps::validation_kinds)
}

fn kind(name: &str) -> Option<&'static Arc<dyn StepKind>> {
    kinds().iter().find(|k| k.name() == name)
}

/// `Definition::from_toml` + `compile` against the providers' step kinds, as `definitions
/// submit` does.
fn compile_toml(text: &str) -> Option<CompiledDefinition> {
    let def = Definition::from_toml(text).ok()?;
    let names: Vec<String> = kinds().iter().map(|k| k.name().to_string()).collect();
    let traits = |name: &str| kind(name).map(|k| k.traits());
    def.compile(&traits, &names).ok()
}

fn compiled() -> &'static [CompiledDefinition] {
    static C: OnceLock<Vec<CompiledDefinition>> = OnceLock::new();
    C.get_or_init(|| {
        workflow_texts()
            .iter()
            .map(|t| compile_toml(t).expect("the workflow files compile"))
            .collect()
    })
}

/// What `Engine::start` checks before writing: each step's parameters resolved against the
/// input, then the kind's `validate`.
fn validate_input(def: &CompiledDefinition, input: &Value) -> Result<(), String> {
    let scope = json!({"input": input, "saga": {"id": "00000000-0000-0000-0000-000000000000", "workflow": def.definition.name}});
    for step in &def.steps {
        let params = step
            .params
            .resolve_input_only(&scope)
            .map_err(|e| e.to_string())?;
        let k = kind(&step.def.kind).ok_or("unknown kind")?;
        k.validate(&params)?;
    }
    Ok(())
}

#[test]
fn the_fuzzed_workflows_and_examples_are_the_valid_ones() {
    for (i, def) in compiled().iter().enumerate() {
        let input: Value = serde_json::from_str(&example_inputs()[i]).unwrap();
        assert_eq!(
            validate_input(def, &input),
            Ok(()),
            "{}",
            def.definition.name
        );
        assert!(validate_input(def, &json!({})).is_err());
    }
}

/// Regression (found by tests/webhook_abuse.rs): a Blaaiz timestamp near `i64::MIN` overflowed the
/// window check (`now - ts`) and panicked the handler, dropping the connection. It must be a
/// plain stale-timestamp refusal.
#[test]
fn blaaiz_extreme_timestamps_are_refused_not_a_panic() {
    use hmac::{Hmac, Mac};
    let body = seeds(Provider::Blaaiz).remove(0);
    for ts in [
        i64::MIN.to_string(),
        (i64::MIN + 1).to_string(),
        i64::MAX.to_string(),
        "0".into(),
    ] {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(format!("{ts}.").as_bytes());
        mac.update(&body);
        let sig = hex::encode(mac.finalize().into_bytes());
        let h = header_map(&[
            (BLAAIZ_TIMESTAMP, ts.clone()),
            (webhook::BLAAIZ_SIGNATURE, sig),
        ]);
        let r = webhook::verify_and_parse(Provider::Blaaiz, &h, &body, &secret(), now());
        assert!(
            matches!(r, Err(WebhookError::StaleTimestamp { .. })),
            "{ts}: {r:?}"
        );
    }
}

/// Regression: U+0000 is valid JSON but cannot be stored in PostgreSQL jsonb/text; a signed
/// body holding it must be `Unparseable` (kept raw, 400), not an event whose insert fails
/// (503 forever).
#[test]
fn signed_bodies_with_nul_are_unparseable() {
    for p in Provider::ALL {
        for body in [
            br#"{"id":"e\u0000","event_id":"e\u0000","event_type":"payable.paid","type":"payment.updated"}"#.to_vec(),
            br#"{"id":"e","event_id":"e","event_type":"payable.paid","type":"payment.updated","data":{"k\u0000":[1,"\u0000"]}}"#.to_vec(),
        ] {
            let r = webhook::verify_and_parse(p, &signed(p, &body, now()), &body, &secret(), now());
            assert!(
                matches!(r, Err(WebhookError::Unparseable { .. })),
                "{p}: {r:?}"
            );
            check_signed_outcome(&body, &r);
        }
    }
}

/// Deep nesting (100k levels) hits serde_json's recursion limit: unparseable, no stack
/// overflow, for bodies and for saga inputs.
#[test]
fn deeply_nested_json_is_refused_without_overflow() {
    let deep = [b"[".repeat(100_000), b"]".repeat(100_000)].concat();
    for p in Provider::ALL {
        let r = webhook::verify_and_parse(p, &signed(p, &deep, now()), &deep, &secret(), now());
        assert!(matches!(r, Err(WebhookError::Unparseable { .. })), "{p}");
    }
    assert!(serde_json::from_slice::<Value>(&deep).is_err());
    let deep_toml = format!(
        "name = \"x\"\nversion = 1\na = {}{}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    assert!(compile_toml(&deep_toml).is_none());
}
