//! `guest-unlock edit`: change the brokers and pins recorded in a device's
//! `sev-keybroker` tokens, as `clevis luks edit` does, so that a broker
//! can move or change its TLS key without a rebind (docs/operations.md,
//! "Changing the broker's TLS key"). No broker is asked; keyslots and keys
//! are not touched.

use std::path::PathBuf;

use clap::Args;
use guest_unlock::config::BrokerUrl;
use guest_unlock::luks::{self, TokenEdit};
use keybroker_proto::SpkiPin;

use super::{eprint_err, EXIT_FAILED, EXIT_GRANTED, EXIT_USAGE};

/// Arguments of `edit`.
#[derive(Debug, Args)]
pub struct EditArgs {
    /// The LUKS2 device (or a file holding a LUKS2 header).
    #[arg(value_name = "DEVICE")]
    pub device: PathBuf,
    /// Only this token (see `guest-unlock list`); default: every sev-keybroker token.
    #[arg(long, value_name = "ID")]
    pub token: Option<u32>,
    /// The new broker list, https://HOST:PORT, comma-separated or repeated (replaces the old one).
    #[arg(long = "broker", value_name = "URL", value_delimiter = ',')]
    pub brokers: Vec<String>,
    /// The new pin list, sha256:<hex or base64> (repeatable; replaces the old one).
    #[arg(long = "pin", value_name = "PIN", conflicts_with_all = ["add_pins", "remove_pins"])]
    pub pins: Vec<String>,
    /// A pin to add, keeping the others (repeatable).
    #[arg(long = "add-pin", value_name = "PIN")]
    pub add_pins: Vec<String>,
    /// A pin to remove (repeatable; refused if the token does not hold it).
    #[arg(long = "remove-pin", value_name = "PIN")]
    pub remove_pins: Vec<String>,
}

/// The flags as a [`TokenEdit`]; a malformed URL or pin is a usage error
/// whose message names the flag.
fn token_edit(args: &EditArgs) -> Result<TokenEdit, String> {
    fn pins(flag: &str, v: &[String]) -> Result<Vec<SpkiPin>, String> {
        v.iter()
            .map(|p| p.parse().map_err(|e| format!("{flag} {p:?}: {e}")))
            .collect()
    }
    let brokers = args
        .brokers
        .iter()
        .map(|u| {
            u.parse::<BrokerUrl>()
                .map_err(|e| format!("--broker {u:?}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let edit = TokenEdit {
        brokers: (!brokers.is_empty()).then_some(brokers),
        pins: Some(pins("--pin", &args.pins)?).filter(|p| !p.is_empty()),
        add_pins: pins("--add-pin", &args.add_pins)?,
        remove_pins: pins("--remove-pin", &args.remove_pins)?,
    };
    if edit.is_empty() {
        return Err(
            "edit needs something to change: --broker URL, --pin PIN, --add-pin PIN or --remove-pin PIN"
                .into(),
        );
    }
    Ok(edit)
}

/// Runs `edit`; returns the exit code.
pub fn run(args: EditArgs) -> u8 {
    let edit = match token_edit(&args) {
        Ok(e) => e,
        Err(msg) => {
            eprint_err(msg);
            return EXIT_USAGE;
        }
    };
    match luks::edit(&args.device, args.token, &edit) {
        Ok(edited) => {
            for (b, changed) in edited {
                println!(
                    "{} {} token {}: brokers {}; pins {}",
                    if changed { "edited" } else { "unchanged" },
                    b.device.display(),
                    b.token,
                    b.brokers.join(","),
                    b.spki_pins.join(",")
                );
            }
            EXIT_GRANTED
        }
        Err(e) => {
            let denied = matches!(&e, luks::BindError::Luks(l)
                if l.errno() == Some(libc::EACCES) || l.errno() == Some(libc::EPERM));
            eprint_err(e);
            if denied {
                eprint_err("changing a LUKS2 header needs write access to the device: run as root");
            }
            EXIT_FAILED
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::args;
    use super::super::Command;
    use super::*;

    const PIN: &str = "sha256:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn edit_of(v: &[&str]) -> Result<TokenEdit, String> {
        let mut all = vec!["edit", "/dev/null"];
        all.extend_from_slice(v);
        let Command::Edit(a) = args(&all).unwrap().command else {
            panic!("parsed as another command")
        };
        token_edit(&a)
    }

    #[test]
    fn flags_become_an_edit_and_bad_ones_are_usage_errors() {
        let e = edit_of(&["--broker", "https://a:1,https://b:2", "--add-pin", PIN]).unwrap();
        assert_eq!(e.brokers.as_ref().map(Vec::len), Some(2));
        assert_eq!(e.pins, None);
        assert_eq!(e.add_pins.len(), 1);
        assert!(edit_of(&[])
            .unwrap_err()
            .contains("needs something to change"));
        let bad = edit_of(&["--pin", "sha256:00"]).unwrap_err();
        assert!(bad.starts_with("--pin \"sha256:00\": "), "{bad}");
        let bad = edit_of(&["--remove-pin", "md5:00"]).unwrap_err();
        assert!(bad.starts_with("--remove-pin \"md5:00\": "), "{bad}");
        let bad = edit_of(&["--broker", "http://a:1"]).unwrap_err();
        assert!(bad.starts_with("--broker \"http://a:1\": "), "{bad}");
        // --pin replaces the list: it does not mix with --add-pin/--remove-pin.
        assert!(args(&["edit", "/dev/null", "--pin", PIN, "--add-pin", PIN]).is_err());
    }
}
