//! `tagpin serve`: the admission webhook, until SIGTERM or SIGINT.

use std::sync::Arc;

use super::{resolver, CommandError};
use crate::admission::Admitter;
use crate::cli::ServeArgs;
use crate::cluster::Cluster;
use crate::metrics::Metrics;

/// Builds the admitter (metrics first, then the resolver that records into them, reading pull
/// secrets through the cluster) and serves until a shutdown signal has been drained.
pub async fn run(args: ServeArgs) -> Result<(), CommandError> {
    // Lines are written by a thread of their own; the guard writes out the last ones on return.
    let _logs = crate::logging::init_non_blocking(args.registry.log_format);
    let metrics = Arc::new(Metrics::with_max_registries(args.metrics_max_registries));
    let cluster = Cluster::for_serve(
        args.registry.no_kube,
        args.kubeconfig.as_deref(),
        args.cluster_options(),
        metrics.clone(),
    )
    .await?;
    let resolver = resolver(&args.registry, &metrics, |rc| {
        rc.cluster = cluster;
        rc.registry.policy = Arc::new(args.address_policy());
        rc.max_images_per_batch = Some(args.max_images_per_review);
    })?;
    let admitter = Admitter {
        resolver,
        config: Arc::new(args.registry.admission_config()),
        metrics: metrics.clone(),
    };
    crate::server::serve(args.serve_config(), admitter, metrics, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; stop with SIGINT");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
