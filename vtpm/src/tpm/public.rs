//! Public areas: `TPMT_PUBLIC` of an RSA key (Part 2 §12.2.4) and
//! `TPMS_NV_PUBLIC` of an NV index (Part 2 §13.5).
//!
//! ```text
//! TPMT_PUBLIC (RSA) = type u16 (0x0001) ‖ nameAlg u16 ‖ objectAttributes u32
//!                   ‖ authPolicy TPM2B_DIGEST
//!                   ‖ TPMS_RSA_PARMS: symmetric (alg u16 [‖ keyBits u16 ‖ mode u16])
//!                                     scheme (alg u16 [‖ hash u16])
//!                                     keyBits u16 ‖ exponent u32 (0 = 65537)
//!                   ‖ unique TPM2B_PUBLIC_KEY_RSA (the modulus)
//! TPMS_NV_PUBLIC    = nvIndex u32 ‖ nameAlg u16 ‖ attributes u32
//!                   ‖ authPolicy TPM2B_DIGEST ‖ dataSize u16
//! ```
//!
//! Only what a guest and a simulated vTPM need is here: reading the AK's
//! public key, the template that makes an AK like Azure's, and NV index
//! definitions.

use super::signature::{RsaKeyError, RsaPublicKey};
use super::wire::{Reader, WireError, Writer};
use super::{
    alg_name, MAX_DIGEST, MAX_RSA_KEY_BYTES, TPM_ALG_AES, TPM_ALG_NULL, TPM_ALG_OAEP, TPM_ALG_RSA,
    TPM_ALG_RSAES, TPM_ALG_RSAPSS, TPM_ALG_RSASSA, TPM_ALG_SHA256,
};

/// `TPMA_OBJECT` bits (Part 2 §8.3).
pub mod object_attributes {
    /// The key's hierarchy cannot change.
    pub const FIXED_TPM: u32 = 1 << 1;
    /// The key's parent cannot change.
    pub const FIXED_PARENT: u32 = 1 << 4;
    /// The TPM made the sensitive part.
    pub const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
    /// The key's password (or HMAC) authorizes its use.
    pub const USER_WITH_AUTH: u32 = 1 << 6;
    /// Not subject to dictionary-attack lockout.
    pub const NO_DA: u32 = 1 << 10;
    /// Signs only TPM-generated structures (attestation key).
    pub const RESTRICTED: u32 = 1 << 16;
    /// A signing key.
    pub const SIGN: u32 = 1 << 18;
}

/// `TPMA_NV` bits (Part 2 §13.4).
pub mod nv_attributes {
    /// The owner's authorization may write the index.
    pub const OWNERWRITE: u32 = 1 << 1;
    /// The index's own authorization may write it.
    pub const AUTHWRITE: u32 = 1 << 2;
    /// The owner's authorization may read the index.
    pub const OWNERREAD: u32 = 1 << 17;
    /// The index's own authorization may read it.
    pub const AUTHREAD: u32 = 1 << 18;
    /// Set by the TPM once the index has been written.
    pub const WRITTEN: u32 = 1 << 29;
}

/// An RSA key's public area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RsaPublicArea {
    /// `nameAlg`.
    pub name_alg: u16,
    /// `objectAttributes` (see [`object_attributes`]).
    pub attributes: u32,
    /// `authPolicy`.
    pub auth_policy: Vec<u8>,
    /// `symmetric`: the algorithm (`TPM_ALG_NULL` for a signing key) and,
    /// for a block cipher, key bits and mode.
    pub symmetric: (u16, Option<(u16, u16)>),
    /// `scheme` and its hash (`None` for `TPM_ALG_NULL` and RSAES).
    pub scheme: (u16, Option<u16>),
    /// `keyBits`.
    pub key_bits: u16,
    /// `exponent` (0 means 65537).
    pub exponent: u32,
    /// `unique`: the modulus (empty in a template).
    pub modulus: Vec<u8>,
}

impl RsaPublicArea {
    /// The template of an attestation key like Azure's: a restricted
    /// RSA-2048 signing key, RSASSA with SHA-256, name algorithm SHA-256,
    /// authorized by its (empty) password, no dictionary-attack lockout.
    /// The same as `tpm2_createprimary -G rsa2048:rsassa-sha256:null -a
    /// 'fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign|noda'`.
    pub fn attestation_key_template() -> Self {
        use object_attributes::*;
        RsaPublicArea {
            name_alg: TPM_ALG_SHA256,
            attributes: FIXED_TPM
                | FIXED_PARENT
                | SENSITIVE_DATA_ORIGIN
                | USER_WITH_AUTH
                | NO_DA
                | RESTRICTED
                | SIGN,
            auth_policy: Vec::new(),
            symmetric: (TPM_ALG_NULL, None),
            scheme: (TPM_ALG_RSASSA, Some(TPM_ALG_SHA256)),
            key_bits: 2048,
            exponent: 0,
            modulus: Vec::new(),
        }
    }

