//! What every provider step shares: error mapping, parameter reading, references.

use std::time::Duration;

use paysaga_core::{StepContext, StepOutcome, Wake};
use serde_json::Value;

use crate::Error;

/// Maps a client error to the step's outcome: transient errors (timeouts, connection
/// failures, 5xx, 408, 429) retry no sooner than the provider's `Retry-After`; everything else
/// fails the step. `what` says what the step was doing; the client's error text never holds
/// credentials or tokens.
pub fn outcome_for(what: &str, err: &Error) -> StepOutcome {
    if let Error::NoCapacity { retry_after, .. } = err {
        // Nothing was sent: not an attempt (see `StepOutcome::Held`).
        return StepOutcome::Held {
            reason: format!("{what}: {err}"),
            after: *retry_after,
        };
    }
    let error = format!("{what}: {err}");
    if err.is_transient() {
        StepOutcome::Retry {
            error,
            after: err.retry_after(),
        }
    } else {
        StepOutcome::Fail { error }
    }
}

/// A create call failed in a way that may have created the object, and the look-up after it
/// did not find it (yet): retry, so that the next attempt looks again before creating.
pub fn retry_unknown_effect(what: &str, err: &Error) -> StepOutcome {
    StepOutcome::Retry {
        error: format!(
            "{what}: {err} (the provider may have acted; the next attempt looks for the object \
             before creating it again)"
        ),
        after: err.retry_after(),
    }
}

/// The reference a step sends with an object it creates at a provider without idempotency
/// keys, so that a repeated run finds the object instead of creating a second one. Derived
/// from the step's idempotency key only (saga id + step name), never from the attempt.
pub fn reference(ctx: &StepContext) -> String {
    let key = match ctx.wake {
        // The forward effect's key, also when compensating (the reference of the object
        // to undo).
        Wake::Compensate => ctx.forward_idempotency_key(),
        _ => ctx.idempotency_key(),
    };
    format!("ps-{key}")
}

/// Whether this run was woken by the wait's event or poll (not the first run).
pub fn is_wait_wake(wake: &Wake) -> bool {
    matches!(wake, Wake::Event(_) | Wake::Poll { .. })
}

/// Reading parameters at validation (`validate`: values from earlier steps are `null`, and
/// are checked when the step runs) and at run time (`run`: everything must be there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `StepKind::validate`: `null` means "decided by an earlier step" and is accepted.
    Validate,
    /// `StepKind::run`: every required value must be present.
    Run,
}

/// A parameter object read in a [`Mode`]; every error names the field (`prefix.field`).
#[derive(Debug, Clone)]
pub struct Fields<'a> {
    value: &'a Value,
    prefix: String,
    mode: Mode,
}

/// Result of reading a parameter: the error names the field.
pub type FieldResult<T> = Result<T, String>;

impl<'a> Fields<'a> {
    /// The step's parameters (must be an object, or `null` at validation).
    pub fn new(value: &'a Value, mode: Mode) -> FieldResult<Self> {
        match value {
            Value::Object(_) => Ok(Fields {
                value,
                prefix: String::new(),
                mode,
            }),
            Value::Null if mode == Mode::Validate => Ok(Fields {
                value,
                prefix: String::new(),
                mode,
            }),
            _ => Err("params must be an object".to_owned()),
        }
    }

