//! PCR selections (`TPML_PCR_SELECTION`, Part 2 §10.9.7) and the digest a
//! quote takes over the selected PCRs.
//!
//! A `TPMS_PCR_SELECTION` is a hash algorithm, a byte count
//! (`sizeofSelect`) and a bitmap: bit `i % 8` of byte `i / 8` selects PCR
//! `i`. A quote's `pcrDigest` is the hash (with the signing scheme's hash
//! algorithm) of the selected PCR values concatenated in selection order:
//! the selections in list order, and within one, the PCRs by ascending
//! index (Part 3 §18.4, `PCRComputeCurrentDigest`).

use super::wire::{Reader, WireError, Writer};
use super::{alg_name, TPM_ALG_SHA256};

/// Largest `sizeofSelect` accepted: 4 bytes, 32 PCRs (`PCR_SELECT_MAX` of
/// TPMs with up to 32 PCRs; Azure's vTPM and swtpm have 24).
pub const PCR_SELECT_MAX: usize = 4;
/// Largest number of banks in one `TPML_PCR_SELECTION` (`HASH_COUNT` of
/// common TPMs is at most 5; 16 leaves room without letting a count field
/// make a parser loop long).
pub const MAX_BANKS: usize = 16;
/// Number of PCRs of a PC-client TPM, and of Azure's vTPM.
pub const PC_CLIENT_PCRS: u8 = 24;

/// One `TPMS_PCR_SELECTION`: a bank and the PCRs selected in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrBankSelection {
    hash: u16,
    /// At most [`PCR_SELECT_MAX`] bytes (checked where it is made).
    select: Vec<u8>,
}

impl PcrBankSelection {
    /// The bank's hash algorithm (`TPM_ALG_ID`).
    pub fn hash(&self) -> u16 {
        self.hash
    }

    /// The `pcrSelect` bitmap, `sizeofSelect` bytes long.
    pub fn select(&self) -> &[u8] {
        &self.select
    }

    /// Selected PCR indexes, ascending.
    pub fn indexes(&self) -> impl Iterator<Item = u8> + '_ {
        // `select` has at most PCR_SELECT_MAX (4) bytes: indexes stay below 32.
        (0u8..).zip(&self.select).flat_map(|(byte, bits)| {
            (0..8u8).filter_map(move |bit| (bits & (1 << bit) != 0).then_some(byte * 8 + bit))
        })
    }
}

/// A `TPML_PCR_SELECTION`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrSelection {
    banks: Vec<PcrBankSelection>,
}

impl PcrSelection {
    /// The SHA-256 bank, PCRs `indexes` (each below 32). `sizeofSelect` is
    /// 3 (PCRs 0–23, what Azure's tools and tpm2-tools send) unless a PCR
    /// above 23 is named.
    ///
    /// # Panics
    /// If an index is 32 or above: callers pass constants.
    pub fn sha256(indexes: impl IntoIterator<Item = u8>) -> Self {
        let mut select = vec![0u8; 3];
        for i in indexes {
            let i = usize::from(i);
            assert!(i < PCR_SELECT_MAX * 8, "PCR index {i} above 31");
            if i / 8 >= select.len() {
                select.resize(i / 8 + 1, 0);
            }
            select[i / 8] |= 1 << (i % 8);
        }
        PcrSelection {
            banks: vec![PcrBankSelection {
                hash: TPM_ALG_SHA256,
                select,
            }],
        }
    }

    /// PCRs 0–23 of the SHA-256 bank: what Azure's guest tools quote.
    pub fn sha256_all() -> Self {
        Self::sha256(0..PC_CLIENT_PCRS)
    }

    /// The banks, in list order.
    pub fn banks(&self) -> &[PcrBankSelection] {
        &self.banks
    }

    /// Every selected (bank, PCR index), in the order a quote digests them.
    pub fn in_digest_order(&self) -> Vec<(u16, u8)> {
        self.banks
            .iter()
            .flat_map(|b| b.indexes().map(move |i| (b.hash, i)))
            .collect()
    }

    /// True when no PCR is selected.
    pub fn is_empty(&self) -> bool {
        self.banks.iter().all(|b| b.select.iter().all(|&s| s == 0))
    }

    /// This selection without the PCRs of `other` (PCR_Read returns at most
    /// eight values per call and says which; the rest is asked for again).
    pub fn without(&self, other: &PcrSelection) -> PcrSelection {
        let banks = self
            .banks
            .iter()
            .map(|b| {
                let mut select = b.select.clone();
                for o in other.banks.iter().filter(|o| o.hash == b.hash) {
                    for (s, os) in select.iter_mut().zip(&o.select) {
                        *s &= !os;
                    }
                }
                PcrBankSelection {
                    hash: b.hash,
                    select,
                }
            })
            .collect();
        PcrSelection { banks }
    }

