//! Man pages and shell completions, generated from a program's clap
//! definition so that they can never describe another command line than
//! the one the binary parses.
//!
//! Both binaries answer one hidden first argument, [`GENERATE_ARG`], before
//! their own parsing (`broker __generate-docs OUTDIR`): `scripts/package`
//! runs the very binaries it ships, so a new subcommand gets its page and
//! completions without anyone listing it. What is written:
//!
//! - `OUTDIR/man/PROG.1` and one page per subcommand, nested ones
//!   included: `PROG-SUB.1`, `PROG-SUB-SUBSUB.1` (as git names them);
//! - `OUTDIR/completions/PROG.bash`, `_PROG` (zsh) and `PROG.fish`.

use std::fs;
use std::io;
use std::path::Path;

use clap::Command;
use clap_complete::Shell;

/// The hidden first argument that makes a binary write its docs.
pub const GENERATE_ARG: &str = "__generate-docs";

/// If the process arguments are `PROG __generate-docs OUTDIR`, writes the
/// docs of `cmd` there and returns the exit code to end with (0, or 1 with
/// a message on stderr); otherwise `None` and the program goes on.
pub fn generate_if_asked(cmd: impl FnOnce() -> Command) -> Option<u8> {
    let mut args = std::env::args_os().skip(1);
    if args.next()? != GENERATE_ARG {
        return None;
    }
    let cmd = cmd();
    let name = cmd.get_name().to_owned();
    let Some(out) = args.next() else {
        eprintln!("{name}: usage: {name} {GENERATE_ARG} OUTDIR");
        return Some(2);
    };
    Some(match generate(cmd, Path::new(&out)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!(
                "{name}: cannot write the docs to {}: {e}",
                Path::new(&out).display()
            );
            1
        }
    })
}

/// Writes the man pages and completions of `cmd` under `out` (see the
/// module docs for the layout).
pub fn generate(mut cmd: Command, out: &Path) -> io::Result<()> {
    cmd.build();
    let man = out.join("man");
    fs::create_dir_all(&man)?;
    let name = cmd.get_name().to_owned();
    write_pages(&cmd, &name, &man)?;
    let comp = out.join("completions");
    fs::create_dir_all(&comp)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd, &name, &comp)?;
    }
    Ok(())
}

/// `cmd`'s page as `NAME.1`, then its visible subcommands' as
/// `NAME-SUB.1`, recursively.
fn write_pages(cmd: &Command, name: &str, dir: &Path) -> io::Result<()> {
    // Each page names itself as it is invoked: `broker-volume-add`'s
    // synopsis reads `broker volume add`.
    let page = cmd
        .clone()
        .display_name(name.to_owned())
        .bin_name(name.replace('-', " "));
    let mut buf = Vec::new();
    clap_mangen::Man::new(page).render(&mut buf)?;
    fs::write(dir.join(format!("{name}.1")), buf)?;
    for sub in cmd.get_subcommands() {
        if sub.is_hide_set() || sub.get_name() == "help" {
            continue;
        }
        write_pages(sub, &format!("{name}-{}", sub.get_name()), dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli() -> Command {
        Command::new("prog")
            .about("A program.")
            .subcommand(
                Command::new("volume").about("Volumes.").subcommand(
                    Command::new("add").about("Add one.").arg(
                        clap::Arg::new("name")
                            .help("The volume's name.")
                            .required(true),
                    ),
                ),
            )
            .subcommand(Command::new("secret").hide(true))
    }

    #[test]
    fn one_page_per_visible_subcommand_and_three_completions() {
        let d = tempfile::tempdir().unwrap();
        generate(cli(), d.path()).unwrap();
        let mut pages: Vec<String> = fs::read_dir(d.path().join("man"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        pages.sort();
        assert_eq!(pages, ["prog-volume-add.1", "prog-volume.1", "prog.1"]);
        let add = fs::read_to_string(d.path().join("man/prog-volume-add.1")).unwrap();
        assert!(add.contains("prog volume add"), "{add}");
        assert!(add.contains("The volume\\*(Aqs name."), "{add}");
        for f in ["prog.bash", "_prog", "prog.fish"] {
            let text = fs::read_to_string(d.path().join("completions").join(f)).unwrap();
            assert!(text.contains("volume"), "{f}: {text}");
        }
    }

    #[test]
    fn an_unwritable_directory_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("file");
        fs::write(&file, b"").unwrap();
        assert!(generate(cli(), &file).is_err());
    }
}
