//! tagpin: pins container image tags to digests as objects are admitted to Kubernetes.
//!
//! The pure core (`reference`, `podspec`, the planning and deciding half of `admission`) takes
//! values and returns values; only `resolve::registry`, `resolve::provider` (plugin processes)
//! and `cluster` (Kubernetes API reads) touch the outside.
#![forbid(unsafe_code)]

pub mod admission;
pub mod audit;
pub mod cli;
pub mod cluster;
pub mod commands;
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

/// Installs the one rustls crypto provider (ring) for the process. Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
