//! `cargo xtask test`: the README's test command and what CI runs. Builds the handler components
//! and the hostile test fixtures, installs the tansu broker the end-to-end tier runs against (once
//! per machine), the Python tools (a venv under `target/`: the Kubernetes schema validator the
//! `k8s/` checks use, and schemathesis for the API contract test) and playwright-core for the
//! browser test, then runs the host workspace's tests and the handlers' native unit tests.

use anyhow::Context;
use xshell::{Shell, cmd};

use crate::{build_handlers, lint, project_root, wasm};

#[derive(clap::Args)]
pub struct Args {
    /// Passed to `cargo test` of the host workspace (e.g. `--test it deploy::`: one test binary, filtered by module).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    rest: Vec<String>,
}

pub fn run(sh: &Shell, args: &Args) -> anyhow::Result<()> {
    build_handlers::run(sh, &build_handlers::Args::default())?;
    build_fixtures(sh)?;
    let tansu = ensure_tansu(sh)?;
    let python = ensure_python_tools(sh)?;
    ensure_browser_driver(sh)?;
    let rest = &args.rest;
    // A filtered run is an edit-test loop; the whole suite (CI's run) holds the lint gates.
    if rest.is_empty() {
        lint::run(sh)?;
    }
    let handlers = project_root().join("handlers/Cargo.toml");
    cmd!(sh, "cargo test --manifest-path {handlers} --workspace")
        .env("CARGO_TARGET_DIR", HANDLERS_NATIVE_TARGET_DIR)
        .run()?;
    cmd!(sh, "cargo test --workspace {rest...}")
        .env("TANSU_BIN", tansu)
        .env("KUBERNETES_VALIDATE", python.kubernetes_validate)
        .env("SCHEMATHESIS", python.schemathesis)
        .run()?;
    Ok(())
}

/// Native builds of the handlers workspace (its unit tests, clippy), relative to the repository
/// root. Its own directory: native builds of `sdk` from the handlers workspace and from the host's
/// dev-dependencies can share a file name in one `target/debug/deps` and overwrite each other,
/// leaving the host's benchmark linked against two "different" sdk crates.
pub const HANDLERS_NATIVE_TARGET_DIR: &str = "target/handlers-native";

/// The tansu version the end-to-end tier is tested against.
const TANSU_VERSION: &str = "0.6.0";

/// Finds `tansu` on PATH or in cargo's bin directory, installing it there if it is missing
/// (about nine minutes on two cores, once per machine).
fn ensure_tansu(sh: &Shell) -> anyhow::Result<std::path::PathBuf> {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cargo")))
        .ok_or_else(|| anyhow::anyhow!("neither CARGO_HOME nor HOME is set"))?;
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain([cargo_home.join("bin")])
        .map(|d| d.join("tansu"))
        .find(|p| p.is_file());
    if let Some(bin) = found {
        return Ok(bin);
    }
    println!("installing tansu {TANSU_VERSION} for the end-to-end tests (once per machine, several minutes)");
    cmd!(sh, "cargo install tansu --version {TANSU_VERSION} --locked --features dynostore,postgres").run()?;
    Ok(cargo_home.join("bin/tansu"))
}

/// The kubernetes-validate release the `k8s/` checks use: it bundles the Kubernetes schemas, so
/// validation needs no network once it is installed.
const KUBERNETES_VALIDATE_VERSION: &str = "1.37.0";

/// The schemathesis release the API contract test (`host/tests/it/contract.rs`) runs.
const SCHEMATHESIS_VERSION: &str = "4.32.5";

/// The Python tools' entry points in their venv.
struct PythonTools {
    kubernetes_validate: std::path::PathBuf,
    schemathesis: std::path::PathBuf,
}

/// Installs the pinned Python tools into one venv under `target/` (once per clone, again when a
/// pin changes) and checks that kubectl, which renders the overlays, is on PATH.
fn ensure_python_tools(sh: &Shell) -> anyhow::Result<PythonTools> {
    cmd!(sh, "kubectl version --client")
        .quiet()
        .ignore_stdout()
        .run()
        .context("kubectl (with kustomize) must be on PATH: the k8s/ tests render the overlays with it")?;
    let venv = project_root().join("target/py-tools");
    let tools = PythonTools {
        kubernetes_validate: venv.join("bin/kubernetes-validate"),
        schemathesis: venv.join("bin/st"),
    };
    // What was installed is recorded beside the venv: a changed pin installs again.
    let pins =
        format!("kubernetes-validate=={KUBERNETES_VALIDATE_VERSION}\nschemathesis=={SCHEMATHESIS_VERSION}\n");
    let installed = venv.join("installed.txt");
    if std::fs::read_to_string(&installed).ok().as_deref() != Some(pins.as_str()) {
        println!("installing {} into {}", pins.trim().replace('\n', ", "), venv.display());
        cmd!(sh, "python3 -m venv {venv}").run()?;
        let requirements = venv.join("requirements.txt");
        std::fs::write(&requirements, &pins)?;
        let pip = venv.join("bin/pip");
        cmd!(sh, "{pip} install --quiet -r {requirements}")
            .run()
            .context("installing the Python test tools")?;
        std::fs::write(&installed, &pins)?;
    }
    Ok(tools)
}

/// Installs playwright-core for the storefront's browser test from the committed lockfile (once
/// per clone). Chromium itself comes from Debian (`.ci/run` installs it).
fn ensure_browser_driver(sh: &Shell) -> anyhow::Result<()> {
    let dir = project_root().join("host/tests/browser");
    if !dir.join("node_modules/playwright-core").is_dir() {
        cmd!(sh, "npm ci --prefix {dir} --no-audit --no-fund")
            .run()
            .context("installing playwright-core for the browser test (needs Node.js and npm)")?;
    }
    Ok(())
}

/// Builds `fixtures/` into `target/fixtures/<name>.wasm` (no world check: some are broken on purpose).
pub fn build_fixtures(sh: &Shell) -> anyhow::Result<()> {
    let root = project_root();
    let names: Vec<String> = wasm::members(&root.join("fixtures"))?.into_iter().map(|m| m.name).collect();
    let built = wasm::build(sh, &root.join("fixtures"), &names, wasm::Profile::Named("fixtures"))?;
    let out = root.join("target/fixtures");
    std::fs::create_dir_all(&out)?;
    for (name, path) in names.iter().zip(built) {
        std::fs::copy(&path, out.join(format!("{name}.wasm")))?;
    }
    println!("built {} test fixtures into target/fixtures", names.len());
    Ok(())
}
