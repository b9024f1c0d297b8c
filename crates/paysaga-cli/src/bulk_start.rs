//! `paysaga start WORKFLOW --input-file FILE [--key-column NAME] [--format jsonl|csv]
//! [--json]`: one saga per line of a JSON Lines or CSV file, each idempotent on the key its
//! line gives (re-running the same file starts nothing new), through
//! [`paysaga_runtime::Engine::start_each`]. A progress bar on stderr when it is a terminal; a
//! summary (started, already existed, refused with the line number and reason) or `--json`.
//!
//! - JSON Lines: each non-blank line is the saga's input, a JSON object; its field
//!   `--key-column` (default `key`) holds the idempotency key (a string or an integer) and
//!   stays in the input.
//! - CSV: the first line names the columns; each record is the saga's input, one field per
//!   non-empty cell. A column `payout.amount` nests (`{"payout": {"amount": ...}}`). Cells are
//!   strings unless the column names a type after a colon: `amount:integer`,
//!   `urgent:boolean`, `tags:json` (any JSON value); `account_number` stays the string
//!   `"0012"`, never a number. The key column (`--key-column`, default `key`) is in the input
//!   too.
//!
//! A line that does not parse, has no key, or whose input the workflow refuses (the step and
//! field named) is reported and the others go on; the command then exits 4 (refused). A
//! failure that is not the line's (database unreachable, unknown workflow) stops it: what was
//! started stays started, and running the file again resumes (it starts nothing twice).

use std::io::IsTerminal;
use std::path::Path;

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use paysaga_runtime::{BulkItem, Engine, Error as EngineError};
use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::exit::Refused;

/// Input file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON object per line.
    Jsonl,
    /// A header line, then one record per saga.
    Csv,
}

/// One line that became a saga (new or existing).
#[derive(Debug, Serialize)]
struct StartedLine {
    line: u64,
    key: String,
    saga_id: Uuid,
    created: bool,
}

/// One line that was refused.
#[derive(Debug, Serialize)]
struct RefusedLine {
    line: u64,
    key: Option<String>,
    reason: String,
}

/// What `--json` prints.
#[derive(Debug, Serialize)]
struct Summary {
    workflow: String,
    file: String,
    lines: usize,
    started: usize,
    existing: usize,
    refused: Vec<RefusedLine>,
    sagas: Vec<StartedLine>,
}

/// A line read from the file: its number and either the item to start or why not.
type ReadLine = (u64, Result<BulkItem, (Option<String>, String)>);

