//! Typed identifiers: untrusted input is validated once, at the edge.

use std::fmt;
use std::str::FromStr;

/// Longest volume id, in bytes.
pub const MAX_VOLUME_ID_LEN: usize = 128;
/// Most volumes one request may name.
pub const MAX_VOLUMES: usize = 64;
/// Length of a challenge nonce.
pub const NONCE_LEN: usize = 32;
/// Length of an X25519 public key.
pub const GUEST_PUBLIC_KEY_LEN: usize = 32;
/// Length of the SEV-SNP `REPORT_DATA` field.
pub const REPORT_DATA_LEN: usize = 64;

/// How much of an offending input an error keeps (in characters).
const SHOWN_INPUT_CHARS: usize = 64;

/// Why an identifier or a fixed-length byte field was refused.
///
/// Each variant carries the offending input (cut to 64 characters, with
/// `...` appended when cut) so that the message says what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A volume id was empty.
    #[error("volume id is empty; use 1 to {MAX_VOLUME_ID_LEN} bytes of [A-Za-z0-9._-]")]
    EmptyVolumeId,
    /// A volume id was longer than [`MAX_VOLUME_ID_LEN`] bytes.
    #[error("volume id {input:?} is {len} bytes long; at most {MAX_VOLUME_ID_LEN} are allowed")]
    VolumeIdTooLong {
        /// The id (possibly cut).
        input: String,
        /// Its length in bytes.
        len: usize,
    },
    /// A volume id had a character outside `[A-Za-z0-9._-]`.
    #[error("volume id {input:?} has {ch:?} at byte {at}; only [A-Za-z0-9._-] is allowed")]
    VolumeIdBadChar {
        /// The id (possibly cut).
        input: String,
        /// The first offending character.
        ch: char,
        /// Its byte offset.
        at: usize,
    },
    /// A volume id started with `.` or `-`.
    #[error("volume id {input:?} starts with {first:?}; it must not start with '.' or '-'")]
    VolumeIdBadStart {
        /// The id (possibly cut).
        input: String,
        /// The first character.
        first: char,
    },
    /// A request named no volume.
    #[error("no volume named; name 1 to {MAX_VOLUMES} volumes")]
    NoVolumes,
    /// A request named more than [`MAX_VOLUMES`] volumes.
    #[error("{count} volumes named; at most {MAX_VOLUMES} are allowed per request")]
    TooManyVolumes {
        /// How many were named.
        count: usize,
    },
    /// A request named the same volume twice.
    #[error("volume {input:?} is named twice; name each volume once")]
    DuplicateVolume {
        /// The repeated id.
        input: String,
    },
    /// A fixed-length byte field had the wrong length.
    #[error("{field} must be {expected} bytes, got {got}")]
    BadLength {
        /// Which field (`"nonce"`, `"guest public key"`, `"report data"`).
        field: &'static str,
        /// The required length.
        expected: usize,
        /// The length received.
        got: usize,
    },
}

fn shown(input: &str) -> String {
    let mut it = input.chars();
    let head: String = it.by_ref().take(SHOWN_INPUT_CHARS).collect();
    if it.next().is_some() {
        head + "..."
    } else {
        head
    }
}

/// A volume name: 1..=128 bytes of `[A-Za-z0-9._-]`, not starting with `.`
/// or `-` (so it is safe as a file name, a device-mapper name and a log
/// field).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VolumeId(String);

impl VolumeId {
    /// Validates `s` as a volume id.
    pub fn new(s: impl Into<String>) -> Result<Self, ParseError> {
        let s = s.into();
        Self::check(&s)?;
        Ok(Self(s))
    }

