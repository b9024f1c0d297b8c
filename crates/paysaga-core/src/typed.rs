//! Typed step kinds: a [`Step`] names Rust types for its parameters and its output; the
//! engine sees it as a [`StepKind`] through the [`Typed`] adapter, which
//!
//! - deserializes the resolved parameters into [`Step::Params`] before [`Step::run`] (a run
//!   whose parameters do not deserialize fails the step with the field named:
//!   `invalid params: destination.iban: ...`),
//! - serializes the returned [`Step::Output`] as the step's output,
//! - derives the kind's [`KindSchema`] (what `paysaga kinds` prints and what `start` checks,
//!   nested fields included) from the JSON Schemas of both types (`schemars`): a field's doc
//!   comment is its description, an `Option` field is optional; and
//! - validates at start by deserializing the parameters too, where values an earlier step
//!   decides are `null`: such a field is accepted (it is checked when the step runs), every
//!   value the input gives is checked by its type's `Deserialize` (so newtypes such as a
//!   positive amount check their rules at start). A deferred field inside a nested object
//!   ends the check of the fields after that object (they are checked when the step runs).
//!
//! ```
//! use paysaga_core::{Step, StepContext, StepKind, StepOutcome, Typed};
//! use schemars::JsonSchema;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Deserialize, JsonSchema)]
//! struct GreetParams {
//!     /// Who to greet.
//!     name: String,
//!     /// How many times (default 1).
//!     times: Option<u32>,
//! }
//!
//! #[derive(Debug, Serialize, JsonSchema)]
//! struct Greeting {
//!     /// The greeting.
//!     text: String,
//! }
//!
//! #[derive(Debug)]
//! struct Greet;
//!
//! #[async_trait::async_trait]
//! impl Step for Greet {
//!     type Params = GreetParams;
//!     type Output = Greeting;
//!     const NAME: &'static str = "demo.greet";
//!     const DESCRIPTION: &'static str = "Greets someone.";
//!
//!     async fn run(&self, _ctx: &StepContext, p: GreetParams) -> Result<Greeting, StepOutcome> {
//!         Ok(Greeting { text: format!("hello {}", p.name).repeat(p.times.unwrap_or(1) as usize) })
//!     }
//! }
//!
//! let kind = Typed(Greet);
//! assert_eq!(kind.name(), "demo.greet");
//! let schema = kind.schema().unwrap();
//! assert_eq!(schema.params[0].path, "name");
//! assert!(schema.params[0].required);
//! assert_eq!(schema.params[0].description, "Who to greet.");
//! assert!(!schema.params[1].required);
//! // Checked at start: a wrong type is refused with the field named, a value an earlier
//! // step decides (`null`) is accepted.
//! let err = kind.validate(&serde_json::json!({"name": 7})).unwrap_err();
//! assert!(err.contains("name must be of type string"), "{err}");
//! assert_eq!(kind.validate(&serde_json::json!({"name": null})), Ok(()));
//! ```

use std::any::TypeId;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::schema::{FieldSpec, FieldType, KindSchema};
use crate::step::{StepContext, StepKind, StepOutcome};

