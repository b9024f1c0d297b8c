//! Blaaiz step kinds: KYC then payout (`workflows/blaaiz_kyc_payout.toml`).
//!
//! create (or find) customer -> upload documents -> attach them (starts the review) -> wait for
//! `VERIFIED` -> payout -> wait for the payout's final status. Documents are stored in the
//! engine (`paysaga documents put`) and named by id in the saga input; the worker reads them
//! from the engine's database; only ids, sizes and SHA-256 hashes are kept in outputs.
//!
//! Each kind is a typed [`Step`]: its parameters and output are the structs below, whose
//! value types ([`super::parameters`]) check their rules when deserialized, at start for the
//! values the input gives and at every run; rules across fields (an individual's names, one
//! identity document) are checked by [`Step::validate`] at start and again when the step runs.

use std::sync::Arc;

use async_trait::async_trait;
use paysaga_core::{DocumentId, Step, StepContext, StepKind, StepOutcome, Typed, WaitSpec, Wake};
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::common::{outcome_for, reference, retry_unknown_effect};
use super::parameters::{one_of, Amount, Currency, Email, Id, Text};
use crate::blaaiz::{
    AttachFiles, BlaaizClient, CreateCustomer, CreatePayout, CustomerType, FileCategory,
    PayoutAmount, PayoutMethod, PresignedUrlRequest, Transaction, VerificationStatus,
};

const PROVIDER: &str = "blaaiz";

/// The Blaaiz step kinds, sharing `client`.
pub fn kinds(client: &BlaaizClient) -> Vec<Arc<dyn StepKind>> {
    vec![
        Arc::new(Typed(CreateCustomerStep(client.clone()))),
        Arc::new(Typed(UploadDocuments(client.clone()))),
        Arc::new(Typed(AttachFilesStep(client.clone()))),
        Arc::new(Typed(AwaitVerification(client.clone()))),
        Arc::new(Typed(PayoutStep(client.clone()))),
        Arc::new(Typed(AwaitPayout(client.clone()))),
    ]
}

/// A run's parameters break a rule across fields: the step fails (validation at start catches
/// what the input gives).
fn invalid(e: String) -> StepOutcome {
    StepOutcome::fail(format!("invalid params: {e}"))
}

/// `field` of `params` with the object fields that are `null` (decided by an earlier step)
/// left out, deserialized; `None` when absent, `null`, or not complete yet (a value decided
/// later is missing): the typed check at start has already reported every other error.
fn given<T: serde::de::DeserializeOwned>(params: &Value, field: &str) -> Option<T> {
    let value = params.get(field).filter(|v| !v.is_null())?;
    serde_json::from_value(without_nulls(value)).ok()
}

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

one_of! {
    /// Whether a Blaaiz customer is a person or a company.
    pub enum CustomerKind {
        /// A person: `first_name` and `last_name` are required.
        Individual => "individual",
        /// A company: `business_name` is required.
        Business => "business",
    }
}

one_of! {
    /// The category of a KYC document at Blaaiz.
    pub enum Category {
        /// Identity document (front); required: attaching it starts the review.
        Identity => "identity",
        /// Identity document (back).
        IdentityBack => "identity_back",
        /// Proof of address.
        ProofOfAddress => "proof_of_address",
        /// Liveness check.
        LivenessCheck => "liveness_check",
    }
}

impl Category {
    fn client(self) -> FileCategory {
        match self {
            Category::Identity => FileCategory::Identity,
            Category::IdentityBack => FileCategory::IdentityBack,
            Category::ProofOfAddress => FileCategory::ProofOfAddress,
            Category::LivenessCheck => FileCategory::LivenessCheck,
        }
    }
}

one_of! {
    /// How a Blaaiz payout is delivered.
    pub enum Method {
        /// Local bank transfer.
        BankTransfer => "bank_transfer",
        /// Interac e-transfer (CAD).
        Interac => "interac",
        /// Wire.
        Wire => "wire",
        /// ACH.
        Ach => "ach",
        /// Crypto.
        Crypto => "crypto",
    }
}

