//! Every request paysaga's clients send and every answer the sandbox gives, checked against
//! the providers' published OpenAPI files (copied here from `shared/brief/openapi/`: Blaaiz's
//! own files, one per endpoint; Lumanu's assembled reference). Lean publishes no OpenAPI file:
//! `lean/openapi.json` is assembled from the seeds' example JSON (see `README.md`), and the
//! sandbox's Lean webhooks are checked against its `webhooks` section ([`check_webhooks`]).
//! Both providers' files write OpenAPI 3.0's `nullable: true` in places.
//!
//! The sandbox records the exchanges (`/_sandbox/requests`); [`check`] validates each one whose
//! path the provider's file describes, with JSON Schema 2020-12 (`jsonschema`). Lumanu's file
//! writes OpenAPI 3.0's `nullable: true`, read here as "or null". Exchanges the files do not
//! describe must be listed in [`UNDESCRIBED`], and violations where the provider's own examples
//! contradict its schema in [`ALLOWED`], each with its reason.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::{json, Value};

/// An allowed violation: the provider's own documents show what its schema forbids.
struct Allowed {
    provider: &'static str,
    /// `request` or `response`.
    side: &'static str,
    /// Instance location (JSON pointer, array indexes as `*`).
    at: &'static str,
    /// Only when the value there is null.
    only_null: bool,
    /// Only when the violation's message contains this ("" for any).
    message: &'static str,
    #[allow(dead_code)]
    reason: &'static str,
}

const ALLOWED: &[Allowed] = &[
    // Blaaiz: its OpenAPI file requires `file_name` and `file_type`; its official SDKs never
    // send them (`customers.upload_file_complete` sends `customer_id` and `file_category`).
    Allowed {
        provider: "blaaiz",
        side: "request",
        at: "",
        only_null: false,
        message: "\"file_name\" is a required property",
        reason: "the SDK's pre-signed URL request has no file_name",
    },
    Allowed {
        provider: "blaaiz",
        side: "request",
        at: "",
        only_null: false,
        message: "\"file_type\" is a required property",
        reason: "the SDK's pre-signed URL request has no file_type",
    },
    // Lumanu Payable (quickstart: "status - ... When they are initially created this will be
    // null"; its sample payable has `due_date`, `vendor_display_name`, `payee_lumanu_id` null).
    allow_null("lumanu", "/status", "Payable.status: an enum without null; the quickstart shows null until approved"),
    allow_null("lumanu", "/data/*/status", "as /status, in payable lists"),
    allow_null("lumanu", "/due_date", "Payable/Funding.due_date: a date-time; the quickstart's payable and the Balance Funding Response example show null"),
    allow_null("lumanu", "/data/*/due_date", "as /due_date, in lists"),
    allow_null("lumanu", "/vendor_display_name", "a string; the quickstart shows null until the vendor signs up"),
    allow_null("lumanu", "/data/*/vendor_display_name", "as /vendor_display_name, in lists"),
    allow_null("lumanu", "/payee_lumanu_id", "a string; the quickstart shows null before onboarding"),
    allow_null("lumanu", "/data/*/payee_lumanu_id", "as /payee_lumanu_id, in lists"),
    // Lumanu Funding: the reference's own "Balance Funding Response" example has these null.
    allow_null("lumanu", "/additional_notes", "Funding: null in the Balance Funding Response example"),
    allow_null("lumanu", "/bill_to", "Funding: null in the Balance Funding Response example"),
    allow_null("lumanu", "/company_address_one", "Funding: null in the Balance Funding Response example"),
    allow_null("lumanu", "/company_name", "Funding: null in the Balance Funding Response example"),
    allow_null("lumanu", "/description", "Funding: null in the Balance Funding Response example"),
    allow_null("lumanu", "/po_number", "Funding: null in the Balance Funding Response example"),
    allow_null("lumanu", "/recipient_email", "Funding: null in the Balance Funding Response example"),
    // Lean: the getting-started payouts seed says payments from the connected account are
    // "queued" until authorised (manually, automatically or on demand) but names no status for
    // a queued payment; the seeds' status list has only the four bank answers. The sandbox
    // queues a manually authorised payment as `CREATED`, the status Lean's payment lifecycle
    // page documents for "no interaction with the bank yet" (docs/PROVIDER-CONTRACTS.md).
    Allowed {
        provider: "lean",
        side: "response",
        at: "/status",
        only_null: false,
        message: "\"CREATED\" is not one of",
        reason: "a payment queued for manual authorisation (GET /payments/v1/{id})",
    },
    Allowed {
        provider: "lean",
        side: "response",
        at: "/payments/*/status",
        only_null: false,
        message: "\"CREATED\" is not one of",
        reason: "a payment queued for manual authorisation, in its intent",
    },
    Allowed {
        provider: "lean",
        side: "webhook",
        at: "/payload/status",
        only_null: false,
        message: "\"CREATED\" is not one of",
        reason: "payment.created of a payment queued for manual authorisation",
    },
];