    /// The public key (modulus and exponent).
    pub fn public_key(&self) -> Result<RsaPublicKey, RsaKeyError> {
        let e = if self.exponent == 0 {
            65537
        } else {
            self.exponent
        };
        RsaPublicKey::new(&self.modulus, &e.to_be_bytes())
    }

    /// Parse a `TPMT_PUBLIC`; only RSA keys are accepted.
    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let kind = r.u16("TPMT_PUBLIC.type")?;
        if kind != TPM_ALG_RSA {
            return Err(WireError::invalid(
                "TPMT_PUBLIC.type",
                format!("{kind:#06x} ({}) is not an RSA key", alg_name(kind)),
            ));
        }
        let name_alg = r.u16("TPMT_PUBLIC.nameAlg")?;
        let attributes = r.u32("TPMT_PUBLIC.objectAttributes")?;
        let auth_policy = r.tpm2b("TPMT_PUBLIC.authPolicy", MAX_DIGEST)?.to_vec();
        let sym_alg = r.u16("TPMS_RSA_PARMS.symmetric.algorithm")?;
        let symmetric = match sym_alg {
            TPM_ALG_NULL => (sym_alg, None),
            TPM_ALG_AES => {
                let bits = r.u16("TPMS_RSA_PARMS.symmetric.keyBits")?;
                let mode = r.u16("TPMS_RSA_PARMS.symmetric.mode")?;
                (sym_alg, Some((bits, mode)))
            }
            other => {
                return Err(WireError::invalid(
                    "TPMS_RSA_PARMS.symmetric",
                    format!("{other:#06x} ({}) is not supported", alg_name(other)),
                ))
            }
        };
        let scheme_alg = r.u16("TPMS_RSA_PARMS.scheme.scheme")?;
        let scheme = match scheme_alg {
            TPM_ALG_NULL | TPM_ALG_RSAES => (scheme_alg, None),
            TPM_ALG_RSASSA | TPM_ALG_RSAPSS | TPM_ALG_OAEP => {
                (scheme_alg, Some(r.u16("TPMS_RSA_PARMS.scheme.hashAlg")?))
            }
            other => {
                return Err(WireError::invalid(
                    "TPMS_RSA_PARMS.scheme",
                    format!("{other:#06x} ({}) is not supported", alg_name(other)),
                ))
            }
        };
        let key_bits = r.u16("TPMS_RSA_PARMS.keyBits")?;
        let exponent = r.u32("TPMS_RSA_PARMS.exponent")?;
        let modulus = r
            .tpm2b("TPMT_PUBLIC.unique.rsa", MAX_RSA_KEY_BYTES)?
            .to_vec();
        Ok(RsaPublicArea {
            name_alg,
            attributes,
            auth_policy,
            symmetric,
            scheme,
            key_bits,
            exponent,
            modulus,
        })
    }

    /// Parse a `TPM2B_PUBLIC` (size, then a `TPMT_PUBLIC` filling it).
    pub(crate) fn read_tpm2b(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let inner = r.tpm2b("TPM2B_PUBLIC", 2048)?;
        let mut ir = Reader::new(inner);
        let area = Self::read(&mut ir)?;
        ir.finish("TPMT_PUBLIC")?;
        Ok(area)
    }

    /// The marshalled `TPMT_PUBLIC`.
    pub fn marshal(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u16(TPM_ALG_RSA)
            .u16(self.name_alg)
            .u32(self.attributes)
            .tpm2b(&self.auth_policy)
            .u16(self.symmetric.0);
        if let Some((bits, mode)) = self.symmetric.1 {
            w.u16(bits).u16(mode);
        }
        w.u16(self.scheme.0);
        if let Some(hash) = self.scheme.1 {
            w.u16(hash);
        }
        w.u16(self.key_bits).u32(self.exponent).tpm2b(&self.modulus);
        w.into_bytes()
    }
}

/// An NV index's public area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NvPublic {
    /// `nvIndex`.
    pub index: u32,
    /// `nameAlg`.
    pub name_alg: u16,
    /// `attributes` (see [`nv_attributes`]).
    pub attributes: u32,
    /// `authPolicy`.
    pub auth_policy: Vec<u8>,
    /// `dataSize`: the index's size in bytes.
    pub data_size: u16,
}

