//! Workflow definitions: data that names step kinds, their parameters and policies.
//!
//! A definition is written in TOML (files in `workflows/`) or built in Rust, validated
//! against the registered step kinds, and stored versioned by name + version + content hash.
//!
//! Parameters are JSON values. A string that starts with `$` is a JSONPath (RFC 9535, via
//! `serde_json_path`) evaluated against the saga's *scope*:
//! `{"input": <saga input>, "steps": {"<step name>": <its output>}, "saga": {"id", "workflow"}}`,
//! e.g. `"$.input.amount"` or `"$.steps.create_payable.id"`. Write `"$$..."` for a literal
//! string that starts with `$`.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json_path::JsonPath;
use sha2::{Digest, Sha256};

use crate::concurrency::Concurrency;
use crate::condition::{CompiledCondition, Condition};
use crate::retry::{PolicyError, RetryPolicy};
use crate::saga::StepTraits;

/// A workflow definition: a named, versioned, ordered list of steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    /// Workflow name used by `start` (`[a-z0-9_.-]+`).
    pub name: String,
    /// Version, starting at 1. Different content under an existing version is refused.
    pub version: u32,
    /// Free text for operators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Steps in execution order.
    pub steps: Vec<StepDef>,
    /// At most `limit` sagas at once per value of an input field (`[concurrency]`, see
    /// [`crate::concurrency`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<Concurrency>,
}

/// One step of a definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepDef {
    /// Unique within the definition; part of the step's idempotency key.
    pub name: String,
    /// Registered step kind, e.g. `noop.sleep` or `lumanu.create_payable` (none for a
    /// fan-out step, see [`StepDef::fan_out`]).
    #[serde(default)]
    pub kind: String,
    /// Parameters (JSON); strings starting with `$` are JSONPath references.
    #[serde(default = "empty_object")]
    pub params: Value,
    /// Retry policy for transient failures.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Longest time one attempt may run before it counts as a transient failure.
    #[serde(default = "default_timeout", with = "serde_duration")]
    pub timeout: Duration,
    /// Longest time the step may wait for an event before it fails.
    #[serde(default = "default_deadline", with = "serde_duration")]
    pub deadline: Duration,
    /// Silence after which a waiting step polls the provider (polling fallback).
    #[serde(default = "default_poll_every", with = "serde_duration")]
    pub poll_every: Duration,
    /// Whether the step's compensation runs when a later step fails (default: yes, if the
    /// step kind has one).
    #[serde(default = "default_true")]
    pub compensate: bool,
    /// Marks the step's effect as impossible to undo even if the kind does not say so.
    #[serde(default)]
    pub irreversible: bool,
    /// Runs the step only when this condition on the input and earlier outputs holds;
    /// otherwise it is skipped (history `step_skipped`, no output). See [`crate::condition`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<Condition>,
    /// A fan-out step (no `kind`): one child saga per element of a list, at most
    /// `max_in_flight` unfinished at once; the step completes when every child has ended
    /// (see [`crate::fan_out`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fan_out: Option<FanOut>,
}

/// What a fan-out step starts: one child saga of `workflow` per element of `items`.
///
/// ```toml
/// [[steps]]
/// name = "payees"
/// fan_out = { workflow = "lumanu_payout", items = "$.input.creators", key = "$.id",
///             input = { payee = "$.item.id", amount = "$.item.amount" }, max_in_flight = 50 }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FanOut {
    /// The children's workflow (its latest version when each child starts).
    pub workflow: String,
    /// JSONPath to an array: `$.input...` or `$.steps.<earlier step>...`.
    pub items: String,
    /// JSONPath evaluated against one element: its key (a string or an integer), unique in
    /// the list; the child's idempotency key derives from the parent id, the step and it.
    pub key: String,
    /// The child's input: a template like `params`, where `$.item...` reads the element.
    #[serde(default = "item_input")]
    pub input: Value,
    /// At most this many children unfinished at once (a parked child keeps its place).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u32,
}

fn item_input() -> Value {
    Value::String("$.item".into())
}
fn default_max_in_flight() -> u32 {
    10
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}
fn default_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_deadline() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
fn default_poll_every() -> Duration {
    Duration::from_secs(300)
}
fn default_true() -> bool {
    true
}

