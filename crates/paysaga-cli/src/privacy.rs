//! What operators see of personal data: account numbers, IBANs and secrets are redacted in
//! every output (text and JSON: input, outputs, history details, the event a saga woke on,
//! inbox payloads) unless `--reveal` is given, which is recorded in the saga's history.

use anyhow::{Context, Result};
use paysaga_core::{HistoryEntry, HistoryKind};
use paysaga_runtime::{Engine, SagaView};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::exit::Refused;

/// Field names (lower case, without `_` and `-`) whose values are never printed unless
/// revealed: `account_number`, `accountNumber` and `account-number` all match.
const SECRET_FIELDS: [&str; 8] = [
    "secret",
    "password",
    "token",
    "apikey",
    "authorization",
    "iban",
    "accountnumber",
    "accountno",
];

fn is_secret(key: &str) -> bool {
    let key: String = key
        .chars()
        .filter(|c| *c != '_' && *c != '-')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    SECRET_FIELDS.iter().any(|s| key.contains(s))
}

/// Replaces the values of secret-looking fields with `"***"`, at any depth.
pub fn redact(v: &Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    if is_secret(k) {
                        (k.clone(), Value::String("***".into()))
                    } else {
                        (k.clone(), redact(v))
                    }
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(redact).collect()),
        other => other.clone(),
    }
}

/// A saga as operators see it by default: input, outputs, history details and the event it
/// woke on redacted.
pub fn redact_view(mut view: SagaView) -> SagaView {
    if let Some(c) = &mut view.saga.concurrency {
        c.key = redact_concurrency_key(&c.key, &view.saga.input);
    }
    view.saga.input = redact(&view.saga.input);
    view.saga.outputs = redact(&view.saga.outputs);
    if let Some(event) = &mut view.saga.wake_event {
        event.payload = redact(&event.payload);
    }
    for h in &mut view.history {
        if let Some(detail) = &mut h.detail {
            *detail = redact(detail);
            if h.kind == HistoryKind::StepSkipped {
                redact_skipped_value(detail);
            }
        }
    }
    view
}

/// A concurrency key (`<group>:<value>`) whose value is that of a secret-looking field of the
/// input (a workflow limited per bank account): `<group>:***`.
pub fn redact_concurrency_key(key: &str, input: &Value) -> String {
    fn secret_values(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    match v {
                        Value::String(s) if is_secret(k) => out.push(s.clone()),
                        Value::Number(n) if is_secret(k) => out.push(n.to_string()),
                        _ => secret_values(v, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| secret_values(v, out)),
            _ => {}
        }
    }
    let Some((group, value)) = key.split_once(':') else {
        return key.to_string();
    };
    let mut secrets = Vec::new();
    secret_values(input, &mut secrets);
    if secrets.iter().any(|s| s == value) {
        format!("{group}:***")
    } else {
        key.to_string()
    }
}

/// A `step_skipped` row's `value` is what its condition's path read: redacted when a segment
/// of that path is a secret-looking field (`$.input.payout.account_number`).
fn redact_skipped_value(detail: &mut Value) {
    let secret_path = detail["when"]["path"]
        .as_str()
        .is_some_and(|p| p.split(['.', '[', ']', '\'', '"']).any(is_secret));
    if secret_path && !detail["value"].is_null() {
        detail["value"] = Value::String("***".into());
    }
}

/// An inbox event with its payload redacted.
pub fn redact_event(mut event: paysaga_store::EventRecord) -> paysaga_store::EventRecord {
    event.payload = event.payload.as_ref().map(redact);
    event
}

/// `--reveal --reason TEXT`: who reveals what, and why.
#[derive(Debug, Clone)]
pub struct Reveal {
    reason: String,
}

impl Reveal {
    /// `None` without `--reveal`; a reason is required with it.
    pub fn from_flags(reveal: bool, reason: Option<&str>) -> Result<Option<Reveal>> {
        if !reveal {
            return Ok(None);
        }
        match reason.map(str::trim) {
            Some(r) if !r.is_empty() => Ok(Some(Reveal {
                reason: r.to_string(),
            })),
            _ => Err(Refused(
                "--reveal needs --reason saying why (it is recorded in the saga's history)"
                    .to_string(),
            )
            .into()),
        }
    }

    /// Records a `data_revealed` history row (actor, OS user, reason, which output) on
    /// each saga, before anything is printed.
    pub async fn record(&self, engine: &Engine, sagas: &[Uuid], output: &str) -> Result<()> {
        let actor = crate::operate::actor();
        let os_user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .ok();
        for id in sagas {
            let entry = HistoryEntry {
                kind: HistoryKind::DataRevealed,
                step: None,
                attempt: None,
                error: None,
                detail: json!({
                    "reason": self.reason,
                    "os_user": os_user,
                    "output": output,
                }),
            };
            engine
                .store()
                .append_history(*id, &actor, &[entry])
                .await
                .with_context(|| {
                    format!("cannot record the reveal in saga {id}'s history; nothing printed")
                })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_numbers_are_redacted_at_any_depth_and_in_any_spelling() {
        let v = json!({
            "payout": {"iban": "AE070331234567890123456", "accountNumber": "1234567890",
                       "account-number": "1", "bank": {"Account_No": "2"}},
            "amount": 100,
            "items": [{"api_key": "k"}]
        });
        let r = redact(&v);
        assert_eq!(r["payout"]["iban"], "***");
        assert_eq!(r["payout"]["accountNumber"], "***");
        assert_eq!(r["payout"]["account-number"], "***");
        assert_eq!(r["payout"]["bank"]["Account_No"], "***");
        assert_eq!(r["items"][0]["api_key"], "***");
        assert_eq!(r["amount"], 100);
    }

    #[test]
    fn a_concurrency_key_on_an_account_number_is_redacted_and_others_are_not() {
        let input = json!({"payout": {"account_number": "1234567890"}, "workspace": "ws-1"});
        assert_eq!(
            redact_concurrency_key("lean_payout:1234567890", &input),
            "lean_payout:***"
        );
        assert_eq!(
            redact_concurrency_key("funding:ws-1", &input),
            "funding:ws-1"
        );
    }

    #[test]
    fn a_skipped_steps_value_read_from_a_secret_field_is_redacted() {
        let mut secret = json!({"when": {"path": "$.input.payout.account_number", "equals": "1"},
                                "value": "1234567890", "found": true});
        redact_skipped_value(&mut secret);
        assert_eq!(secret["value"], "***");
        let mut plain = json!({"when": {"path": "$.steps.c.verification_status", "equals": "X"},
                               "value": "VERIFIED", "found": true});
        redact_skipped_value(&mut plain);
        assert_eq!(plain["value"], "VERIFIED");
    }
}
