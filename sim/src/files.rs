//! The simulated platform's directory (`platform.toml`, keys, certificates) and the
//! simulated guest's description (`guest.toml`): writing, reading, and consistency checks.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use aws_lc_rs::signature::{
    EcdsaKeyPair, KeyPair, UnparsedPublicKey, ECDSA_P384_SHA384_ASN1,
    ECDSA_P384_SHA384_FIXED_SIGNING,
};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::certs::{amd_oid, amd_vcek_extensions, generate_chain};
use super::der::{self, oid_contents};
use super::{FirmwareVersion, Generation, SimError, SimGuest, SimParams, SimPlatform, Tcb};

/// File name of the ARK certificate (PEM).
pub const ARK_FILE: &str = "ark.pem";
/// File name of the ASK certificate (PEM).
pub const ASK_FILE: &str = "ask.pem";
/// File name of the VCEK certificate (DER).
pub const VCEK_FILE: &str = "vcek.der";
/// File name of the VCEK private key (PKCS#8 DER, mode 0600).
pub const KEY_FILE: &str = "vcek.key";
/// File name of the platform description.
pub const PLATFORM_FILE: &str = "platform.toml";
/// File name of the optional simulated guest description.
pub const GUEST_FILE: &str = "guest.toml";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlatformFile {
    generation: String,
    /// Hex, 64 bytes.
    chip_id: String,
    platform_info: u64,
    firmware: FirmwareVersion,
    reported_tcb: Tcb,
}

/// A loaded, checked platform directory.
pub(super) struct Parts {
    pub(super) dir: PathBuf,
    pub(super) generation: Generation,
    pub(super) chip_id: [u8; 64],
    pub(super) reported_tcb: Tcb,
    pub(super) firmware: FirmwareVersion,
    pub(super) platform_info: u64,
    pub(super) ark_der: Vec<u8>,
    pub(super) ask_der: Vec<u8>,
    pub(super) vcek_der: Vec<u8>,
    pub(super) vcek_key: EcdsaKeyPair,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SimError + '_ {
    move |source| SimError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn check_chip_id(generation: Generation, chip_id: &[u8; 64]) -> Result<(), String> {
    if chip_id.iter().all(|b| *b == 0) {
        return Err("the chip id is all zero (that means a masked chip id)".into());
    }
    let tail_zero = chip_id[8..].iter().all(|b| *b == 0);
    match generation {
        Generation::Turin if !tail_zero => {
            Err("a Turin chip id has 8 significant bytes; bytes 8..64 must be zero".into())
        }
        Generation::Milan | Generation::Genoa if tail_zero => Err(format!(
            "a {generation} chip id has 64 significant bytes; bytes 8..64 must not all be zero"
        )),
        _ => Ok(()),
    }
}

fn random_chip_id(generation: Generation) -> Result<[u8; 64], SimError> {
    let mut id = [0u8; 64];
    let n = generation.chip_id_len();
    aws_lc_rs::rand::fill(&mut id[..n])
        .map_err(|_| SimError::Crypto("OS random number generator failed"))?;
    Ok(id)
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), SimError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io_err(path))?;
    f.write_all(bytes).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

pub(super) fn generate(dir: &Path, params: &SimParams) -> Result<(), SimError> {
    let generation = params.generation;
    let chip_id = match params.chip_id {
        Some(id) => id,
        None => random_chip_id(generation)?,
    };
    check_chip_id(generation, &chip_id).map_err(SimError::InvalidParams)?;
    let mut tcb = params
        .reported_tcb
        .unwrap_or_else(|| generation.default_tcb());
    tcb.check(generation).map_err(SimError::InvalidParams)?;
    if generation == Generation::Turin {
        tcb.fmc = Some(tcb.fmc.unwrap_or(0));
    }
    let firmware = params
        .firmware
        .unwrap_or_else(|| generation.default_firmware());
    if params.not_before >= params.not_after {
        return Err(SimError::InvalidParams(
            "not_before must be earlier than not_after".into(),
        ));
    }

    fs::create_dir_all(dir).map_err(io_err(dir))?;
    for name in [PLATFORM_FILE, KEY_FILE, VCEK_FILE, ASK_FILE, ARK_FILE] {
        let path = dir.join(name);
        if path.exists() {
            return Err(SimError::AlreadyExists { path });
        }
    }

    let key = EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING)
        .map_err(|_| SimError::Crypto("ECDSA P-384 key generation failed"))?;
    // `Document` zeroizes itself when dropped.
    let pkcs8 = key
        .to_pkcs8v1()
        .map_err(|_| SimError::Crypto("serialising the VCEK key failed"))?;
    let chain = generate_chain(
        generation,
        &tcb,
        &chip_id,
        key.public_key().as_ref(),
        params.not_before,
        params.not_after,
    )?;
    let platform = PlatformFile {
        generation: generation.name().to_string(),
        chip_id: hex::encode(chip_id),
        platform_info: params.platform_info,
        firmware,
        reported_tcb: tcb,
    };
    let platform =
        toml::to_string(&platform).map_err(|e| SimError::InvalidParams(e.to_string()))?;

    write_new(&dir.join(KEY_FILE), pkcs8.as_ref(), 0o600)?;
    write_new(&dir.join(VCEK_FILE), &chain.vcek_der, 0o644)?;
    write_new(&dir.join(ASK_FILE), chain.ask_pem.as_bytes(), 0o644)?;
    write_new(&dir.join(ARK_FILE), chain.ark_pem.as_bytes(), 0o644)?;
    let header =
        "# Simulated SEV-SNP platform (keybroker). Not AMD hardware: trust only for tests.\n";
    write_new(
        &dir.join(PLATFORM_FILE),
        format!("{header}{platform}").as_bytes(),
        0o644,
    )
}

