//! Safe rollout: a shadow candidate runs beside the serving notifier on live orders and is only
//! compared: an identical one is promoted by its policy, one that answers differently is aborted
//! with the difference recorded, one that traps never touches the serving path. The invocation
//! journal records what each handler saw and answered, replay runs a candidate against it and
//! reports exactly the invocations it would change, and retention prunes the journal.

use std::time::Duration;

use crate::support::service::*;
use crate::support::{component, metric_value, root, versioned};
use serde_json::{Value, json};

const TOKEN: &str = "shadow-admin-token";
const SHIPPED: &[&str] = &["order-created", "status-updated"];

async fn start(extra: &[(&str, &str)]) -> (TestHost, tempfile::TempDir) {
    let dir = handlers_dir(&[("handlers", "order-processor", SHIPPED), ("handlers", "notifier", SHIPPED)]);
    let mut env = vec![("ADMIN_TOKEN", TOKEN), ("DEMO_MODE", "true"), ("HANDLERS_RESCAN_SECS", "3600")];
    env.extend_from_slice(extra);
    (TestHost::start_with(Some(dir.path()), 3, &env).await, dir)
}

async fn admin(t: &TestHost, method: reqwest::Method, path: &str, body: Option<Vec<u8>>) -> (u16, Value) {
    t.admin(TOKEN, method, path, body).await
}

async fn shadow(t: &TestHost) -> Value {
    let (code, body) = admin(t, reqwest::Method::GET, "/admin/handlers/notifier/shadow", None).await;
    assert_eq!(code, 200, "{body}");
    body
}

async fn place(t: &TestHost, email: &str) -> String {
    let (code, order) = t.post("/api/orders", &order_body(email, &[("3", 1)])).await;
    assert_eq!(code, 201, "{order}");
    order["id"].as_str().unwrap().to_string()
}

async fn status_of(t: &TestHost, id: &str) -> String {
    t.get(&format!("/api/orders/{id}")).await.1["status"].as_str().unwrap_or_default().to_string()
}

async fn until_status(t: &TestHost, id: &str, status: &str) {
    eventually(&format!("order {id} to be {status}"), Duration::from_secs(30), || async {
        (status_of(t, id).await == status).then_some(())
    })
    .await;
}

/// Waits for the order's four notifications (created, processing, confirmed, shipped).
async fn four_notifications(t: &TestHost, id: &str) {
    eventually(&format!("order {id}'s four notifications"), Duration::from_secs(20), || async {
        (subjects(t, id).await.len() >= 4).then_some(())
    })
    .await;
}

async fn subjects(t: &TestHost, id: &str) -> Vec<String> {
    let (_, n) = t.get(&format!("/api/orders/{id}/notifications")).await;
    n.as_array().unwrap().iter().map(|n| n["subject"].as_str().unwrap().to_string()).collect()
}

