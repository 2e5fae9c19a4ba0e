//! Several replicas on one Postgres and one broker: the outbox relay shares its key-hash slots
//! among the live relays and keeps each key's order; the multi-process tier (rolling restart,
//! SIGKILL, a joining replica; on the dev broker, and ignored on tansu) is in
//! `replicas::processes`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::support::metric_value;
use crate::support::service::*;
use host::kafka::EmbeddedBroker;
use host::serve::Host;

/// A topic of the test's own, so the hosts' consumers leave its records alone.
const CHECK_TOPIC: &str = "relay.check";

async fn metric(http: &reqwest::Client, host: &Host, name: &str) -> f64 {
    let text = http.get(format!("http://{}/metrics", host.addr)).send().await.unwrap().text().await.unwrap();
    metric_value(&text, name).unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
}

/// Writes `rows` outbox rows for `CHECK_TOPIC` in one transaction, spread over `keys` keys, each
/// key's payloads numbered upwards from `first`.
async fn enqueue(pool: &sqlx::PgPool, first: i64, rows: i64, keys: i64) {
    sqlx::query(
        "INSERT INTO outbox (topic, key, payload)
         SELECT $1, convert_to('key-' || (i % $4), 'UTF8'), convert_to(i::text, 'UTF8')
         FROM generate_series($2::bigint, $2 + $3 - 1) i",
    )
    .bind(CHECK_TOPIC)
    .bind(first)
    .bind(rows)
    .bind(keys)
    .execute(pool)
    .await
    .unwrap();
}

async fn drained(pool: &sqlx::PgPool, within: Duration) {
    eventually("the outbox to drain", within, || async {
        let (left,): (i64,) = sqlx::query_as("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(pool)
            .await
            .unwrap();
        (left == 0).then_some(())
    })
    .await;
}

/// Two relays split the 16 slots evenly and both publish; when one leaves, the other takes its
/// slots. On the topic every key's records are in commit (payload) order, none lost or repeated:
/// the relay publishes a row twice only across a fault (a session lost after publishing, before
/// marking), and a graceful leave is none, so a copy here would mean two relays shared a slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_share_the_slots_and_keep_each_keys_order() {
    let broker = EmbeddedBroker::start(&[&TOPICS[..], &[CHECK_TOPIC]].concat(), 3).expect("broker");
    let brokers = broker.bootstrap_servers().to_string();
    let database_url = fresh_database().await;
    let config = test_config(&database_url, &brokers, &[]);
    let a = Host::start_with(&config, None).await.expect("replica a starts");
    let b = Host::start_with(&config, None).await.expect("replica b starts");
    let http = reqwest::Client::new();
    let slots = "order_host_relay_slots_owned";
    eventually("the relays to take 8 slots each", Duration::from_secs(20), || async {
        let owned = (metric(&http, &a, slots).await, metric(&http, &b, slots).await);
        (owned == (8.0, 8.0)).then_some(())
    })
    .await;

    enqueue(&a.pool, 0, 2000, 40).await;
    drained(&a.pool, Duration::from_secs(60)).await;
    let published = "order_host_relay_published_total";
    let (by_a, by_b) = (metric(&http, &a, published).await, metric(&http, &b, published).await);
    assert!(by_a > 0.0 && by_b > 0.0, "both relays publish: {by_a} and {by_b}");
    assert_eq!(by_a + by_b, 2000.0, "each row published once");

    b.shutdown().await.expect("replica b stops");
    eventually("the remaining relay to take every slot", Duration::from_secs(20), || async {
        (metric(&http, &a, slots).await == 16.0).then_some(())
    })
    .await;
    enqueue(&a.pool, 2000, 400, 40).await;
    drained(&a.pool, Duration::from_secs(60)).await;

    // Every record on the topic, each key's rows as they first appear; with exactly 2,400 records
    // and 60 distinct rows for each of 40 keys, none is repeated.
    let records = whole_topic(&brokers, CHECK_TOPIC).await;
    assert_eq!(records.len(), 2400, "records on the topic for 2400 rows");
    let mut seen = BTreeSet::new();
    let mut by_key: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for r in &records {
        let n: i64 = String::from_utf8_lossy(&r.raw).parse().unwrap();
        if seen.insert((r.key.clone(), n)) {
            by_key.entry(r.key.clone()).or_default().push(n);
        }
    }
    assert_eq!(by_key.len(), 40);
    for (key, first) in &by_key {
        let mut sorted = first.clone();
        sorted.sort_unstable();
        assert_eq!(first, &sorted, "{key}'s rows first appeared out of commit order");
        assert_eq!(first.len(), 60, "{key}: {first:?}");
    }
    a.shutdown().await.expect("replica a stops");
    std::mem::forget(broker);
}

