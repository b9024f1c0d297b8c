//! The operator actions of the console: retry, resume, skip, deliver, cancel, close, reset.
//! Each calls the same Engine action as the CLI, with a required reason, the actor
//! `console:NAME`, and the "still where you saw it" check (the form carries the status and step
//! the page showed). A first POST answers with a confirmation page that states the
//! consequence; only the confirmed POST acts.

use axum::extract::{Form, Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Extension;
use maud::{html, Markup};
use paysaga_core::ObservedStatus;
use paysaga_runtime::{CloseSaga, Expected, ResetSaga, SagaView};
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use super::auth::{Identity, Role};
use super::pages::{denied, layout, may_act, status_badge, Failure};
use super::Shared;

/// An operator action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Retry,
    Resume,
    Skip,
    Deliver,
    Cancel,
    Close,
    Reset,
}

impl Action {
    const ALL: [Action; 7] = [
        Action::Close,
        Action::Reset,
        Action::Resume,
        Action::Skip,
        Action::Deliver,
        Action::Retry,
        Action::Cancel,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Action::Retry => "retry",
            Action::Resume => "resume",
            Action::Skip => "skip",
            Action::Deliver => "deliver",
            Action::Cancel => "cancel",
            Action::Close => "close",
            Action::Reset => "reset",
        }
    }

    fn parse(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// What it does, in the words of the CLI's help.
    fn summary(self) -> &'static str {
        match self {
            Action::Retry => "Run the current step now, resetting its backoff.",
            Action::Resume => "Resume a saga parked for an operator: the step that failed runs again with a fresh retry budget.",
            Action::Skip => "Assert the current step's effect happened (checked at the provider) and supply its output; the saga moves on.",
            Action::Deliver => "Deliver an event by hand to the waiting step.",
            Action::Cancel => "Cancel: compensations of completed steps run, in reverse.",
            Action::Close => "End the saga with the outcome you checked at the provider: status closed; nothing is undone.",
            Action::Reset => "Run the saga again from a step (the current one or earlier), optionally with its input patched; earlier outputs are kept.",
        }
    }

    /// The actions that make sense in a status (the engine decides in the end).
    fn available(status: ObservedStatus) -> &'static [Action] {
        match status {
            ObservedStatus::NeedsOperator => {
                &[Action::Close, Action::Reset, Action::Resume, Action::Skip]
            }
            ObservedStatus::Waiting => &[
                Action::Deliver,
                Action::Retry,
                Action::Skip,
                Action::Close,
                Action::Reset,
                Action::Cancel,
            ],
            ObservedStatus::Scheduled | ObservedStatus::Retrying => &[
                Action::Retry,
                Action::Skip,
                Action::Close,
                Action::Reset,
                Action::Cancel,
            ],
            ObservedStatus::Compensating => &[Action::Retry],
            ObservedStatus::Running => &[Action::Cancel],
            ObservedStatus::Completed
            | ObservedStatus::Compensated
            | ObservedStatus::Cancelled
            | ObservedStatus::Closed => &[],
        }
    }
}

/// Every field any action's form has.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ActionForm {
    csrf: Option<String>,
    #[serde(default)]
    reason: String,
    expect_status: Option<String>,
    expect_step: Option<String>,
    confirm: Option<String>,
    outcome: Option<String>,
    output: Option<String>,
    event: Option<String>,
    payload: Option<String>,
    to_step: Option<String>,
    input_patch: Option<String>,
    confirm_not_sent: Option<String>,
}

