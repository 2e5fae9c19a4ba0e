//! The `order-host check` command as a user runs it: lists what loaded, names what was rejected,
//! and says so in its exit code.

use std::process::Command;

fn check(dir: &std::path::Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_order-host"))
        .arg("check")
        .env("HANDLERS_DIR", dir)
        .env("DEMO_MODE", "true")
        .output()
        .expect("order-host runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn check_lists_the_built_handlers() {
    let (ok, stdout, stderr) = check(&crate::support::root().join("target/handlers"));
    assert!(ok, "{stderr}");
    let names: Vec<&str> = stdout.lines().filter_map(|l| l.split_whitespace().next()).collect();
    let manifest =
        std::fs::read_to_string(crate::support::root().join("target/handlers/handlers.toml")).unwrap();
    let built = host::runtime::Manifest::parse(&manifest).unwrap();
    let expected: Vec<&str> = built.handlers.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, expected, "{stdout}");
    assert!(stdout.contains("events: order-created, status-updated"), "{stdout}");
}

#[test]
fn check_fails_naming_a_rejected_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notifier.wasm"), crate::support::component("handlers", "notifier"))
        .unwrap();
    std::fs::write(dir.path().join("broken.wasm"), b"\0asm\x01\0\0\0").unwrap();
    let (ok, stdout, stderr) = check(dir.path());
    assert!(!ok, "a rejected file makes check fail");
    assert!(stdout.starts_with("notifier "), "the good handler still loads: {stdout}");
    assert!(
        stderr.contains("broken.wasm: handler `broken`: broken.wasm is a core WebAssembly module"),
        "{stderr}"
    );
}

#[test]
fn a_bad_setting_is_named() {
    let out = Command::new(env!("CARGO_BIN_EXE_order-host"))
        .arg("check")
        .env("DEMO_MODE", "sometimes")
        .output()
        .expect("order-host runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid DEMO_MODE=\"sometimes\": expected true or false"), "{stderr}");
}

/// `order-host golden` (what `cargo xtask handler-test` runs after the native tests) passes the
/// shipped cases and names a case the component answers differently, with a failing exit code.
#[test]
fn golden_replays_a_handlers_cases_through_its_component() {
    let root = crate::support::root();
    let golden = |cases: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_order-host"))
            .args(["golden", "notifier"])
            .arg(cases)
            .env("HANDLERS_DIR", root.join("target/handlers"))
            .output()
            .expect("order-host runs")
    };
    let shipped = root.join("handlers/notifier/cases.json");
    let out = golden(&shipped);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(", 0 differ"));

    let dir = tempfile::tempdir().unwrap();
    let altered = dir.path().join("cases.json");
    let text = std::fs::read_to_string(&shipped).unwrap();
    std::fs::write(&altered, text.replacen("thanks for your order", "thank you for order", 1)).unwrap();
    let out = golden(&altered);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a differing case fails");
    assert!(stderr.contains("MISMATCH") && stderr.contains("thanks for your order"), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(", 1 differ"));
}