/// A step kind with typed parameters and output; register it as `Typed(step)` (a
/// [`StepKind`]). See the [module documentation](self).
#[async_trait]
pub trait Step: Send + Sync + std::fmt::Debug + 'static {
    /// The parameters, deserialized from the step's resolved `params`.
    type Params: DeserializeOwned + JsonSchema + Send;
    /// The output, serialized as the step's output (later steps read it as
    /// `$.steps.<name>.output...`).
    type Output: Serialize + JsonSchema + Send;

    /// Registered name, e.g. `lean.create_intent`.
    const NAME: &'static str;
    /// What the kind does, in one sentence (`paysaga kinds`).
    const DESCRIPTION: &'static str;

    /// Runs the step once. `Ok(output)`: the step is done. `Err(outcome)`: any other outcome
    /// (wait, retry, fail, held).
    async fn run(
        &self,
        ctx: &StepContext,
        params: Self::Params,
    ) -> Result<Self::Output, StepOutcome>;

    /// Checks beyond the types, on parameters resolved at start (values an earlier step
    /// decides are `null`); runs after the typed check. Default: none.
    fn validate(&self, _params: &Value) -> Result<(), String> {
        Ok(())
    }

    /// See [`StepKind::compensable`].
    fn compensable(&self) -> bool {
        false
    }

    /// See [`StepKind::compensate`]; `ctx.output` holds the step's output.
    async fn compensate(&self, _ctx: &StepContext, _params: Self::Params) -> StepOutcome {
        StepOutcome::Done(Value::Null)
    }

    /// See [`StepKind::irreversible`].
    fn irreversible(&self) -> bool {
        false
    }

    /// See [`StepKind::documents`].
    fn documents(&self, _params: &Value) -> Vec<crate::DocumentId> {
        Vec::new()
    }

    /// See [`StepKind::references`].
    fn references(&self, _output: &Value) -> Vec<(String, String)> {
        Vec::new()
    }
}

/// The [`StepKind`] of a typed [`Step`].
#[derive(Debug, Clone)]
pub struct Typed<S>(pub S);

/// Deserializes `value` into `T`; the error names the field (`destination.iban: ...`).
pub fn from_params<T: DeserializeOwned>(value: Value) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            inner.to_string()
        } else {
            format!("{path}: {inner}")
        }
    })
}

/// `value` without the object fields that are `null` (at any depth).
fn without_nulls(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

#[async_trait]
impl<S: Step> StepKind for Typed<S> {
    fn name(&self) -> &'static str {
        S::NAME
    }

    fn validate(&self, params: &Value) -> Result<(), String> {
        if params.is_null() {
            return Ok(()); // all decided by an earlier step
        }
        let schema = typed_schema::<S>();
        schema.kind.check(params)?;
        // Nulls are values decided later: left out, a required one reads as missing, which
        // the schema check above has already told apart from a field the input lacks.
        let pruned = without_nulls(params);
        if let Err(e) = serde_path_to_error::deserialize::<_, S::Params>(pruned) {
            let path = e.path().to_string();
            let inner = e.into_inner().to_string();
            if !inner.starts_with("missing field") {
                return Err(if path == "." {
                    inner
                } else {
                    format!("{path}: {inner}")
                });
            }
        }
        self.0.validate(params)
    }

    async fn run(&self, ctx: &StepContext, params: Value) -> StepOutcome {
        let params = match from_params::<S::Params>(params) {
            Ok(p) => p,
            Err(e) => return StepOutcome::fail(format!("invalid params: {e}")),
        };
        match self.0.run(ctx, params).await {
            Ok(output) => match serde_json::to_value(output) {
                Ok(v) => StepOutcome::Done(v),
                Err(e) => StepOutcome::fail(format!(
                    "step kind {}: its output does not serialize to JSON: {e}",
                    S::NAME
                )),
            },
            Err(outcome) => outcome,
        }
    }

    fn compensable(&self) -> bool {
        self.0.compensable()
    }

    async fn compensate(&self, ctx: &StepContext, params: Value) -> StepOutcome {
        match from_params::<S::Params>(params) {
            Ok(p) => self.0.compensate(ctx, p).await,
            Err(e) => StepOutcome::fail(format!("invalid params: {e}")),
        }
    }

    fn irreversible(&self) -> bool {
        self.0.irreversible()
    }

    fn documents(&self, params: &Value) -> Vec<crate::DocumentId> {
        self.0.documents(params)
    }

    fn schema(&self) -> Option<KindSchema> {
        Some(typed_schema::<S>().kind.clone())
    }

    fn json_schema(&self) -> Option<Value> {
        Some(typed_schema::<S>().json.clone())
    }

    fn references(&self, output: &Value) -> Vec<(String, String)> {
        self.0.references(output)
    }
}

