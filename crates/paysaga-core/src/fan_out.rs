//! Child sagas: a fan-out step starts one child saga of a named workflow per element of a
//! list, at most `max_in_flight` unfinished at once, and completes when every child has
//! ended (fan-in). Pure: the worker asks the store for the progress
//! ([`FanOutProgress`]), gets a [`FanOutPlan`] from here, starts the children through the
//! store (fenced, idempotent on [`child_idempotency_key`]) and commits the transition built
//! here.
//!
//! The parent's row never holds per-child data: the store keeps a counter row per fan-out
//! step (started, ended) and the children's rows name their parent. A step after the fan-in
//! reads the children through the parameter source `$.children.<fan-out step>`: an array,
//! in item order, of `{"key", "index", "saga_id", "status", "steps": {<child step>: output}}`,
//! loaded by the worker at that step's start. A `$.children...` path resolves to the array of
//! every match (possibly empty), e.g.
//! `"$.children.payees[?@.status == 'completed'].steps.approve.payable_id"`.

use std::borrow::Cow;
use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use serde_json_path::JsonPath;
use uuid::Uuid;

use crate::definition::{CompiledDefinition, FanOut, Params, StepDef};
use crate::saga::{HistoryEntry, HistoryKind, SagaState, SagaStatus, Transition};

/// At most this many keys of children that ended otherwise than completed are listed in the
/// step's output (the counts are always complete; `$.children.<step>` has every child).
pub const SUMMARY_KEYS: usize = 100;

/// A fan-out step with its paths parsed.
#[derive(Debug, Clone)]
pub struct CompiledFanOut {
    /// As written.
    pub def: FanOut,
    /// The list (a path into the scope).
    pub items: Params,
    /// The key of one element (a path into the element).
    pub key: JsonPath,
    /// The child's input template (`$.item` is the element).
    pub input: Params,
}

impl CompiledFanOut {
    pub(crate) fn compile(
        step: &StepDef,
        f: &FanOut,
        earlier: &HashSet<&str>,
    ) -> Result<CompiledFanOut, String> {
        if !step.kind.is_empty() {
            return Err(format!(
                "a fan-out step names no kind (found kind {:?}); the children's workflow names theirs",
                step.kind
            ));
        }
        if step.params.as_object().is_none_or(|m| !m.is_empty()) {
            return Err(
                "a fan-out step takes no params; write the children's input under fan_out.input"
                    .into(),
            );
        }
        if f.workflow.is_empty()
            || !f
                .workflow
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.-".contains(c))
        {
            return Err(format!(
                "workflow {:?} must be non-empty and use only a-z, 0-9, '_', '.', '-'",
                f.workflow
            ));
        }
        if f.max_in_flight == 0 {
            return Err("max_in_flight must be at least 1".into());
        }
        if !f.items.starts_with('$') || f.items.starts_with("$$") {
            return Err(format!(
                "items {:?} must be a path to a list ($.input... or $.steps.<earlier step>...)",
                f.items
            ));
        }
        let items = Params::compile(&Value::String(f.items.clone()), "fan_out.items", earlier)
            .map_err(|(at, reason)| format!("{at}: {reason}"))?;
        if !f.key.starts_with("$") {
            return Err(format!(
                "key {:?} must be a path into one element, e.g. \"$.id\"",
                f.key
            ));
        }
        let key = JsonPath::parse(&f.key)
            .map_err(|e| format!("key {:?} is not valid JSONPath: {e}", f.key))?;
        let input = compile_item_template(&f.input, "fan_out.input", earlier)
            .map_err(|(at, reason)| format!("{at}: {reason}"))?;
        Ok(CompiledFanOut {
            def: f.clone(),
            items,
            key,
            input,
        })
    }

    /// The list's elements with their keys (text; an integer key is written in decimal).
    /// Refused: not a list, an element without exactly one string or integer key, a key
    /// used twice.
    pub fn items(&self, scope: &Value) -> Result<Vec<(String, Value)>, String> {
        let list = self.list(scope)?;
        check_unique_keys(self, &list)?;
        list.iter()
            .enumerate()
            .map(|(i, item)| Ok((self.key_of(i, item)?, item.clone())))
            .collect()
    }

