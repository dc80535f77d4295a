//! The `portcullis` binary's library half: configuration, secrets, serving, and the
//! commands that compose the `api` and `proxy` crates. `main.rs` only parses arguments.

pub mod cli;
pub mod config;
pub mod demo_upstream;
pub mod dev;
pub mod lambda;
pub mod secrets;
pub mod serve;
pub mod telemetry;
pub mod tls;
