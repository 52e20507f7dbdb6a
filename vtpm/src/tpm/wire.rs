//! Big-endian marshalling of TPM 2.0 structures (TPM 2.0 Library, Part 1
//! §18 "Marshalling"): a checked reader and an appending writer.
//!
//! Every read says which field it is for, so a truncated structure is
//! reported as "TPMS_ATTEST.extraData: needs 9 bytes, 3 left" rather than a
//! bare "unexpected end". Sized buffers (`TPM2B_*`) are read with the
//! largest size the structure allows, so a hostile size field cannot make
//! a parser allocate or skip more than the type permits.

/// A structure could not be read: it is truncated, longer than it says,
/// or a field holds a value the structure forbids.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// Fewer bytes remain than the field needs.
    #[error("{field}: needs {needed} bytes, {left} left (truncated)")]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes that were left.
        left: usize,
    },
    /// Bytes remain after the structure ended.
    #[error("{structure}: {extra} bytes after its end")]
    Trailing {
        /// The structure that was read.
        structure: &'static str,
        /// How many bytes were left over.
        extra: usize,
    },
    /// A size field is larger than the structure allows.
    #[error("{field}: size {size} exceeds the maximum of {max}")]
    TooLarge {
        /// The sized field.
        field: &'static str,
        /// The size it declared.
        size: usize,
        /// The largest size its type allows.
        max: usize,
    },
    /// A field holds a value this structure (or this crate) does not accept.
    #[error("{field}: {detail}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        detail: String,
    },
}

impl WireError {
    pub(crate) fn invalid(field: &'static str, detail: impl Into<String>) -> Self {
        WireError::Invalid {
            field,
            detail: detail.into(),
        }
    }
}

/// A cursor over untrusted bytes. Every read is bounds-checked.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, pos: 0 }
    }

    /// Bytes not read yet.
    pub(crate) fn left(&self) -> usize {
        self.bytes.len() - self.pos
    }

    pub(crate) fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], WireError> {
        if n > self.left() {
            return Err(WireError::Truncated {
                field,
                needed: n,
                left: self.left(),
            });
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    pub(crate) fn array<const N: usize>(
        &mut self,
        field: &'static str,
    ) -> Result<[u8; N], WireError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, WireError> {
        Ok(self.array::<1>(field)?[0])
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    /// A `TPM2B_*`: a 16-bit size, then that many bytes, at most `max`.
    pub(crate) fn tpm2b(&mut self, field: &'static str, max: usize) -> Result<&'a [u8], WireError> {
        let size = usize::from(self.u16(field)?);
        if size > max {
            return Err(WireError::TooLarge { field, size, max });
        }
        self.take(size, field)
    }

    /// The structure must end here.
    pub(crate) fn finish(&self, structure: &'static str) -> Result<(), WireError> {
        match self.left() {
            0 => Ok(()),
            extra => Err(WireError::Trailing { structure, extra }),
        }
    }
}

/// An appending big-endian writer for command buffers.
#[derive(Debug, Default, Clone)]
pub(crate) struct Writer {
    bytes: Vec<u8>,
}

impl Writer {
    pub(crate) fn new() -> Self {
        Writer::default()
    }

    pub(crate) fn len(&self) -> usize {
        self.bytes.len()
    }

    pub(crate) fn u8(&mut self, v: u8) -> &mut Self {
        self.bytes.push(v);
        self
    }

    pub(crate) fn u16(&mut self, v: u16) -> &mut Self {
        self.bytes.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub(crate) fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub(crate) fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(v);
        self
    }

    /// A `TPM2B_*`. The caller has checked `v` against the type's maximum,
    /// which is always below 64 KiB for the types this crate writes.
    pub(crate) fn tpm2b(&mut self, v: &[u8]) -> &mut Self {
        let size = u16::try_from(v.len()).expect("TPM2B contents checked against their maximum");
        self.u16(size).bytes(v)
    }

    /// Overwrite a 32-bit field written earlier (command and parameter sizes).
    pub(crate) fn patch_u32(&mut self, at: usize, v: u32) {
        self.bytes[at..at + 4].copy_from_slice(&v.to_be_bytes());
    }

    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_bounded_and_named() {
        let mut r = Reader::new(&[0x00, 0x05, 1, 2]);
        assert_eq!(
            r.tpm2b("x", 64),
            Err(WireError::Truncated {
                field: "x",
                needed: 5,
                left: 2
            })
        );
        let mut r = Reader::new(&[0x00, 0x41]);
        assert_eq!(
            r.tpm2b("y", 64),
            Err(WireError::TooLarge {
                field: "y",
                size: 65,
                max: 64
            })
        );
        let mut r = Reader::new(&[0, 1, 9, 7]);
        assert_eq!(r.tpm2b("z", 64).unwrap(), &[9]);
        assert_eq!(
            r.finish("S"),
            Err(WireError::Trailing {
                structure: "S",
                extra: 1
            })
        );
        assert_eq!(r.u8("last").unwrap(), 7);
        r.finish("S").unwrap();
        assert!(r.u32("past the end").is_err());
    }

    #[test]
    fn writer_is_big_endian() {
        let mut w = Writer::new();
        w.u16(0x8001).u32(0).tpm2b(&[0xaa, 0xbb]);
        w.patch_u32(2, 0x0102_0304);
        assert_eq!(w.into_bytes(), [0x80, 0x01, 1, 2, 3, 4, 0, 2, 0xaa, 0xbb]);
    }
}
