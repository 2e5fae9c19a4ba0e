//! The OpenAPI document against the service it describes: schemathesis (installed by `cargo
//! xtask test`, path in `SCHEMATHESIS`) generates thousands of requests from `/api/openapi.json`,
//! valid and invalid, and every check must pass: no server error, every status code and response
//! body as documented, every request the document calls valid accepted and every invalid one
//! refused, and the stateful phase's links (an order placed, then read and moved).
//!
//! Seeded: `CONTRACT_SEED` replays a run; the seed is printed on failure.

use std::process::Command;
use std::time::Duration;

use crate::support::service::*;

const TOKEN: &str = "contract-admin-token";

/// Generated examples per operation and phase: about 3,000 requests in all, a minute here.
const MAX_EXAMPLES: &str = "60";

fn schemathesis() -> String {
    std::env::var("SCHEMATHESIS").unwrap_or_else(|_| "st".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_generated_request_gets_the_answer_the_openapi_document_promises() {
    let shipped: &[&str] = &["order-created", "status-updated"];
    let dir = handlers_dir(&[("handlers", "order-processor", shipped), ("handlers", "notifier", shipped)]);
    let extra = [("ADMIN_TOKEN", TOKEN), ("DEMO_MODE", "true")];
    let t = TestHost::start_with(Some(dir.path()), 3, &extra).await;
    let seed = std::env::var("CONTRACT_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or_else(|| rand::random::<u32>().into());
    let schema = t.url("/api/openapi.json");
    let auth = format!("Authorization: Bearer {TOKEN}");
    let seed_arg = seed.to_string();
    let config = crate::support::root().join("host/tests/it/schemathesis.toml");
    // schemathesis keeps a cache in its working directory: not in the repository.
    let scratch = tempfile::tempdir().unwrap();
    let cwd = scratch.path().to_path_buf();
    let run = tokio::task::spawn_blocking(move || {
        Command::new(schemathesis())
            .current_dir(cwd)
            .args(["--config-file"])
            .arg(&config)
            .args(["run", &schema, "--checks", "all", "--max-examples", MAX_EXAMPLES, "--seed", &seed_arg])
            .args(["--header", &auth, "--workers", "1", "--request-timeout", "10", "--no-color"])
            .env("NO_COLOR", "1")
            .output()
    });
    let out = tokio::time::timeout(Duration::from_secs(600), run)
        .await
        .expect("schemathesis finished within 10 minutes")
        .unwrap()
        .unwrap_or_else(|e| {
            panic!("{} did not run ({e}): run the tests with `cargo xtask test`", schemathesis())
        });
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "schemathesis found failures (CONTRACT_SEED={seed} replays them):\n{report}"
    );
    // A run that tested nothing would also exit 0.
    let generated = report
        .lines()
        .find_map(|l| l.trim().split_once(" generated").and_then(|(n, _)| n.trim().parse::<u64>().ok()))
        .unwrap_or_else(|| panic!("no test-case count in the report:\n{report}"));
    assert!(generated >= 1_000, "only {generated} test cases ran:\n{report}");
    t.host.shutdown().await.unwrap();
}
