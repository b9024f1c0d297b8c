//! What a step kind declares about its parameters and its output ([`KindSchema`]): shown by
//! `paysaga kinds`, and checked at start ([`KindSchema::check`]) so that a missing nested
//! field (`payout.wallet_id`) is refused before anything is stored, not hours later at the
//! step that needs it.
//!
//! A small description (dotted paths, a type, required or not), not JSON Schema: hand-written
//! by untyped kinds, derived from the parameter and output types' JSON Schemas by typed ones
//! ([`crate::Step`], see [`crate::typed`]).

use serde::Serialize;
use serde_json::Value;

/// The JSON type of a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    /// A JSON string.
    String,
    /// A JSON integer (amounts are integer minor units).
    Integer,
    /// `true` or `false`.
    Boolean,
    /// A JSON object (its fields are listed with dotted paths).
    Object,
    /// A JSON array (`path[]` lists the fields of its items).
    Array,
    /// A duration written as text (`"90s"`, `"2h"`).
    Duration,
    /// Any JSON value.
    Any,
}

impl FieldType {
    /// The name shown to operators.
    pub fn as_str(self) -> &'static str {
        match self {
            FieldType::String => "string",
            FieldType::Integer => "integer",
            FieldType::Boolean => "boolean",
            FieldType::Object => "object",
            FieldType::Array => "array",
            FieldType::Duration => "duration",
            FieldType::Any => "any",
        }
    }

    fn accepts(self, v: &Value) -> bool {
        match self {
            FieldType::String | FieldType::Duration => v.is_string(),
            FieldType::Integer => v.is_i64() || v.is_u64(),
            FieldType::Boolean => v.is_boolean(),
            FieldType::Object => v.is_object(),
            FieldType::Array => v.is_array(),
            FieldType::Any => true,
        }
    }
}

/// One field of a kind's parameters or output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldSpec {
    /// Dotted path from the parameters' (or output's) root: `payout.wallet_id`; the items of
    /// an array `documents` are `documents[].id`.
    pub path: &'static str,
    /// Its JSON type.
    #[serde(rename = "type")]
    pub ty: FieldType,
    /// Whether the step cannot run without it (when its parent object is there).
    pub required: bool,
    /// What it is, in a few words.
    pub description: &'static str,
}

impl FieldSpec {
    /// A required field.
    pub const fn required(path: &'static str, ty: FieldType, description: &'static str) -> Self {
        FieldSpec {
            path,
            ty,
            required: true,
            description,
        }
    }

    /// An optional field.
    pub const fn optional(path: &'static str, ty: FieldType, description: &'static str) -> Self {
        FieldSpec {
            path,
            ty,
            required: false,
            description,
        }
    }
}

/// What a step kind takes and returns (see [`crate::StepKind::schema`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct KindSchema {
    /// What the kind does, in one sentence.
    pub description: &'static str,
    /// Its parameters.
    pub params: Vec<FieldSpec>,
    /// Its output (what later steps can read as `$.steps.<name>.output...`).
    pub outputs: Vec<FieldSpec>,
}

impl KindSchema {
    /// Checks parameters resolved from the saga input, as at start: values decided by an
    /// earlier step are `null` then, and so are accepted (with everything under them); a
    /// required field that is absent, or a field of the wrong type, is refused with its
    /// path named. A required field is only required when its parent object is there (an
    /// optional object may be left out whole).
    pub fn check(&self, params: &Value) -> Result<(), String> {
        for field in &self.params {
            if field.path.contains("[]") {
                continue; // array items: checked by the kind itself
            }
            let mut at = params;
            let mut parent_missing = false;
            let segments: Vec<&str> = field.path.split('.').collect();
            for (i, segment) in segments.iter().enumerate() {
                if at.is_null() {
                    // decided by an earlier step
                    parent_missing = true;
                    break;
                }
                let Some(obj) = at.as_object() else {
                    // the parent's own type is reported at the parent's entry
                    parent_missing = true;
                    break;
                };
                match obj.get(*segment) {
                    Some(v) => at = v,
                    None => {
                        let last = i + 1 == segments.len();
                        if last && field.required {
                            return Err(format!(
                                "parameter {} ({}, {}) is required but the input does not give it",
                                field.path,
                                field.ty.as_str(),
                                field.description
                            ));
                        }
                        parent_missing = true;
                        break;
                    }
                }
            }
            if parent_missing || at.is_null() {
                continue;
            }
            if !field.ty.accepts(at) {
                return Err(format!(
                    "parameter {} must be of type {} ({}), got {}",
                    field.path,
                    field.ty.as_str(),
                    field.description,
                    json_type(at)
                ));
            }
        }
        Ok(())
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "a fractional number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use FieldType::*;

    fn payout() -> KindSchema {
        KindSchema {
            description: "pays out",
            params: vec![
                FieldSpec::required("customer_id", String, "customer"),
                FieldSpec::required("payout", Object, "the payout"),
                FieldSpec::required("payout.wallet_id", String, "wallet"),
                FieldSpec::required("payout.amount", Integer, "minor units"),
                FieldSpec::optional("bank", Object, "bank"),
                FieldSpec::required("bank.iban", String, "iban"),
            ],
            outputs: vec![],
        }
    }

    #[test]
    fn a_missing_nested_required_field_is_refused_with_its_path() {
        let err = payout()
            .check(&json!({"customer_id": "c", "payout": {"amount": 5}}))
            .unwrap_err();
        assert!(err.contains("payout.wallet_id"), "{err}");
        assert!(err.contains("required"), "{err}");
    }

    #[test]
    fn values_from_earlier_steps_and_absent_optional_parents_are_accepted() {
        let s = payout();
        // customer_id from an earlier step; the whole payout from an earlier step.
        assert_eq!(
            s.check(&json!({"customer_id": null, "payout": null})),
            Ok(())
        );
        assert_eq!(
            s.check(&json!({"customer_id": "c", "payout": {"wallet_id": null, "amount": 1}})),
            Ok(())
        );
        // an optional object left out whole, so its required field is not asked for
        assert_eq!(
            s.check(&json!({"customer_id": "c", "payout": {"wallet_id": "w", "amount": 1}})),
            Ok(())
        );
        let err = s
            .check(
                &json!({"customer_id": "c", "payout": {"wallet_id": "w", "amount": 1}, "bank": {}}),
            )
            .unwrap_err();
        assert!(err.contains("bank.iban"), "{err}");
    }

    #[test]
    fn wrong_types_are_refused() {
        let err = payout()
            .check(&json!({"customer_id": "c", "payout": {"wallet_id": "w", "amount": 1.5}}))
            .unwrap_err();
        assert!(
            err.contains("payout.amount must be of type integer"),
            "{err}"
        );
    }
}
