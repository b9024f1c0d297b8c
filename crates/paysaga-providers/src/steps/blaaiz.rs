//! Blaaiz step kinds: KYC then payout (`workflows/blaaiz_kyc_payout.toml`).
//!
//! create (or find) customer -> upload documents -> attach them (starts the review) -> wait for
//! `VERIFIED` -> payout -> wait for the payout's final status. Documents are stored in the
//! engine (`paysaga documents put`) and named by id in the saga input; the worker reads them
//! from the engine's database; only ids, sizes and SHA-256 hashes are kept in outputs.

use std::sync::Arc;

use async_trait::async_trait;
use paysaga_core::{DocumentId, StepContext, StepKind, StepOutcome, WaitSpec, Wake};
use serde_json::{json, Value};

use super::common::{outcome_for, params, reference, retry_unknown_effect, Fields, Mode};
use crate::blaaiz::{
    AttachFiles, BlaaizClient, CreateCustomer, CreatePayout, CustomerType, FileCategory,
    PayoutAmount, PayoutMethod, PresignedUrlRequest, Transaction, VerificationStatus,
};

const PROVIDER: &str = "blaaiz";

/// The Blaaiz step kinds, sharing `client`.
pub fn kinds(client: &BlaaizClient) -> Vec<Arc<dyn StepKind>> {
    vec![
        Arc::new(CreateCustomerStep(client.clone())),
        Arc::new(UploadDocuments(client.clone())),
        Arc::new(AttachFilesStep(client.clone())),
        Arc::new(AwaitVerification(client.clone())),
        Arc::new(PayoutStep(client.clone())),
        Arc::new(AwaitPayout(client.clone())),
    ]
}

const CATEGORIES: [&str; 4] = [
    "identity",
    "identity_back",
    "proof_of_address",
    "liveness_check",
];

// ---------------------------------------------------------------------------------------------

/// `blaaiz.create_customer`: the customer with this email, created if Blaaiz has none.
///
/// Params: `customer` `{type: individual|business, email, country, id_type, id_number,
/// first_name + last_name (individual) or business_name (business), phone?, dob?, street?,
/// city?, state?, zip_code?, tin?, id_issue_date?, id_expiry_date?}`. Every run first looks
/// the email up, so a repeat never creates a second customer. Output: `{customer_id, email,
/// verification_status, existing}`. Not compensable: Blaaiz has no call to delete a customer.
#[derive(Debug, Clone)]
pub struct CreateCustomerStep(pub BlaaizClient);

fn customer_params(f: &Fields<'_>) -> Result<CreateCustomer, String> {
    let c = f.object("customer")?;
    let customer_type = c.one_of("type", &["individual", "business"])?;
    let customer_type = if customer_type == "business" {
        CustomerType::Business
    } else {
        CustomerType::Individual
    };
    let (first_name, last_name, business_name) = match customer_type {
        CustomerType::Business => (
            c.opt_string("first_name")?,
            c.opt_string("last_name")?,
            Some(c.string("business_name")?),
        ),
        _ => (
            Some(c.string("first_name")?),
            Some(c.string("last_name")?),
            c.opt_string("business_name")?,
        ),
    };
    Ok(CreateCustomer {
        customer_type,
        email: c.email("email")?,
        country: c.string("country")?,
        id_type: c.string("id_type")?,
        id_number: c.string("id_number")?,
        first_name,
        last_name,
        business_name,
        phone: c.opt_string("phone")?,
        tin: c.opt_string("tin")?,
        dob: c.opt_string("dob")?,
        street: c.opt_string("street")?,
        city: c.opt_string("city")?,
        state: c.opt_string("state")?,
        zip_code: c.opt_string("zip_code")?,
        id_expiry_date: c.opt_string("id_expiry_date")?,
        id_issue_date: c.opt_string("id_issue_date")?,
    })
}

fn customer_output(c: &crate::blaaiz::Customer, existing: bool) -> Value {
    json!({
        "customer_id": c.id,
        "email": c.email,
        "verification_status": c.verification().to_string(),
        "existing": existing,
    })
}