/// Builds a [`Definition`] in Rust: the same data as a TOML file in `workflows/`, checked by
/// the same validation when submitted (`Engine::submit_definition`), with the same content
/// hash when the content is the same.
///
/// ```
/// use std::time::Duration;
/// use paysaga_core::{Definition, RetryPolicy, StepDef};
/// use serde_json::json;
///
/// let def = Definition::builder("lumanu_payout", 1)
///     .description("create, approve and pay a payable")
///     .step(
///         StepDef::new("create_payable", "lumanu.create_payable", json!({"payee": "$.input.payee"}))
///             .with_retry(RetryPolicy::default().with_initial_delay(Duration::from_secs(2)).with_max_attempts(10))
///             .with_timeout(Duration::from_secs(120)),
///     )
///     .step(
///         StepDef::new("await_paid", "lumanu.await_payable_paid",
///                      json!({"payable_id": "$.steps.create_payable.payable_id"}))
///             .with_deadline(Duration::from_secs(5 * 24 * 3600))
///             .with_poll_every(Duration::from_secs(15 * 60)),
///     )
///     .build();
/// assert_eq!(def.steps.len(), 2);
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct DefinitionBuilder {
    def: Definition,
}

impl DefinitionBuilder {
    /// Free text for operators.
    pub fn description(mut self, text: impl Into<String>) -> Self {
        self.def.description = Some(text.into());
        self
    }

    /// Appends a step (steps run in the order given).
    pub fn step(mut self, step: StepDef) -> Self {
        self.def.steps.push(step);
        self
    }

    /// At most `concurrency.limit` sagas at once per value of its key (see
    /// [`crate::concurrency`]).
    pub fn concurrency(mut self, concurrency: Concurrency) -> Self {
        self.def.concurrency = Some(concurrency);
        self
    }

    /// The definition (validated when submitted, as a parsed TOML file is).
    pub fn build(self) -> Definition {
        self.def
    }
}

impl Definition {
    /// Starts building a definition in Rust: see [`DefinitionBuilder`].
    pub fn builder(name: impl Into<String>, version: u32) -> DefinitionBuilder {
        DefinitionBuilder {
            def: Definition {
                name: name.into(),
                version,
                description: None,
                steps: Vec::new(),
                concurrency: None,
            },
        }
    }
}

impl StepDef {
    /// With this retry policy.
    #[must_use]
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// With this attempt timeout.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// With this wait deadline.
    #[must_use]
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Polling the provider after this much silence while waiting.
    #[must_use]
    pub fn with_poll_every(mut self, every: Duration) -> Self {
        self.poll_every = every;
        self
    }

    /// Without running the kind's compensation when a later step fails.
    #[must_use]
    pub fn without_compensation(mut self) -> Self {
        self.compensate = false;
        self
    }

    /// Marked irreversible even if its kind does not say so.
    #[must_use]
    pub fn irreversible(mut self) -> Self {
        self.irreversible = true;
        self
    }

    /// Run only when `condition` holds (skipped otherwise): see [`crate::condition`].
    #[must_use]
    pub fn with_when(mut self, condition: Condition) -> Self {
        self.when = Some(condition);
        self
    }
}

impl StepDef {
    /// A step with default policies.
    pub fn new(name: impl Into<String>, kind: impl Into<String>, params: Value) -> Self {
        StepDef {
            name: name.into(),
            kind: kind.into(),
            params,
            retry: RetryPolicy::default(),
            timeout: default_timeout(),
            deadline: default_deadline(),
            poll_every: default_poll_every(),
            compensate: true,
            irreversible: false,
            when: None,
            fan_out: None,
        }
    }

    /// A fan-out step: one child saga per element (see [`FanOut`]).
    pub fn fan_out(name: impl Into<String>, fan_out: FanOut) -> Self {
        StepDef {
            fan_out: Some(fan_out),
            ..StepDef::new(name, "", Value::Object(Default::default()))
        }
    }
}

