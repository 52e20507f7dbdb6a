//! `guest-unlock`: see [`guest_unlock::cli`] for commands and exit codes.

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(guest_unlock::cli::run(guest_unlock::cli::parse()))
}