/// A typed kind's schemas, derived once per type.
#[derive(Debug)]
struct DerivedSchema {
    kind: KindSchema,
    json: Value,
}

/// The schemas of `S`, derived on first use and kept for the process (their texts are
/// `'static` in [`FieldSpec`]: one small allocation per typed kind type, never repeated).
fn typed_schema<S: Step>() -> &'static DerivedSchema {
    static CACHE: OnceLock<Mutex<HashMap<TypeId, &'static DerivedSchema>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut map = cache
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    map.entry(TypeId::of::<S>()).or_insert_with(|| {
        let params = schemars::schema_for!(S::Params).to_value();
        let output = schemars::schema_for!(S::Output).to_value();
        let kind = KindSchema {
            description: S::DESCRIPTION,
            params: fields_of(&params),
            outputs: fields_of(&output),
        };
        Box::leak(Box::new(DerivedSchema {
            kind,
            json: serde_json::json!({"params": params, "output": output}),
        }))
    })
}

/// The dotted-path fields of a JSON Schema (as derived by `schemars`): an object's
/// properties, nested objects' ones under `parent.`, array items' ones under `parent[].`.
pub fn fields_of(root: &Value) -> Vec<FieldSpec> {
    let mut out = Vec::new();
    collect(root, root, "", &mut out);
    out
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// `schema` with its `$ref` (to the root's `$defs`) followed, and the one non-null branch of
/// an `anyOf`/`oneOf` (an `Option`) taken.
fn resolved<'a>(root: &'a Value, schema: &'a Value) -> &'a Value {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let target = r
            .strip_prefix("#/")
            .and_then(|p| p.split('/').try_fold(root, |at, seg| at.get(seg)));
        if let Some(target) = target {
            return resolved(root, target);
        }
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(branches) = schema.get(key).and_then(Value::as_array) {
            let not_null: Vec<&Value> = branches
                .iter()
                .filter(|b| b.get("type").and_then(Value::as_str) != Some("null"))
                .collect();
            if let [one] = not_null.as_slice() {
                return resolved(root, one);
            }
        }
    }
    schema
}

fn type_of(root: &Value, schema: &Value) -> FieldType {
    let s = resolved(root, schema);
    let named = match s.get("type") {
        Some(Value::String(t)) => Some(t.as_str()),
        Some(Value::Array(ts)) => {
            let ts: Vec<&str> = ts
                .iter()
                .filter_map(Value::as_str)
                .filter(|t| *t != "null")
                .collect();
            match ts.as_slice() {
                [one] => Some(*one),
                _ => None,
            }
        }
        _ => None,
    };
    match named {
        Some("string") if s.get("format").and_then(Value::as_str) == Some("duration") => {
            FieldType::Duration
        }
        Some("string") => FieldType::String,
        Some("integer") => FieldType::Integer,
        Some("boolean") => FieldType::Boolean,
        Some("object") => FieldType::Object,
        Some("array") => FieldType::Array,
        _ => {
            let strings = |key: &str| {
                s.get(key)
                    .and_then(Value::as_array)
                    .is_some_and(|vs| !vs.is_empty() && vs.iter().all(Value::is_string))
            };
            let variants_are_strings = ["oneOf", "anyOf"].iter().any(|k| {
                s.get(*k).and_then(Value::as_array).is_some_and(|bs| {
                    !bs.is_empty() && bs.iter().all(|b| type_of(root, b) == FieldType::String)
                })
            });
            if strings("enum")
                || s.get("const").is_some_and(Value::is_string)
                || variants_are_strings
            {
                FieldType::String
            } else {
                FieldType::Any
            }
        }
    }
}

