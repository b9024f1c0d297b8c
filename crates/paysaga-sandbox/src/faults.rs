//! Fault injection: the [`FaultSpec`] (grammar in the crate docs), its seeded RNG, and the
//! middleware that applies it to provider API requests.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use axum::body::{Body, HttpBody};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::oneshot;

use crate::app::App;
use crate::{webhooks, Provider};

/// An inclusive range of milliseconds (`50` or `0..2000`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MsRange {
    /// Lower bound.
    pub min: u64,
    /// Upper bound (>= `min`).
    pub max: u64,
}

impl MsRange {
    fn is_zero(self) -> bool {
        self.max == 0
    }
}

impl fmt::Display for MsRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.min == self.max {
            write!(f, "{}", self.min)
        } else {
            write!(f, "{}..{}", self.min, self.max)
        }
    }
}

impl FromStr for MsRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parse = |t: &str| {
            t.trim()
                .parse::<u64>()
                .map_err(|_| format!("`{t}` is not a whole number of milliseconds"))
        };
        let (min, max) = match s.split_once("..") {
            Some((a, b)) => (parse(a)?, parse(b)?),
            None => {
                let v = parse(s)?;
                (v, v)
            }
        };
        if min > max {
            return Err(format!("range {min}..{max} is empty"));
        }
        Ok(Self { min, max })
    }
}

/// What a per-endpoint rule sets for the requests it matches.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EndpointFault {
    /// `error_rate@...=P`: the probability of an injected 5xx/429.
    Error(f64),
    /// `timeout_after_effect@...=P`: the probability of a timeout after the effect.
    TimeoutAfterEffect(f64),
    /// `latency_ms@...=RANGE`: the latency added before the request is handled.
    Latency(MsRange),
}

/// A per-endpoint override, e.g. `error_rate@POST:/lumanu/api/rest/payable=0.5`.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointRule {
    /// Which fault, and its setting.
    pub fault: EndpointFault,
    /// HTTP method (upper case), or any.
    pub method: Option<String>,
    /// Request paths starting with this prefix match.
    pub path_prefix: String,
}

impl EndpointRule {
    fn matches(&self, method: &str, path: &str) -> bool {
        path.starts_with(&self.path_prefix)
            && self
                .method
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(method))
    }

    /// Specificity: longer prefixes win, then rules naming a method.
    fn weight(&self) -> (usize, bool) {
        (self.path_prefix.len(), self.method.is_some())
    }
}

/// What faults to inject. Parse one from the compact grammar in the crate docs with
/// [`str::parse`]; [`Display`](fmt::Display) writes it back in the same grammar.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultSpec {
    /// Probability that an API request is answered with an injected 5xx/429.
    pub error_rate: f64,
    /// Probability that an API request takes effect but its response never arrives in time.
    pub timeout_after_effect: f64,
    /// Added latency per API request.
    pub latency_ms: MsRange,
    /// Share of injected errors that are 429 with `Retry-After` (the rest are 5xx).
    pub rate_limit_share: f64,
    /// `Retry-After` seconds on injected 429s.
    pub retry_after_s: u64,
    /// How long a timeout-after-effect request hangs before answering 504.
    pub hang_ms: u64,
    /// Probability a webhook is delivered twice.
    pub webhook_duplicate: f64,
    /// Delay before each webhook delivery.
    pub webhook_delay_ms: MsRange,
    /// Probability a webhook is held back so that later ones overtake it.
    pub webhook_reorder: f64,
    /// Probability a webhook is never sent.
    pub webhook_drop: f64,
    /// Probability a webhook caused by an API request is sent before that request's response.
    pub webhook_early: f64,
    /// Seed of the fault RNG; random (and logged) when absent.
    pub seed: Option<u64>,
    /// Per-endpoint overrides.
    pub rules: Vec<EndpointRule>,
}

impl Default for FaultSpec {
    fn default() -> Self {
        Self {
            error_rate: 0.0,
            timeout_after_effect: 0.0,
            latency_ms: MsRange::default(),
            rate_limit_share: 0.25,
            retry_after_s: 1,
            hang_ms: 30_000,
            webhook_duplicate: 0.0,
            webhook_delay_ms: MsRange::default(),
            webhook_reorder: 0.0,
            webhook_drop: 0.0,
            webhook_early: 0.0,
            seed: None,
            rules: Vec::new(),
        }
    }
}

