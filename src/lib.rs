//! Portcullis: a programmable API gateway on Pingora. The binary in `main.rs` is a thin CLI over
//! this library so integration tests and benchmarks can reach the same code.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod config;
pub mod healthcheck;
pub mod logging;
pub mod metrics;
pub mod names;
pub mod plugin;
pub mod proxy;
pub mod routing;
pub mod runtime;
pub mod server;
pub mod stream;
pub mod tls;
pub mod upstream;
