//! A new handler as its author makes one: `cargo xtask new-handler` scaffolds it in a handlers
//! workspace, `cargo xtask handler-test` passes as generated (native tests, then the golden cases
//! through the built component), and a host loading the built directory runs an order through it.
//! The workspace is a copy (sdk, lock file, `wit/`), so the repository's own is never touched.

use std::path::Path;
use std::time::Duration;

use crate::support::service::*;
use crate::support::{metric_value, process, root};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        match entry.file_type().unwrap().is_dir() {
            true => copy_dir(&entry.path(), &dest),
            false => drop(std::fs::copy(entry.path(), dest).unwrap()),
        }
    }
}

/// Runs xtask and fails the test with its output unless it succeeds.
async fn xtask(args: &[&str]) -> String {
    let out = process::xtask(args).await;
    let text = process::text_of(&out);
    assert!(out.status.success(), "cargo xtask {} failed:\n{text}", args.join(" "));
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scaffolded_handler_passes_its_tests_and_handles_an_order() {
    let tmp = tempfile::tempdir().unwrap();
    let workspace = tmp.path().join("handlers");
    copy_dir(&root().join("handlers/sdk"), &workspace.join("sdk"));
    copy_dir(&root().join("wit"), &tmp.path().join("wit"));
    for file in ["Cargo.toml", "Cargo.lock"] {
        std::fs::copy(root().join("handlers").join(file), workspace.join(file)).unwrap();
    }
    let out = tmp.path().join("out");
    let (ws, out_arg) = (workspace.to_str().unwrap(), out.to_str().unwrap());

    xtask(&["new-handler", "greeter", "--events", "order-created", "--workspace", ws]).await;
    let refused = process::xtask(&["new-handler", "greeter", "--workspace", ws]).await;
    assert!(!refused.status.success(), "a second greeter is refused");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("already exists"));

    let tested = xtask(&["handler-test", "greeter", "--workspace", ws, "--out", out_arg]).await;
    assert!(tested.contains("greeter: 1 golden cases through the component, 0 differ"), "{tested}");
    let manifest = std::fs::read_to_string(out.join("handlers.toml")).unwrap();
    assert!(manifest.contains("name = \"greeter\""), "{manifest}");

    // Only the greeter is loaded: the order is created and the greeter answers its event.
    let t = TestHost::start_with(Some(&out), 3, &[]).await;
    let (code, order) = t.post("/api/orders", &order_body("scaffold@metalbear.com", &[("1", 1)])).await;
    assert_eq!(code, 201, "{order}");
    let series = r#"order_host_handler_events_total{handler="greeter",outcome="applied"}"#;
    eventually("the greeter to apply the order-created event", Duration::from_secs(30), || async {
        let text = t.get_text("/metrics").await;
        (metric_value(&text, series) == Some(1.0)).then_some(())
    })
    .await;
    t.host.shutdown().await.unwrap();
}
