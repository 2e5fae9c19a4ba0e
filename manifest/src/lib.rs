//! The handler manifest, `handlers.toml` in `HANDLERS_DIR`: which component file is which handler,
//! what events it takes, its limits and its config. Written by `cargo xtask build-handlers` from each
//! handler crate's `[package.metadata.handler]`, read by the registry.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// File name of the manifest inside `HANDLERS_DIR`.
pub const MANIFEST_FILE: &str = "handlers.toml";

/// The event types a handler can subscribe to, one per world export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    OrderCreated,
    StatusUpdated,
}

impl EventKind {
    pub const ALL: [EventKind; 2] = [EventKind::OrderCreated, EventKind::StatusUpdated];

    /// The world export that receives this event.
    pub fn export_name(self) -> &'static str {
        match self {
            EventKind::OrderCreated => "on-order-created",
            EventKind::StatusUpdated => "on-status-updated",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EventKind::OrderCreated => "order-created",
            EventKind::StatusUpdated => "status-updated",
        })
    }
}

/// `order-created` or `status-updated`, as the manifest, the admin API and xtask spell them.
impl std::str::FromStr for EventKind {
    type Err = String;

    fn from_str(s: &str) -> Result<EventKind, String> {
        EventKind::ALL
            .into_iter()
            .find(|k| k.to_string() == s)
            .ok_or_else(|| format!("unknown event {s:?}: expected order-created or status-updated"))
    }
}

/// The whole manifest file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    #[serde(rename = "handler", default)]
    pub handlers: Vec<HandlerManifest>,
}

impl Manifest {
    pub fn parse(text: &str) -> anyhow::Result<Manifest> {
        let manifest: Manifest = toml::from_str(text)?;
        for h in &manifest.handlers {
            h.spec.validate().map_err(|e| anyhow::anyhow!("handler `{}`: {e}", h.name))?;
        }
        Ok(manifest)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a manifest always serialises")
    }
}

/// One handler's entry: where its component is, plus its [`HandlerSpec`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", try_from = "RawEntry")]
pub struct HandlerManifest {
    pub name: String,
    /// Component file, relative to the manifest.
    pub file: String,
    /// Hex sha256 of the file. When present the registry refuses a file that does not match, which
    /// is how a half-written or stale file is told apart from the one the manifest describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(flatten)]
    pub spec: HandlerSpec,
}

/// How an entry is read: serde ignores `deny_unknown_fields` through `flatten`, so the rest of the
/// entry is collected as a table and converted to a [`HandlerSpec`] on its own, which rejects
/// unknown keys.
#[derive(Deserialize)]
struct RawEntry {
    name: String,
    file: String,
    #[serde(default)]
    sha256: Option<String>,
    #[serde(flatten)]
    spec: toml::Table,
}

impl TryFrom<RawEntry> for HandlerManifest {
    type Error = String;

    fn try_from(raw: RawEntry) -> Result<Self, String> {
        let spec: HandlerSpec = raw.spec.try_into().map_err(|e| format!("handler `{}`: {e}", raw.name))?;
        Ok(spec.into_manifest(&raw.name, &raw.file, raw.sha256))
    }
}

/// What a handler crate declares about itself in `[package.metadata.handler]`: the manifest entry
/// minus what only the build knows (name, file, sha256).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct HandlerSpec {
    #[serde(default = "all_events")]
    pub events: Vec<EventKind>,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_memory_limit")]
    pub memory_limit_bytes: u64,
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

impl Default for HandlerSpec {
    fn default() -> Self {
        HandlerSpec {
            events: all_events(),
            timeout_ms: default_timeout_ms(),
            memory_limit_bytes: default_memory_limit(),
            config: BTreeMap::new(),
        }
    }
}

impl HandlerSpec {
    pub fn validate(&self) -> Result<(), String> {
        if self.events.is_empty() {
            return Err("subscribes to no events".into());
        }
        if self.timeout_ms == 0 {
            return Err("timeout-ms must be at least 1".into());
        }
        if self.timeout_ms > MAX_TIMEOUT_MS {
            return Err(format!(
                "timeout-ms must be at most {MAX_TIMEOUT_MS} (one minute), not {}",
                self.timeout_ms
            ));
        }
        if self.memory_limit_bytes < 64 * 1024 {
            return Err("memory-limit-bytes must be at least one 64 KiB wasm page".into());
        }
        Ok(())
    }

    pub fn into_manifest(self, name: &str, file: &str, sha256: Option<String>) -> HandlerManifest {
        HandlerManifest { name: name.to_string(), file: file.to_string(), sha256, spec: self }
    }
}

fn all_events() -> Vec<EventKind> {
    EventKind::ALL.to_vec()
}

/// The longest deadline a handler may ask for. A guest runs on a dispatcher thread and holds its
/// key's lane until it answers or its deadline traps it, so a deadline is how long one stuck
/// handler may hold both; a minute is far beyond any decision function and still ends. (Without a
/// cap, `u64::MAX` overflowed the host's epoch arithmetic.)
pub const MAX_TIMEOUT_MS: u64 = 60_000;

// A decision function that needs more than half a second is a bug, not a slow handler.
fn default_timeout_ms() -> u64 {
    500
}

fn default_memory_limit() -> u64 {
    16 << 20
}

/// Hex sha256: a component's version, and what a manifest entry pins its file to.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_fills_defaults() {
        let m = Manifest::parse(
            r#"
            [[handler]]
            name = "a"
            file = "a.wasm"
            events = ["status-updated"]
            config = { DEMO_MODE = "true" }
            "#,
        )
        .unwrap();
        let h = &m.handlers[0];
        assert_eq!(h.spec.events, vec![EventKind::StatusUpdated]);
        assert_eq!(h.spec.timeout_ms, 500);
        assert_eq!(h.spec.config["DEMO_MODE"], "true");
        assert_eq!(Manifest::parse(&m.to_toml()).unwrap(), m);
    }

    #[test]
    fn typos_and_bad_limits_are_errors() {
        let typo = Manifest::parse("[[handler]]\nname = \"a\"\nfile = \"a.wasm\"\ntimout-ms = 5\n");
        assert!(format!("{:#}", typo.unwrap_err()).contains("timout-ms"));
        let zero = Manifest::parse("[[handler]]\nname = \"a\"\nfile = \"a.wasm\"\ntimeout-ms = 0\n");
        assert!(format!("{:#}", zero.unwrap_err()).contains("handler `a`: timeout-ms"));
        let long = Manifest::parse("[[handler]]\nname = \"a\"\nfile = \"a.wasm\"\ntimeout-ms = 60001\n");
        assert!(format!("{:#}", long.unwrap_err()).contains("handler `a`: timeout-ms must be at most 60000"));
        let cap = Manifest::parse("[[handler]]\nname = \"a\"\nfile = \"a.wasm\"\ntimeout-ms = 60000\n");
        assert_eq!(cap.unwrap().handlers[0].spec.timeout_ms, 60_000);
        let event =
            Manifest::parse("[[handler]]\nname = \"a\"\nfile = \"a.wasm\"\nevents = [\"order-shipped\"]\n");
        assert!(format!("{:#}", event.unwrap_err()).contains("order-shipped"));
    }
}
