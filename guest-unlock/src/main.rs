//! `guest-unlock`: the command line over the `guest_unlock` library
//! (commands, output and exit codes: [`cli`]).

mod cli;

fn main() -> std::process::ExitCode {
    // `guest-unlock __generate-docs OUTDIR`: man pages and completions (scripts/package).
    if let Some(code) =
        keybroker_rt::docs::generate_if_asked(<cli::Cli as clap::CommandFactory>::command)
    {
        return std::process::ExitCode::from(code);
    }
    let cli = cli::parse();
    // Before any key can exist in this process.
    if !keybroker_rt::hardening::harden().no_core_dumps {
        eprintln!("guest-unlock: warning: could not disable core dumps");
    }
    std::process::ExitCode::from(cli::run(cli))
}
