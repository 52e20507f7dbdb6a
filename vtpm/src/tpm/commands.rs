//! TPM 2.0 command buffers and response parsers (Part 3), without I/O.
//!
//! A command is `tag u16 ‖ commandSize u32 ‖ commandCode u32 ‖ handles ‖
//! [authorizationSize u32 ‖ sessions] ‖ parameters`; a response is `tag u16
//! ‖ responseSize u32 ‖ responseCode u32 ‖ handles ‖ [parameterSize u32] ‖
//! parameters ‖ [sessions]` (Part 1 §18). Commands that need authorization
//! carry one password session (`TPM_RS_PW`, empty nonce,
//! `continueSession`, the password in `hmac`), as tpm2-tss sends it: Azure's
//! owner hierarchy and attestation key have empty passwords.
//!
//! Every `build_*` function returns the whole command; every `parse_*`
//! function takes the whole response, checks its header (tag, size,
//! response code), its parameter size and its session area, and refuses
//! trailing bytes. [`super::Tpm`] pairs them over a transport.

use super::attest::QuoteAttest;
use super::device::{ResponseCode, TpmError};
use super::pcr::PcrSelection;
use super::public::{NvPublic, RsaPublicArea};
use super::signature::{QuoteSignature, RsaScheme};
use super::wire::{Reader, WireError, Writer};
use super::{
    MAX_DIGEST, MAX_TPMT_HA, TPM_ALG_NULL, TPM_ALG_SHA256, TPM_RS_PW, TPM_ST_NO_SESSIONS,
    TPM_ST_SESSIONS,
};

/// `TPM_CC_*` command codes used here.
pub mod cc {
    /// TPM2_EvictControl.
    pub const EVICT_CONTROL: u32 = 0x0000_0120;
    /// TPM2_NV_DefineSpace.
    pub const NV_DEFINE_SPACE: u32 = 0x0000_012a;
    /// TPM2_CreatePrimary.
    pub const CREATE_PRIMARY: u32 = 0x0000_0131;
    /// TPM2_NV_Write.
    pub const NV_WRITE: u32 = 0x0000_0137;
    /// TPM2_NV_Read.
    pub const NV_READ: u32 = 0x0000_014e;
    /// TPM2_Quote.
    pub const QUOTE: u32 = 0x0000_0158;
    /// TPM2_FlushContext.
    pub const FLUSH_CONTEXT: u32 = 0x0000_0165;
    /// TPM2_NV_ReadPublic.
    pub const NV_READ_PUBLIC: u32 = 0x0000_0169;
    /// TPM2_ReadPublic.
    pub const READ_PUBLIC: u32 = 0x0000_0173;
    /// TPM2_GetCapability.
    pub const GET_CAPABILITY: u32 = 0x0000_017a;
    /// TPM2_PCR_Read.
    pub const PCR_READ: u32 = 0x0000_017e;
}

/// `TPM_CAP_TPM_PROPERTIES`.
pub const TPM_CAP_TPM_PROPERTIES: u32 = 6;
/// `TPM_PT_NV_BUFFER_MAX`: the largest NV_Read/NV_Write chunk.
pub const TPM_PT_NV_BUFFER_MAX: u32 = 0x12c;
/// Largest qualifying data [`build_quote`] takes: 64 bytes, a SHA-512
/// digest, which is what a binding value is.
pub const MAX_QUALIFYING_DATA: usize = 64;
/// Largest NV_Read/NV_Write chunk this crate asks for, whatever the TPM
/// allows (`MAX_NV_BUFFER_SIZE` of common TPMs is 1024 or 2048).
pub const MAX_NV_CHUNK: usize = 2048;
/// Largest response [`super::Tpm`] reads (`MAX_RESPONSE_SIZE` of common
/// TPMs is 4096).
pub const MAX_RESPONSE: usize = 8192;
/// Largest number of values one `TPML_DIGEST` holds (PCR_Read returns at
/// most 8).
const MAX_DIGESTS: usize = 8;
/// Largest number of properties accepted from one GetCapability call
/// (`MAX_TPM_PROPERTIES` is about 127 for a 4 KiB response).
const MAX_PROPERTIES: usize = 256;
/// Bound of `sizeof(TPMS_ATTEST)`: far above what any quote needs.
const MAX_ATTEST: usize = 2048;

