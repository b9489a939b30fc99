//! The `diffsteer` command line.

mod align;
mod args;
mod bench;
mod eval;
mod generate;
mod selftest;
mod usage_error;

use std::process::ExitCode;

use clap::Parser;

use args::{Cli, Command};
use usage_error::CliError;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error::report_clap(e),
    };
    if let Some(threads) = cli.threads {
        if let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
        {
            eprintln!("error: --threads: cannot start {threads} threads: {e}");
            return ExitCode::from(2);
        }
    }
    let result = match cli.command {
        Command::Generate(args) => generate::run(&args),
        Command::Selftest(args) => selftest::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Eval(args) => eval::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Usage(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
        Err(CliError::Runtime(e)) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
