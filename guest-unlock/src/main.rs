//! `guest-unlock`: see [`guest_unlock::cli`] for commands and exit codes.

fn main() -> std::process::ExitCode {
    let cli = guest_unlock::cli::parse();
    // Before any key can exist in this process.
    guest_unlock::hardening::harden();
    std::process::ExitCode::from(guest_unlock::cli::run(cli))
}
