//! `cargo xtask dead-letters list|show|redrive|discard`: the admin API's dead letters from a
//! terminal. The base URL and token come from flags or `ORDER_HOST_URL` / `ADMIN_TOKEN`; output is
//! a table, or the API's own JSON with `--json`. A bulk redrive or discard (no id) needs a filter
//! or `--all`, so an empty command line never touches every dead letter.

use anyhow::bail;
use serde_json::{Value, json};

use crate::admin_api::{Api, Body, text};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
    /// The host (or the cluster's ingress).
    #[arg(long, env = "ORDER_HOST_URL", default_value = "http://127.0.0.1:8080", global = true)]
    base_url: String,
    /// The admin bearer token.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(clap::Args, Default)]
struct Filters {
    #[arg(long)]
    handler: Option<String>,
    /// `x-dlq-class`, e.g. `trap` or `handler-error`.
    #[arg(long)]
    class: Option<String>,
    #[arg(long)]
    order_id: Option<String>,
}

impl Filters {
    fn is_empty(&self) -> bool {
        self.handler.is_none() && self.class.is_none() && self.order_id.is_none()
    }

    fn body(&self) -> Value {
        json!({"handler": self.handler, "class": self.class, "order_id": self.order_id})
    }
}

#[derive(clap::Subcommand)]
enum Command {
    /// Dead letters oldest first, with counts by handler and class.
    List {
        #[command(flatten)]
        filters: Filters,
        /// open, redriven or discarded (default: open).
        #[arg(long, default_value = "open")]
        state: String,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// `next_cursor` of the previous page.
        #[arg(long)]
        cursor: Option<i64>,
    },
    /// One dead letter with its record and the event it carries.
    Show { id: i64 },
    /// Run a dead letter (or every open one matching the filters) through its handler's serving
    /// version.
    Redrive {
        id: Option<i64>,
        #[command(flatten)]
        filters: Filters,
        /// Every open dead letter, when no filter is given.
        #[arg(long)]
        all: bool,
    },
    /// Close a dead letter (or every open one matching the filters) for good.
    Discard {
        id: Option<i64>,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        filters: Filters,
        #[arg(long)]
        all: bool,
    },
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: &Args) -> anyhow::Result<()> {
    let api = Api::new(&args.base_url, args.token.clone())?;
    match &args.command {
        Command::List { filters, state, limit, cursor } => {
            let mut query = vec![("state", state.clone()), ("limit", limit.to_string())];
            query.extend(filters.handler.clone().map(|h| ("handler", h)));
            query.extend(filters.class.clone().map(|c| ("class", c)));
            query.extend(filters.order_id.clone().map(|o| ("order_id", o)));
            query.extend(cursor.map(|c| ("cursor", c.to_string())));
            let page = api.call(reqwest::Method::GET, "/admin/dead-letters", &query, Body::None).await?;
            print(args.json, &page, print_page)
        }
        Command::Show { id } => {
            let detail =
                api.call(reqwest::Method::GET, &format!("/admin/dead-letters/{id}"), &[], Body::None).await?;
            print(args.json, &detail, |d| println!("{}", serde_json::to_string_pretty(d).unwrap_or_default()))
        }
        Command::Redrive { id: Some(id), .. } => {
            let r = api
                .call(reqwest::Method::POST, &format!("/admin/dead-letters/{id}/redrive"), &[], Body::None)
                .await?;
            print(args.json, &r, |r| {
                println!("{id}: {} {}", text(&r["outcome"]), text(&r["reason"]));
            })
        }
        Command::Redrive { id: None, filters, all } => {
            guard_bulk(filters, *all)?;
            let body = filters.body();
            let r =
                api.call(reqwest::Method::POST, "/admin/dead-letters/redrive", &[], Body::Json(body)).await?;
            print(args.json, &r, print_bulk)
        }
        Command::Discard { id: Some(id), reason, .. } => {
            let body = json!({"reason": reason});
            let path = format!("/admin/dead-letters/{id}/discard");
            let r = api.call(reqwest::Method::POST, &path, &[], Body::Json(body)).await?;
            print(args.json, &r, |r| println!("{id}: {}", text(&r["state"])))
        }
        Command::Discard { id: None, reason, filters, all } => {
            guard_bulk(filters, *all)?;
            let mut body = filters.body();
            body["reason"] = json!(reason);
            let r =
                api.call(reqwest::Method::POST, "/admin/dead-letters/discard", &[], Body::Json(body)).await?;
            print(args.json, &r, |r| println!("discarded {}", r["discarded"]))
        }
    }
}

fn guard_bulk(filters: &Filters, all: bool) -> anyhow::Result<()> {
    if filters.is_empty() && !all {
        bail!(
            "no id and no filter: name a dead letter, filter with --handler/--class/--order-id, or pass --all"
        );
    }
    Ok(())
}

fn print(as_json: bool, value: &Value, table: impl Fn(&Value)) -> anyhow::Result<()> {
    if as_json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        table(value);
    }
    Ok(())
}

/// A JSON value as plain text: strings without quotes, null as nothing.
fn print_page(page: &Value) {
    println!("{:>6}  {:<9}  {:<16}  {:<16}  {:<36}  reason", "id", "state", "handler", "class", "order");
    for d in page["items"].as_array().into_iter().flatten() {
        let reason: String = text(&d["reason"]).chars().take(60).collect();
        println!(
            "{:>6}  {:<9}  {:<16}  {:<16}  {:<36}  {reason}",
            text(&d["id"]),
            text(&d["state"]),
            text(&d["handler"]),
            text(&d["class"]),
            text(&d["order_id"]),
        );
    }
    for c in page["counts"].as_array().into_iter().flatten() {
        println!("{:>6} × {} / {}", text(&c["count"]), text(&c["handler"]), text(&c["class"]));
    }
    if let Some(next) = page["next_cursor"].as_i64() {
        println!("more: --cursor {next}");
    }
}

fn print_bulk(r: &Value) {
    for item in r["items"].as_array().into_iter().flatten() {
        println!("{:>6}  {:<8}  {}", text(&item["id"]), text(&item["outcome"]), text(&item["error"]));
    }
    println!("applied {}, failed {}, refused {}", r["applied"], r["failed"], r["refused"]);
}