/// What is wrong with a definition. Each variant names the step and field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DefinitionError {
    /// The file is not valid TOML for a definition.
    #[error("definition is not valid TOML: {0}")]
    Parse(String),
    /// Name empty or with characters outside `[a-z0-9_.-]`.
    #[error("workflow name {0:?} must be non-empty and use only a-z, 0-9, '_', '.', '-'")]
    BadName(String),
    /// Version 0.
    #[error("workflow {0}: version must be at least 1")]
    ZeroVersion(String),
    /// No steps.
    #[error("workflow {0}: a definition needs at least one step")]
    NoSteps(String),
    /// Two steps share a name.
    #[error("workflow {workflow}: step name {step:?} is used twice")]
    DuplicateStep {
        /// workflow
        workflow: String,
        /// step
        step: String,
    },
    /// Step name empty or with characters outside `[a-z0-9_-]`.
    #[error(
        "workflow {workflow}: step name {step:?} must be non-empty and use only a-z, 0-9, '_', '-'"
    )]
    BadStepName {
        /// workflow
        workflow: String,
        /// step
        step: String,
    },
    /// The step kind is not registered with this engine.
    #[error("workflow {workflow}, step {step}: unknown step kind {kind:?} (registered: {known})")]
    UnknownKind {
        /// workflow
        workflow: String,
        /// step
        step: String,
        /// kind
        kind: String,
        /// comma-separated registered kinds
        known: String,
    },
    /// A parameter path is not valid JSONPath or refers to something that cannot exist.
    #[error("workflow {workflow}, step {step}, parameter {param}: {reason}")]
    BadReference {
        /// workflow
        workflow: String,
        /// step
        step: String,
        /// parameter location, e.g. `params.amount`
        param: String,
        /// what is wrong
        reason: String,
    },
    /// The retry policy is impossible.
    #[error("workflow {workflow}, step {step}: retry policy: {source}")]
    Policy {
        /// workflow
        workflow: String,
        /// step
        step: String,
        /// what is wrong
        source: PolicyError,
    },
    /// A duration that must be positive is zero.
    #[error("workflow {workflow}, step {step}: {field} must be longer than zero")]
    ZeroDuration {
        /// workflow
        workflow: String,
        /// step
        step: String,
        /// field name
        field: &'static str,
    },
    /// The step kind refused the step's parameters.
    #[error("workflow {workflow}, step {step}: {reason}")]
    Params {
        /// workflow
        workflow: String,
        /// step
        step: String,
        /// what is wrong
        reason: String,
    },
    /// A duration longer than [`MAX_DURATION`] (times that far out cannot be scheduled).
    #[error("workflow {workflow}, step {step}: {field} = {value} is longer than the longest allowed duration (10 years); write a shorter one")]
    DurationTooLong {
        /// workflow
        workflow: String,
        /// step
        step: String,
        /// field name (`deadline`, `retry.max_total`...)
        field: &'static str,
        /// the duration as written back
        value: String,
    },
    /// The `[concurrency]` table is impossible (key not into the input, limit 0...).
    #[error("workflow {workflow}: {reason}")]
    Concurrency {
        /// workflow
        workflow: String,
        /// what is wrong
        reason: String,
    },

    /// A step's `when` is malformed or reads something that cannot exist.
    #[error("workflow {workflow}, step {step}, when: {reason}")]
    BadCondition {
        /// workflow
        workflow: String,
        /// step
        step: String,
        /// what is wrong
        reason: String,
    },

    /// A fan-out step is malformed (a kind or params beside it, a bad path, a zero
    /// `max_in_flight`, a bad workflow name).
    #[error("workflow {workflow}, step {step}: fan_out: {reason}")]
    FanOut {
        /// workflow
        workflow: String,
        /// step
        step: String,
        /// what is wrong
        reason: String,
    },
}

/// The longest duration a definition may give (deadline, timeout, poll interval, retry
/// delays and total): ten years. Longer ones are refused at submit, so that no time the engine
/// schedules overflows.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 366 * 24 * 3600);

impl Definition {
    /// Parses a definition from TOML.
    pub fn from_toml(text: &str) -> Result<Definition, DefinitionError> {
        toml::from_str(text).map_err(|e| DefinitionError::Parse(e.to_string()))
    }

    /// Content hash: hex SHA-256 of the canonical JSON form (object keys sorted).
    pub fn content_hash(&self) -> String {
        let canonical = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(Sha256::digest(canonical))
    }

