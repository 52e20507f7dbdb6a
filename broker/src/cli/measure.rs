//! `broker measure`: the expected launch digest of a guest, with the flags
//! of sev-snp-measure. Prints the digest alone on stdout (or `--json`), so
//! it can go straight into a policy's `measurements`. Offline: no config,
//! no server.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use serde_json::json;

use super::Outcome;
use broker::measure::{self, Measurement, Mode, Request, VmmType, LD_LEN};

/// `broker measure ...`
#[derive(Debug, Args)]
#[command(
    after_help = "Example:\n  broker measure --mode snp --vcpus 4 --vcpu-type EPYC-Milan \
                        --ovmf OVMF.fd --kernel vmlinuz --initrd initrd.img --append 'console=ttyS0'"
)]
pub struct MeasureArgs {
    /// Guest mode: snp, seves, sev, snp:ovmf-hash (only the firmware's SNP
    /// hash, for --snp-ovmf-hash) or snp:svsm.
    #[arg(long, value_parser = clap::builder::ValueParser::new(str::parse::<Mode>))]
    pub mode: Mode,
    /// Number of guest vCPUs (needed in snp, seves and snp:svsm modes).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..),
          required_if_eq_any([("mode", "snp"), ("mode", "seves"), ("mode", "snp:svsm")]))]
    pub vcpus: Option<u32>,
    /// Guest vCPU model as given to QEMU -cpu: EPYC-v4, EPYC-Rome, EPYC-Milan,
    /// EPYC-Genoa, EPYC-Turin, ... (case-insensitive).
    #[arg(long, value_name = "CPUTYPE", value_parser = measure::vcpu_type_sig,
          conflicts_with_all = ["vcpu_sig", "vcpu_family"])]
    pub vcpu_type: Option<u32>,
    /// Guest vCPU signature (CPUID Fn0000_0001_EAX), e.g. 0x00a00f11.
    #[arg(long, value_name = "VALUE", value_parser = parse_u32, conflicts_with = "vcpu_family")]
    pub vcpu_sig: Option<u32>,
    /// Guest vCPU family (with --vcpu-model and --vcpu-stepping).
    #[arg(long, value_name = "FAMILY", requires_all = ["vcpu_model", "vcpu_stepping"])]
    pub vcpu_family: Option<u32>,
    /// Guest vCPU model number.
    #[arg(long, value_name = "MODEL", requires = "vcpu_family")]
    pub vcpu_model: Option<u32>,
    /// Guest vCPU stepping.
    #[arg(long, value_name = "STEPPING", requires = "vcpu_family")]
    pub vcpu_stepping: Option<u32>,
    /// The VMM that launches the guest: QEMU, ec2 or gce (case-insensitive).
    #[arg(long, value_name = "VMMTYPE", default_value = "QEMU",
          value_parser = clap::builder::ValueParser::new(str::parse::<VmmType>))]
    pub vmm_type: VmmType,
    /// The guest firmware image (OVMF.fd), mapped to end at 4 GiB.
    #[arg(long, value_name = "PATH")]
    pub ovmf: PathBuf,
    /// Kernel for measured direct boot (the same file QEMU gets with -kernel).
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Initrd (needs --kernel).
    #[arg(long, value_name = "PATH", requires = "kernel")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line, exactly as given to QEMU -append (needs --kernel).
    #[arg(
        long,
        value_name = "CMDLINE",
        requires = "kernel",
        allow_hyphen_values = true
    )]
    pub append: Option<String>,
    /// SEV_FEATURES of the SNP guest, in hex (0x1 = SNPActive, 0x21 = SNPActive + DebugSwap).
    #[arg(long, value_name = "HEX", default_value = "0x1", value_parser = parse_u64)]
    pub guest_features: u64,
    /// The firmware's SNP hash computed earlier (96 hex chars, from
    /// --mode snp:ovmf-hash); the --ovmf file's contents are then not hashed.
    #[arg(long, value_name = "HEX", value_parser = parse_ovmf_hash)]
    pub snp_ovmf_hash: Option<OvmfHash>,
    /// Coconut-SVSM image (snp:svsm mode).
    #[arg(long, value_name = "PATH")]
    pub svsm: Option<PathBuf>,
    /// Size in bytes of the OVMF_VARS image (snp:svsm mode).
    #[arg(long, value_name = "SIZE", conflicts_with = "vars_file")]
    pub vars_size: Option<u64>,
    /// OVMF_VARS file whose size to use (snp:svsm mode).
    #[arg(long, value_name = "PATH")]
    pub vars_file: Option<PathBuf>,
    /// Output format of the digest: hex or base64.
    #[arg(long, value_name = "FORMAT", default_value = "hex", value_parser = ["hex", "base64"])]
    pub output_format: String,
    /// Print JSON: mode, inputs and their hashes, digest.
    #[arg(long)]
    pub json: bool,
}

/// A 48-byte SNP firmware hash given on the command line.
#[derive(Debug, Clone, Copy)]
pub struct OvmfHash([u8; LD_LEN]);

