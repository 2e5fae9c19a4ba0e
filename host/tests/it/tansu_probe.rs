//! A probe of the tansu broker alone, no host involved: three idempotent producers write the same
//! partitions at once, as three replicas' relays do, while a consumer reads along. Every record a
//! producer had acknowledged must reach the reading consumer; a record that is on the topic when
//! read afresh but was never handed to the reader is one a broker made visible out of offset
//! order, which a consumer group then commits past. The first probe passes on tansu 0.6; the
//! second fails on it, every time: a fetch that starts inside a batch is answered with the next
//! batch (its memory engine lists batches from the asked offset on), so the rest of the batch is
//! never delivered; on 2026-12-06, asked for offsets 1 to 9 of batches of ten it answered from
//! offset 10, and so on. That is the loss the tansu variant of the three-replica test saw, and
//! why hosts started against tansu take `support::process::ON_TANSU`. Run them with
//! `cargo xtask test --test it -- --ignored tansu_probe --nocapture`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::support::process::start_tansu;

const TOPIC: &str = "probe";
const PRODUCERS: usize = 3;
const PER_PRODUCER: usize = 20_000;
/// Records each producer keeps in flight: enough that batches from the three interleave.
const WINDOW: usize = 500;

type Offsets = BTreeSet<(i32, i64)>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// tracking: issue 15 (the tansu variant of the three-replica test is ignored on this evidence)
#[ignore = "probes the tansu broker, not the host; run by hand"]
async fn a_consumer_reading_along_gets_every_record_three_concurrent_producers_wrote() {
    let (_tansu, brokers) = start_tansu(&[TOPIC]).await;
    let started = Instant::now();
    let reader = tokio::spawn(read(brokers.clone(), Duration::from_secs(15)));
    let producers: Vec<_> = (0..PRODUCERS).map(|p| tokio::spawn(produce(brokers.clone(), p))).collect();
    let mut acknowledged = Offsets::new();
    for p in producers {
        acknowledged.extend(p.await.expect("producer task"));
    }
    let produced_in = started.elapsed();
    let read_along = reader.await.expect("reader task");
    let afresh = read(brokers.clone(), Duration::from_secs(10)).await;

    let never_read: Vec<_> = acknowledged.difference(&read_along).collect();
    let not_on_topic: Vec<_> = acknowledged.difference(&afresh).collect();
    println!(
        "{} acknowledged in {produced_in:?}; read along {}, read afresh {}; acknowledged but never read \
         along: {}; acknowledged but not on the topic: {}",
        acknowledged.len(),
        read_along.len(),
        afresh.len(),
        never_read.len(),
        not_on_topic.len()
    );
    assert_eq!(acknowledged.len(), PRODUCERS * PER_PRODUCER, "every record is acknowledged once");
    assert!(not_on_topic.is_empty(), "acknowledged records missing from the topic: {not_on_topic:?}");
    assert!(
        never_read.is_empty(),
        "{} acknowledged records were on the topic but skipped by the consumer reading along, e.g. {:?}",
        never_read.len(),
        never_read.iter().take(20).collect::<Vec<_>>()
    );
}

/// Sends this producer's records over 40 keys (so every partition gets all three producers'
/// batches), `WINDOW` in flight; returns each acknowledged record's (partition, offset).
async fn produce(brokers: String, who: usize) -> Offsets {
    let client = producer(&brokers, 5);
    let mut acknowledged = Offsets::new();
    let mut in_flight = futures_util::stream::FuturesUnordered::new();
    for seq in 0..PER_PRODUCER {
        let (key, value) = (format!("key-{}", seq % 40), format!("{who}-{seq}"));
        let client = client.clone();
        in_flight.push(async move {
            let record = FutureRecord::to(TOPIC).key(&key).payload(&value);
            client.send(record, Duration::from_secs(30)).await.map_err(|(e, _)| e)
        });
        if in_flight.len() >= WINDOW {
            acknowledged.insert(next_ack(&mut in_flight).await);
        }
    }
    while !in_flight.is_empty() {
        acknowledged.insert(next_ack(&mut in_flight).await);
    }
    acknowledged
}

async fn next_ack<F>(in_flight: &mut futures_util::stream::FuturesUnordered<F>) -> (i32, i64)
where
    F: std::future::Future<
            Output = Result<rdkafka::producer::future_producer::Delivery, rdkafka::error::KafkaError>,
        >,
{
    use futures_util::StreamExt as _;
    let d = in_flight.next().await.expect("a send in flight").expect("record acknowledged");
    (d.partition, d.offset)
}

/// An idempotent producer with `acks=all`, as the host's relay is.
fn producer(brokers: &str, linger_ms: u32) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", linger_ms.to_string())
        .create()
        .expect("probe producer")
}

/// Reads the topic from the start in a fresh group until nothing new arrives for `idle`.
async fn read(brokers: String, idle: Duration) -> Offsets {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", format!("probe-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("probe consumer");
    consumer.subscribe(&[TOPIC]).expect("subscribe");
    let mut seen = Offsets::new();
    while let Ok(m) = tokio::time::timeout(idle, consumer.recv()).await {
        let m = m.expect("consume");
        seen.insert((m.partition(), m.offset()));
    }
    seen
}

/// After a rebalance a consumer resumes at its group's committed offset, which can fall inside a
/// batch a producer wrote. A Kafka broker answers such a fetch with the batch that holds the
/// offset (the client drops the records before it); a broker that answered with the next whole
/// batch instead would skip the rest of that batch, a contiguous run, without anyone noticing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// tracking: issue 15 (the tansu variant of the three-replica test is ignored on this evidence)
#[ignore = "probes the tansu broker, not the host, and fails on tansu 0.6 (it shows the fault)"]
async fn a_fetch_from_inside_a_batch_starts_at_that_offset() {
    const BATCHES: i64 = 6;
    const PER_BATCH: i64 = 10;
    let (_tansu, brokers) = start_tansu(&[TOPIC]).await;
    // A linger far longer than it takes to send ten records: each ten go out as one batch.
    let client = producer(&brokers, 50);
    for batch in 0..BATCHES {
        let sends: Vec<_> = (0..PER_BATCH)
            .map(|i| {
                let value = format!("{batch}-{i}");
                let client = client.clone();
                async move {
                    let record = FutureRecord::to(TOPIC).key("one-key").payload(&value).partition(0);
                    client
                        .send(record, Duration::from_secs(30))
                        .await
                        .map_err(|(e, _)| e)
                        .expect("acknowledged")
                }
            })
            .collect();
        futures_util::future::join_all(sends).await;
    }
    let mut wrong = Vec::new();
    for start in 0..BATCHES * PER_BATCH {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", format!("probe-{}", uuid::Uuid::new_v4()))
            .set("enable.auto.commit", "false")
            .create()
            .expect("probe consumer");
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset(TOPIC, 0, rdkafka::Offset::Offset(start)).unwrap();
        consumer.assign(&tpl).expect("assign");
        // -1: nothing within 10 s, though records from `start` on are on the partition.
        let first = match tokio::time::timeout(Duration::from_secs(10), consumer.recv()).await {
            Ok(m) => m.expect("consume").offset(),
            Err(_) => -1,
        };
        if first != start {
            wrong.push((start, first));
        }
    }
    println!("fetches from {} offsets; first record not at the asked offset: {wrong:?}", BATCHES * PER_BATCH);
    assert!(wrong.is_empty(), "(asked, first received): {wrong:?}");
}
