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
    assert_eq!(names, ["notifier", "order-processor"], "{stdout}");
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
