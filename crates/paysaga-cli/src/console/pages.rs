//! The console's read pages: overview, saga list, saga page (its live part too), inbox, event,
//! login. Each has a stable URL (filters in the query string) to paste into an incident
//! channel; all of it is plain HTML that works without JavaScript.

use anyhow::Context;
use axum::extract::{Form, Path, Query, RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Extension;
use chrono::{DateTime, Utc};
use maud::{html, Markup, DOCTYPE};
use paysaga_core::{HistoryKind, ObservedStatus};
use paysaga_runtime::SagaView;
use paysaga_store::EventFilter;
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use super::auth::{Denied, Identity, Role, COOKIE};
use super::Shared;
use crate::listing::{SagaSummary, StepNames};
use crate::operate::{FilterArgs, SortKey, StatusArg};

/// Rows per page of the saga list.
const PAGE: u32 = 50;

/// A page that could not be served, with the status code and a message for the operator.
#[derive(Debug)]
pub(crate) enum Failure {
    /// 400: a filter or form value is wrong.
    BadRequest(String),
    /// 403: not allowed for this identity.
    Forbidden(String),
    /// 404.
    NotFound(String),
    /// 409: the engine refused the action (the saga's state, a stale view, a missing reason).
    Refused(String),
    /// 500: the database or something else failed.
    Internal(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        match crate::exit::code(&e) {
            crate::exit::NOT_FOUND => Failure::NotFound(format!("{e:#}")),
            crate::exit::REFUSED => Failure::Refused(format!("{e:#}")),
            _ => Failure::Internal(e),
        }
    }
}

impl From<paysaga_runtime::Error> for Failure {
    fn from(e: paysaga_runtime::Error) -> Self {
        anyhow::Error::from(e).into()
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let (status, title, text) = match self {
            Failure::BadRequest(t) => (StatusCode::BAD_REQUEST, "Bad request", t),
            Failure::Forbidden(t) => (StatusCode::FORBIDDEN, "Not allowed", t),
            Failure::NotFound(t) => (StatusCode::NOT_FOUND, "Not found", t),
            Failure::Refused(t) => (StatusCode::CONFLICT, "Refused", t),
            Failure::Internal(e) => {
                tracing::error!(error = format!("{e:#}"), "console request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Failed",
                    format!("{e:#}"),
                )
            }
        };
        let body = layout(
            title,
            None,
            html! {
                h1 { (title) }
                p.error { (text) }
                p { a href="/" { "Overview" } }
            },
        );
        (status, body).into_response()
    }
}

/// The answer to a request refused by the cross-site check.
pub(crate) fn denied(denied: &Denied) -> Response {
    let text = match denied {
        Denied::Unauthenticated => "not signed in".to_string(),
        Denied::CrossSite(why) => {
            format!("cross-site request refused: {why}; use the console's own pages")
        }
    };
    Failure::Forbidden(text).into_response()
}

pub(crate) fn fmt_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// A duration for people: `850ms`, `12.4s`, `3m 20s`, `2h 5m`, `3d 4h`.
pub(crate) fn fmt_duration(d: chrono::Duration) -> String {
    let ms = d.num_milliseconds().max(0);
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        _ => {
            let s = ms / 1000;
            let (d, h, m, s) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
            match (d, h) {
                (0, 0) => format!("{m}m {s}s"),
                (0, _) => format!("{h}h {m}m"),
                _ => format!("{d}d {h}h"),
            }
        }
    }
}