#[async_trait]
impl StepKind for CreateCustomerStep {
    fn name(&self) -> &'static str {
        "blaaiz.create_customer"
    }

    fn schema(&self) -> Option<paysaga_core::KindSchema> {
        Some(paysaga_core::KindSchema {
            description: "Creates (or finds, by email) a Blaaiz customer for KYC.",
            params: vec![
                paysaga_core::FieldSpec::required(
                    "customer",
                    paysaga_core::FieldType::Object,
                    "the customer",
                ),
                paysaga_core::FieldSpec::required(
                    "customer.type",
                    paysaga_core::FieldType::String,
                    "individual or business",
                ),
                paysaga_core::FieldSpec::optional(
                    "customer.first_name",
                    paysaga_core::FieldType::String,
                    "required for an individual",
                ),
                paysaga_core::FieldSpec::optional(
                    "customer.last_name",
                    paysaga_core::FieldType::String,
                    "required for an individual",
                ),
                paysaga_core::FieldSpec::optional(
                    "customer.business_name",
                    paysaga_core::FieldType::String,
                    "required for a business",
                ),
                paysaga_core::FieldSpec::required(
                    "customer.email",
                    paysaga_core::FieldType::String,
                    "email address",
                ),
                paysaga_core::FieldSpec::required(
                    "customer.country",
                    paysaga_core::FieldType::String,
                    "country code",
                ),
                paysaga_core::FieldSpec::required(
                    "customer.id_type",
                    paysaga_core::FieldType::String,
                    "identity document type",
                ),
                paysaga_core::FieldSpec::required(
                    "customer.id_number",
                    paysaga_core::FieldType::String,
                    "identity document number",
                ),
                paysaga_core::FieldSpec::optional(
                    "customer.phone",
                    paysaga_core::FieldType::String,
                    "phone number",
                ),
                paysaga_core::FieldSpec::optional(
                    "customer.tin",
                    paysaga_core::FieldType::String,
                    "tax identification number",
                ),
                paysaga_core::FieldSpec::optional(
                    "customer.dob",
                    paysaga_core::FieldType::String,
                    "date of birth",
                ),
                paysaga_core::FieldSpec::optional(
                    "customer.street",
                    paysaga_core::FieldType::String,
                    "street",
                ),
                paysaga_core::FieldSpec::optional(
                    "customer.city",
                    paysaga_core::FieldType::String,
                    "city",
                ),
                paysaga_core::FieldSpec::optional(
                    "customer.state",
                    paysaga_core::FieldType::String,
                    "state",
                ),
                paysaga_core::FieldSpec::optional(
                    "customer.zip_code",
                    paysaga_core::FieldType::String,
                    "postal code",
                ),
                paysaga_core::FieldSpec::optional(
                    "customer.id_expiry_date",
                    paysaga_core::FieldType::String,
                    "identity document expiry date",
                ),
                paysaga_core::FieldSpec::optional(
                    "customer.id_issue_date",
                    paysaga_core::FieldType::String,
                    "identity document issue date",
                ),
            ],
            outputs: vec![
                paysaga_core::FieldSpec::required(
                    "customer_id",
                    paysaga_core::FieldType::String,
                    "Blaaiz customer id",
                ),
                paysaga_core::FieldSpec::required(
                    "email",
                    paysaga_core::FieldType::String,
                    "customer email",
                ),
                paysaga_core::FieldSpec::required(
                    "verification_status",
                    paysaga_core::FieldType::String,
                    "KYC status",
                ),
                paysaga_core::FieldSpec::required(
                    "existing",
                    paysaga_core::FieldType::Boolean,
                    "found instead of created",
                ),
            ],
        })
    }

    fn validate(&self, params: &Value) -> Result<(), String> {
        Fields::new(params, Mode::Validate).and_then(|f| customer_params(&f).map(|_| ()))
    }

    async fn run(&self, _ctx: &StepContext, params: Value) -> StepOutcome {
        let request = params!(&params, Mode::Run, customer_params);
        match self.0.find_customer_by_email(&request.email).await {
            Ok(Some(c)) => return StepOutcome::Done(customer_output(&c, true)),
            Ok(None) => {}
            Err(e) => return outcome_for("look up customer by email", &e),
        }
        match self.0.create_customer(&request).await {
            Ok(c) => StepOutcome::Done(customer_output(&c, false)),
            Err(e) if e.may_have_taken_effect() => {
                match self.0.find_customer_by_email(&request.email).await {
                    Ok(Some(c)) => StepOutcome::Done(customer_output(&c, true)),
                    _ => retry_unknown_effect("create customer", &e),
                }
            }
            Err(e) => outcome_for("create customer", &e),
        }
    }

    fn references(&self, output: &Value) -> Vec<(String, String)> {
        paysaga_core::output_references(output, &["customer_id", "email"])
    }
}

// ---------------------------------------------------------------------------------------------

/// `blaaiz.upload_documents`: uploads the KYC documents through pre-signed URLs.
///
/// Params: `customer_id`, `documents`: a list of `{file_category, document_id}` with
/// `file_category` one of `identity` (required), `identity_back`, `proof_of_address`,
/// `liveness_check`, each at most once, and `document_id` a document stored in the engine
/// (`doc_...`, from `paysaga documents put FILE` or `Engine::put_document`): `start` refuses
/// an input naming a document that does not exist. File paths are not accepted: the worker
/// reads nothing from its own disk. Each run reads each document from the engine's store
/// (its SHA-256 checked), asks for a pre-signed URL with the document's content type and
/// `PUT`s the bytes with the returned headers. Output: `{customer_id, files: [{file_category,
/// document_id, file_id, file_name, content_type, size, sha256}]}` (never the bytes). A
/// repeated run uploads again and gets new file ids (the earlier uploads stay unattached at
/// Blaaiz; nothing is paid or verified twice).
#[derive(Debug, Clone)]
pub struct UploadDocuments(pub BlaaizClient);

