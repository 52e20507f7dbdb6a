//! [`Tpm`]: TPM 2.0 commands over a byte stream.
//!
//! The Linux resource manager (`/dev/tpmrm0`) and swtpm's data socket both
//! take one whole command per write and give back one whole response,
//! which starts with a 10-byte header holding its size; so any
//! `Read + Write` works as a transport. The resource manager flushes the
//! transient objects and sessions a client leaves behind when the file is
//! closed.
//!
//! Commands that a TPM could not start at once (`TPM_RC_RETRY`,
//! `TPM_RC_YIELDED`, `TPM_RC_TESTING`) are sent again, a few times with a
//! short pause, as tpm2-tss and the Linux driver do: swtpm answers the first
//! TPM2_Quote after startup with `TPM_RC_RETRY`.

use super::commands::{self, PcrReadResponse, QuoteResponse, MAX_NV_CHUNK, MAX_RESPONSE};
use super::pcr::PcrSelection;
use super::public::{NvPublic, RsaPublicArea};
use super::signature::RsaScheme;
use super::wire::{Reader, WireError};
use super::TPM_RH_OWNER;
use std::io::{Read, Write};
use std::time::Duration;

/// A TPM 2.0 response code (`TPM_RC`, Part 2 §6.6).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ResponseCode(pub u32);

impl ResponseCode {
    const RC_FMT1: u32 = 0x080;
    const RC_WARN: u32 = 0x900;

    /// The error without its handle, parameter or session number: for a
    /// format-one code the low six bits plus `RC_FMT1`, else the code.
    pub fn base(self) -> u32 {
        if self.0 & Self::RC_FMT1 != 0 {
            (self.0 & 0x3f) | Self::RC_FMT1
        } else {
            self.0
        }
    }

    /// `TPM_RC_HANDLE` on a handle: the index or object does not exist.
    pub fn is_handle_not_found(self) -> bool {
        self.base() == 0x08b && self.0 & 0x040 == 0
    }

    /// A warning after which the same command may simply be sent again.
    pub fn is_retryable(self) -> bool {
        matches!(self.0, 0x908 | 0x90a | 0x922)
    }

    fn name(self) -> &'static str {
        match self.base() {
            0x100 => "TPM_RC_INITIALIZE: TPM2_Startup not done",
            0x101 => "TPM_RC_FAILURE: the TPM is in failure mode",
            0x143 => "TPM_RC_COMMAND_CODE: command not implemented",
            0x146 => "TPM_RC_NV_RANGE: offset or size outside the index",
            0x147 => "TPM_RC_NV_SIZE: index larger than the TPM allows",
            0x148 => "TPM_RC_NV_LOCKED: index locked for writing",
            0x149 => "TPM_RC_NV_AUTHORIZATION: the authorization given may not access the index",
            0x14a => "TPM_RC_NV_UNINITIALIZED: index never written",
            0x14b => "TPM_RC_NV_SPACE: no NV space left",
            0x14c => "TPM_RC_NV_DEFINED: index already defined",
            0x082 => "TPM_RC_ATTRIBUTES",
            0x083 => "TPM_RC_HASH: hash algorithm not supported",
            0x084 => "TPM_RC_VALUE: value out of range",
            0x08b => "TPM_RC_HANDLE: no such handle",
            0x08e => "TPM_RC_AUTH_FAIL: wrong password",
            0x092 => "TPM_RC_SCHEME: scheme not allowed for the key",
            0x095 => "TPM_RC_SIZE: a size is wrong",
            0x09c => "TPM_RC_KEY",
            0x0a2 => "TPM_RC_BAD_AUTH: authorization failed",
            0x908 => "TPM_RC_YIELDED",
            0x90a => "TPM_RC_TESTING: the TPM is self-testing",
            0x921 => "TPM_RC_LOCKOUT: dictionary-attack lockout",
            0x922 => "TPM_RC_RETRY",
            _ if self.0 & Self::RC_WARN == Self::RC_WARN => "a TPM warning",
            _ => "a TPM error",
        }
    }
}

impl std::fmt::Debug for ResponseCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ResponseCode({:#05x})", self.0)
    }
}

impl std::fmt::Display for ResponseCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#05x} ({})", self.0, self.name())?;
        if self.0 & Self::RC_FMT1 != 0 {
            let n = (self.0 >> 8) & 0xf;
            if self.0 & 0x040 != 0 {
                write!(f, " on parameter {n}")?;
            } else if n & 0x8 != 0 {
                write!(f, " on session {}", n & 0x7)?;
            } else {
                write!(f, " on handle {n}")?;
            }
        }
        Ok(())
    }
}