fn command(cc: u32, handles: &[u32], password: Option<&[u8]>, params: &[u8]) -> Vec<u8> {
    let mut w = Writer::new();
    w.u16(if password.is_some() {
        TPM_ST_SESSIONS
    } else {
        TPM_ST_NO_SESSIONS
    })
    .u32(0)
    .u32(cc);
    for h in handles {
        w.u32(*h);
    }
    if let Some(pw) = password {
        // TPMS_AUTH_COMMAND: sessionHandle, nonce (empty), sessionAttributes
        // (continueSession), hmac (the password).
        let size = 4 + 2 + 1 + 2 + pw.len();
        w.u32(u32::try_from(size).expect("password checked by the caller"))
            .u32(TPM_RS_PW)
            .u16(0)
            .u8(0x01)
            .tpm2b(pw);
    }
    w.bytes(params);
    let len = u32::try_from(w.len()).expect("commands are small");
    w.patch_u32(2, len);
    w.into_bytes()
}

fn check_password(password: &[u8]) -> Result<(), TpmError> {
    if password.len() > MAX_DIGEST {
        return Err(TpmError::Argument(format!(
            "a password of {} bytes is longer than the {MAX_DIGEST} a TPM accepts",
            password.len()
        )));
    }
    Ok(())
}

/// TPM2_NV_ReadPublic (Part 3 §31.6): the public area and name of an NV index.
pub fn build_nv_read_public(index: u32) -> Vec<u8> {
    command(cc::NV_READ_PUBLIC, &[index], None, &[])
}

/// TPM2_NV_Read (Part 3 §31.13): `size` bytes at `offset` of `index`,
/// authorized by `auth_handle` (the owner, or the index itself).
pub fn build_nv_read(
    auth_handle: u32,
    index: u32,
    password: &[u8],
    size: u16,
    offset: u16,
) -> Result<Vec<u8>, TpmError> {
    check_password(password)?;
    let mut p = Writer::new();
    p.u16(size).u16(offset);
    Ok(command(
        cc::NV_READ,
        &[auth_handle, index],
        Some(password),
        &p.into_bytes(),
    ))
}

/// TPM2_NV_Write (Part 3 §31.7): `data` at `offset` of `index`.
pub fn build_nv_write(
    auth_handle: u32,
    index: u32,
    password: &[u8],
    data: &[u8],
    offset: u16,
) -> Result<Vec<u8>, TpmError> {
    check_password(password)?;
    if data.len() > MAX_NV_CHUNK {
        return Err(TpmError::Argument(format!(
            "NV_Write of {} bytes; write at most {MAX_NV_CHUNK} per command",
            data.len()
        )));
    }
    let mut p = Writer::new();
    p.tpm2b(data).u16(offset);
    Ok(command(
        cc::NV_WRITE,
        &[auth_handle, index],
        Some(password),
        &p.into_bytes(),
    ))
}

/// TPM2_NV_DefineSpace (Part 3 §31.3): define `public` with password
/// `index_auth`, authorized by hierarchy `auth_handle`.
pub fn build_nv_define_space(
    auth_handle: u32,
    password: &[u8],
    index_auth: &[u8],
    public: &NvPublic,
) -> Result<Vec<u8>, TpmError> {
    check_password(password)?;
    check_password(index_auth)?;
    if public.auth_policy.len() > MAX_DIGEST {
        return Err(TpmError::Argument("authPolicy longer than a digest".into()));
    }
    let mut p = Writer::new();
    p.tpm2b(index_auth);
    public.marshal_tpm2b(&mut p);
    Ok(command(
        cc::NV_DEFINE_SPACE,
        &[auth_handle],
        Some(password),
        &p.into_bytes(),
    ))
}

/// TPM2_Quote (Part 3 §18.4): key `sign_handle` signs the PCRs of
/// `selection` with `qualifying_data` as extraData. `scheme` `None` uses
/// the key's own scheme (`TPM_ALG_NULL`), which a restricted key has.
pub fn build_quote(
    sign_handle: u32,
    password: &[u8],
    qualifying_data: &[u8],
    scheme: Option<RsaScheme>,
    selection: &PcrSelection,
) -> Result<Vec<u8>, TpmError> {
    check_password(password)?;
    if qualifying_data.len() > MAX_QUALIFYING_DATA {
        return Err(TpmError::Argument(format!(
            "qualifying data of {} bytes; at most {MAX_QUALIFYING_DATA}",
            qualifying_data.len()
        )));
    }
    let mut p = Writer::new();
    p.tpm2b(qualifying_data);
    match scheme {
        None => p.u16(TPM_ALG_NULL),
        Some(s) => p.u16(s.alg()).u16(TPM_ALG_SHA256),
    };
    selection.marshal(&mut p);
    Ok(command(
        cc::QUOTE,
        &[sign_handle],
        Some(password),
        &p.into_bytes(),
    ))
}