impl FaultSpec {
    /// No faults at all.
    pub fn none() -> Self {
        Self::default()
    }
}

/// A fault spec that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid fault spec item `{item}`: {reason}")]
pub struct FaultSpecError {
    /// The offending `key=value` item.
    pub item: String,
    /// What is wrong with it.
    pub reason: String,
}

fn probability(v: &str) -> Result<f64, String> {
    let p: f64 = v
        .trim()
        .parse()
        .map_err(|_| format!("`{v}` is not a number"))?;
    if !(0.0..=1.0).contains(&p) {
        return Err(format!("probability {p} is outside 0..1"));
    }
    Ok(p)
}

fn whole(v: &str) -> Result<u64, String> {
    v.trim()
        .parse()
        .map_err(|_| format!("`{v}` is not a non-negative whole number"))
}

impl FaultSpec {
    /// The setting `pick` reads from the most specific rule matching the request, if any.
    fn rule<T>(
        &self,
        method: &str,
        path: &str,
        pick: impl Fn(&EndpointFault) -> Option<T>,
    ) -> Option<T> {
        self.rules
            .iter()
            .filter(|r| r.matches(method, path))
            .filter_map(|r| pick(&r.fault).map(|v| (r.weight(), v)))
            .max_by_key(|(weight, _)| *weight)
            .map(|(_, v)| v)
    }
}

impl FromStr for FaultSpec {
    type Err = FaultSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut spec = FaultSpec::default();
        let s = s.trim();
        if s.is_empty() || s.eq_ignore_ascii_case("none") {
            return Ok(spec);
        }
        for raw in s.split(',') {
            let item = raw.trim();
            if item.is_empty() {
                continue;
            }
            let err = |reason: String| FaultSpecError {
                item: item.to_owned(),
                reason,
            };
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| err("expected key=value".into()))?;
            let key = key.trim();
            if let Some((name, target)) = key.split_once('@') {
                let fault = match name {
                    "error_rate" => EndpointFault::Error(probability(value).map_err(err)?),
                    "timeout_after_effect" => {
                        EndpointFault::TimeoutAfterEffect(probability(value).map_err(err)?)
                    }
                    "latency_ms" => EndpointFault::Latency(value.parse().map_err(err)?),
                    other => {
                        return Err(err(format!(
                            "`{other}` has no per-endpoint form (use error_rate@, timeout_after_effect@ or latency_ms@)"
                        )))
                    }
                };
                let (method, path) = match target.split_once(':') {
                    Some((m, p)) => (Some(m.trim().to_ascii_uppercase()), p.trim()),
                    None => (None, target.trim()),
                };
                if !path.starts_with('/') {
                    return Err(err(format!("endpoint path `{path}` must start with /")));
                }
                if method
                    .as_deref()
                    .is_some_and(|m| m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()))
                {
                    return Err(err("method must be letters, e.g. POST".into()));
                }
                spec.rules.push(EndpointRule {
                    fault,
                    method,
                    path_prefix: path.to_owned(),
                });
                continue;
            }
            match key {
                "error_rate" => spec.error_rate = probability(value).map_err(err)?,
                "timeout_after_effect" => {
                    spec.timeout_after_effect = probability(value).map_err(err)?
                }
                "latency_ms" => spec.latency_ms = value.parse().map_err(err)?,
                "rate_limit_share" => spec.rate_limit_share = probability(value).map_err(err)?,
                "retry_after_s" => spec.retry_after_s = whole(value).map_err(err)?,
                "hang_ms" => spec.hang_ms = whole(value).map_err(err)?,
                "webhook_duplicate" => spec.webhook_duplicate = probability(value).map_err(err)?,
                "webhook_delay_ms" => spec.webhook_delay_ms = value.parse().map_err(err)?,
                "webhook_reorder" => spec.webhook_reorder = probability(value).map_err(err)?,
                "webhook_drop" => spec.webhook_drop = probability(value).map_err(err)?,
                "webhook_early" => spec.webhook_early = probability(value).map_err(err)?,
                "seed" => spec.seed = Some(whole(value).map_err(err)?),
                other => return Err(err(format!("unknown key `{other}`"))),
            }
        }
        Ok(spec)
    }
}

