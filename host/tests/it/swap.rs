//! Swapping handlers at runtime, through the admin API and through `HANDLERS_DIR`: under a steady
//! stream of orders nothing is lost or applied twice and events after a swap see the new version;
//! broken components and half-written files are refused while the old version keeps serving; the
//! Kubernetes ConfigMap `..data` swap is picked up; and the admin API's auth.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::support::service::*;
use crate::support::{component, logs, versioned};
use serde_json::{Value, json};

const TOKEN: &str = "s3cret-admin-token";

fn sha(bytes: &[u8]) -> String {
    host::runtime::sha256_hex(bytes)
}

/// A handlers directory whose manifest pins `notifier` (order-created only) to `bytes`.
fn write_notifier(dir: &Path, bytes: &[u8]) {
    // Write-then-rename for both files, component first, as `deploy-handlers` output is applied.
    let tmp = dir.join(".notifier.wasm.tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, dir.join("notifier.wasm")).unwrap();
    let manifest = format!(
        "[[handler]]\nname = \"notifier\"\nfile = \"notifier.wasm\"\nsha256 = \"{}\"\nevents = [\"order-created\"]\n",
        sha(bytes)
    );
    let tmp = dir.join(".handlers.toml.tmp");
    std::fs::write(&tmp, manifest).unwrap();
    std::fs::rename(&tmp, dir.join("handlers.toml")).unwrap();
}

async fn admin(t: &TestHost, method: reqwest::Method, path: &str, body: Option<Vec<u8>>) -> (u16, Value) {
    t.admin(TOKEN, method, path, body).await
}

/// Rolls `notifier` back and checks it now serves `bytes`.
async fn rollback_to(t: &TestHost, bytes: &[u8]) {
    let (code, body) = admin(t, reqwest::Method::POST, "/admin/handlers/notifier/rollback", None).await;
    assert_eq!((code, body["current"]["version"].as_str()), (200, Some(sha(bytes).as_str())), "{body}");
}

async fn serving(t: &TestHost, name: &str) -> Option<String> {
    let (code, list) = admin(t, reqwest::Method::GET, "/admin/handlers", None).await;
    assert_eq!(code, 200, "{list}");
    list.as_array()?.iter().find(|h| h["name"] == name)?["current"]["version"].as_str().map(str::to_string)
}

async fn wait_serving(t: &TestHost, name: &str, version: &str) {
    eventually(&format!("{name} to serve {}", &version[..12]), Duration::from_secs(20), || async {
        (serving(t, name).await.as_deref() == Some(version)).then_some(())
    })
    .await;
}

/// The short version the notifier's notification for `order` was caused by.
async fn notified_by(t: &TestHost, order: &str) -> Option<String> {
    let (_, n) = t.get(&format!("/api/orders/{order}/notifications")).await;
    let cause = n.as_array()?.first()?["cause"].as_str()?.to_string();
    cause.strip_prefix("handler:notifier@").map(str::to_string)
}

/// Orders placed by a test's stream, with when each POST was sent.
type Placed = std::sync::Mutex<Vec<(String, chrono::DateTime<chrono::Utc>)>>;

/// Orders sent within a phase before it may end, and how many of them must have been handled by
/// then: enough events wholly inside the phase to check its version.
const PHASE_ORDERS: usize = 25;
const PHASE_HANDLED: i64 = 10;

/// Lets the phase begun at `from` run: for 1.5 s, and on until `PHASE_ORDERS` orders were sent in
/// it and `PHASE_HANDLED` of them notified. A fixed 1.5 s could leave a phase on a loaded machine
/// with too few events inside it to check.
async fn settle(t: &TestHost, placed: &Placed, from: chrono::DateTime<chrono::Utc>) {
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let what = format!("{PHASE_ORDERS} orders sent in the phase and {PHASE_HANDLED} of them notified");
    eventually(&what, Duration::from_secs(60), || {
        let ids: Vec<uuid::Uuid> = placed
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, sent)| *sent >= from)
            .map(|(id, _)| id.parse().unwrap())
            .collect();
        async move {
            let (handled,): (i64,) =
                sqlx::query_as("SELECT count(*) FROM notifications WHERE order_id = ANY($1)")
                    .bind(&ids)
                    .fetch_one(t.pool())
                    .await
                    .unwrap();
            (ids.len() >= PHASE_ORDERS && handled >= PHASE_HANDLED).then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_swap_under_load_through_the_api_and_the_directory_without_loss_or_duplicates() {
    use chrono::{DateTime, Utc};
    let v1 = component("handlers", "notifier");
    let v2 = versioned(&v1, "v2");
    let dir = tempfile::tempdir().unwrap();
    write_notifier(dir.path(), &v1);
    let extra = [("ADMIN_TOKEN", TOKEN), ("HANDLERS_RESCAN_SECS", "3600")];
    let t = Arc::new(TestHost::start_with(Some(dir.path()), 3, &extra).await);
    wait_serving(&t, "notifier", &sha(&v1)).await;
    // The consumer has joined its group and is applying events before the clock starts.
    let (_, first) = t.post("/api/orders", &order_body("first@x.io", &[("7", 1)])).await;
    let first = first["id"].as_str().unwrap().to_string();
    eventually("the first order's notification", Duration::from_secs(30), || notified_by(&t, &first)).await;
    // A shadow candidate runs beside the notifier until the first swap below, which aborts it (a
    // shadow is compared against the version it was started beside only): the guarantees hold
    // with it running and through its abort, and it never adds an effect.
    let candidate = versioned(&v1, "shadow");
    let (code, body) =
        admin(&t, reqwest::Method::PUT, "/admin/handlers/notifier?mode=shadow", Some(candidate)).await;
    assert_eq!(code, 202, "{body}");

    // Each phase: the version serving, from the swap's acknowledgement until the next swap is
    // requested.
    struct Phase {
        version: String,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
    }
    let mut phases = vec![Phase { version: sha(&v1), from: Utc::now(), until: DateTime::<Utc>::MAX_UTC }];
    let swapped = |phases: &mut Vec<Phase>, requested: DateTime<Utc>, version: &[u8]| {
        phases.last_mut().unwrap().until = requested;
        phases.push(Phase { version: sha(version), from: Utc::now(), until: DateTime::<Utc>::MAX_UTC });
    };

    // A steady stream of orders, each stamped with when its POST was sent.
    let stop = Arc::new(AtomicBool::new(false));
    let placed: Arc<Placed> = Arc::default();
    let stream = tokio::spawn({
        let (t, stop, placed) = (t.clone(), stop.clone(), placed.clone());
        async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let sent = Utc::now();
                let (code, o) =
                    t.post("/api/orders", &order_body(&format!("swap{i}@x.io"), &[("7", 1)])).await;
                assert_eq!(code, 201, "{o}");
                placed.lock().unwrap().push((o["id"].as_str().unwrap().to_string(), sent));
                i += 1;
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        }
    });

    settle(&t, &placed, phases.last().unwrap().from).await;
    let requested = Utc::now();
    let (code, body) = admin(&t, reqwest::Method::PUT, "/admin/handlers/notifier", Some(v2.clone())).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        (body["current"]["version"].as_str(), body["current"]["source"].as_str()),
        (Some(sha(&v2).as_str()), Some("upload"))
    );
    assert_eq!(
        body["current"]["events"],
        serde_json::json!(["order-created"]),
        "the upload inherits the manifest's events"
    );
    swapped(&mut phases, requested, &v2);

    settle(&t, &placed, phases.last().unwrap().from).await;
    let requested = Utc::now();
    rollback_to(&t, &v1).await;
    swapped(&mut phases, requested, &v1);

    settle(&t, &placed, phases.last().unwrap().from).await;
    let requested = Utc::now();
    write_notifier(dir.path(), &v2);
    wait_serving(&t, "notifier", &sha(&v2)).await;
    swapped(&mut phases, requested, &v2);

    settle(&t, &placed, phases.last().unwrap().from).await;
    let requested = Utc::now();
    rollback_to(&t, &v1).await;
    swapped(&mut phases, requested, &v1);

    settle(&t, &placed, phases.last().unwrap().from).await;
    stop.store(true, Ordering::Relaxed);
    stream.await.unwrap();
    let placed = std::mem::take(&mut *placed.lock().unwrap());
    assert!(placed.len() > 100, "only {} orders were placed during the swaps", placed.len());

    let all = placed.len() as i64 + 1;
    eventually("every order's notification", Duration::from_secs(30), || async {
        (t.count("notifications").await == all).then_some(())
    })
    .await;
    let (rows, events): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT event_id) FROM processed_events WHERE handler = 'notifier'",
    )
    .fetch_one(t.pool())
    .await
    .unwrap();
    assert_eq!((rows, events), (all, all), "every event handled exactly once");

    // An event dispatched wholly inside one phase (sent after the swap was acknowledged, applied
    // before the next was requested) must carry that phase's version.
    let applied: Vec<(String, DateTime<Utc>, String)> = sqlx::query_as(
        "SELECT n.order_id::text, p.processed_at, n.cause FROM notifications n
         JOIN processed_events p ON p.handler = 'notifier' AND p.event_id = n.event_id",
    )
    .fetch_all(t.pool())
    .await
    .unwrap();
    let mut inside = vec![0; phases.len()];
    for (id, sent) in &placed {
        let (_, at, cause) =
            applied.iter().find(|(o, ..)| o == id).unwrap_or_else(|| panic!("order {id} was not notified"));
        let short = cause.strip_prefix("handler:notifier@").unwrap_or_else(|| panic!("cause {cause}"));
        assert!(sha(&v1).starts_with(short) || sha(&v2).starts_with(short), "unknown version {cause}");
        if let Some(k) = phases.iter().position(|p| p.from <= *sent && *at < p.until) {
            assert!(
                phases[k].version.starts_with(short),
                "order {id}, sent and applied in phase {k}, was handled by {short}"
            );
            inside[k] += 1;
        }
    }
    assert!(
        inside.iter().all(|n| *n > 5),
        "too few events fell inside a phase to check each swap: {inside:?}"
    );

    let (_, shadow) = admin(&t, reqwest::Method::GET, "/admin/handlers/notifier/shadow", None).await;
    assert_eq!(shadow["state"], "aborted", "{shadow}");
    assert!(shadow["reason"].as_str().unwrap().contains("stopped serving"), "{shadow}");
    assert!(shadow["compared"].as_u64().unwrap() > 5, "it compared the stream's events: {shadow}");
    assert_eq!((shadow["different"].as_u64(), shadow["candidate_errors"].as_u64()), (Some(0), Some(0)));

    let (code, list) = admin(&t, reqwest::Method::GET, "/admin/handlers", None).await;
    assert_eq!(code, 200);
    let n = &list[0];
    assert_eq!(n["current"]["source"], "dir", "a rollback returns to the earlier version as it was: {n}");
    assert!(n["current"]["invocations"].as_u64().unwrap() > 0, "{n}");
    assert!(n["current"]["p99_ms"].as_f64().is_some(), "{n}");
    Arc::into_inner(t).expect("the stream task is done").host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_uploads_and_files_are_refused_with_the_reason_and_the_old_version_keeps_serving() {
    logs::capture();
    let v1 = component("handlers", "notifier");
    let dir = tempfile::tempdir().unwrap();
    write_notifier(dir.path(), &v1);
    let t = TestHost::start_with(
        Some(dir.path()),
        3,
        &[("ADMIN_TOKEN", TOKEN), ("HANDLERS_RESCAN_SECS", "3600")],
    )
    .await;
    wait_serving(&t, "notifier", &sha(&v1)).await;

    let refused = [
        (b"definitely not wasm".to_vec(), "not a WebAssembly component"),
        (component("fixtures", "half-world"), "does not export `on-status-updated`"),
        (v1[..v1.len() / 2].to_vec(), "compiling the component"),
        (Vec::new(), "the body is empty"),
    ];
    for (bytes, reason) in refused {
        let (code, body) = admin(&t, reqwest::Method::PUT, "/admin/handlers/notifier", Some(bytes)).await;
        assert_eq!((code, body["error"]["code"].as_str()), (400, Some("invalid_component")), "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains(reason), "{reason:?} not in {body}");
    }
    let (code, body) =
        admin(&t, reqwest::Method::PUT, "/admin/handlers/notifier?events=order-shipped", Some(v1.clone()))
            .await;
    assert_eq!((code, body["error"]["code"].as_str()), (400, Some("invalid_query")), "{body}");
    let (code, body) = admin(&t, reqwest::Method::PUT, "/admin/handlers/bad%20name", Some(v1.clone())).await;
    assert_eq!((code, body["error"]["code"].as_str()), (400, Some("invalid_name")), "{body}");
    assert_eq!(serving(&t, "notifier").await, Some(sha(&v1)));

    // A file that does not match the manifest's sha256 (a half-written or stale file).
    std::fs::write(dir.path().join("notifier.wasm"), &v1[..1000]).unwrap();
    eventually("the mismatching file to be rejected", Duration::from_secs(20), || async {
        let rejected = logs::logged(|l| {
            l.message.contains("handler rejected")
                && l.fields
                    .get("problem")
                    .is_some_and(|p| p.contains(&dir.path().display().to_string()) && p.contains("sha256"))
        });
        (!rejected.is_empty()).then_some(())
    })
    .await;
    assert_eq!(serving(&t, "notifier").await, Some(sha(&v1)), "the old version keeps serving");
    let (_, o) = t.post("/api/orders", &order_body("still@x.io", &[("1", 1)])).await;
    let id = o["id"].as_str().unwrap().to_string();
    let by = eventually("the order to be notified", Duration::from_secs(20), || notified_by(&t, &id)).await;
    assert!(sha(&v1).starts_with(&by));
    t.host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_written_in_place_loads_only_once_complete_and_a_rename_swaps_at_once() {
    logs::capture();
    let v1 = component("handlers", "notifier");
    let v2 = versioned(&v1, "in-place");
    // No manifest: a bare component with default settings, so only compiling can catch a torn write.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notifier.wasm"), &v1).unwrap();
    let t = TestHost::start_with(
        Some(dir.path()),
        3,
        &[("ADMIN_TOKEN", TOKEN), ("HANDLERS_RESCAN_SECS", "3600")],
    )
    .await;
    wait_serving(&t, "notifier", &sha(&v1)).await;

    let path = dir.path().join("notifier.wasm");
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().write(true).truncate(true).open(&path).unwrap();
        f.write_all(&v2[..v2.len() / 2]).unwrap();
        f.flush().unwrap();
        eventually("the torn file to be rejected", Duration::from_secs(20), || async {
            let rejected = logs::logged(|l| {
                l.message.contains("handler rejected")
                    && l.fields.get("problem").is_some_and(|p| p.contains(&path.display().to_string()))
            });
            (!rejected.is_empty()).then_some(())
        })
        .await;
        assert_eq!(serving(&t, "notifier").await, Some(sha(&v1)), "a torn file never loads");
        f.write_all(&v2[v2.len() / 2..]).unwrap();
    }
    wait_serving(&t, "notifier", &sha(&v2)).await;

    let tmp = dir.path().join(".notifier.wasm.part");
    std::fs::write(&tmp, &v1).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    wait_serving(&t, "notifier", &sha(&v1)).await;

    // Removing the file unsubscribes the handler; a rollback brings it back.
    std::fs::remove_file(&path).unwrap();
    eventually("the handler to be unsubscribed", Duration::from_secs(20), || async {
        serving(&t, "notifier").await.is_none().then_some(())
    })
    .await;
    rollback_to(&t, &v1).await;
    t.host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_volume_update_is_picked_up() {
    let v1 = component("handlers", "notifier");
    let v2 = versioned(&v1, "configmap");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // What kubelet writes: the files in a timestamped directory, `..data` pointing at it, and
    // top-level symlinks through `..data`.
    let publish = |stamp: &str, bytes: &[u8]| {
        let data = root.join(stamp);
        std::fs::create_dir(&data).unwrap();
        write_notifier(&data, bytes);
        let tmp = root.join("..data_tmp");
        std::os::unix::fs::symlink(stamp, &tmp).unwrap();
        std::fs::rename(&tmp, root.join("..data")).unwrap();
    };
    publish("..2026_11_21_10_00_00.000000001", &v1);
    for f in ["handlers.toml", "notifier.wasm"] {
        std::os::unix::fs::symlink(format!("..data/{f}"), root.join(f)).unwrap();
    }
    let t = TestHost::start_with(Some(root), 3, &[("ADMIN_TOKEN", TOKEN), ("HANDLERS_RESCAN_SECS", "3600")])
        .await;
    wait_serving(&t, "notifier", &sha(&v1)).await;

    publish("..2026_11_21_10_05_00.000000002", &v2);
    std::fs::remove_dir_all(root.join("..2026_11_21_10_00_00.000000001")).unwrap();
    wait_serving(&t, "notifier", &sha(&v2)).await;
    let (_, list) = admin(&t, reqwest::Method::GET, "/admin/handlers", None).await;
    assert_eq!(list.as_array().unwrap().len(), 1, "the `..` entries are not handlers: {list}");
    assert_eq!(list[0]["current"]["source"], "dir");
    t.host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_needs_the_token_and_is_off_without_one() {
    let v1 = component("handlers", "notifier");
    let v2 = versioned(&v1, "auth");
    let dir = tempfile::tempdir().unwrap();
    write_notifier(dir.path(), &v1);

    let off = TestHost::start_with(Some(dir.path()), 3, &[]).await;
    for (method, path) in
        [(reqwest::Method::GET, "/admin/handlers"), (reqwest::Method::PUT, "/admin/handlers/notifier")]
    {
        let r =
            off.http.request(method, off.url(path)).bearer_auth(TOKEN).body(v2.clone()).send().await.unwrap();
        assert_eq!(r.status(), 404);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "admin_disabled", "{body}");
    }
    off.host.shutdown().await.unwrap();

    let t = TestHost::start_with(Some(dir.path()), 3, &[("ADMIN_TOKEN", TOKEN)]).await;
    wait_serving(&t, "notifier", &sha(&v1)).await;
    let attempts = [None, Some("wrong-token"), Some("s3cret-admin-toke"), Some("s3cret-admin-token-")];
    // A refused request's body is not read, so the server may close the connection: no reuse.
    let fresh = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    for token in attempts {
        for (method, path) in [
            (reqwest::Method::GET, "/admin/handlers"),
            (reqwest::Method::PUT, "/admin/handlers/notifier"),
            (reqwest::Method::POST, "/admin/handlers/notifier/rollback"),
            (reqwest::Method::DELETE, "/admin/handlers/notifier"),
        ] {
            let mut r = fresh.request(method.clone(), t.url(path)).body(b"\0asm".to_vec());
            if let Some(token) = token {
                r = r.bearer_auth(token);
            }
            let r = r.send().await.unwrap();
            assert_eq!(r.status(), 401, "{method} {path} with {token:?}");
            assert_eq!(r.headers()["www-authenticate"], "Bearer");
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["error"]["code"], "unauthorized");
        }
    }
    assert_eq!(serving(&t, "notifier").await, Some(sha(&v1)), "nothing changed");

    let (code, body) = admin(&t, reqwest::Method::POST, "/admin/handlers/notifier/rollback", None).await;
    assert_eq!((code, body["error"]["code"].as_str()), (409, Some("no_previous_version")), "{body}");
    let (code, body) = admin(&t, reqwest::Method::DELETE, "/admin/handlers/nobody", None).await;
    assert_eq!((code, body["error"]["code"].as_str()), (404, Some("handler_not_found")), "{body}");
    let (code, body) = admin(&t, reqwest::Method::DELETE, "/admin/handlers/notifier", None).await;
    assert_eq!((code, body["subscribed"].as_bool()), (200, Some(false)), "{body}");
    // A deliberate unsubscribe: nothing is held for want of a handler, so the host stays ready
    // (events of the type are completed without one, and counted as skipped).
    let (code, ready) = t.get("/readyz").await;
    assert_eq!((code, ready["handlers_loaded"].as_u64()), (200, Some(0)), "{ready}");
    assert_eq!(ready["events_waiting_for_handler"], json!([]), "{ready}");
    let (code, body) = admin(&t, reqwest::Method::POST, "/admin/handlers/notifier/rollback", None).await;
    assert_eq!((code, body["subscribed"].as_bool()), (200, Some(true)), "{body}");
    let (_, o) = t.post("/api/orders", &order_body("again@x.io", &[("1", 1)])).await;
    let id = o["id"].as_str().unwrap().to_string();
    eventually("the next order's notification", Duration::from_secs(20), || notified_by(&t, &id)).await;
    t.host.shutdown().await.unwrap();
}