    /// The mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// `prefix.name` (or `name`).
    pub fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// The raw value of `name` (`None` when absent or `null`).
    pub fn raw(&self, name: &str) -> Option<&'a Value> {
        self.value.get(name).filter(|v| !v.is_null())
    }

    /// Whether `name` is absent or `null`, which at validation means "decided later".
    fn deferred(&self, name: &str) -> bool {
        self.raw(name).is_none() && self.mode == Mode::Validate
    }

    /// A nested object. At validation an absent object reads as an empty one that accepts
    /// everything.
    pub fn object(&self, name: &str) -> FieldResult<Fields<'a>> {
        static NULL: Value = Value::Null;
        let path = self.path(name);
        match self.raw(name) {
            Some(v @ Value::Object(_)) => Ok(Fields {
                value: v,
                prefix: path,
                mode: self.mode,
            }),
            Some(_) => Err(format!("{path} must be an object")),
            None if self.mode == Mode::Validate => Ok(Fields {
                value: &NULL,
                prefix: path,
                mode: self.mode,
            }),
            None => Err(format!("{path} is required")),
        }
    }

    /// A required non-empty string (at validation: also `""` for a deferred value).
    pub fn string(&self, name: &str) -> FieldResult<String> {
        if self.deferred(name) {
            return Ok(String::new());
        }
        let path = self.path(name);
        match self.raw(name) {
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
            Some(Value::String(_)) => Err(format!("{path} must not be empty")),
            Some(other) => Err(format!("{path} must be a string (got {})", kind(other))),
            None => Err(format!("{path} is required")),
        }
    }

    /// An optional string (absent, `null` or a non-empty string).
    pub fn opt_string(&self, name: &str) -> FieldResult<Option<String>> {
        match self.raw(name) {
            None => Ok(None),
            Some(_) => self.string(name).map(Some),
        }
    }

    /// A required identifier that goes into a provider URL as one path segment: a non-empty
    /// string that is not `.` or `..` (which would change which endpoint is called).
    pub fn id(&self, name: &str) -> FieldResult<String> {
        let id = self.string(name)?;
        if crate::transport::is_dot_segment(&id) {
            Err(format!(
                "{} must be an identifier, not {id:?} (a path segment that would change which \
                 provider endpoint is called)",
                self.path(name)
            ))
        } else {
            Ok(id)
        }
    }

    /// An optional identifier (absent, `null` or as [`Fields::id`]).
    pub fn opt_id(&self, name: &str) -> FieldResult<Option<String>> {
        match self.raw(name) {
            None => Ok(None),
            Some(_) => self.id(name).map(Some),
        }
    }

    /// A required amount: a positive integer in minor units (cents, kobo, fils).
    pub fn amount(&self, name: &str) -> FieldResult<i64> {
        if self.deferred(name) {
            return Ok(1);
        }
        let path = self.path(name);
        match self.raw(name) {
            Some(Value::Number(n)) => match n.as_i64() {
                Some(v) if v > 0 => Ok(v),
                _ => Err(format!(
                    "{path} must be a positive integer in minor units (got {n})"
                )),
            },
            Some(other) => Err(format!(
                "{path} must be a positive integer in minor units (got {})",
                kind(other)
            )),
            None => Err(format!("{path} is required")),
        }
    }

    /// A required ISO 4217 currency code (three ASCII letters), returned upper case.
    pub fn currency(&self, name: &str) -> FieldResult<String> {
        if self.deferred(name) {
            return Ok("XXX".to_owned());
        }
        let code = self.string(name)?;
        if code.len() == 3 && code.chars().all(|c| c.is_ascii_alphabetic()) {
            Ok(code.to_ascii_uppercase())
        } else {
            Err(format!(
                "{} must be a 3-letter currency code (got {code:?})",
                self.path(name)
            ))
        }
    }

    /// A required email address: one `@`, a non-empty local part and a dot inside the domain.
    pub fn email(&self, name: &str) -> FieldResult<String> {
        if self.deferred(name) {
            return Ok(String::new());
        }
        let email = self.string(name)?;
        if is_email(&email) {
            Ok(email)
        } else {
            Err(format!(
                "{} must be an email address (got {email:?})",
                self.path(name)
            ))
        }
    }

    /// An optional duration written as text (`"2d"`, `"36h"`), else `default`.
    pub fn duration(&self, name: &str, default: Duration) -> FieldResult<Duration> {
        match self.raw(name) {
            None => Ok(default),
            Some(Value::String(s)) => match humantime::parse_duration(s.trim()) {
                Ok(d) if !d.is_zero() => Ok(d),
                Ok(_) => Err(format!("{} must be longer than zero", self.path(name))),
                Err(e) => Err(format!(
                    "{} must be a duration such as \"2d\" or \"36h\" ({e})",
                    self.path(name)
                )),
            },
            Some(other) => Err(format!(
                "{} must be a duration such as \"2d\" (got {})",
                self.path(name),
                kind(other)
            )),
        }
    }

    /// One of `allowed` (case-insensitive), returned as written in `allowed`.
    pub fn one_of(&self, name: &str, allowed: &[&'static str]) -> FieldResult<&'static str> {
        if self.deferred(name) {
            return Ok(allowed.first().copied().unwrap_or_default());
        }
        let value = self.string(name)?;
        allowed
            .iter()
            .find(|a| a.eq_ignore_ascii_case(&value))
            .copied()
            .ok_or_else(|| {
                format!(
                    "{} must be one of {} (got {value:?})",
                    self.path(name),
                    allowed.join(", ")
                )
            })
    }
}

/// The JSON type of `v`, for error messages.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// One `@`, something before it, and a domain with a dot that neither starts nor ends it.
pub fn is_email(s: &str) -> bool {
    let mut parts = s.split('@');
    let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    !local.is_empty()
        && !s.chars().any(char::is_whitespace)
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
}

/// Appends the reference to a description the way Lumanu payables and invoices carry it.
pub fn tagged(description: &str, reference: &str) -> String {
    format!("{description} [{reference}]")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_name_what_is_wrong() {
        let p = json!({"amount": 10.5, "currency": "EURO", "email": "a@b", "id": "",
                       "o": {"x": 0}});
        let f = Fields::new(&p, Mode::Run).expect("object");
        assert!(f.amount("amount").unwrap_err().contains("amount"));
        assert!(f.currency("currency").unwrap_err().contains("currency"));
        assert!(f.email("email").unwrap_err().contains("email"));
        assert!(f.string("id").unwrap_err().contains("id must not be empty"));
        let o = f.object("o").expect("object");
        assert!(o.amount("x").unwrap_err().contains("o.x"));
        assert!(f
            .string("missing")
            .unwrap_err()
            .contains("missing is required"));
        let v = Fields::new(&p, Mode::Validate).expect("object");
        assert_eq!(v.string("missing"), Ok(String::new()));
        assert!(v.amount("amount").is_err(), "present values are checked");
    }

    #[test]
    fn emails() {
        assert!(is_email("ada@example.com"));
        assert!(!is_email("ada@example"));
        assert!(!is_email("ada@@example.com"));
        assert!(!is_email("@example.com"));
        assert!(!is_email("ada@example."));
        assert!(!is_email("a da@example.com"));
    }

    #[test]
    fn transient_errors_retry_with_the_providers_delay() {
        let err = Error::Api {
            provider: crate::Provider::Lean,
            endpoint: "create_payment_intent",
            status: 429,
            code: Some("RATE_LIMIT_EXCEEDED".into()),
            message: "slow down".into(),
            request_id: None,
            retry_after: Some(Duration::from_secs(3)),
        };
        match outcome_for("create intent", &err) {
            StepOutcome::Retry { error, after } => {
                assert!(error.contains("create intent") && error.contains("429"));
                assert_eq!(after, Some(Duration::from_secs(3)));
            }
            other => panic!("expected Retry, got {other:?}"),
        }
        let err = Error::Api {
            provider: crate::Provider::Lean,
            endpoint: "create_payment_intent",
            status: 400,
            code: Some("INVALID_PARAMETERS".into()),
            message: "bad".into(),
            request_id: None,
            retry_after: None,
        };
        assert!(matches!(
            outcome_for("create intent", &err),
            StepOutcome::Fail { .. }
        ));
    }
}