fn parse_ovmf_hash(s: &str) -> Result<OvmfHash, String> {
    let bytes = hex::decode(s).map_err(|e| {
        format!("{s:?} is not hex ({e}); give the 96 hex chars printed by --mode snp:ovmf-hash")
    })?;
    let arr: [u8; LD_LEN] = bytes.as_slice().try_into().map_err(|_| {
        format!(
            "the SNP OVMF hash is {} bytes, not 48; give the 96 hex chars printed by --mode snp:ovmf-hash",
            bytes.len()
        )
    })?;
    Ok(OvmfHash(arr))
}

fn parse_int(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let r = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => t.parse(),
    };
    r.map_err(|e| format!("{s:?} is not a number ({e}); write it like 0x21 or 33"))
}

fn parse_u64(s: &str) -> Result<u64, String> {
    parse_int(s)
}

fn parse_u32(s: &str) -> Result<u32, String> {
    u32::try_from(parse_int(s)?).map_err(|_| format!("{s} does not fit in 32 bits"))
}

/// Standard base64 with padding (RFC 4648).
fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(char::from(A[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Resolves the arguments into a request (stat of --vars-file only).
fn request(a: &MeasureArgs) -> anyhow::Result<Request> {
    let mut r = Request::new(a.mode, a.ovmf.clone());
    r.vcpus = a.vcpus;
    r.vcpu_sig = match (a.vcpu_type, a.vcpu_sig, a.vcpu_family) {
        (Some(s), _, _) | (_, Some(s), _) => Some(s),
        (_, _, Some(f)) => Some(measure::cpu_sig(
            f,
            a.vcpu_model.unwrap_or(0),
            a.vcpu_stepping.unwrap_or(0),
        )),
        _ => None,
    };
    r.vmm = a.vmm_type;
    r.guest_features = a.guest_features;
    r.kernel = a.kernel.clone();
    r.initrd = a.initrd.clone();
    r.append = a.append.clone();
    r.snp_ovmf_hash = a.snp_ovmf_hash.map(|h| h.0);
    r.svsm = a.svsm.clone();
    r.ovmf_vars_size = match (&a.vars_file, a.vars_size) {
        (Some(f), _) => Some(
            std::fs::metadata(f)
                .with_context(|| format!("cannot read OVMF_VARS file {}", f.display()))?
                .len(),
        ),
        (None, s) => s,
    };
    Ok(r)
}

/// Runs `broker measure`.
pub fn run(a: MeasureArgs) -> anyhow::Result<Outcome> {
    let req = request(&a)?;
    let m = measure::measure(&req)?;
    if let (Some(k), Some(Err(e))) = (&req.kernel, &m.kernel_header) {
        eprintln!(
            "broker: warning: kernel {} is not a bzImage ({e}); the digest hashes the file \
             as given, which matches only if QEMU gets this same file with -kernel",
            k.display()
        );
    }
    let digest = match a.output_format.as_str() {
        "base64" => base64(&m.digest),
        _ => hex::encode(&m.digest),
    };
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&to_json(&req, &m, &digest))?
        );
    } else {
        println!("{digest}");
    }
    Ok(Outcome::Success)
}

fn to_json(req: &Request, m: &Measurement, digest: &str) -> serde_json::Value {
    let file = |p: &Option<PathBuf>, h: Option<&[u8; 32]>| match (p, h) {
        (Some(p), Some(h)) => json!({ "path": p.display().to_string(), "sha256": hex::encode(h) }),
        _ => serde_json::Value::Null,
    };
    let boot = m.boot.as_ref();
    let mut kernel = file(&req.kernel, boot.map(|b| &b.kernel));
    if let (Some(obj), Some(h)) = (kernel.as_object_mut(), &m.kernel_header) {
        obj.insert(
            "boot_protocol".into(),
            match h {
                Ok(h) => json!(format!("{}.{:02}", h.protocol.0, h.protocol.1)),
                Err(e) => json!(format!("not a bzImage: {e}")),
            },
        );
    }
    json!({
        "mode": m.mode.name(),
        "digest": digest,
        "digest_hex": hex::encode(&m.digest),
        "vcpus": req.vcpus,
        "vcpu_sig": m.vcpu_sig.map(|s| format!("{s:#010x}")),
        "vmm_type": req.vmm.name(),
        "guest_features": format!("{:#x}", req.guest_features),
        "snp_ovmf_hash": m.snp_ovmf_hash.map(hex::encode),
        "inputs": {
            "ovmf": { "path": req.ovmf.display().to_string(), "sha256": hex::encode(m.ovmf_sha256) },
            "kernel": kernel,
            "initrd": file(&req.initrd, boot.map(|b| &b.initrd)),
            "cmdline": boot.map(|b| json!({ "text": req.append, "sha256": hex::encode(b.cmdline) })),
            "svsm": req.svsm.as_ref().map(|p| p.display().to_string()),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn numbers_and_hashes() {
        assert_eq!(parse_u64("0x21").unwrap(), 0x21);
        assert_eq!(parse_u64("33").unwrap(), 33);
        assert!(parse_u64("0xzz").unwrap_err().contains("not a number"));
        assert!(parse_u32("0x1_0000_0000").is_err());
        assert!(parse_ovmf_hash("abc").unwrap_err().contains("not hex"));
        assert!(parse_ovmf_hash("abcd")
            .unwrap_err()
            .contains("2 bytes, not 48"));
        assert!(parse_ovmf_hash(&"00".repeat(48)).is_ok());
    }
}
