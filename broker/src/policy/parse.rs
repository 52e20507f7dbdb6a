//! TOML reading and canonical writing of [`Policy`], with located errors.
//!
//! Parsing runs in three steps: a lenient probe reads only `version` (so a
//! file of another version gets "unsupported version", not a list of unknown
//! fields), a strict pass with `deny_unknown_fields` reads every value with
//! its span, and validation turns the raw values into typed ones, naming the
//! field and the line of each bad value.

use std::collections::BTreeMap;
use std::fmt;
use std::fmt::Write as _;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use super::{
    ChipId, MinFirmware, MinTcb, MinTcbByGeneration, PcrSet, Policy, VtpmPolicy, MAX_PCR_INDEX,
    POLICY_VERSION,
};

/// What kind of problem a policy file has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PolicyErrorKind {
    /// Not valid TOML.
    Syntax,
    /// A field this format version does not define.
    UnknownField,
    /// A required field is absent.
    MissingField,
    /// `version` is not one this broker understands.
    UnsupportedVersion,
    /// A value of the wrong type, length, range or characters.
    InvalidValue,
}

/// A policy file that could not be accepted, located by line, column and
/// field where possible, with a message that says what to change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyError {
    /// The kind of problem.
    pub kind: PolicyErrorKind,
    /// 1-based line of the offending text, when known.
    pub line: Option<usize>,
    /// 1-based column (in characters) of the offending text, when known.
    pub column: Option<usize>,
    /// The field, e.g. `measurements[1]` or `min_tcb.turin.fmc`, when known.
    pub field: Option<String>,
    /// What is wrong and what to do.
    pub message: String,
}