/// Runs the bulk start.
pub async fn run(
    engine: &Engine,
    workflow: &str,
    file: &Path,
    format: Option<Format>,
    key_column: &str,
    actor: &str,
    as_json: bool,
) -> Result<()> {
    let format = format.unwrap_or_else(|| {
        if file
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
        {
            Format::Csv
        } else {
            Format::Jsonl
        }
    });
    let lines = match format {
        Format::Jsonl => read_jsonl(file, key_column)?,
        Format::Csv => read_csv(file, key_column)?,
    };
    let mut summary = Summary {
        workflow: workflow.to_string(),
        file: file.display().to_string(),
        lines: lines.len(),
        started: 0,
        existing: 0,
        refused: Vec::new(),
        sagas: Vec::new(),
    };
    let mut to_start = Vec::new();
    for (line, read) in lines {
        match read {
            Ok(item) => to_start.push((line, item)),
            Err((key, reason)) => summary.refused.push(RefusedLine { line, key, reason }),
        }
    }
    let progress = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(to_start.len() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} started or found ({eta} left)",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let labels: Vec<(u64, String)> = to_start
        .iter()
        .map(|(line, item)| (*line, item.key.clone()))
        .collect();
    let results = engine.start_each(workflow, actor, to_start.into_iter().map(|(_, i)| i));
    let mut results = std::pin::pin!(results);
    let mut at = labels.into_iter();
    while let Some(result) = results.next().await {
        let Some((line, key)) = at.next() else { break };
        if let Some(bar) = &progress {
            bar.inc(1);
        }
        match result {
            Ok(started) => {
                if started.created {
                    summary.started += 1;
                } else {
                    summary.existing += 1;
                }
                summary.sagas.push(StartedLine {
                    line,
                    key,
                    saga_id: started.saga_id,
                    created: started.created,
                });
            }
            Err(e) if is_the_lines(&e) => summary.refused.push(RefusedLine {
                line,
                key: Some(key),
                reason: e.to_string(),
            }),
            Err(e) => {
                if let Some(bar) = &progress {
                    bar.abandon();
                }
                return Err(e).with_context(|| {
                    format!(
                        "bulk start of {workflow} stopped at line {line} of {} after {} started \
                         and {} found; running the same file again starts nothing twice",
                        file.display(),
                        summary.started,
                        summary.existing
                    )
                });
            }
        }
    }
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    summary.refused.sort_by_key(|r| r.line);
    let refused = summary.refused.len();
    if as_json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "started {}, already existed {}, refused {} (of {} lines in {})",
            summary.started, summary.existing, refused, summary.lines, summary.file
        );
        for r in &summary.refused {
            match &r.key {
                Some(key) => println!("line {} (key {key}): {}", r.line, r.reason),
                None => println!("line {}: {}", r.line, r.reason),
            }
        }
    }
    if refused > 0 {
        return Err(Refused(format!(
            "{refused} line(s) of {} refused (listed above); fix them and run the file again: \
             the lines started are not started twice",
            summary.file
        ))
        .into());
    }
    Ok(())
}

/// Whether the error is about the line's own input (reported, the others go on) rather than
/// the run (database, unknown workflow: stop).
fn is_the_lines(e: &EngineError) -> bool {
    matches!(
        e,
        EngineError::InvalidInput { .. }
            | EngineError::Refused(_)
            | EngineError::Store(paysaga_store::Error::KeyReused { .. })
    )
}

/// The key of a JSON value (a string or an integer).
fn key_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

fn read_jsonl(file: &Path, key_column: &str) -> Result<Vec<ReadLine>> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read input file {}", file.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let number = i as u64 + 1;
        if line.trim().is_empty() {
            continue;
        }
        let read = match serde_json::from_str::<Value>(line) {
            Err(e) => Err((None, format!("not valid JSON: {e}"))),
            Ok(input @ Value::Object(_)) => match key_text(input.get(key_column)) {
                Some(key) => Ok(BulkItem { key, input }),
                None => Err((
                    None,
                    format!(
                        "no key: field {key_column:?} must be a non-empty string or an integer \
                         (--key-column names the field)"
                    ),
                )),
            },
            Ok(_) => Err((None, "the line must be a JSON object".to_string())),
        };
        out.push((number, read));
    }
    Ok(out)
}

/// A CSV column: where its cells go in the input, and how they are read.
#[derive(Debug)]
struct Column {
    path: Vec<String>,
    ty: CellType,
}

#[derive(Debug, Clone, Copy)]
enum CellType {
    String,
    Integer,
    Boolean,
    Json,
}

fn column(header: &str) -> Result<Column> {
    let (name, ty) = match header.rsplit_once(':') {
        Some((name, ty)) => (name, ty.trim()),
        None => (header, "string"),
    };
    let ty = match ty {
        "string" => CellType::String,
        "integer" | "int" => CellType::Integer,
        "boolean" | "bool" => CellType::Boolean,
        "json" => CellType::Json,
        other => bail!(
            "CSV column {header:?}: unknown type {other:?} (string, integer, boolean or json)"
        ),
    };
    let path: Vec<String> = name.trim().split('.').map(str::to_string).collect();
    if path.iter().any(String::is_empty) {
        bail!("CSV column {header:?}: empty name (or an empty part of a dotted name)");
    }
    Ok(Column { path, ty })
}

