//! Every query uses bound parameters: SQL text may interpolate only fixed fragments of the
//! store (column lists, status sets, sort orders) and, for `CREATE/DROP DATABASE`, generated
//! database names (identifiers cannot be bound). This scans every crate's sources.

use std::path::{Path, PathBuf};

/// Placeholders allowed inside SQL built with `format!`, and why.
const ALLOWED: &[(&str, &str)] = &[
    ("SAGA_COLUMNS", "constant column list"),
    ("DOCUMENT_COLUMNS", "constant column list"),
    ("ACTIVE", "constant status set"),
    (
        "status_filter",
        "the statuses filter built by status_filter_sql from constants",
    ),
    (
        "x",
        "status_filter_sql's operand: the status column or the constant 'running'",
    ),
    ("order", "one of four constant ORDER BY clauses"),
    (
        "",
        "positional: the constant column list joined with a table alias",
    ),
    ("sql", "EXPLAIN of a constant query in a test"),
    (
        "PRUNABLE_WHERE",
        "constant retention condition (its values are bound)",
    ),
    (
        "PRUNABLE_SQL",
        "constant retention query (its values are bound)",
    ),
    (
        "name",
        "generated database name in CREATE/DROP DATABASE (identifiers cannot be bound)",
    ),
    (
        "RUNS_ITS_STEPS",
        "constant per-key concurrency condition of the claim",
    ),
    ("holding", "the constant status set SLOT_HOLDING_STATUSES"),
    (
        "me",
        "one of three constant subqueries naming the new saga's holder (insert_saga_at_once_on)",
    ),
    (
        "any",
        "pick_worker_sql's condition: a constant test of a placeholder, or a placeholder",
    ),
    (
        "definition",
        "pick_worker_sql's definition id: a placeholder ($2, or $2 in the plan test)",
    ),
];

const SQL_WORDS: &[&str] = &[
    "SELECT ", "INSERT ", "UPDATE ", "DELETE ", "CREATE ", "DROP ", "ALTER ", "EXPLAIN ",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() && !path.ends_with("target") {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The string literal whose opening quote is at `text[start]`.
fn literal(text: &str, start: usize) -> &str {
    let body = &text[start + 1..];
    let mut escaped = false;
    for (i, c) in body.char_indices() {
        match c {
            '\\' if !escaped => escaped = true,
            '"' if !escaped => return &body[..i],
            _ => escaped = false,
        }
    }
    body
}

fn looks_like_sql(lit: &str) -> bool {
    let upper = lit.to_ascii_uppercase();
    SQL_WORDS.iter().any(|w| upper.contains(w))
        && (upper.contains(" FROM ")
            || upper.contains("DATABASE")
            || upper.contains("INTO ")
            || upper.contains(" SET "))
}

#[test]
fn sql_is_never_built_from_values() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut files = Vec::new();
    rust_files(&root.join("crates"), &mut files);
    rust_files(&root.join("tests"), &mut files);
    assert!(files.len() > 10, "scanned too few files: {}", files.len());
    let mut problems = Vec::new();
    let mut checked = 0;
    for file in files {
        if file.ends_with("sql_lint.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let mut from = 0;
        while let Some(pos) = text[from..].find("format!(") {
            let at = from + pos + "format!(".len();
            from = at;
            let Some(quote) = text[at..].find('"') else {
                continue;
            };
            let before = text[at..at + quote].trim();
            if !(before.is_empty() || before == "r" || before == "r#") {
                continue;
            }
            let lit = literal(&text, at + quote);
            if !looks_like_sql(lit) {
                continue;
            }
            checked += 1;
            let mut rest = lit;
            while let Some(open) = rest.find('{') {
                let Some(close) = rest[open..].find('}') else {
                    break;
                };
                let name = rest[open + 1..open + close]
                    .split(':')
                    .next()
                    .unwrap_or_default()
                    .trim();
                if !ALLOWED.iter().any(|(a, _)| *a == name) {
                    problems.push(format!(
                        "{}: SQL interpolates {{{name}}}: bind it as a parameter",
                        file.display()
                    ));
                }
                rest = &rest[open + close + 1..];
            }
        }
    }
    assert!(
        checked >= 5,
        "found only {checked} SQL format! strings: the scanner is broken"
    );
    assert!(
        problems.is_empty(),
        "string-built SQL:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_scanner_catches_interpolated_values() {
    let bad = r#"let q = format!("SELECT * FROM paysaga_sagas WHERE id = '{saga_id}'");"#;
    let at = bad.find("format!(").map(|p| p + 8).unwrap_or_default();
    let quote = bad[at..].find('"').unwrap_or_default();
    let lit = literal(bad, at + quote);
    assert!(looks_like_sql(lit));
    assert!(lit.contains("{saga_id}") && !ALLOWED.iter().any(|(a, _)| *a == "saga_id"));
}
