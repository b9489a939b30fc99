//! The `diffsteer` command line.

mod args;
mod batch;
mod bench;
mod engine_flags;
mod eval;
mod eval_chart;
mod eval_methods;
mod eval_methods_chart;
mod generate;
mod selftest;
mod serve;
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
    // Engine commands run on the engine's own pool; the others on a pool of
    // their own. Either way the work runs on a worker of the pool, not on the main
    // thread: a parallel op issued from inside the pool forks work cheaply, while
    // one issued from outside hands the job over and sleeps until it is done (two
    // thread switches per op, which dominates a small batch's forward).
    let threads = cli.threads;
    let result = match cli.command {
        Command::Generate(args) => generate::run(&args, threads),
        Command::Eval(args) => eval::run(&args, threads),
        Command::Batch(args) => batch::run(&args, threads),
        Command::Bench(args) => bench::run(&args, threads),
        Command::Serve(args) => serve::run(&args, threads),
        Command::Tokenize(args) => tokenize::run(&args),
        Command::Selftest(args) => match rayon::ThreadPoolBuilder::new()
            .num_threads(threads.unwrap_or(0))
            .build()
        {
            Ok(pool) => pool.install(|| selftest::run(&args)),
            Err(e) => Err(usage_error::usage(
                "--threads",
                format!("cannot start the thread pool: {e}"),
            )),
        },
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