#[derive(Debug)]
struct DocumentParam {
    category: &'static str,
    id: DocumentId,
}

fn documents_params(f: &Fields<'_>) -> Result<(String, Vec<DocumentParam>), String> {
    let customer_id = f.id("customer_id")?;
    let docs = match f.raw("documents") {
        Some(Value::Array(items)) if !items.is_empty() => items,
        Some(Value::Array(_)) => return Err("documents must list at least one document".into()),
        Some(other) => {
            return Err(format!(
                "documents must be a list of {{file_category, document_id}} (got {})",
                super::common::kind(other)
            ))
        }
        None => return Err("documents is required".into()),
    };
    let mut out = Vec::with_capacity(docs.len());
    for (i, item) in docs.iter().enumerate() {
        let at = format!("documents[{i}]");
        if !item.is_object() {
            return Err(format!(
                "{at} must be an object {{file_category, document_id}}"
            ));
        }
        let wrapper = json!({ at.clone(): item });
        let outer = Fields::new(&wrapper, Mode::Run)?;
        let d = outer.object(&at)?;
        let category = d.one_of("file_category", &CATEGORIES)?;
        if d.raw("path").is_some() {
            return Err(format!(
                "{at}.path: file paths are not accepted (the worker has no access to the \
                 starter's disk); store the file with `paysaga documents put FILE` and give \
                 {at}.document_id"
            ));
        }
        let id: DocumentId = d
            .string("document_id")?
            .parse()
            .map_err(|e| format!("{at}.document_id: {e}"))?;
        if out.iter().any(|o: &DocumentParam| o.category == category) {
            return Err(format!(
                "{at}.file_category {category:?} is given twice (one file per category)"
            ));
        }
        out.push(DocumentParam { category, id });
    }
    if !out.iter().any(|d| d.category == "identity") {
        return Err(
            "documents must include a file_category \"identity\" document (it starts the review)"
                .into(),
        );
    }
    Ok((customer_id, out))
}

/// The file extension sent with an upload, from the document's content type.
fn extension(content_type: &str) -> &'static str {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "image/png" => "png",
        "image/jpeg" | "image/jpg" => "jpg",
        "image/gif" => "gif",
        "image/webp" => "webp",
        "image/heic" => "heic",
        "application/pdf" => "pdf",
        "text/plain" => "txt",
        _ => "bin",
    }
}

#[async_trait]
impl StepKind for UploadDocuments {
    fn name(&self) -> &'static str {
        "blaaiz.upload_documents"
    }

    fn schema(&self) -> Option<paysaga_core::KindSchema> {
        Some(paysaga_core::KindSchema {
            description: "Uploads KYC documents stored with `paysaga documents put` to Blaaiz.",
            params: vec![
                paysaga_core::FieldSpec::required(
                    "customer_id",
                    paysaga_core::FieldType::String,
                    "Blaaiz customer id",
                ),
                paysaga_core::FieldSpec::required(
                    "documents",
                    paysaga_core::FieldType::Array,
                    "{file_category, document_id} items; an identity document is required",
                ),
                paysaga_core::FieldSpec::required(
                    "documents[].file_category",
                    paysaga_core::FieldType::String,
                    "identity, identity_back, proof_of_address or liveness_check",
                ),
                paysaga_core::FieldSpec::required(
                    "documents[].document_id",
                    paysaga_core::FieldType::String,
                    "id printed by `paysaga documents put`",
                ),
            ],
            outputs: vec![
                paysaga_core::FieldSpec::required(
                    "customer_id",
                    paysaga_core::FieldType::String,
                    "Blaaiz customer id",
                ),
                paysaga_core::FieldSpec::required(
                    "files",
                    paysaga_core::FieldType::Array,
                    "uploaded files",
                ),
                paysaga_core::FieldSpec::required(
                    "files[].file_id",
                    paysaga_core::FieldType::String,
                    "Blaaiz file id",
                ),
                paysaga_core::FieldSpec::required(
                    "files[].file_category",
                    paysaga_core::FieldType::String,
                    "category",
                ),
            ],
        })
    }

    fn validate(&self, params: &Value) -> Result<(), String> {
        Fields::new(params, Mode::Validate).and_then(|f| documents_params(&f).map(|_| ()))
    }

    fn documents(&self, params: &Value) -> Vec<DocumentId> {
        Fields::new(params, Mode::Validate)
            .and_then(|f| documents_params(&f))
            .map(|(_, docs)| docs.into_iter().map(|d| d.id).collect())
            .unwrap_or_default()
    }

    async fn run(&self, ctx: &StepContext, params: Value) -> StepOutcome {
        let (customer_id, documents) = params!(&params, Mode::Run, documents_params);
        let mut files = Vec::with_capacity(documents.len());
        for param in documents {
            let doc = match ctx.documents.read(ctx, param.id).await {
                Ok(doc) => doc,
                Err(e) => {
                    let error = format!("read the {} document: {e}", param.category);
                    return if e.is_transient() {
                        StepOutcome::retry(error)
                    } else {
                        StepOutcome::fail(error)
                    };
                }
            };
            let size = doc.content.len();
            // No personal data in the name: the document id and an extension.
            let file_name = format!("{}.{}", doc.id, extension(&doc.content_type));
            let request = PresignedUrlRequest {
                customer_id: customer_id.clone(),
                file_category: param.category.parse().unwrap_or(FileCategory::Identity),
                file_name: file_name.clone(),
                file_type: doc.content_type.clone(),
            };
            let upload = match self.0.get_presigned_url(&request).await {
                Ok(u) => u,
                Err(e) => {
                    return outcome_for(&format!("get upload URL for {}", param.category), &e)
                }
            };
            if let Err(e) = self.0.upload_file(&upload, doc.content).await {
                return outcome_for(&format!("upload the {} document", param.category), &e);
            }
            files.push(json!({
                "file_category": param.category,
                "document_id": doc.id,
                "file_id": upload.file_id,
                "file_name": file_name,
                "content_type": doc.content_type,
                "size": size,
                "sha256": doc.sha256,
            }));
        }
        StepOutcome::Done(json!({"customer_id": customer_id, "files": files}))
    }

    fn references(&self, output: &Value) -> Vec<(String, String)> {
        let mut refs = paysaga_core::output_references(output, &["customer_id"]);
        for file in output["files"].as_array().into_iter().flatten() {
            refs.extend(paysaga_core::output_references(file, &["file_id"]));
        }
        refs
    }
}

