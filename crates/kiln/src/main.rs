//! `kiln`: the command line. Thin: parses arguments, opens the layers below,
//! renders progress.

mod cli;
mod images;
mod pipeline;
mod progress;
mod runner;
mod service;

use std::process::ExitCode;

use clap::Parser;

const EVAL_STACK_BYTES: usize = 64 << 20;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    init_tracing(args.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // kiln.star is parsed and compiled recursively on these threads: a
        // deeply nested expression needs more than the default 2 MiB. Only
        // the pages a thread touches are ever backed by memory.
        .thread_stack_size(EVAL_STACK_BYTES)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(args)) {
        Ok(code) => code,
        Err(e) => {
            // Starlark's diagnostics carry their own "error:".
            let message = format!("{e:#}");
            eprintln!(
                "error: {}",
                message.strip_prefix("error: ").unwrap_or(&message)
            );
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("KILN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
