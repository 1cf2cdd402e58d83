//! `tagpin audit` (also `kubectl tagpin audit`): which running pods are not what their tags say.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use super::{message, resolver};
use crate::cli::{AuditArgs, AuditOutput};
use crate::cluster::Cluster;
use crate::metrics::Metrics;

/// Reads pods through the kubeconfig, resolves their tags once each, prints the table or the
/// JSON on stdout. Exit 0: nothing in `--fail-on` found; 1: found; 2: the audit could not run
/// (said on stderr).
pub async fn run(args: AuditArgs) -> ExitCode {
    crate::logging::init(args.registry.log_format);
    let fail = |e: &dyn std::fmt::Display| {
        eprintln!("tagpin: audit: {e}");
        ExitCode::from(2)
    };
    if args.registry.no_kube {
        return fail(&"--no-kube: the audit reads pods from the Kubernetes API; leave it out");
    }
    let metrics = Arc::new(Metrics::new());
    let (cluster, context_ns) = match Cluster::for_audit(
        args.kubeconfig.as_deref(),
        args.context.as_deref(),
        args.cluster_options(),
        metrics.clone(),
    )
    .await
    {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let resolver = match resolver(&args.registry, &metrics, |rc| {
        rc.cluster = Some(cluster.clone());
        rc.registry.policy = Arc::new(args.address_policy());
        // One answer per tag for the whole run, however long it takes (nothing outlives it).
        rc.cache_ttl = rc.cache_ttl.max(Duration::from_secs(24 * 3600));
    }) {
        Ok(r) => r,
        Err(e) => return fail(&message(&e)),
    };
    let progress = |line: &str| eprintln!("tagpin: {line}");
    let (scope, opts) = (args.scope(&context_ns), args.options());
    let run = crate::audit::run::run(&cluster, &resolver, &scope, &opts, &progress);
    let report = match run.await {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    for w in &report.warnings {
        eprintln!("tagpin: warning: {w}");
    }
    match args.output {
        AuditOutput::Table => print!("{}", report.table()),
        AuditOutput::Json => print!("{}", report.json()),
    }
    ExitCode::from(report.exit_code(&args.fail_on))
}