    /// The list in `scope`, borrowed when the path names it (no copy of a long list).
    fn list<'a>(&self, scope: &'a Value) -> Result<Cow<'a, [Value]>, String> {
        if let Params::Path { source, path } = &self.items {
            if !source.starts_with("$.children.") {
                if let [Value::Array(list)] = path.query(scope).all().as_slice() {
                    return Ok(Cow::Borrowed(list.as_slice()));
                }
            }
        }
        match self.items.resolve(scope).map_err(|e| e.to_string())? {
            Value::Array(list) => Ok(Cow::Owned(list)),
            other => Err(format!(
                "items {} is not a list (found {})",
                self.def.items,
                type_name(&other)
            )),
        }
    }

    /// The key of element `i`.
    fn key_of(&self, i: usize, item: &Value) -> Result<String, String> {
        match self.key.query(item).all().as_slice() {
            [Value::String(s)] if !s.is_empty() => Ok(s.clone()),
            [Value::Number(n)] if n.is_i64() || n.is_u64() => Ok(n.to_string()),
            [] => Err(format!("element {i}: key {} matched nothing", self.def.key)),
            [other] => Err(format!(
                "element {i}: key {} is {}, expected a non-empty string or an integer",
                self.def.key,
                type_name(other)
            )),
            many => Err(format!(
                "element {i}: key {} matched {} values, expected one",
                self.def.key,
                many.len()
            )),
        }
    }

    /// What to do now, given the list (`scope`, as for parameters; `$.item` is set while a
    /// child's input is resolved and removed after) and the stored progress. Reads only what
    /// the wake needs: every element's key is checked at the first run (nothing started yet)
    /// or when the list's length changed; later wakes key and copy only the next window of
    /// elements, from the stored position `progress.started`.
    pub fn plan(&self, scope: &mut Value, progress: FanOutProgress) -> Result<FanOutPlan, String> {
        let (total, window) = {
            let list = self.list(scope)?;
            let total = list.len() as u64;
            if progress.started == 0 || progress.total != total {
                check_unique_keys(self, &list)?;
            }
            if progress.started >= total && progress.ended >= progress.started {
                return Ok(FanOutPlan::Done { total });
            }
            let in_flight = progress.started.saturating_sub(progress.ended);
            let free = u64::from(self.def.max_in_flight).saturating_sub(in_flight);
            if progress.started >= total || free == 0 {
                return Ok(FanOutPlan::Wait { total });
            }
            let first = progress.started as usize;
            let last = (progress.started + free).min(total) as usize;
            let window = list[first..last]
                .iter()
                .enumerate()
                .map(|(j, item)| Ok((first + j, self.key_of(first + j, item)?, item.clone())))
                .collect::<Result<Vec<_>, String>>()?;
            (total, window)
        };
        let mut children = Vec::with_capacity(window.len());
        let mut failed = None;
        for (index, key, item) in window {
            if let Some(map) = scope.as_object_mut() {
                map.insert("item".into(), item);
            }
            match self.input.resolve(scope) {
                Ok(input) => children.push(ChildStart {
                    index: index as u64,
                    key,
                    input,
                }),
                Err(e) => {
                    failed = Some(format!("the input of child {key:?}: {e}"));
                    break;
                }
            }
        }
        if let Some(map) = scope.as_object_mut() {
            map.remove("item");
        }
        match failed {
            Some(reason) => Err(reason),
            None => Ok(FanOutPlan::Start { total, children }),
        }
    }
}