    pub(crate) fn parse(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let count = r.u32("TPML_PCR_SELECTION.count")?;
        let count = usize::try_from(count).unwrap_or(usize::MAX);
        if count > MAX_BANKS {
            return Err(WireError::TooLarge {
                field: "TPML_PCR_SELECTION.count",
                size: count,
                max: MAX_BANKS,
            });
        }
        let mut banks = Vec::with_capacity(count);
        for _ in 0..count {
            let hash = r.u16("TPMS_PCR_SELECTION.hash")?;
            let size = usize::from(r.u8("TPMS_PCR_SELECTION.sizeofSelect")?);
            if size > PCR_SELECT_MAX {
                return Err(WireError::TooLarge {
                    field: "TPMS_PCR_SELECTION.sizeofSelect",
                    size,
                    max: PCR_SELECT_MAX,
                });
            }
            let select = r.take(size, "TPMS_PCR_SELECTION.pcrSelect")?.to_vec();
            banks.push(PcrBankSelection { hash, select });
        }
        Ok(PcrSelection { banks })
    }

    pub(crate) fn marshal(&self, w: &mut Writer) {
        w.u32(u32::try_from(self.banks.len()).expect("at most MAX_BANKS banks"));
        for b in &self.banks {
            w.u16(b.hash)
                .u8(u8::try_from(b.select.len()).expect("at most PCR_SELECT_MAX bytes"))
                .bytes(&b.select);
        }
    }
}

impl std::fmt::Display for PcrSelection {
    /// `sha256:0,1,2` style, as tpm2-tools writes selections.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (n, b) in self.banks.iter().enumerate() {
            if n > 0 {
                f.write_str("+")?;
            }
            let name = alg_name(b.hash).to_ascii_lowercase().replace('-', "");
            let list: Vec<String> = b.indexes().map(|i| i.to_string()).collect();
            write!(f, "{name}:{}", list.join(","))?;
        }
        Ok(())
    }
}

/// SHA-256 over `values` concatenated: the `pcrDigest` of a quote signed
/// with a SHA-256 scheme over SHA-256 PCRs, values in selection order.
pub fn pcr_digest_sha256(values: &[[u8; 32]]) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for v in values {
        ctx.update(v);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marshal(sel: &PcrSelection) -> Vec<u8> {
        let mut w = Writer::new();
        sel.marshal(&mut w);
        w.into_bytes()
    }

    #[test]
    fn selection_bitmaps_match_tpm2_tools() {
        // `tpm2_pcrread sha256:4,12` sends 00000001 000b 03 101000.
        assert_eq!(
            hex::encode(marshal(&PcrSelection::sha256([4, 12]))),
            "00000001000b03101000"
        );
        // Azure's quote (and `-l sha256:0..23`): 00000001 000b 03 ffffff.
        assert_eq!(
            hex::encode(marshal(&PcrSelection::sha256_all())),
            "00000001000b03ffffff"
        );
        assert_eq!(
            hex::encode(marshal(&PcrSelection::sha256([31]))),
            "00000001000b0400000080"
        );
    }

    #[test]
    fn parse_round_trips_and_orders() {
        let bytes = hex::decode("00000002000b0301000100040180").unwrap();
        let mut r = Reader::new(&bytes);
        let sel = PcrSelection::parse(&mut r).unwrap();
        r.finish("sel").unwrap();
        assert_eq!(
            sel.in_digest_order(),
            vec![(0x000b, 0), (0x000b, 16), (0x0004, 7)]
        );
        assert_eq!(marshal(&sel), bytes);
        assert_eq!(sel.to_string(), "sha256:0,16+sha1:7");
    }

    #[test]
    fn parse_refuses_oversized_and_truncated_selections() {
        for (hex_in, want) in [
            ("00000011", "count"),
            ("00000001000b05ffffffffff", "sizeofSelect"),
            ("00000001000b03ffff", "pcrSelect"),
            ("00000001000b", "sizeofSelect"),
            ("000000", "count"),
        ] {
            let bytes = hex::decode(hex_in).unwrap();
            let err = PcrSelection::parse(&mut Reader::new(&bytes)).unwrap_err();
            assert!(err.to_string().contains(want), "{hex_in}: {err}");
        }
    }

    #[test]
    fn without_removes_returned_pcrs() {
        let all = PcrSelection::sha256_all();
        let first8 = PcrSelection::sha256(0..8);
        let rest = all.without(&first8);
        assert_eq!(rest.in_digest_order().len(), 16);
        assert!(all.without(&all).is_empty());
    }

    #[test]
    fn digest_of_the_fixture_pcrs_is_sha256_of_their_concatenation() {
        let zero = [0u8; 32];
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        ctx.update(&[0u8; 64]);
        assert_eq!(
            pcr_digest_sha256(&[zero, zero]).as_slice(),
            ctx.finish().as_ref()
        );
    }
}