    /// The distinct step kinds this definition needs.
    pub fn step_kinds(&self) -> Vec<String> {
        let mut kinds: Vec<String> = self
            .steps
            .iter()
            .filter(|s| s.fan_out.is_none())
            .map(|s| s.kind.clone())
            .collect();
        kinds.sort();
        kinds.dedup();
        kinds
    }

    /// Validates structure, policies and references; `kind_traits` answers what a
    /// registered step kind can do (`None`: not registered). Returns the compiled form used
    /// at run time.
    pub fn compile(
        &self,
        kind_traits: &dyn Fn(&str) -> Option<StepTraits>,
        known_kinds: &[String],
    ) -> Result<CompiledDefinition, DefinitionError> {
        let wf = &self.name;
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.-".contains(c))
        {
            return Err(DefinitionError::BadName(self.name.clone()));
        }
        if self.version == 0 {
            return Err(DefinitionError::ZeroVersion(wf.clone()));
        }
        if self.steps.is_empty() {
            return Err(DefinitionError::NoSteps(wf.clone()));
        }
        if let Some(reason) = self.concurrency.as_ref().and_then(Concurrency::problem) {
            return Err(DefinitionError::Concurrency {
                workflow: wf.clone(),
                reason,
            });
        }
        let mut seen = HashSet::new();
        let mut fan_out_steps: HashSet<&str> = HashSet::new();
        let mut steps = Vec::with_capacity(self.steps.len());
        for step in &self.steps {
            let err_step = || step.name.clone();
            if step.name.is_empty()
                || !step
                    .name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-".contains(c))
            {
                return Err(DefinitionError::BadStepName {
                    workflow: wf.clone(),
                    step: err_step(),
                });
            }
            if !seen.insert(step.name.as_str()) {
                return Err(DefinitionError::DuplicateStep {
                    workflow: wf.clone(),
                    step: err_step(),
                });
            }
            let traits = if step.fan_out.is_some() {
                // The children undo their own effects; the step itself has nothing to undo.
                StepTraits::default()
            } else {
                let Some(kind) = kind_traits(&step.kind) else {
                    return Err(DefinitionError::UnknownKind {
                        workflow: wf.clone(),
                        step: err_step(),
                        kind: step.kind.clone(),
                        known: known_kinds.join(", "),
                    });
                };
                StepTraits {
                    compensable: kind.compensable && step.compensate,
                    irreversible: kind.irreversible || step.irreversible,
                }
            };
            step.retry
                .validate()
                .map_err(|source| DefinitionError::Policy {
                    workflow: wf.clone(),
                    step: err_step(),
                    source,
                })?;
            for (field, d) in [
                ("timeout", step.timeout),
                ("deadline", step.deadline),
                ("poll_every", step.poll_every),
                ("retry.initial_delay", step.retry.initial_delay),
                ("retry.max_delay", step.retry.max_delay),
                ("retry.max_total", step.retry.max_total),
            ] {
                if d > MAX_DURATION {
                    return Err(DefinitionError::DurationTooLong {
                        workflow: wf.clone(),
                        step: err_step(),
                        field,
                        value: humantime::format_duration(d).to_string(),
                    });
                }
            }
            for (field, d) in [
                ("timeout", step.timeout),
                ("deadline", step.deadline),
                ("poll_every", step.poll_every),
            ] {
                if d.is_zero() {
                    return Err(DefinitionError::ZeroDuration {
                        workflow: wf.clone(),
                        step: err_step(),
                        field,
                    });
                }
            }
            // `seen` holds this step and the earlier ones; a step may not read its own output.
            let mut earlier: HashSet<&str> = seen.clone();
            earlier.remove(step.name.as_str());
            let params =
                Params::compile(&step.params, "params", &earlier).map_err(|(param, reason)| {
                    DefinitionError::BadReference {
                        workflow: wf.clone(),
                        step: err_step(),
                        param,
                        reason,
                    }
                })?;
            let when = match &step.when {
                Some(condition) => Some(
                    CompiledCondition::compile(condition, |path| check_scope(path, &earlier))
                        .map_err(|reason| DefinitionError::BadCondition {
                            workflow: wf.clone(),
                            step: err_step(),
                            reason,
                        })?,
                ),
                None => None,
            };
            check_conditional_references(&self.steps, step, &params).map_err(
                |(param, reason)| DefinitionError::BadReference {
                    workflow: wf.clone(),
                    step: err_step(),
                    param,
                    reason,
                },
            )?;

            crate::fan_out::check_children_references(&params, &fan_out_steps).map_err(
                |(param, reason)| DefinitionError::BadReference {
                    workflow: wf.clone(),
                    step: err_step(),
                    param,
                    reason,
                },
            )?;
            let fan_out = match &step.fan_out {
                Some(f) => {
                    let compiled = crate::fan_out::CompiledFanOut::compile(step, f, &earlier)
                        .map_err(|reason| DefinitionError::FanOut {
                            workflow: wf.clone(),
                            step: err_step(),
                            reason,
                        })?;
                    fan_out_steps.insert(step.name.as_str());
                    Some(compiled)
                }
                None => None,
            };
            steps.push(CompiledStep {
                def: step.clone(),
                params,
                traits,
                when,
                fan_out,
            });
        }
        Ok(CompiledDefinition {
            definition: self.clone(),
            steps,
        })
    }
}

