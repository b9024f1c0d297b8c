//! Per-key concurrency: a definition may run at most `limit` sagas at once for the same value
//! of a field of the input (one funding per Lumanu workspace, one payout per Blaaiz customer).
//!
//! ```toml
//! [concurrency]
//! key = "$.input.customer_id"   # JSONPath into the input, one string or integer
//! limit = 1                     # default 1
//! group = "blaaiz_customer"     # optional: workflows naming the same group share the key
//! ```
//!
//! The slot is the saga's, not a step's: a saga takes one of its key's slots before its first
//! step and keeps it until it **ends** (completed, compensated, cancelled, closed), also while
//! it waits for a webhook between steps, backs off, compensates, or is parked for an operator
//! (`needs_operator`: money may have moved, so the next payout for that key waits until an
//! operator closes, resumes or skips it). A saga that finds its key's slots taken is *queued*:
//! no worker claims it until a holder ends and gives it the slot (oldest queued first).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json_path::JsonPath;

/// A definition's `[concurrency]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Concurrency {
    /// JSONPath into the input (`$.input...`) naming the key: one string or integer.
    pub key: String,
    /// How many sagas with the same key may run at once (at least 1).
    #[serde(default = "default_limit")]
    pub limit: u32,
    /// The key's namespace (default: the workflow name); workflows naming the same group
    /// share their keys (and should give the same limit: the smallest open one applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

fn default_limit() -> u32 {
    1
}

impl Concurrency {
    /// At most `limit` sagas at once per value of `key` (a JSONPath into the input).
    pub fn new(key: impl Into<String>, limit: u32) -> Concurrency {
        Concurrency {
            key: key.into(),
            limit,
            group: None,
        }
    }

    /// Shares the keys with the other workflows of this group.
    #[must_use]
    pub fn with_group(mut self, group: impl Into<String>) -> Concurrency {
        self.group = Some(group.into());
        self
    }

    /// What is wrong with it (checked when the definition is submitted), if anything.
    pub fn problem(&self) -> Option<String> {
        if self.limit == 0 {
            return Some("concurrency.limit must be at least 1".into());
        }
        if !self.key.starts_with("$.input") {
            return Some(format!(
                "concurrency.key {:?} must be a JSONPath into the input ($.input...): the key is computed when the saga starts",
                self.key
            ));
        }
        if let Err(e) = JsonPath::parse(&self.key) {
            return Some(format!(
                "concurrency.key {:?} is not valid JSONPath: {e}",
                self.key
            ));
        }
        match &self.group {
            Some(g)
                if g.is_empty()
                    || !g.chars().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || "_.-".contains(c)
                    }) =>
            {
                Some(format!(
                    "concurrency.group {g:?} must be non-empty and use only a-z, 0-9, '_', '.', '-'"
                ))
            }
            _ => None,
        }
    }

    /// The stored key of a saga of `workflow` with `input`: `<group>:<value>` (the group
    /// defaults to the workflow name). Refused when the path matches nothing, several values,
    /// or a value that is not a non-empty string or an integer.
    pub fn key_for(&self, workflow: &str, input: &Value) -> Result<String, String> {
        let path = JsonPath::parse(&self.key)
            .map_err(|e| format!("concurrency.key {:?} is not valid JSONPath: {e}", self.key))?;
        let scope = serde_json::json!({ "input": input });
        let nodes = path.query(&scope).all();
        let value = match nodes.as_slice() {
            [one] => *one,
            [] => {
                return Err(format!(
                    "the concurrency key {} matched nothing in the input: this workflow runs at most {} saga(s) at once per value of that field, so the input must have it",
                    self.key, self.limit
                ))
            }
            many => {
                return Err(format!(
                    "the concurrency key {} matched {} values in the input, expected one",
                    self.key,
                    many.len()
                ))
            }
        };
        let text = match value {
            Value::String(s) if !s.is_empty() => s.clone(),
            Value::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
            other => {
                return Err(format!(
                    "the concurrency key {} is {other}, expected a non-empty string or an integer",
                    self.key
                ))
            }
        };
        let group = self.group.as_deref().unwrap_or(workflow);
        Ok(format!("{group}:{text}"))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_key_is_the_input_value_in_its_group_and_a_missing_one_is_refused() {
        let c = Concurrency::new("$.input.customer_id", 1);
        assert_eq!(c.problem(), None);
        assert_eq!(
            c.key_for("blaaiz_payout", &json!({"customer_id": "c_1"})),
            Ok("blaaiz_payout:c_1".to_string())
        );
        assert_eq!(
            c.clone()
                .with_group("customers")
                .key_for("x", &json!({"customer_id": 42})),
            Ok("customers:42".to_string())
        );
        let missing = c.key_for("w", &json!({"amount": 1})).unwrap_err();
        assert!(missing.contains("matched nothing"), "{missing}");
        assert!(c.key_for("w", &json!({"customer_id": null})).is_err());
        assert!(c.key_for("w", &json!({"customer_id": ""})).is_err());
        assert!(c.key_for("w", &json!({"customer_id": 1.5})).is_err());
        assert!(Concurrency::new("$.steps.a.id", 1).problem().is_some());
        assert!(Concurrency::new("$.input[?", 1).problem().is_some());
        assert!(Concurrency::new("$.input.a", 0).problem().is_some());
        assert!(Concurrency::new("$.input.a", 1)
            .with_group("Bad Group")
            .problem()
            .is_some());
    }
}
