//! Documents: bytes (e.g. a passport scan for a KYC step) stored durably by the engine and
//! referenced from saga inputs by id, so that the process that starts a saga and the worker
//! that runs it need no shared file system.
//!
//! A saga input names a document as `{"document_id": "doc_<32 hex>"}` where a step kind
//! expects one (e.g. `blaaiz.upload_documents`); the step kind says which ids its parameters
//! reference ([`crate::StepKind::documents`]) so that `start` refuses an input whose
//! documents do not exist, and reads the bytes at run time through
//! [`crate::StepContext::documents`].

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::StepContext;

/// A document's id, written `doc_` followed by 32 lowercase hex digits (a UUID without
/// hyphens), e.g. `doc_0f6c1b0e8d2a4c6e9b7f3a1d5e2c4b60`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DocumentId(pub Uuid);

impl DocumentId {
    /// A fresh random id.
    pub fn new() -> Self {
        DocumentId(Uuid::new_v4())
    }
}

impl Default for DocumentId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for DocumentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "doc_{}", self.0.simple())
    }
}

impl fmt::Debug for DocumentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A string that is not a document id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a document id (expected doc_ followed by 32 hex digits, as `paysaga documents put` prints)")]
pub struct BadDocumentId(pub String);

impl FromStr for DocumentId {
    type Err = BadDocumentId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex = s
            .strip_prefix("doc_")
            .ok_or_else(|| BadDocumentId(s.to_owned()))?;
        if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(BadDocumentId(s.to_owned()));
        }
        Uuid::parse_str(hex)
            .map(DocumentId)
            .map_err(|_| BadDocumentId(s.to_owned()))
    }
}

impl TryFrom<String> for DocumentId {
    type Error = BadDocumentId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<DocumentId> for String {
    fn from(id: DocumentId) -> String {
        id.to_string()
    }
}

/// A document's bytes with what was recorded when it was stored. `Debug` never shows the
/// bytes (identity documents are personal data).
#[derive(Clone, PartialEq, Eq)]
pub struct Document {
    /// Its id.
    pub id: DocumentId,
    /// MIME type given when it was stored (e.g. `image/png`).
    pub content_type: String,
    /// Lowercase hex SHA-256 of `content`, checked when read.
    pub sha256: String,
    /// The bytes.
    pub content: Vec<u8>,
}

impl fmt::Debug for Document {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Document")
            .field("id", &self.id)
            .field("content_type", &self.content_type)
            .field("size", &self.content.len())
            .field("sha256", &self.sha256)
            .finish_non_exhaustive()
    }
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Why a document could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DocumentError {
    /// No document has this id.
    #[error("document {0} does not exist: store it with `paysaga documents put FILE` (or `Engine::put_document`) and use the id it returns")]
    NotFound(DocumentId),
    /// The content was deleted by retention (its saga finished long enough ago).
    #[error("the content of document {0} was deleted by retention (its saga finished); store the document again for a new saga")]
    Deleted(DocumentId),
    /// The document belongs to another saga.
    #[error("document {id} belongs to saga {saga}; store the document again for this saga")]
    OtherSaga {
        /// The document.
        id: DocumentId,
        /// The saga it was given to at start.
        saga: Uuid,
    },
    /// The bytes read do not match the SHA-256 recorded when the document was stored.
    #[error("document {0}: the stored content does not match its recorded SHA-256 (corrupted); store the document again")]
    Corrupt(DocumentId),
    /// The store could not be read (transient: try again).
    #[error("document {id} could not be read: {reason}")]
    Unavailable {
        /// The document.
        id: DocumentId,
        /// What failed.
        reason: String,
    },
}

impl DocumentError {
    /// Worth trying again later (the store was unreachable); every other error is permanent.
    pub fn is_transient(&self) -> bool {
        matches!(self, DocumentError::Unavailable { .. })
    }
}

/// Where a step run reads documents. The worker reads them from the engine's store (checking
/// the SHA-256 and that the document was given to this saga); [`InMemoryDocuments`] is for
/// tests and tools that run steps outside a worker.
#[async_trait]
pub trait DocumentSource: Send + Sync + fmt::Debug {
    /// The document `id` for the step run `ctx`.
    async fn read(&self, ctx: &StepContext, id: DocumentId) -> Result<Document, DocumentError>;
}

/// Documents held in memory (tests, tools). Checks the SHA-256 like the worker does.
#[derive(Debug, Clone, Default)]
pub struct InMemoryDocuments {
    docs: Arc<Mutex<HashMap<DocumentId, Document>>>,
}

impl InMemoryDocuments {
    /// Empty.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a document and returns its new id.
    pub fn put(&self, content: Vec<u8>, content_type: &str) -> DocumentId {
        let id = DocumentId::new();
        let doc = Document {
            id,
            content_type: content_type.to_owned(),
            sha256: sha256_hex(&content),
            content,
        };
        self.docs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, doc);
        id
    }
}

#[async_trait]
impl DocumentSource for InMemoryDocuments {
    async fn read(&self, _ctx: &StepContext, id: DocumentId) -> Result<Document, DocumentError> {
        let doc = self
            .docs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
            .ok_or(DocumentError::NotFound(id))?;
        if sha256_hex(&doc.content) != doc.sha256 {
            return Err(DocumentError::Corrupt(id));
        }
        Ok(doc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_ids_round_trip_and_refuse_other_strings() {
        let id = DocumentId::new();
        let text = id.to_string();
        assert!(text.starts_with("doc_") && text.len() == 36, "{text}");
        assert_eq!(text.parse::<DocumentId>(), Ok(id));
        assert_eq!(
            serde_json::to_value(id).ok(),
            Some(serde_json::Value::String(text.clone()))
        );
        for bad in [
            "",
            "doc_",
            "0f6c1b0e8d2a4c6e9b7f3a1d5e2c4b60",
            "doc_0f6c1b0e-8d2a-4c6e-9b7f-3a1d5e2c4b60",
            "doc_zf6c1b0e8d2a4c6e9b7f3a1d5e2c4b60",
            "/etc/passwd",
        ] {
            assert!(bad.parse::<DocumentId>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn document_debug_never_shows_the_bytes() {
        let doc = Document {
            id: DocumentId::new(),
            content_type: "text/plain".into(),
            sha256: sha256_hex(b"A12345678"),
            content: b"A12345678".to_vec(),
        };
        let shown = format!("{doc:?}");
        assert!(
            !shown.contains("A12345678") && !shown.contains("65, 49"),
            "{shown}"
        );
    }
}