/// The multi-process tier: real `order-host` processes in one consumer group on tansu and one
/// Postgres, under an open-loop stream of orders.
mod processes {
    use std::path::{Path, PathBuf};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use crate::support::process::*;
    use crate::support::service::*;

    /// Orders per second offered, whatever the hosts answer, and for how long at least.
    const RATE: u64 = 100;
    const LOAD: Duration = Duration::from_secs(60);
    /// How long the load goes on after the last fault, if that came later than `LOAD`.
    const AFTER_FAULTS: Duration = Duration::from_secs(10);
    const GROUP: &str = "order-processor";

    /// One replica: its port, its process while it runs, and a log per start.
    struct Replica {
        port: u16,
        process: Option<Process>,
        starts: usize,
    }

    struct Cluster {
        database_url: String,
        brokers: String,
        /// What every replica's environment adds for this broker ([`ON_DEV_BROKER`] or [`ON_TANSU`]).
        broker_env: &'static [(&'static str, &'static str)],
        logs: PathBuf,
        replicas: Vec<Replica>,
        /// Ports taking orders now; a replica is removed before it is stopped.
        live: Arc<Mutex<Vec<u16>>>,
        http: reqwest::Client,
    }

    impl Cluster {
        async fn start_replica(&mut self, i: usize) {
            let r = &mut self.replicas[i];
            r.starts += 1;
            let log = self.logs.join(format!("replica{i}-{}.log", r.starts));
            r.process = Some(start_host_logging_json(
                &self.database_url,
                &self.brokers,
                r.port,
                &log,
                self.broker_env,
            ));
            wait_ready(&self.http, &format!("http://127.0.0.1:{}", r.port)).await;
            self.live.lock().unwrap().push(r.port);
        }

        async fn add_replica(&mut self) {
            self.replicas.push(Replica { port: free_port(), process: None, starts: 0 });
            self.start_replica(self.replicas.len() - 1).await;
        }

        fn leave(&self, i: usize) {
            self.live.lock().unwrap().retain(|p| *p != self.replicas[i].port);
        }

        /// SIGTERM, and the graceful shutdown must end in a clean exit.
        async fn stop(&mut self, i: usize) {
            self.leave(i);
            let mut process = self.replicas[i].process.take().expect("running");
            let status = std::process::Command::new("kill")
                .args(["-TERM", &process.0.id().to_string()])
                .status()
                .expect("kill runs");
            assert!(status.success());
            let exited = eventually("a replica to exit after SIGTERM", Duration::from_secs(60), || {
                let code = process.0.try_wait().expect("wait");
                async move { code }
            })
            .await;
            assert!(
                exited.success(),
                "replica {i} exited with {exited} after SIGTERM; logs in {}",
                self.logs.display()
            );
        }

        fn kill(&mut self, i: usize) {
            self.leave(i);
            let mut process = self.replicas[i].process.take().expect("running");
            process.0.kill().expect("SIGKILL");
            process.0.wait().expect("reaped");
        }
    }

