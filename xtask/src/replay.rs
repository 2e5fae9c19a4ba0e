//! `cargo xtask replay --handler NAME --candidate PATH.wasm [--since DURATION]`: runs a candidate
//! component against the invocations the host's journal recorded for a handler (through `POST
//! /admin/handlers/{name}/replay`) and prints how many answers it would change, with the first
//! differences. A regression test against production traffic before anything is uploaded: it
//! exits non-zero when any answer differs or the candidate fails.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::admin_api::{Api, Body, text};

#[derive(clap::Args)]
pub struct Args {
    /// The handler whose recorded invocations are replayed.
    #[arg(long)]
    handler: String,
    /// The candidate component (`target/handlers/NAME.wasm` after `cargo xtask build-handlers`).
    #[arg(long)]
    candidate: PathBuf,
    /// How far back: `90s`, `30m`, `12h`, `7d` (default 24h).
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    since: Duration,
    /// Most invocations replayed, oldest first.
    #[arg(long, default_value_t = 1000)]
    limit: u32,
    /// Differences printed.
    #[arg(long, default_value_t = 5)]
    show: usize,
    /// The host (or the cluster's ingress).
    #[arg(long, env = "ORDER_HOST_URL", default_value = "http://127.0.0.1:8080")]
    base_url: String,
    /// The admin bearer token.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print the API's JSON instead of a summary.
    #[arg(long)]
    json: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n.parse().map_err(|_| format!("{s:?}: expected a number and a unit, e.g. 30m"))?;
    let scale = match unit {
        "s" | "" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => return Err(format!("{s:?}: unknown unit {other:?} (s, m, h or d)")),
    };
    let secs = n.checked_mul(scale).ok_or_else(|| format!("{s:?} is too long"))?;
    if secs == 0 {
        return Err("the duration must be at least 1s".into());
    }
    Ok(Duration::from_secs(secs))
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let bytes =
        std::fs::read(&args.candidate).with_context(|| format!("reading {}", args.candidate.display()))?;
    let api = Api::new(&args.base_url, args.token.clone())?;
    let query = [("since_secs", args.since.as_secs().to_string()), ("limit", args.limit.to_string())];
    let path = format!("/admin/handlers/{}/replay", args.handler);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let report = runtime.block_on(api.call(reqwest::Method::POST, &path, &query, Body::Wasm(bytes)))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_summary(&report, args.show);
    }
    verdict(&report, &args.handler)
}

/// Passes only when something was replayed and every answer matched: an empty window (journal
/// off, an unsampled handler, a `--since` too short) checked nothing and must not read as a pass.
fn verdict(report: &Value, handler: &str) -> anyhow::Result<()> {
    let (different, errors) = (report["different"].as_u64(), report["candidate_errors"].as_u64());
    if different != Some(0) || errors != Some(0) {
        bail!("the candidate answers differently from what was recorded");
    }
    if report["replayed"].as_u64().unwrap_or(0) == 0 {
        bail!(
            "nothing was replayed: the journal holds no answered invocation of {handler} in the window \
             (see JOURNAL_MODE and JOURNAL_SAMPLE_RATE, or widen --since), so nothing was checked"
        );
    }
    Ok(())
}

fn print_summary(r: &Value, show: usize) {
    println!(
        "{} candidate {}: {} recorded invocations replayed: {} identical, {} different, {} candidate errors, {} skipped",
        text(&r["handler"]),
        text(&r["candidate_version"]).get(..12).unwrap_or_default(),
        r["replayed"],
        r["identical"],
        r["different"],
        r["candidate_errors"],
        r["skipped"],
    );
    for d in r["diffs"].as_array().into_iter().flatten().take(show) {
        println!(
            "\n- invocation {} (order {}, event {}):",
            d["invocation_id"],
            text(&d["order_id"]),
            text(&d["event_id"])
        );
        println!("  recorded  {}", d["recorded"]);
        println!("  candidate {}", d["candidate"]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_a_unit() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(43_200)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5w").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("99999999999999999d").unwrap_err().contains("too long"));
    }

    #[test]
    fn only_a_replay_that_checked_something_and_matched_passes() {
        let report = |replayed: u64, different: u64, errors: u64| serde_json::json!({"replayed": replayed, "different": different, "candidate_errors": errors});
        assert!(verdict(&report(10, 0, 0), "notifier").is_ok());
        assert!(verdict(&report(10, 1, 0), "notifier").unwrap_err().to_string().contains("differently"));
        assert!(verdict(&report(10, 0, 1), "notifier").is_err());
        let empty = verdict(&report(0, 0, 0), "notifier").unwrap_err().to_string();
        assert!(empty.contains("nothing was replayed"), "{empty}");
    }
}
