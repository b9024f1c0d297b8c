//! Conditional steps: a step's `when` says, from the saga's input and earlier outputs, whether
//! it runs or is skipped.
//!
//! A condition is data, not an expression language: one JSONPath (`path`, into the same scope
//! as parameters: `$.input...`, `$.saga...`, `$.steps.<earlier step>...`) and exactly one test:
//!
//! | test | the step runs when the value at `path` |
//! |---|---|
//! | `equals = V` | is present and equal to `V` (JSON equality) |
//! | `not_equals = V` | is absent, or present and not equal to `V` |
//! | `in = [V, ...]` | is present and equal to one of the values |
//! | `not_in = [V, ...]` | is absent, or present and equal to none of them |
//! | `exists = true / false` | is present / absent |
//!
//! "Absent" means the path matched nothing (e.g. a field the output does not have, or a step
//! that was itself skipped and so has no output). A path that matches more than one value is an
//! error at run time: the step fails (write paths that name one value).
//!
//! In TOML: `when = { path = "$.steps.create_customer.verification_status", not_equals =
//! "VERIFIED" }`; in Rust: [`crate::StepDef::with_when`] with [`Condition::not_equals`].
//!
//! The state machine evaluates a step's condition when the step becomes current (before its
//! first attempt, [`crate::next_run`]); a step whose condition does not hold is passed over with
//! a `step_skipped` history entry (the condition and the value seen) and has no output.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json_path::JsonPath;

/// A step's `when` (see the module docs): a path and exactly one test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// JSONPath into the saga scope (`$.input...`, `$.saga...`, `$.steps.<earlier step>...`).
    pub path: String,
    /// Runs when the value is present and equal to this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<Value>,
    /// Runs when the value is absent or not equal to this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_equals: Option<Value>,
    /// Runs when the value is present and one of these.
    #[serde(default, rename = "in", skip_serializing_if = "Option::is_none")]
    pub is_in: Option<Vec<Value>>,
    /// Runs when the value is absent or none of these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_in: Option<Vec<Value>>,
    /// Runs when the value is present (`true`) or absent (`false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exists: Option<bool>,
}

impl Condition {
    fn at(path: impl Into<String>) -> Self {
        Condition {
            path: path.into(),
            equals: None,
            not_equals: None,
            is_in: None,
            not_in: None,
            exists: None,
        }
    }

    /// Runs when the value at `path` equals `value`.
    pub fn equals(path: impl Into<String>, value: Value) -> Self {
        Condition {
            equals: Some(value),
            ..Condition::at(path)
        }
    }

    /// Runs when the value at `path` is absent or not equal to `value`.
    pub fn not_equals(path: impl Into<String>, value: Value) -> Self {
        Condition {
            not_equals: Some(value),
            ..Condition::at(path)
        }
    }

    /// Runs when the value at `path` is one of `values`.
    pub fn is_in(path: impl Into<String>, values: Vec<Value>) -> Self {
        Condition {
            is_in: Some(values),
            ..Condition::at(path)
        }
    }

    /// Runs when the value at `path` is absent or none of `values`.
    pub fn not_in(path: impl Into<String>, values: Vec<Value>) -> Self {
        Condition {
            not_in: Some(values),
            ..Condition::at(path)
        }
    }

    /// Runs when a value at `path` is present (`true`) or absent (`false`).
    pub fn exists(path: impl Into<String>, present: bool) -> Self {
        Condition {
            exists: Some(present),
            ..Condition::at(path)
        }
    }

