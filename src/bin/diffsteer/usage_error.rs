//! Exit codes and one-line messages: 2 for anything the user typed wrong (naming the
//! flag and what it accepts), 1 for failures while running.

use std::process::ExitCode;

use clap::error::{ContextKind, ContextValue, ErrorKind};

pub enum CliError {
    /// Bad input: printed as one line, exit code 2.
    Usage(String),
    /// A failure while running: exit code 1.
    Runtime(diffsteer::Error),
}

impl From<diffsteer::Error> for CliError {
    fn from(e: diffsteer::Error) -> Self {
        CliError::Runtime(e)
    }
}

pub fn usage(flag: &str, message: impl std::fmt::Display) -> CliError {
    CliError::Usage(format!("{flag}: {message}"))
}

fn context(e: &clap::Error, kind: ContextKind) -> Option<String> {
    match e.get(kind)? {
        ContextValue::String(s) => Some(s.clone()),
        ContextValue::Strings(v) => Some(v.join(", ")),
        ContextValue::StyledStr(s) => Some(s.to_string()),
        ContextValue::StyledStrs(v) => Some(
            v.iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        ),
        ContextValue::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Prints a clap error as one line (help and version go through unchanged).
pub fn report_clap(e: clap::Error) -> ExitCode {
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        };
    }
    let arg = context(&e, ContextKind::InvalidArg).unwrap_or_default();
    let flag = arg.split_whitespace().next().unwrap_or("").to_string();
    let value = context(&e, ContextKind::InvalidValue);
    let valid = context(&e, ContextKind::ValidValue);
    let message = match (e.kind(), value, valid) {
        (ErrorKind::InvalidValue, Some(v), Some(valid)) => {
            format!("{flag}: invalid value {v:?} (accepted: {valid})")
        }
        (ErrorKind::ValueValidation, Some(v), _) => {
            let why = e
                .source()
                .map(|s| s.to_string())
                .unwrap_or_else(|| "invalid value".to_string());
            format!("{flag}: invalid value {v:?}: {why}")
        }
        _ => {
            let rendered = e.render().to_string();
            let first = rendered
                .lines()
                .next()
                .unwrap_or("invalid arguments")
                .trim_start_matches("error: ");
            let suggestion = context(&e, ContextKind::SuggestedArg)
                .map(|s| format!(" (did you mean {s}?)"))
                .unwrap_or_default();
            format!("{first}{suggestion}; see --help")
        }
    };
    eprintln!("error: {message}");
    ExitCode::from(2)
}

use std::error::Error as _;
