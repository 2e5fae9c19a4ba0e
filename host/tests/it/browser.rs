//! The storefront in a real browser: headless Chromium, driven by playwright-core
//! (`tests/browser/storefront.mjs`), places an order through the UI against a host running the
//! real handlers, follows the tracking link and watches the status bar reach `shipped` live. The
//! screenshot is kept at `target/browser/storefront-shipped.png`.
//!
//! Needs Node.js, `npm ci` in `tests/browser/` and Chromium (`/usr/bin/chromium`, or `CHROMIUM`);
//! `cargo xtask test` and `.ci/run` provide them.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::support::service::*;
use serde_json::{Value, json};

/// Stages long enough that the tracking page is open before the order ships, so the bar is seen
/// moving rather than arriving finished.
const STAGE_DELAYS_MS: &str = "800,800,800";

fn handlers_with_visible_stages() -> tempfile::TempDir {
    const BOTH: &[&str] = &["order-created", "status-updated"];
    let stages = format!("STAGE_DELAYS_MS = {STAGE_DELAYS_MS:?}");
    handlers_dir_configured(&[
        ("handlers", "order-processor", BOTH, &stages),
        ("handlers", "notifier", BOTH, ""),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_placed_in_the_storefront_is_tracked_live_to_shipped() {
    let dir = handlers_with_visible_stages();
    let t = TestHost::start_with(Some(dir.path()), 3, &[]).await;
    let screenshot: PathBuf = crate::support::root().join("target/browser/storefront-shipped.png");
    std::fs::create_dir_all(screenshot.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(&screenshot);

    let seen = drive("storefront.mjs", vec![t.base.clone(), screenshot.display().to_string()]).await;

    // The bar moved while the page was open, forwards only, and ended at shipped.
    let steps = ["pending", "processing", "confirmed", "shipped"];
    let statuses: Vec<&str> = seen["seen"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    assert_eq!(statuses.last(), Some(&"shipped"), "{seen}");
    assert!(statuses.len() >= 2, "the page only ever showed {statuses:?}: it did not move live");
    let positions: Vec<usize> = statuses.iter().map(|s| steps.iter().position(|x| x == s).unwrap()).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "the bar went backwards: {statuses:?}");
    assert_eq!(seen["doneSteps"], 4, "{seen}");
    assert_eq!(seen["notifications"].as_array().unwrap().len(), 4, "{seen}");
    assert_eq!(seen["badgeHidden"], true, "processed in the cluster, not a mirrord session");

    // The cart total the page showed is the catalogue's: 1 × product 1 + 2 × product 5.
    let price = |p: Value| p["price"].as_f64().unwrap();
    let total = price(t.get("/api/products/1").await.1) + 2.0 * price(t.get("/api/products/5").await.1);
    assert_eq!(seen["cartTotal"], format!("${total:.2}"));

    // The order exists as the form described it, and shipped.
    let number = seen["orderNumber"].as_str().unwrap();
    let (_, orders) = t.get("/api/orders?email=browser@metalbear.com").await;
    let orders = orders.as_array().unwrap();
    assert_eq!(orders.len(), 1, "{orders:?}");
    assert_eq!(orders[0]["order_number"], number);
    assert_eq!(orders[0]["status"], "shipped");
    assert_eq!(orders[0]["customer_name"], "Browser Bear");
    assert_eq!(orders[0]["shipping_address"]["city"], "Tel Aviv");

    let png = std::fs::read(&screenshot).expect("the screenshot was written");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{} bytes", png.len());
    eventually("nothing left to publish", Duration::from_secs(5), || async {
        (t.count("outbox WHERE published_at IS NULL").await == 0).then_some(())
    })
    .await;
}

/// The operator console in a real browser: a poison order's dead letter is listed, inspected and,
/// once the fixed handler version is uploaded, redriven from the page; the order then ships.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_is_inspected_and_redriven_from_the_console() {
    const TOKEN: &str = "console-token";
    let t = TestHost::start_with(
        None,
        3,
        &[("ADMIN_TOKEN", TOKEN), ("DEMO_MODE", "true"), ("DISPATCH_MAX_ATTEMPTS", "1")],
    )
    .await;
    let upload = |fixture: (&'static str, &'static str), events: &'static str| {
        let t = &t;
        async move {
            let path = format!("/admin/handlers/order-processor?events={events}");
            let bytes = crate::support::component(fixture.0, fixture.1);
            let (code, body) = t.admin(TOKEN, reqwest::Method::PUT, &path, Some(bytes)).await;
            assert_eq!(code, 200, "{body}");
        }
    };
    upload(("fixtures", "poison"), "order-created").await;
    let (_, order) = t.post("/api/orders", &order_body("poison-console@x.io", &[("2", 1)])).await;
    let id = order["id"].as_str().unwrap().to_string();
    eventually("the poison order's dead letter", Duration::from_secs(30), || async {
        (t.count("dead_letters WHERE state = 'open'").await == 1).then_some(())
    })
    .await;
    upload(("handlers", "order-processor"), "order-created,status-updated").await;

    let seen = drive("console.mjs", vec![t.base.clone(), TOKEN.to_string(), id.clone()]).await;
    assert_eq!(seen["refused"], "That token was refused.", "{seen}");
    assert_eq!(seen["urlHasToken"], false, "the token never goes into the URL");
    assert_eq!(seen["handlerVersion"].as_str().map(str::len), Some(12), "{seen}");
    assert!(seen["reason"].as_str().unwrap_or_default().contains("cannot digest"), "{seen}");
    assert_eq!(seen["recordOrder"], id.as_str(), "{seen}");
    assert_eq!(
        (seen["outcome"].as_str(), seen["redriveDisabled"].as_bool()),
        (Some("applied"), Some(true)),
        "{seen}"
    );
    eventually("the redriven order to ship", Duration::from_secs(30), || async {
        (t.get(&format!("/api/orders/{id}")).await.1["status"] == "shipped").then_some(())
    })
    .await;
    t.host.shutdown().await.unwrap();
}

/// The console's shadow view in a real browser: a candidate that answers a cancellation
/// differently shows its counts and the difference and is aborted with a click; an identical one
/// of another handler is promoted with a click and serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_candidates_are_inspected_aborted_and_promoted_from_the_console() {
    const TOKEN: &str = "console-token";
    let shipped: &[&str] = &["order-created", "status-updated"];
    let dir = handlers_dir(&[("handlers", "order-processor", shipped), ("handlers", "notifier", shipped)]);
    let t = TestHost::start_with(Some(dir.path()), 3, &[("ADMIN_TOKEN", TOKEN), ("DEMO_MODE", "true")]).await;
    let shadow = |name: &'static str, bytes: Vec<u8>| {
        let t = &t;
        async move {
            let path = format!("/admin/handlers/{name}?mode=shadow");
            let (code, body) = t.admin(TOKEN, reqwest::Method::PUT, &path, Some(bytes)).await;
            assert_eq!(code, 202, "{body}");
        }
    };
    shadow("notifier", crate::support::component("fixtures", "shouty")).await;
    let identical =
        crate::support::versioned(&crate::support::component("handlers", "order-processor"), "next");
    let next = host::runtime::sha256_hex(&identical);
    shadow("order-processor", identical).await;
    let (_, order) = t.post("/api/orders", &order_body("shadow-console@x.io", &[("2", 1)])).await;
    let id = order["id"].as_str().unwrap().to_string();
    let (code, _) = t.put(&format!("/api/orders/{id}/status"), &json!({"status": "cancelled"})).await;
    assert_eq!(code, 200);
    eventually("the candidate's difference on the cancellation", Duration::from_secs(30), || async {
        let (_, shadow) = t.admin(TOKEN, reqwest::Method::GET, "/admin/handlers/notifier/shadow", None).await;
        (shadow["different"] == 1).then_some(())
    })
    .await;

    let screenshot = crate::support::root().join("target/browser/console-shadow.png");
    std::fs::create_dir_all(screenshot.parent().unwrap()).unwrap();
    let seen =
        drive("shadow.mjs", vec![t.base.clone(), TOKEN.to_string(), screenshot.display().to_string()]).await;
    assert!(seen["shadowCell"].as_str().unwrap().starts_with("running:"), "{seen}");
    assert_eq!(seen["different"], "1", "{seen}");
    assert!(seen["serving"].as_str().unwrap().contains("cancelled"), "{seen}");
    assert!(seen["candidate"].as_str().unwrap().contains("CANCELLED"), "{seen}");
    assert_eq!(
        (seen["aborted"].as_str(), seen["abortDisabled"].as_bool()),
        (Some("aborted"), Some(true)),
        "{seen}"
    );
    assert_eq!(seen["candidateVersion"], &next[..12], "{seen}");
    assert_eq!(seen["promoted"], "promoted: it serves now", "{seen}");
    assert_eq!(
        (seen["before"] != seen["after"], seen["after"].as_str()),
        (true, Some(&next[..12])),
        "{seen}"
    );
    t.host.shutdown().await.unwrap();
}

/// Runs `script` (in `host/tests/browser/`) with playwright-core and headless Chromium, and
/// returns the JSON line it prints last; fails with its output when it fails.
async fn drive(script: &'static str, args: Vec<String>) -> Value {
    let browser_dir = crate::support::root().join("host/tests/browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed: run `npm ci --prefix host/tests/browser` (cargo xtask test does)"
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "no Chromium at {chromium}: install Debian's `chromium` package (.ci/run does) or set CHROMIUM"
    );
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(browser_dir.join(script))
            .args(&args)
            .env("CHROMIUM", &chromium)
            .output()
            .expect("node runs (Node.js is needed for the browser test)")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the browser run of {script} failed:\n{stderr}\n{stdout}");
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("no result line from {script} ({e}):\n{stdout}\n{stderr}"))
}