/// A validated definition with parameter paths parsed once.
#[derive(Debug, Clone)]
pub struct CompiledDefinition {
    /// The source definition.
    pub definition: Definition,
    /// Steps, in order.
    pub steps: Vec<CompiledStep>,
}

/// A validated step.
#[derive(Debug, Clone)]
pub struct CompiledStep {
    /// The step as written.
    pub def: StepDef,
    /// Its parameters with references parsed.
    pub params: Params,
    /// What its kind (and the definition) say about undoing it.
    pub traits: StepTraits,
    /// Its `when`, path parsed (`None`: the step always runs).
    pub when: Option<CompiledCondition>,
    /// For a fan-out step: its list, key and child input with paths parsed.
    pub fan_out: Option<crate::fan_out::CompiledFanOut>,
}

/// A parameter may read a conditional step's output only from a step with the same `when`
/// (the two run or are skipped together: the condition reads only what comes before the
/// first of them, which does not change in between). Elsewhere the output may be missing
/// (the step skipped) and the reference would fail at run time: such a definition is refused
/// at submit. A later step's `when` may read it (absent is a value the tests handle).
fn check_conditional_references(
    all: &[StepDef],
    step: &StepDef,
    params: &Params,
) -> Result<(), (String, String)> {
    for (at, source, _) in params.references() {
        let Some(read) = referenced_step(source) else {
            continue;
        };
        let Some(cond) = all
            .iter()
            .find(|s| s.name == read)
            .and_then(|s| s.when.as_ref())
        else {
            continue;
        };
        if step.when.as_ref() != Some(cond) {
            return Err((
                at,
                format!(
                    "{source:?} reads step {read:?}, which runs only when {} and has no output when skipped; read it only from steps with the same `when`, or test it in this step's `when` (e.g. exists)",
                    serde_json::to_string(cond).unwrap_or_default()
                ),
            ));
        }
    }
    Ok(())
}

/// A parameter template: literals and JSONPath references.
#[derive(Debug, Clone)]
pub enum Params {
    /// A literal JSON value.
    Literal(Value),
    /// A reference evaluated against the saga scope.
    Path {
        /// The path as written.
        source: String,
        /// Parsed path.
        path: JsonPath,
    },
    /// An array of templates.
    Array(Vec<Params>),
    /// An object of templates.
    Object(BTreeMap<String, Params>),
}

/// A parameter could not be resolved at run time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("parameter {param}: path {path} {reason}")]
pub struct ResolveError {
    /// Parameter location.
    pub param: String,
    /// The path as written.
    pub path: String,
    /// What went wrong.
    pub reason: String,
}