/// Places an order and cancels it at once, before the processor moves it on.
async fn place_and_cancel(t: &TestHost, email: &str) -> String {
    let id = place(t, email).await;
    let (code, body) = t.put(&format!("/api/orders/{id}/status"), &json!({"status": "cancelled"})).await;
    assert_eq!(code, 200, "cancelled before the processor moved it: {body}");
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identical_candidate_is_promoted_by_its_policy_and_nothing_is_applied_twice() {
    let (t, _dir) = start(&[]).await;
    let candidate = versioned(&component("handlers", "notifier"), "candidate");
    let sha = host::runtime::sha256_hex(&candidate);
    let path = "/admin/handlers/notifier?mode=shadow&promote_after=12&max_diff_rate=0&max_errors=0";
    let (code, started) = admin(&t, reqwest::Method::PUT, path, Some(candidate)).await;
    assert_eq!((code, started["state"].as_str()), (202, Some("running")), "{started}");

    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(place(&t, &format!("same{i}@metalbear.com")).await);
    }
    for id in &ids {
        until_status(&t, id, "shipped").await;
        four_notifications(&t, id).await;
    }
    let report = eventually("the policy to promote the candidate", Duration::from_secs(30), || async {
        let s = shadow(&t).await;
        (s["state"] == "promoted").then_some(s)
    })
    .await;
    assert_eq!(report["decided_by"], "policy", "{report}");
    assert!(report["compared"].as_u64().unwrap() >= 12, "{report}");
    assert_eq!((report["different"].as_u64(), report["candidate_errors"].as_u64()), (Some(0), Some(0)));
    let (_, list) = admin(&t, reqwest::Method::GET, "/admin/handlers", None).await;
    let notifier = list.as_array().unwrap().iter().find(|h| h["name"] == "notifier").unwrap();
    assert_eq!(notifier["current"]["version"], sha, "the candidate serves: {notifier}");
    assert_eq!(notifier["shadow"]["state"], "promoted");
    assert_eq!(notifier["previous"][0]["source"], "dir", "rollback returns to the old version");
    // The shadow ran on every event, and no answer of it was applied: one notification per stage.
    for id in &ids {
        assert_eq!(subjects(&t, id).await.len(), 4, "order {id}");
    }
    let text = t.get_text("/metrics").await;
    let decided = r#"order_host_shadow_decisions_total{handler="notifier",decision="promoted"}"#;
    assert_eq!(metric_value(&text, decided), Some(1.0), "{text}");
    t.host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_that_answers_differently_is_aborted_with_the_difference_recorded() {
    let (t, _dir) = start(&[]).await;
    let serving_before = admin(&t, reqwest::Method::GET, "/admin/handlers", None).await.1;
    let path = "/admin/handlers/notifier?mode=shadow&promote_after=1000&max_diff_rate=0";
    let (code, started) = admin(&t, reqwest::Method::PUT, path, Some(component("fixtures", "shouty"))).await;
    assert_eq!(code, 202, "{started}");

    let kept = place(&t, "kept@metalbear.com").await;
    until_status(&t, &kept, "shipped").await;
    assert_eq!(shadow(&t).await["state"], "running", "identical answers so far");
    let cancelled = place_and_cancel(&t, "cancel@metalbear.com").await;
    let report = eventually("the difference to abort the candidate", Duration::from_secs(30), || async {
        let s = shadow(&t).await;
        (s["state"] == "aborted").then_some(s)
    })
    .await;
    assert!(report["reason"].as_str().unwrap().contains("max_diff_rate=0"), "{report}");
    assert_eq!(report["different"], 1, "{report}");
    let diff = &report["diffs"][0];
    assert_eq!(diff["order_id"], cancelled.as_str(), "{diff}");
    assert_eq!(diff["input"]["status-updated"]["update"]["current"], "Cancelled", "{diff}");
    let subject =
        |side: &str| diff[side]["output"][0]["NotifyCustomer"]["subject"].as_str().unwrap().to_string();
    assert!(
        subject("serving").ends_with("cancelled") && subject("candidate").ends_with("CANCELLED"),
        "{diff}"
    );
    // The serving answer was applied, the candidate's never, and the serving version stands.
    eventually("the cancellation notice", Duration::from_secs(20), || async {
        subjects(&t, &cancelled).await.iter().any(|s| s.ends_with("cancelled")).then_some(())
    })
    .await;
    assert!(!subjects(&t, &cancelled).await.iter().any(|s| s.contains("CANCELLED")));
    let serving_after = admin(&t, reqwest::Method::GET, "/admin/handlers", None).await.1;
    let current = |list: &Value| {
        list.as_array().unwrap().iter().find(|h| h["name"] == "notifier").unwrap()["current"]["version"]
            .clone()
    };
    assert_eq!(current(&serving_before), current(&serving_after));
    t.host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapping_candidate_never_touches_the_serving_path() {
    let (t, _dir) = start(&[]).await;
    // Refusals first: a shadow needs a serving version, policy fields need mode=shadow.
    let panicker = component("fixtures", "panicker");
    let (code, body) =
        admin(&t, reqwest::Method::PUT, "/admin/handlers/nobody?mode=shadow", Some(panicker.clone())).await;
    assert_eq!((code, body["error"]["code"].as_str()), (409, Some("nothing_serving")), "{body}");
    let (code, body) =
        admin(&t, reqwest::Method::PUT, "/admin/handlers/notifier?promote_after=3", Some(panicker.clone()))
            .await;
    assert_eq!((code, body["error"]["code"].as_str()), (400, Some("invalid_query")), "{body}");
    let (code, _) = admin(&t, reqwest::Method::GET, "/admin/handlers/notifier/shadow", None).await;
    assert_eq!(code, 404);

    let (code, body) =
        admin(&t, reqwest::Method::PUT, "/admin/handlers/notifier?mode=shadow", Some(panicker)).await;
    assert_eq!(code, 202, "{body}");
    let ids = [place(&t, "a@metalbear.com").await, place(&t, "b@metalbear.com").await];
    for id in &ids {
        until_status(&t, id, "shipped").await;
        four_notifications(&t, id).await;
    }
    let report = eventually("both candidate traps to be counted", Duration::from_secs(20), || async {
        let s = shadow(&t).await;
        (s["candidate_errors"].as_u64() >= Some(2)).then_some(s)
    })
    .await;
    assert_eq!(report["state"], "running", "no policy: it runs until told: {report}");
    let trap = &report["diffs"][0]["candidate"];
    assert_eq!(trap["outcome"], "trap", "{report}");
    assert!(trap["output"].as_str().unwrap().contains("fixture panics on purpose"), "{report}");

    for id in &ids {
        assert_eq!(subjects(&t, id).await.len(), 4, "every serving notification, once: {id}");
    }
    let (code, dropped) = admin(&t, reqwest::Method::DELETE, "/admin/handlers/notifier/shadow", None).await;
    assert_eq!((code, dropped["state"].as_str()), (200, Some("dropped")), "{dropped}");
    let (code, body) =
        admin(&t, reqwest::Method::POST, "/admin/handlers/notifier/shadow/promote", None).await;
    assert_eq!((code, body["error"]["code"].as_str()), (409, Some("shadow_not_running")), "{body}");
    t.host.shutdown().await.unwrap();
}

/// A shadow is compared against the version it was started beside and no other: a new serving
/// version (here a hotfix uploaded meanwhile) aborts it, so its counts never mix two versions and
/// its policy never promotes it over the hotfix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_is_aborted_when_the_version_it_shadows_stops_serving() {
    let (t, _dir) = start(&[]).await;
    let notifier = component("handlers", "notifier");
    let path = "/admin/handlers/notifier?mode=shadow&promote_after=3&max_diff_rate=0";
    let (code, started) =
        admin(&t, reqwest::Method::PUT, path, Some(versioned(&notifier, "candidate"))).await;
    assert_eq!((code, started["state"].as_str()), (202, Some("running")), "{started}");

    let hotfix = versioned(&notifier, "hotfix");
    let hotfix_sha = host::runtime::sha256_hex(&hotfix);
    let (code, body) = admin(&t, reqwest::Method::PUT, "/admin/handlers/notifier", Some(hotfix)).await;
    assert_eq!(code, 200, "{body}");
    let report = shadow(&t).await;
    assert_eq!(report["state"], "aborted", "superseded as soon as it is read: {report}");
    assert!(report["reason"].as_str().unwrap().contains("stopped serving"), "{report}");

    // Orders flow on the hotfix; the aborted candidate is neither compared nor promoted.
    let id = place(&t, "hotfix@metalbear.com").await;
    until_status(&t, &id, "shipped").await;
    four_notifications(&t, &id).await;
    let after = shadow(&t).await;
    assert_eq!((after["state"].as_str(), after["compared"].as_u64()), (Some("aborted"), Some(0)), "{after}");
    let (_, list) = admin(&t, reqwest::Method::GET, "/admin/handlers", None).await;
    let serving = list.as_array().unwrap().iter().find(|h| h["name"] == "notifier").unwrap();
    assert_eq!(serving["current"]["version"], hotfix_sha, "the hotfix still serves: {serving}");
    let (code, body) =
        admin(&t, reqwest::Method::POST, "/admin/handlers/notifier/shadow/promote", None).await;
    assert_eq!((code, body["error"]["code"].as_str()), (409, Some("shadow_not_running")), "{body}");
    t.host.shutdown().await.unwrap();
}

/// A refused upload is answered even while the client is still sending a large body. The upload
/// routes used to answer a bad query or a missing serving version before reading the body, and
/// hyper then closed the connection under the client: it saw a broken pipe, not the refusal (CI
/// caught it once as a flake with the small panicker; 4 MiB outgrows any socket buffer, so here it
/// is certain).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upload_is_answered_while_its_body_is_still_being_sent() {
    let (t, _dir) = start(&[]).await;
    let large = || Some(vec![0u8; 4 << 20]);
    // 65 characters: a name the registry would refuse after compiling, refused up front instead.
    let long_name = format!("/admin/handlers/{}", "a".repeat(65));
    let refusals = [
        (reqwest::Method::PUT, long_name.as_str(), 400, "invalid_name"),
        (reqwest::Method::PUT, "/admin/handlers/notifier?promote_after=3", 400, "invalid_query"),
        (reqwest::Method::PUT, "/admin/handlers/nobody?mode=shadow", 409, "nothing_serving"),
        (reqwest::Method::PUT, "/admin/handlers/notifier?timeout_ms=soon", 400, "invalid_query"),
        (reqwest::Method::PUT, "/admin/handlers/notifier?mode=shadow&timeout_ms=50", 400, "invalid_query"),
        (
            reqwest::Method::PUT,
            "/admin/handlers/notifier?mode=shadow&events=order-created",
            400,
            "invalid_query",
        ),
        (reqwest::Method::PUT, "/admin/handlers/bad.name", 400, "invalid_name"),
        (reqwest::Method::POST, "/admin/handlers/notifier/replay?limit=0", 400, "invalid_query"),
        (
            reqwest::Method::POST,
            "/admin/handlers/notifier/replay?since_secs=99999999999",
            400,
            "invalid_query",
        ),
        (reqwest::Method::POST, "/admin/handlers/nobody/replay", 404, "handler_not_found"),
        (reqwest::Method::PUT, "/admin/handlers/notifier", 400, "invalid_component"),
    ];
    for (method, path, status, code) in refusals {
        let (got, body) = admin(&t, method.clone(), path, large()).await;
        assert_eq!((got, body["error"]["code"].as_str()), (status, Some(code)), "{method} {path}: {body}");
    }
    let (code, body) = admin(&t, reqwest::Method::GET, "/admin/handlers/notifier/shadow", None).await;
    assert_eq!(code, 404, "no refusal started a shadow: {body}");
    t.host.shutdown().await.unwrap();
}

