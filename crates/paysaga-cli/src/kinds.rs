//! `paysaga kinds [KIND] [--json]`: the step kinds this build registers, with the parameters
//! (type, required or not) and output each declares ([`paysaga_core::KindSchema`]); with
//! `--json`, typed kinds ([`paysaga_core::Step`]) also give their JSON Schemas
//! (`json_schema`). Needs no database and no provider secret.

use anyhow::{bail, Result};
use paysaga_core::{FieldSpec, KindSchema};
use paysaga_runtime::Registry;
use serde_json::{json, Value};

/// Prints every kind, or the one named.
pub fn run(registry: &Registry, kind: Option<&str>, as_json: bool) -> Result<()> {
    let names: Vec<String> = match kind {
        Some(k) if registry.contains(k) => vec![k.to_string()],
        Some(k) => bail!(
            "no step kind {k:?} in this build; known kinds: {}",
            registry.names().join(", ")
        ),
        None => registry.names(),
    };
    let described: Vec<Value> = names
        .iter()
        .filter_map(|n| registry.get(n).map(|k| (n, k)))
        .map(|(name, k)| {
            let schema = k.schema();
            json!({
                "name": name,
                "description": schema.as_ref().map(|s| s.description),
                "compensable": k.compensable(),
                "irreversible": k.irreversible(),
                "declared": schema.is_some(),
                "params": schema.as_ref().map(|s| &s.params),
                "outputs": schema.as_ref().map(|s| &s.outputs),
                "json_schema": k.json_schema(),
            })
        })
        .collect();
    if as_json {
        let out = if kind.is_some() {
            described.into_iter().next().unwrap_or(Value::Null)
        } else {
            Value::Array(described)
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    for (i, name) in names.iter().enumerate() {
        let Some(k) = registry.get(name) else {
            continue;
        };
        if i > 0 {
            println!();
        }
        let mut traits = Vec::new();
        if k.irreversible() {
            traits.push("irreversible");
        }
        if k.compensable() {
            traits.push("compensable");
        }
        let traits = if traits.is_empty() {
            String::new()
        } else {
            format!(" [{}]", traits.join(", "))
        };
        match k.schema() {
            Some(schema) => print_schema(name, &traits, &schema),
            None => println!("{name}{traits}\n  (declares no parameters or output)"),
        }
    }
    Ok(())
}

fn print_schema(name: &str, traits: &str, schema: &KindSchema) {
    println!("{name}{traits}\n  {}", schema.description);
    println!("  parameters:");
    print_fields(&schema.params);
    println!("  output:");
    print_fields(&schema.outputs);
}

fn print_fields(fields: &[FieldSpec]) {
    if fields.is_empty() {
        println!("    (none)");
    }
    let width = fields.iter().map(|f| f.path.len()).max().unwrap_or(0);
    for f in fields {
        println!(
            "    {:<width$}  {:<8}  {:<8}  {}",
            f.path,
            f.ty.as_str(),
            if f.required { "required" } else { "optional" },
            f.description
        );
    }
}
