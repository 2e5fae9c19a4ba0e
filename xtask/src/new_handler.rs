//! `cargo xtask new-handler NAME [--events order-created,status-updated]`: scaffolds a handler
//! crate in the handlers workspace: the trait impl, the manifest table and a golden case per
//! event, compiling and passing its tests as written. The workspace's glob members, the
//! build, and the host's tests (which read the built manifest) pick it up with no other edit.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use handler_manifest::EventKind;
use xshell::{Shell, cmd};

use crate::project_root;

#[derive(clap::Args)]
pub struct Args {
    /// The handler's name: lowercase letters, digits and `-`, starting with a letter. Also its
    /// crate name, component file name and the `handler:<name>@…` cause on its effects.
    name: String,
    /// The events it takes.
    #[arg(long, value_delimiter = ',', value_parser = parse_event, default_value = "order-created,status-updated")]
    events: Vec<EventKind>,
    /// The handlers workspace to add it to (default: handlers/).
    #[arg(long)]
    workspace: Option<PathBuf>,
}

/// An event as the manifest spells it.
fn parse_event(s: &str) -> Result<EventKind, String> {
    s.trim().parse()
}

pub fn run(sh: &Shell, args: &Args) -> anyhow::Result<()> {
    let name = args.name.as_str();
    check_name(name)?;
    let workspace = args.workspace.clone().unwrap_or_else(|| project_root().join("handlers"));
    if !workspace.join("sdk/Cargo.toml").is_file() {
        bail!("{} is not a handlers workspace (no sdk/ in it)", workspace.display());
    }
    let dir = workspace.join(name);
    if dir.exists() {
        bail!("{} already exists", dir.display());
    }
    let mut events = args.events.clone();
    events.sort();
    events.dedup();
    if events.is_empty() {
        bail!("--events needs at least one of order-created, status-updated");
    }
    let files = [
        ("Cargo.toml", cargo_toml(name, &events)),
        ("src/lib.rs", lib_rs(name, &events)),
        ("cases.json", cases_json(name, &events)),
    ];
    for (file, text) in &files {
        write_new(&dir.join(file), text)?;
    }
    format(sh, &dir.join("src/lib.rs"));
    println!("created {} ({})", dir.display(), files.map(|(f, _)| f).join(", "));
    println!("next: edit src/lib.rs and cases.json, then `cargo xtask handler-test {name}`");
    Ok(())
}

/// Cargo accepts more, but the name is also a file name, a Prometheus label value and part of
/// every effect's cause, so it stays in the set the host's upload route accepts.
fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = name.len() <= 48
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-');
    if !ok {
        bail!("handler name {name:?}: use 1-48 lowercase letters, digits and `-`, starting with a letter");
    }
    if matches!(name, "sdk" | "target" | "dispatcher") {
        bail!("handler name {name:?} is reserved");
    }
    Ok(())
}

/// Lays the generated code out as `cargo xtask lint` wants it (the repository's rustfmt.toml
/// applies), so a fresh crate passes the lint gate. Without rustfmt it is left as generated.
fn format(sh: &Shell, file: &Path) {
    if cmd!(sh, "rustfmt --edition 2024 {file}").quiet().run().is_err() {
        eprintln!("note: rustfmt did not run on {}; `cargo fmt` will lay it out", file.display());
    }
}

fn write_new(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(path.parent().context("no parent")?)?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn type_name(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map(|c| c.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_default()
        })
        .collect()
}

fn cargo_toml(name: &str, events: &[EventKind]) -> String {
    let events = events.iter().map(|e| format!("\"{e}\"")).collect::<Vec<_>>().join(", ");
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
description = "TODO: what {name} decides"
edition.workspace = true
license.workspace = true
publish.workspace = true

[lib]
crate-type = ["cdylib", "rlib"]

[dependencies]
sdk.workspace = true

[dev-dependencies]
sdk = {{ workspace = true, features = ["testing"] }}

# Read by `cargo xtask build-handlers` into the handlers manifest (handlers.toml).
[package.metadata.handler]
events = [{events}]
timeout-ms = 500
memory-limit-bytes = 16777216
config = {{}}

[lints]
workspace = true
"#
    )
}

fn lib_rs(name: &str, events: &[EventKind]) -> String {
    let ty = type_name(name);
    let mut methods = String::new();
    if events.contains(&EventKind::OrderCreated) {
        methods.push_str(&format!(
            r#"    fn on_order_created(_host: &dyn Host, _event: &EventMeta, order: &Order) -> HandlerResult {{
        Ok(vec![Action::log(LogLevel::Info, format!("{name} saw order {{}} created", order.order_number))])
    }}
"#
        ));
    }
    if events.contains(&EventKind::StatusUpdated) {
        if !methods.is_empty() {
            methods.push('\n');
        }
        methods.push_str(&format!(
            r#"    fn on_status_updated(_host: &dyn Host, _event: &EventMeta, update: &StatusUpdate) -> HandlerResult {{
        let (order, status) = (&update.order.order_number, update.current.as_str());
        Ok(vec![Action::log(LogLevel::Info, format!("{name} saw order {{order}} become {{status}}"))])
    }}
"#
        ));
    }
    let mut imports = vec!["Action", "EventMeta", "Handler", "HandlerResult", "Host", "LogLevel"];
    if events.contains(&EventKind::OrderCreated) {
        imports.push("Order");
    }
    if events.contains(&EventKind::StatusUpdated) {
        imports.push("StatusUpdate");
    }
    let imports = imports.join(", ");
    format!(
        r#"//! {name}: a handler. It receives the events its manifest lists (Cargo.toml,
//! `[package.metadata.handler]`) and returns actions the host applies in one transaction: set a
//! status (optionally after a delay), notify the customer, log. Its golden cases (cases.json) run
//! natively and through the built component with `cargo xtask handler-test {name}`.

use sdk::{{{imports}}};

pub struct {ty};

impl Handler for {ty} {{
{methods}}}

sdk::export_handler!({ty});

#[cfg(test)]
mod tests {{
    use super::*;

    #[test]
    fn golden_cases() {{
        sdk::check_cases!({ty});
    }}
}}
"#
    )
}

fn cases_json(name: &str, events: &[EventKind]) -> String {
    let mut cases = Vec::new();
    if events.contains(&EventKind::OrderCreated) {
        cases.push(format!(
            r#"  {{"event": "order-created", "status": "pending", "demo": false, "actions": ["log info {name} saw order MM-10042 created"]}}"#
        ));
    }
    if events.contains(&EventKind::StatusUpdated) {
        cases.push(format!(
            r#"  {{"event": "status-updated", "previous": "pending", "status": "processing", "demo": false, "actions": ["log info {name} saw order MM-10042 become processing"]}}"#
        ));
    }
    format!("[\n{}\n]\n", cases.join(",\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_anything_is_written() {
        for good in ["greeter", "fraud-check2", "a"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "Greeter", "2fa", "fraud_check", "x-", "sdk", "a/b", &"a".repeat(49)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert_eq!(type_name("fraud-check2"), "FraudCheck2");
    }
}
