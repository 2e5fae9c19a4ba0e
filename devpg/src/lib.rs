//! A private Postgres cluster from the machine's own PostgreSQL binaries, for `cargo xtask dev`
//! and the test suites. Never used in production: there `DATABASE_URL` points at a real server.
//!
//! The cluster listens on a Unix socket only (no port to collide on), runs as the `postgres` user
//! when we are root (initdb refuses root), and dies with the process that started it
//! (`PR_SET_PDEATHSIG`), so an aborted test run leaves no server behind.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How long a fresh cluster may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);

pub struct LocalPostgres {
    data_dir: PathBuf,
    pid: u32,
    waiter: Option<std::thread::JoinHandle<()>>,
}

/// The user to run as, when we are root.
fn run_as() -> anyhow::Result<Option<(u32, u32)>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = c"postgres";
    // SAFETY: getpwnam returns null or a pointer to a static record we copy out of at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        bail!("running as root and there is no `postgres` user to run Postgres as (initdb refuses root)");
    }
    // SAFETY: pw is non-null and points at a valid passwd record.
    Ok(Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) }))
}

/// Finds a PostgreSQL server binary on PATH or in Debian's versioned directories.
fn pg_binary(name: &str) -> anyhow::Result<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name));
    let debian = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin").join(name));
    on_path.chain(debian).find(|p| p.is_file()).with_context(|| {
        format!("no `{name}` on PATH or under /usr/lib/postgresql/*/bin; install the `postgresql` package")
    })
}

fn hand_to_postgres(path: &Path, uid: u32, gid: u32) -> anyhow::Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .with_context(|| format!("handing {} to the postgres user", path.display()))
}

/// Whether the cluster flushes its commits to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Throwaway data: durability buys nothing and costs seconds per test run.
    Throwaway,
    /// As a production server runs: every commit waits for its WAL flush (for benchmarks whose
    /// figures depend on commit cost).
    Durable,
}

impl LocalPostgres {
    /// Starts a throwaway cluster in `data_dir`, creating it with `initdb` if it is empty or missing.
    pub fn start(data_dir: &Path) -> anyhow::Result<LocalPostgres> {
        LocalPostgres::start_with(data_dir, Durability::Throwaway)
    }

    /// As [`LocalPostgres::start`], flushing commits or not.
    pub fn start_with(data_dir: &Path, durability: Durability) -> anyhow::Result<LocalPostgres> {
        let user = run_as()?;
        std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
        let data_dir = data_dir.canonicalize()?;
        if let Some((uid, gid)) = user {
            hand_to_postgres(&data_dir, uid, gid)?;
        }
        let as_user = |cmd: &mut Command| {
            if let Some((uid, gid)) = user {
                cmd.uid(uid).gid(gid);
            }
        };
        if !data_dir.join("PG_VERSION").exists() {
            let mut initdb = Command::new(pg_binary("initdb")?);
            initdb
                .arg("-D")
                .arg(&data_dir)
                .args(["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"])
                .stdout(Stdio::null());
            as_user(&mut initdb);
            let out = initdb.output().context("running initdb")?;
            if !out.status.success() {
                bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
        // A stale pid file from a killed run would stop the new postmaster.
        let _ = std::fs::remove_file(data_dir.join("postmaster.pid"));

        let mut postgres = Command::new(pg_binary("postgres")?);
        postgres
            .arg("-D")
            .arg(&data_dir)
            .args(["-c", "listen_addresses="])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", data_dir.display()))
            .args(match durability {
                Durability::Throwaway => {
                    ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
                }
                Durability::Durable => {
                    ["-c", "fsync=on", "-c", "synchronous_commit=on", "-c", "full_page_writes=on"]
                }
            })
            .args(["-c", "max_connections=200"])
            // Its own process group: a terminal's Ctrl-C stops the host first, and the owner of this
            // handle stops Postgres afterwards.
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        as_user(&mut postgres);
        // SAFETY: prctl is async-signal-safe; the closure allocates nothing.
        unsafe {
            postgres.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        // PDEATHSIG fires when the spawning *thread* exits, so spawn from a thread that lives as
        // long as the server does.
        let (tx, rx) = mpsc::channel();
        let waiter =
            std::thread::Builder::new().name("postgres".into()).spawn(move || match postgres.spawn() {
                Ok(mut child) => {
                    let _ = tx.send(Ok(child.id()));
                    let _ = child.wait();
                }
                Err(e) => drop(tx.send(Err(e))),
            })?;
        let pid = rx.recv().context("the postgres thread died")?.context("starting postgres")?;
        let pg = LocalPostgres { data_dir, pid, waiter: Some(waiter) };
        pg.wait_ready()?;
        Ok(pg)
    }

    /// Waits until the postmaster says `ready` in its pid file.
    fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let pid_file = self.data_dir.join("postmaster.pid");
        loop {
            if let Ok(text) = std::fs::read_to_string(&pid_file)
                && text.lines().nth(7).is_some_and(|l| l.trim() == "ready")
            {
                return Ok(());
            }
            if self.waiter.as_ref().is_some_and(|w| w.is_finished()) {
                bail!(
                    "postgres exited during start-up; see {}/log or run it by hand",
                    self.data_dir.display()
                );
            }
            if Instant::now() > deadline {
                bail!("postgres did not become ready within {START_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A `DATABASE_URL` for database `db` on this cluster.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@localhost/{db}?host={}", self.data_dir.display())
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        // SIGINT is Postgres's "fast shutdown": roll back open transactions and exit cleanly.
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.pid as i32, libc::SIGINT) };
        if let Some(w) = self.waiter.take() {
            let _ = w.join();
        }
    }
}
