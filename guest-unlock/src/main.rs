//! `guest-unlock`: see [`guest_unlock::cli`] for commands and exit codes.

fn main() -> std::process::ExitCode {
    let cli = guest_unlock::cli::parse();
    // Before any key can exist in this process.
    if !keybroker_rt::hardening::harden().no_core_dumps {
        eprintln!("guest-unlock: warning: could not disable core dumps");
    }
    std::process::ExitCode::from(guest_unlock::cli::run(cli))
}
