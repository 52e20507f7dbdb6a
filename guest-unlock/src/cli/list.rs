//! `guest-unlock list`: the bindings of a LUKS2 device, one line each that
//! can be pasted back after `guest-unlock` (or a JSON array).

use std::path::PathBuf;

use clap::Args;

use super::{eprint_err, EXIT_FAILED, EXIT_GRANTED};

/// Arguments of `list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// The LUKS2 device.
    #[arg(value_name = "DEVICE")]
    pub device: PathBuf,
    /// Print a JSON array instead of bind lines.
    #[arg(long)]
    pub json: bool,
}

/// Runs `list`; returns the exit code.
pub fn run(args: ListArgs) -> u8 {
    match guest_unlock::luks::list(&args.device) {
        Ok(bindings) => {
            if args.json {
                match serde_json::to_string_pretty(&bindings) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprint_err(e);
                        return EXIT_FAILED;
                    }
                }
            } else {
                for b in &bindings {
                    println!("{}", b.bind_line());
                }
            }
            EXIT_GRANTED
        }
        Err(e) => {
            eprint_err(e);
            EXIT_FAILED
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::args;
    use super::super::Command;
    use guest_unlock::luks::Binding;
    use guest_unlock::token::SlotVersion;

    /// `list`'s line parses back into the same `bind` arguments.
    #[test]
    fn a_listed_line_is_a_bind_command() {
        let b = Binding {
            device: "/dev/disk/by-id/a b".into(),
            token: 0,
            keyslots: vec![1],
            slots: vec![SlotVersion {
                keyslot: 1,
                key_version: 1,
            }],
            volume: "root".into(),
            key_version: 1,
            brokers: vec!["https://a:1".into(), "https://b:2".into()],
            spki_pins: vec![
                "sha256:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f".into(),
            ],
        };
        let line = b.bind_line();
        let (cmd, comment) = line.split_once("  # ").unwrap();
        assert_eq!(comment, "keyslot 1, key version 1, token 0");
        // The shell's word splitting of the quoted device path.
        let (head, device) = cmd.split_once(" '").unwrap();
        let (device, tail) = device.split_once("' ").unwrap();
        let mut words: Vec<&str> = head.split(' ').collect();
        words.push(device);
        words.extend(tail.split(' '));
        let Command::Bind(a) = args(&words).unwrap().command else {
            panic!("not a bind line: {line}")
        };
        assert_eq!(a.device, b.device);
        assert_eq!(a.brokers, b.brokers);
        assert_eq!(a.volume, "root");
        assert_eq!(a.pins, b.spki_pins);
    }
}