/// A TPM command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TpmError {
    /// The transport failed.
    #[error("TPM transport: {0}")]
    Io(#[from] std::io::Error),
    /// The TPM answered with an error code.
    #[error("{command} failed: TPM response code {rc}")]
    Rc {
        /// The command.
        command: &'static str,
        /// The code.
        rc: ResponseCode,
    },
    /// The response is not a well-formed answer to the command.
    #[error("malformed TPM response: {0}")]
    Response(#[from] WireError),
    /// A command argument is out of range (nothing was sent).
    #[error("invalid TPM command argument: {0}")]
    Argument(String),
    /// The TPM's state is not what this operation needs.
    #[error("{0}")]
    Unexpected(String),
}

/// A TPM reached over a byte stream.
#[derive(Debug)]
pub struct Tpm<T> {
    io: T,
    retries: u32,
    retry_pause: Duration,
}

impl<T: Read + Write> Tpm<T> {
    /// A TPM on `io` (an open `/dev/tpmrm0`, a connected swtpm socket).
    pub fn new(io: T) -> Self {
        Tpm {
            io,
            retries: 5,
            retry_pause: Duration::from_millis(20),
        }
    }

    /// The transport back.
    pub fn into_inner(self) -> T {
        self.io
    }

    /// Send one command and return its whole response (any response code).
    /// A retryable warning makes the same command go again.
    pub fn transact(&mut self, command: &[u8]) -> Result<Vec<u8>, TpmError> {
        let mut attempt = 0;
        loop {
            let resp = self.send_once(command)?;
            let rc = ResponseCode(u32::from_be_bytes([resp[6], resp[7], resp[8], resp[9]]));
            if !rc.is_retryable() || attempt >= self.retries {
                return Ok(resp);
            }
            attempt += 1;
            std::thread::sleep(self.retry_pause * attempt);
        }
    }

    fn send_once(&mut self, command: &[u8]) -> Result<Vec<u8>, TpmError> {
        self.io.write_all(command)?;
        self.io.flush()?;
        let mut header = [0u8; 10];
        self.io.read_exact(&mut header)?;
        let mut r = Reader::new(&header);
        r.u16("response.tag")?;
        let size = usize::try_from(r.u32("response.responseSize")?).unwrap_or(usize::MAX);
        if !(10..=MAX_RESPONSE).contains(&size) {
            return Err(WireError::invalid(
                "response.responseSize",
                format!("{size} bytes; a response has 10 to {MAX_RESPONSE}"),
            )
            .into());
        }
        let mut resp = vec![0u8; size];
        resp[..10].copy_from_slice(&header);
        self.io.read_exact(&mut resp[10..])?;
        Ok(resp)
    }

    /// The public area of NV index `index`; `None` when it is not defined.
    pub fn nv_read_public(&mut self, index: u32) -> Result<Option<NvPublic>, TpmError> {
        let resp = self.transact(&commands::build_nv_read_public(index))?;
        match commands::parse_nv_read_public(&resp) {
            Ok((public, _name)) => {
                if public.index != index {
                    return Err(TpmError::Unexpected(format!(
                        "NV_ReadPublic of {index:#010x} described index {:#010x}",
                        public.index
                    )));
                }
                Ok(Some(public))
            }
            Err(TpmError::Rc { rc, .. }) if rc.is_handle_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The largest NV_Read/NV_Write chunk: `TPM_PT_NV_BUFFER_MAX`, capped at
    /// [`MAX_NV_CHUNK`].
    pub fn nv_buffer_max(&mut self) -> Result<usize, TpmError> {
        let pt = commands::TPM_PT_NV_BUFFER_MAX;
        let resp = self.transact(&commands::build_get_tpm_properties(pt, 1))?;
        let props = commands::parse_get_tpm_properties(&resp)?;
        match props.first() {
            Some(&(p, v)) if p == pt && v > 0 => {
                Ok(usize::try_from(v).unwrap_or(MAX_NV_CHUNK).min(MAX_NV_CHUNK))
            }
            _ => Err(TpmError::Unexpected(
                "the TPM did not report TPM_PT_NV_BUFFER_MAX".into(),
            )),
        }
    }

    /// The whole of NV index `index`, read in chunks with owner
    /// authorization (empty password), as `tpm2_nvread -C o` does.
    pub fn nv_read_all(&mut self, index: u32) -> Result<Vec<u8>, TpmError> {
        let public = self.nv_read_public(index)?.ok_or_else(|| {
            TpmError::Unexpected(format!("NV index {index:#010x} is not defined"))
        })?;
        let chunk = self.nv_buffer_max()?;
        let size = usize::from(public.data_size);
        let mut out = Vec::with_capacity(size);
        while out.len() < size {
            let n = (size - out.len()).min(chunk);
            let offset = u16::try_from(out.len()).expect("below the u16 data size");
            let cmd = commands::build_nv_read(
                TPM_RH_OWNER,
                index,
                &[],
                u16::try_from(n).expect("at most MAX_NV_CHUNK"),
                offset,
            )?;
            let data = commands::parse_nv_read(&self.transact(&cmd)?)?;
            if data.len() != n {
                return Err(TpmError::Unexpected(format!(
                    "NV_Read of {n} bytes at offset {offset} of {index:#010x} returned {}",
                    data.len()
                )));
            }
            out.extend_from_slice(&data);
        }
        Ok(out)
    }

    /// Define NV index `public` under the owner hierarchy (empty owner and
    /// index passwords).
    pub fn nv_define_space(&mut self, public: &NvPublic) -> Result<(), TpmError> {
        let cmd = commands::build_nv_define_space(TPM_RH_OWNER, &[], &[], public)?;
        commands::parse_empty("TPM2_NV_DefineSpace", &self.transact(&cmd)?, true)
    }

    /// Write `data` at offset 0 of NV index `index` with owner authorization,
    /// in chunks the TPM accepts.
    pub fn nv_write_all(&mut self, index: u32, data: &[u8]) -> Result<(), TpmError> {
        if data.len() > usize::from(u16::MAX) {
            return Err(TpmError::Argument(format!(
                "{} bytes do not fit an NV index",
                data.len()
            )));
        }
        let chunk = self.nv_buffer_max()?;
        for (i, part) in data.chunks(chunk).enumerate() {
            let offset = u16::try_from(i * chunk).expect("below the u16 limit checked above");
            let cmd = commands::build_nv_write(TPM_RH_OWNER, index, &[], part, offset)?;
            commands::parse_empty("TPM2_NV_Write", &self.transact(&cmd)?, true)?;
        }
        Ok(())
    }

    /// TPM2_Quote by the key at `sign_handle` (empty password).
    pub fn quote(
        &mut self,
        sign_handle: u32,
        qualifying_data: &[u8],
        scheme: Option<RsaScheme>,
        selection: &PcrSelection,
    ) -> Result<QuoteResponse, TpmError> {
        let cmd = commands::build_quote(sign_handle, &[], qualifying_data, scheme, selection)?;
        commands::parse_quote(&self.transact(&cmd)?)
    }

    /// One TPM2_PCR_Read.
    pub fn pcr_read(&mut self, selection: &PcrSelection) -> Result<PcrReadResponse, TpmError> {
        commands::parse_pcr_read(&self.transact(&commands::build_pcr_read(selection))?)
    }

    /// The SHA-256 values of every PCR in `selection` (SHA-256 bank only),
    /// in digest order, read in as many TPM2_PCR_Read calls as it takes.
    /// Fails if a PCR changes in between (the update counter moves).
    pub fn pcr_read_sha256(&mut self, selection: &PcrSelection) -> Result<Vec<[u8; 32]>, TpmError> {
        let wanted = selection.in_digest_order();
        if wanted
            .iter()
            .any(|&(bank, _)| bank != super::TPM_ALG_SHA256)
        {
            return Err(TpmError::Argument(format!(
                "{selection} names a bank other than SHA-256"
            )));
        }
        let mut got: std::collections::BTreeMap<u8, [u8; 32]> = Default::default();
        let mut rest = selection.clone();
        let mut counter = None;
        while !rest.is_empty() {
            let r = self.pcr_read(&rest)?;
            if *counter.get_or_insert(r.update_counter) != r.update_counter {
                return Err(TpmError::Unexpected(
                    "PCRs changed while they were read; read them again".into(),
                ));
            }
            let returned = r.selection.in_digest_order();
            if returned.is_empty() {
                return Err(TpmError::Unexpected(format!(
                    "TPM2_PCR_Read returned no value for {rest}; the TPM lacks these PCRs"
                )));
            }
            for ((bank, index), value) in returned.into_iter().zip(r.values) {
                let value: [u8; 32] = value.as_slice().try_into().map_err(|_| {
                    TpmError::Unexpected(format!(
                        "PCR {index} of the SHA-256 bank has {} bytes",
                        value.len()
                    ))
                })?;
                if bank != super::TPM_ALG_SHA256 || !wanted.contains(&(bank, index)) {
                    return Err(TpmError::Unexpected(format!(
                        "TPM2_PCR_Read returned PCR {index} of bank {bank:#06x}, not asked for"
                    )));
                }
                got.insert(index, value);
            }
            rest = rest.without(&r.selection);
        }
        Ok(wanted.iter().map(|&(_, i)| got[&i]).collect())
    }

    /// Create a primary RSA key from `template` in the owner hierarchy;
    /// returns its transient handle and public area.
    pub fn create_primary(
        &mut self,
        template: &RsaPublicArea,
    ) -> Result<(u32, RsaPublicArea), TpmError> {
        let cmd = commands::build_create_primary(TPM_RH_OWNER, &[], template)?;
        commands::parse_create_primary(&self.transact(&cmd)?)
    }

    /// Make transient `object` persistent at `persistent` (owner auth).
    pub fn evict_control(&mut self, object: u32, persistent: u32) -> Result<(), TpmError> {
        let cmd = commands::build_evict_control(TPM_RH_OWNER, &[], object, persistent)?;
        commands::parse_empty("TPM2_EvictControl", &self.transact(&cmd)?, true)
    }

    /// The public area of the RSA key at `handle`.
    pub fn read_public(&mut self, handle: u32) -> Result<RsaPublicArea, TpmError> {
        commands::parse_read_public(&self.transact(&commands::build_read_public(handle))?)
    }

    /// Flush a transient object or session.
    pub fn flush_context(&mut self, handle: u32) -> Result<(), TpmError> {
        let resp = self.transact(&commands::build_flush_context(handle))?;
        commands::parse_empty("TPM2_FlushContext", &resp, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::io;

    /// A scripted TPM: records commands, plays back responses.
    struct Script {
        sent: Vec<Vec<u8>>,
        replies: VecDeque<Vec<u8>>,
        out: VecDeque<u8>,
    }

    impl Write for Script {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.sent.push(b.to_vec());
            if let Some(r) = self.replies.pop_front() {
                self.out.extend(r);
            }
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Read for Script {
        fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
            let n = b.len().min(self.out.len());
            for (dst, src) in b.iter_mut().zip(self.out.drain(..n)) {
                *dst = src;
            }
            Ok(n)
        }
    }

    fn tpm(replies: &[&str]) -> Tpm<Script> {
        let mut t = Tpm::new(Script {
            sent: vec![],
            replies: replies.iter().map(|r| hex::decode(r).unwrap()).collect(),
            out: VecDeque::new(),
        });
        t.retry_pause = Duration::ZERO;
        t
    }

    #[test]
    fn retries_retry_warnings_then_gives_up() {
        let ok = "80010000001b000000000100000006000000010000012c00000400";
        let mut t = tpm(&["80010000000a00000922", ok]);
        assert_eq!(t.nv_buffer_max().unwrap(), 1024);
        assert_eq!(t.io.sent.len(), 2);
        assert_eq!(t.io.sent[0], t.io.sent[1]);
        let mut t = tpm(&["80010000000a00000922"; 7]);
        match t.nv_buffer_max() {
            Err(TpmError::Rc { rc, .. }) => assert_eq!(rc.0, 0x922),
            other => panic!("{other:?}"),
        }
        assert_eq!(t.io.sent.len(), 6);
    }

    #[test]
    fn absent_index_is_none_and_other_errors_are_errors() {
        let mut t = tpm(&["80010000000a0000018b"]);
        assert_eq!(t.nv_read_public(0x0140_0002).unwrap(), None);
        let mut t = tpm(&["80010000000a00000101"]);
        let e = t.nv_read_public(0x0140_0002).unwrap_err();
        assert!(e.to_string().contains("failure mode"), "{e}");
    }

    #[test]
    fn oversized_or_short_responses_are_refused() {
        let mut t = tpm(&["8001ffffffff00000000"]);
        assert!(matches!(t.transact(&[0; 10]), Err(TpmError::Response(_))));
        let mut t = tpm(&["80010000000c00000000"]);
        assert!(matches!(t.transact(&[0; 10]), Err(TpmError::Io(_))));
        let mut t = tpm(&["8001000000"]);
        assert!(matches!(t.transact(&[0; 10]), Err(TpmError::Io(_))));
    }

    #[test]
    fn response_codes_read_well() {
        assert_eq!(
            ResponseCode(0x18b).to_string(),
            "0x18b (TPM_RC_HANDLE: no such handle) on handle 1"
        );
        assert_eq!(
            ResponseCode(0x2d5).to_string(),
            "0x2d5 (TPM_RC_SIZE: a size is wrong) on parameter 2"
        );
        assert!(ResponseCode(0x98e).to_string().contains("on session 1"));
        assert!(ResponseCode(0x18b).is_handle_not_found());
        // FlushContext's handle is a parameter: 0x1cb is not "no such index".
        assert!(!ResponseCode(0x1cb).is_handle_not_found());
        assert!(ResponseCode(0x922).is_retryable() && !ResponseCode(0x921).is_retryable());
    }
}