const fn allow_null(provider: &'static str, at: &'static str, reason: &'static str) -> Allowed {
    Allowed {
        provider,
        side: "response",
        at,
        only_null: true,
        message: "",
        reason,
    }
}

/// (provider, method, path template) the provider's files do not describe, with the source
/// the sandbox and the client follow instead.
pub const UNDESCRIBED: &[(&str, &str, &str, &str)] = &[
    (
        "lumanu",
        "POST",
        "/oauth/token",
        "PROVIDERS.md and the quickstart (Auth0 token)",
    ),
    (
        "lumanu",
        "POST",
        "/api/rest/payable",
        "PROVIDERS.md and the quickstart (create payable)",
    ),
    (
        "lumanu",
        "POST",
        "/api/rest/funding/{id}/link-deposit",
        "PROVIDERS.md (link deposit)",
    ),
    (
        "blaaiz",
        "POST",
        "/oauth/token",
        "PROVIDERS.md and the SDK (form-encoded token)",
    ),
    (
        "blaaiz",
        "GET",
        "/api/external/customer",
        "the SDK's customers.list (look-before-create)",
    ),
    (
        "blaaiz",
        "GET",
        "/api/external/webhook",
        "the SDK's webhooks.get",
    ),
    (
        "blaaiz",
        "GET",
        "/api/external/wallet",
        "the SDK's wallets.list",
    ),
    (
        "blaaiz",
        "GET",
        "/api/external/wallet/{id}",
        "the SDK's wallets.get",
    ),
    (
        "blaaiz",
        "GET",
        "/api/external/currency",
        "the SDK's currencies.list (test_connection)",
    ),
    (
        "blaaiz",
        "GET",
        "/api/external/bank",
        "the SDK's banks.list",
    ),
    (
        "blaaiz",
        "POST",
        "/api/external/fees/breakdown",
        "the SDK's fees.get_breakdown",
    ),
];

struct Doc {
    provider: &'static str,
    /// Prefix of the described paths on the wire (`/api/rest` for Lumanu).
    prefix: &'static str,
    doc: Value,
}

/// The providers' files.
pub struct Specs {
    docs: Vec<Doc>,
}

