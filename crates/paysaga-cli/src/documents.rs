//! `paysaga documents`: store a document in the engine's database (for saga inputs to
//! reference by id), show its metadata, write its content to a file.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use paysaga_core::DocumentId;
use paysaga_runtime::Engine;

#[derive(Debug, Subcommand)]
pub enum DocumentsCommand {
    /// Store FILE in the database; prints its id (`doc_...`) for saga inputs
    /// (`{"document_id": "doc_..."}`).
    Put {
        /// The file.
        file: PathBuf,
        /// MIME type (default: from the extension: png, jpg/jpeg, gif, webp, heic, pdf, txt).
        #[arg(long)]
        content_type: Option<String>,
        /// Largest document accepted: bytes, or with KiB/MiB (e.g. 10MiB).
        #[arg(long, env = "PAYSAGA_MAX_DOCUMENT_SIZE", default_value = "10MiB", value_parser = parse_size)]
        max_document_size: usize,
    },
    /// A document's metadata: type, size, SHA-256, when stored, its saga, whether retention
    /// deleted its content. Never the content.
    Show {
        /// Document id (`doc_...`).
        id: DocumentId,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Write a document's content (checked against its SHA-256) to a file (`-`: stdout,
    /// refused when stdout is a terminal).
    Get {
        /// Document id (`doc_...`).
        id: DocumentId,
        /// Where to write it.
        #[arg(long, short)]
        output: PathBuf,
    },
}

/// `10485760`, `512KiB`, `10MiB` (also `KB`/`MB`/`K`/`M`, read as binary units).
fn parse_size(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: usize = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size (e.g. 10MiB, 512KiB, 1048576)"))?;
    let factor = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        _ => return Err(format!("{text:?}: unknown unit (use KiB or MiB)")),
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// The MIME type of a file, from its extension.
fn content_type_of(path: &Path) -> Option<&'static str> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    Some(match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "heic" => "image/heic",
        "pdf" => "application/pdf",
        "txt" => "text/plain",
        _ => return None,
    })
}

pub async fn run(engine: Engine, cmd: DocumentsCommand) -> Result<()> {
    match cmd {
        DocumentsCommand::Put {
            file,
            content_type,
            max_document_size,
        } => {
            let content_type = match content_type {
                Some(t) => t,
                None => content_type_of(&file)
                    .with_context(|| {
                        format!(
                            "cannot tell the content type of {} from its extension: pass --content-type",
                            file.display()
                        )
                    })?
                    .to_string(),
            };
            let size = std::fs::metadata(&file)
                .with_context(|| format!("cannot read {}", file.display()))?
                .len();
            if size > max_document_size as u64 {
                bail!(
                    "{} is {size} bytes, over the limit of {max_document_size} bytes; nothing was stored (raise it with --max-document-size / PAYSAGA_MAX_DOCUMENT_SIZE if such documents are expected)",
                    file.display()
                );
            }
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let id = engine
                .with_max_document_size(max_document_size)
                .put_document(bytes, &content_type)
                .await
                .with_context(|| format!("cannot store {}", file.display()))?;
            println!("{id}");
        }
        DocumentsCommand::Show { id, json } => {
            let doc = engine
                .document(id)
                .await?
                .ok_or_else(|| crate::exit::NotFound(format!("document {id} not found")))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&doc)?);
            } else {
                println!("document      {}", doc.id);
                println!("content type  {}", doc.content_type);
                println!("size          {} bytes", doc.size);
                println!("sha256        {}", doc.sha256);
                println!("stored        {}", doc.created_at.to_rfc3339());
                println!(
                    "saga          {}",
                    doc.saga_id
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "(none yet)".into())
                );
                println!(
                    "content       {}",
                    match doc.content_deleted_at {
                        Some(at) => format!("deleted by retention at {}", at.to_rfc3339()),
                        None => "stored".into(),
                    }
                );
            }
        }
        DocumentsCommand::Get { id, output } => {
            let content = engine.document_content(id).await?.ok_or_else(|| {
                crate::exit::NotFound(format!(
                    "document {id} not found, or its content was deleted by retention"
                ))
            })?;
            if output.as_os_str() == "-" {
                if std::io::stdout().is_terminal() {
                    bail!("refusing to write document {id} to a terminal: pass --output FILE, or redirect stdout");
                }
                std::io::stdout().write_all(&content)?;
            } else {
                std::fs::write(&output, &content)
                    .with_context(|| format!("cannot write {}", output.display()))?;
                eprintln!("{} bytes written to {}", content.len(), output.display());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_accept_bytes_and_binary_units() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("10MiB"), Ok(10 << 20));
        assert_eq!(parse_size("512 KiB"), Ok(512 << 10));
        assert!(parse_size("ten").is_err() && parse_size("5GB").is_err());
    }
}