/// TPM2_PCR_Read (Part 3 §22.4). The TPM returns at most eight values and
/// says which; ask again for the rest ([`PcrSelection::without`]).
pub fn build_pcr_read(selection: &PcrSelection) -> Vec<u8> {
    let mut p = Writer::new();
    selection.marshal(&mut p);
    command(cc::PCR_READ, &[], None, &p.into_bytes())
}

/// TPM2_GetCapability (Part 3 §30.2) of `TPM_CAP_TPM_PROPERTIES` from
/// `property`, `count` of them.
pub fn build_get_tpm_properties(property: u32, count: u32) -> Vec<u8> {
    let mut p = Writer::new();
    p.u32(TPM_CAP_TPM_PROPERTIES).u32(property).u32(count);
    command(cc::GET_CAPABILITY, &[], None, &p.into_bytes())
}

/// TPM2_CreatePrimary (Part 3 §24.1) of an RSA key from `template` under
/// hierarchy `hierarchy`, with an empty key password.
pub fn build_create_primary(
    hierarchy: u32,
    password: &[u8],
    template: &RsaPublicArea,
) -> Result<Vec<u8>, TpmError> {
    check_password(password)?;
    let mut p = Writer::new();
    // inSensitive: TPM2B_SENSITIVE_CREATE { userAuth empty, data empty }.
    p.u16(4).u16(0).u16(0);
    p.tpm2b(&template.marshal());
    p.u16(0); // outsideInfo
    p.u32(0); // creationPCR: empty TPML_PCR_SELECTION
    Ok(command(
        cc::CREATE_PRIMARY,
        &[hierarchy],
        Some(password),
        &p.into_bytes(),
    ))
}

/// TPM2_EvictControl (Part 3 §28.5): make `object` persistent at
/// `persistent` (or, for a persistent `object`, evict it).
pub fn build_evict_control(
    auth: u32,
    password: &[u8],
    object: u32,
    persistent: u32,
) -> Result<Vec<u8>, TpmError> {
    check_password(password)?;
    let mut p = Writer::new();
    p.u32(persistent);
    Ok(command(
        cc::EVICT_CONTROL,
        &[auth, object],
        Some(password),
        &p.into_bytes(),
    ))
}

/// TPM2_ReadPublic (Part 3 §12.4).
pub fn build_read_public(handle: u32) -> Vec<u8> {
    command(cc::READ_PUBLIC, &[handle], None, &[])
}

/// TPM2_FlushContext (Part 3 §28.4). The handle is a parameter, not a
/// handle-area entry.
pub fn build_flush_context(handle: u32) -> Vec<u8> {
    command(cc::FLUSH_CONTEXT, &[], None, &handle.to_be_bytes())
}

/// A response split into its parts.
struct Response<'a> {
    handles: Vec<u32>,
    params: Reader<'a>,
}

/// Check a response's header and split it. `sessions`: whether the command
/// carried (one) authorization session; `handles`: how many handles the
/// response carries before its parameters.
fn response<'a>(
    command: &'static str,
    resp: &'a [u8],
    sessions: bool,
    handles: usize,
) -> Result<Response<'a>, TpmError> {
    let mut r = Reader::new(resp);
    let tag = r.u16("response.tag")?;
    let size = r.u32("response.responseSize")?;
    let rc = r.u32("response.responseCode")?;
    if usize::try_from(size).ok() != Some(resp.len()) {
        return Err(WireError::invalid(
            "response.responseSize",
            format!("says {size} bytes, {} received", resp.len()),
        )
        .into());
    }
    if rc != 0 {
        return Err(TpmError::Rc {
            command,
            rc: ResponseCode(rc),
        });
    }
    let want = if sessions {
        TPM_ST_SESSIONS
    } else {
        TPM_ST_NO_SESSIONS
    };
    if tag != want {
        return Err(WireError::invalid(
            "response.tag",
            format!("{tag:#06x}, expected {want:#06x}"),
        )
        .into());
    }
    let mut hs = Vec::with_capacity(handles);
    for _ in 0..handles {
        hs.push(r.u32("response.handle")?);
    }
    if !sessions {
        return Ok(Response {
            handles: hs,
            params: r,
        });
    }
    let psize = usize::try_from(r.u32("response.parameterSize")?).unwrap_or(usize::MAX);
    let params = r.take(psize, "response.parameters")?;
    // One TPMS_AUTH_RESPONSE: nonce, sessionAttributes, hmac (empty for a
    // password session; an HMAC session's are checked by whoever opened it).
    r.tpm2b("TPMS_AUTH_RESPONSE.nonce", MAX_DIGEST)?;
    r.u8("TPMS_AUTH_RESPONSE.sessionAttributes")?;
    r.tpm2b("TPMS_AUTH_RESPONSE.hmac", MAX_DIGEST)?;
    r.finish("response")?;
    Ok(Response {
        handles: hs,
        params: Reader::new(params),
    })
}