/// OpenAPI 3.0's `nullable: true` as JSON Schema: the type (or enum) also admits null.
fn nullable_to_json_schema(v: &mut Value) {
    match v {
        Value::Object(obj) => {
            if obj.get("nullable") == Some(&Value::Bool(true)) {
                if let Some(Value::String(t)) = obj.get("type").cloned() {
                    obj.insert("type".into(), json!([t, "null"]));
                }
                if let Some(Value::Array(e)) = obj.get_mut("enum") {
                    if !e.contains(&Value::Null) {
                        e.push(Value::Null);
                    }
                }
            }
            for child in obj.values_mut() {
                nullable_to_json_schema(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(nullable_to_json_schema),
        _ => {}
    }
}

fn read(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

impl Specs {
    /// The files in `dir` (this module's directory).
    pub fn load(dir: &Path) -> Self {
        let mut docs = Vec::new();
        let mut blaaiz: Vec<_> = std::fs::read_dir(dir.join("blaaiz"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        blaaiz.sort();
        for path in blaaiz {
            // Blaaiz's 3.1 files still write 3.0's `nullable: true` (e.g. Customer.business_name).
            let mut doc = read(&path);
            nullable_to_json_schema(&mut doc);
            docs.push(Doc {
                provider: "blaaiz",
                prefix: "",
                doc,
            });
        }
        let mut lumanu = read(&dir.join("lumanu/openapi.json"));
        nullable_to_json_schema(&mut lumanu);
        docs.push(Doc {
            provider: "lumanu",
            prefix: "/api/rest",
            doc: lumanu,
        });
        docs.push(Doc {
            provider: "lean",
            prefix: "",
            doc: read(&dir.join("lean/openapi.json")),
        });
        Self { docs }
    }

    /// Lean's assembled document.
    #[allow(dead_code)] // used by steps.rs, not by the sandbox's official_sdk.rs
    fn lean(&self) -> &Value {
        &self
            .docs
            .iter()
            .find(|d| d.provider == "lean")
            .expect("lean/openapi.json loaded")
            .doc
    }

    /// The document and path template describing `method path` of `provider`; a template
    /// with fewer parameters wins (`/payments/v1/destinations` over `/payments/v1/{payment_id}`).
    fn find(&self, provider: &str, method: &str, path: &str) -> Option<(&Doc, String)> {
        let mut found: Vec<(&Doc, String)> = self.find_all(provider, method, path);
        found.sort_by_key(|(_, t)| t.matches('{').count());
        found.into_iter().next()
    }

    fn find_all(&self, provider: &str, method: &str, path: &str) -> Vec<(&Doc, String)> {
        let mut found = Vec::new();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        for d in self.docs.iter().filter(|d| d.provider == provider) {
            let Some(rest) = path.strip_prefix(d.prefix) else {
                continue;
            };
            let rest_segments: Vec<&str> = rest.trim_matches('/').split('/').collect();
            let _ = &segments;
            for (template, item) in d.doc["paths"].as_object().into_iter().flatten() {
                let t: Vec<&str> = template.trim_matches('/').split('/').collect();
                let matches = t.len() == rest_segments.len()
                    && t.iter()
                        .zip(&rest_segments)
                        .all(|(t, s)| (t.starts_with('{') && t.ends_with('}')) || t == s);
                if matches && item.get(method.to_ascii_lowercase()).is_some() {
                    found.push((d, template.clone()));
                }
            }
        }
        found
    }
}

fn pointer_escape(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

/// Validates `instance` against the schema at `pointer` of `doc`; the violations as
/// (instance location, message, offending value).
fn validate(doc: &Value, pointer: &str, instance: &Value) -> Vec<(String, String, Value)> {
    // The schema is copied to a plain key of the document (its `$ref`s into
    // `#/components/...` still resolve) and referenced from the root.
    let target = doc.pointer(pointer).cloned().unwrap_or(Value::Null);
    let mut root = doc.clone();
    if let Some(obj) = root.as_object_mut() {
        obj.insert("x-paysaga-target".into(), target);
        obj.insert("$ref".into(), json!("#/x-paysaga-target"));
        obj.insert(
            "$schema".into(),
            json!("https://json-schema.org/draft/2020-12/schema"),
        );
    }
    let validator = jsonschema::draft202012::new(&root)
        .unwrap_or_else(|e| panic!("schema at {pointer} does not compile: {e}"));
    validator
        .iter_errors(instance)
        .map(|e| {
            (
                e.instance_path().as_str().to_owned(),
                e.to_string(),
                e.instance().clone().into_owned(),
            )
        })
        .collect()
}

fn allowed(provider: &str, side: &str, at: &str, value: &Value, msg: &str) -> bool {
    let generic: String = at
        .split('/')
        .map(|s| if s.parse::<usize>().is_ok() { "*" } else { s })
        .collect::<Vec<_>>()
        .join("/");
    ALLOWED.iter().any(|a| {
        a.provider == provider
            && a.side == side
            && a.at == generic
            && (!a.only_null || value.is_null())
            && msg.contains(a.message)
    })
}

/// Checks the recorded exchanges; panics listing every violation. Returns how many request
/// and response bodies were validated.
pub fn check(specs: &Specs, exchanges: &[Value]) -> (usize, usize) {
    let mut violations = BTreeSet::new();
    let mut undescribed = BTreeSet::new();
    let (mut requests, mut responses) = (0, 0);
    for x in exchanges {
        let provider = x["provider"].as_str().unwrap_or_default();
        let method = x["method"].as_str().unwrap_or_default();
        let path = x["path"].as_str().unwrap_or_default();
        let status = x["status"].as_u64().unwrap_or_default();
        let Some((doc, template)) = specs.find(provider, method, path) else {
            let described = UNDESCRIBED.iter().any(|(p, m, t, _)| {
                *p == provider && *m == method && {
                    let t: Vec<&str> = t.trim_matches('/').split('/').collect();
                    let s: Vec<&str> = path.trim_matches('/').split('/').collect();
                    t.len() == s.len()
                        && t.iter().zip(&s).all(|(t, s)| t.starts_with('{') || t == s)
                }
            });
            if !described {
                undescribed.insert(format!("{provider} {method} {path}"));
            }
            continue;
        };
        let op = format!(
            "/paths/{}/{}",
            pointer_escape(&template),
            method.to_ascii_lowercase()
        );
        let operation = doc.doc.pointer(&op).cloned().unwrap_or(Value::Null);
        let json_ct = "application~1json";
        if operation.pointer("/requestBody").is_some() && !x["request"].is_null() {
            let pointer = format!("{op}/requestBody/content/{json_ct}/schema");
            if doc.doc.pointer(&pointer).is_some() {
                requests += 1;
                for (at, msg, value) in validate(&doc.doc, &pointer, &x["request"]) {
                    if !allowed(provider, "request", &at, &value, &msg) {
                        violations.insert(format!(
                            "{provider} {method} {template} request {at}: {msg}"
                        ));
                    }
                }
            }
        }
        let responses_of = operation.pointer("/responses").cloned().unwrap_or_default();
        let key = status.to_string();
        if responses_of.get(&key).is_none() {
            violations.insert(format!(
                "{provider} {method} {path}: status {status} is not documented for {template} \
                 (documented: {:?})",
                responses_of
                    .as_object()
                    .map(|o| o.keys().collect::<Vec<_>>())
            ));
            continue;
        }
        let pointer = format!("{op}/responses/{key}/content/{json_ct}/schema");
        if doc.doc.pointer(&pointer).is_some() {
            responses += 1;
            for (at, msg, value) in validate(&doc.doc, &pointer, &x["response"]) {
                if !allowed(provider, "response", &at, &value, &msg) {
                    violations.insert(format!(
                        "{provider} {method} {template} {status} response {at}: {msg}"
                    ));
                }
            }
        }
    }
    assert!(
        undescribed.is_empty(),
        "exchanges no OpenAPI file describes and UNDESCRIBED does not list: {undescribed:#?}"
    );
    assert!(
        violations.is_empty(),
        "{} OpenAPI violations (distinct):\n{}",
        violations.len(),
        violations.into_iter().collect::<Vec<_>>().join("\n")
    );
    (requests, responses)
}

/// Checks the sandbox's Lean webhook deliveries (`/_sandbox/webhooks`) against the `webhooks`
/// section of `lean/openapi.json` (the seeds' webhook examples); panics listing every violation.
/// Returns how many bodies were validated.
#[allow(dead_code)] // used by steps.rs, not by the sandbox's official_sdk.rs
pub fn check_webhooks(specs: &Specs, deliveries: &[Value]) -> usize {
    let doc = specs.lean();
    let mut violations = BTreeSet::new();
    let mut checked = 0;
    for d in deliveries.iter().filter(|d| d["provider"] == "lean") {
        let event_type = d["body"]["type"].as_str().unwrap_or_default();
        let pointer = format!(
            "/webhooks/{}/post/requestBody/content/application~1json/schema",
            pointer_escape(event_type)
        );
        if doc.pointer(&pointer).is_none() {
            violations.insert(format!("lean webhook {event_type}: not in the seeds"));
            continue;
        }
        checked += 1;
        for (at, msg, value) in validate(doc, &pointer, &d["body"]) {
            if !allowed("lean", "webhook", &at, &value, &msg) {
                violations.insert(format!("lean webhook {event_type} {at}: {msg}"));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "{} webhook violations (distinct):\n{}",
        violations.len(),
        violations.into_iter().collect::<Vec<_>>().join("\n")
    );
    checked
}

/// The examples `lean/openapi.json` carries (the seeds' own JSON) validate against the schemas
/// derived from them: the document says what the seeds show.
#[allow(dead_code)] // used by steps.rs, not by the sandbox's official_sdk.rs
pub fn check_lean_examples(specs: &Specs) -> usize {
    let doc = specs.lean();
    let mut checked = 0;
    for (name, schema) in doc["components"]["schemas"]
        .as_object()
        .into_iter()
        .flatten()
    {
        for example in schema["examples"].as_array().into_iter().flatten() {
            let errors = validate(doc, &format!("/components/schemas/{name}"), example);
            assert!(errors.is_empty(), "seed example of {name}: {errors:?}");
            checked += 1;
        }
    }
    checked
}
