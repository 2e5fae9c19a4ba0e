//! Dead letters an operator can act on, through the admin API on a host with the embedded broker:
//! a poison event is listed and inspected; after the handler is fixed by an upload, a redrive
//! applies the fixed version's effects once and the order ships; a second or concurrent redrive
//! changes nothing; a redrive of an order that moved on fails and stays open; one order's dead
//! letters redrive in the order they were consumed; a discard is final; bad input and missing
//! auth are 4xx with nothing changed.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::service::*;

const TOKEN: &str = "dead-letter-secret";
const SHIPPED: &[&str] = &["order-created", "status-updated"];

/// A host with the admin API on, DEMO_MODE, and a single attempt per handler so a failing
/// handler dead-letters at once.
async fn host(handlers: &[(&str, &str, &[&str])]) -> (TestHost, tempfile::TempDir) {
    let dir = handlers_dir(handlers);
    let extra = [("DEMO_MODE", "true"), ("ADMIN_TOKEN", TOKEN), ("DISPATCH_MAX_ATTEMPTS", "1")];
    (TestHost::start_with(Some(dir.path()), 3, &extra).await, dir)
}

async fn call(t: &TestHost, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut r = t.http.request(method, t.url(path)).bearer_auth(TOKEN);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.expect("admin request answered");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn upload(t: &TestHost, name: &str, bytes: Vec<u8>, events: &str) {
    let path = format!("/admin/handlers/{name}?events={events}");
    let (code, body) = t.admin(TOKEN, reqwest::Method::PUT, &path, Some(bytes)).await;
    assert_eq!(code, 200, "{body}");
}

/// The poison fixture serves as a broken order-processor: it fails `poison…` orders.
async fn break_order_processor(t: &TestHost) {
    upload(t, "order-processor", crate::support::component("fixtures", "poison"), "order-created").await;
}

/// The real order-processor serves again.
async fn fix_order_processor(t: &TestHost) {
    let real = crate::support::component("handlers", "order-processor");
    upload(t, "order-processor", real, "order-created,status-updated").await;
}

/// The open dead letters of `handler`, once there are `n` of them.
async fn open_letters(t: &TestHost, handler: &str, n: usize) -> Vec<Value> {
    eventually(&format!("{n} open dead letters of {handler}"), Duration::from_secs(30), || async {
        let (code, page) =
            call(t, reqwest::Method::GET, &format!("/admin/dead-letters?handler={handler}&state=open"), None)
                .await;
        assert_eq!(code, 200, "{page}");
        let items = page["items"].as_array()?.clone();
        (items.len() == n).then_some(items)
    })
    .await
}

async fn status_of(t: &TestHost, id: &str) -> String {
    t.get(&format!("/api/orders/{id}")).await.1["status"].as_str().unwrap_or_default().to_string()
}

async fn post_order(t: &TestHost, email: &str) -> String {
    let (code, o) = t.post("/api/orders", &order_body(email, &[("3", 1)])).await;
    assert_eq!(code, 201, "{o}");
    o["id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redrive_after_the_fix_ships_the_order_once_and_a_second_changes_nothing() {
    // The poison fixture serves as a broken order-processor: it fails `poison…` orders.
    let (t, _dir) = host(&[]).await;
    break_order_processor(&t).await;
    let id = post_order(&t, "poison@x.io").await;
    let letters = open_letters(&t, "order-processor", 1).await;
    let letter = letters[0]["id"].as_i64().unwrap();
    assert_eq!(
        (letters[0]["class"].as_str(), letters[0]["order_id"].as_str()),
        (Some("handler-error"), Some(id.as_str()))
    );

    let (code, detail) = call(&t, reqwest::Method::GET, &format!("/admin/dead-letters/{letter}"), None).await;
    assert_eq!(code, 200, "{detail}");
    assert_eq!(detail["event"]["type"], "order-created", "{detail}");
    assert_eq!(detail["event"]["order_id"], id.as_str());
    assert_eq!(detail["record"]["value"]["order_id"], id.as_str(), "the stored record decodes: {detail}");
    assert!(detail["dead_letter"]["reason"].as_str().unwrap().contains("cannot digest"), "{detail}");
    assert_eq!(status_of(&t, &id).await, "pending");

    // A redrive while the broken version still serves fails again and stays open.
    let (code, again) =
        call(&t, reqwest::Method::POST, &format!("/admin/dead-letters/{letter}/redrive"), None).await;
    assert_eq!((code, again["outcome"].as_str()), (200, Some("failed")), "{again}");
    assert_eq!(again["dead_letter"]["state"], "open");
    assert_eq!(again["dead_letter"]["failures"].as_array().map(Vec::len), Some(1), "{again}");

    fix_order_processor(&t).await;
    let (code, done) =
        call(&t, reqwest::Method::POST, &format!("/admin/dead-letters/{letter}/redrive"), None).await;
    assert_eq!((code, done["outcome"].as_str()), (200, Some("applied")), "{done}");
    assert_eq!(done["dead_letter"]["state"], "redriven");
    eventually("the redriven order to ship", Duration::from_secs(30), || async {
        (status_of(&t, &id).await == "shipped").then_some(())
    })
    .await;
    let (_, history) = t.get(&format!("/api/orders/{id}/history")).await;
    let steps: Vec<&str> =
        history.as_array().unwrap().iter().map(|h| h["to_status"].as_str().unwrap()).collect();
    assert_eq!(steps, ["pending", "processing", "confirmed", "shipped"], "each transition once");

    let (code, twice) =
        call(&t, reqwest::Method::POST, &format!("/admin/dead-letters/{letter}/redrive"), None).await;
    assert_eq!((code, twice["error"]["code"].as_str()), (409, Some("not_open")), "{twice}");
    let (_, history) = t.get(&format!("/api/orders/{id}/history")).await;
    assert_eq!(history.as_array().unwrap().len(), 4, "a second redrive changed something");

    let text = t.get_text("/metrics").await;
    assert!(text.contains("order_host_dead_letter_redrives_total{outcome=\"applied\"} 1"), "{text}");
    assert!(text.contains("order_host_dead_letter_redrives_total{outcome=\"failed\"} 1"), "{text}");
    assert!(!text.contains("order_host_dead_letters_open{"), "none open any more: {text}");
    t.host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_redrives_of_one_dead_letter_apply_once() {
    let (t, _dir) = host(&[]).await;
    break_order_processor(&t).await;
    let id = post_order(&t, "poison-race@x.io").await;
    let letter = open_letters(&t, "order-processor", 1).await[0]["id"].as_i64().unwrap();
    fix_order_processor(&t).await;

    let path = format!("/admin/dead-letters/{letter}/redrive");
    let (a, b) = tokio::join!(
        call(&t, reqwest::Method::POST, &path, None),
        call(&t, reqwest::Method::POST, &path, None)
    );
    let mut codes = [a.0, b.0];
    codes.sort_unstable();
    assert_eq!(codes, [200, 409], "one applies, the other finds it busy or redriven: {} {}", a.1, b.1);
    eventually("the order to ship", Duration::from_secs(30), || async {
        (status_of(&t, &id).await == "shipped").then_some(())
    })
    .await;
    let (_, history) = t.get(&format!("/api/orders/{id}/history")).await;
    assert_eq!(history.as_array().unwrap().len(), 4, "{history}");
    t.host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redrive_of_an_order_that_moved_on_fails_and_stays_open() {
    let (t, _dir) = host(&[]).await;
    break_order_processor(&t).await;
    let id = post_order(&t, "poison-late@x.io").await;
    let letter = open_letters(&t, "order-processor", 1).await[0]["id"].as_i64().unwrap();
    let (code, moved) = t.put(&format!("/api/orders/{id}/status"), &json!({"status": "cancelled"})).await;
    assert_eq!(code, 200, "{moved}");
    // The fix moves the order to processing at once, which a cancelled order can no longer do.
    upload(&t, "order-processor", crate::support::component("fixtures", "mover"), "order-created").await;

    let (code, r) =
        call(&t, reqwest::Method::POST, &format!("/admin/dead-letters/{letter}/redrive"), None).await;
    assert_eq!(
        (code, r["outcome"].as_str(), r["class"].as_str()),
        (200, Some("failed"), Some("refused-transition")),
        "{r}"
    );
    assert_eq!(r["dead_letter"]["state"], "open");
    let (_, history) = t.get(&format!("/api/orders/{id}/history")).await;
    assert_eq!(history.as_array().unwrap().len(), 2, "pending, cancelled and nothing else: {history}");
    assert!(r["reason"].as_str().unwrap_or_default().contains("cancelled"), "{r}");
    let (_, notes) = t.get(&format!("/api/orders/{id}/notifications")).await;
    assert_eq!(notes.as_array().map(Vec::len), Some(0), "the failed redrive's effects rolled back: {notes}");
    let (_, letter_now) =
        call(&t, reqwest::Method::GET, &format!("/admin/dead-letters/{letter}"), None).await;
    let failures = letter_now["dead_letter"]["failures"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        (failures.len(), failures[0]["class"].as_str()),
        (1, Some("refused-transition")),
        "{letter_now}"
    );
    t.host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_orders_dead_letters_redrive_in_consumed_order_in_bulk() {
    // The poison fixture as a broken notifier: the order's created event and two more created
    // records for the same order (other services' redeliveries under new ids) are dead-lettered
    // for it, while order-processor ships the order.
    let (t, _dir) = host(&[("handlers", "order-processor", SHIPPED)]).await;
    upload(&t, "notifier", crate::support::component("fixtures", "poison"), "order-created").await;
    let id = post_order(&t, "poison-bulk@x.io").await;
    open_letters(&t, "notifier", 1).await;
    let value = json!({"order_id": id}).to_string();
    for ce_id in ["again-1", "again-2"] {
        let headers = [("ce_type", "com.metalmart.order.created"), ("ce_id", ce_id)];
        produce(t.broker.bootstrap_servers(), "order.created", &id, &headers, value.as_bytes()).await;
    }
    let letters = open_letters(&t, "notifier", 3).await;
    let ids: Vec<i64> = letters.iter().map(|l| l["id"].as_i64().unwrap()).collect();

    let (code, early) =
        call(&t, reqwest::Method::POST, &format!("/admin/dead-letters/{}/redrive", ids[1]), None).await;
    assert_eq!((code, early["error"]["code"].as_str()), (409, Some("earlier_dead_letter_open")), "{early}");

    upload(&t, "notifier", crate::support::component("handlers", "notifier"), "order-created,status-updated")
        .await;
    let (code, bulk) =
        call(&t, reqwest::Method::POST, "/admin/dead-letters/redrive", Some(json!({"handler": "notifier"})))
            .await;
    assert_eq!((code, bulk["applied"].as_u64()), (200, Some(3)), "{bulk}");
    let order: Vec<i64> =
        bulk["items"].as_array().unwrap().iter().map(|i| i["id"].as_i64().unwrap()).collect();
    assert_eq!(order, ids, "in the order the events were consumed");
    open_letters(&t, "notifier", 0).await;
    t.host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discard_is_final_and_bad_requests_change_nothing() {
    let (t, _dir) = host(&[]).await;
    break_order_processor(&t).await;
    post_order(&t, "poison-discard@x.io").await;
    let letter = open_letters(&t, "order-processor", 1).await[0]["id"].as_i64().unwrap();
    let base = format!("/admin/dead-letters/{letter}");
    use reqwest::Method as M;

    for (method, path, body, code, error) in [
        (M::GET, "/admin/dead-letters?limit=0".to_string(), None, 400, "invalid_query"),
        (M::GET, "/admin/dead-letters?state=lost".to_string(), None, 400, "invalid_query"),
        (M::GET, "/admin/dead-letters?order_id=nope".to_string(), None, 400, "invalid_query"),
        // A year chrono parses but Postgres cannot store: the answer names the parameter.
        (M::GET, "/admin/dead-letters?since=-10000-01-01T00:00:00Z".to_string(), None, 400, "invalid_query"),
        (
            M::GET,
            "/admin/dead-letters?until=%2B300000-01-01T00:00:00Z".to_string(),
            None,
            400,
            "invalid_query",
        ),
        (M::GET, "/admin/dead-letters/abc".to_string(), None, 400, "invalid_id"),
        (M::GET, "/admin/dead-letters/999999".to_string(), None, 404, "dead_letter_not_found"),
        (M::POST, "/admin/dead-letters/999999/redrive".to_string(), None, 404, "dead_letter_not_found"),
        (M::POST, format!("{base}/discard"), Some(json!({"reason": "  "})), 400, "invalid_reason"),
        (M::POST, format!("{base}/discard"), Some(json!({"why": "x"})), 400, "invalid_body"),
        (
            M::POST,
            "/admin/dead-letters/999999/discard".to_string(),
            Some(json!({"reason": "x"})),
            404,
            "dead_letter_not_found",
        ),
    ] {
        let (got, answer) = call(&t, method.clone(), &path, body).await;
        assert_eq!((got, answer["error"]["code"].as_str()), (code, Some(error)), "{method} {path}: {answer}");
    }
    let (code, still) = call(&t, M::GET, &base, None).await;
    assert_eq!((code, still["dead_letter"]["state"].as_str()), (200, Some("open")), "{still}");

    let (code, gone) =
        call(&t, M::POST, &format!("{base}/discard"), Some(json!({"reason": "test order"}))).await;
    assert_eq!(
        (code, gone["state"].as_str(), gone["resolution"].as_str()),
        (200, Some("discarded"), Some("test order")),
        "{gone}"
    );
    for (path, body) in
        [(format!("{base}/redrive"), None), (format!("{base}/discard"), Some(json!({"reason": "again"})))]
    {
        let (code, answer) = call(&t, M::POST, &path, body).await;
        assert_eq!((code, answer["error"]["code"].as_str()), (409, Some("not_open")), "{path}: {answer}");
    }

    // Every dead-letter route wants the token.
    for (method, path) in [
        (M::GET, "/admin/dead-letters".to_string()),
        (M::GET, base.clone()),
        (M::POST, format!("{base}/redrive")),
        (M::POST, format!("{base}/discard")),
        (M::POST, "/admin/dead-letters/redrive".to_string()),
        (M::POST, "/admin/dead-letters/discard".to_string()),
    ] {
        let none = t.http.request(method.clone(), t.url(&path)).send().await.unwrap();
        assert_eq!(none.status(), 401, "{method} {path} without a token");
        let wrong = t.http.request(method.clone(), t.url(&path)).bearer_auth("nope").send().await.unwrap();
        assert_eq!(wrong.status(), 401, "{method} {path} with a wrong token");
    }
    t.host.shutdown().await.unwrap();

    // With the admin API off, the routes are not there.
    let off = TestHost::start().await;
    let r = off.http.get(off.url("/admin/dead-letters")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 404);
    off.host.shutdown().await.unwrap();
}

/// `cargo xtask dead-letters` against a live host: list (table and JSON), show, discard and
/// redrive, and its refusals. Runs the xtask binary that `cargo xtask test` has just built.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_xtask_cli_lists_shows_discards_and_redrives() {
    let (t, _dir) = host(&[]).await;
    break_order_processor(&t).await;
    let first = post_order(&t, "poison-cli1@x.io").await;
    let second = post_order(&t, "poison-cli2@x.io").await;
    let letters = open_letters(&t, "order-processor", 2).await;
    let id_of = |order: &str| {
        letters.iter().find(|l| l["order_id"] == order).unwrap()["id"].as_i64().unwrap().to_string()
    };
    let (one, two) = (id_of(&first), id_of(&second));
    let cli = |args: Vec<String>| {
        let base = t.base.clone();
        async move {
            let mut all = vec!["dead-letters"];
            all.extend(args.iter().map(String::as_str));
            all.extend(["--base-url", &base, "--token", TOKEN]);
            let out = crate::support::process::xtask(&all).await;
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            (out.status.success(), text(&out.stdout), text(&out.stderr))
        }
    };
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    let (ok, out, err) = cli(args(&["list", "--json"])).await;
    assert!(ok, "{err}");
    let page: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(page["items"].as_array().map(Vec::len), Some(2), "{page}");
    let (ok, out, _) = cli(args(&["list"])).await;
    assert!(ok && out.contains(&one) && out.contains(&second) && out.contains("handler-error"), "{out}");
    let (ok, out, _) = cli(args(&["show", &one])).await;
    assert!(ok && out.contains(&first) && out.contains("cannot digest"), "{out}");

    let (ok, out, err) = cli(args(&["discard", &one, "--reason", "a test order"])).await;
    assert!(ok && out.contains("discarded"), "{out} {err}");
    fix_order_processor(&t).await;
    let (ok, out, err) = cli(args(&["redrive", &two])).await;
    assert!(ok && out.contains("applied"), "{out} {err}");
    eventually("the redriven order to ship", Duration::from_secs(30), || async {
        (status_of(&t, &second).await == "shipped").then_some(())
    })
    .await;
    assert_eq!(status_of(&t, &first).await, "pending", "the discarded one was never applied");

    let (ok, _, err) = cli(args(&["redrive"])).await;
    assert!(!ok && err.contains("no id and no filter"), "{err}");
    let (ok, _, err) = cli(args(&["redrive", &one])).await;
    assert!(!ok && err.contains("not_open"), "{err}");
    let (ok, _, err) = cli(args(&["show", "999999"])).await;
    assert!(!ok && err.contains("dead_letter_not_found"), "{err}");
    t.host.shutdown().await.unwrap();
}