/// A deadline the host cannot honour is refused at upload, naming it, and the serving version
/// stays. `timeout_ms=18446744073709551615` used to be accepted: its epoch ticks overflowed at the
/// first invocation (a panic in a debug build, a deadline of zero ticks in a release one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_with_a_deadline_above_the_cap_is_refused_and_the_old_version_serves() {
    let (t, _dir) = start(&[]).await;
    let serving = |list: Value| {
        let notifier = list.as_array().unwrap().iter().find(|h| h["name"] == "notifier").cloned();
        notifier.unwrap()["current"]["version"].clone()
    };
    let before = serving(admin(&t, reqwest::Method::GET, "/admin/handlers", None).await.1);
    let bytes = versioned(&component("handlers", "notifier"), "deadline-cap");
    for timeout in ["18446744073709551615", "60001"] {
        let path = format!("/admin/handlers/notifier?timeout_ms={timeout}");
        let (code, body) = admin(&t, reqwest::Method::PUT, &path, Some(bytes.clone())).await;
        assert_eq!((code, body["error"]["code"].as_str()), (400, Some("invalid_query")), "{path}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("timeout") && message.contains("60000"), "{path}: {body}");
    }
    let after = serving(admin(&t, reqwest::Method::GET, "/admin/handlers", None).await.1);
    assert_eq!(after, before, "the serving version is unchanged");
    let (code, body) =
        admin(&t, reqwest::Method::PUT, "/admin/handlers/notifier?timeout_ms=60000", Some(bytes)).await;
    assert_eq!(code, 200, "the cap itself is accepted: {body}");
    t.host.shutdown().await.unwrap();
}