impl NvPublic {
    /// An ordinary index of `size` bytes that the owner and the index's own
    /// (empty) password may read and write, name algorithm SHA-256: how
    /// Microsoft's guest tools define Azure's user data index, and what
    /// `tpm2_nvdefine -C o -s SIZE` defines.
    pub fn owner_read_write(index: u32, size: u16) -> Self {
        use nv_attributes::*;
        NvPublic {
            index,
            name_alg: TPM_ALG_SHA256,
            attributes: OWNERWRITE | AUTHWRITE | OWNERREAD | AUTHREAD,
            auth_policy: Vec::new(),
            data_size: size,
        }
    }

    pub(crate) fn read_tpm2b(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let inner = r.tpm2b("TPM2B_NV_PUBLIC", 2 + 4 + 2 + 4 + 2 + MAX_DIGEST + 2)?;
        let mut ir = Reader::new(inner);
        let public = NvPublic {
            index: ir.u32("TPMS_NV_PUBLIC.nvIndex")?,
            name_alg: ir.u16("TPMS_NV_PUBLIC.nameAlg")?,
            attributes: ir.u32("TPMS_NV_PUBLIC.attributes")?,
            auth_policy: ir.tpm2b("TPMS_NV_PUBLIC.authPolicy", MAX_DIGEST)?.to_vec(),
            data_size: ir.u16("TPMS_NV_PUBLIC.dataSize")?,
        };
        ir.finish("TPMS_NV_PUBLIC")?;
        Ok(public)
    }

    pub(crate) fn marshal_tpm2b(&self, w: &mut Writer) {
        let mut inner = Writer::new();
        inner
            .u32(self.index)
            .u16(self.name_alg)
            .u32(self.attributes)
            .tpm2b(&self.auth_policy)
            .u16(self.data_size);
        w.tpm2b(&inner.into_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ak_template_matches_tpm2_createprimary() {
        // inPublic of `tpm2_createprimary -C o -G rsa2048:rsassa-sha256:null
        // -a 'fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign|noda'`
        // (tpm2-tools 5.4 against swtpm 0.7.1, tests/data/tpm2-tools-swtpm.txt).
        assert_eq!(
            hex::encode(RsaPublicArea::attestation_key_template().marshal()),
            concat!(
                "0001", "000b", "00050472", "0000", // type, nameAlg, attributes, authPolicy
                "0010", "0014000b", "0800",
                "00000000", // NULL symmetric, RSASSA-SHA256, 2048, e
                "0000"      // unique
            )
        );
    }

    #[test]
    fn nv_public_matches_tpm2_nvdefine() {
        // `tpm2_nvdefine -C o -s 64 -a ownerread|ownerwrite|authread|authwrite 0x01400002`
        let mut w = Writer::new();
        NvPublic::owner_read_write(0x0140_0002, 64).marshal_tpm2b(&mut w);
        assert_eq!(
            hex::encode(w.into_bytes()),
            concat!("000e", "01400002", "000b", "00060006", "0000", "0040")
        );
    }

    #[test]
    fn nv_public_parser_checks_inner_length() {
        // NV_ReadPublic of 0x01400002 after a write (WRITTEN bit set).
        let ok = hex::decode(concat!(
            "000e", "01400002", "000b", "20060006", "0000", "0040"
        ))
        .unwrap();
        let mut r = Reader::new(&ok);
        let p = NvPublic::read_tpm2b(&mut r).unwrap();
        assert_eq!(p.data_size, 64);
        assert_ne!(p.attributes & nv_attributes::WRITTEN, 0);
        // The outer size claims one byte more than the inner structure has.
        let long = hex::decode("000f01400002000b20060006000000400a").unwrap();
        assert!(NvPublic::read_tpm2b(&mut Reader::new(&long)).is_err());
        for len in 0..ok.len() {
            assert!(NvPublic::read_tpm2b(&mut Reader::new(&ok[..len])).is_err());
        }
    }

    #[test]
    fn rsa_public_parser_refuses_ecc_and_truncation() {
        let mut t = RsaPublicArea::attestation_key_template();
        t.modulus = vec![0xc1; 256];
        let bytes = t.marshal();
        let mut r = Reader::new(&bytes);
        assert_eq!(RsaPublicArea::read(&mut r).unwrap(), t);
        r.finish("t").unwrap();
        for len in 0..bytes.len() {
            assert!(RsaPublicArea::read(&mut Reader::new(&bytes[..len])).is_err());
        }
        let mut ecc = bytes.clone();
        ecc[1] = 0x23;
        assert!(RsaPublicArea::read(&mut Reader::new(&ecc))
            .unwrap_err()
            .to_string()
            .contains("not an RSA key"));
        assert_eq!(t.public_key().unwrap().exponent(), &[1, 0, 1]);
    }
}