    fn check(s: &str) -> Result<(), ParseError> {
        if s.is_empty() {
            return Err(ParseError::EmptyVolumeId);
        }
        if s.len() > MAX_VOLUME_ID_LEN {
            return Err(ParseError::VolumeIdTooLong {
                input: shown(s),
                len: s.len(),
            });
        }
        if let Some((at, ch)) = s
            .char_indices()
            .find(|&(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(ParseError::VolumeIdBadChar {
                input: shown(s),
                ch,
                at,
            });
        }
        let first = s.as_bytes()[0];
        if first == b'.' || first == b'-' {
            return Err(ParseError::VolumeIdBadStart {
                input: shown(s),
                first: char::from(first),
            });
        }
        Ok(())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id's bytes (ASCII).
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// Takes the id back as a `String`.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Debug for VolumeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for VolumeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for VolumeId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for VolumeId {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<&str> for VolumeId {
    type Error = ParseError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl TryFrom<String> for VolumeId {
    type Error = ParseError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl From<VolumeId> for String {
    fn from(v: VolumeId) -> Self {
        v.0
    }
}

/// The volumes of one request: 1..=64 distinct [`VolumeId`]s, in the order
/// given (the order is bound into the REPORT_DATA transcript).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct VolumeIds(Vec<VolumeId>);

impl VolumeIds {
    /// Checks count and uniqueness; keeps the order.
    pub fn new(ids: Vec<VolumeId>) -> Result<Self, ParseError> {
        if ids.is_empty() {
            return Err(ParseError::NoVolumes);
        }
        if ids.len() > MAX_VOLUMES {
            return Err(ParseError::TooManyVolumes { count: ids.len() });
        }
        let mut seen = std::collections::HashSet::with_capacity(ids.len());
        for id in &ids {
            if !seen.insert(id.as_str()) {
                return Err(ParseError::DuplicateVolume {
                    input: id.to_string(),
                });
            }
        }
        Ok(Self(ids))
    }

    /// Parses each string as a [`VolumeId`], then checks as [`VolumeIds::new`].
    ///
    /// The count is checked before any id is parsed, so a huge list is
    /// refused without work proportional to its size.
    pub fn parse<I, S>(items: I) -> Result<Self, ParseError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut ids = Vec::new();
        for (n, s) in items.into_iter().enumerate() {
            if n >= MAX_VOLUMES {
                return Err(ParseError::TooManyVolumes { count: n + 1 });
            }
            ids.push(VolumeId::new(s.as_ref())?);
        }
        Self::new(ids)
    }

    /// The ids, in request order.
    pub fn as_slice(&self) -> &[VolumeId] {
        &self.0
    }

    /// Iterates in request order.
    pub fn iter(&self) -> std::slice::Iter<'_, VolumeId> {
        self.0.iter()
    }

    /// How many volumes (1..=64).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always `false` (a `VolumeIds` holds at least one id); here for clippy.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `id` is one of the volumes.
    pub fn contains(&self, id: &VolumeId) -> bool {
        self.0.contains(id)
    }

    /// The ids as strings, in order, for a protobuf `repeated string`.
    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(|v| v.0.clone()).collect()
    }
}

impl fmt::Debug for VolumeIds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.iter()).finish()
    }
}

impl<'a> IntoIterator for &'a VolumeIds {
    type Item = &'a VolumeId;
    type IntoIter = std::slice::Iter<'a, VolumeId>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// The system random generator failed (should never happen on a sane host).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the system random number generator failed; check the kernel's entropy source")]
pub struct RandomError;

fn fixed<const N: usize>(field: &'static str, b: &[u8]) -> Result<[u8; N], ParseError> {
    b.try_into().map_err(|_| ParseError::BadLength {
        field,
        expected: N,
        got: b.len(),
    })
}

fn write_hex(f: &mut fmt::Formatter<'_>, b: &[u8]) -> fmt::Result {
    b.iter().try_for_each(|x| write!(f, "{x:02x}"))
}

/// A single-use 32-byte challenge nonce issued by the broker.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Nonce([u8; NONCE_LEN]);

impl Nonce {
    /// 32 bytes from the system CSPRNG (aws-lc).
    pub fn random() -> Result<Self, RandomError> {
        let mut b = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut b).map_err(|_| RandomError)?;
        Ok(Self(b))
    }

    /// Wraps known bytes (tests, storage).
    pub fn from_bytes(b: [u8; NONCE_LEN]) -> Self {
        Self(b)
    }

    /// The nonce's bytes.
    pub fn as_bytes(&self) -> &[u8; NONCE_LEN] {
        &self.0
    }
}

impl TryFrom<&[u8]> for Nonce {
    type Error = ParseError;
    fn try_from(b: &[u8]) -> Result<Self, Self::Error> {
        fixed("nonce", b).map(Self)
    }
}

impl fmt::Debug for Nonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Nonce(")?;
        write_hex(f, &self.0)?;
        f.write_str(")")
    }
}

/// The guest's ephemeral X25519 public key (32 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct GuestPublicKey([u8; GUEST_PUBLIC_KEY_LEN]);

impl GuestPublicKey {
    /// Wraps known bytes.
    pub fn from_bytes(b: [u8; GUEST_PUBLIC_KEY_LEN]) -> Self {
        Self(b)
    }

    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8; GUEST_PUBLIC_KEY_LEN] {
        &self.0
    }
}

impl TryFrom<&[u8]> for GuestPublicKey {
    type Error = ParseError;
    fn try_from(b: &[u8]) -> Result<Self, Self::Error> {
        fixed("guest public key", b).map(Self)
    }
}

