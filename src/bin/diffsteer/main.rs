//! The `diffsteer` command line.

mod align;
mod args;
mod bench;
mod eval;
mod generate;
mod selftest;
mod tokenize;
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
    // Every command runs on a worker of the pool, not on the main thread: a parallel
    // op issued from inside the pool forks work cheaply, while one issued from
    // outside hands the job over and sleeps until it is done (two thread switches
    // per op, which dominates a small batch's forward).
    let pool = match rayon::ThreadPoolBuilder::new()
        .num_threads(cli.threads.unwrap_or(0))
        .build()
    {
        Ok(pool) => pool,
        Err(e) => {
            let threads = cli
                .threads
                .map_or("the default number of".into(), |t| t.to_string());
            eprintln!("error: --threads: cannot start {threads} threads: {e}");
            return ExitCode::from(2);
        }
    };
    let result = pool.install(|| match cli.command {
        Command::Generate(args) => generate::run(&args),
        Command::Selftest(args) => selftest::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Eval(args) => eval::run(&args),
        Command::Tokenize(args) => tokenize::run(&args),
    });
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
