//! The host's integration tests, in one binary with a module per area. One binary because every
//! area links wasmtime, librdkafka, sqlx and axum: on two cores, linking eleven test binaries
//! was most of the edit-test loop. Filter by module: `cargo xtask test --test it dispatch::`, or
//! several: `cargo xtask test --test it -- dispatch:: runtime::`.
//!
//! Tests in one process share its globals: `support::logs` installs the one global `tracing`
//! subscriber, and a test that needs a subscriber of its own (`tracing`) sets it on its own
//! runtime's threads instead.

mod support;

mod api;
mod browser;
mod cli;
mod contract;
mod crash;
mod dead_letters;
mod deploy;
mod dispatch;
mod e2e;
mod queue_split;
mod replicas;
mod runtime;
mod scaffold;
mod shadow;
mod swap;
mod tansu_probe;
mod traces;