impl Method {
    fn client(self) -> PayoutMethod {
        match self {
            Method::BankTransfer => PayoutMethod::BankTransfer,
            Method::Interac => PayoutMethod::Interac,
            Method::Wire => PayoutMethod::Wire,
            Method::Ach => PayoutMethod::Ach,
            Method::Crypto => PayoutMethod::Crypto,
        }
    }
}

one_of! {
    /// Which side of a payout its `amount` fixes.
    pub enum AmountSide {
        /// What leaves the wallet, in `currency` (the default).
        From => "from",
        /// What arrives, in `to_currency`.
        To => "to",
    }
}

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

/// Parameters of `blaaiz.create_customer`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct CustomerParams {
    /// the customer
    pub customer: NewCustomer,
}

/// A customer as `blaaiz.create_customer` takes it.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct NewCustomer {
    /// individual or business
    #[serde(rename = "type")]
    pub customer_type: CustomerKind,
    /// required for an individual
    pub first_name: Option<Text>,
    /// required for an individual
    pub last_name: Option<Text>,
    /// required for a business
    pub business_name: Option<Text>,
    /// email address
    pub email: Email,
    /// country code
    pub country: Text,
    /// identity document type
    pub id_type: Text,
    /// identity document number
    pub id_number: Text,
    /// phone number
    pub phone: Option<Text>,
    /// tax identification number
    pub tin: Option<Text>,
    /// date of birth
    pub dob: Option<Text>,
    /// street
    pub street: Option<Text>,
    /// city
    pub city: Option<Text>,
    /// state
    pub state: Option<Text>,
    /// postal code
    pub zip_code: Option<Text>,
    /// identity document expiry date
    pub id_expiry_date: Option<Text>,
    /// identity document issue date
    pub id_issue_date: Option<Text>,
}

impl CustomerKind {
    /// The name fields a customer of this kind must give.
    fn required_names(self) -> &'static [&'static str] {
        match self {
            CustomerKind::Individual => &["first_name", "last_name"],
            CustomerKind::Business => &["business_name"],
        }
    }
}

impl NewCustomer {
    fn request(self) -> Result<CreateCustomer, String> {
        let kind = self.customer_type;
        let required = |value: Option<Text>, name: &str| {
            value
                .map(|t| t.0)
                .ok_or_else(|| format!("customer.{name} is required for a customer of type {kind}"))
        };
        let text = |value: Option<Text>| value.map(|t| t.0);
        let (customer_type, first_name, last_name, business_name) = match kind {
            CustomerKind::Business => (
                CustomerType::Business,
                text(self.first_name),
                text(self.last_name),
                Some(required(self.business_name, "business_name")?),
            ),
            CustomerKind::Individual => (
                CustomerType::Individual,
                Some(required(self.first_name, "first_name")?),
                Some(required(self.last_name, "last_name")?),
                text(self.business_name),
            ),
        };
        Ok(CreateCustomer {
            customer_type,
            email: self.email.0,
            country: self.country.0,
            id_type: self.id_type.0,
            id_number: self.id_number.0,
            first_name,
            last_name,
            business_name,
            phone: text(self.phone),
            tin: text(self.tin),
            dob: text(self.dob),
            street: text(self.street),
            city: text(self.city),
            state: text(self.state),
            zip_code: text(self.zip_code),
            id_expiry_date: text(self.id_expiry_date),
            id_issue_date: text(self.id_issue_date),
        })
    }
}

/// Output of `blaaiz.create_customer`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct CustomerOutput {
    /// Blaaiz customer id
    pub customer_id: String,
    /// customer email
    pub email: Option<String>,
    /// KYC status
    pub verification_status: String,
    /// found instead of created
    pub existing: bool,
}

fn customer_output(c: &crate::blaaiz::Customer, existing: bool) -> CustomerOutput {
    CustomerOutput {
        customer_id: c.id.clone(),
        email: c.email.clone(),
        verification_status: c.verification().to_string(),
        existing,
    }
}

#[async_trait]
impl Step for CreateCustomerStep {
    type Params = CustomerParams;
    type Output = CustomerOutput;
    const NAME: &'static str = "blaaiz.create_customer";
    const DESCRIPTION: &'static str = "Creates (or finds, by email) a Blaaiz customer for KYC.";