impl Params {
    pub(crate) fn compile(
        value: &Value,
        at: &str,
        earlier_steps: &HashSet<&str>,
    ) -> Result<Params, (String, String)> {
        Ok(match value {
            Value::String(s) if s.starts_with("$$") => {
                Params::Literal(Value::String(s[1..].to_string()))
            }
            Value::String(s) if s.starts_with('$') => {
                let path = JsonPath::parse(s)
                    .map_err(|e| (at.to_string(), format!("{s:?} is not valid JSONPath: {e}")))?;
                check_scope(s, earlier_steps).map_err(|reason| (at.to_string(), reason))?;
                Params::Path {
                    source: s.clone(),
                    path,
                }
            }
            Value::Array(items) => Params::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| Params::compile(v, &format!("{at}[{i}]"), earlier_steps))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(map) => Params::Object(
                map.iter()
                    .map(|(k, v)| {
                        Params::compile(v, &format!("{at}.{k}"), earlier_steps)
                            .map(|p| (k.clone(), p))
                    })
                    .collect::<Result<_, _>>()?,
            ),
            other => Params::Literal(other.clone()),
        })
    }

    /// Resolves the template against a scope (see the module docs). A path must match
    /// exactly one value.
    pub fn resolve(&self, scope: &Value) -> Result<Value, ResolveError> {
        self.resolve_at(scope, "params")
    }

    fn resolve_at(&self, scope: &Value, at: &str) -> Result<Value, ResolveError> {
        match self {
            Params::Literal(v) => Ok(v.clone()),
            Params::Path { source, path } if source.starts_with("$.children.") => {
                // The children of a fan-out step (see `crate::fan_out`): every match, in item
                // order, as an array (possibly empty).
                Ok(Value::Array(
                    path.query(scope).all().into_iter().cloned().collect(),
                ))
            }
            Params::Path { source, path } => {
                let nodes = path.query(scope).all();
                match nodes.as_slice() {
                    [one] => Ok((*one).clone()),
                    [] => Err(ResolveError {
                        param: at.to_string(),
                        path: source.clone(),
                        reason: "matched nothing".into(),
                    }),
                    many => Err(ResolveError {
                        param: at.to_string(),
                        path: source.clone(),
                        reason: format!("matched {} values, expected one", many.len()),
                    }),
                }
            }
            Params::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, p)| p.resolve_at(scope, &format!("{at}[{i}]")))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            Params::Object(map) => map
                .iter()
                .map(|(k, p)| {
                    p.resolve_at(scope, &format!("{at}.{k}"))
                        .map(|v| (k.clone(), v))
                })
                .collect::<Result<serde_json::Map<_, _>, _>>()
                .map(Value::Object),
        }
    }

    /// Resolves only what the saga input decides: paths into `$.steps` become `null`.
    /// Used to validate inputs at start, before any step has run.
    pub fn resolve_input_only(&self, scope: &Value) -> Result<Value, ResolveError> {
        match self {
            Params::Path { source, .. }
                if source.starts_with("$.steps") || source.starts_with("$.children") =>
            {
                Ok(Value::Null)
            }
            Params::Array(items) => items
                .iter()
                .map(|p| p.resolve_input_only(scope))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            Params::Object(map) => map
                .iter()
                .map(|(k, p)| p.resolve_input_only(scope).map(|v| (k.clone(), v)))
                .collect::<Result<serde_json::Map<_, _>, _>>()
                .map(Value::Object),
            other => other.resolve(scope),
        }
    }
}

impl Params {
    /// Every JSONPath reference of the template: (parameter location, path as written, path).
    pub fn references(&self) -> Vec<(String, &str, &JsonPath)> {
        let mut out = Vec::new();
        self.collect_references("params", &mut out);
        out
    }

    fn collect_references<'a>(&'a self, at: &str, out: &mut Vec<(String, &'a str, &'a JsonPath)>) {
        match self {
            Params::Literal(_) => {}
            Params::Path { source, path } => out.push((at.to_string(), source.as_str(), path)),
            Params::Array(items) => {
                for (i, p) in items.iter().enumerate() {
                    p.collect_references(&format!("{at}[{i}]"), out);
                }
            }
            Params::Object(map) => {
                for (k, p) in map {
                    p.collect_references(&format!("{at}.{k}"), out);
                }
            }
        }
    }
}

/// The step a reference reads (`$.steps.<step>...`), if it reads a step's output.
pub fn referenced_step(source: &str) -> Option<&str> {
    let rest = source.strip_prefix("$.steps.")?;
    rest.split(['.', '[']).next().filter(|s| !s.is_empty())
}

