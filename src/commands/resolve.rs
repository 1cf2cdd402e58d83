//! `tagpin resolve IMAGE...`: prints `<input> <pinned>` per image (the resolver's module is
//! `crate::resolve`; this is the command).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use super::{resolver, CommandError};
use crate::cli::ResolveArgs;
use crate::metrics::Metrics;
use crate::resolve::{BatchRequest, Budget, ImageOutcome, Outcome, Resolver};

/// Resolves with the registry flags only (no namespace, so no pull secrets), prints a line per
/// image on stdout and each failure on stderr. Exit 1 if any image cannot be pinned.
pub async fn run(args: ResolveArgs) -> Result<ExitCode, CommandError> {
    crate::logging::init(args.registry.log_format);
    let resolver = resolver(&args.registry, &Arc::new(Metrics::new()), |_| {})?;
    let r = &args.registry;
    let report = resolve(&resolver, &args.images, r.keep_tag, r.resolve_timeout).await;
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

/// One line of `tagpin resolve`: the pinned reference (or the input as is, when it needs no
/// pinning), or why it cannot be pinned.
pub type ResolveLine = Result<String, String>;

/// What `tagpin resolve` found: one line per input, in order, and the credential warnings.
#[derive(Debug, Default)]
pub struct ResolveReport {
    pub lines: Vec<ResolveLine>,
    pub warnings: Vec<String>,
}

impl ResolveReport {
    pub fn failed(&self) -> bool {
        self.lines.iter().any(Result::is_err)
    }
}

/// Resolves `images` as `tagpin resolve` does: no pull secrets (no namespace), no stale digests,
/// all within `timeout`.
pub async fn resolve(
    resolver: &Resolver,
    images: &[String],
    keep_tag: bool,
    timeout: Duration,
) -> ResolveReport {
    let batch = resolver
        .resolve_batch(&BatchRequest::default(), images, Budget::from_now(timeout))
        .await;
    let lines = images
        .iter()
        .zip(batch.outcomes)
        .map(|(input, outcome)| match outcome {
            ImageOutcome::Skipped | ImageOutcome::HasDigest => Ok(input.clone()),
            ImageOutcome::Invalid(e) => Err(e.to_string()),
            ImageOutcome::OverLimit(image) => Err(format!("{image}: over the image limit")),
            ImageOutcome::Resolved(image, o) => match o {
                Outcome::Pinned(d) | Outcome::Stale { digest: d, .. } => {
                    Ok(image.pinned(&d, keep_tag))
                }
                Outcome::Failed(e) => Err(format!("{image}: {e}")),
            },
        })
        .collect();
    ResolveReport {
        lines,
        warnings: batch.warnings,
    }
}