// ---------------------------------------------------------------------------------------------

/// `blaaiz.attach_files`: attaches the uploaded files to the customer, which starts the KYC
/// review.
///
/// Params: `customer_id`, `files` (the output list of `blaaiz.upload_documents`). A customer
/// already `PROCESSING` or `VERIFIED` is left as is (a repeat does not restart the review).
/// Output: `{customer_id, attached: {id_file, ...}, verification_status}`.
#[derive(Debug, Clone)]
pub struct AttachFilesStep(pub BlaaizClient);

fn attach_params(f: &Fields<'_>) -> Result<(String, AttachFiles), String> {
    let customer_id = f.id("customer_id")?;
    let mut attach = AttachFiles::default();
    match f.raw("files") {
        None if f.mode() == Mode::Validate => return Ok((customer_id, attach)),
        None => return Err("files is required".into()),
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let id = item
                    .get("file_id")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| format!("files[{i}].file_id is required"))?
                    .to_owned();
                let category = item
                    .get("file_category")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let slot = match category {
                    "identity" => &mut attach.id_file,
                    "identity_back" => &mut attach.id_file_back,
                    "proof_of_address" => &mut attach.proof_of_address_file,
                    "liveness_check" => &mut attach.liveness_check_file,
                    other => {
                        return Err(format!(
                            "files[{i}].file_category must be one of {} (got {other:?})",
                            CATEGORIES.join(", ")
                        ))
                    }
                };
                *slot = Some(id);
            }
        }
        Some(other) => {
            return Err(format!(
                "files must be a list (got {})",
                super::common::kind(other)
            ))
        }
    }
    if attach.id_file.is_none() {
        return Err("files must include an identity file (id_file)".into());
    }
    Ok((customer_id, attach))
}

#[async_trait]
impl StepKind for AttachFilesStep {
    fn name(&self) -> &'static str {
        "blaaiz.attach_files"
    }

    fn schema(&self) -> Option<paysaga_core::KindSchema> {
        Some(paysaga_core::KindSchema {
            description: "Attaches uploaded files to the customer's KYC.",
            params: vec![
                paysaga_core::FieldSpec::required(
                    "customer_id",
                    paysaga_core::FieldType::String,
                    "Blaaiz customer id",
                ),
                paysaga_core::FieldSpec::required(
                    "files",
                    paysaga_core::FieldType::Array,
                    "{file_id, file_category} items (the upload step's output)",
                ),
            ],
            outputs: vec![
                paysaga_core::FieldSpec::required(
                    "customer_id",
                    paysaga_core::FieldType::String,
                    "Blaaiz customer id",
                ),
                paysaga_core::FieldSpec::required(
                    "attached",
                    paysaga_core::FieldType::Any,
                    "what was attached",
                ),
                paysaga_core::FieldSpec::required(
                    "verification_status",
                    paysaga_core::FieldType::String,
                    "KYC status",
                ),
            ],
        })
    }

    fn validate(&self, params: &Value) -> Result<(), String> {
        Fields::new(params, Mode::Validate).and_then(|f| attach_params(&f).map(|_| ()))
    }

    async fn run(&self, _ctx: &StepContext, params: Value) -> StepOutcome {
        let (customer_id, attach) = params!(&params, Mode::Run, attach_params);
        let customer = match self.0.get_customer(&customer_id).await {
            Ok(c) => c,
            Err(e) => return outcome_for("get customer", &e),
        };
        let status = customer.verification();
        if matches!(
            status,
            VerificationStatus::Processing | VerificationStatus::Verified
        ) {
            return StepOutcome::Done(json!({
                "customer_id": customer_id,
                "attached": Value::Null,
                "verification_status": status.to_string(),
            }));
        }
        match self.0.attach_files(&customer_id, &attach).await {
            Ok(_) => StepOutcome::Done(json!({
                "customer_id": customer_id,
                "attached": attach,
                "verification_status": VerificationStatus::Processing.to_string(),
            })),
            Err(e) => outcome_for("attach files", &e),
        }
    }

    fn references(&self, output: &Value) -> Vec<(String, String)> {
        paysaga_core::output_references(output, &["customer_id"])
    }
}

