//! Captures the host's `tracing` events in memory so a test can wait for something the host only
//! says in its logs (a retry of one event), instead of sleeping and hoping it happened.

use std::collections::BTreeMap;
use std::sync::{Mutex, Once};

use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

/// One logged event: its message and its other fields, rendered as text.
#[derive(Debug, Clone)]
pub struct Logged {
    pub message: String,
    pub fields: BTreeMap<String, String>,
}

static LOGGED: Mutex<Vec<Logged>> = Mutex::new(Vec::new());
static INSTALL: Once = Once::new();

/// Installs the capturing subscriber for this test binary (once).
pub fn capture() {
    INSTALL.call_once(|| {
        tracing_subscriber::registry().with(Capture).init();
    });
}

/// Every event logged so far for which `keep` holds.
pub fn logged(keep: impl Fn(&Logged) -> bool) -> Vec<Logged> {
    LOGGED.lock().unwrap().iter().filter(|l| keep(l)).cloned().collect()
}

struct Capture;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if *event.metadata().level() > tracing::Level::INFO {
            return;
        }
        let mut logged = Logged { message: String::new(), fields: BTreeMap::new() };
        event.record(&mut logged);
        LOGGED.lock().unwrap().push(logged);
    }
}

impl Visit for Logged {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record(field, value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.record(field, format!("{value:?}"));
    }
}

impl Logged {
    fn record(&mut self, field: &Field, value: String) {
        match field.name() {
            "message" => self.message = value,
            name => {
                self.fields.insert(name.to_string(), value);
            }
        }
    }
}