fn read(path: &Path) -> Result<Vec<u8>, SimError> {
    match fs::read(path) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(SimError::Missing {
            path: path.to_path_buf(),
        }),
        Err(source) => Err(SimError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn malformed(path: &Path, reason: impl Into<String>) -> SimError {
    SimError::Malformed {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn read_pem_cert(path: &Path) -> Result<Vec<u8>, SimError> {
    let bytes = read(path)?;
    let certs = rustls_pemfile::certs(&mut bytes.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| malformed(path, format!("not PEM: {e}")))?;
    match certs.as_slice() {
        [one] => Ok(one.as_ref().to_vec()),
        [] => Err(malformed(path, "no PEM certificate")),
        _ => Err(malformed(path, "more than one certificate")),
    }
}

fn hex_array<const N: usize>(field: &str, s: &str) -> Result<[u8; N], String> {
    let v = hex::decode(s.trim()).map_err(|e| format!("{field} is not hex: {e}"))?;
    <[u8; N]>::try_from(v.as_slice()).map_err(|_| {
        format!(
            "{field} must be {N} bytes ({} hex digits), got {} bytes",
            2 * N,
            v.len()
        )
    })
}

pub(super) fn load(dir: &Path) -> Result<SimPlatform, SimError> {
    if !dir.is_dir() {
        return Err(SimError::Missing {
            path: dir.to_path_buf(),
        });
    }
    let platform_path = dir.join(PLATFORM_FILE);
    let text = read(&platform_path)?;
    let text = std::str::from_utf8(&text).map_err(|_| malformed(&platform_path, "not UTF-8"))?;
    let file: PlatformFile =
        toml::from_str(text).map_err(|e| malformed(&platform_path, e.to_string()))?;
    let generation: Generation = file
        .generation
        .parse()
        .map_err(|e: SimError| malformed(&platform_path, e.to_string()))?;
    let chip_id: [u8; 64] =
        hex_array("chip_id", &file.chip_id).map_err(|e| malformed(&platform_path, e))?;
    check_chip_id(generation, &chip_id).map_err(|e| malformed(&platform_path, e))?;
    file.reported_tcb
        .check(generation)
        .map_err(|e| malformed(&platform_path, e))?;

    let key_path = dir.join(KEY_FILE);
    let key_bytes = Zeroizing::new(read(&key_path)?);
    let mode = fs::metadata(&key_path)
        .map_err(io_err(&key_path))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(SimError::KeyPermissions {
            path: key_path,
            mode,
        });
    }
    let vcek_key = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &key_bytes)
        .map_err(|_| malformed(&key_path, "not a PKCS#8 ECDSA P-384 private key"))?;

    let vcek_path = dir.join(VCEK_FILE);
    let vcek_der = read(&vcek_path)?;
    let ask_path = dir.join(ASK_FILE);
    let ask_der = read_pem_cert(&ask_path)?;
    let ark_path = dir.join(ARK_FILE);
    let ark_der = read_pem_cert(&ark_path)?;
    let vcek = der::parse_cert(&vcek_der)
        .map_err(|e| malformed(&vcek_path, format!("not a certificate: {e}")))?;
    let ask = der::parse_cert(&ask_der)
        .map_err(|e| malformed(&ask_path, format!("not a certificate: {e}")))?;
    let ark = der::parse_cert(&ark_der)
        .map_err(|e| malformed(&ark_path, format!("not a certificate: {e}")))?;

    if vcek.public_key != vcek_key.public_key().as_ref() {
        return Err(malformed(&key_path, "the key does not belong to vcek.der"));
    }
    let prefix = oid_contents(&super::certs::AMD_OID_PREFIX);
    let found: Vec<(&[u8], &[u8], bool)> = vcek
        .extensions
        .iter()
        .filter(|e| e.oid.starts_with(&prefix))
        .map(|e| (e.oid, e.value, e.critical))
        .collect();
    let expected: Vec<(Vec<u8>, Vec<u8>)> =
        amd_vcek_extensions(generation, &file.reported_tcb, &chip_id)
            .into_iter()
            .map(|(tail, value)| (oid_contents(&amd_oid(&tail)), value))
            .collect();
    let matches = found.len() == expected.len()
        && found
            .iter()
            .zip(&expected)
            .all(|(f, e)| f.0 == e.0.as_slice() && f.1 == e.1.as_slice() && !f.2);
    if !matches {
        return Err(malformed(
            &vcek_path,
            "its AMD extensions (hwID, TCB) do not match platform.toml",
        ));
    }

    // ecdsa-with-SHA384, 1.2.840.10045.4.3.3, with absent parameters.
    let ecdsa_sha384 = [
        &[der::TAG_OID, 8][..],
        &oid_contents(&[1, 2, 840, 10045, 4, 3, 3]),
    ]
    .concat();
    let signed_by = |issuer: &der::Cert<'_>, cert: &der::Cert<'_>| {
        issuer.subject == cert.issuer
            && cert.signature_algorithm == ecdsa_sha384.as_slice()
            && UnparsedPublicKey::new(&ECDSA_P384_SHA384_ASN1, issuer.public_key)
                .verify(cert.tbs, cert.signature)
                .is_ok()
    };
    if !signed_by(&ark, &ark) {
        return Err(malformed(&ark_path, "not a self-signed ECDSA P-384 root"));
    }
    if !signed_by(&ark, &ask) {
        return Err(malformed(&ask_path, "not issued by ark.pem"));
    }
    if !signed_by(&ask, &vcek) {
        return Err(malformed(&vcek_path, "not issued by ask.pem"));
    }

    SimPlatform::from_parts(Parts {
        dir: dir.to_path_buf(),
        generation,
        chip_id,
        reported_tcb: file.reported_tcb,
        firmware: file.firmware,
        platform_info: file.platform_info,
        ark_der,
        ask_der,
        vcek_der,
        vcek_key,
    })
}

#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct GuestFile {
    version: Option<u32>,
    measurement: Option<String>,
    policy: Option<u64>,
    vmpl: Option<u32>,
    guest_svn: Option<u32>,
    host_data: Option<String>,
    family_id: Option<String>,
    image_id: Option<String>,
    id_key_digest: Option<String>,
    author_key_digest: Option<String>,
    key_info: Option<u32>,
    reported_tcb: Option<Tcb>,
}

pub(super) fn guest_from_toml(text: &str) -> Result<SimGuest, SimError> {
    let f: GuestFile = toml::from_str(text).map_err(|e| SimError::InvalidGuest(e.to_string()))?;
    let d = SimGuest::default();
    let hex_or = |field: &str, v: &Option<String>, default: &[u8]| -> Result<Vec<u8>, SimError> {
        match v {
            None => Ok(default.to_vec()),
            Some(s) => {
                let b = hex::decode(s.trim())
                    .map_err(|e| SimError::InvalidGuest(format!("{field} is not hex: {e}")))?;
                if b.len() != default.len() {
                    return Err(SimError::InvalidGuest(format!(
                        "{field} must be {} bytes ({} hex digits), got {} bytes",
                        default.len(),
                        2 * default.len(),
                        b.len()
                    )));
                }
                Ok(b)
            }
        }
    };
    fn arr<const N: usize>(v: Vec<u8>) -> [u8; N] {
        let mut a = [0u8; N];
        a.copy_from_slice(&v);
        a
    }
    Ok(SimGuest {
        version: f.version.unwrap_or(d.version),
        measurement: arr(hex_or("measurement", &f.measurement, &d.measurement)?),
        policy: f.policy.unwrap_or(d.policy),
        vmpl: f.vmpl.unwrap_or(d.vmpl),
        guest_svn: f.guest_svn.unwrap_or(d.guest_svn),
        host_data: arr(hex_or("host_data", &f.host_data, &d.host_data)?),
        family_id: arr(hex_or("family_id", &f.family_id, &d.family_id)?),
        image_id: arr(hex_or("image_id", &f.image_id, &d.image_id)?),
        id_key_digest: arr(hex_or("id_key_digest", &f.id_key_digest, &d.id_key_digest)?),
        author_key_digest: arr(hex_or(
            "author_key_digest",
            &f.author_key_digest,
            &d.author_key_digest,
        )?),
        key_info: f.key_info.unwrap_or(d.key_info),
        reported_tcb: f.reported_tcb,
    })
}

pub(super) fn guest_to_toml(g: &SimGuest) -> String {
    let mut s = format!(
        "version = {}\nmeasurement = \"{}\"\npolicy = 0x{:x}\nvmpl = {}\nguest_svn = {}\nhost_data = \"{}\"\n\
         family_id = \"{}\"\nimage_id = \"{}\"\nid_key_digest = \"{}\"\nauthor_key_digest = \"{}\"\nkey_info = {}\n",
        g.version,
        hex::encode(g.measurement),
        g.policy,
        g.vmpl,
        g.guest_svn,
        hex::encode(g.host_data),
        hex::encode(g.family_id),
        hex::encode(g.image_id),
        hex::encode(g.id_key_digest),
        hex::encode(g.author_key_digest),
        g.key_info,
    );
    if let Some(t) = g.reported_tcb {
        s.push_str(&format!(
            "\n[reported_tcb]\nbootloader = {}\ntee = {}\nsnp = {}\nmicrocode = {}\n",
            t.bootloader, t.tee, t.snp, t.microcode
        ));
        if let Some(fmc) = t.fmc {
            s.push_str(&format!("fmc = {fmc}\n"));
        }
    }
    s
}