impl PolicyError {
    /// An invalid-value error without location (for programmatic edits).
    pub(super) fn value(field: &str, message: &str) -> Self {
        PolicyError {
            kind: PolicyErrorKind::InvalidValue,
            line: None,
            column: None,
            field: Some(field.to_string()),
            message: message.to_string(),
        }
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid policy")?;
        if let Some(line) = self.line {
            write!(f, " at line {line}")?;
            if let Some(col) = self.column {
                write!(f, ", column {col}")?;
            }
        }
        if let Some(field) = &self.field {
            write!(f, ", field `{field}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for PolicyError {}

/// Builds errors located in one input text.
struct Ctx<'a> {
    text: &'a str,
}

impl Ctx<'_> {
    fn locate(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..floor_char_boundary(self.text, offset)];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        (line, column)
    }

    fn err(
        &self,
        kind: PolicyErrorKind,
        span: Option<Range<usize>>,
        field: Option<String>,
        message: impl Into<String>,
    ) -> PolicyError {
        let (line, column) = match span {
            Some(s) => {
                let (l, c) = self.locate(s.start);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        PolicyError {
            kind,
            line,
            column,
            field,
            message: message.into(),
        }
    }

    fn invalid(&self, span: Range<usize>, field: &str, message: impl Into<String>) -> PolicyError {
        self.err(
            PolicyErrorKind::InvalidValue,
            Some(span),
            Some(field.to_string()),
            message,
        )
    }

    /// Maps a toml/serde error, classifying it and guessing the field from
    /// the message or from the text at its span.
    fn toml_error(&self, e: &toml::de::Error, syntax: bool) -> PolicyError {
        let msg = e.message().trim().to_string();
        let quoted = msg.split('`').nth(1).map(str::to_string);
        let (kind, field, hint) = if msg.starts_with("unknown field") {
            (
                PolicyErrorKind::UnknownField,
                quoted,
                " (remove it, or check its spelling against docs/examples/policy.toml)",
            )
        } else if msg.starts_with("missing field") {
            (PolicyErrorKind::MissingField, quoted, " (add it)")
        } else if syntax {
            (PolicyErrorKind::Syntax, None, " (this is not valid TOML)")
        } else {
            (PolicyErrorKind::InvalidValue, None, "")
        };
        let field = field.or_else(|| e.span().and_then(|s| self.key_at(s.start)));
        self.err(kind, e.span(), field, format!("{msg}{hint}"))
    }

    /// The key or table header on the line containing `offset`, if any.
    fn key_at(&self, offset: usize) -> Option<String> {
        let offset = floor_char_boundary(self.text, offset.min(self.text.len()));
        let start = self.text[..offset].rfind('\n').map_or(0, |i| i + 1);
        let end = self.text[offset..]
            .find('\n')
            .map_or(self.text.len(), |i| offset + i);
        let line = self.text[start..end].trim();
        if let Some(h) = line.strip_prefix('[') {
            let h = h.trim_start_matches('[');
            return h.split(']').next().map(|s| s.trim().to_string());
        }
        let (key, _) = line.split_once('=')?;
        let key = key.trim();
        (!key.is_empty()).then(|| key.to_string())
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[derive(Deserialize)]
struct Probe {
    version: Option<Spanned<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[allow(dead_code)] // checked by the probe
    version: toml::Value,
    measurements: Option<Spanned<Vec<Spanned<String>>>>,
    min_tcb: Option<Spanned<RawMinTcbTable>>,
    allow_debug: Option<bool>,
    allow_migration_agent: Option<bool>,
    allow_smt: Option<bool>,
    max_vmpl: Option<Spanned<i64>>,
    min_guest_svn: Option<Spanned<i64>>,
    accept_vlek: Option<bool>,
    min_firmware: Option<Spanned<String>>,
    id_key_digests: Option<Vec<Spanned<String>>>,
    author_key_digests: Option<Vec<Spanned<String>>>,
    family_ids: Option<Vec<Spanned<String>>>,
    image_ids: Option<Vec<Spanned<String>>>,
    host_data: Option<Vec<Spanned<String>>>,
    chip_ids: Option<Vec<Spanned<String>>>,
    blocked_chip_ids: Option<Vec<Spanned<String>>>,
    vtpm: Option<Spanned<RawVtpm>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVtpm {
    accept: Option<bool>,
    paravisor_measurements: Option<Vec<Spanned<String>>>,
    pcr_sets: Option<Vec<Spanned<RawPcrSet>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPcrSet {
    name: Option<Spanned<String>>,
    pcrs: Spanned<BTreeMap<String, Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMinTcbTable {
    milan: Option<Spanned<RawTcb>>,
    genoa: Option<Spanned<RawTcb>>,
    turin: Option<Spanned<RawTcb>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTcb {
    fmc: Option<Spanned<i64>>,
    bootloader: Spanned<i64>,
    tee: Spanned<i64>,
    snp: Spanned<i64>,
    microcode: Spanned<i64>,
}

/// Decodes one hex value of exactly `N` bytes.
fn hex_exact<const N: usize>(
    cx: &Ctx<'_>,
    v: &Spanned<String>,
    field: &str,
    what: &str,
) -> Result<[u8; N], PolicyError> {
    let s = v.get_ref().trim();
    if s.len() != 2 * N {
        return Err(cx.invalid(
            v.span(),
            field,
            format!(
                "expected {} hex characters ({what}, {N} bytes), found {}",
                2 * N,
                s.chars().count()
            ),
        ));
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out).map_err(|_| bad_chars(cx, v, field))?;
    Ok(out)
}

fn bad_chars(cx: &Ctx<'_>, v: &Spanned<String>, field: &str) -> PolicyError {
    let bad = v
        .get_ref()
        .trim()
        .chars()
        .find(|c| !c.is_ascii_hexdigit())
        .map_or_else(String::new, |c| format!(" (found {c:?})"));
    cx.invalid(
        v.span(),
        field,
        format!("only hex digits 0-9, a-f, A-F are allowed{bad}"),
    )
}

fn hex_list<const N: usize>(
    cx: &Ctx<'_>,
    list: Option<&Vec<Spanned<String>>>,
    name: &str,
    what: &str,
) -> Result<Vec<[u8; N]>, PolicyError> {
    let mut out = Vec::new();
    for (i, v) in list.into_iter().flatten().enumerate() {
        out.push(hex_exact::<N>(cx, v, &format!("{name}[{i}]"), what)?);
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

fn chip_list(
    cx: &Ctx<'_>,
    list: Option<&Vec<Spanned<String>>>,
    name: &str,
) -> Result<Vec<ChipId>, PolicyError> {
    let mut out = Vec::new();
    for (i, v) in list.into_iter().flatten().enumerate() {
        let field = format!("{name}[{i}]");
        let s = v.get_ref().trim();
        if s.len() != 128 && s.len() != 16 {
            return Err(cx.invalid(
                v.span(),
                &field,
                format!(
                    "expected 128 hex characters (a 64-byte chip id) or 16 (the 8 significant \
                     bytes of a Turin chip id), found {}",
                    s.chars().count()
                ),
            ));
        }
        let bytes = hex::decode(s).map_err(|_| bad_chars(cx, v, &field))?;
        if bytes.iter().all(|b| *b == 0) {
            return Err(cx.invalid(
                v.span(),
                &field,
                "an all-zero chip id is what a report with MASK_CHIP_ID carries and names no \
                 chip; remove it",
            ));
        }
        out.push(ChipId(bytes));
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn int_in(
    cx: &Ctx<'_>,
    v: &Spanned<i64>,
    field: &str,
    max: i64,
    what: &str,
) -> Result<i64, PolicyError> {
    let n = *v.get_ref();
    if !(0..=max).contains(&n) {
        return Err(cx.invalid(
            v.span(),
            field,
            format!("{what} must be between 0 and {max}, found {n}"),
        ));
    }
    Ok(n)
}

fn min_tcb(cx: &Ctx<'_>, raw: &Spanned<RawTcb>, generation: &str) -> Result<MinTcb, PolicyError> {
    let t = raw.get_ref();
    let f = |v: &Spanned<i64>, comp: &str| -> Result<u8, PolicyError> {
        let field = format!("min_tcb.{generation}.{comp}");
        // Range checked to 0..=255 just above, so the cast cannot truncate.
        int_in(cx, v, &field, 255, "a TCB component (SVN)").map(|n| n as u8)
    };
    let fmc = match (generation, &t.fmc) {
        ("turin", Some(v)) => Some(f(v, "fmc")?),
        ("turin", None) => {
            return Err(cx.invalid(
                raw.span(),
                "min_tcb.turin.fmc",
                "Turin TCBs have an FMC component: add `fmc = <minimum>` to [min_tcb.turin]",
            ))
        }
        (_, Some(v)) => {
            return Err(cx.invalid(
                v.span(),
                &format!("min_tcb.{generation}.fmc"),
                format!("{generation} TCBs have no FMC component (Turin only); remove this line"),
            ))
        }
        (_, None) => None,
    };
    Ok(MinTcb {
        fmc,
        bootloader: f(&t.bootloader, "bootloader")?,
        tee: f(&t.tee, "tee")?,
        snp: f(&t.snp, "snp")?,
        microcode: f(&t.microcode, "microcode")?,
    })
}

fn firmware(cx: &Ctx<'_>, v: &Spanned<String>) -> Result<MinFirmware, PolicyError> {
    let bad = || {
        cx.invalid(
            v.span(),
            "min_firmware",
            format!(
                "expected \"major.minor\" with numbers 0-255, e.g. \"1.55\"; found {:?}",
                v.get_ref()
            ),
        )
    };
    let (a, b) = v.get_ref().trim().split_once('.').ok_or_else(bad)?;
    let num = |s: &str| -> Option<u8> {
        (!s.is_empty() && s.len() <= 3 && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (num(a), num(b)) {
        (Some(major), Some(minor)) => Ok(MinFirmware { major, minor }),
        _ => Err(bad()),
    }
}

pub(super) fn from_toml(text: &str) -> Result<Policy, PolicyError> {
    let cx = Ctx { text };
    let probe: Probe = toml::from_str(text).map_err(|e| cx.toml_error(&e, true))?;
    let Some(version) = probe.version else {
        return Err(cx.err(
            PolicyErrorKind::MissingField,
            None,
            Some("version".into()),
            format!("the policy format version is required: add `version = {POLICY_VERSION}` as the first line"),
        ));
    };
    if version.get_ref().as_integer() != Some(POLICY_VERSION) {
        return Err(cx.err(
            PolicyErrorKind::UnsupportedVersion,
            Some(version.span()),
            Some("version".into()),
            format!(
                "policy format version {} is not supported; this broker understands version \
                 {POLICY_VERSION} only (write the policy in version {POLICY_VERSION}, or upgrade \
                 the broker)",
                version.get_ref()
            ),
        ));
    }
    let raw: RawPolicy = toml::from_str(text).map_err(|e| cx.toml_error(&e, false))?;

    let vtpm = raw
        .vtpm
        .as_ref()
        .map(|v| vtpm_section(&cx, v))
        .transpose()?
        .unwrap_or_default();
    // Without bare SNP measurements a policy admits Azure vTPM guests only,
    // which it must then accept.
    match &raw.measurements {
        None if !vtpm.accept => {
            return Err(cx.err(
                PolicyErrorKind::MissingField,
                None,
                Some("measurements".into()),
                "missing field `measurements`: add the launch measurements you allow (96 hex \
                 characters each, e.g. from `broker measure`), or admit only Azure vTPM guests \
                 with [vtpm] accept = true",
            ))
        }
        Some(m) if m.get_ref().is_empty() && !vtpm.accept => {
            return Err(cx.invalid(
                m.span(),
                "measurements",
                "at least one launch measurement is required (96 hex characters each, e.g. from \
                 `broker measure`), unless [vtpm] accept = true admits Azure vTPM guests only",
            ))
        }
        _ => {}
    }
    let measurements = hex_list::<48>(
        &cx,
        raw.measurements.as_ref().map(|m| m.get_ref()),
        "measurements",
        "a SHA-384 launch measurement",
    )?;

    let mut tcb = MinTcbByGeneration::default();
    if let Some(t) = &raw.min_tcb {
        let g = t.get_ref();
        tcb.milan = g
            .milan
            .as_ref()
            .map(|r| min_tcb(&cx, r, "milan"))
            .transpose()?;
        tcb.genoa = g
            .genoa
            .as_ref()
            .map(|r| min_tcb(&cx, r, "genoa"))
            .transpose()?;
        tcb.turin = g
            .turin
            .as_ref()
            .map(|r| min_tcb(&cx, r, "turin"))
            .transpose()?;
    }
    if tcb.allowed().is_empty() {
        return Err(cx.err(
            PolicyErrorKind::MissingField,
            raw.min_tcb.as_ref().map(|t| t.span()),
            Some("min_tcb".into()),
            "no generation is allowed: add a [min_tcb.milan], [min_tcb.genoa] or \
             [min_tcb.turin] table for each generation your guests run on",
        ));
    }

    let max_vmpl = match &raw.max_vmpl {
        // 0..=3 checked, the cast cannot truncate.
        Some(v) => int_in(&cx, v, "max_vmpl", 3, "a VMPL")? as u8,
        None => 0,
    };
    let min_guest_svn = match &raw.min_guest_svn {
        // 0..=u32::MAX checked, the cast cannot truncate.
        Some(v) => int_in(&cx, v, "min_guest_svn", i64::from(u32::MAX), "a guest SVN")? as u32,
        None => 0,
    };
    let min_firmware = raw
        .min_firmware
        .as_ref()
        .map(|v| firmware(&cx, v))
        .transpose()?;

    Ok(Policy {
        measurements,
        min_tcb: tcb,
        allow_debug: raw.allow_debug.unwrap_or(false),
        allow_migration_agent: raw.allow_migration_agent.unwrap_or(false),
        allow_smt: raw.allow_smt.unwrap_or(true),
        max_vmpl,
        min_guest_svn,
        accept_vlek: raw.accept_vlek.unwrap_or(false),
        min_firmware,
        id_key_digests: hex_list::<48>(
            &cx,
            raw.id_key_digests.as_ref(),
            "id_key_digests",
            "a SHA-384 key digest",
        )?,
        author_key_digests: hex_list::<48>(
            &cx,
            raw.author_key_digests.as_ref(),
            "author_key_digests",
            "a SHA-384 key digest",
        )?,
        family_ids: hex_list::<16>(&cx, raw.family_ids.as_ref(), "family_ids", "a family id")?,
        image_ids: hex_list::<16>(&cx, raw.image_ids.as_ref(), "image_ids", "an image id")?,
        host_data: hex_list::<32>(&cx, raw.host_data.as_ref(), "host_data", "host data")?,
        chip_ids: chip_list(&cx, raw.chip_ids.as_ref(), "chip_ids")?,
        blocked_chip_ids: chip_list(&cx, raw.blocked_chip_ids.as_ref(), "blocked_chip_ids")?,
        vtpm,
    })
}

/// Longest `name` of a PCR set.
const MAX_PCR_SET_NAME: usize = 64;

fn vtpm_section(cx: &Ctx<'_>, raw: &Spanned<RawVtpm>) -> Result<VtpmPolicy, PolicyError> {
    let v = raw.get_ref();
    let accept = v.accept.unwrap_or(false);
    let paravisor_measurements = hex_list::<48>(
        cx,
        v.paravisor_measurements.as_ref(),
        "vtpm.paravisor_measurements",
        "the SHA-384 launch measurement of the paravisor",
    )?;
    let mut pcr_sets = Vec::new();
    for (n, set) in v.pcr_sets.iter().flatten().enumerate() {
        pcr_sets.push(pcr_set(cx, set, n)?);
    }
    if accept && paravisor_measurements.is_empty() {
        return Err(cx.err(
            PolicyErrorKind::MissingField,
            Some(raw.span()),
            Some("vtpm.paravisor_measurements".into()),
            "accept = true needs at least one paravisor launch measurement (the SNP measurement \
             of an Azure guest, 96 hex characters: `broker report verify` shows it)",
        ));
    }
    if accept && pcr_sets.is_empty() {
        return Err(cx.err(
            PolicyErrorKind::MissingField,
            Some(raw.span()),
            Some("vtpm.pcr_sets".into()),
            "accept = true needs at least one [[vtpm.pcr_sets]] entry: the PCR values of your \
             image, from `guest-unlock status --pcrs` on a reference VM",
        ));
    }
    Ok(VtpmPolicy {
        accept,
        paravisor_measurements,
        pcr_sets,
    })
}

fn pcr_set(cx: &Ctx<'_>, raw: &Spanned<RawPcrSet>, n: usize) -> Result<PcrSet, PolicyError> {
    let set = raw.get_ref();
    let field = |rest: &str| format!("vtpm.pcr_sets[{n}]{rest}");
    let name = match &set.name {
        None => None,
        Some(name) => {
            let text = name.get_ref();
            if text.is_empty()
                || text.chars().count() > MAX_PCR_SET_NAME
                || text.chars().any(char::is_control)
            {
                return Err(cx.invalid(
                    name.span(),
                    &field(".name"),
                    format!(
                        "a name of 1 to {MAX_PCR_SET_NAME} characters without control characters"
                    ),
                ));
            }
            Some(text.clone())
        }
    };
    let mut pcrs = BTreeMap::new();
    for (index, value) in set.pcrs.get_ref() {
        let i = index
            .parse::<u8>()
            .ok()
            .filter(|i| *i <= MAX_PCR_INDEX && i.to_string() == *index)
            .ok_or_else(|| {
                cx.invalid(
                    value.span(),
                    &field(&format!(".pcrs.{index}")),
                    format!(
                        "PCR indexes are the numbers 0 to {MAX_PCR_INDEX} (SHA-256 bank), found \
                         {index:?}"
                    ),
                )
            })?;
        let digest = hex_exact::<32>(
            cx,
            value,
            &field(&format!(".pcrs.{i}")),
            "a SHA-256 PCR value",
        )?;
        pcrs.insert(i, digest);
    }
    if pcrs.is_empty() {
        return Err(cx.invalid(
            set.pcrs.span(),
            &field(".pcrs"),
            "a PCR set names at least one PCR, e.g. pcrs = { 0 = \"<64 hex chars>\" }",
        ));
    }
    Ok(PcrSet { name, pcrs })
}

fn write_list<'a>(out: &mut String, name: &str, items: impl Iterator<Item = &'a [u8]>) {
    let items: Vec<String> = items.map(hex::encode).collect();
    if items.is_empty() {
        let _ = writeln!(out, "{name} = []");
    } else {
        let _ = writeln!(out, "{name} = [");
        for i in items {
            let _ = writeln!(out, "    \"{i}\",");
        }
        let _ = writeln!(out, "]");
    }
}

pub(super) fn to_toml(p: &Policy) -> String {
    // Sort and de-duplicate so that policies built or edited in code print
    // the same canonical text as parsed ones.
    fn sorted<T: Ord + Clone>(v: &[T]) -> Vec<T> {
        let mut v = v.to_vec();
        v.sort();
        v.dedup();
        v
    }
    let mut o = String::new();
    let _ = writeln!(o, "version = {POLICY_VERSION}");
    write_list(
        &mut o,
        "measurements",
        sorted(&p.measurements).iter().map(|x| &x[..]),
    );
    let _ = writeln!(o, "allow_debug = {}", p.allow_debug);
    let _ = writeln!(o, "allow_migration_agent = {}", p.allow_migration_agent);
    let _ = writeln!(o, "allow_smt = {}", p.allow_smt);
    let _ = writeln!(o, "max_vmpl = {}", p.max_vmpl);
    let _ = writeln!(o, "min_guest_svn = {}", p.min_guest_svn);
    let _ = writeln!(o, "accept_vlek = {}", p.accept_vlek);
    if let Some(fw) = p.min_firmware {
        let _ = writeln!(o, "min_firmware = \"{fw}\"");
    }
    write_list(
        &mut o,
        "id_key_digests",
        sorted(&p.id_key_digests).iter().map(|x| &x[..]),
    );
    write_list(
        &mut o,
        "author_key_digests",
        sorted(&p.author_key_digests).iter().map(|x| &x[..]),
    );
    write_list(
        &mut o,
        "family_ids",
        sorted(&p.family_ids).iter().map(|x| &x[..]),
    );
    write_list(
        &mut o,
        "image_ids",
        sorted(&p.image_ids).iter().map(|x| &x[..]),
    );
    write_list(
        &mut o,
        "host_data",
        sorted(&p.host_data).iter().map(|x| &x[..]),
    );
    write_list(
        &mut o,
        "chip_ids",
        sorted(&p.chip_ids).iter().map(|x| x.as_bytes()),
    );
    write_list(
        &mut o,
        "blocked_chip_ids",
        sorted(&p.blocked_chip_ids).iter().map(|x| x.as_bytes()),
    );
    for (name, t) in [
        ("milan", p.min_tcb.milan),
        ("genoa", p.min_tcb.genoa),
        ("turin", p.min_tcb.turin),
    ] {
        if let Some(t) = t {
            let _ = writeln!(o, "\n[min_tcb.{name}]");
            if let Some(fmc) = t.fmc {
                let _ = writeln!(o, "fmc = {fmc}");
            }
            let _ = writeln!(o, "bootloader = {}", t.bootloader);
            let _ = writeln!(o, "tee = {}", t.tee);
            let _ = writeln!(o, "snp = {}", t.snp);
            let _ = writeln!(o, "microcode = {}", t.microcode);
        }
    }
    if p.vtpm != VtpmPolicy::default() {
        write_vtpm(&mut o, &p.vtpm, &sorted(&p.vtpm.paravisor_measurements));
    }
    o
}

fn write_vtpm(o: &mut String, v: &VtpmPolicy, paravisor: &[super::Measurement]) {
    let _ = writeln!(o, "\n[vtpm]");
    let _ = writeln!(o, "accept = {}", v.accept);
    write_list(
        o,
        "paravisor_measurements",
        paravisor.iter().map(|x| &x[..]),
    );
    for set in &v.pcr_sets {
        let _ = writeln!(o, "\n[[vtpm.pcr_sets]]");
        if let Some(name) = &set.name {
            let _ = writeln!(o, "name = {}", toml::Value::String(name.clone()));
        }
        let pcrs: Vec<String> = set
            .pcrs
            .iter()
            .map(|(i, d)| format!("{i} = \"{}\"", hex::encode(d)))
            .collect();
        let _ = writeln!(o, "pcrs = {{ {} }}", pcrs.join(", "));
    }
}

/// Parses one measurement given as 96 hex characters (either case), for
/// commands such as `allow-measurement`.
pub fn parse_measurement_hex(s: &str) -> Result<super::Measurement, PolicyError> {
    let cx = Ctx { text: s };
    let v = Spanned::new(0..s.len(), s.to_string());
    hex_exact::<48>(&cx, &v, "measurement", "a SHA-384 launch measurement").map_err(|mut e| {
        e.line = None;
        e.column = None;
        e
    })
}