// ---------------------------------------------------------------------------------------------

/// `blaaiz.await_verification`: waits for the KYC review.
///
/// Params: `customer_id`. `VERIFIED` -> done; `REJECTED` -> fails with the reviewer's comment;
/// otherwise waits for `customer.status_changed` with key `customer:{customer_id}`, re-reading
/// the customer on every run. Output: `{customer_id, verification_status}`.
#[derive(Debug, Clone)]
pub struct AwaitVerification(pub BlaaizClient);

fn customer_id_param(f: &Fields<'_>) -> Result<String, String> {
    f.id("customer_id")
}

#[async_trait]
impl StepKind for AwaitVerification {
    fn name(&self) -> &'static str {
        "blaaiz.await_verification"
    }

    fn schema(&self) -> Option<paysaga_core::KindSchema> {
        Some(paysaga_core::KindSchema {
            description: "Waits until the customer's KYC is verified.",
            params: vec![paysaga_core::FieldSpec::required(
                "customer_id",
                paysaga_core::FieldType::String,
                "Blaaiz customer id",
            )],
            outputs: vec![
                paysaga_core::FieldSpec::required(
                    "customer_id",
                    paysaga_core::FieldType::String,
                    "Blaaiz customer id",
                ),
                paysaga_core::FieldSpec::required(
                    "verification_status",
                    paysaga_core::FieldType::String,
                    "VERIFIED",
                ),
            ],
        })
    }

    fn validate(&self, params: &Value) -> Result<(), String> {
        Fields::new(params, Mode::Validate).and_then(|f| customer_id_param(&f).map(|_| ()))
    }

    async fn run(&self, ctx: &StepContext, params: Value) -> StepOutcome {
        let customer_id = params!(&params, Mode::Run, customer_id_param);
        let customer = match self.0.get_customer(&customer_id).await {
            Ok(c) => c,
            Err(e) => return outcome_for("get customer", &e),
        };
        match customer.verification() {
            VerificationStatus::Verified => StepOutcome::Done(json!({
                "customer_id": customer_id,
                "verification_status": "VERIFIED",
            })),
            VerificationStatus::Rejected => {
                // The API's comment; the event's only if the API gave none.
                let comment = customer.comment.clone().or_else(|| match &ctx.wake {
                    Wake::Event(ev) => ev
                        .payload
                        .get("comment")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                    _ => None,
                });
                StepOutcome::fail(format!(
                    "Blaaiz rejected the KYC of customer {customer_id}: {}",
                    comment.as_deref().unwrap_or("no comment given")
                ))
            }
            other => StepOutcome::Wait(
                WaitSpec::new(
                    PROVIDER,
                    "customer.status_changed",
                    format!("customer:{customer_id}"),
                )
                .provider_status(format!("customer {customer_id} verification is {other}")),
            ),
        }
    }

    fn references(&self, output: &Value) -> Vec<(String, String)> {
        paysaga_core::output_references(output, &["customer_id"])
    }
}

// ---------------------------------------------------------------------------------------------

/// `blaaiz.payout`: sends the payout, at most once per saga. Irreversible.
///
/// Params: `customer_id`, `payout` `{wallet_id, method (bank_transfer|interac|wire|ach|crypto),
/// amount (minor units of currency), currency, to_currency? (default currency),
/// amount_side? ("from" (default): amount is what leaves the wallet; "to": what arrives),
/// bank fields as Blaaiz names them: bank_id?, account_number?, account_name?, account_type?,
/// bank_name?, routing_number?, swift_code?, sort_code?, iban?, bic_code?, recipient_type?,
/// phone_number?, email?, interac_first_name?, interac_last_name?, country?, state?, street?,
/// city?, zip_code?}`. The `note` carries `ps-{idempotency key}`; every run first looks for
/// the customer's payout with that reference, then, Blaaiz having no idempotency key, sends
/// only under [`StepContext::begin_effect`] (a fenced mark; no other attempt sends within the
/// effect window, so a look-up never races an earlier attempt's request still in flight). Output: `{transaction_id, status, reference,
/// amount, currency, existing}`; the status may already be final.
#[derive(Debug, Clone)]
pub struct PayoutStep(pub BlaaizClient);