/// Uploads and replays share the bound on components being received, compiled or run at once:
/// with two uploads still sending, a third upload and a replay are refused with 429, and once
/// those two end a replay runs. A replay used to take no place at all, so any number of them
/// could each buffer a component and compile it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_and_uploads_share_the_bound_on_concurrent_components() {
    let (t, _dir) = start(&[]).await;
    let bytes = versioned(&component("handlers", "notifier"), "bound");
    let mut senders = Vec::new();
    let mut pending = Vec::new();
    for _ in 0..host::http::admin::MAX_CONCURRENT_UPLOADS {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
        tx.send(Ok(bytes[..100].to_vec())).await.unwrap();
        let body = reqwest::Body::wrap_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
        let request = t.http.put(t.url("/admin/handlers/notifier")).bearer_auth(TOKEN).body(body);
        pending.push(tokio::spawn(request.send()));
        senders.push(tx);
    }
    // Both slow uploads hold their places once the host has started reading them: wait for that
    // in /metrics before asking for a third.
    eventually("two uploads in progress", Duration::from_secs(10), || async {
        let text = t.get_text("/metrics").await;
        (metric_value(&text, "order_host_admin_uploads_in_progress") == Some(2.0)).then_some(())
    })
    .await;
    let (code, busy) = admin(&t, reqwest::Method::PUT, "/admin/handlers/notifier", Some(bytes.clone())).await;
    assert_eq!(code, 429, "a third upload: {busy}");
    assert_eq!(busy["error"]["code"], "too_many_uploads", "{busy}");
    let (code, body) =
        admin(&t, reqwest::Method::POST, "/admin/handlers/notifier/replay", Some(bytes.clone())).await;
    assert_eq!((code, body["error"]["code"].as_str()), (429, Some("too_many_uploads")), "a replay: {body}");
    drop(senders);
    for upload in pending {
        let answer = upload.await.unwrap().expect("the cut-short upload is answered");
        assert_eq!(answer.status(), 400, "a truncated component is refused");
    }
    let (code, body) = admin(&t, reqwest::Method::POST, "/admin/handlers/notifier/replay", Some(bytes)).await;
    assert_eq!(code, 200, "with the places free a replay runs: {body}");
    t.host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_shows_what_each_handler_saw_and_replay_reports_exactly_the_changed_answers() {
    let (t, _dir) = start(&[("JOURNAL_MODE", "all")]).await;
    let shipped = [place(&t, "one@metalbear.com").await, place(&t, "two@metalbear.com").await];
    let cancelled = place_and_cancel(&t, "three@metalbear.com").await;
    for id in &shipped {
        until_status(&t, id, "shipped").await;
    }
    // Every notifier invocation of the three orders: created + 3 changes each for the shipped
    // ones, created + cancelled for the third.
    let journal = |id: String| {
        let t = &t;
        async move { admin(t, reqwest::Method::GET, &format!("/admin/orders/{id}/invocations"), None).await.1 }
    };
    let entries =
        eventually("the journal to hold every notifier invocation", Duration::from_secs(20), || async {
            let mut notifier = 0;
            for id in shipped.iter().chain([&cancelled]) {
                let j = journal(id.clone()).await;
                notifier += j.as_array().unwrap().iter().filter(|e| e["handler"] == "notifier").count();
            }
            (notifier == 10).then_some(notifier)
        })
        .await;
    let first = journal(shipped[0].clone()).await;
    let created = first.as_array().unwrap().iter().find(|e| e["handler"] == "order-processor").unwrap();
    assert_eq!(created["input"]["order-created"]["order"]["id"], shipped[0].as_str(), "{created}");
    assert_eq!(created["outcome"], "actions");
    assert_eq!(created["output"][0]["SetStatus"]["status"], "Processing", "{created}");
    assert_eq!(created["version"].as_str().map(str::len), Some(64));

    // Replay through the API: the same notifier changes nothing; shouty changes the cancellation.
    let same = versioned(&component("handlers", "notifier"), "same");
    let (code, r) = admin(&t, reqwest::Method::POST, "/admin/handlers/notifier/replay", Some(same)).await;
    assert_eq!(code, 200, "{r}");
    assert_eq!((r["replayed"].as_u64(), r["different"].as_u64()), (Some(entries as u64), Some(0)), "{r}");
    let (_, r) = admin(
        &t,
        reqwest::Method::POST,
        "/admin/handlers/notifier/replay",
        Some(component("fixtures", "shouty")),
    )
    .await;
    assert_eq!(
        (r["identical"].as_u64(), r["different"].as_u64()),
        (Some(entries as u64 - 1), Some(1)),
        "{r}"
    );
    assert_eq!(r["diffs"][0]["order_id"], cancelled.as_str(), "{r}");

    // And from a terminal: the summary, the difference, a failing exit code.
    let shouty = root().join("target/fixtures/shouty.wasm");
    let out = crate::support::process::xtask(&[
        "replay",
        "--handler",
        "notifier",
        "--candidate",
        shouty.to_str().unwrap(),
        "--since",
        "1h",
        "--base-url",
        &t.base,
        "--token",
        TOKEN,
    ])
    .await;
    let (ok, out) = (out.status.success(), crate::support::process::text_of(&out));
    assert!(!ok, "a changed answer fails the replay:\n{out}");
    assert!(out.contains(&format!("{} identical, 1 different", entries - 1)), "{out}");
    assert!(out.contains(&cancelled), "{out}");
    t.host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_retention_removes_old_entries() {
    let extra = [("JOURNAL_MODE", "all"), ("JOURNAL_RETENTION_SECS", "2"), ("RETENTION_INTERVAL_SECS", "1")];
    let (t, _dir) = start(&extra).await;
    let id = place(&t, "old@metalbear.com").await;
    until_status(&t, &id, "shipped").await;
    let path = format!("/admin/orders/{id}/invocations");
    let recorded = admin(&t, reqwest::Method::GET, &path, None).await.1;
    assert!(!recorded.as_array().unwrap().is_empty(), "recorded first: {recorded}");
    eventually("the retention pass to prune the order's journal", Duration::from_secs(20), || async {
        admin(&t, reqwest::Method::GET, &path, None).await.1.as_array().unwrap().is_empty().then_some(())
    })
    .await;
    let text = t.get_text("/metrics").await;
    let pruned = metric_value(&text, r#"order_host_retention_deleted_rows_total{table="invocations"}"#);
    assert!(pruned >= Some(recorded.as_array().unwrap().len() as f64), "{pruned:?}");
    t.host.shutdown().await.unwrap();
}