fn collect(root: &Value, schema: &Value, prefix: &str, out: &mut Vec<FieldSpec>) {
    let s = resolved(root, schema);
    let Some(props) = s.get("properties").and_then(Value::as_object) else {
        return;
    };
    let empty = Vec::new();
    let required = s
        .get("required")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    for (name, prop) in props {
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        let ty = type_of(root, prop);
        let description = description(root, prop);
        out.push(FieldSpec {
            path: leak(path.clone()),
            ty,
            required: required.iter().any(|r| r.as_str() == Some(name)),
            description: leak(description),
        });
        match ty {
            FieldType::Object => collect(root, prop, &path, out),
            FieldType::Array => {
                if let Some(items) = resolved(root, prop).get("items") {
                    collect(root, items, &format!("{path}[]"), out);
                }
            }
            _ => {}
        }
    }
}

/// A property's own description (its doc comment), else its type's.
fn description(root: &Value, prop: &Value) -> String {
    fn own(v: &Value) -> Option<&str> {
        v.get("description").and_then(Value::as_str).map(str::trim)
    }
    own(prop)
        .or_else(|| own(resolved(root, prop)))
        .unwrap_or_default()
        .replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct Payout {
        /// Wallet to pay from.
        wallet_id: String,
        /// Minor units.
        amount: i64,
        note: Option<String>,
    }

    #[derive(Debug, Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct Params {
        /// The customer.
        customer_id: String,
        /// The payout.
        payout: Payout,
        bank: Option<Payout>,
        tags: Vec<Payout>,
    }

    #[derive(Debug, Serialize, JsonSchema)]
    struct Out {
        /// Payout id.
        payout_id: String,
    }

    #[derive(Debug)]
    struct Pay;

    #[async_trait]
    impl Step for Pay {
        type Params = Params;
        type Output = Out;
        const NAME: &'static str = "test.pay";
        const DESCRIPTION: &'static str = "pays";
        async fn run(&self, _ctx: &StepContext, p: Params) -> Result<Out, StepOutcome> {
            Ok(Out {
                payout_id: p.payout.wallet_id,
            })
        }
    }

    #[test]
    fn the_derived_schema_lists_nested_fields_with_their_doc_comments_and_requirement() {
        let schema = Typed(Pay).schema().expect("declared");
        let find = |p: &str| {
            schema
                .params
                .iter()
                .find(|f| f.path == p)
                .unwrap_or_else(|| panic!("{p} in {:?}", schema.params))
        };
        assert_eq!(find("payout").ty, FieldType::Object);
        assert!(find("payout").required);
        assert_eq!(find("payout.wallet_id").description, "Wallet to pay from.");
        assert!(find("payout.wallet_id").required);
        assert_eq!(find("payout.amount").ty, FieldType::Integer);
        assert!(!find("payout.note").required);
        assert!(!find("bank").required);
        assert_eq!(find("bank").ty, FieldType::Object);
        assert!(find("bank.wallet_id").required);
        assert_eq!(find("tags").ty, FieldType::Array);
        assert_eq!(find("tags[].amount").ty, FieldType::Integer);
        assert_eq!(schema.outputs[0].path, "payout_id");
        assert_eq!(schema.description, "pays");
    }

    #[test]
    fn start_refuses_a_missing_nested_field_and_accepts_values_decided_later() {
        let kind = Typed(Pay);
        let schema = kind.schema().expect("declared");
        let err = schema
            .check(&json!({"customer_id": "c", "payout": {"amount": 5}, "tags": []}))
            .unwrap_err();
        assert!(err.contains("payout.wallet_id"), "{err}");
        let ok =
            json!({"customer_id": null, "payout": {"wallet_id": null, "amount": 5}, "tags": []});
        assert_eq!(schema.check(&ok), Ok(()));
        assert_eq!(kind.validate(&ok), Ok(()));
        let err = kind
            .validate(&json!({"customer_id": "c", "payout": {"wallet_id": "w", "amount": "5"}, "tags": []}))
            .unwrap_err();
        assert!(err.contains("payout.amount"), "{err}");
    }
}