const METHODS: [&str; 5] = ["bank_transfer", "interac", "wire", "ach", "crypto"];
const BANK_FIELDS: [&str; 19] = [
    "bank_id",
    "account_number",
    "account_name",
    "account_type",
    "bank_name",
    "routing_number",
    "swift_code",
    "sort_code",
    "iban",
    "bic_code",
    "recipient_type",
    "phone_number",
    "email",
    "interac_first_name",
    "interac_last_name",
    "country",
    "state",
    "street",
    "city",
];

struct PayoutParams {
    customer_id: String,
    amount: i64,
    currency: String,
    request: CreatePayout,
}

fn payout_params(f: &Fields<'_>) -> Result<PayoutParams, String> {
    let customer_id = f.id("customer_id")?;
    let p = f.object("payout")?;
    let wallet_id = p.id("wallet_id")?;
    let method: PayoutMethod = p
        .one_of("method", &METHODS)?
        .parse()
        .unwrap_or(PayoutMethod::BankTransfer);
    let amount = p.amount("amount")?;
    let currency = p.currency("currency")?;
    let to_currency = match p.raw("to_currency") {
        Some(_) => p.currency("to_currency")?,
        None => currency.clone(),
    };
    let side = match p.raw("amount_side") {
        Some(_) => p.one_of("amount_side", &["from", "to"])?,
        None => "from",
    };
    let amount_arg = if side == "to" {
        PayoutAmount::To(amount)
    } else {
        PayoutAmount::From(amount)
    };
    let mut request = CreatePayout::new(
        &wallet_id,
        &customer_id,
        method,
        amount_arg,
        &currency,
        &to_currency,
        "",
    )
    .map_err(|e| format!("payout: {e}"))?;
    for field in BANK_FIELDS.iter().chain(["zip_code"].iter()) {
        let value = p.opt_string(field)?;
        let slot = match *field {
            "bank_id" => &mut request.bank_id,
            "account_number" => &mut request.account_number,
            "account_name" => &mut request.account_name,
            "account_type" => &mut request.account_type,
            "bank_name" => &mut request.bank_name,
            "routing_number" => &mut request.routing_number,
            "swift_code" => &mut request.swift_code,
            "sort_code" => &mut request.sort_code,
            "iban" => &mut request.iban,
            "bic_code" => &mut request.bic_code,
            "recipient_type" => &mut request.recipient_type,
            "phone_number" => &mut request.phone_number,
            "email" => &mut request.email,
            "interac_first_name" => &mut request.interac_first_name,
            "interac_last_name" => &mut request.interac_last_name,
            "country" => &mut request.country,
            "state" => &mut request.state,
            "street" => &mut request.street,
            "city" => &mut request.city,
            _ => &mut request.zip_code,
        };
        *slot = value;
    }
    if let Some(email) = &request.email {
        if !super::common::is_email(email) {
            return Err(format!(
                "{} must be an email address (got {email:?})",
                p.path("email")
            ));
        }
    }
    let sent_currency = if side == "to" { to_currency } else { currency };
    Ok(PayoutParams {
        customer_id,
        amount,
        currency: sent_currency,
        request,
    })
}

fn payout_output(t: &Transaction, reference: &str, existing: bool) -> Value {
    json!({
        "transaction_id": t.id,
        "status": t.status.to_string(),
        "reference": reference,
        "provider_reference": t.reference,
        "amount": t.amount_minor().ok(),
        "currency": t.currency,
        "existing": existing,
    })
}