fn text(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// The step the definition has at the saga's step index (what the engine's check compares).
fn step_at(v: &SagaView) -> Option<&str> {
    v.steps.get(v.saga.step_index).map(String::as_str)
}

/// The action forms of a saga page (none for viewers, nor when actions are off).
pub(crate) fn forms(c: &Shared, me: &Identity, v: &SagaView) -> Markup {
    let status = v.saga.observed_status();
    let actions = Action::available(status);
    if actions.is_empty() {
        return html! {};
    }
    if !c.actions {
        return html! { p.muted { "Actions are off in this console (read-only)." } };
    }
    if me.role != Role::Operator {
        return html! { p.muted { "You are a viewer: actions need the operator role." } };
    }
    let hidden = html! {
        input type="hidden" name="csrf" value=(me.csrf);
        input type="hidden" name="expect_status" value=(status.as_str());
        input type="hidden" name="expect_step" value=(step_at(v).unwrap_or_default());
    };
    html! {
        section.actions {
            h2 { "Actions" }
            p.muted { "Each asks for a reason and a confirmation, and is refused if the saga moved since this page showed it as "
                (status.as_str()) " at step " (step_at(v).unwrap_or("-")) "." }
            @for a in actions {
                details id={ "action-" (a.as_str()) } {
                    summary { (a.as_str()) }
                    p { (a.summary()) }
                    form method="post" action={ "/sagas/" (v.saga.id) "/" (a.as_str()) } {
                        (hidden)
                        (fields(*a, v))
                        label.block { "Reason (recorded in history with your name) "
                            textarea name="reason" required rows="2" {} }
                        button type="submit" { (a.as_str()) "..." }
                    }
                }
            }
        }
    }
}

/// The fields of one action's form beyond the reason.
fn fields(a: Action, v: &SagaView) -> Markup {
    match a {
        Action::Close => html! {
            fieldset {
                legend { "What you checked at the provider: did the payee get the money?" }
                label { input type="radio" name="outcome" value="not_paid" required; " not paid" }
                label { input type="radio" name="outcome" value="paid"; " paid" }
            }
        },
        Action::Skip => html! {
            p { "Step: " strong { (step_at(v).unwrap_or("-")) } }
            label.block { "The step's output as JSON (what later steps read) "
                textarea name="output" required rows="3" { "{}" } }
        },
        Action::Deliver => html! {
            label { "Event "
                select name="event" {
                    @for t in v.saga.wait.iter().flat_map(|w| w.event_types.iter()) {
                        option value=(t) { (t) }
                    }
                }
            }
            label.block { "Event body as JSON " textarea name="payload" rows="3" { "{}" } }
        },
        Action::Reset => html! {
            label { "Run again from step "
                select name="to_step" {
                    @for (i, s) in v.steps.iter().enumerate().take(v.saga.step_index + 1) {
                        option value=(s) selected[i == v.saga.step_index] { (s) }
                    }
                }
            }
            label.block { "Input patch (JSON merge patch, optional) " textarea name="input_patch" rows="2" {} }
            label { input type="checkbox" name="confirm_not_sent" value="1";
                " I checked at the provider that the irreversible steps to run again did not send money" }
        },
        Action::Retry | Action::Resume | Action::Cancel => html! {},
    }
}

/// The steps up to the current one whose effect cannot be undone (money sent).
async fn irreversible_so_far(c: &Shared, v: &SagaView) -> Vec<String> {
    let Ok(def) = c.engine.store().definition(v.saga.definition_id).await else {
        return Vec::new();
    };
    def.definition
        .steps
        .iter()
        .take(v.saga.step_index + 1)
        .filter(|s| {
            c.engine
                .registry()
                .traits(&s.kind)
                .is_some_and(|t| t.irreversible)
        })
        .map(|s| s.name.clone())
        .collect()
}

/// What the action will do to this saga, said before it is confirmed.
async fn consequences(c: &Shared, a: Action, v: &SagaView, f: &ActionForm) -> Vec<String> {
    let step = step_at(v).unwrap_or("-");
    let sent = irreversible_so_far(c, v).await;
    let may_have_sent = if v.saga.effect_possible {
        Some(format!("This payout may already have been sent: the provider may have acted on step {step} (an effect mark or an ambiguous answer)."))
    } else if !sent.is_empty() {
        Some(format!(
            "This payout may already have been sent: step(s) {} cannot be undone and ran or may have run.",
            sent.join(", ")
        ))
    } else {
        None
    };
    let mut out = Vec::new();
    match a {
        Action::Retry => {
            out.push(format!("Step {step} runs now, its backoff reset; the provider is called again with the step's idempotency key."));
            out.extend(v.saga.effect_possible.then(|| may_have_sent.clone()).flatten());
        }
        Action::Resume => {
            out.push(format!("Step {step} runs again with a fresh retry budget; the provider is called again with the step's idempotency key."));
            out.extend(v.saga.effect_possible.then(|| may_have_sent.clone()).flatten());
        }
        Action::Skip => out.push(format!(
            "Step {step} is recorded as done with the output you gave, without calling the provider; the saga moves on to the next step. Only do this if you saw its effect at the provider."
        )),
        Action::Deliver => out.push(format!(
            "Event {} is delivered to step {step} as if the provider had sent it; the step checks it and moves on, or waits again if the provider disagrees.",
            text(&f.event).unwrap_or("-")
        )),
        Action::Cancel => {
            out.push("The saga is cancelled: the compensations of its completed steps run, in reverse order.".to_string());
            if !sent.is_empty() {
                out.push(format!(
                    "Step(s) {} cannot be undone: money they sent stays sent.",
                    sent.join(", ")
                ));
            }
        }
        Action::Close => {
            let outcome = text(&f.outcome).unwrap_or("-");
            out.push(format!("The saga ends as closed with outcome {outcome}: nothing is undone and no further step runs; paysaga no longer tracks this payout."));
            if outcome == "not_paid" {
                out.extend(may_have_sent.clone().map(|m| {
                    format!("{m} Declare not paid only if the provider confirms no money reached the payee.")
                }));
            } else {
                out.push("Declare paid only if the provider confirms the payee got the money.".to_string());
            }
        }
        Action::Reset => {
            let to = text(&f.to_step).unwrap_or("-");
            out.push(format!("The saga runs again from step {to}, with a fresh attempt count; the steps run again get new idempotency keys, so the provider sees new requests."));
            if let Some(m) = &may_have_sent {
                out.push(format!("{m} Running them again may pay twice unless you checked at the provider that they did not send money."));
            }
            if text(&f.input_patch).is_some() {
                out.push("The input is patched and validated as at start.".to_string());
            }
        }
    }
    out
}

/// `POST /sagas/{id}/{action}`: the confirmation page, then (confirmed) the action.
pub(crate) async fn act(
    State(c): State<Shared>,
    Extension(me): Extension<Identity>,
    Path((id, action)): Path<(Uuid, String)>,
    Form(f): Form<ActionForm>,
) -> Result<Response, Failure> {
    if let Err(d) = c.auth.check_csrf(&me, f.csrf.as_deref()) {
        return Ok(denied(&d));
    }
    let a =
        Action::parse(&action).ok_or_else(|| Failure::NotFound(format!("no action {action:?}")))?;
    if !c.actions {
        return Err(Failure::Forbidden(
            "actions are off in this console (read-only)".into(),
        ));
    }
    if !may_act(&c, &me) {
        return Err(Failure::Forbidden(format!(
            "{} is a {}: the {} action needs the operator role",
            me.name,
            me.role.as_str(),
            a.as_str()
        )));
    }
    if f.reason.trim().is_empty() {
        return Err(Failure::BadRequest(format!(
            "cannot {} saga {id}: a reason is required (it is recorded in the saga's history with who and when)",
            a.as_str()
        )));
    }
    let expected = Expected {
        status: text(&f.expect_status)
            .map(|s| s.parse::<ObservedStatus>())
            .transpose()
            .map_err(|e| Failure::BadRequest(e.to_string()))?,
        step: text(&f.expect_step).map(str::to_string),
    };
    let view = crate::privacy::redact_view(c.engine.get(id).await?);
    if f.confirm.as_deref() != Some("yes") {
        // A view already stale is refused before asking to confirm.
        expected.check(&view.saga, step_at(&view))?;
        return Ok(confirmation(&c, &me, a, &view, &f).await.into_response());
    }
    let actor = me.actor();
    let reason = f.reason.trim();
    let engine = &c.engine;
    let json = |field: &Option<String>, name: &str| -> Result<Option<Value>, Failure> {
        text(field)
            .map(serde_json::from_str::<Value>)
            .transpose()
            .map_err(|e| Failure::BadRequest(format!("{name} is not valid JSON: {e}")))
    };
    // The engine checks where the saga is for close and reset; for the others the console does
    // it first, with the same check.
    if !matches!(a, Action::Close | Action::Reset) {
        expected.check(&view.saga, step_at(&view))?;
    }
    let result = match a {
        Action::Retry => engine.retry_now(id, &actor, reason).await.map(drop),
        Action::Resume => engine.resume(id, &actor, reason).await.map(drop),
        Action::Cancel => engine.cancel(id, &actor, reason).await.map(drop),
        Action::Skip => {
            let output = json(&f.output, "the output")?
                .ok_or_else(|| Failure::BadRequest("skip needs the step's output".into()))?;
            let step = step_at(&view).unwrap_or_default().to_string();
            engine
                .skip(id, &step, output, &actor, reason)
                .await
                .map(drop)
        }
        Action::Deliver => {
            let event = text(&f.event)
                .ok_or_else(|| Failure::BadRequest("deliver needs an event type".into()))?;
            let payload = json(&f.payload, "the event body")?
                .unwrap_or(Value::Object(serde_json::Map::new()));
            engine
                .deliver_manual(id, event, payload, &actor, reason)
                .await
                .map(drop)
        }
        Action::Close => {
            let outcome = match text(&f.outcome) {
                Some("paid") => paysaga_core::ClosedOutcome::Paid,
                Some("not_paid") => paysaga_core::ClosedOutcome::NotPaid,
                _ => {
                    return Err(Failure::BadRequest(
                        "close needs the outcome you checked at the provider: paid or not_paid"
                            .into(),
                    ))
                }
            };
            engine
                .close(
                    id,
                    &CloseSaga {
                        outcome,
                        compensate: false,
                        expected,
                        confirm_not_sent: false,
                    },
                    &actor,
                    reason,
                )
                .await
                .map(drop)
        }
        Action::Reset => {
            let step = text(&f.to_step)
                .ok_or_else(|| {
                    Failure::BadRequest("reset needs the step to run again from".into())
                })?
                .to_string();
            engine
                .reset(
                    id,
                    &ResetSaga {
                        step,
                        input_patch: json(&f.input_patch, "the input patch")?,
                        confirm_not_sent: text(&f.confirm_not_sent).is_some(),
                        expected,
                    },
                    &actor,
                    reason,
                )
                .await
                .map(drop)
        }
    };
    result?;
    tracing::info!(saga_id = %id, actor = %actor, action = a.as_str(), "console operator action");
    Ok(Redirect::to(&format!("/sagas/{id}?done={}", a.as_str())).into_response())
}

/// The page that states the consequence and asks to confirm (the same form, `confirm=yes`).
async fn confirmation(
    c: &Shared,
    me: &Identity,
    a: Action,
    v: &SagaView,
    f: &ActionForm,
) -> Markup {
    let lines = consequences(c, a, v, f).await;
    let hidden: Vec<(&str, &Option<String>)> = vec![
        ("expect_status", &f.expect_status),
        ("expect_step", &f.expect_step),
        ("outcome", &f.outcome),
        ("output", &f.output),
        ("event", &f.event),
        ("payload", &f.payload),
        ("to_step", &f.to_step),
        ("input_patch", &f.input_patch),
        ("confirm_not_sent", &f.confirm_not_sent),
    ];
    let body = html! {
        h1 { "Confirm: " (a.as_str()) }
        p { "Saga " a.mono href={ "/sagas/" (v.saga.id) } { (v.saga.id) } " (" (v.saga.workflow) ", "
            (status_badge(v.saga.observed_status())) " at step " (step_at(v).unwrap_or("-")) ")" }
        section.consequence {
            h2 { "What happens" }
            ul { @for l in &lines {
                li class=[l.contains("may already have been sent").then_some("warn")] { (l) }
            } }
            p { "Reason: " em { (f.reason.trim()) } }
            p { "Recorded as " strong { (me.actor()) } "." }
        }
        form method="post" action={ "/sagas/" (v.saga.id) "/" (a.as_str()) } {
            input type="hidden" name="csrf" value=(me.csrf);
            input type="hidden" name="reason" value=(f.reason.trim());
            input type="hidden" name="confirm" value="yes";
            @for (name, value) in &hidden {
                @if let Some(value) = value { input type="hidden" name=(name) value=(value); }
            }
            button.danger type="submit" { "Confirm " (a.as_str()) }
            " " a href={ "/sagas/" (v.saga.id) } { "Back (do nothing)" }
        }
    };
    layout(&format!("Confirm {}", a.as_str()), Some(me), body)
}