/// Every element of `list` has one key and no key is used twice.
fn check_unique_keys(fan: &CompiledFanOut, list: &[Value]) -> Result<(), String> {
    let mut seen = HashSet::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let key = fan.key_of(i, item)?;
        if !seen.insert(key) {
            let key = fan.key_of(i, item)?;
            return Err(format!(
                "element {i}: key {key:?} is used by an earlier element; keys must be unique"
            ));
        }
    }
    Ok(())
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// A template where `$.item...` reads the element; everything else as in `params`.
fn compile_item_template(
    value: &Value,
    at: &str,
    earlier: &HashSet<&str>,
) -> Result<Params, (String, String)> {
    Ok(match value {
        Value::String(s)
            if s == "$.item" || s.starts_with("$.item.") || s.starts_with("$.item[") =>
        {
            let path = JsonPath::parse(s)
                .map_err(|e| (at.to_string(), format!("{s:?} is not valid JSONPath: {e}")))?;
            Params::Path {
                source: s.clone(),
                path,
            }
        }
        Value::Array(items) => Params::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| compile_item_template(v, &format!("{at}[{i}]"), earlier))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Params::Object(
            map.iter()
                .map(|(k, v)| {
                    compile_item_template(v, &format!("{at}.{k}"), earlier).map(|p| (k.clone(), p))
                })
                .collect::<Result<_, _>>()?,
        ),
        other => Params::compile(other, at, earlier)?,
    })
}

/// `$.children.<step>` may only name an earlier fan-out step.
pub(crate) fn check_children_references(
    params: &Params,
    fan_out_steps: &HashSet<&str>,
) -> Result<(), (String, String)> {
    for (at, source, _) in params.references() {
        if let Some(step) = children_step(source) {
            if !fan_out_steps.contains(step) {
                return Err((
                    at,
                    format!("{source:?} reads the children of step {step:?}, which is not an earlier fan-out step"),
                ));
            }
        }
    }
    Ok(())
}

fn children_step(source: &str) -> Option<&str> {
    let rest = source.strip_prefix("$.children.")?;
    rest.split(['.', '[']).next().filter(|s| !s.is_empty())
}

/// The fan-out steps whose children a step's parameters read (`$.children.<step>`): the
/// worker loads those into the scope before resolving them.
pub fn children_read_by(params: &Params) -> Vec<String> {
    let mut steps: Vec<String> = params
        .references()
        .into_iter()
        .filter_map(|(_, source, _)| children_step(source).map(str::to_string))
        .collect();
    steps.sort();
    steps.dedup();
    steps
}

/// Namespace of children's idempotency keys' hash.
const CHILD_NAMESPACE: Uuid = Uuid::from_u128(0x3c9e_0b7d_52a1_4f6e_8d20_6a4b_1e7f_c05d);

/// The idempotency key of the child started for item `key` of fan-out step `step` of saga
/// `parent`: the same on every run of the step, on any worker, so a fan-out run again after a
/// crash finds the children it already started instead of starting them twice.
pub fn child_idempotency_key(parent: Uuid, step: &str, key: &str) -> String {
    let digest = Uuid::new_v5(
        &CHILD_NAMESPACE,
        format!("{parent}/{step}/{key}").as_bytes(),
    );
    format!("child:{parent}:{step}:{digest}")
}

/// A fan-out step's counters as stored (one row per parent and step, never per child).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct FanOutProgress {
    /// Elements in the list when children were last started.
    pub total: u64,
    /// Children started (elements `0..started` of the list).
    pub started: u64,
    /// Children ended for good (completed, compensated, cancelled, closed).
    pub ended: u64,
}

/// A child to start.
#[derive(Debug, Clone, PartialEq)]
pub struct ChildStart {
    /// Its element's position in the list.
    pub index: u64,
    /// Its element's key.
    pub key: String,
    /// Its input.
    pub input: Value,
}

/// What a run of a fan-out step does.
#[derive(Debug, Clone, PartialEq)]
pub enum FanOutPlan {
    /// Start these children (the next elements, up to `max_in_flight` unfinished), then wait.
    Start {
        /// Elements in the list.
        total: u64,
        /// The children to start.
        children: Vec<ChildStart>,
    },
    /// Nothing to start now: wait for children to end.
    Wait {
        /// Elements in the list.
        total: u64,
    },
    /// Every child has ended: the step completes with the summary.
    Done {
        /// Elements in the list.
        total: u64,
    },
}

