//! Commands that are not a server: what `tagpin resolve` computes, for `main` to print.

use std::time::Duration;

use crate::resolve::{BatchRequest, Budget, ImageOutcome, Outcome, Resolver};

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
