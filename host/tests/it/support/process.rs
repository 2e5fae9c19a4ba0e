//! Real processes for the end-to-end tiers: the `order-host` binary, the `dev-broker` it carries,
//! and a tansu broker, each killed when its handle drops so a failed assertion leaves nothing
//! running.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::service::eventually;

/// Kills the child on drop.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Held by the multi-process fault tests for their whole run, so no two of them share the two
/// cores: each measures timeouts and recovery of real processes (session expiry, restarts,
/// broker freezes), and two of them side by side starved each other into missing their deadlines.
pub async fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    static EXCLUSIVE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    EXCLUSIVE.lock().await
}

/// Runs the xtask binary that `cargo xtask test` has built (`target/debug/xtask`) with `args`,
/// from the repository root and without the caller's `ADMIN_TOKEN`, off the async threads.
pub async fn xtask(args: &[&str]) -> std::process::Output {
    let root = super::root();
    let bin = root.join("target/debug/xtask");
    assert!(bin.is_file(), "run the tests through `cargo xtask test`, which builds {}", bin.display());
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new(bin)
            .args(&args)
            .current_dir(root)
            .env_remove("ADMIN_TOKEN")
            .output()
            .expect("xtask runs")
    })
    .await
    .unwrap()
}

/// An output's stdout and stderr, as text, together.
pub fn text_of(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `order-host dev-broker`: the embedded broker in its own process, so it outlives a host.
pub fn start_dev_broker() -> (Process, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_order-host"))
        .args(["dev-broker", "--partitions", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the broker process starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).expect("the broker prints its address");
    let bootstrap = line.trim().strip_prefix("bootstrap=").expect("bootstrap=<addr>").to_string();
    (Process(child), bootstrap)
}

/// The `order-host` binary serving on `port` with the built handlers in DEMO_MODE, and `env` on
/// top.
pub fn start_host(database_url: &str, brokers: &str, port: u16, env: &[(&str, &str)]) -> Process {
    spawn_host(database_url, brokers, port, None, env)
}

/// What every host started against [`start_dev_broker`] needs: the session timeout
/// `KAFKA_BROKERS=embedded` gets (`host::config::EMBEDDED_SESSION_TIMEOUT_MS`). The mock cluster
/// holds every rebalance of a settled group for the session less 1 s, even once every member has
/// rejoined, so with librdkafka's 45 s each restart, kill or join would stall the group 44 s.
pub const ON_DEV_BROKER: (&str, &str) = ("KAFKA_SESSION_TIMEOUT_MS", "6000");

/// A `const` cannot format a number, so the text above restates the host's constant; this keeps
/// the two from drifting apart.
#[test]
fn on_dev_broker_sets_the_embedded_session_timeout() {
    assert_eq!(ON_DEV_BROKER.1, host::config::EMBEDDED_SESSION_TIMEOUT_MS.to_string());
}

/// As [`start_host`], with `LOG_FORMAT=json` at info level written to `log`, and `env` on top.
pub fn start_host_logging_json(
    database_url: &str,
    brokers: &str,
    port: u16,
    log: &std::path::Path,
    env: &[(&str, &str)],
) -> Process {
    spawn_host(database_url, brokers, port, Some(log), env)
}

fn spawn_host(
    database_url: &str,
    brokers: &str,
    port: u16,
    log: Option<&std::path::Path>,
    env: &[(&str, &str)],
) -> Process {
    let mut command = Command::new(env!("CARGO_BIN_EXE_order-host"));
    command
        .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("DATABASE_URL", database_url)
        .env("KAFKA_BROKERS", brokers)
        .env("HANDLERS_DIR", super::root().join("target/handlers"))
        .env("DEMO_MODE", "true")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(log) = log {
        let file = std::fs::File::create(log).expect("log file");
        command.env("RUST_LOG", "info").env("LOG_FORMAT", "json").stdout(file);
    }
    command.envs(env.iter().copied());
    Process(command.spawn().expect("order-host starts"))
}

pub async fn wait_ready(http: &reqwest::Client, base: &str) {
    eventually("the host to be ready", Duration::from_secs(60), || async {
        let r = http.get(format!("{base}/readyz")).send().await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
}

/// The tansu binary: `TANSU_BIN`, else `tansu` on PATH or in cargo's bin directory.
pub fn tansu_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("TANSU_BIN") {
        return PathBuf::from(bin);
    }
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|d| d.join("bin"));
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).chain(cargo_bin).map(|d| d.join("tansu")).find(|p| p.is_file()).expect(
        "the end-to-end tier needs tansu: `cargo xtask test` installs it, or run \
             `cargo install tansu --locked --features dynostore,postgres`",
    )
}

/// What every host started against tansu needs. tansu 0.6's memory engine answers a fetch that
/// starts inside a batch with the batch after it
/// (`tansu_probe::a_fetch_from_inside_a_batch_starts_at_that_offset`), so a host resuming at a
/// committed offset inside a batch, after a restart or a rebalance, would never see the rest of
/// that batch. With one record per batch there is no inside.
pub const ON_TANSU: (&str, &str) = ("KAFKA_PRODUCER_BATCH_RECORDS", "1");

/// A tansu broker in its own process (in-memory storage) with `topics` of 3 partitions; returns
/// it and its bootstrap address. Hosts against it take [`ON_TANSU`].
pub async fn start_tansu(topics: &[&str]) -> (Process, String) {
    let bin = tansu_bin();
    let port = free_port();
    let url = format!("tcp://127.0.0.1:{port}");
    let child = Command::new(&bin)
        .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
        .args(["--storage-engine", "memory://tansu/"])
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{} starts: {e}", bin.display()));
    let broker = Process(child);
    eventually("tansu to listen", Duration::from_secs(30), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok().map(drop)
    })
    .await;
    for topic in topics {
        let status = Command::new(&bin)
            .args(["topic", "create", topic, "--partitions", "3", "--broker", &url])
            .stdout(Stdio::null())
            .status()
            .expect("tansu topic create runs");
        assert!(status.success(), "tansu could not create topic {topic}");
    }
    (broker, format!("127.0.0.1:{port}"))
}