impl fmt::Display for FaultSpec {
    /// Canonical form: only values that differ from the defaults, in a fixed order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = FaultSpec::default();
        let mut items: Vec<String> = Vec::new();
        let mut prob = |name: &str, v: f64, default: f64| {
            if v != default {
                items.push(format!("{name}={v}"));
            }
        };
        prob("error_rate", self.error_rate, d.error_rate);
        prob(
            "timeout_after_effect",
            self.timeout_after_effect,
            d.timeout_after_effect,
        );
        prob(
            "rate_limit_share",
            self.rate_limit_share,
            d.rate_limit_share,
        );
        prob(
            "webhook_duplicate",
            self.webhook_duplicate,
            d.webhook_duplicate,
        );
        prob("webhook_reorder", self.webhook_reorder, d.webhook_reorder);
        prob("webhook_drop", self.webhook_drop, d.webhook_drop);
        prob("webhook_early", self.webhook_early, d.webhook_early);
        if self.latency_ms != d.latency_ms {
            items.push(format!("latency_ms={}", self.latency_ms));
        }
        if self.webhook_delay_ms != d.webhook_delay_ms {
            items.push(format!("webhook_delay_ms={}", self.webhook_delay_ms));
        }
        if self.retry_after_s != d.retry_after_s {
            items.push(format!("retry_after_s={}", self.retry_after_s));
        }
        if self.hang_ms != d.hang_ms {
            items.push(format!("hang_ms={}", self.hang_ms));
        }
        if let Some(seed) = self.seed {
            items.push(format!("seed={seed}"));
        }
        for rule in &self.rules {
            let (name, value) = match rule.fault {
                EndpointFault::Error(p) => ("error_rate", p.to_string()),
                EndpointFault::TimeoutAfterEffect(p) => ("timeout_after_effect", p.to_string()),
                EndpointFault::Latency(r) => ("latency_ms", r.to_string()),
            };
            match &rule.method {
                Some(m) => items.push(format!("{name}@{m}:{}={value}", rule.path_prefix)),
                None => items.push(format!("{name}@{}={value}", rule.path_prefix)),
            }
        }
        if items.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&items.join(","))
        }
    }
}

/// What happens to one API request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestOutcome {
    /// Handled normally.
    Pass,
    /// Answered with an injected error, handler not run.
    Error {
        status: StatusCode,
        retry_after: Option<u64>,
    },
    /// Handler runs, then the response is held this long.
    TimeoutAfterEffect { hang: Duration },
}

/// What happens to one webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WebhookPlan {
    /// Delay before each copy; empty when dropped.
    pub delays: Vec<Duration>,
    /// Send the first copy before the causing request's response.
    pub early: bool,
}

/// The live fault spec and its RNG.
#[derive(Debug)]
pub(crate) struct Faults {
    spec: RwLock<FaultSpec>,
    rng: Mutex<StdRng>,
    seed: Mutex<u64>,
}

impl Faults {
    pub(crate) fn new(spec: FaultSpec) -> Self {
        let seed = spec.seed.unwrap_or_else(rand::random);
        tracing::info!(seed, spec = %spec, "fault injection configured");
        Self {
            spec: RwLock::new(spec),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            seed: Mutex::new(seed),
        }
    }

    /// The active spec, with the effective seed filled in.
    pub(crate) fn spec(&self) -> FaultSpec {
        let mut spec = self
            .spec
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        spec.seed = Some(*self.seed.lock().unwrap_or_else(PoisonError::into_inner));
        spec
    }

    /// Replaces the spec and reseeds the RNG.
    pub(crate) fn replace(&self, spec: FaultSpec) {
        let seed = spec.seed.unwrap_or_else(rand::random);
        tracing::info!(seed, spec = %spec, "fault spec replaced");
        *self.rng.lock().unwrap_or_else(PoisonError::into_inner) = StdRng::seed_from_u64(seed);
        *self.seed.lock().unwrap_or_else(PoisonError::into_inner) = seed;
        *self.spec.write().unwrap_or_else(PoisonError::into_inner) = spec;
    }