    /// The name fields the customer's type requires must be given (a `null` one is decided
    /// by an earlier step and checked when the step runs).
    fn validate(&self, params: &Value) -> Result<(), String> {
        let Some(customer) = params.get("customer").filter(|c| c.is_object()) else {
            return Ok(());
        };
        let Some(kind) = customer
            .get("type")
            .and_then(|t| serde_json::from_value::<CustomerKind>(t.clone()).ok())
        else {
            return Ok(());
        };
        match kind
            .required_names()
            .iter()
            .find(|name| customer.get(**name).is_none())
        {
            Some(name) => Err(format!(
                "customer.{name} is required for a customer of type {kind}"
            )),
            None => Ok(()),
        }
    }

    async fn run(
        &self,
        _ctx: &StepContext,
        params: CustomerParams,
    ) -> Result<CustomerOutput, StepOutcome> {
        let request = params.customer.request().map_err(invalid)?;
        match self.0.find_customer_by_email(&request.email).await {
            Ok(Some(c)) => return Ok(customer_output(&c, true)),
            Ok(None) => {}
            Err(e) => return Err(outcome_for("look up customer by email", &e)),
        }
        match self.0.create_customer(&request).await {
            Ok(c) => Ok(customer_output(&c, false)),
            Err(e) if e.may_have_taken_effect() => {
                match self.0.find_customer_by_email(&request.email).await {
                    Ok(Some(c)) => Ok(customer_output(&c, true)),
                    _ => Err(retry_unknown_effect("create customer", &e)),
                }
            }
            Err(e) => Err(outcome_for("create customer", &e)),
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

/// Parameters of `blaaiz.upload_documents`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct UploadParams {
    /// Blaaiz customer id
    pub customer_id: Id,
    /// {file_category, document_id} items; an identity document is required
    pub documents: Vec<DocumentParam>,
}

/// One document to upload.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct DocumentParam {
    /// identity, identity_back, proof_of_address or liveness_check
    pub file_category: Category,
    /// id printed by `paysaga documents put`
    #[schemars(with = "String")]
    pub document_id: DocumentId,
    /// Always `None`: a file path given in place of `document_id` is refused.
    #[schemars(skip)]
    pub path: Option<RefusedFilePath>,
}

/// A file path in a document's parameters: never a value, its deserialization refuses it
/// (the worker reads nothing from its own disk).
#[derive(Debug, Clone, Copy)]
pub enum RefusedFilePath {}

impl<'de> Deserialize<'de> for RefusedFilePath {
    fn deserialize<D: Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom(
            "file paths are not accepted (the worker has no access to the starter's disk); \
             store the file with `paysaga documents put FILE` and give its document_id",
        ))
    }
}

/// The rules across the documents: at least one, one per category, an identity document.
fn check_documents(documents: &[DocumentParam]) -> Result<(), String> {
    if documents.is_empty() {
        return Err("documents must list at least one document".into());
    }
    for (i, d) in documents.iter().enumerate() {
        if documents[..i]
            .iter()
            .any(|o| o.file_category == d.file_category)
        {
            return Err(format!(
                "documents[{i}].file_category {:?} is given twice (one file per category)",
                d.file_category.as_str()
            ));
        }
    }
    if !documents
        .iter()
        .any(|d| d.file_category == Category::Identity)
    {
        return Err(
            "documents must include a file_category \"identity\" document (it starts the review)"
                .into(),
        );
    }
    Ok(())
}

/// Output of `blaaiz.upload_documents`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct UploadOutput {
    /// Blaaiz customer id
    pub customer_id: String,
    /// uploaded files
    pub files: Vec<UploadedFile>,
}

/// A document uploaded to Blaaiz (never its bytes).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct UploadedFile {
    /// category
    pub file_category: String,
    /// the engine's document id
    pub document_id: String,
    /// Blaaiz file id
    pub file_id: String,
    /// name sent to Blaaiz (document id and extension)
    pub file_name: String,
    /// content type
    pub content_type: String,
    /// size in bytes
    pub size: usize,
    /// SHA-256 of the content, hex
    pub sha256: String,
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
impl Step for UploadDocuments {
    type Params = UploadParams;
    type Output = UploadOutput;
    const NAME: &'static str = "blaaiz.upload_documents";
    const DESCRIPTION: &'static str =
        "Uploads KYC documents stored with `paysaga documents put` to Blaaiz.";

