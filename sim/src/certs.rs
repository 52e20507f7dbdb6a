//! Certificates of the simulated platform: a test ARK → ASK → VCEK chain whose VCEK carries
//! AMD's VCEK extensions encoded exactly as AMD's Key Distribution Service encodes them.
//!
//! The encodings were compared with real VCEKs (`virtee-milan-v2`, `oak-genoa-v5`,
//! `oak-turin-v5` in the shared fixtures; tests compare them byte for byte):
//! - every extension is non-critical and its extnValue holds a DER value: INTEGER for
//!   structVersion and the SPLs, IA5String for productName1;
//! - hwID is the exception: its extnValue holds the raw chip id bytes, no inner OCTET STRING
//!   (64 bytes on Milan and Genoa, 8 on Turin);
//! - order and set differ by generation. Milan/Genoa: 1.1, 1.2, 3.1, 3.2, 3.4, 3.5, 3.6, 3.7,
//!   3.3, 3.8, 4 (structVersion 0). Turin: 1.1, 1.2, 3.9 (fmcSPL), 3.1, 3.2, 3.3, 3.5, 3.6,
//!   3.7, 3.8, 4 (structVersion 1, no 3.4).
//!
//! Keys are ECDSA P-384 throughout. Real AMD ARKs and ASKs are RSA-4096 and sign with
//! RSA-PSS (SHA-384); the broker verifies both kinds, so the simulated chain exercises the
//! ECDSA path while real fixtures exercise RSA-PSS.

use aws_lc_rs::rand::{self, SystemRandom};
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P384_SHA384_ASN1_SIGNING};
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType, IsCa, Issuer,
    KeyUsagePurpose, PublicKeyData, SerialNumber, SignatureAlgorithm, SigningKey,
    PKCS_ECDSA_P384_SHA384,
};

use super::{Generation, SimError, Tcb};

/// AMD's VCEK extension arc prefix, 1.3.6.1.4.1.3704.1.
pub(crate) const AMD_OID_PREFIX: [u64; 8] = [1, 3, 6, 1, 4, 1, 3704, 1];

/// The organisation name on every simulated certificate.
pub const SIM_ORGANIZATION: &str = "keybroker simulated platform";

/// An AMD VCEK extension arc below 1.3.6.1.4.1.3704.1.
pub(crate) fn amd_oid(tail: &[u64]) -> Vec<u64> {
    let mut v = AMD_OID_PREFIX.to_vec();
    v.extend_from_slice(tail);
    v
}

/// DER INTEGER of a non-negative small value (minimal two's complement).
pub(crate) fn der_integer(v: u8) -> Vec<u8> {
    if v < 0x80 {
        vec![0x02, 0x01, v]
    } else {
        vec![0x02, 0x02, 0x00, v]
    }
}

fn der_ia5(s: &str) -> Vec<u8> {
    // Product names are short ASCII strings.
    let mut v = vec![0x16, s.len() as u8];
    v.extend_from_slice(s.as_bytes());
    v
}

/// AMD's VCEK extensions for `generation`, in AMD's order, as (arcs below the AMD prefix,
/// extnValue contents).
pub(crate) fn amd_vcek_extensions(
    generation: Generation,
    tcb: &Tcb,
    chip_id: &[u8; 64],
) -> Vec<(Vec<u64>, Vec<u8>)> {
    let mut v: Vec<(Vec<u64>, Vec<u8>)> = Vec::with_capacity(11);
    match generation {
        Generation::Milan | Generation::Genoa => {
            v.push((vec![1], der_integer(0)));
            v.push((vec![2], der_ia5(generation.product_name())));
            v.push((vec![3, 1], der_integer(tcb.bootloader)));
            v.push((vec![3, 2], der_integer(tcb.tee)));
            for spl in 4..=7 {
                v.push((vec![3, spl], der_integer(0)));
            }
            v.push((vec![3, 3], der_integer(tcb.snp)));
            v.push((vec![3, 8], der_integer(tcb.microcode)));
            v.push((vec![4], chip_id.to_vec()));
        }
        Generation::Turin => {
            v.push((vec![1], der_integer(1)));
            v.push((vec![2], der_ia5(generation.product_name())));
            v.push((vec![3, 9], der_integer(tcb.fmc.unwrap_or(0))));
            v.push((vec![3, 1], der_integer(tcb.bootloader)));
            v.push((vec![3, 2], der_integer(tcb.tee)));
            v.push((vec![3, 3], der_integer(tcb.snp)));
            for spl in 5..=7 {
                v.push((vec![3, spl], der_integer(0)));
            }
            v.push((vec![3, 8], der_integer(tcb.microcode)));
            v.push((vec![4], chip_id[..8].to_vec()));
        }
    }
    v
}

