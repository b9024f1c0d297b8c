//! The worker's [`DocumentSource`]: documents read from the engine's store, checked against
//! the SHA-256 recorded when they were stored and against the saga they were given to.

use std::sync::Arc;

use async_trait::async_trait;
use paysaga_core::{Document, DocumentError, DocumentId, DocumentSource, StepContext};
use paysaga_store::Store;

/// Reads documents for step runs from the store.
#[derive(Debug)]
pub(crate) struct StoreDocuments {
    pub(crate) store: Arc<dyn Store>,
}

#[async_trait]
impl DocumentSource for StoreDocuments {
    async fn read(&self, ctx: &StepContext, id: DocumentId) -> Result<Document, DocumentError> {
        let unavailable = |e: paysaga_store::Error| DocumentError::Unavailable {
            id,
            reason: e.to_string(),
        };
        let record = self
            .store
            .document(id)
            .await
            .map_err(unavailable)?
            .ok_or(DocumentError::NotFound(id))?;
        if let Some(holder) = record.saga_id.filter(|h| *h != ctx.saga_id) {
            return Err(DocumentError::OtherSaga { id, saga: holder });
        }
        let content = self
            .store
            .document_content(id)
            .await
            .map_err(unavailable)?
            .ok_or(DocumentError::Deleted(id))?;
        if paysaga_core::sha256_hex(&content) != record.sha256 {
            return Err(DocumentError::Corrupt(id));
        }
        Ok(Document {
            id,
            content_type: record.content_type,
            sha256: record.sha256,
            content,
        })
    }
}
