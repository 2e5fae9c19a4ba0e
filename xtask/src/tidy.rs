//! Tidy: the repository's invariants that are cheap to check as text, run as tests of xtask.

use std::path::{Path, PathBuf};

use crate::project_root;

/// Source files of every workspace, skipping build output.
fn rust_files() -> Vec<PathBuf> {
    let root = project_root();
    let mut out = Vec::new();
    for dir in ["host", "xtask", "devpg", "manifest", "handlers", "fixtures"] {
        walk(&root.join(dir), &mut out);
    }
    out.retain(|p| p.extension().is_some_and(|e| e == "rs"));
    assert!(out.len() > 10, "tidy found too few files: {out:?}");
    out
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            if entry.file_name() != "target" {
                walk(&path, out);
            }
        } else {
            out.push(path);
        }
    }
}

fn relative(path: &Path) -> String {
    path.strip_prefix(project_root()).unwrap_or(path).display().to_string()
}

#[test]
fn every_rust_file_says_what_it_is_for() {
    let missing: Vec<String> = rust_files()
        .into_iter()
        .filter(|p| !std::fs::read_to_string(p).unwrap().starts_with("//!"))
        .map(|p| relative(&p))
        .collect();
    assert!(missing.is_empty(), "files without a leading `//!` line: {missing:?}");
}

#[test]
fn ignored_tests_carry_a_tracking_note() {
    let mut bad = Vec::new();
    for path in rust_files() {
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let ignored = line.trim_start().starts_with("#[ignore");
            let noted = line.contains("tracking:") || (i > 0 && lines[i - 1].contains("tracking:"));
            if ignored && !noted {
                bad.push(format!("{}:{}", relative(&path), i + 1));
            }
        }
    }
    assert!(bad.is_empty(), "#[ignore] without a `tracking:` note: {bad:?}");
}

/// Each outside dependency is known to one module of the host; the rest of the host reaches it
/// through that module's own types.
#[test]
fn each_boundary_crate_is_known_to_one_module() {
    let boundaries = [
        ("wasmtime", &["host/src/runtime/", "host/benches/"][..]),
        ("rdkafka", &["host/src/kafka.rs"][..]),
        // Benches, like tests, read the database to measure what happened.
        ("sqlx::query", &["host/src/db/", "host/benches/"][..]),
        // The ingest benchmark's bare baseline endpoint is axum by definition.
        ("axum", &["host/src/http/", "host/benches/ingest.rs"][..]),
        ("notify::", &["host/src/handler_watch.rs"][..]),
        ("prometheus_client", &["host/src/metrics.rs"][..]),
        ("opentelemetry", &["host/src/telemetry.rs"][..]),
    ];
    let host_sources: Vec<String> = rust_files()
        .into_iter()
        .map(|p| relative(&p))
        .filter(|p| p.starts_with("host/src/") || p.starts_with("host/benches/"))
        .collect();
    let mut offenders = Vec::new();
    for (needle, allowed) in boundaries {
        for p in &host_sources {
            let text = std::fs::read_to_string(project_root().join(p)).unwrap();
            if text.contains(needle) && !allowed.iter().any(|a| p.starts_with(a)) {
                offenders.push(format!("{p} uses {needle} (allowed only in {allowed:?})"));
            }
        }
    }
    assert!(offenders.is_empty(), "{offenders:#?}");
}

#[test]
fn every_wit_item_is_documented() {
    let item = |l: &str| {
        let l = l.trim_start();
        ["interface ", "world ", "record ", "variant ", "enum ", "type ", "export ", "import "]
            .iter()
            .any(|k| l.starts_with(k))
            || l.split(':').nth(1).is_some_and(|rest| rest.trim_start().starts_with("func"))
    };
    let mut undocumented = Vec::new();
    for entry in std::fs::read_dir(project_root().join("wit")).unwrap().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if item(line) && !(i > 0 && lines[i - 1].trim_start().starts_with("///")) {
                undocumented.push(format!(
                    "wit/{}:{}: {}",
                    entry.file_name().to_string_lossy(),
                    i + 1,
                    line.trim()
                ));
            }
        }
    }
    assert!(undocumented.is_empty(), "WIT items without a `///` doc: {undocumented:#?}");
}

/// Every integration test of the host is a module of the one binary `host/tests/it/`: each extra
/// binary links wasmtime, librdkafka, sqlx and axum again, which on two cores is most of the
/// edit-test loop.
#[test]
fn the_host_has_one_integration_test_binary() {
    let tests = project_root().join("host/tests");
    let mut binaries = Vec::new();
    for entry in std::fs::read_dir(&tests).unwrap().flatten() {
        let path = entry.path();
        let is_binary = if path.is_dir() {
            path.join("main.rs").is_file()
        } else {
            path.extension().is_some_and(|e| e == "rs")
        };
        if is_binary {
            binaries.push(relative(&path));
        }
    }
    assert_eq!(binaries, ["host/tests/it"], "a new test area is a module of host/tests/it/main.rs");
}