    /// The documents come from the input, never from an earlier step: they are required at
    /// start, with the rules across them: at least one, one per category, an identity document.
    fn validate(&self, params: &Value) -> Result<(), String> {
        if params.get("documents").is_none_or(Value::is_null) {
            return Err("documents is required (the KYC documents, from the saga input)".into());
        }
        match given::<Vec<DocumentParam>>(params, "documents") {
            Some(documents) => check_documents(&documents),
            None => Ok(()),
        }
    }

    fn documents(&self, params: &Value) -> Vec<DocumentId> {
        params
            .get("documents")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|d| d.get("document_id")?.as_str()?.parse().ok())
            .collect()
    }

    async fn run(
        &self,
        ctx: &StepContext,
        params: UploadParams,
    ) -> Result<UploadOutput, StepOutcome> {
        check_documents(&params.documents).map_err(invalid)?;
        let customer_id = params.customer_id.0;
        let mut files = Vec::with_capacity(params.documents.len());
        for param in params.documents {
            let category = param.file_category.as_str();
            let doc = match ctx.documents.read(ctx, param.document_id).await {
                Ok(doc) => doc,
                Err(e) => {
                    let error = format!("read the {category} document: {e}");
                    return Err(if e.is_transient() {
                        StepOutcome::retry(error)
                    } else {
                        StepOutcome::fail(error)
                    });
                }
            };
            let size = doc.content.len();
            // No personal data in the name: the document id and an extension.
            let file_name = format!("{}.{}", doc.id, extension(&doc.content_type));
            let request = PresignedUrlRequest {
                customer_id: customer_id.clone(),
                file_category: param.file_category.client(),
                file_name: file_name.clone(),
                file_type: doc.content_type.clone(),
            };
            let upload = match self.0.get_presigned_url(&request).await {
                Ok(u) => u,
                Err(e) => return Err(outcome_for(&format!("get upload URL for {category}"), &e)),
            };
            if let Err(e) = self.0.upload_file(&upload, doc.content).await {
                return Err(outcome_for(&format!("upload the {category} document"), &e));
            }
            files.push(UploadedFile {
                file_category: category.to_owned(),
                document_id: doc.id.to_string(),
                file_id: upload.file_id,
                file_name,
                content_type: doc.content_type,
                size,
                sha256: doc.sha256,
            });
        }
        Ok(UploadOutput { customer_id, files })
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

/// Parameters of `blaaiz.attach_files`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct AttachParams {
    /// Blaaiz customer id
    pub customer_id: Id,
    /// {file_id, file_category} items (the upload step's output)
    pub files: Vec<UploadedFileRef>,
}

/// A file uploaded by `blaaiz.upload_documents`, as `blaaiz.attach_files` takes it.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct UploadedFileRef {
    /// Blaaiz file id
    pub file_id: Text,
    /// identity, identity_back, proof_of_address or liveness_check
    pub file_category: Category,
}

/// The attach request of `files`, which must include an identity file.
fn attachment(files: Vec<UploadedFileRef>) -> Result<AttachFiles, String> {
    let mut attach = AttachFiles::default();
    for file in files {
        let slot = match file.file_category {
            Category::Identity => &mut attach.id_file,
            Category::IdentityBack => &mut attach.id_file_back,
            Category::ProofOfAddress => &mut attach.proof_of_address_file,
            Category::LivenessCheck => &mut attach.liveness_check_file,
        };
        *slot = Some(file.file_id.0);
    }
    if attach.id_file.is_none() {
        return Err("files must include an identity file (id_file)".into());
    }
    Ok(attach)
}

/// Output of `blaaiz.attach_files`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct AttachOutput {
    /// Blaaiz customer id
    pub customer_id: String,
    /// what was attached (`null` when the review had already started)
    pub attached: Option<AttachFiles>,
    /// KYC status
    pub verification_status: String,
}

