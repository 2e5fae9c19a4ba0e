//! Shared by the integration tests: where the built components are, and (re-exported from
//! `host::runtime::golden`) the sample order and events the golden cases are about.

pub mod logs;
pub mod mirrord;
pub mod process;
pub mod service;

use std::path::PathBuf;
use std::sync::Arc;

use host::config::RuntimeConfig;
pub use host::runtime::golden::{order_created, sample_order, status_updated};
use host::runtime::{HandlerSpec, LoadedHandler, Runtime};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Bytes of a built component: `handlers` or `fixtures`, by name.
pub fn component(kind: &str, name: &str) -> Vec<u8> {
    let path = root().join("target").join(kind).join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!("{}: {e}; build the components first with `cargo xtask test`", path.display())
    })
}

pub fn runtime() -> Runtime {
    Runtime::new(&RuntimeConfig { pool_size: 8, ..RuntimeConfig::default() }).expect("runtime starts")
}

/// Loads a fixture with default limits, or the given ones.
pub fn load_fixture(rt: &Runtime, name: &str, timeout_ms: u64, memory: u64) -> Arc<LoadedHandler> {
    let spec = HandlerSpec { timeout_ms, memory_limit_bytes: memory, ..HandlerSpec::default() };
    let manifest = spec.into_manifest(name, &format!("{name}.wasm"), None);
    Arc::new(rt.load(manifest, &component("fixtures", name), &Default::default()).expect("fixture loads"))
}

/// The value of one series (name and labels exactly as exposed) in a Prometheus text exposition.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The same component with a custom section appended: identical behaviour, a different sha256,
/// so a test or benchmark has distinct versions to swap between.
pub fn versioned(bytes: &[u8], tag: &str) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            out.push(if n == 0 { byte } else { byte | 0x80 });
            if n == 0 {
                break;
            }
        }
    }
    let name = b"order-host-test-version";
    let mut body = Vec::new();
    leb(name.len(), &mut body);
    body.extend_from_slice(name);
    body.extend_from_slice(tag.as_bytes());
    let mut out = bytes.to_vec();
    out.push(0);
    leb(body.len(), &mut out);
    out.extend_from_slice(&body);
    out
}