    /// The one test, or what is wrong (none, or more than one).
    fn test(&self) -> Result<Test<'_>, String> {
        let mut tests = Vec::new();
        if let Some(v) = &self.equals {
            tests.push(Test::Equals(v));
        }
        if let Some(v) = &self.not_equals {
            tests.push(Test::NotEquals(v));
        }
        if let Some(v) = &self.is_in {
            tests.push(Test::In(v));
        }
        if let Some(v) = &self.not_in {
            tests.push(Test::NotIn(v));
        }
        if let Some(v) = self.exists {
            tests.push(Test::Exists(v));
        }
        match tests.as_slice() {
            [one] => Ok(*one),
            [] => Err("gives no test: write one of equals, not_equals, in, not_in, exists".into()),
            _ => Err(
                "gives more than one test: write exactly one of equals, not_equals, in, not_in, exists (use a list with `in` for several values)"
                    .into(),
            ),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Test<'a> {
    Equals(&'a Value),
    NotEquals(&'a Value),
    In(&'a [Value]),
    NotIn(&'a [Value]),
    Exists(bool),
}

/// A validated condition with its path parsed once.
#[derive(Debug, Clone)]
pub struct CompiledCondition {
    /// The condition as written.
    pub condition: Condition,
    path: JsonPath,
}

/// What evaluating a condition found.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// The step runs.
    pub holds: bool,
    /// The value the path matched (`None`: absent).
    pub seen: Option<Value>,
}

impl CompiledCondition {
    /// Checks the test and parses the path; `check_scope` checks where the path reads (the same
    /// rule as parameter references). Errors say what is wrong, for the definition error.
    pub(crate) fn compile(
        condition: &Condition,
        check_scope: impl Fn(&str) -> Result<(), String>,
    ) -> Result<CompiledCondition, String> {
        let test = condition.test()?;
        if let Test::In(values) | Test::NotIn(values) = test {
            if values.is_empty() {
                return Err("has an empty list: give at least one value".into());
            }
        }
        let path = JsonPath::parse(&condition.path)
            .map_err(|e| format!("path {:?} is not valid JSONPath: {e}", condition.path))?;
        check_scope(&condition.path)?;
        Ok(CompiledCondition {
            condition: condition.clone(),
            path,
        })
    }

    /// Evaluates against the saga scope. Err when the path matches more than one value.
    pub fn evaluate(&self, scope: &Value) -> Result<Verdict, String> {
        let nodes = self.path.query(scope).all();
        let seen = match nodes.as_slice() {
            [] => None,
            [one] => Some((*one).clone()),
            many => {
                return Err(format!(
                    "condition path {} matched {} values, expected one",
                    self.condition.path,
                    many.len()
                ))
            }
        };
        let test = self.condition.test()?;
        let holds = match (test, &seen) {
            (Test::Equals(v), Some(s)) => s == v,
            (Test::Equals(_), None) => false,
            (Test::NotEquals(v), Some(s)) => s != v,
            (Test::NotEquals(_), None) => true,
            (Test::In(vs), Some(s)) => vs.contains(s),
            (Test::In(_), None) => false,
            (Test::NotIn(vs), Some(s)) => !vs.contains(s),
            (Test::NotIn(_), None) => true,
            (Test::Exists(want), s) => s.is_some() == want,
        };
        Ok(Verdict { holds, seen })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn compiled(c: Condition) -> CompiledCondition {
        CompiledCondition::compile(&c, |_| Ok(())).expect("valid")
    }

    #[test]
    fn each_test_decides_on_present_and_absent_values() {
        let scope = json!({"steps": {"c": {"status": "VERIFIED", "n": 2}}});
        let path = "$.steps.c.status";
        let missing = "$.steps.c.nope";
        let cases = [
            (Condition::equals(path, json!("VERIFIED")), true),
            (Condition::equals(missing, json!("VERIFIED")), false),
            (Condition::not_equals(path, json!("VERIFIED")), false),
            (Condition::not_equals(missing, json!("VERIFIED")), true),
            (
                Condition::is_in(path, vec![json!("A"), json!("VERIFIED")]),
                true,
            ),
            (Condition::is_in(missing, vec![json!("VERIFIED")]), false),
            (Condition::not_in(path, vec![json!("VERIFIED")]), false),
            (Condition::not_in(missing, vec![json!("VERIFIED")]), true),
            (Condition::exists(path, true), true),
            (Condition::exists(missing, true), false),
            (Condition::exists(missing, false), true),
            (Condition::equals("$.steps.c.n", json!(2)), true),
        ];
        for (c, holds) in cases {
            let v = compiled(c.clone()).evaluate(&scope).expect("evaluates");
            assert_eq!(v.holds, holds, "{c:?}");
        }
        let v = compiled(Condition::equals(path, json!("X")))
            .evaluate(&scope)
            .expect("evaluates");
        assert_eq!(v.seen, Some(json!("VERIFIED")));
    }

    #[test]
    fn a_condition_needs_exactly_one_test_and_a_single_value() {
        let mut two = Condition::equals("$.input.a", json!(1));
        two.exists = Some(true);
        let e = CompiledCondition::compile(&two, |_| Ok(())).unwrap_err();
        assert!(e.contains("more than one test"), "{e}");
        let none = Condition::at("$.input.a");
        let e = CompiledCondition::compile(&none, |_| Ok(())).unwrap_err();
        assert!(e.contains("no test"), "{e}");
        let e = CompiledCondition::compile(&Condition::is_in("$.input.a", vec![]), |_| Ok(()))
            .unwrap_err();
        assert!(e.contains("empty list"), "{e}");
        let e = compiled(Condition::exists("$.input.list[*]", true))
            .evaluate(&json!({"input": {"list": [1, 2]}}))
            .unwrap_err();
        assert!(e.contains("matched 2 values"), "{e}");
    }

    #[test]
    fn toml_spelling_round_trips() {
        #[derive(Deserialize)]
        struct S {
            when: Condition,
        }
        let s: S = toml::from_str(r#"when = { path = "$.input.tier", in = ["gold", "silver"] }"#)
            .expect("parses");
        assert_eq!(
            s.when,
            Condition::is_in("$.input.tier", vec![json!("gold"), json!("silver")])
        );
        assert_eq!(
            serde_json::to_value(&s.when).expect("serializes"),
            json!({"path": "$.input.tier", "in": ["gold", "silver"]})
        );
        assert!(toml::from_str::<S>(r#"when = { path = "$.input.a", is = 1 }"#).is_err());
    }
}