#[async_trait]
impl Step for AttachFilesStep {
    type Params = AttachParams;
    type Output = AttachOutput;
    const NAME: &'static str = "blaaiz.attach_files";
    const DESCRIPTION: &'static str = "Attaches uploaded files to the customer's KYC.";

    /// Files the input gives (usually an earlier step decides them) are complete and include
    /// an identity file.
    fn validate(&self, params: &Value) -> Result<(), String> {
        let Some(files) = params.get("files").filter(|f| f.is_array()) else {
            return Ok(());
        };
        #[derive(Deserialize)]
        struct Files {
            files: Vec<UploadedFileRef>,
        }
        let files: Files =
            paysaga_core::from_params(serde_json::json!({ "files": without_nulls(files) }))?;
        attachment(files.files).map(|_| ())
    }

    async fn run(
        &self,
        _ctx: &StepContext,
        params: AttachParams,
    ) -> Result<AttachOutput, StepOutcome> {
        let customer_id = params.customer_id.0;
        let attach = attachment(params.files).map_err(invalid)?;
        let customer = match self.0.get_customer(&customer_id).await {
            Ok(c) => c,
            Err(e) => return Err(outcome_for("get customer", &e)),
        };
        let status = customer.verification();
        if matches!(
            status,
            VerificationStatus::Processing | VerificationStatus::Verified
        ) {
            return Ok(AttachOutput {
                customer_id,
                attached: None,
                verification_status: status.to_string(),
            });
        }
        match self.0.attach_files(&customer_id, &attach).await {
            Ok(_) => Ok(AttachOutput {
                customer_id,
                attached: Some(attach),
                verification_status: VerificationStatus::Processing.to_string(),
            }),
            Err(e) => Err(outcome_for("attach files", &e)),
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

/// Parameters of `blaaiz.await_verification`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct VerificationParams {
    /// Blaaiz customer id
    pub customer_id: Id,
}

/// Output of `blaaiz.await_verification`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct VerificationOutput {
    /// Blaaiz customer id
    pub customer_id: String,
    /// VERIFIED
    pub verification_status: String,
}

#[async_trait]
impl Step for AwaitVerification {
    type Params = VerificationParams;
    type Output = VerificationOutput;
    const NAME: &'static str = "blaaiz.await_verification";
    const DESCRIPTION: &'static str = "Waits until the customer's KYC is verified.";

