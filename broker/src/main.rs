//! `broker`: thin entry point over [`broker::cli`].

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = match broker::cli::Cli::try_parse() {
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
    match broker::cli::run(cli) {
        Ok(broker::cli::Outcome::Success) => ExitCode::SUCCESS,
        Ok(broker::cli::Outcome::Refused) => ExitCode::from(1),
        Ok(broker::cli::Outcome::Usage) => ExitCode::from(2),
        Err(e) => {
            eprintln!("broker: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