/// A response with no parameters (NV_Write, NV_DefineSpace, EvictControl,
/// FlushContext): only its header and session area are checked.
pub fn parse_empty(command: &'static str, resp: &[u8], sessions: bool) -> Result<(), TpmError> {
    let r = response(command, resp, sessions, 0)?;
    r.params.finish("response parameters")?;
    Ok(())
}

/// TPM2_NV_ReadPublic's response: the public area and the index's name.
pub fn parse_nv_read_public(resp: &[u8]) -> Result<(NvPublic, Vec<u8>), TpmError> {
    let mut r = response("TPM2_NV_ReadPublic", resp, false, 0)?.params;
    let public = NvPublic::read_tpm2b(&mut r)?;
    let name = r.tpm2b("nvName", MAX_TPMT_HA)?.to_vec();
    r.finish("TPM2_NV_ReadPublic response")?;
    Ok((public, name))
}

/// TPM2_NV_Read's response: the data read.
pub fn parse_nv_read(resp: &[u8]) -> Result<Vec<u8>, TpmError> {
    let mut r = response("TPM2_NV_Read", resp, true, 0)?.params;
    let data = r.tpm2b("TPM2B_MAX_NV_BUFFER", MAX_NV_CHUNK)?.to_vec();
    r.finish("TPM2_NV_Read response")?;
    Ok(data)
}

/// What TPM2_Quote returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuoteResponse {
    /// The signed `TPMS_ATTEST`, as the TPM marshalled it.
    pub attest: Vec<u8>,
    /// The signature over `attest`.
    pub signature: QuoteSignature,
}

impl QuoteResponse {
    /// The parsed `TPMS_ATTEST`.
    pub fn parsed(&self) -> Result<QuoteAttest, super::attest::AttestError> {
        QuoteAttest::parse(&self.attest)
    }
}

/// TPM2_Quote's response: `TPM2B_ATTEST` and `TPMT_SIGNATURE`.
pub fn parse_quote(resp: &[u8]) -> Result<QuoteResponse, TpmError> {
    let mut r = response("TPM2_Quote", resp, true, 0)?.params;
    let attest = r.tpm2b("TPM2B_ATTEST", MAX_ATTEST)?.to_vec();
    let signature = QuoteSignature::read_tpmt(&mut r)?;
    r.finish("TPM2_Quote response")?;
    Ok(QuoteResponse { attest, signature })
}

/// What one TPM2_PCR_Read returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrReadResponse {
    /// `pcrUpdateCounter`: changes whenever a PCR changes.
    pub update_counter: u32,
    /// The PCRs whose values follow, in digest order.
    pub selection: PcrSelection,
    /// The values, one per selected PCR.
    pub values: Vec<Vec<u8>>,
}