    async fn run(
        &self,
        ctx: &StepContext,
        params: VerificationParams,
    ) -> Result<VerificationOutput, StepOutcome> {
        let customer_id = params.customer_id.0;
        let customer = match self.0.get_customer(&customer_id).await {
            Ok(c) => c,
            Err(e) => return Err(outcome_for("get customer", &e)),
        };
        match customer.verification() {
            VerificationStatus::Verified => Ok(VerificationOutput {
                customer_id,
                verification_status: "VERIFIED".to_owned(),
            }),
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
                Err(StepOutcome::fail(format!(
                    "Blaaiz rejected the KYC of customer {customer_id}: {}",
                    comment.as_deref().unwrap_or("no comment given")
                )))
            }
            other => Err(StepOutcome::Wait(
                WaitSpec::new(
                    PROVIDER,
                    "customer.status_changed",
                    format!("customer:{customer_id}"),
                )
                .provider_status(format!("customer {customer_id} verification is {other}")),
            )),
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

/// Parameters of `blaaiz.payout`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct PayoutParams {
    /// Blaaiz customer id
    pub customer_id: Id,
    /// the payout
    pub payout: PayoutDetails,
}

/// A payout as `blaaiz.payout` takes it; the recipient fields are sent as Blaaiz names them.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct PayoutDetails {
    /// wallet paying out
    pub wallet_id: Id,
    /// bank_transfer, interac, wire, ach or crypto
    pub method: Method,
    /// amount in minor units
    pub amount: Amount,
    /// ISO 4217 code of the amount
    pub currency: Currency,
    /// currency received (default: currency)
    pub to_currency: Option<Currency>,
    /// from or to: which side the amount is (default from)
    pub amount_side: Option<AmountSide>,
    /// recipient detail
    pub bank_id: Option<Text>,
    /// recipient detail
    pub account_number: Option<Text>,
    /// recipient detail
    pub account_name: Option<Text>,
    /// recipient detail
    pub account_type: Option<Text>,
    /// recipient detail
    pub bank_name: Option<Text>,
    /// recipient detail
    pub routing_number: Option<Text>,
    /// recipient detail
    pub swift_code: Option<Text>,
    /// recipient detail
    pub sort_code: Option<Text>,
    /// recipient detail
    pub iban: Option<Text>,
    /// recipient detail
    pub bic_code: Option<Text>,
    /// recipient detail
    pub recipient_type: Option<Text>,
    /// recipient detail
    pub phone_number: Option<Text>,
    /// recipient detail
    pub email: Option<Email>,
    /// recipient detail
    pub interac_first_name: Option<Text>,
    /// recipient detail
    pub interac_last_name: Option<Text>,
    /// recipient detail
    pub country: Option<Text>,
    /// recipient detail
    pub state: Option<Text>,
    /// recipient detail
    pub street: Option<Text>,
    /// recipient detail
    pub city: Option<Text>,
    /// recipient detail
    pub zip_code: Option<Text>,
}

/// A payout request with what a found payout is compared with.
struct PayoutRequest {
    /// Minor units of `currency`.
    amount: i64,
    /// The currency of `amount`: `to_currency` when the amount fixes what arrives.
    currency: String,
    request: CreatePayout,
}

impl PayoutDetails {
    /// The request for `customer_id` (its `note` is set when sending).
    fn request(self, customer_id: &str) -> Result<PayoutRequest, String> {
        let amount = self.amount.get();
        let currency = self.currency.as_str().to_owned();
        let to_currency = self
            .to_currency
            .map_or_else(|| currency.clone(), |c| c.as_str().to_owned());
        let side = self.amount_side.unwrap_or(AmountSide::From);
        let amount_arg = match side {
            AmountSide::To => PayoutAmount::To(amount),
            AmountSide::From => PayoutAmount::From(amount),
        };
        let mut request = CreatePayout::new(
            self.wallet_id.as_str(),
            customer_id,
            self.method.client(),
            amount_arg,
            &currency,
            &to_currency,
            "",
        )
        .map_err(|e| format!("payout: {e}"))?;
        let text = |value: Option<Text>| value.map(|t| t.0);
        request.bank_id = text(self.bank_id);
        request.account_number = text(self.account_number);
        request.account_name = text(self.account_name);
        request.account_type = text(self.account_type);
        request.bank_name = text(self.bank_name);
        request.routing_number = text(self.routing_number);
        request.swift_code = text(self.swift_code);
        request.sort_code = text(self.sort_code);
        request.iban = text(self.iban);
        request.bic_code = text(self.bic_code);
        request.recipient_type = text(self.recipient_type);
        request.phone_number = text(self.phone_number);
        request.email = self.email.map(|e| e.0);
        request.interac_first_name = text(self.interac_first_name);
        request.interac_last_name = text(self.interac_last_name);
        request.country = text(self.country);
        request.state = text(self.state);
        request.street = text(self.street);
        request.city = text(self.city);
        request.zip_code = text(self.zip_code);
        let currency = match side {
            AmountSide::To => to_currency,
            AmountSide::From => currency,
        };
        Ok(PayoutRequest {
            amount,
            currency,
            request,
        })
    }
}

/// Output of `blaaiz.payout`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct PayoutOutput {
    /// Blaaiz transaction id
    pub transaction_id: String,
    /// transaction status
    pub status: String,
    /// our reference
    pub reference: String,
    /// Blaaiz reference
    pub provider_reference: Option<String>,
    /// amount in minor units
    pub amount: Option<i64>,
    /// currency
    pub currency: String,
    /// found instead of created
    pub existing: bool,
}

fn payout_output(t: &Transaction, reference: &str, existing: bool) -> PayoutOutput {
    PayoutOutput {
        transaction_id: t.id.clone(),
        status: t.status.to_string(),
        reference: reference.to_owned(),
        provider_reference: t.reference.clone(),
        amount: t.amount_minor().ok(),
        currency: t.currency.clone(),
        existing,
    }
}

