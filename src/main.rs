//! The `tagpin` binary: parse flags, set up logging, run a command.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use clap::Parser as _;
use tagpin::admission::{AdmissionConfig, Admitter};
use tagpin::cli::{Cli, Command, PinArgs, RegistryArgs, ResolveArgs};
use tagpin::metrics::Metrics;
use tagpin::reference::{ImageRef, ReferenceError};
use tagpin::resolve::{dedupe, Outcome, Resolver};

fn main() -> ExitCode {
    tagpin::install_crypto_provider();
    let cli = Cli::parse();
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

fn build(
    args: &RegistryArgs,
    cluster: Option<tagpin::cluster::Cluster>,
) -> anyhow::Result<(Admitter, Arc<Metrics>)> {
    let metrics = Arc::new(Metrics::new());
    let mut rc = args.resolver_config()?;
    rc.cluster = cluster;
    let resolver =
        Resolver::new(rc, metrics.clone()).context("cannot set up the registry client")?;
    let config: AdmissionConfig = args.admission_config();
    Ok((
        Admitter {
            resolver,
            config: Arc::new(config),
            metrics: metrics.clone(),
        },
        metrics,
    ))
}

async fn serve(args: tagpin::cli::ServeArgs) -> anyhow::Result<()> {
    init_logging(&args.registry);
    let cluster = tagpin::cluster::Cluster::for_serve(
        args.registry.no_kube,
        args.kubeconfig.as_deref(),
        args.cluster_options(),
    )
    .await?;
    let (admitter, metrics) = build(&args.registry, cluster)?;
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
    let (admitter, _) = build(&args.registry, None)?;
    let cfg = &admitter.config;
    let mut lines: Vec<Result<String, String>> = Vec::with_capacity(args.images.len());
    let mut targets = Vec::new();
    for image in &args.images {
        if cfg
            .skip_prefixes
            .iter()
            .any(|p| image.starts_with(p.as_str()))
        {
            lines.push(Ok(image.clone()));
            continue;
        }
        match ImageRef::parse(image) {
            Ok(r) => {
                targets.push((lines.len(), r));
                lines.push(Ok(String::new()));
            }
            Err(ReferenceError::HasDigest { .. }) => lines.push(Ok(image.clone())),
            Err(e) => lines.push(Err(e.to_string())),
        }
    }
    let refs: Vec<ImageRef> = targets.iter().map(|(_, r)| r.clone()).collect();
    let (distinct, index) = dedupe(&refs);
    let started = Instant::now();
    let gathered = admitter
        .resolver
        .gather_credentials(
            &Default::default(),
            &distinct,
            started + cfg.resolve_timeout,
        )
        .await;
    for w in &gathered.warnings {
        eprintln!("{w}");
    }
    let outcomes = admitter
        .resolver
        .resolve_all(
            &distinct,
            &gathered.sets,
            started,
            cfg.resolve_timeout,
            false,
        )
        .await;
    for ((line, image), &i) in targets.iter().zip(&index) {
        lines[*line] = match &outcomes[i] {
            Outcome::Pinned(d) | Outcome::Stale { digest: d, .. } => {
                Ok(image.pinned(d, cfg.keep_tag))
            }
            Outcome::Failed(e) => Err(format!("{image}: {e}")),
        };
    }
    let mut failed = false;
    for (input, line) in args.images.iter().zip(lines) {
        match line {
            Ok(pinned) => println!("{input} {pinned}"),
            Err(e) => {
                failed = true;
                eprintln!("tagpin: cannot pin {e}");
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn pin(args: PinArgs) -> anyhow::Result<ExitCode> {
    init_logging(&args.registry);
    let sources = match tagpin::pin::read_inputs(&args.inputs) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tagpin: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    // Files carry no namespace: pull secrets do not apply; credential plugins and
    // --docker-config do.
    let (admitter, _) = build(&args.registry, None)?;
    match tagpin::pin::run(sources, &admitter.resolver, &args.options(), &args.output()).await {
        Ok(report) if report.problems == 0 => Ok(ExitCode::SUCCESS),
        Ok(_) => Ok(ExitCode::FAILURE),
        Err(e) => {
            eprintln!("tagpin: {e}");
            Ok(ExitCode::from(2))
        }
    }
}