/// TPM2_PCR_Read's response. The number of values must be the number of
/// PCRs the returned selection names.
pub fn parse_pcr_read(resp: &[u8]) -> Result<PcrReadResponse, TpmError> {
    let mut r = response("TPM2_PCR_Read", resp, false, 0)?.params;
    let update_counter = r.u32("pcrUpdateCounter")?;
    let selection = PcrSelection::parse(&mut r)?;
    let count = usize::try_from(r.u32("TPML_DIGEST.count")?).unwrap_or(usize::MAX);
    if count > MAX_DIGESTS {
        return Err(WireError::TooLarge {
            field: "TPML_DIGEST.count",
            size: count,
            max: MAX_DIGESTS,
        }
        .into());
    }
    let mut values = Vec::with_capacity(count);
    for _ in 0..count {
        values.push(r.tpm2b("TPML_DIGEST.digests", MAX_DIGEST)?.to_vec());
    }
    r.finish("TPM2_PCR_Read response")?;
    let named = selection.in_digest_order().len();
    if named != count {
        return Err(WireError::invalid(
            "TPML_DIGEST.count",
            format!("{count} values for {named} PCRs in pcrSelectionOut"),
        )
        .into());
    }
    Ok(PcrReadResponse {
        update_counter,
        selection,
        values,
    })
}

/// TPM2_GetCapability's response for `TPM_CAP_TPM_PROPERTIES`: (property,
/// value) pairs.
pub fn parse_get_tpm_properties(resp: &[u8]) -> Result<Vec<(u32, u32)>, TpmError> {
    let mut r = response("TPM2_GetCapability", resp, false, 0)?.params;
    r.u8("moreData")?;
    let cap = r.u32("TPMS_CAPABILITY_DATA.capability")?;
    if cap != TPM_CAP_TPM_PROPERTIES {
        return Err(WireError::invalid(
            "TPMS_CAPABILITY_DATA.capability",
            format!("{cap:#x}, asked for TPM_CAP_TPM_PROPERTIES (6)"),
        )
        .into());
    }
    let count = usize::try_from(r.u32("TPML_TAGGED_TPM_PROPERTY.count")?).unwrap_or(usize::MAX);
    if count > MAX_PROPERTIES {
        return Err(WireError::TooLarge {
            field: "TPML_TAGGED_TPM_PROPERTY.count",
            size: count,
            max: MAX_PROPERTIES,
        }
        .into());
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        out.push((
            r.u32("TPMS_TAGGED_PROPERTY.property")?,
            r.u32("TPMS_TAGGED_PROPERTY.value")?,
        ));
    }
    r.finish("TPM2_GetCapability response")?;
    Ok(out)
}

/// TPM2_CreatePrimary's response: the new object's handle and public area
/// (creation data, hash, ticket and name are checked for framing only).
pub fn parse_create_primary(resp: &[u8]) -> Result<(u32, RsaPublicArea), TpmError> {
    let Response {
        handles,
        params: mut r,
    } = response("TPM2_CreatePrimary", resp, true, 1)?;
    let public = RsaPublicArea::read_tpm2b(&mut r)?;
    r.tpm2b("TPM2B_CREATION_DATA", 2048)?;
    r.tpm2b("creationHash", MAX_DIGEST)?;
    r.u16("TPMT_TK_CREATION.tag")?;
    r.u32("TPMT_TK_CREATION.hierarchy")?;
    r.tpm2b("TPMT_TK_CREATION.digest", MAX_DIGEST)?;
    r.tpm2b("name", MAX_TPMT_HA)?;
    r.finish("TPM2_CreatePrimary response")?;
    Ok((handles[0], public))
}