#[async_trait]
impl Step for PayoutStep {
    type Params = PayoutParams;
    type Output = PayoutOutput;
    const NAME: &'static str = "blaaiz.payout";
    const DESCRIPTION: &'static str = "Sends a payout from a Blaaiz wallet (irreversible).";

    /// A payout the input gives in full must make a valid request (currencies Blaaiz knows).
    fn validate(&self, params: &Value) -> Result<(), String> {
        match given::<PayoutDetails>(params, "payout") {
            Some(payout) => payout.request("").map(|_| ()),
            None => Ok(()),
        }
    }

    fn irreversible(&self) -> bool {
        true
    }

    async fn run(
        &self,
        ctx: &StepContext,
        params: PayoutParams,
    ) -> Result<PayoutOutput, StepOutcome> {
        let customer_id = params.customer_id.0;
        let p = params.payout.request(&customer_id).map_err(invalid)?;
        let reference = reference(ctx);
        let mut request = p.request;
        request.note = Some(reference.clone());
        let found = |t: Transaction| {
            let amount = t.amount_minor().ok();
            // A payout fixed on the "to" side may show the sent amount: only compare when the
            // currencies agree.
            if t.currency.eq_ignore_ascii_case(&p.currency) && amount != Some(p.amount) {
                Err(format!(
                    "payout {} carries this step's reference but its amount is {} {} (expected {} \
                     minor units)",
                    t.id,
                    t.amount.as_str(),
                    t.currency,
                    p.amount
                ))
            } else {
                Ok(payout_output(&t, &reference, true))
            }
        };
        match self
            .0
            .find_payout_by_reference(&customer_id, &reference)
            .await
        {
            Ok(Some(t)) => return found(t).map_err(StepOutcome::fail),
            Ok(None) => {}
            Err(e) => return Err(outcome_for("look up payout by reference", &e)),
        }
        // Blaaiz has no idempotency key: mark the attempt durably before sending, so that a
        // worker taking the saga over waits until this request has surely landed or failed
        // before it looks again (and would create again).
        let permit = ctx.begin_effect().await?;
        match self.0.create_payout(&request, permit.send_by()).await {
            Ok(r) => Ok(payout_output(&r.transaction, &reference, false)),
            Err(e) if e.may_have_taken_effect() => {
                match self
                    .0
                    .find_payout_by_reference(&customer_id, &reference)
                    .await
                {
                    Ok(Some(t)) => found(t).map_err(StepOutcome::fail),
                    _ => Err(retry_unknown_effect("create payout", &e)),
                }
            }
            Err(e) => {
                // Refused before Blaaiz acted (4xx, 429, no connection, not sent): the next
                // attempt need not wait for this request to land.
                ctx.effect_not_sent().await;
                Err(outcome_for("create payout", &e))
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

/// Parameters of `blaaiz.await_payout`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct AwaitPayoutParams {
    /// Blaaiz transaction id
    pub transaction_id: Id,
}

/// Output of `blaaiz.await_payout`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct AwaitPayoutOutput {
    /// Blaaiz transaction id
    pub transaction_id: String,
    /// transaction status
    pub status: String,
    /// amount in minor units
    pub amount: Option<i64>,
    /// currency
    pub currency: String,
}

#[async_trait]
impl Step for AwaitPayout {
    type Params = AwaitPayoutParams;
    type Output = AwaitPayoutOutput;
    const NAME: &'static str = "blaaiz.await_payout";
    const DESCRIPTION: &'static str = "Waits until a payout is successful (or failed).";

    async fn run(
        &self,
        _ctx: &StepContext,
        params: AwaitPayoutParams,
    ) -> Result<AwaitPayoutOutput, StepOutcome> {
        let transaction_id = params.transaction_id.0;
        let t = match self.0.get_transaction(&transaction_id).await {
            Ok(t) => t,
            Err(e) => return Err(outcome_for("get payout transaction", &e)),
        };
        if t.status.is_success() {
            Ok(AwaitPayoutOutput {
                status: t.status.to_string(),
                amount: t.amount_minor().ok(),
                currency: t.currency,
                transaction_id,
            })
        } else if t.status.is_failure() {
            Err(StepOutcome::fail(format!(
                "Blaaiz payout {transaction_id} ended {} (the funds were not delivered)",
                t.status
            )))
        } else {
            Err(StepOutcome::Wait(
                WaitSpec::new(
                    PROVIDER,
                    "payout.status_changed",
                    format!("transaction:{transaction_id}"),
                )
                .provider_status(format!("payout {transaction_id} is {}", t.status)),
            ))
        }
    }

    fn references(&self, output: &Value) -> Vec<(String, String)> {
        paysaga_core::output_references(output, &["transaction_id"])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn extensions_follow_the_content_type() {
        assert_eq!(extension("image/PNG"), "png");
        assert_eq!(extension("application/pdf; charset=binary"), "pdf");
        assert_eq!(extension("application/octet-stream"), "bin");
    }

    fn kind(name: &str) -> Arc<dyn StepKind> {
        super::super::validation_kinds()
            .into_iter()
            .find(|k| k.name() == name)
            .expect("registered")
    }

    #[test]
    fn rules_across_fields_are_checked_at_start_and_deferred_values_accepted() {
        let customer = |c: Value| json!({ "customer": c });
        let create = kind("blaaiz.create_customer");
        let business = json!({"type": "Business", "email": "ap@acme.co", "country": "NG",
                              "id_type": "cac", "id_number": "RC1"});
        let e = create.validate(&customer(business.clone())).unwrap_err();
        assert!(e.contains("customer.business_name"), "{e}");
        let mut named = business;
        named["business_name"] = json!(null); // decided by an earlier step
        assert_eq!(create.validate(&customer(named)), Ok(()));
        let e = create
            .validate(&customer(json!({"type": "individual", "email": "a@b.co",
                "country": "NG", "id_type": "passport", "id_number": "A1", "first_name": "Ada"})))
            .unwrap_err();
        assert!(e.contains("customer.last_name"), "{e}");

        let upload = kind("blaaiz.upload_documents");
        let doc = DocumentId::new().to_string();
        let twice = json!({"customer_id": null, "documents": [
            {"file_category": "identity", "document_id": doc},
            {"file_category": "IDENTITY", "document_id": doc}]});
        let e = upload.validate(&twice).unwrap_err();
        assert!(
            e.contains("documents[1].file_category") && e.contains("twice"),
            "{e}"
        );
        let e = upload
            .validate(&json!({"customer_id": null, "documents": null}))
            .unwrap_err();
        assert!(e.contains("documents is required"), "{e}");
        assert_eq!(upload.documents(&twice).len(), 2);

        let attach = kind("blaaiz.attach_files");
        assert_eq!(
            attach.validate(&json!({"customer_id": null, "files": null})),
            Ok(())
        );
        let e = attach
            .validate(&json!({"customer_id": "c", "files": [
                {"file_id": "f1", "file_category": "proof_of_address"}]}))
            .unwrap_err();
        assert!(e.contains("identity"), "{e}");
        let e = attach
            .validate(&json!({"customer_id": "c", "files": [{"file_category": "identity"}]}))
            .unwrap_err();
        assert!(e.contains("files[0]") && e.contains("file_id"), "{e}");
    }

    #[test]
    fn the_payout_schema_is_derived_with_nested_fields() {
        let schema = kind("blaaiz.payout").schema().expect("typed");
        let field = |path: &str| {
            schema
                .params
                .iter()
                .find(|f| f.path == path)
                .unwrap_or_else(|| panic!("{path} in {:?}", schema.params))
        };
        assert!(field("payout.wallet_id").required);
        assert_eq!(field("payout.method").ty, paysaga_core::FieldType::String);
        assert_eq!(field("payout.amount").ty, paysaga_core::FieldType::Integer);
        assert!(!field("payout.iban").required);
        assert!(
            schema
                .params
                .iter()
                .all(|f| f.path != "payout.path" && f.path != "payout._path"),
            "internal fields stay out of the schema"
        );
        let upload = kind("blaaiz.upload_documents").schema().expect("typed");
        let paths: Vec<&str> = upload.params.iter().map(|f| f.path).collect();
        assert!(paths.contains(&"documents[].document_id"), "{paths:?}");
        assert!(!paths.iter().any(|p| p.contains("path")), "{paths:?}");
    }
}
