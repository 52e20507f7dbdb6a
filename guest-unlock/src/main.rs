//! `guest-unlock`: the command line over the `guest_unlock` library
//! (commands, output and exit codes: [`cli`]).

mod cli;

fn main() -> std::process::ExitCode {
    let cli = cli::parse();
    // Before any key can exist in this process.
    if !keybroker_rt::hardening::harden().no_core_dumps {
        eprintln!("guest-unlock: warning: could not disable core dumps");
    }
    std::process::ExitCode::from(cli::run(cli))
}