/// An ECDSA P-384 key held by aws-lc-rs, used by rcgen through its `SigningKey` trait so
/// that the private key is never copied into rcgen's (non-zeroizing) buffers.
pub(crate) struct P384Signer(EcdsaKeyPair);

impl P384Signer {
    pub(crate) fn generate() -> Result<Self, SimError> {
        EcdsaKeyPair::generate(&ECDSA_P384_SHA384_ASN1_SIGNING)
            .map(Self)
            .map_err(|_| SimError::Crypto("ECDSA P-384 key generation failed"))
    }
}

impl PublicKeyData for P384Signer {
    fn der_bytes(&self) -> &[u8] {
        self.0.public_key().as_ref()
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ECDSA_P384_SHA384
    }
}

impl SigningKey for P384Signer {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.0
            .sign(&SystemRandom::new(), msg)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| rcgen::Error::RingUnspecified)
    }
}

/// A bare P-384 public key (SEC1 uncompressed point) to certify.
pub(crate) struct P384Public<'a>(pub(crate) &'a [u8]);

impl PublicKeyData for P384Public<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ECDSA_P384_SHA384
    }
}

/// A freshly generated chain: ARK and ASK in PEM, VCEK in DER.
pub(crate) struct Chain {
    pub(crate) ark_pem: String,
    pub(crate) ask_pem: String,
    pub(crate) vcek_der: Vec<u8>,
}

fn random_serial() -> Result<SerialNumber, SimError> {
    let mut b = [0u8; 16];
    rand::fill(&mut b).map_err(|_| SimError::Crypto("OS random number generator failed"))?;
    // Positive, non-zero leading byte, so the INTEGER is 16 bytes and minimal.
    b[0] = (b[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&b))
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, SIM_ORGANIZATION);
    dn.push(DnType::CommonName, cn);
    dn
}

fn cert_err(e: rcgen::Error) -> SimError {
    SimError::CertGen(e.to_string())
}

/// Generates ARK and ASK keys, and certifies `vcek_public` under them.
pub(crate) fn generate_chain(
    generation: Generation,
    tcb: &Tcb,
    chip_id: &[u8; 64],
    vcek_public: &[u8],
    not_before: time::OffsetDateTime,
    not_after: time::OffsetDateTime,
) -> Result<Chain, SimError> {
    let base = |cn: &str| -> Result<CertificateParams, SimError> {
        let mut p = CertificateParams::default();
        p.distinguished_name = name(cn);
        p.not_before = not_before;
        p.not_after = not_after;
        p.serial_number = Some(random_serial()?);
        Ok(p)
    };

    let ark_key = P384Signer::generate()?;
    let mut ark_params = base(&format!("ARK-Sim-{generation}"))?;
    ark_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ark_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ark = ark_params.self_signed(&ark_key).map_err(cert_err)?;
    let ark_issuer = Issuer::new(ark_params, ark_key);

    let ask_key = P384Signer::generate()?;
    let mut ask_params = base(&format!("SEV-{generation}"))?;
    ask_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ask_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    ask_params.use_authority_key_identifier_extension = true;
    let ask = ask_params
        .signed_by(&ask_key, &ark_issuer)
        .map_err(cert_err)?;
    let ask_issuer = Issuer::new(ask_params, ask_key);

    let mut vcek_params = base("SEV-VCEK")?;
    vcek_params.custom_extensions = amd_vcek_extensions(generation, tcb, chip_id)
        .into_iter()
        .map(|(tail, content)| CustomExtension::from_oid_content(&amd_oid(&tail), content))
        .collect();
    let vcek = vcek_params
        .signed_by(&P384Public(vcek_public), &ask_issuer)
        .map_err(cert_err)?;

    Ok(Chain {
        ark_pem: ark.pem(),
        ask_pem: ask.pem(),
        vcek_der: vcek.der().to_vec(),
    })
}