fn cell(ty: CellType, text: &str) -> Result<Value, String> {
    match ty {
        CellType::String => Ok(Value::String(text.to_string())),
        CellType::Integer => text
            .trim()
            .parse::<i64>()
            .map(Value::from)
            .map_err(|_| format!("{text:?} is not an integer")),
        CellType::Boolean => match text.trim().to_ascii_lowercase().as_str() {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err(format!("{text:?} is not true or false")),
        },
        CellType::Json => serde_json::from_str(text).map_err(|e| format!("not JSON ({e})")),
    }
}

fn insert(obj: &mut Map<String, Value>, path: &[String], value: Value) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty column name")?;
    let mut at = obj;
    for p in parents {
        let next = at
            .entry(p.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        at = next
            .as_object_mut()
            .ok_or_else(|| format!("{p} is both a value and an object"))?;
    }
    at.insert(last.clone(), value);
    Ok(())
}

fn read_csv(file: &Path, key_column: &str) -> Result<Vec<ReadLine>> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(file)
        .with_context(|| format!("cannot read input file {}", file.display()))?;
    let headers = reader
        .headers()
        .with_context(|| format!("cannot read the header line of {}", file.display()))?
        .clone();
    let columns: Vec<Column> = headers.iter().map(column).collect::<Result<_>>()?;
    let Some(key_at) = columns
        .iter()
        .position(|c| c.path.len() == 1 && c.path[0] == key_column)
    else {
        bail!(
            "{} has no key column {key_column:?} (its columns: {}); name it with --key-column",
            file.display(),
            headers.iter().collect::<Vec<_>>().join(", ")
        );
    };
    let mut out = Vec::new();
    for record in reader.records() {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line());
                out.push((line, Err((None, format!("not valid CSV: {e}")))));
                continue;
            }
        };
        let line = record.position().map_or(0, |p| p.line());
        let key = record
            .get(key_at)
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(str::to_string);
        let read = (|| {
            if record.len() != columns.len() {
                return Err(format!(
                    "{} cells where the header names {} columns",
                    record.len(),
                    columns.len()
                ));
            }
            let key = key
                .clone()
                .ok_or_else(|| format!("no key: column {key_column:?} is empty"))?;
            let mut input = Map::new();
            for (column, text) in columns.iter().zip(record.iter()) {
                if text.is_empty() {
                    continue;
                }
                let value =
                    cell(column.ty, text).map_err(|e| format!("{}: {e}", column.path.join(".")))?;
                insert(&mut input, &column.path, value)?;
            }
            Ok(BulkItem {
                key,
                input: Value::Object(input),
            })
        })();
        out.push((line, read.map_err(|reason| (key, reason))));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn csv_cells_are_strings_unless_the_column_names_a_type_and_dotted_names_nest() {
        let dir = std::env::temp_dir().join(format!("paysaga-bulk-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let path = dir.join("in.csv");
        std::fs::write(
            &path,
            "id,payout.amount:integer,payout.account,urgent:boolean,note\n\
             po-1,1250,0012,true,\n\
             ,5,1,false,x\n\
             po-3,5.5,1,false,x\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let lines = read_csv(&path, "id").unwrap_or_else(|e| panic!("{e}"));
        let (line, first) = &lines[0];
        assert_eq!(*line, 2);
        let first = first.as_ref().unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(first.key, "po-1");
        assert_eq!(
            first.input,
            json!({"id": "po-1", "payout": {"amount": 1250, "account": "0012"}, "urgent": true})
        );
        assert!(lines[1]
            .1
            .as_ref()
            .is_err_and(|(_, r)| r.contains("no key")));
        assert!(lines[2]
            .1
            .as_ref()
            .is_err_and(|(k, r)| k.as_deref() == Some("po-3") && r.contains("payout.amount")));
        assert!(read_csv(&path, "key").is_err(), "no such key column");
        std::fs::remove_dir_all(&dir).ok();
    }
}
