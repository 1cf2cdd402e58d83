//! tagpin: pins container image tags to digests as objects are admitted to Kubernetes.
//!
//! The pure core (`reference`, `tree`, `podspec`, `prune`, the planning and deciding half of
//! `admission`, the findings of `audit`, the plans of `pin`) takes values and returns values.
//! What touches the outside: `resolve::http`, `resolve::registry` and `resolve::auth` (registry
//! and token requests), `resolve::provider` (plugin processes), `resolve::credentials` and `cli`
//! (the docker config and CA files they are given), `cluster` (Kubernetes API reads), `server`
//! (the listening sockets), `tls` (certificate files), `pin::files` (the YAML files read and
//! written) and `commands` (stdout, stderr, signals).
#![forbid(unsafe_code)]

pub mod admission;
pub mod audit;
pub mod cli;
pub mod cluster;
pub mod commands;
pub mod json_scan;
pub mod json_str;
pub mod logging;
pub mod metrics;
pub mod pin;
pub mod podspec;
pub mod progress;
pub mod prune;
pub mod reference;
pub mod resolve;
pub mod server;
pub mod tls;
pub mod tree;

/// Installs the one rustls crypto provider (ring) for the process. Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