    /// Offers `RATE` orders a second to whichever replicas are live, each on a tick of its own
    /// whether or not earlier ones were answered (open loop), for `LOAD` and on until
    /// `AFTER_FAULTS` past the time `faults_over` announces: every fault happens under load
    /// however long a loaded machine makes them take (they could outlast a fixed load). A request
    /// that meets a replica going away is tried on another. Returns how many orders were offered
    /// and the ids of those answered 201.
    fn offer_orders(
        live: Arc<Mutex<Vec<u16>>>,
        http: reqwest::Client,
        faults_over: tokio::sync::watch::Receiver<Option<Instant>>,
    ) -> tokio::task::JoinHandle<(u64, Vec<String>)> {
        tokio::spawn(async move {
            let started = Instant::now();
            let mut requests = tokio::task::JoinSet::new();
            let mut n = 0;
            loop {
                let tick = started + Duration::from_millis(n * 1000 / RATE);
                let after_faults = (*faults_over.borrow()).is_some_and(|at| tick >= at + AFTER_FAULTS);
                if tick >= started + LOAD && after_faults {
                    break;
                }
                tokio::time::sleep_until(tick.into()).await;
                let (live, http) = (live.clone(), http.clone());
                requests.spawn(async move {
                    for attempt in 0..5usize {
                        let port = {
                            let live = live.lock().unwrap();
                            live[(n as usize + attempt) % live.len()]
                        };
                        let body = order_body(&format!("replica{n}@x.io"), &[(&(1 + n % 10).to_string(), 1)]);
                        let sent = http
                            .post(format!("http://127.0.0.1:{port}/api/orders"))
                            .timeout(Duration::from_secs(10))
                            .json(&body)
                            .send()
                            .await;
                        if let Ok(r) = sent
                            && r.status() == 201
                        {
                            let order: serde_json::Value = r.json().await.expect("an order");
                            return Some(order["id"].as_str().expect("id").to_string());
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    None
                });
                n += 1;
            }
            let mut ids = Vec::new();
            while let Some(id) = requests.join_next().await {
                ids.extend(id.expect("request task"));
            }
            (n, ids)
        })
    }

    async fn count(pool: &sqlx::PgPool, sql: &str) -> i64 {
        sqlx::query_as::<_, (i64,)>(sql).fetch_one(pool).await.unwrap().0
    }

    /// Three replicas under a steady stream: a rolling restart (SIGTERM one at a time, each back
    /// and ready before the next), then SIGKILL of one, then a new replica joining, every change a
    /// group rebalance that moves partitions between live replicas while orders are mid-way.
    /// Every accepted order ships, with one history row per status in state-machine order and one
    /// notification per stage in stage order (a status-updated record applied out of order for
    /// its key would put them out of order); nothing is dead-lettered; the group's offsets end at
    /// the end of every partition.
    ///
    /// On the dev broker (librdkafka's mock cluster in a process of its own).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_replicas_survive_a_rolling_restart_a_kill_and_a_join_under_load() {
        let _alone = crate::support::process::exclusive().await;
        let (_broker, brokers) = start_dev_broker();
        rolling_restart_kill_and_join(brokers, &[ON_DEV_BROKER]).await;
    }

    /// The same on tansu. Ignored, so not run by `cargo xtask test` or CI, because tansu 0.6 has
    /// two faults this scenario meets (the first shown by a probe without the host):
    /// - its memory engine answers a fetch that starts inside a batch with the batch after it
    ///   (`tansu_probe::a_fetch_from_inside_a_batch_starts_at_that_offset`), so a replica resuming
    ///   at a committed offset inside a batch after a rebalance skipped the rest of that batch:
    ///   the "contiguous run committed past and applied by no replica" of earlier runs. Replicas
    ///   here take [`ON_TANSU`] (one record per batch), which removes that;
    /// - its group coordinator keeps assigning partitions to a member killed with SIGKILL: with
    ///   the fix above, the run on 2026-12-06 ended with `order.created/0` and
    ///   `order.status-updated/0` held by the killed replica and the joining one assigned
    ///   nothing, and 1,709 orders waiting behind that partition.
    ///
    /// Run it with `cargo xtask test --test it -- --ignored replicas::processes`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    // tracking: issue 15 (tansu 0.6 keeps a killed member's partitions assigned)
    #[ignore = "tansu 0.6 keeps a SIGKILLed member's partitions assigned; see the comment"]
    async fn three_replicas_on_tansu() {
        let (_tansu, brokers) = start_tansu(&TOPICS).await;
        rolling_restart_kill_and_join(brokers, &[ON_TANSU]).await;
    }

    async fn rolling_restart_kill_and_join(
        brokers: String,
        broker_env: &'static [(&'static str, &'static str)],
    ) {
        let logs = tempfile::tempdir().unwrap();
        let mut cluster = Cluster {
            database_url: fresh_database().await,
            brokers,
            broker_env,
            logs: logs.path().to_path_buf(),
            replicas: Vec::new(),
            live: Arc::default(),
            http: reqwest::Client::new(),
        };
        for _ in 0..3 {
            cluster.add_replica().await;
        }
        let (faults_over, faults_over_rx) = tokio::sync::watch::channel(None);
        let load = offer_orders(cluster.live.clone(), cluster.http.clone(), faults_over_rx);
        let started = Instant::now();

        tokio::time::sleep(Duration::from_secs(3)).await;
        for i in 0..3 {
            cluster.stop(i).await;
            cluster.start_replica(i).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let rolled = started.elapsed();
        cluster.kill(0);
        // The killed member keeps its partitions until its session times out (6 s on the dev
        // broker, 45 s on tansu) and the coordinator rebalances without it; the orders on them
        // wait that long, then ship.
        // (tansu 0.6 checks sessions only while a rebalance is forming, so there a member killed
        // less than a session before the next rebalance keeps its partitions while the group is
        // stable: one more reason the tansu variant is ignored.)
        tokio::time::sleep(Duration::from_secs(3)).await;
        cluster.add_replica().await;
        let joined = started.elapsed();
        faults_over.send_replace(Some(Instant::now()));
        let (offered, accepted) = load.await.unwrap();
        eprintln!(
            "rolled by {rolled:?}, joined by {joined:?}, {} of {offered} orders accepted",
            accepted.len()
        );
        assert!(accepted.len() as u64 >= offered * 9 / 10, "only {} of {offered} accepted", accepted.len());

        let pool = sqlx::PgPool::connect(&cluster.database_url).await.unwrap();
        let ids: Vec<uuid::Uuid> = accepted.iter().map(|id| id.parse().unwrap()).collect();
        let deadline = Instant::now() + Duration::from_secs(240);
        loop {
            let (stuck,): (i64,) =
                sqlx::query_as("SELECT count(*) FROM orders WHERE id = ANY($1) AND status <> 'shipped'")
                    .bind(&ids)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            if stuck == 0 {
                break;
            }
            if Instant::now() > deadline {
                panic!("{stuck} accepted orders did not ship\n{}", diagnose(&cluster, &pool).await);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        eventually("every stored order to ship", Duration::from_secs(60), || async {
            (count(&pool, "SELECT count(*) FROM orders WHERE status <> 'shipped'").await == 0).then_some(())
        })
        .await;

        let orders = count(&pool, "SELECT count(*) FROM orders").await;
        assert_eq!(
            count(&pool, "SELECT count(*) FROM order_status_history").await,
            4 * orders,
            "one row per status"
        );
        let out_of_order = count(
            &pool,
            "SELECT count(*) FROM (SELECT order_id, array_agg(to_status ORDER BY id) s FROM order_status_history GROUP BY 1) h
             WHERE s <> ARRAY['pending', 'processing', 'confirmed', 'shipped']",
        )
        .await;
        assert_eq!(out_of_order, 0, "orders whose history is not pending, processing, confirmed, shipped");
        // The last stage's notification follows the order's shipping: the notifier answers the
        // status-updated record that announces it.
        eventually("four notifications per order", Duration::from_secs(60), || async {
            (count(&pool, "SELECT count(*) FROM notifications").await >= 4 * orders).then_some(())
        })
        .await;
        assert_eq!(
            count(&pool, "SELECT count(*) FROM notifications").await,
            4 * orders,
            "one notification per stage"
        );
        let stages_out_of_order = count(
            &pool,
            "SELECT count(*) FROM (
                 SELECT order_id, array_agg(CASE WHEN subject LIKE '% received' THEN 'received' ELSE split_part(subject, ' is ', 2) END ORDER BY id) s
                 FROM notifications GROUP BY 1) n
             WHERE s <> ARRAY['received', 'processing', 'confirmed', 'shipped']",
        )
        .await;
        assert_eq!(
            stages_out_of_order, 0,
            "orders whose notifications are not one per stage, in stage order"
        );
        assert_eq!(count(&pool, "SELECT count(*) FROM dead_letters").await, 0, "dead letters");
        assert_eq!(count(&pool, "SELECT count(*) FROM processed_events WHERE outcome <> 'applied'").await, 0);

        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let progress =
                group_progress(&cluster.brokers, GROUP, &["order.created", "order.status-updated"]).await;
            // At or past the high watermark: tansu (0.6, in-memory storage) reports a partition's
            // high watermark up to a batch short of its end after multi-record batches (seen as
            // committed offsets 1 to 3 past it while every record was applied); a committed
            // offset can only be past the real end if the consumer stored one it never read.
            if progress.iter().all(|(_, _, committed, high)| committed >= high) {
                break;
            }
            if Instant::now() > deadline {
                panic!(
                    "the group's offsets did not reach the end of every partition\n{}",
                    diagnose(&cluster, &pool).await
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        drop(cluster);
    }

    /// What a stuck run looks like: orders by status, the outbox and timers, the group's
    /// progress and each live replica's view; and where its logs were kept.
    async fn diagnose(cluster: &Cluster, pool: &sqlx::PgPool) -> String {
        let rows = |sql: &'static str| async move {
            sqlx::query_as::<_, (String, i64)>(sql).fetch_all(pool).await.unwrap()
        };
        let mut out = format!(
            "orders by status: {:?}\nunpublished outbox rows by slot: {:?}\ntimers (due, all): {:?}\n",
            rows("SELECT status, count(*) FROM orders GROUP BY 1 ORDER BY 1").await,
            rows("SELECT slot::text, count(*) FROM outbox WHERE published_at IS NULL GROUP BY 1 ORDER BY 1").await,
            rows("SELECT 'timers', count(*) FILTER (WHERE due_at <= now()) FROM timers UNION ALL SELECT 'all', count(*) FROM timers").await,
        );
        let stuck: Vec<(uuid::Uuid, String)> = sqlx::query_as(
            "SELECT id, status FROM orders WHERE status <> 'shipped' ORDER BY created_at LIMIT 3",
        )
        .fetch_all(pool)
        .await
        .unwrap();
        for (id, status) in stuck {
            let records: Vec<(i64, String, Option<String>, bool, i16)> = sqlx::query_as(
                "SELECT id, topic, convert_from(header_values[array_position(header_names, 'ce_id')], 'UTF8'),
                        published_at IS NOT NULL, slot
                 FROM outbox WHERE key = convert_to($1::text, 'UTF8') ORDER BY id",
            )
            .bind(id)
            .fetch_all(pool)
            .await
            .unwrap();
            let events: Vec<String> = records.iter().filter_map(|r| r.2.clone()).collect();
            let processed: Vec<(String, String, String)> = sqlx::query_as(
                "SELECT handler, event_id, outcome FROM processed_events WHERE event_id = ANY($1) ORDER BY processed_at",
            )
            .bind(&events)
            .fetch_all(pool)
            .await
            .unwrap();
            let on_topic = find_on_topic(&cluster.brokers, "order.status-updated", &events).await;
            out += &format!(
                "stuck order {id} ({status}):\n  outbox (id, topic, ce_id, published, slot): {records:?}\n  processed: {processed:?}\n  on the topic (ce_id, partition, offset): {on_topic:?}\n"
            );
        }
        let progress =
            group_progress(&cluster.brokers, GROUP, &["order.created", "order.status-updated"]).await;
        out += &format!("group progress (topic, partition, committed, high): {progress:?}\n");
        let live = cluster.live.lock().unwrap().clone();
        for port in live {
            let text = match cluster.http.get(format!("http://127.0.0.1:{port}/metrics")).send().await {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(e) => format!("unreachable: {e}"),
            };
            let wanted = [
                "relay_slots_owned",
                "relay_published",
                "dispatch_in_flight",
                "events_consumed",
                "consumer_lag",
            ];
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| !l.starts_with('#') && wanted.iter().any(|w| l.contains(w)))
                .collect();
            out += &format!("replica on {port}:\n  {}\n", lines.join("\n  "));
        }
        out + &format!("logs in {}", keep(&cluster.logs))
    }

    /// Where records with these `ce_id`s sit on `topic`: read from the start until nothing more
    /// arrives for 3 s (a diagnostic, after the fact).
    async fn find_on_topic(brokers: &str, topic: &str, ce_ids: &[String]) -> Vec<(String, i32, i64)> {
        use rdkafka::Message;
        use rdkafka::consumer::{Consumer, StreamConsumer};
        use rdkafka::message::Headers;
        let consumer: StreamConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", format!("diagnose-{}", uuid::Uuid::new_v4()))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .expect("diagnostic consumer");
        consumer.subscribe(&[topic]).expect("subscribe");
        let mut found = Vec::new();
        while let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(3), consumer.recv()).await {
            let ce_id = m.headers().and_then(|h| {
                h.iter()
                    .find(|h| h.key == "ce_id")
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            });
            if let Some(ce_id) = ce_id.filter(|c| ce_ids.contains(c)) {
                found.push((ce_id, m.partition(), m.offset()));
            }
        }
        found
    }

    /// Keeps the logs of a failed run (the temporary directory would be removed) and says where.
    fn keep(dir: &Path) -> String {
        let kept = std::env::temp_dir().join(format!("order-host-replicas-{}", std::process::id()));
        let _ = std::process::Command::new("cp").arg("-r").arg(dir).arg(&kept).status();
        kept.display().to_string()
    }
}
