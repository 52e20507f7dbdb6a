//! `broker`: the command line over the `broker` library. The argument
//! definitions and command bodies are this binary's own modules ([`cli`],
//! [`logging`]); `main` only maps [`cli::run`]'s result to an exit code.

mod cli;
mod logging;

use std::process::ExitCode;

use clap::{CommandFactory as _, Parser};

fn main() -> ExitCode {
    // `broker __generate-docs OUTDIR`: man pages and completions (scripts/package).
    if let Some(code) = keybroker_rt::docs::generate_if_asked(cli::Cli::command) {
        return ExitCode::from(code);
    }
    let cli = match cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let log_format = cli.log_format;
    match cli::run(cli) {
        Ok(cli::Outcome::Success) => ExitCode::SUCCESS,
        Ok(cli::Outcome::Refused) => ExitCode::from(1),
        Ok(cli::Outcome::Usage) => ExitCode::from(2),
        Err(e) => {
            eprintln!("{}", logging::fatal_line(log_format, &e));
            ExitCode::from(1)
        }
    }
}