    fn with_rng<T>(&self, f: impl FnOnce(&mut StdRng) -> T) -> T {
        f(&mut self.rng.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn range(&self, rng: &mut StdRng, r: MsRange) -> Duration {
        if r.is_zero() {
            return Duration::ZERO;
        }
        Duration::from_millis(rng.gen_range(r.min..=r.max))
    }

    /// Decides latency and outcome for a request to `path` (`is_token`: an OAuth endpoint,
    /// to which only explicit per-endpoint rules apply).
    pub(crate) fn decide_request(
        &self,
        method: &str,
        path: &str,
        is_token: bool,
    ) -> (Duration, RequestOutcome) {
        let spec = self.spec.read().unwrap_or_else(PoisonError::into_inner);
        let global = |v: f64| if is_token { 0.0 } else { v };
        let error_rate = spec
            .rule(method, path, |f| match f {
                EndpointFault::Error(p) => Some(*p),
                _ => None,
            })
            .unwrap_or(global(spec.error_rate));
        let timeout_rate = spec
            .rule(method, path, |f| match f {
                EndpointFault::TimeoutAfterEffect(p) => Some(*p),
                _ => None,
            })
            .unwrap_or(global(spec.timeout_after_effect));
        let latency_ms = spec
            .rule(method, path, |f| match f {
                EndpointFault::Latency(r) => Some(*r),
                _ => None,
            })
            .unwrap_or(if is_token {
                MsRange::default()
            } else {
                spec.latency_ms
            });
        self.with_rng(|rng| {
            let latency = self.range(rng, latency_ms);
            let outcome = if error_rate > 0.0 && rng.gen_bool(error_rate) {
                if spec.rate_limit_share > 0.0 && rng.gen_bool(spec.rate_limit_share) {
                    RequestOutcome::Error {
                        status: StatusCode::TOO_MANY_REQUESTS,
                        retry_after: Some(spec.retry_after_s),
                    }
                } else {
                    let status = match rng.gen_range(0..3) {
                        0 => StatusCode::INTERNAL_SERVER_ERROR,
                        1 => StatusCode::BAD_GATEWAY,
                        _ => StatusCode::SERVICE_UNAVAILABLE,
                    };
                    RequestOutcome::Error {
                        status,
                        retry_after: None,
                    }
                }
            } else if timeout_rate > 0.0 && rng.gen_bool(timeout_rate) {
                RequestOutcome::TimeoutAfterEffect {
                    hang: Duration::from_millis(spec.hang_ms),
                }
            } else {
                RequestOutcome::Pass
            };
            (latency, outcome)
        })
    }

    /// Decides the fate of one webhook.
    pub(crate) fn decide_webhook(&self, from_request: bool) -> WebhookPlan {
        let spec = self.spec.read().unwrap_or_else(PoisonError::into_inner);
        self.with_rng(|rng| {
            let hit = |rng: &mut StdRng, p: f64| p > 0.0 && rng.gen_bool(p);
            if hit(rng, spec.webhook_drop) {
                return WebhookPlan {
                    delays: Vec::new(),
                    early: false,
                };
            }
            let copies = if hit(rng, spec.webhook_duplicate) {
                2
            } else {
                1
            };
            let early = from_request && hit(rng, spec.webhook_early);
            let reorder = hit(rng, spec.webhook_reorder);
            let mut delays = Vec::with_capacity(copies);
            for copy in 0..copies {
                let mut d = self.range(rng, spec.webhook_delay_ms);
                if copy == 0 && early {
                    d = Duration::ZERO;
                }
                if reorder && !(copy == 0 && early) {
                    d += Duration::from_millis(rng.gen_range(300..=800));
                }
                delays.push(d);
            }
            WebhookPlan { delays, early }
        })
    }
}

/// Is this path a token endpoint?
pub(crate) fn is_token_path(path: &str) -> bool {
    matches!(
        path,
        "/lumanu/oauth/token" | "/blaaiz/oauth/token" | "/lean/oauth2/token"
    )
}

/// Middleware on every route: applies request faults to provider routes, and collects the
/// webhooks a request causes so they are released after its response (or before, if early).
pub(crate) async fn middleware(State(app): State<App>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    let Some(provider) = Provider::from_path(&path) else {
        return next.run(req).await;
    };
    let method = req.method().as_str().to_owned();
    let (latency, outcome) = app
        .faults
        .decide_request(&method, &path, is_token_path(&path));
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let RequestOutcome::Error {
        status,
        retry_after,
    } = outcome
    {
        tracing::debug!(%provider, %method, %path, %status, "injected error");
        return injected_error(provider, status, retry_after);
    }
    let collector = webhooks::Collector::default();
    let response = webhooks::SCOPE
        .scope(collector.clone(), next.run(req))
        .await;
    let later = app.webhooks.release(collector.take()).await;
    if let RequestOutcome::TimeoutAfterEffect { hang } = outcome {
        tracing::debug!(%provider, %method, %path, ?hang, "injected timeout after effect");
        // The effect happened: its webhooks go out while the client waits in vain.
        app.webhooks.schedule_later(later);
        tokio::select! {
            () = tokio::time::sleep(hang) => {}
            () = crate::app::until_shutdown(app.shutdown.clone()) => {}
        }
        return injected_error(provider, StatusCode::GATEWAY_TIMEOUT, None);
    }
    if later.is_empty() {
        return response;
    }
    let (sent_tx, sent_rx) = oneshot::channel::<()>();
    let webhooks = Arc::clone(&app.webhooks);
    tokio::spawn(async move {
        // Resolves (with an error) when the response body is dropped: fully written, or the
        // client went away.
        let _ = sent_rx.await;
        webhooks.schedule_later(later);
    });
    notify_when_sent(response, sent_tx)
}

/// Wraps the response body so that `guard` is dropped once hyper has written (or abandoned)
/// the body. The length is kept explicit so the framing does not change.
fn notify_when_sent(response: Response, guard: oneshot::Sender<()>) -> Response {
    let (mut parts, body) = response.into_parts();
    if let Some(len) = HttpBody::size_hint(&body).exact() {
        parts
            .headers
            .insert(axum::http::header::CONTENT_LENGTH, len.into());
    }
    let stream = body.into_data_stream().map(move |chunk| {
        let _held_until_the_body_is_dropped = &guard;
        chunk
    });
    Response::from_parts(parts, Body::from_stream(stream))
}

/// An injected error in the provider's own error shape.
fn injected_error(provider: Provider, status: StatusCode, retry_after: Option<u64>) -> Response {
    let mut response = match provider {
        Provider::Lumanu => crate::lumanu::ApiError::injected(status).into_response(),
        Provider::Blaaiz => crate::blaaiz::ApiError::injected(status).into_response(),
        Provider::Lean => crate::lean::ApiError::injected(status).into_response(),
    };
    if let Some(secs) = retry_after {
        let headers = response.headers_mut();
        headers.insert(axum::http::header::RETRY_AFTER, secs.into());
        if provider == Provider::Blaaiz {
            headers.insert("x-ratelimit-limit", 120.into());
            headers.insert("x-ratelimit-remaining", 0.into());
            headers.insert("x-ratelimit-reset", secs.into());
        }
    }
    response
}

/// Shared handle type used by the app state.
pub(crate) type SharedFaults = Arc<Faults>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example_and_round_trips() {
        let text = "error_rate=0.2,timeout_after_effect=0.1,latency_ms=50,webhook_duplicate=0.3,\
                    webhook_delay_ms=0..2000,webhook_reorder=0.2,webhook_drop=0.1,webhook_early=0.3,\
                    seed=42,error_rate@POST:/lumanu/api/rest/payable=1,timeout_after_effect@/blaaiz=0.5,\
                    latency_ms@POST:/blaaiz/api/external/payout=100..200";
        let spec: FaultSpec = text.parse().expect("parse");
        assert_eq!(spec.error_rate, 0.2);
        assert_eq!(spec.latency_ms, MsRange { min: 50, max: 50 });
        assert_eq!(spec.webhook_delay_ms, MsRange { min: 0, max: 2000 });
        assert_eq!(spec.seed, Some(42));
        assert_eq!(spec.rules.len(), 3);
        assert_eq!(spec.rules[0].method.as_deref(), Some("POST"));
        assert_eq!(
            spec.rules[2].fault,
            EndpointFault::Latency(MsRange { min: 100, max: 200 })
        );
        let again: FaultSpec = spec.to_string().parse().expect("reparse");
        assert_eq!(again, spec);
        assert_eq!(FaultSpec::default().to_string(), "none");
        assert_eq!("none".parse::<FaultSpec>(), Ok(FaultSpec::default()));
        assert_eq!("".parse::<FaultSpec>(), Ok(FaultSpec::default()));
    }

    #[test]
    fn rejects_bad_items() {
        for bad in [
            "error_rate=2",
            "error_rate",
            "bogus=1",
            "latency_ms=5..1",
            "seed=-1",
            "error_rate@lumanu=0.1",
            "webhook_drop@/x=0.1",
            "latency_ms@/x=fast",
        ] {
            assert!(bad.parse::<FaultSpec>().is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn rules_override_and_token_endpoints_are_exempt() {
        let faults = Faults::new(
            "error_rate=1,rate_limit_share=0,error_rate@/lumanu/api/rest/funding=0,seed=1"
                .parse()
                .expect("spec"),
        );
        let (_, o) = faults.decide_request("POST", "/lumanu/api/rest/payable", false);
        assert!(matches!(o, RequestOutcome::Error { status, .. } if status.is_server_error()));
        let (_, o) = faults.decide_request("POST", "/lumanu/api/rest/funding", false);
        assert_eq!(o, RequestOutcome::Pass);
        let (_, o) = faults.decide_request("POST", "/lumanu/oauth/token", true);
        assert_eq!(o, RequestOutcome::Pass);
        faults.replace(
            "error_rate@/lean/oauth2/token=1,seed=1"
                .parse()
                .expect("spec"),
        );
        let (_, o) = faults.decide_request("POST", "/lean/oauth2/token", true);
        assert!(matches!(o, RequestOutcome::Error { .. }));
    }

    #[test]
    fn a_latency_rule_slows_only_the_requests_it_matches() {
        let faults = Faults::new(
            "latency_ms=5,latency_ms@POST:/blaaiz/api/external/payout=300..400,seed=1"
                .parse()
                .expect("spec"),
        );
        let (latency, o) = faults.decide_request("POST", "/blaaiz/api/external/payout", false);
        assert!((300..=400).contains(&latency.as_millis()), "{latency:?}");
        assert_eq!(o, RequestOutcome::Pass);
        let (latency, _) = faults.decide_request("GET", "/blaaiz/api/external/payout", false);
        assert_eq!(latency, Duration::from_millis(5));
        let (latency, _) = faults.decide_request("POST", "/blaaiz/oauth/token", true);
        assert_eq!(latency, Duration::ZERO);
    }

    #[test]
    fn webhook_plans() {
        let f = Faults::new(
            "webhook_reorder=1,webhook_duplicate=1,seed=2"
                .parse()
                .expect("spec"),
        );
        let plan = f.decide_webhook(false);
        assert_eq!(plan.delays.len(), 2);
        assert!(plan.delays.iter().all(|d| *d >= Duration::from_millis(300)));
        assert!(!plan.early);
        f.replace("webhook_drop=1".parse().expect("spec"));
        assert!(f.decide_webhook(true).delays.is_empty());
        f.replace(
            "webhook_early=1,webhook_delay_ms=50..60"
                .parse()
                .expect("spec"),
        );
        let plan = f.decide_webhook(true);
        assert!(plan.early);
        assert_eq!(plan.delays, vec![Duration::ZERO]);
        assert!(!f.decide_webhook(false).early);
    }

    #[test]
    fn same_seed_same_decisions() {
        let spec: FaultSpec = "error_rate=0.5,webhook_duplicate=0.5,webhook_delay_ms=0..100,seed=9"
            .parse()
            .expect("spec");
        let run = || {
            let f = Faults::new(spec.clone());
            (0..50)
                .map(|i| {
                    (
                        f.decide_request("GET", "/lean/x", false).1,
                        f.decide_webhook(i % 2 == 0),
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
    }
}