/// The page around every body: navigation, who is signed in, the stylesheet.
pub(crate) fn layout(title: &str, me: Option<&Identity>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " - paysaga console" }
                link rel="stylesheet" href="/assets/console.css";
                script src="/assets/console.js" defer {}
            }
            body {
                nav {
                    a.brand href="/" { "paysaga" }
                    a href="/" { "Overview" }
                    a href="/sagas" { "Sagas" }
                    a href="/sagas?status=needs_operator" { "Needs operator" }
                    a href="/inbox?unmatched=1" { "Inbox" }
                    @if let Some(me) = me {
                        span.who {
                            (me.name) " (" (me.role.as_str()) ")"
                            @if matches!(me.via, super::auth::Via::Session(_)) {
                                form.inline method="post" action="/logout" {
                                    input type="hidden" name="csrf" value=(me.csrf);
                                    button type="submit" { "Sign out" }
                                }
                            }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

pub(crate) fn status_badge(status: ObservedStatus) -> Markup {
    html! { span class={ "status s-" (status.as_str()) } { (status.as_str()) } }
}

/// A saga table (list, overview).
fn saga_table(rows: &[SagaSummary]) -> Markup {
    html! {
        @if rows.is_empty() {
            p.muted { "None." }
        } @else {
            table.sagas {
                thead { tr {
                    th { "Saga" } th { "Workflow" } th { "Status" } th { "Step" }
                    th { "Attempts" } th { "Key" } th { "Updated" } th { "Last error" }
                } }
                tbody {
                    @for r in rows {
                        tr {
                            td.mono { a href={ "/sagas/" (r.id) } { (r.id) } }
                            td { (r.workflow) " v" (r.version) }
                            td { (status_badge(r.status)) }
                            td { (r.step.as_deref().unwrap_or("-")) }
                            td.num { (r.attempt) }
                            td { (r.key.as_deref().unwrap_or("-")) }
                            td.nowrap { (fmt_time(r.updated_at)) }
                            td.err { (r.last_error.as_deref().unwrap_or("")) }
                        }
                    }
                }
            }
        }
    }
}

async fn summaries(c: &Shared, filter: &FilterArgs) -> Result<Vec<SagaSummary>, Failure> {
    let rows = match filter.parent {
        // The children of a campaign's parent (`list --parent`), status and paging applied.
        Some(parent) => crate::children::list_children(&c.engine, parent, filter).await?,
        None => c
            .engine
            .list(&filter.to_filter()?)
            .await
            .context("cannot list sagas")?,
    };
    let mut names = StepNames::default();
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        out.push(names.summary(&c.engine, r).await?);
    }
    Ok(out)
}

/// `/`: counts by workflow and status, sagas that need an operator, stuck ones, oldest waits,
/// the gauges, unmatched inbox events.
pub(crate) async fn overview(
    State(c): State<Shared>,
    Extension(me): Extension<Identity>,
) -> Result<Markup, Failure> {
    let stats = c.engine.stats().await.context("cannot read the counts")?;
    // Optional: a read-only role may lack the gauges' table; the rest of the page stands.
    let gauges = match c.engine.store().gauges().await {
        Ok(g) => g,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the operator gauges");
            None
        }
    };
    let needs = summaries(
        &c,
        &FilterArgs {
            statuses: vec![StatusArg(ObservedStatus::NeedsOperator)],
            limit: Some(20),
            sort: SortKey::Updated,
            ..Default::default()
        },
    )
    .await?;
    let stuck_for = humantime::Duration::from(c.stuck_after);
    let stuck = summaries(
        &c,
        &FilterArgs {
            stuck_for: Some(stuck_for),
            stuck_attempts: 5,
            limit: Some(20),
            sort: SortKey::Updated,
            asc: true,
            ..Default::default()
        },
    )
    .await?;
    let waits = summaries(
        &c,
        &FilterArgs {
            statuses: vec![StatusArg(ObservedStatus::Waiting)],
            limit: Some(10),
            sort: SortKey::Updated,
            asc: true,
            ..Default::default()
        },
    )
    .await?;
    let body = html! {
        h1 { "Overview" }
        section {
            h2 { "Need an operator" }
            p.muted { "Parked sagas: close, reset, resume or skip. "
                a href="/sagas?status=needs_operator" { "All of them" } }
            (saga_table(&needs))
        }
        section {
            h2 { "Stuck for " (stuck_for) }
            p.muted { "Parked, or open without progress for " (stuck_for) ", waiting past their deadline, held by a dead worker, or at 5 attempts (as "
                code { "paysaga list --stuck-for " (stuck_for) } "). "
                a href={ "/sagas?stuck_for=" (stuck_for.to_string().replace(' ', "")) } { "All of them" } }
            (saga_table(&stuck))
        }
        section {
            h2 { "Oldest waits" }
            @if let Some((id, workflow, since)) = &stats.oldest_waiting {
                p { "Oldest: " a.mono href={ "/sagas/" (id) } { (id) } " (" (workflow) ") waiting since " (fmt_time(*since)) }
            }
            (saga_table(&waits))
        }
        section.cols {
            div {
                h2 { "Sagas by workflow and status" }
                table {
                    thead { tr { th { "Workflow" } th { "Status" } th.num { "Sagas" } } }
                    tbody {
                        @for (w, s, n) in &stats.by_status {
                            tr {
                                td { (w) }
                                td { a href={ "/sagas?workflow=" (w) "&status=" (s) } { (s) } }
                                td.num { (n) }
                            }
                        }
                    }
                }
            }
            div {
                h2 { "Unfinished sagas by step" }
                table {
                    thead { tr { th { "Workflow" } th { "Current step" } th.num { "Sagas" } } }
                    tbody {
                        @for (w, s, n) in &stats.by_step {
                            tr {
                                td { (w) }
                                td { a href={ "/sagas?workflow=" (w) "&step=" (s) } { (s) } }
                                td.num { (n) }
                            }
                        }
                    }
                }
                @if !stats.unmatched_events.is_empty() {
                    h2 { "Unmatched inbox events" }
                    ul {
                        @for (p, n) in &stats.unmatched_events {
                            li { a href={ "/inbox?unmatched=1&provider=" (p) } { (p) ": " (n) } }
                        }
                    }
                }
            }
        }
        @if let Some(g) = gauges {
            section {
                h2 { "Gauges" }
                p.muted { "As the workers export them on /metrics, computed " (fmt_time(g.computed_at)) "." }
                table {
                    thead { tr { th { "Workflow" } th.num { "Needs operator" } th.num { "Stuck" }
                        th.num { "Waits past deadline" } th.num { "Oldest wait" } th.num { "Started" } } }
                    tbody {
                        @for (w, v) in &g.workflows {
                            tr {
                                td { (w) }
                                td.num { (v.by_status.get("needs_operator").copied().unwrap_or(0)) }
                                td.num { (v.stuck) }
                                td.num { (v.waits_past_deadline) }
                                td.num { (fmt_duration(chrono::Duration::milliseconds((v.oldest_wait_seconds * 1000.0) as i64))) }
                                td.num { (v.started) }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(layout("Overview", Some(&me), body))
}

/// The list filters of the query string, as `paysaga list` takes them.
fn filter_from_query(query: &str) -> Result<FilterArgs, Failure> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
        .map_err(|e| Failure::BadRequest(format!("bad query string: {e}")))?;
    let mut f = FilterArgs {
        limit: Some(PAGE),
        ..Default::default()
    };
    let bad = |k: &str, v: &str, why: String| Failure::BadRequest(format!("{k}={v:?}: {why}"));
    for (k, v) in pairs {
        let v = v.trim().to_string();
        if v.is_empty() {
            continue;
        }
        match k.as_str() {
            "status" => f.statuses.push(StatusArg(
                v.parse::<ObservedStatus>()
                    .map_err(|e| bad(&k, &v, e.to_string()))?,
            )),
            "workflow" => f.workflow = Some(v),
            "step" => f.step = Some(v),
            "provider" => f.provider = Some(v),
            "key" => f.key = Some(v),
            "ref" => f.reference = Some(v),
            "parent" => f.parent = Some(v.parse::<Uuid>().map_err(|e| bad(&k, &v, e.to_string()))?),
            "stuck_for" => {
                f.stuck_for = Some(v.parse().map_err(|e: humantime::DurationError| {
                    bad(&k, &v, format!("{e}; e.g. 30m or 2h"))
                })?)
            }
            "alerts" => f.alerts = v == "1" || v == "on" || v == "true",
            "sort" => {
                f.sort = match v.as_str() {
                    "created" => SortKey::Created,
                    "updated" => SortKey::Updated,
                    _ => return Err(bad(&k, &v, "created or updated".into())),
                }
            }
            "asc" => f.asc = v == "1" || v == "on" || v == "true",
            "offset" => f.offset = v.parse().map_err(|_| bad(&k, &v, "a number".into()))?,
            "limit" => {
                let n: u32 = v.parse().map_err(|_| bad(&k, &v, "a number".into()))?;
                f.limit = Some(n.clamp(1, 500));
            }
            _ => {}
        }
    }
    Ok(f)
}

/// The query string of a filter at another offset.
fn query_at(f: &FilterArgs, offset: u32) -> String {
    let mut pairs: Vec<(&str, String)> = f
        .statuses
        .iter()
        .map(|s| ("status", s.0.as_str().to_string()))
        .collect();
    for (k, v) in [
        ("workflow", &f.workflow),
        ("step", &f.step),
        ("provider", &f.provider),
        ("key", &f.key),
        ("ref", &f.reference),
    ] {
        if let Some(v) = v {
            pairs.push((k, v.clone()));
        }
    }
    if let Some(d) = f.stuck_for {
        pairs.push(("stuck_for", d.to_string().replace(' ', "")));
    }
    if let Some(parent) = f.parent {
        pairs.push(("parent", parent.to_string()));
    }
    if f.alerts {
        pairs.push(("alerts", "1".into()));
    }
    if matches!(f.sort, SortKey::Updated) {
        pairs.push(("sort", "updated".into()));
    }
    if f.asc {
        pairs.push(("asc", "1".into()));
    }
    if f.limit != Some(PAGE) {
        pairs.push(("limit", f.limit.unwrap_or(PAGE).to_string()));
    }
    if offset > 0 {
        pairs.push(("offset", offset.to_string()));
    }
    serde_urlencoded::to_string(&pairs).unwrap_or_default()
}

/// `/sagas`: the saga list with the CLI's filters and paging.
pub(crate) async fn list(
    State(c): State<Shared>,
    Extension(me): Extension<Identity>,
    RawQuery(query): RawQuery,
) -> Result<Markup, Failure> {
    let f = filter_from_query(query.as_deref().unwrap_or_default())?;
    let rows = summaries(&c, &f).await?;
    let limit = f.limit.unwrap_or(PAGE);
    let selected = |s: ObservedStatus| f.statuses.iter().any(|x| x.0 == s);
    let body = html! {
        h1 { "Sagas" }
        form.filters method="get" action="/sagas" {
            label { "Status "
                select name="status" {
                    option value="" { "any" }
                    @for s in ObservedStatus::ALL {
                        option value=(s.as_str()) selected[selected(s)] { (s.as_str()) }
                    }
                }
            }
            label { "Workflow " input name="workflow" value=(f.workflow.clone().unwrap_or_default()) size="16"; }
            label { "Step " input name="step" value=(f.step.clone().unwrap_or_default()) size="14"; }
            label { "Stuck for " input name="stuck_for" placeholder="e.g. 1h" value=(f.stuck_for.map(|d| d.to_string().replace(' ', "")).unwrap_or_default()) size="6"; }
            label { "Provider ref " input name="ref" value=(f.reference.clone().unwrap_or_default()) size="18"; }
            label { "Key " input name="key" value=(f.key.clone().unwrap_or_default()) size="18"; }
            label { "Provider " input name="provider" value=(f.provider.clone().unwrap_or_default()) size="8"; }
            button type="submit" { "Filter" }
            " " a href="/sagas" { "clear" }
        }
        p.muted {
            "Same as " code { "paysaga list " (cli_flags(&f)) } "."
        }
        (saga_table(&rows))
        p.pager {
            @if f.offset > 0 {
                a href={ "/sagas?" (query_at(&f, f.offset.saturating_sub(limit))) } { "Previous" } " "
            }
            "Rows " (f.offset + 1) "-" (f.offset as usize + rows.len()) " "
            @if rows.len() as u32 == limit {
                a href={ "/sagas?" (query_at(&f, f.offset + limit)) } { "Next" }
            }
        }
    };
    Ok(layout("Sagas", Some(&me), body))
}

/// The `paysaga list` flags of a filter (to say which CLI command shows the same).
fn cli_flags(f: &FilterArgs) -> String {
    let mut out: Vec<String> = f
        .statuses
        .iter()
        .map(|s| format!("--status {}", s.0))
        .collect();
    for (flag, v) in [
        ("--workflow", &f.workflow),
        ("--step", &f.step),
        ("--provider", &f.provider),
        ("--key", &f.key),
        ("--ref", &f.reference),
    ] {
        if let Some(v) = v {
            out.push(format!("{flag} {v}"));
        }
    }
    if let Some(d) = f.stuck_for {
        out.push(format!("--stuck-for {}", d.to_string().replace(' ', "")));
    }
    if let Some(parent) = f.parent {
        out.push(format!("--parent {parent}"));
    }
    out.push(format!("--limit {}", f.limit.unwrap_or(PAGE)));
    if f.offset > 0 {
        out.push(format!("--offset {}", f.offset));
    }
    out.join(" ")
}

/// `?done=ACTION` after an action.
#[derive(Debug, Deserialize)]
pub(crate) struct SagaQuery {
    done: Option<String>,
}

/// `/sagas/{id}`: the saga page.
pub(crate) async fn saga(
    State(c): State<Shared>,
    Extension(me): Extension<Identity>,
    Path(id): Path<Uuid>,
    Query(q): Query<SagaQuery>,
) -> Result<Markup, Failure> {
    let view = crate::privacy::redact_view(c.engine.get(id).await?);
    let tree = crate::children::tree(&c.engine, id).await?;
    let status = view.saga.observed_status();
    let title = format!("Saga {}", &id.to_string()[..8]);
    let body = html! {
        h1 { "Saga " span.mono { (id) } " " (status_badge(status)) }
        @if let Some(done) = &q.done {
            p.flash { "Done: " (done) " (recorded in the history below with your name)." }
        }
        div #live data-src={ "/sagas/" (id) "/live" } { (live(&view, &tree)) }
        noscript { p.muted { "Reload the page to see changes." } }
        (super::actions::forms(&c, &me, &view))
    };
    Ok(layout(&title, Some(&me), body))
}

/// `/sagas/{id}/live`: the part of the saga page that changes (the script replaces it).
pub(crate) async fn saga_live(
    State(c): State<Shared>,
    Path(id): Path<Uuid>,
) -> Result<Markup, Failure> {
    let view = crate::privacy::redact_view(c.engine.get(id).await?);
    let tree = crate::children::tree(&c.engine, id).await?;
    Ok(live(&view, &tree))
}

fn field<'a>(h: &'a paysaga_store::HistoryRecord, k: &str) -> Option<&'a str> {
    h.detail.as_ref()?.get(k)?.as_str()
}

/// The saga's state, why, wait, effect, its campaign tree, references, the provider's
/// answers and the timeline.
fn live(v: &SagaView, tree: &crate::children::Tree) -> Markup {
    let s = &v.saga;
    let why = crate::operate::why(v);
    let now = Utc::now();
    let alerts: Vec<_> = v
        .history
        .iter()
        .filter(|h| h.kind == HistoryKind::SagaAlert)
        .collect();
    html! {
        dl.facts {
            dt { "Workflow" } dd { a href={ "/sagas?workflow=" (s.workflow) } { (s.workflow) } " v" (s.version) }
            dt { "Status" } dd {
                (status_badge(s.observed_status()))
                @if let Some(o) = s.closed_outcome { " (outcome declared by the operator: " (o) ")" }
                @if s.cancel_requested && !s.status.is_final() { " (cancel requested)" }
            }
            @if let Some(key) = &s.idempotency_key { dt { "Key" } dd.mono { (key) } }
            @if let Some(step) = &v.current_step {
                dt { "Step" } dd { (step) " (#" (s.step_index + 1) " of " (v.steps.len()) ", " (s.attempt) " attempt(s) made)" }
            }
            @if !why.is_empty() { dt { "Why" } dd.why { (why) } }
            @if let Some(d) = s.wait.as_ref().and_then(|w| w.state.get("description")).and_then(Value::as_str) {
                dt { "Awaits" } dd { (d) }
            }
            @if let Some(w) = &s.wait {
                dt { "Wait" } dd {
                    (w.provider) " " (w.event_types.join("/")) " with key " span.mono { (w.correlation_key) }
                    br; "since " (fmt_time(w.since)) " (" (fmt_duration(now - w.since)) ")"
                    br; "deadline " (fmt_time(w.deadline))
                    @if w.deadline < now { strong { " (passed)" } } @else { " (in " (fmt_duration(w.deadline - now)) ")" }
                    br; "next poll " (fmt_time(w.poll_at))
                }
            }
            @if s.effect_possible {
                dt { "Effect" } dd.warn { "The provider may already have acted on the current step (an effect mark or an ambiguous answer): this payout may already have been sent. Check at the provider before acting." }
            }
            @if let Some(owner) = s.owner { dt { "Lease" } dd { "held by worker " span.mono { (owner) } " (fencing token " (s.fence) ")" } }
            @if let Some(at) = s.run_at { @if !s.status.is_final() { dt { "Runs at" } dd { (fmt_time(at)) } } }
            @if let Some(e) = &s.last_error { dt { "Error" } dd.err { (e) } }
            dt { "Created" } dd { (fmt_time(s.created_at)) }
            dt { "Updated" } dd { (fmt_time(s.updated_at)) }
        }
        @for h in &alerts {
            p.alert { "ALERT " (field(h, "alert").unwrap_or_default()) " (step " (h.step.as_deref().unwrap_or("-")) ", " (fmt_time(h.at)) "): " (field(h, "message").unwrap_or_default()) }
        }
        @if !tree.is_empty() { (campaign_tree(v.saga.id, tree)) }
        @if !v.references.is_empty() {
            h2 { "Provider references" }
            table {
                thead { tr { th { "Step" } th { "Field" } th { "Id" } } }
                tbody { @for r in &v.references {
                    tr { td { (r.step) } td { (r.name) } td.mono { a href={ "/sagas?ref=" (r.value) } { (r.value) } } }
                } }
            }
        }
        @let answers = crate::operate_visibility::provider_answers(v);
        @if !answers.is_empty() {
            h2 { "The provider's last answer per step" }
            table {
                thead { tr { th { "Step" } th { "At" } th { "Attempt" } th { "Answer" } } }
                tbody { @for (step, h, text) in &answers {
                    tr { td { (step) } td.nowrap { (fmt_time(h.at)) } td.num { (h.attempt.map(|a| a.to_string()).unwrap_or_default()) } td { (text) } }
                } }
            }
        }
        h2 { "Timeline" }
        table.timeline {
            thead { tr { th { "At" } th.num { "After" } th { "What" } th { "Step" } th { "Attempt" } th { "Who" } th { "Details" } } }
            tbody {
                @for (i, h) in v.history.iter().enumerate() {
                    @let after = i.checked_sub(1).map(|p| fmt_duration(h.at - v.history[p].at));
                    @let who = h.actor.clone().or(h.worker.map(|w| format!("worker {}", &w.to_string()[..8]))).unwrap_or_default();
                    tr class={ "k-" (h.kind.as_str()) } {
                        td.nowrap { (fmt_time(h.at)) }
                        td.num { @if let Some(a) = after { "+" (a) } }
                        td { (h.kind.as_str()) }
                        td { (h.step.as_deref().unwrap_or("-")) }
                        td.num { (h.attempt.map(|a| a.to_string()).unwrap_or_default()) }
                        td { (who) }
                        td {
                            @if let Some(e) = &h.error { span.err { (e) } " " }
                            @if let Some(r) = field(h, "reason") { "reason: " (r) " " }
                            @if let Some(o) = field(h, "outcome") { "outcome: " (o) " " }
                            @if let Some(p) = field(h, "provider_status") { "provider: " (p) }
                        }
                    }
                }
            }
        }
        details {
            summary { "Input and outputs (personal data redacted)" }
            h3 { "Input" }
            pre { (serde_json::to_string_pretty(&s.input).unwrap_or_default()) }
            h3 { "Outputs" }
            pre { (serde_json::to_string_pretty(&s.outputs).unwrap_or_default()) }
        }
    }
}

/// `/inbox` filters.
#[derive(Debug, Deserialize)]
pub(crate) struct InboxQuery {
    #[serde(default)]
    unmatched: Option<String>,
    #[serde(default)]
    unparseable: Option<String>,
    #[serde(default)]
    provider: Option<String>,
}

fn on(v: &Option<String>) -> bool {
    matches!(v.as_deref(), Some("1" | "on" | "true"))
}

/// `/inbox`: webhook events, newest first (unmatched and unparseable ones on their own).
pub(crate) async fn inbox(
    State(c): State<Shared>,
    Extension(me): Extension<Identity>,
    Query(q): Query<InboxQuery>,
) -> Result<Markup, Failure> {
    let provider = q.provider.clone().filter(|p| !p.trim().is_empty());
    let events = c
        .engine
        .events(&EventFilter {
            unmatched: on(&q.unmatched),
            unparseable: on(&q.unparseable),
            provider: provider.clone(),
            limit: Some(100),
        })
        .await
        .context("cannot list the inbox")?;
    let body = html! {
        h1 { "Inbox" }
        form.filters method="get" action="/inbox" {
            label { input type="checkbox" name="unmatched" value="1" checked[on(&q.unmatched)]; " unmatched (no saga consumed it)" }
            label { input type="checkbox" name="unparseable" value="1" checked[on(&q.unparseable)]; " unparseable" }
            label { "Provider " input name="provider" value=(provider.clone().unwrap_or_default()) size="8"; }
            button type="submit" { "Filter" }
        }
        p.muted { "Newest 100, as " code { "paysaga events list" } " shows them." }
        @if events.is_empty() { p.muted { "No events." } } @else {
            table {
                thead { tr { th { "Id" } th { "Provider" } th { "Event id" } th { "Type" } th { "Key" } th { "Consumed by" } th { "Received" } } }
                tbody { @for e in &events {
                    tr {
                        td.num { a href={ "/inbox/" (e.id) } { (e.id) } }
                        td { (e.provider) }
                        td.mono { (e.event_id) }
                        td { @if let Some(t) = &e.event_type { (t) } @else if e.parse_error.is_some() { span.err { "(unparseable)" } } @else { "-" } }
                        td.mono { (e.correlation_key.as_deref().unwrap_or("-")) }
                        td.mono { @if let Some(s) = e.consumed_by { a href={ "/sagas/" (s) } { (s) } } @else { "-" } }
                        td.nowrap { (fmt_time(e.received_at)) }
                    }
                } }
            }
        }
    };
    Ok(layout("Inbox", Some(&me), body))
}

/// `/inbox/{id}`: one event, its payload redacted.
pub(crate) async fn event(
    State(c): State<Shared>,
    Extension(me): Extension<Identity>,
    Path(id): Path<i64>,
) -> Result<Markup, Failure> {
    let e = c
        .engine
        .store()
        .event(id)
        .await
        .context("cannot read the inbox")?
        .ok_or_else(|| Failure::NotFound(format!("inbox event {id} not found")))?;
    let e = crate::privacy::redact_event(e);
    // An unparseable body is shown redacted when it is JSON at all, else as text (as `events show`).
    let raw = e
        .raw_body
        .as_ref()
        .map(|raw| match serde_json::from_slice::<Value>(raw) {
            Ok(v) => serde_json::to_string_pretty(&crate::privacy::redact(&v)).unwrap_or_default(),
            Err(_) => String::from_utf8_lossy(raw).into_owned(),
        });
    let body = html! {
        h1 { "Inbox event " (e.id) }
        dl.facts {
            dt { "Provider" } dd { (e.provider) }
            dt { "Event id" } dd.mono { (e.event_id) }
            dt { "Type" } dd { (e.event_type.as_deref().unwrap_or("-")) }
            dt { "Key" } dd.mono { (e.correlation_key.as_deref().unwrap_or("-")) }
            dt { "Received" } dd { (fmt_time(e.received_at)) }
            dt { "Consumed" } dd {
                @if let Some(s) = e.consumed_by {
                    "by saga " a.mono href={ "/sagas/" (s) } { (s) }
                    @if let Some(at) = e.consumed_at { " at " (fmt_time(at)) }
                } @else { "no" }
            }
            @if let Some(err) = &e.parse_error { dt { "Unparseable" } dd.err { (err) } }
        }
        @if let Some(raw) = raw { h2 { "Raw body" } pre { (raw) } }
        @if let Some(p) = &e.payload { h2 { "Payload (personal data redacted)" } pre { (serde_json::to_string_pretty(p).unwrap_or_default()) } }
    };
    Ok(layout(&format!("Event {id}"), Some(&me), body))
}

/// A local path to go back to after login (never another site).
fn local(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.to_string(),
        _ => "/".to_string(),
    }
}

/// The login page (also the body of every 401).
pub(crate) fn login_page(c: &Shared, next: Option<&str>, message: Option<&str>) -> Response {
    let body = html! {
        h1 { "Sign in" }
        @if let Some(m) = message { p.error { (m) } }
        @if c.auth.has_tokens() {
            form.login method="post" action="/login" {
                input type="hidden" name="next" value=(local(next));
                label { "Console token " input type="password" name="token" autocomplete="current-password" required autofocus; }
                button type="submit" { "Sign in" }
            }
            p.muted { "Scripts send the token as " code { "Authorization: Bearer TOKEN" } "." }
        } @else {
            p { "This console authenticates through the proxy in front of it." }
        }
    };
    layout("Sign in", None, body).into_response()
}

/// `GET /login`.
pub(crate) async fn login_form(
    State(c): State<Shared>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    login_page(&c, q.get("next").map(String::as_str), None)
}

/// The login form.
#[derive(Deserialize)]
pub(crate) struct LoginForm {
    token: String,
    next: Option<String>,
}

impl std::fmt::Debug for LoginForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginForm")
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

/// `POST /login`: a session cookie for a known token.
pub(crate) async fn login(State(c): State<Shared>, Form(form): Form<LoginForm>) -> Response {
    match c.auth.login(&form.token) {
        Some((session, who)) => {
            tracing::info!(identity = %who.name, role = who.role.as_str(), "console login");
            let cookie = format!(
                "{COOKIE}={session}; Path=/; HttpOnly; SameSite=Strict; Max-Age=43200{}",
                if c.auth.secure_cookie() {
                    "; Secure"
                } else {
                    ""
                }
            );
            let mut r = Redirect::to(&local(form.next.as_deref())).into_response();
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        None => {
            tracing::warn!("console login with an unknown token");
            let mut r = login_page(
                &c,
                form.next.as_deref(),
                Some("Unknown token: sign-in refused."),
            );
            *r.status_mut() = StatusCode::UNAUTHORIZED;
            r
        }
    }
}

/// The logout form.
#[derive(Debug, Deserialize)]
pub(crate) struct CsrfForm {
    csrf: Option<String>,
}

/// `POST /logout`.
pub(crate) async fn logout(
    State(c): State<Shared>,
    Extension(me): Extension<Identity>,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Err(d) = c.auth.check_csrf(&me, form.csrf.as_deref()) {
        return denied(&d);
    }
    c.auth.logout(&me);
    let mut r = Redirect::to("/login").into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("paysaga_console=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    r
}

/// Whether `me` may act (the operator role, actions on).
pub(crate) fn may_act(c: &Shared, me: &Identity) -> bool {
    c.actions && me.role == Role::Operator
}

/// A child's parent, a parent's children per fan-out step (counts by status, each a link to
/// the filtered list) and the children that need an operator (`show`'s tree lines).
fn campaign_tree(id: Uuid, tree: &crate::children::Tree) -> Markup {
    html! {
        h2 { "Campaign tree" }
        @if let Some(p) = &tree.parent {
            p { "Child of " a.mono href={ "/sagas/" (p.parent) } { (p.parent) }
                " (fan-out step " (p.step) ", element " (p.index) " with key " span.mono { (p.key) } ")" }
        }
        @if !tree.fan_outs.is_empty() {
            table.tree {
                thead { tr { th { "Fan-out step" } th.num { "Started" } th.num { "Elements" } th { "Children by status" } } }
                tbody { @for f in &tree.fan_outs {
                    tr {
                        td { (f.step) }
                        td.num { (f.started) }
                        td.num { (f.total.map(|t| t.to_string()).unwrap_or_default()) }
                        td { @for (st, n) in &f.by_status {
                            a href={ "/sagas?parent=" (id) "&status=" (st.as_str()) } { (status_badge(*st)) " " (n) } " "
                        } }
                    }
                } }
            }
            p { a href={ "/sagas?parent=" (id) } { "Every child" } " (" span.mono { "paysaga list --parent " (id) } ")" }
        }
        @if !tree.parked.is_empty() {
            h3 { "Children that need an operator" }
            ul { @for child in &tree.parked {
                li { a.mono href={ "/sagas/" (child.id) } { (child.id) } " key " span.mono { (child.key) } ": " (child.error) }
            } }
        }
    }
}