/// TPM2_ReadPublic's response: the public area of an RSA key.
pub fn parse_read_public(resp: &[u8]) -> Result<RsaPublicArea, TpmError> {
    let mut r = response("TPM2_ReadPublic", resp, false, 0)?.params;
    let public = RsaPublicArea::read_tpm2b(&mut r)?;
    r.tpm2b("name", MAX_TPMT_HA)?;
    r.tpm2b("qualifiedName", MAX_TPMT_HA)?;
    r.finish("TPM2_ReadPublic response")?;
    Ok(public)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tpm::{TPM_ALG_SHA1, TPM_RH_OWNER};

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s.replace([' ', '\n'], "")).unwrap()
    }

    /// tpm2-tools 5.4 against swtpm 0.7.1: each command it sent for the
    /// operations of an Azure guest, and swtpm's response
    /// (tests/data/make-tpm2-tools-trace.sh).
    const TRACE: &str = include_str!("../../tests/data/tpm2-tools-swtpm.txt");

    fn trace(name: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
        let lines: Vec<&str> = TRACE.lines().collect();
        let mut out = vec![];
        for (i, l) in lines.iter().enumerate() {
            if *l == format!("# {name}") {
                let cmd = lines[i + 1].strip_prefix("cmd ").unwrap();
                let rsp = lines[i + 2].strip_prefix("rsp ").unwrap();
                out.push((h(cmd), h(rsp)));
            }
        }
        assert!(!out.is_empty(), "no {name} in the trace");
        out
    }

    /// A command's handles and parameters, without its header and session
    /// area: tpm2-tools authorizes with HMAC sessions, this crate with
    /// password sessions; what the TPM is asked to do is the rest.
    fn handles_and_params(cmd: &[u8], handles: usize) -> (Vec<u8>, Vec<u8>) {
        let hs = cmd[10..10 + 4 * handles].to_vec();
        let mut at = 10 + 4 * handles;
        if cmd[..2] == [0x80, 0x02] {
            let auth = u32::from_be_bytes(cmd[at..at + 4].try_into().unwrap()) as usize;
            at += 4 + auth;
        }
        (hs, cmd[at..].to_vec())
    }

    fn same_request(ours: &[u8], theirs: &[u8], handles: usize) {
        assert_eq!(ours[6..10], theirs[6..10], "command code");
        assert_eq!(
            handles_and_params(ours, handles),
            handles_and_params(theirs, handles)
        );
        if ours[1] == 0x02 {
            // Our session area: one empty password session.
            assert_eq!(
                ours[10 + 4 * handles..10 + 4 * handles + 13],
                h("00000009 40000009 0000 01 0000")
            );
        }
    }

    // Commands, compared with byte strings made by other implementations.

    #[test]
    fn commands_without_sessions_equal_tpm2_tools() {
        for (cmd, _) in trace("NV_ReadPublic") {
            assert_eq!(build_nv_read_public(0x0140_0002), cmd);
        }
        let pcr_reads = trace("PCR_Read");
        assert_eq!(build_pcr_read(&PcrSelection::sha256_all()), pcr_reads[0].0);
        let rest = PcrSelection::sha256_all().without(&PcrSelection::sha256(0..8));
        assert_eq!(build_pcr_read(&rest), pcr_reads[1].0);
        assert_eq!(build_read_public(AZURE_AK), trace("ReadPublic")[0].0);
        assert!(trace("GetCapability")
            .iter()
            .any(|(cmd, _)| *cmd == build_get_tpm_properties(TPM_PT_NV_BUFFER_MAX, 1)));
        // Elsewhere: NV_ReadPublic of 0x01C00002 (tpm2-send-tbs README),
        // PCR_Read of sha256:4,12 (a trace against swtpm) and of sha256:0,
        // FlushContext (the same swtpm trace).
        assert_eq!(
            build_nv_read_public(0x01c0_0002),
            h("80010000000e0000016901c00002")
        );
        assert_eq!(
            build_pcr_read(&PcrSelection::sha256([4, 12])),
            h("8001000000140000017e00000001000b03101000")
        );
        assert_eq!(
            build_pcr_read(&PcrSelection::sha256([0])),
            h("8001000000140000017e00000001000b03010000")
        );
        assert_eq!(
            build_flush_context(0x8000_0000),
            h("80010000000e0000016580000000")
        );
    }

    const AZURE_AK: u32 = 0x8100_0003;

    #[test]
    fn commands_with_sessions_ask_what_tpm2_tools_asks() {
        let (quote, _) = &trace("Quote")[0];
        same_request(
            &build_quote(
                AZURE_AK,
                &[],
                b"challenge",
                Some(RsaScheme::Ssa),
                &PcrSelection::sha256_all(),
            )
            .unwrap(),
            quote,
            1,
        );
        let public = NvPublic::owner_read_write(0x0140_0002, 64);
        let (define, _) = &trace("NV_DefineSpace")[0];
        same_request(
            &build_nv_define_space(TPM_RH_OWNER, &[], &[], &public).unwrap(),
            define,
            1,
        );
        let data: Vec<u8> = (0..64).collect();
        let (write, _) = &trace("NV_Write")[0];
        same_request(
            &build_nv_write(TPM_RH_OWNER, 0x0140_0002, &[], &data, 0).unwrap(),
            write,
            2,
        );
        let (read, _) = &trace("NV_Read")[0];
        same_request(
            &build_nv_read(TPM_RH_OWNER, 0x0140_0002, &[], 64, 0).unwrap(),
            read,
            2,
        );
        let (create, _) = &trace("CreatePrimary")[0];
        same_request(
            &build_create_primary(
                TPM_RH_OWNER,
                &[],
                &RsaPublicArea::attestation_key_template(),
            )
            .unwrap(),
            create,
            1,
        );
        let (evict, _) = &trace("EvictControl")[0];
        let (hs, _) = handles_and_params(evict, 2);
        let object = u32::from_be_bytes(hs[4..8].try_into().unwrap());
        same_request(
            &build_evict_control(TPM_RH_OWNER, &[], object, AZURE_AK).unwrap(),
            evict,
            2,
        );
    }

    #[test]
    fn password_session_commands_equal_published_ones() {
        // tpm2min lab: TPM2_Quote by 0x80000000, 32 bytes of qualifying
        // data, inScheme NULL, sha256:4,12 (verified by tpm2_checkquote).
        let qd = h("87dec0093756f2a90bc609bcfc0e35e33613add96a53f02e015f7dcf4fa2ffbd");
        assert_eq!(
            build_quote(0x8000_0000, &[], &qd, None, &PcrSelection::sha256([4, 12])).unwrap(),
            h(
                "80020000004900000158 80000000 00000009 40000009 0000 01 0000
               0020 87dec0093756f2a90bc609bcfc0e35e33613add96a53f02e015f7dcf4fa2ffbd
               0010 00000001000b03101000"
            )
        );
        // go-tpm: NV_Read of counter index 0x010003e8 authorized by itself
        // with password 01020304, 8 bytes at offset 0.
        assert_eq!(
            build_nv_read(0x0100_03e8, 0x0100_03e8, &[1, 2, 3, 4], 8, 0).unwrap(),
            h("8002000000270000014e010003e8010003e80000000d4000000900000100040102030400080000")
        );
        // go-tpm: NV_DefineSpace of that index by the owner (empty password),
        // index password 01020304, SHA-1, AUTHWRITE|AUTHREAD|counter, 8 bytes.
        let public = NvPublic {
            index: 0x0100_03e8,
            name_alg: TPM_ALG_SHA1,
            attributes: 0x0004_0014,
            auth_policy: vec![],
            data_size: 8,
        };
        assert_eq!(
            build_nv_define_space(TPM_RH_OWNER, &[], &[1, 2, 3, 4], &public).unwrap(),
            h("8002000000310000012a4000000100000009400000090000010000000401020304000e010003e800040004001400000008")
        );
        // A published NV_Write of deadbeef at offset 0 of 0x01000000 by the
        // owner with password "123"; its sessionAttributes byte is 00 where
        // this crate, like tpm2-tss, sends 01 (continueSession).
        let mut theirs = h(
            "80020000002a0000013740000001010000000000000c4000000900000000033132330004deadbeef0000",
        );
        assert_eq!(theirs[28], 0x00);
        theirs[28] = 0x01;
        assert_eq!(
            build_nv_write(
                TPM_RH_OWNER,
                0x0100_0000,
                b"123",
                &[0xde, 0xad, 0xbe, 0xef],
                0
            )
            .unwrap(),
            theirs
        );
    }

    #[test]
    fn builders_refuse_oversized_arguments() {
        assert!(build_quote(1, &[], &[0; 65], None, &PcrSelection::sha256_all()).is_err());
        assert!(build_nv_write(1, 2, &[], &[0; MAX_NV_CHUNK + 1], 0).is_err());
        assert!(build_nv_read(1, 2, &[0; 65], 1, 0).is_err());
    }

    // Responses: swtpm's, from the trace (HMAC session areas included), and
    // go-tpm's; then every truncation of each.

    type Parse = fn(&[u8]) -> Result<(), TpmError>;

    fn responses() -> Vec<(&'static str, Vec<u8>, Parse)> {
        let mut out: Vec<(&'static str, Vec<u8>, Parse)> = vec![
            ("NV_ReadPublic", trace("NV_ReadPublic")[0].1.clone(), |b| {
                parse_nv_read_public(b).map(drop)
            }),
            ("NV_Read", trace("NV_Read")[0].1.clone(), |b| {
                parse_nv_read(b).map(drop)
            }),
            ("Quote", trace("Quote")[0].1.clone(), |b| {
                parse_quote(b).map(drop)
            }),
            ("ReadPublic", trace("ReadPublic")[0].1.clone(), |b| {
                parse_read_public(b).map(drop)
            }),
            ("CreatePrimary", trace("CreatePrimary")[0].1.clone(), |b| {
                parse_create_primary(b).map(drop)
            }),
            ("NV_Write", trace("NV_Write")[0].1.clone(), |b| {
                parse_empty("TPM2_NV_Write", b, true)
            }),
            (
                "go-tpm NV_Read",
                h("80020000001d000000000000000a000800000000000000cf0000010000"),
                |b| parse_nv_read(b).map(drop),
            ),
            (
                "go-tpm DefineSpace",
                h("80020000001300000000000000000000010000"),
                |b| parse_empty("TPM2_NV_DefineSpace", b, true),
            ),
        ];
        for (_, rsp) in trace("PCR_Read") {
            out.push(("PCR_Read", rsp, |b| parse_pcr_read(b).map(drop)));
        }
        out
    }

    #[test]
    fn parses_real_responses() {
        let (public, name) = parse_nv_read_public(&trace("NV_ReadPublic")[0].1).unwrap();
        assert_eq!((public.index, public.data_size), (0x0140_0002, 64));
        assert_eq!(name.len(), 34);
        let data: Vec<u8> = (0..64).collect();
        assert_eq!(parse_nv_read(&trace("NV_Read")[0].1).unwrap(), data);
        let q = parse_quote(&trace("Quote")[0].1).unwrap();
        let attest = q.parsed().unwrap();
        assert_eq!(attest.extra_data, b"challenge");
        assert_eq!(attest.pcr_select, PcrSelection::sha256_all());
        assert_eq!(q.signature.scheme(), RsaScheme::Ssa);
        let ak = parse_read_public(&trace("ReadPublic")[0].1).unwrap();
        assert_eq!(
            ak.attributes,
            RsaPublicArea::attestation_key_template().attributes
        );
        assert!(q.signature.verifies(&ak.public_key().unwrap(), &q.attest));
        let (handle, created) = parse_create_primary(&trace("CreatePrimary")[0].1).unwrap();
        assert_eq!(handle >> 24, 0x80, "a transient handle");
        assert_eq!(created, ak);
        let reads: Vec<PcrReadResponse> = trace("PCR_Read")
            .iter()
            .map(|(_, r)| parse_pcr_read(r).unwrap())
            .collect();
        assert_eq!(
            reads.iter().map(|r| r.values.len()).collect::<Vec<_>>(),
            [8, 8, 8]
        );
        assert_eq!(
            parse_get_tpm_properties(&h("80010000001b000000000100000006000000010000012c00000400"))
                .unwrap(),
            vec![(TPM_PT_NV_BUFFER_MAX, 1024)]
        );
    }

    #[test]
    fn every_truncated_or_extended_response_is_refused() {
        for (name, full, parse) in responses() {
            parse(&full).unwrap_or_else(|e| panic!("{name}: {e}"));
            for len in 0..full.len() {
                // The size field still says the full length...
                assert!(parse(&full[..len]).is_err(), "{name} cut to {len}");
                // ...or is patched to agree with the cut.
                if len >= 6 {
                    let mut cut = full[..len].to_vec();
                    cut[2..6].copy_from_slice(&(len as u32).to_be_bytes());
                    assert!(parse(&cut).is_err(), "{name} cut to {len}, size patched");
                }
            }
            let mut long = full.clone();
            long.push(0);
            let n = long.len() as u32;
            long[2..6].copy_from_slice(&n.to_be_bytes());
            assert!(parse(&long).is_err(), "{name} with a trailing byte");
        }
    }

    #[test]
    fn error_codes_and_wrong_tags_are_reported() {
        // TPM_RC_HANDLE for handle 1: NV index not defined.
        match parse_nv_read_public(&h("80010000000a0000018b")) {
            Err(TpmError::Rc { rc, .. }) => assert!(rc.is_handle_not_found()),
            other => panic!("{other:?}"),
        }
        // A session tag where none was sent.
        let mut wrong = trace("NV_ReadPublic")[0].1.clone();
        wrong[1] = 0x02;
        assert!(parse_nv_read_public(&wrong).is_err());
        // PCR_Read whose digest count disagrees with its selection.
        let bad = h("80010000003e 00000000 00000014 00000001000b03030000 00000001 0020 0000000000000000000000000000000000000000000000000000000000000000");
        assert_eq!(bad.len(), 0x3e);
        assert!(parse_pcr_read(&bad)
            .unwrap_err()
            .to_string()
            .contains("1 values for 2 PCRs"));
    }
}
