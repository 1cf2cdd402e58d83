//! What a `tagpin pin` run is given (its sources, what to do, its settings), and the input and
//! output errors that stop it before anything is written.

use std::path::PathBuf;
use std::time::Duration;

/// Input and output problems that stop a run before anything is written.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot read {path}: not UTF-8 text (byte {at}); save it as UTF-8")]
    NotUtf8 { path: String, at: usize },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Join(String),
    #[error("--in-place needs files: stdin cannot be rewritten")]
    InPlaceStdin,
    /// `--skip-invalid` writes a skipped document as it was read; to stdout or `-o` an input
    /// that could not be read as text cannot be, and would silently go missing.
    #[error("nothing written: --skip-invalid passes skipped documents through as read, and these inputs could not be read as text: {0}; fix or leave them out, or use --in-place (which leaves them untouched)")]
    CannotPassThrough(String),
}

/// One input: a file, or stdin (`-`).
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub path: Option<PathBuf>,
    pub text: String,
}

/// What `tagpin pin` does with the results: write the pins, or only check them (`--check`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pin,
    Check,
}

/// Settings for one run.
#[derive(Debug, Clone)]
pub struct Options {
    pub mode: Action,
    pub keep_tag: bool,
    pub skip_prefixes: Vec<String>,
    /// Budget of one image's lookup.
    pub lookup_timeout: Duration,
    /// Pin what can be read and skip (name) the rest, instead of writing nothing.
    pub skip_invalid: bool,
    /// Image fields outside pod specs, undecided ones and objects not judged are problems
    /// (exit 1) instead of notes, in `pin` and `--check` alike.
    pub strict: bool,
}