impl fmt::Debug for GuestPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GuestPublicKey(")?;
        write_hex(f, &self.0)?;
        f.write_str(")")
    }
}

/// The 64-byte value the guest places in the report's `REPORT_DATA` field.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReportData([u8; REPORT_DATA_LEN]);

impl ReportData {
    /// Wraps known bytes (e.g. the field read back from a report).
    pub fn from_bytes(b: [u8; REPORT_DATA_LEN]) -> Self {
        Self(b)
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8; REPORT_DATA_LEN] {
        &self.0
    }
}

impl TryFrom<&[u8]> for ReportData {
    type Error = ParseError;
    fn try_from(b: &[u8]) -> Result<Self, Self::Error> {
        fixed("report data", b).map(Self)
    }
}

impl fmt::Debug for ReportData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReportData(")?;
        write_hex(f, &self.0)?;
        f.write_str(")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_volume_ids() {
        for s in ["root", "a", "data-1", "vol_2.luks", "A.b-C_d", "9"] {
            assert_eq!(VolumeId::new(s).unwrap().as_str(), s);
        }
        let max = "x".repeat(MAX_VOLUME_ID_LEN);
        assert!(VolumeId::new(max).is_ok());
    }

    #[test]
    fn bad_volume_ids() {
        assert_eq!(VolumeId::new(""), Err(ParseError::EmptyVolumeId));
        assert!(matches!(
            VolumeId::new("x".repeat(MAX_VOLUME_ID_LEN + 1)),
            Err(ParseError::VolumeIdTooLong { len: 129, .. })
        ));
        assert!(matches!(
            VolumeId::new(".hidden"),
            Err(ParseError::VolumeIdBadStart { first: '.', .. })
        ));
        assert!(matches!(
            VolumeId::new("-rf"),
            Err(ParseError::VolumeIdBadStart { first: '-', .. })
        ));
        for (s, ch, at) in [
            ("a/b", '/', 1),
            ("a b", ' ', 1),
            ("é", 'é', 0),
            ("x\n", '\n', 1),
            ("a\0", '\0', 1),
        ] {
            assert_eq!(
                VolumeId::new(s),
                Err(ParseError::VolumeIdBadChar {
                    input: s.to_owned(),
                    ch,
                    at
                })
            );
        }
    }

    #[test]
    fn long_input_is_cut_in_errors() {
        let long = format!("{}/", "y".repeat(100));
        let e = VolumeId::new(&long).unwrap_err();
        let ParseError::VolumeIdBadChar { input, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(input.len(), SHOWN_INPUT_CHARS + 3);
        assert!(input.ends_with("..."));
        // Control characters are escaped in the message.
        let msg = VolumeId::new("a\x1b[2J").unwrap_err().to_string();
        assert!(!msg.contains('\x1b'), "{msg}");
    }

    #[test]
    fn volume_lists() {
        let v = VolumeIds::parse(["b", "a", "c"]).unwrap();
        assert_eq!(v.to_strings(), ["b", "a", "c"]);
        assert_eq!(v.len(), 3);
        assert_eq!(
            VolumeIds::parse(Vec::<String>::new()),
            Err(ParseError::NoVolumes)
        );
        assert_eq!(
            VolumeIds::parse(["a", "b", "a"]),
            Err(ParseError::DuplicateVolume { input: "a".into() })
        );
        let many: Vec<String> = (0..=MAX_VOLUMES).map(|i| format!("v{i}")).collect();
        assert!(VolumeIds::parse(&many[..MAX_VOLUMES]).is_ok());
        assert_eq!(
            VolumeIds::parse(&many),
            Err(ParseError::TooManyVolumes {
                count: MAX_VOLUMES + 1
            })
        );
        assert!(matches!(
            VolumeIds::parse(["ok", "not ok"]),
            Err(ParseError::VolumeIdBadChar { .. })
        ));
    }

    #[test]
    fn fixed_lengths() {
        assert!(Nonce::try_from(&[0u8; 32][..]).is_ok());
        assert_eq!(
            Nonce::try_from(&[0u8; 31][..]),
            Err(ParseError::BadLength {
                field: "nonce",
                expected: 32,
                got: 31
            })
        );
        assert!(GuestPublicKey::try_from(&[0u8; 33][..]).is_err());
        assert!(ReportData::try_from(&[0u8; 64][..]).is_ok());
        assert!(ReportData::try_from(&[][..]).is_err());
    }

    #[test]
    fn random_nonces_differ() {
        let a = Nonce::random().unwrap();
        let b = Nonce::random().unwrap();
        assert_ne!(a, b);
        assert_eq!(format!("{a:?}").len(), "Nonce()".len() + 64);
    }
}