/// When a fan-out step gives up waiting for its children: its first run plus its `deadline`.
pub fn fan_out_deadline(
    state: &SagaState,
    def: &CompiledDefinition,
    index: usize,
    now: DateTime<Utc>,
) -> DateTime<Utc> {
    let started = state.step_started_at.unwrap_or(now);
    let d = chrono::Duration::from_std(def.steps[index].def.deadline)
        .unwrap_or_else(|_| chrono::Duration::days(3650));
    started
        .checked_add_signed(d)
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The fan-out step waits for its children (status `waiting`, no wait row): a child that
/// ends wakes it (the store sets its `run_at`); otherwise it looks again after
/// `poll_every` (never after its deadline). The first run records a `step_waiting` row.
#[allow(clippy::too_many_arguments)]
pub fn fan_out_waiting(
    state: &SagaState,
    def: &CompiledDefinition,
    index: usize,
    attempt: u32,
    total: u64,
    started_now: usize,
    progress: FanOutProgress,
    now: DateTime<Utc>,
) -> Transition {
    let step = &def.steps[index].def;
    let deadline = fan_out_deadline(state, def, index, now);
    let poll =
        chrono::Duration::from_std(step.poll_every).unwrap_or_else(|_| chrono::Duration::days(1));
    let run_at = now
        .checked_add_signed(poll)
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
        .min(deadline);
    let first = !(state.status == SagaStatus::Waiting && state.step_index == index);
    let mut history = Vec::new();
    if first {
        let workflow = step.fan_out.as_ref().map(|f| f.workflow.as_str());
        history.push(HistoryEntry {
            kind: HistoryKind::StepWaiting,
            step: Some(step.name.clone()),
            attempt: Some(attempt),
            error: None,
            detail: json!({
                "fan_out": workflow, "children": total, "started": progress.started,
                "started_now": started_now, "ended": progress.ended,
                "max_in_flight": step.fan_out.as_ref().map(|f| f.max_in_flight),
                "deadline": deadline,
            }),
        });
    }
    Transition {
        status: SagaStatus::Waiting,
        step_index: index,
        attempt,
        step_started_at: state.step_started_at.or(Some(now)),
        run_at: Some(run_at),
        wait: None,
        output: None,
        last_error: None,
        history,
        continue_now: false,
        effect_possible: false,
    }
}

/// How many children of a fan-out step ended with each status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildOutcome {
    /// The element's key.
    pub key: String,
    /// How the child ended.
    pub status: SagaStatus,
}

