//! `tagpin pin`: pins (or, with `--check`, checks) the images in YAML files.

use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::sync::Arc;

use super::{resolver, CommandError};
use crate::cli::PinArgs;
use crate::metrics::Metrics;
use crate::pin::{Action, Output, Report};

/// Reads the inputs, resolves with the registry flags only (files carry no namespace: pull
/// secrets do not apply; credential plugins and `--docker-config` do), writes, and prints what
/// happened on stderr. Exit 0, 1 or 2 as `tagpin pin --help` says.
pub async fn run(args: PinArgs) -> Result<ExitCode, CommandError> {
    crate::logging::init(args.registry.log_format);
    let (sources, unreadable) = crate::pin::read_inputs(&args.inputs);
    let resolver = resolver(&args.registry, &Arc::new(Metrics::new()), |_| {})?;
    let (opts, output) = (args.options(), args.output());
    let progress = |line: &str| eprintln!("tagpin: {line}");
    let run = crate::pin::run(sources, unreadable, &resolver, &opts, &output, &progress);
    let report = match run.await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tagpin: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    print(&report, opts.mode, &output);
    Ok(ExitCode::from(report.exit_code()))
}

/// The report on stderr: warnings, invalid inputs, problems, notes, then the summary (always
/// on a terminal, on failure, and for `--check`).
fn print(report: &Report, mode: Action, output: &Output) {
    for w in &report.warnings {
        eprintln!("{w}");
    }
    for line in &report.invalid {
        eprintln!("tagpin: {line}");
    }
    match (report.invalid.len(), report.skipped_invalid) {
        (0, _) => {}
        (n, true) => eprintln!(
            "tagpin: skipped {n} invalid input(s) named above (written as read); pinned the rest"
        ),
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
    if std::io::stderr().is_terminal() || report.exit_code() != 0 || mode == Action::Check {
        eprintln!("tagpin: {}", report.summary(mode, output));
    }
}