#[async_trait]
impl StepKind for PayoutStep {
    fn name(&self) -> &'static str {
        "blaaiz.payout"
    }

    fn schema(&self) -> Option<paysaga_core::KindSchema> {
        Some(paysaga_core::KindSchema {
            description: "Sends a payout from a Blaaiz wallet (irreversible).",
            params: vec![
                paysaga_core::FieldSpec::required(
                    "customer_id",
                    paysaga_core::FieldType::String,
                    "Blaaiz customer id",
                ),
                paysaga_core::FieldSpec::required(
                    "payout",
                    paysaga_core::FieldType::Object,
                    "the payout",
                ),
                paysaga_core::FieldSpec::required(
                    "payout.wallet_id",
                    paysaga_core::FieldType::String,
                    "wallet paying out",
                ),
                paysaga_core::FieldSpec::required(
                    "payout.method",
                    paysaga_core::FieldType::String,
                    "bank_transfer, interac, wire, ach or crypto",
                ),
                paysaga_core::FieldSpec::required(
                    "payout.amount",
                    paysaga_core::FieldType::Integer,
                    "amount in minor units",
                ),
                paysaga_core::FieldSpec::required(
                    "payout.currency",
                    paysaga_core::FieldType::String,
                    "ISO 4217 code of the amount",
                ),
                paysaga_core::FieldSpec::optional(
                    "payout.to_currency",
                    paysaga_core::FieldType::String,
                    "currency received (default: currency)",
                ),
                paysaga_core::FieldSpec::optional(
                    "payout.amount_side",
                    paysaga_core::FieldType::String,
                    "from or to: which side the amount is (default from)",
                ),
                paysaga_core::FieldSpec::optional(
                    "payout.bank_id",
                    paysaga_core::FieldType::String,
                    "recipient detail",
                ),
                paysaga_core::FieldSpec::optional(
                    "payout.account_number",
                    paysaga_core::FieldType::String,
                    "recipient detail",
                ),
                paysaga_core::FieldSpec::optional(
                    "payout.account_name",
                    paysaga_core::FieldType::String,
                    "recipient detail",
                ),
                paysaga_core::FieldSpec::optional(
                    "payout.account_type",
                    paysaga_core::FieldType::String,
                    "recipient detail",
                ),
                paysaga_core::FieldSpec::optional(
                    "payout.bank_name",
                    paysaga_core::FieldType::String,
                    "recipient detail",
                ),
                paysaga_core::FieldSpec::optional(
                    "payout.routing_number",
                    paysaga_core::FieldType::String,
                    "recipient detail",
                ),
                paysaga_core::FieldSpec::optional(
                    "payout.swift_code",
                    paysaga_core::FieldType::String,
                    "recipient detail",
                ),
                paysaga_core::FieldSpec::optional(
                    "payout.sort_code",
                    paysaga_core::FieldType::String,
                    "recipient detail",
                ),
                paysaga_core::FieldSpec::optional(
                    "payout.iban",
                    paysaga_core::FieldType::String,
                    "recipient detail",
                ),
                paysaga_core::FieldSpec::optional(
                    "payout.bic_code",
                    paysaga_core::FieldType::String,
                    "recipient detail",
                ),
                paysaga_core::FieldSpec::optional(
                    "payout.recipient_type",
                    paysaga_core::FieldType::String,
                    "recipient detail",
                ),
                paysaga_core::FieldSpec::optional(
                    "payout.phone_number",
                    paysaga_core::FieldType::String,
                    "recipient detail",
                ),
                paysaga_core::FieldSpec::optional(
                    "payout.email",
                    paysaga_core::FieldType::String,
                    "recipient detail",
                ),
                paysaga_core::FieldSpec::optional(
                    "payout.interac_first_name",
                    paysaga_core::FieldType::String,
                    "recipient detail",
                ),
                paysaga_core::FieldSpec::optional(
                    "payout.interac_last_name",
                    paysaga_core::FieldType::String,
                    "recipient detail",
                ),
                paysaga_core::FieldSpec::optional(
                    "payout.country",
                    paysaga_core::FieldType::String,
                    "recipient detail",
                ),
                paysaga_core::FieldSpec::optional(
                    "payout.state",
                    paysaga_core::FieldType::String,
                    "recipient detail",
                ),
                paysaga_core::FieldSpec::optional(
                    "payout.street",
                    paysaga_core::FieldType::String,
                    "recipient detail",
                ),
                paysaga_core::FieldSpec::optional(
                    "payout.city",
                    paysaga_core::FieldType::String,
                    "recipient detail",
                ),
                paysaga_core::FieldSpec::optional(
                    "payout.zip_code",
                    paysaga_core::FieldType::String,
                    "recipient detail",
                ),
            ],
            outputs: vec![
                paysaga_core::FieldSpec::required(
                    "transaction_id",
                    paysaga_core::FieldType::String,
                    "Blaaiz transaction id",
                ),
                paysaga_core::FieldSpec::required(
                    "status",
                    paysaga_core::FieldType::String,
                    "transaction status",
                ),
                paysaga_core::FieldSpec::required(
                    "reference",
                    paysaga_core::FieldType::String,
                    "our reference",
                ),
                paysaga_core::FieldSpec::optional(
                    "provider_reference",
                    paysaga_core::FieldType::String,
                    "Blaaiz reference",
                ),
                paysaga_core::FieldSpec::optional(
                    "amount",
                    paysaga_core::FieldType::Integer,
                    "amount in minor units",
                ),
                paysaga_core::FieldSpec::required(
                    "currency",
                    paysaga_core::FieldType::String,
                    "currency",
                ),
                paysaga_core::FieldSpec::required(
                    "existing",
                    paysaga_core::FieldType::Boolean,
                    "found instead of created",
                ),
            ],
        })
    }

    fn validate(&self, params: &Value) -> Result<(), String> {
        Fields::new(params, Mode::Validate).and_then(|f| payout_params(&f).map(|_| ()))
    }

    fn irreversible(&self) -> bool {
        true
    }

    async fn run(&self, ctx: &StepContext, params: Value) -> StepOutcome {
        let p = params!(&params, Mode::Run, payout_params);
        let reference = reference(ctx);
        let mut request = p.request;
        request.note = Some(reference.clone());
        let found = |t: Transaction| {
            let amount = t.amount_minor().ok();
            // A payout fixed on the "to" side may show the sent amount: only compare when the
            // currencies agree.
            if t.currency.eq_ignore_ascii_case(&p.currency) && amount != Some(p.amount) {
                StepOutcome::fail(format!(
                    "payout {} carries this step's reference but its amount is {} {} (expected {} \
                     minor units)",
                    t.id,
                    t.amount.as_str(),
                    t.currency,
                    p.amount
                ))
            } else {
                StepOutcome::Done(payout_output(&t, &reference, true))
            }
        };
        match self
            .0
            .find_payout_by_reference(&p.customer_id, &reference)
            .await
        {
            Ok(Some(t)) => return found(t),
            Ok(None) => {}
            Err(e) => return outcome_for("look up payout by reference", &e),
        }
        // Blaaiz has no idempotency key: mark the attempt durably before sending, so that a
        // worker taking the saga over waits until this request has surely landed or failed
        // before it looks again (and would create again).
        let permit = match ctx.begin_effect().await {
            Ok(permit) => permit,
            Err(outcome) => return outcome,
        };
        match self.0.create_payout(&request, permit.send_by()).await {
            Ok(r) => StepOutcome::Done(payout_output(&r.transaction, &reference, false)),
            Err(e) if e.may_have_taken_effect() => match self
                .0
                .find_payout_by_reference(&p.customer_id, &reference)
                .await
            {
                Ok(Some(t)) => found(t),
                _ => retry_unknown_effect("create payout", &e),
            },
            Err(e) => {
                // Refused before Blaaiz acted (4xx, 429, no connection, not sent): the next
                // attempt need not wait for this request to land.
                ctx.effect_not_sent().await;
                outcome_for("create payout", &e)
            }
        }
    }

    fn references(&self, output: &Value) -> Vec<(String, String)> {
        paysaga_core::output_references(
            output,
            &["transaction_id", "reference", "provider_reference"],
        )
    }
}