/// The output of a completed fan-out step: counts, and the keys (at most [`SUMMARY_KEYS`])
/// of the children that ended otherwise than completed. The children's outputs are not
/// copied: read them with `$.children.<step>`.
pub fn fan_out_summary(workflow: &str, children: &[ChildOutcome]) -> Value {
    let mut by_status = serde_json::Map::new();
    for c in children {
        let n = by_status
            .entry(c.status.as_str().to_string())
            .or_insert(json!(0));
        *n = json!(n.as_u64().unwrap_or(0) + 1);
    }
    let otherwise: Vec<&ChildOutcome> = children
        .iter()
        .filter(|c| c.status != SagaStatus::Completed)
        .collect();
    let listed: Vec<Value> = otherwise
        .iter()
        .take(SUMMARY_KEYS)
        .map(|c| json!({"key": c.key, "status": c.status.as_str()}))
        .collect();
    json!({
        "workflow": workflow,
        "children": children.len(),
        "completed": children.len() - otherwise.len(),
        "ended_otherwise": otherwise.len(),
        "by_status": by_status,
        "not_completed": listed,
        "not_completed_truncated": otherwise.len() > SUMMARY_KEYS,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::{Definition, DefinitionError};
    use crate::saga::StepTraits;

    fn compile(def: &Definition) -> Result<CompiledDefinition, DefinitionError> {
        def.compile(
            &|k: &str| k.starts_with("noop.").then_some(StepTraits::default()),
            &["noop.sleep".to_string()],
        )
    }

    const TOML: &str = r#"
        name = "campaign"
        version = 1
        [[steps]]
        name = "payees"
        fan_out = { workflow = "payout", items = "$.input.creators", key = "$.id", input = { payee = "$.item.id", amount = "$.item.amount", campaign = "$.input.name" }, max_in_flight = 2 }
        [[steps]]
        name = "fund"
        kind = "noop.sleep"
        params = { ids = "$.children.payees[?@.status == 'completed'].steps.approve.payable_id" }
    "#;

    #[test]
    fn a_fan_out_plans_at_most_max_in_flight_children_in_item_order() {
        let def = Definition::from_toml(TOML).expect("parses");
        assert_eq!(def.step_kinds(), vec!["noop.sleep".to_string()]);
        let c = compile(&def).expect("valid");
        let fan = c.steps[0].fan_out.as_ref().expect("fan-out");
        let mut scope = json!({"input": {"name": "x", "creators": [
            {"id": "a", "amount": 1}, {"id": "b", "amount": 2}, {"id": 7, "amount": 3}]}});
        let plan = fan
            .plan(&mut scope, FanOutProgress::default())
            .expect("plan");
        let FanOutPlan::Start { total, children } = plan else {
            panic!("{plan:?}")
        };
        assert_eq!(total, 3);
        assert_eq!(children.len(), 2);
        assert_eq!(children[1].key, "b");
        assert_eq!(
            children[1].input,
            json!({"payee": "b", "amount": 2, "campaign": "x"})
        );
        let p = FanOutProgress {
            total: 3,
            started: 2,
            ended: 0,
        };
        assert_eq!(fan.plan(&mut scope, p), Ok(FanOutPlan::Wait { total: 3 }));
        let p = FanOutProgress {
            total: 3,
            started: 2,
            ended: 1,
        };
        let Ok(FanOutPlan::Start { children, .. }) = fan.plan(&mut scope, p) else {
            panic!()
        };
        assert_eq!((children.len(), children[0].key.as_str()), (1, "7"));
        let p = FanOutProgress {
            total: 3,
            started: 3,
            ended: 3,
        };
        assert_eq!(fan.plan(&mut scope, p), Ok(FanOutPlan::Done { total: 3 }));
    }

    #[test]
    fn a_later_wake_keys_only_the_next_window_from_the_stored_position() {
        let c = compile(&Definition::from_toml(TOML).expect("parses")).expect("valid");
        let fan = c.steps[0].fan_out.as_ref().expect("fan-out");
        // Element 3 has no key: the first run (nothing started) checks every element.
        let mut scope = json!({"input": {"name": "x", "creators": [
            {"id": "a", "amount": 1}, {"id": "b", "amount": 2}, {"id": "c", "amount": 3},
            {"amount": 4}]}});
        let first = fan.plan(&mut scope, FanOutProgress::default());
        assert!(first.unwrap_err().contains("element 3"));
        // A later wake of the same list reads elements 2.. only (its window is [2, 3)).
        let p = FanOutProgress {
            total: 4,
            started: 2,
            ended: 1,
        };
        let Ok(FanOutPlan::Start { children, total }) = fan.plan(&mut scope, p) else {
            panic!()
        };
        assert_eq!(
            (total, children.len(), children[0].key.as_str()),
            (4, 1, "c")
        );
        assert!(scope.get("item").is_none(), "the scope is left as it was");
        // A list whose length changed is checked again in full.
        let p = FanOutProgress {
            total: 3,
            started: 2,
            ended: 1,
        };
        assert!(fan.plan(&mut scope, p).unwrap_err().contains("element 3"));
    }

    /// The cost of one wake of the parent of a 20k-item fan-out half way through (one child
    /// ended, one to start): the scope as the worker builds it, then the plan. Prints the
    /// figure; `cargo test -p paysaga-core --release -- --ignored --nocapture wake_cost`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn wake_cost_of_a_20k_item_fan_out() {
        let c = compile(&Definition::from_toml(TOML).expect("parses")).expect("valid");
        let fan = c.steps[0].fan_out.as_ref().expect("fan-out");
        let creators: Vec<Value> = (0..20_000)
            .map(|i| json!({"id": format!("creator-{i:05}"), "amount": i, "note": "x".repeat(40)}))
            .collect();
        let input = json!({"name": "x", "creators": creators});
        let outputs = json!({});
        let p = FanOutProgress {
            total: 20_000,
            started: 10_000,
            ended: 9_999,
        };
        let wakes = 20;
        let t = std::time::Instant::now();
        for _ in 0..wakes {
            let mut scope = Value::Object(serde_json::Map::from_iter([
                ("input".to_string(), input.clone()),
                ("steps".to_string(), outputs.clone()),
                ("saga".to_string(), json!({"id": "s"})),
            ]));
            let plan = fan.plan(&mut scope, p).expect("plan");
            assert!(matches!(plan, FanOutPlan::Start { ref children, .. } if children.len() == 1));
        }
        let per_wake = t.elapsed() / wakes;
        println!("one wake of a 20k-item fan-out (scope + plan): {per_wake:?}");
    }

    #[test]
    fn children_references_resolve_to_every_match() {
        let c = compile(&Definition::from_toml(TOML).expect("parses")).expect("valid");
        let scope = json!({"children": {"payees": [
            {"key": "a", "status": "completed", "steps": {"approve": {"payable_id": "p1"}}},
            {"key": "b", "status": "cancelled", "steps": {}},
            {"key": "c", "status": "completed", "steps": {"approve": {"payable_id": "p3"}}}]}});
        assert_eq!(
            c.steps[1].params.resolve(&scope).expect("resolves"),
            json!({"ids": ["p1", "p3"]})
        );
        assert_eq!(children_read_by(&c.steps[1].params), vec!["payees"]);
    }

    #[test]
    fn bad_fan_outs_and_keys_are_refused_with_the_reason() {
        let base = Definition::from_toml(TOML).expect("parses");
        let mut d = base.clone();
        d.steps[0].kind = "noop.sleep".into();
        assert!(compile(&d)
            .unwrap_err()
            .to_string()
            .contains("names no kind"));
        let mut d = base.clone();
        d.steps[0].fan_out.as_mut().expect("fan").max_in_flight = 0;
        assert!(compile(&d)
            .unwrap_err()
            .to_string()
            .contains("max_in_flight"));
        let mut d = base.clone();
        d.steps[0].fan_out.as_mut().expect("fan").items = "$.steps.fund.list".into();
        assert!(compile(&d)
            .unwrap_err()
            .to_string()
            .contains("not an earlier step"));
        let mut d = base.clone();
        d.steps[1].params = json!({"x": "$.children.nope[*].key"});
        assert!(compile(&d)
            .unwrap_err()
            .to_string()
            .contains("not an earlier step"));
        let mut d = base.clone();
        d.steps.push(StepDef::new(
            "after",
            "noop.sleep",
            json!({"x": "$.children.fund[*].key"}),
        ));
        assert!(compile(&d)
            .unwrap_err()
            .to_string()
            .contains("not an earlier fan-out step"));
        let c = compile(&base).expect("valid");
        let fan = c.steps[0].fan_out.as_ref().expect("fan");
        let dup = json!({"input": {"creators": [{"id": "a"}, {"id": "a"}]}});
        assert!(fan.items(&dup).unwrap_err().contains("unique"));
        let nolist = json!({"input": {"creators": {"id": "a"}}});
        assert!(fan.items(&nolist).unwrap_err().contains("not a list"));
        let nokey = json!({"input": {"creators": [{"name": "a"}]}});
        assert!(fan.items(&nokey).unwrap_err().contains("matched nothing"));
    }

    #[test]
    fn child_keys_are_deterministic_per_parent_step_and_item() {
        let p = Uuid::from_u128(5);
        assert_eq!(
            child_idempotency_key(p, "s", "a"),
            child_idempotency_key(p, "s", "a")
        );
        assert_ne!(
            child_idempotency_key(p, "s", "a"),
            child_idempotency_key(p, "s", "b")
        );
        assert_ne!(
            child_idempotency_key(p, "s", "a"),
            child_idempotency_key(Uuid::from_u128(6), "s", "a")
        );
    }
}
