//! The `tagpin` binary: parse flags, run one command (`tagpin::commands`), exit with its code.

use std::process::ExitCode;

use tagpin::cli::Command;
use tagpin::commands;

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
            Command::Serve(args) => commands::serve::run(args).await.map(|()| ExitCode::SUCCESS),
            Command::Resolve(args) => commands::resolve::run(args).await,
            Command::Pin(args) => commands::pin::run(args).await,
            Command::Audit(args) => Ok(commands::audit::run(args).await),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tagpin: {}", commands::message(&e));
            ExitCode::FAILURE
        }
    }
}
