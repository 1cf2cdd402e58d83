//! The `tagpin` binary: parse flags, set up logging, run a command.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use tagpin::admission::Admitter;
use tagpin::cli::{AuditArgs, Command, PinArgs, RegistryArgs, ResolveArgs};
use tagpin::metrics::Metrics;
use tagpin::resolve::Resolver;

// jemalloc: about half the resident memory of glibc with a full digest cache (BENCHMARKS.md).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    tagpin::install_crypto_provider();
    let cli = tagpin::cli::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tagpin: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args).await.map(|()| ExitCode::SUCCESS),
            Command::Resolve(args) => resolve(args).await,
            Command::Pin(args) => pin(args).await,
            Command::Audit(args) => audit(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tagpin: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(args: &RegistryArgs) {
    tagpin::logging::init(args.log_format);
}

/// The admitter: metrics first, then the resolver that records into them.
fn build(
    args: &RegistryArgs,
    metrics: Arc<Metrics>,
    serve_only: impl FnOnce(&mut tagpin::resolve::ResolverConfig),
) -> anyhow::Result<Admitter> {
    let mut rc = args.resolver_config(&metrics)?;
    serve_only(&mut rc);
    let resolver =
        Resolver::new(rc, metrics.clone()).context("cannot set up the registry client")?;
    Ok(Admitter {
        resolver,
        config: Arc::new(args.admission_config()),
        metrics,
    })
}

async fn serve(args: tagpin::cli::ServeArgs) -> anyhow::Result<()> {
    init_logging(&args.registry);
    let metrics = Arc::new(Metrics::with_max_registries(args.metrics_max_registries));
    let cluster = tagpin::cluster::Cluster::for_serve(
        args.registry.no_kube,
        args.kubeconfig.as_deref(),
        args.cluster_options(),
        metrics.clone(),
    )
    .await?;
    let admitter = build(&args.registry, metrics.clone(), |rc| {
        rc.cluster = cluster;
        rc.registry.policy = Arc::new(args.address_policy());
        rc.max_images_per_batch = Some(args.max_images_per_review);
    })?;
    tagpin::server::serve(args.serve_config(), admitter, metrics, shutdown_signal()).await?;
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

async fn resolve(args: ResolveArgs) -> anyhow::Result<ExitCode> {
    init_logging(&args.registry);
    let adm = build(&args.registry, Arc::new(Metrics::new()), |_| {})?;
    let r = &args.registry;
    let report =
        tagpin::commands::resolve(&adm.resolver, &args.images, r.keep_tag, r.resolve_timeout).await;
    for w in &report.warnings {
        eprintln!("{w}");
    }
    for (input, line) in args.images.iter().zip(&report.lines) {
        match line {
            Ok(pinned) => println!("{input} {pinned}"),
            Err(e) => eprintln!("tagpin: cannot pin {e}"),
        }
    }
    Ok(if report.failed() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn pin(args: PinArgs) -> anyhow::Result<ExitCode> {
    use std::io::IsTerminal as _;
    init_logging(&args.registry);
    let (sources, unreadable) = tagpin::pin::read_inputs(&args.inputs);
    // Files carry no namespace: pull secrets do not apply; credential plugins and
    // --docker-config do.
    let admitter = build(&args.registry, Arc::new(Metrics::new()), |_| {})?;
    let (opts, output) = (args.options(), args.output());
    let progress = |line: &str| eprintln!("tagpin: {line}");
    let run = tagpin::pin::run(
        sources,
        unreadable,
        &admitter.resolver,
        &opts,
        &output,
        &progress,
    );
    let report = match run.await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tagpin: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    for w in &report.warnings {
        eprintln!("{w}");
    }
    for line in &report.invalid {
        eprintln!("tagpin: {line}");
    }
    match (report.invalid.len(), report.skipped_invalid) {
        (0, _) => {}
        (n, true) => eprintln!("tagpin: skipped {n} invalid input(s) named above; pinned the rest"),
        (n, false) => eprintln!(
            "tagpin: {n} invalid input(s): nothing written; fix them, or pass --skip-invalid to pin the rest"
        ),
    }
    for p in &report.problems {
        eprintln!("tagpin: {p}");
    }
    for n in &report.notes {
        eprintln!("tagpin: note: {n}");
    }
    let code = report.exit_code();
    if std::io::stderr().is_terminal() || code != 0 || opts.mode == tagpin::pin::Mode::Check {
        eprintln!("tagpin: {}", report.summary(opts.mode));
    }
    Ok(ExitCode::from(code))
}

async fn audit(args: AuditArgs) -> anyhow::Result<ExitCode> {
    init_logging(&args.registry);
    let fail = |e: &dyn std::fmt::Display| {
        eprintln!("tagpin: audit: {e}");
        Ok(ExitCode::from(2))
    };
    if args.registry.no_kube {
        return fail(&"--no-kube: the audit reads pods from the Kubernetes API; leave it out");
    }
    let metrics = Arc::new(Metrics::new());
    let (cluster, context_ns) = match tagpin::cluster::Cluster::for_audit(
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
    let admitter = match build(&args.registry, metrics, |rc| {
        rc.cluster = Some(cluster.clone());
        rc.registry.policy = Arc::new(args.address_policy());
        // One answer per tag for the whole run, however long it takes (nothing outlives it).
        rc.cache_ttl = rc.cache_ttl.max(std::time::Duration::from_secs(24 * 3600));
    }) {
        Ok(a) => a,
        Err(e) => return fail(&format!("{e:#}")),
    };
    let progress = |line: &str| eprintln!("tagpin: {line}");
    let (scope, opts) = (args.scope(&context_ns), args.options());
    let run = tagpin::audit::run::run(&cluster, &admitter.resolver, &scope, &opts, &progress);
    let report = match run.await {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    for w in &report.warnings {
        eprintln!("tagpin: warning: {w}");
    }
    match args.output {
        tagpin::cli::AuditOutput::Table => print!("{}", report.table()),
        tagpin::cli::AuditOutput::Json => print!("{}", report.json()),
    }
    Ok(ExitCode::from(report.exit_code(&args.fail_on)))
}