// ---------------------------------------------------------------------------------------------

/// `blaaiz.await_payout`: waits for the payout's final status.
///
/// Params: `transaction_id`. `SUCCESSFUL`/`COMPLETED` -> done; `FAILED`/`CANCELLED`/`REVERSED`
/// -> fails; otherwise waits for `payout.status_changed` with key
/// `transaction:{transaction_id}`, re-reading the transaction on every run. Output:
/// `{transaction_id, status, amount, currency}`.
#[derive(Debug, Clone)]
pub struct AwaitPayout(pub BlaaizClient);

fn transaction_param(f: &Fields<'_>) -> Result<String, String> {
    f.id("transaction_id")
}

#[async_trait]
impl StepKind for AwaitPayout {
    fn name(&self) -> &'static str {
        "blaaiz.await_payout"
    }

    fn schema(&self) -> Option<paysaga_core::KindSchema> {
        Some(paysaga_core::KindSchema {
            description: "Waits until a payout is successful (or failed).",
            params: vec![paysaga_core::FieldSpec::required(
                "transaction_id",
                paysaga_core::FieldType::String,
                "Blaaiz transaction id",
            )],
            outputs: vec![
                paysaga_core::FieldSpec::required(
                    "transaction_id",
                    paysaga_core::FieldType::String,
                    "Blaaiz transaction id",
                ),
                paysaga_core::FieldSpec::required(
                    "status",
                    paysaga_core::FieldType::String,
                    "transaction status",
                ),
                paysaga_core::FieldSpec::optional(
                    "amount",
                    paysaga_core::FieldType::Integer,
                    "amount in minor units",
                ),
                paysaga_core::FieldSpec::required(
                    "currency",
                    paysaga_core::FieldType::String,
                    "currency",
                ),
            ],
        })
    }

    fn validate(&self, params: &Value) -> Result<(), String> {
        Fields::new(params, Mode::Validate).and_then(|f| transaction_param(&f).map(|_| ()))
    }

    async fn run(&self, _ctx: &StepContext, params: Value) -> StepOutcome {
        let transaction_id = params!(&params, Mode::Run, transaction_param);
        let t = match self.0.get_transaction(&transaction_id).await {
            Ok(t) => t,
            Err(e) => return outcome_for("get payout transaction", &e),
        };
        if t.status.is_success() {
            StepOutcome::Done(json!({
                "transaction_id": transaction_id,
                "status": t.status.to_string(),
                "amount": t.amount_minor().ok(),
                "currency": t.currency,
            }))
        } else if t.status.is_failure() {
            StepOutcome::fail(format!(
                "Blaaiz payout {transaction_id} ended {} (the funds were not delivered)",
                t.status
            ))
        } else {
            StepOutcome::Wait(
                WaitSpec::new(
                    PROVIDER,
                    "payout.status_changed",
                    format!("transaction:{transaction_id}"),
                )
                .provider_status(format!("payout {transaction_id} is {}", t.status)),
            )
        }
    }

    fn references(&self, output: &Value) -> Vec<(String, String)> {
        paysaga_core::output_references(output, &["transaction_id"])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_follow_the_content_type() {
        assert_eq!(extension("image/PNG"), "png");
        assert_eq!(extension("application/pdf; charset=binary"), "pdf");
        assert_eq!(extension("application/octet-stream"), "bin");
    }
}
