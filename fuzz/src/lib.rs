//! The checks behind the fuzz targets (one function per target), kept in a library so that
//! each target is one line. The same properties run on stable, with proptest, in
//! `crates/paysaga-providers/tests/fuzz_short.rs`.

use std::sync::{Arc, OnceLock};

use chrono::{DateTime, TimeZone, Utc};
use http::{HeaderMap, HeaderName, HeaderValue};
use paysaga_core::{CompiledDefinition, Definition, StepKind};
use paysaga_providers::webhook::{self, WebhookError};
use paysaga_providers::Provider;
use secrecy::SecretString;
use serde_json::{json, Value};

const SECRET: &str = "whsec-fuzz-3b7c";

fn now() -> DateTime<Utc> {
    Utc.timestamp_opt(1_763_900_000, 0)
        .single()
        .unwrap_or_else(Utc::now)
}

fn is_refusal(e: &WebhookError) -> bool {
    matches!(
        e,
        WebhookError::MissingSignature { .. }
            | WebhookError::BadSignature
            | WebhookError::StaleTimestamp { .. }
    )
}

/// `data`: a mode byte, a head length byte, that many bytes of `name-selector value` lines,
/// then the body. Mode 0: the request as given (unsigned: must be refused). Mode 1: the body
/// correctly signed (must verify, then parse or be unparseable under its hash). Mode 2:
/// correctly signed, then one body byte changed (must be refused).
pub fn webhook(provider: Provider, data: &[u8]) {
    let secret = SecretString::from(SECRET);
    let (mode, rest) = match data.split_first() {
        Some((m, rest)) => (m % 3, rest),
        None => return,
    };
    let (head_len, rest) = match rest.split_first() {
        Some((l, rest)) => (usize::from(*l).min(rest.len()), rest),
        None => return,
    };
    let (head, body) = rest.split_at(head_len);
    let names = [
        webhook::LUMANU_SIGNATURE,
        webhook::BLAAIZ_SIGNATURE,
        webhook::BLAAIZ_TIMESTAMP,
        webhook::LEAN_SIGNATURE,
        HeaderName::from_static("content-type"),
    ];
    let mut headers = HeaderMap::new();
    for line in head.split(|b| *b == b'\n') {
        if let Some((sel, value)) = line.split_first() {
            if let Ok(v) = HeaderValue::from_bytes(value) {
                headers.append(names[usize::from(*sel) % names.len()].clone(), v);
            }
        }
    }
    match mode {
        0 => {
            let r = webhook::verify_and_parse(provider, &headers, body, &secret, now());
            assert!(
                matches!(&r, Err(e) if is_refusal(e)),
                "unsigned request verified: {r:?}"
            );
        }
        _ => {
            let mut signed = HeaderMap::new();
            for (k, v) in webhook::sign(provider, &secret, body, now()) {
                if let Ok(v) = HeaderValue::from_str(&v) {
                    signed.insert(k, v);
                }
            }
            if mode == 1 {
                match webhook::verify_and_parse(provider, &signed, body, &secret, now()) {
                    Ok(e) => {
                        assert!(!e.event_id.is_empty() && !e.event_type.is_empty());
                        assert!(e.payload.is_object());
                    }
                    Err(WebhookError::Unparseable {
                        fallback_event_id, ..
                    }) => assert_eq!(fallback_event_id, webhook::fallback_event_id(body)),
                    Err(other) => panic!("a correctly signed body was refused: {other:?}"),
                }
            } else if let Some(first) = body.first() {
                let mut tampered = body.to_vec();
                tampered[0] = first.wrapping_add(1);
                let r = webhook::verify_and_parse(provider, &signed, &tampered, &secret, now());
                assert!(
                    matches!(&r, Err(e) if is_refusal(e)),
                    "tampered body verified: {r:?}"
                );
            }
        }
    }
}

fn kinds() -> &'static [Arc<dyn StepKind>] {
    static K: OnceLock<Vec<Arc<dyn StepKind>>> = OnceLock::new();
    K.get_or_init(paysaga_providers::steps::validation_kinds)
}

fn kind(name: &str) -> Option<&'static Arc<dyn StepKind>> {
    kinds().iter().find(|k| k.name() == name)
}

fn compile(text: &str) -> Option<CompiledDefinition> {
    let def = Definition::from_toml(text).ok()?;
    let names: Vec<String> = kinds().iter().map(|k| k.name().to_string()).collect();
    let traits = |name: &str| kind(name).map(|k| k.traits());
    let compiled = def.compile(&traits, &names).ok()?;
    let _ = compiled.definition.content_hash();
    Some(compiled)
}

/// Definition TOML (any bytes, read as lossy UTF-8): parse and compile.
pub fn definition_toml(data: &[u8]) {
    let _ = compile(&String::from_utf8_lossy(data));
}

/// The three workflow files of the repository, compiled.
fn workflows() -> &'static [CompiledDefinition] {
    static W: OnceLock<Vec<CompiledDefinition>> = OnceLock::new();
    W.get_or_init(|| {
        [
            include_str!("../../workflows/lumanu_prefund.toml"),
            include_str!("../../workflows/blaaiz_kyc_payout.toml"),
            include_str!("../../workflows/lean_payout.toml"),
        ]
        .iter()
        .filter_map(|t| compile(t))
        .collect()
    })
}

/// A saga input (any bytes; only JSON gets past parsing) checked as `Engine::start` does.
pub fn saga_input(data: &[u8]) {
    let Ok(input) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    for def in workflows() {
        let scope = json!({"input": input, "saga": {"id": "00000000-0000-0000-0000-000000000000", "workflow": def.definition.name}});
        for step in &def.steps {
            let Ok(params) = step.params.resolve_input_only(&scope) else {
                break;
            };
            let Some(k) = kind(&step.def.kind) else {
                break;
            };
            if k.validate(&params).is_err() {
                break;
            }
        }
    }
}