/// Only `$.input...`, `$.saga...` and `$.steps.<earlier step>...` can exist at run time.
fn check_scope(path: &str, earlier_steps: &HashSet<&str>) -> Result<(), String> {
    let rest = path.strip_prefix("$.").ok_or_else(|| {
        format!("{path:?} must start with $.input, $.saga or $.steps.<earlier step>")
    })?;
    let (root, tail) = match rest.find(['.', '[']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    match root {
        "input" | "saga" => Ok(()),
        "steps" | "children" => {
            let tail = tail.strip_prefix('.').ok_or_else(|| {
                format!("{path:?}: write step references as $.steps.<step name>...")
            })?;
            let step = tail.split(['.', '[']).next().unwrap_or_default();
            if earlier_steps.contains(step) {
                Ok(())
            } else {
                Err(format!(
                    "{path:?} refers to step {step:?}, which is not an earlier step"
                ))
            }
        }
        other => Err(format!(
            "{path:?} starts at {other:?}; references start at $.input, $.saga or $.steps"
        )),
    }
}

/// Serde for `Duration` as human-readable text (`"250ms"`, `"30s"`, `"5m"`, `"2h"`, `"7d"`).
pub mod serde_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `d` as text.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    /// Reads text such as `"1s"` or `"1h 30m"`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "bad duration {text:?} ({e}); write e.g. \"500ms\", \"30s\", \"5m\", \"7d\""
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn known(k: &str) -> Option<StepTraits> {
        k.starts_with("noop.").then_some(StepTraits::default())
    }

    fn compile(def: &Definition) -> Result<CompiledDefinition, DefinitionError> {
        def.compile(&known, &["noop.sleep".to_string()])
    }

    const TOML: &str = r#"
        name = "pay"
        version = 1
        [[steps]]
        name = "create"
        kind = "noop.sleep"
        params = { amount = "$.input.amount", note = "$$literal" }
        retry = { initial_delay = "100ms", max_attempts = 5, max_delay = "10s" }
        [[steps]]
        name = "confirm"
        kind = "noop.sleep"
        params = { id = "$.steps.create.id", list = ["$.input.amount", 3] }
        deadline = "2h"
    "#;

    #[test]
    fn toml_definition_compiles_and_resolves_references() {
        let def = Definition::from_toml(TOML).expect("parses");
        assert_eq!(def.steps[0].retry.initial_delay, Duration::from_millis(100));
        assert_eq!(def.steps[1].deadline, Duration::from_secs(7200));
        let c = compile(&def).expect("valid");
        let scope = json!({"input": {"amount": 1200}, "steps": {"create": {"id": "p_1"}}});
        assert_eq!(
            c.steps[0].params.resolve(&scope).expect("resolves"),
            json!({"amount": 1200, "note": "$literal"})
        );
        assert_eq!(
            c.steps[1].params.resolve(&scope).expect("resolves"),
            json!({"id": "p_1", "list": [1200, 3]})
        );
        assert_eq!(
            c.steps[1]
                .params
                .resolve_input_only(&json!({"input": {"amount": 5}}))
                .expect("ok"),
            json!({"id": null, "list": [5, 3]})
        );
        let err = c.steps[1]
            .params
            .resolve(&json!({"input": {"amount": 1}}))
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("$.steps.create.id matched nothing"),
            "{err}"
        );
    }

    #[test]
    fn content_hash_is_stable_and_sensitive() {
        let a = Definition::from_toml(TOML).expect("parses");
        let b = Definition::from_toml(TOML).expect("parses");
        assert_eq!(a.content_hash(), b.content_hash());
        let mut c = a.clone();
        c.steps[0].retry.max_attempts = crate::retry::Attempts::Limited(6);
        assert_ne!(a.content_hash(), c.content_hash());
    }

    #[test]
    fn bad_definitions_name_what_is_wrong() {
        let base = Definition::from_toml(TOML).expect("parses");
        let mut d = base.clone();
        d.steps[1].name = "create".into();
        assert!(matches!(
            compile(&d),
            Err(DefinitionError::DuplicateStep { .. })
        ));
        let mut d = base.clone();
        d.steps[0].kind = "lumanu.nope".into();
        let e = compile(&d).unwrap_err();
        assert!(
            e.to_string().contains("unknown step kind \"lumanu.nope\""),
            "{e}"
        );
        let mut d = base.clone();
        d.steps[0].params = json!({"x": "$.steps.confirm.id"});
        let e = compile(&d).unwrap_err();
        assert!(e.to_string().contains("not an earlier step"), "{e}");
        let mut d = base.clone();
        d.steps[0].params = json!({"x": "$.input[?"});
        assert!(matches!(
            compile(&d),
            Err(DefinitionError::BadReference { .. })
        ));
        let mut d = base.clone();
        d.steps[0].params = json!({"x": "$.secrets.key"});
        assert!(matches!(
            compile(&d),
            Err(DefinitionError::BadReference { .. })
        ));
        let mut d = base.clone();
        d.steps[0].retry.multiplier = 0.1;
        assert!(matches!(compile(&d), Err(DefinitionError::Policy { .. })));
        let mut d = base.clone();
        d.version = 0;
        assert!(matches!(compile(&d), Err(DefinitionError::ZeroVersion(_))));
        let far = Definition::from_toml(
            "name='x'\nversion=1\n[[steps]]\nname='a'\nkind='noop.sleep'\ndeadline='300000y'",
        )
        .expect("parses");
        assert!(matches!(
            compile(&far),
            Err(DefinitionError::DurationTooLong {
                field: "deadline",
                ..
            })
        ));
        let mut d = base;
        d.steps.clear();
        assert!(matches!(compile(&d), Err(DefinitionError::NoSteps(_))));
        assert!(matches!(
            Definition::from_toml("name = 1"),
            Err(DefinitionError::Parse(_))
        ));
        assert!(Definition::from_toml(
            "name='x'\nversion=1\n[[steps]]\nname='a'\nkind='noop.sleep'\ntimeout='soon'"
        )
        .unwrap_err()
        .to_string()
        .contains("bad duration"));
    }

    #[test]
    fn conditions_are_checked_at_submit_like_parameter_references() {
        let toml = |when: &str, params: &str| {
            Definition::from_toml(&format!(
                r#"
                name = "c"
                version = 1
                [[steps]]
                name = "customer"
                kind = "noop.sleep"
                [[steps]]
                name = "upload"
                kind = "noop.sleep"
                when = {{ path = "$.steps.customer.verified", equals = false }}
                [[steps]]
                name = "attach"
                kind = "noop.sleep"
                {when}
                params = {params}
                "#
            ))
            .expect("parses")
        };
        let same = r#"when = { path = "$.steps.customer.verified", equals = false }"#;
        // Read from a step with the same `when`: they run or are skipped together.
        let c = compile(&toml(same, r#"{ files = "$.steps.upload.files" }"#)).expect("valid");
        assert!(c.steps[1].when.is_some() && c.steps[0].when.is_none());
        assert_eq!(
            c.steps[1].def.when,
            Some(crate::Condition::equals(
                "$.steps.customer.verified",
                json!(false)
            ))
        );
        // Read from a step that always runs: refused, the output may be missing.
        let e = compile(&toml("", r#"{ files = "$.steps.upload.files" }"#)).unwrap_err();
        assert!(
            matches!(&e, DefinitionError::BadReference { step, param, .. } if step == "attach" && param == "params.files"),
            "{e}"
        );
        assert!(e.to_string().contains("no output when skipped"), "{e}");
        // A `when` may test it (absent is handled by the tests).
        compile(&toml(
            r#"when = { path = "$.steps.upload.files", exists = false }"#,
            "{}",
        ))
        .expect("a condition may read a conditional step");
        // A `when` reads only what exists before the step.
        let e = compile(&toml(
            r#"when = { path = "$.steps.attach.x", exists = true }"#,
            "{}",
        ))
        .unwrap_err();
        assert!(
            matches!(&e, DefinitionError::BadCondition { reason, .. } if reason.contains("not an earlier step")),
            "{e}"
        );
        let e = compile(&toml(r#"when = { path = "$.input.a" }"#, "{}")).unwrap_err();
        assert!(
            e.to_string().contains("step attach, when: gives no test"),
            "{e}"
        );
        let e = compile(&toml(r#"when = { path = "$.input[?", equals = 1 }"#, "{}")).unwrap_err();
        assert!(e.to_string().contains("not valid JSONPath"), "{e}");
        // No `when`, no change to the content hash of existing definitions.
        let plain = Definition::from_toml(TOML).expect("parses");
        assert!(!serde_json::to_string(&plain)
            .expect("json")
            .contains("when"));
    }
}
