//! One module per subcommand of the `tagpin` binary: each builds only what it uses (logging,
//! metrics, a Kubernetes client, the resolver, the admitter), runs, prints, and says the exit
//! code. `main` parses the command line and calls one of them.

pub mod audit;
pub mod pin;
pub mod resolve;
pub mod serve;

use std::sync::Arc;

use crate::cli::{ConfigError, RegistryArgs};
use crate::cluster::ClusterError;
use crate::metrics::Metrics;
use crate::resolve::http::ClientBuildError;
use crate::resolve::{Resolver, ResolverConfig};
use crate::server::ServeError;

/// Why a command could not run: what `main` prints before exiting 1.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot set up the registry client")]
    Client(#[source] ClientBuildError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// An error and each of its causes on one line, `: ` between them.
pub fn message(e: &(dyn std::error::Error + 'static)) -> String {
    crate::logging::error_chain(e)
}

/// The resolver the registry flags describe, recording into `metrics`; `adjust` sets what only
/// one command sets (the Kubernetes client, the address policy, limits, the cache's life).
fn resolver(
    args: &RegistryArgs,
    metrics: &Arc<Metrics>,
    adjust: impl FnOnce(&mut ResolverConfig),
) -> Result<Resolver, CommandError> {
    let mut config = args.resolver_config(metrics)?;
    adjust(&mut config);
    Resolver::new(config, metrics.clone()).map_err(CommandError::Client)
}
