//! The order-handler host as a library: typed configuration and the WebAssembly runtime that loads
//! handler components and invokes them. The `order-host` binary and `xtask` are thin users of it.

pub mod config;
pub mod runtime;
