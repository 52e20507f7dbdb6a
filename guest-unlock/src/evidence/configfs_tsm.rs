//! The `configfs-tsm` provider: Linux's TSM report interface
//! (`Documentation/ABI/testing/configfs-tsm-report`).
//!
//! One request: create a fresh entry under the root, write `inblob` (and `privlevel` when a
//! VMPL other than 0 is wanted), check `provider` is `sev_guest`, read `generation`, then
//! `outblob` (the report) and `auxblob` (the certificate table, possibly absent), then
//! `generation` again; if it moved, another writer interfered and the request is repeated,
//! as the kernel documentation requires. The entry is removed afterwards in every case.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use keybroker_snp::report::REPORT_LEN;

use super::{Evidence, EvidenceError, EvidenceProvider, SnpEvidence};

/// How often a request is repeated when `generation` changes underneath it.
const MAX_ATTEMPTS: u32 = 3;

/// The file operations the provider performs, so that tests can stand in for the kernel.
pub(crate) trait TsmFs: Send + Sync {
    fn mkdir(&self, path: &Path) -> io::Result<()>;
    fn rmdir(&self, path: &Path) -> io::Result<()>;
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    fn write(&self, path: &Path, data: &[u8]) -> io::Result<()>;
}

/// The real configfs.
struct RealFs;

impl TsmFs for RealFs {
    fn mkdir(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir(path)
    }

    fn rmdir(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir(path)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        // configfs attributes exist already: never create, never truncate; one write.
        let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
        f.write_all(data)
    }
}

/// Reports from configfs-tsm.
pub struct ConfigfsTsmProvider {
    root: PathBuf,
    privlevel: Option<u32>,
    fs: Box<dyn TsmFs>,
}

impl std::fmt::Debug for ConfigfsTsmProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigfsTsmProvider")
            .field("root", &self.root)
            .field("privlevel", &self.privlevel)
            .finish_non_exhaustive()
    }
}

impl ConfigfsTsmProvider {
    /// Uses the report root `root` (normally `/sys/kernel/config/tsm/report`), writing
    /// `privlevel` (the VMPL, 0..=3) when given.
    pub fn open(root: &Path, privlevel: Option<u32>) -> Result<Self, EvidenceError> {
        Self::with_fs(root, privlevel, Box::new(RealFs))
    }

    pub(crate) fn with_fs(
        root: &Path,
        privlevel: Option<u32>,
        fs: Box<dyn TsmFs>,
    ) -> Result<Self, EvidenceError> {
        if !root.is_dir() {
            return Err(EvidenceError::ConfigfsMissing {
                root: root.to_path_buf(),
            });
        }
        if privlevel.is_some_and(|p| p > 3) {
            return Err(EvidenceError::InvalidConfig {
                input: format!("{privlevel:?}"),
                reason: "privlevel (VMPL) must be 0, 1, 2 or 3".into(),
            });
        }
        Ok(Self {
            root: root.to_path_buf(),
            privlevel,
            fs,
        })
    }

    fn io(path: &Path) -> impl FnOnce(io::Error) -> EvidenceError + '_ {
        move |source| EvidenceError::ConfigfsIo {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Reads an attribute that every report entry has.
    fn read_attr(&self, dir: &Path, name: &'static str) -> Result<Vec<u8>, EvidenceError> {
        let path = dir.join(name);
        self.fs.read(&path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => EvidenceError::NotTsmReportDir {
                path: dir.to_path_buf(),
                attribute: name,
            },
            _ => EvidenceError::ConfigfsIo { path, source },
        })
    }

    fn write_attr(&self, dir: &Path, name: &'static str, data: &[u8]) -> Result<(), EvidenceError> {
        let path = dir.join(name);
        self.fs
            .write(&path, data)
            .map_err(|source| match source.kind() {
                io::ErrorKind::NotFound => EvidenceError::NotTsmReportDir {
                    path: dir.to_path_buf(),
                    attribute: name,
                },
                _ => EvidenceError::ConfigfsIo { path, source },
            })
    }

    fn generation(&self, dir: &Path) -> Result<u64, EvidenceError> {
        let raw = self.read_attr(dir, "generation")?;
        let text = String::from_utf8_lossy(&raw);
        text.trim().parse().map_err(|_| EvidenceError::ConfigfsIo {
            path: dir.join("generation"),
            source: io::Error::new(
                io::ErrorKind::InvalidData,
                format!("not a number: {:?}", text.trim()),
            ),
        })
    }

    fn request(&self, dir: &Path, report_data: &[u8; 64]) -> Result<Evidence, EvidenceError> {
        let provider = self.read_attr(dir, "provider")?;
        let provider = String::from_utf8_lossy(&provider).trim().to_string();
        if provider != "sev_guest" {
            return Err(EvidenceError::WrongTsmProvider { found: provider });
        }
        for _ in 0..MAX_ATTEMPTS {
            self.write_attr(dir, "inblob", report_data)?;
            if let Some(level) = self.privlevel {
                self.write_attr(dir, "privlevel", format!("{level}\n").as_bytes())?;
            }
            let before = self.generation(dir)?;
            let outblob_path = dir.join("outblob");
            let report = match self.fs.read(&outblob_path) {
                Ok(r) if !r.is_empty() => r,
                Ok(_) => return Err(EvidenceError::MissingOutblob { path: outblob_path }),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(EvidenceError::MissingOutblob { path: outblob_path })
                }
                Err(e) => return Err(Self::io(&outblob_path)(e)),
            };
            let auxblob_path = dir.join("auxblob");
            let cert_table = match self.fs.read(&auxblob_path) {
                Ok(a) => a,
                Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(Self::io(&auxblob_path)(e)),
            };
            let after = self.generation(dir)?;
            if before != after {
                tracing::debug!(
                    before,
                    after,
                    "configfs-tsm generation changed; repeating the request"
                );
                continue;
            }
            if report.len() != REPORT_LEN {
                return Err(EvidenceError::BadReportLength { len: report.len() });
            }
            return Ok(SnpEvidence { report, cert_table }.into());
        }
        Err(EvidenceError::GenerationChanged {
            path: dir.to_path_buf(),
            attempts: MAX_ATTEMPTS,
        })
    }
}

impl EvidenceProvider for ConfigfsTsmProvider {
    fn name(&self) -> &'static str {
        "configfs-tsm"
    }

    fn get_evidence(&self, report_data: &[u8; 64]) -> Result<Evidence, EvidenceError> {
        let mut suffix = [0u8; 8];
        aws_lc_rs::rand::fill(&mut suffix).map_err(|_| EvidenceError::ConfigfsIo {
            path: self.root.clone(),
            source: io::Error::other("OS random number generator failed"),
        })?;
        let dir = self.root.join(format!(
            "keybroker-{}-{}",
            std::process::id(),
            hex::encode(suffix)
        ));
        self.fs.mkdir(&dir).map_err(Self::io(&dir))?;
        let result = self.request(&dir, report_data);
        if let Err(e) = self.fs.rmdir(&dir) {
            tracing::warn!(path = %dir.display(), error = %e, "could not remove the configfs-tsm report entry");
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keybroker_sim::{SimGuest, SimParams, SimPlatform};
    use std::fs;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    /// Stands in for the kernel over a real directory tree: `mkdir` creates the attributes,
    /// writes bump `generation`, reading `outblob` makes a report for the current `inblob`
    /// with a simulated platform.
    struct FakeKernel {
        platform: Arc<SimPlatform>,
        provider: &'static str,
        /// Reads of `outblob` that a concurrent writer disturbs (bumping `generation`).
        disturb: AtomicU32,
        outblob: bool,
        auxblob: bool,
        writes: Arc<AtomicU32>,
    }

    impl FakeKernel {
        fn bump(dir: &Path) -> io::Result<()> {
            let g: u64 = fs::read_to_string(dir.join("generation"))?
                .trim()
                .parse()
                .unwrap();
            fs::write(dir.join("generation"), format!("{}\n", g + 1))
        }
    }

    impl TsmFs for FakeKernel {
        fn mkdir(&self, path: &Path) -> io::Result<()> {
            fs::create_dir(path)?;
            fs::write(path.join("provider"), format!("{}\n", self.provider))?;
            fs::write(path.join("generation"), "0\n")?;
            fs::write(path.join("inblob"), b"")?;
            fs::write(path.join("privlevel"), "0\n")
        }

        fn rmdir(&self, path: &Path) -> io::Result<()> {
            fs::remove_dir_all(path)
        }

        fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
            let dir = path.parent().unwrap();
            match path.file_name().unwrap().to_str().unwrap() {
                "outblob" if !self.outblob => Err(io::ErrorKind::NotFound.into()),
                "outblob" => {
                    let inblob: [u8; 64] = fs::read(dir.join("inblob"))?.try_into().unwrap();
                    let report = self.platform.report(&inblob, &SimGuest::default()).unwrap();
                    if self.disturb.load(Ordering::SeqCst) > 0 {
                        self.disturb.fetch_sub(1, Ordering::SeqCst);
                        Self::bump(dir)?;
                    }
                    Ok(report)
                }
                "auxblob" if !self.auxblob => Err(io::ErrorKind::NotFound.into()),
                "auxblob" => Ok(self.platform.cert_table()),
                _ => fs::read(path),
            }
        }

        fn write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
            self.writes.fetch_add(1, Ordering::SeqCst);
            fs::write(path, data)?;
            Self::bump(path.parent().unwrap())
        }
    }

    struct Setup {
        root: tempfile::TempDir,
        _plat_dir: tempfile::TempDir,
        platform: Arc<SimPlatform>,
    }

    fn setup() -> Setup {
        let plat_dir = tempfile::tempdir().unwrap();
        let platform =
            Arc::new(SimPlatform::generate(plat_dir.path(), &SimParams::default()).unwrap());
        Setup {
            root: tempfile::tempdir().unwrap(),
            _plat_dir: plat_dir,
            platform,
        }
    }

    fn kernel(s: &Setup) -> FakeKernel {
        FakeKernel {
            platform: s.platform.clone(),
            provider: "sev_guest",
            disturb: AtomicU32::new(0),
            outblob: true,
            auxblob: true,
            writes: Arc::new(AtomicU32::new(0)),
        }
    }

    fn entries(root: &Path) -> usize {
        fs::read_dir(root).unwrap().count()
    }

    #[test]
    fn produces_report_bound_to_inblob_and_cleans_up() {
        let s = setup();
        let p = ConfigfsTsmProvider::with_fs(s.root.path(), None, Box::new(kernel(&s))).unwrap();
        let data = [0x5a; 64];
        let ev = p.get_evidence(&data).unwrap().snp().unwrap().clone();
        assert_eq!(ev.report.len(), REPORT_LEN);
        assert_eq!(&ev.report[0x50..0x90], &data);
        assert_eq!(ev.cert_table, s.platform.cert_table());
        assert_eq!(entries(s.root.path()), 0, "report entry left behind");
        assert_eq!(p.name(), "configfs-tsm");
    }

    #[test]
    fn privlevel_is_written_when_asked() {
        let s = setup();
        let k = kernel(&s);
        let writes = k.writes.clone();
        let p = ConfigfsTsmProvider::with_fs(s.root.path(), Some(2), Box::new(k)).unwrap();
        p.get_evidence(&[1; 64]).unwrap();
        assert_eq!(writes.load(Ordering::SeqCst), 2, "inblob and privlevel");
        assert!(
            ConfigfsTsmProvider::with_fs(s.root.path(), Some(4), Box::new(kernel(&s))).is_err()
        );
    }

    #[test]
    fn missing_auxblob_gives_empty_table() {
        let s = setup();
        let k = FakeKernel {
            auxblob: false,
            ..kernel(&s)
        };
        let p = ConfigfsTsmProvider::with_fs(s.root.path(), None, Box::new(k)).unwrap();
        assert!(p
            .get_evidence(&[2; 64])
            .unwrap()
            .snp()
            .unwrap()
            .cert_table
            .is_empty());
    }

    #[test]
    fn wrong_provider_is_refused() {
        let s = setup();
        let k = FakeKernel {
            provider: "tdx_guest",
            ..kernel(&s)
        };
        let p = ConfigfsTsmProvider::with_fs(s.root.path(), None, Box::new(k)).unwrap();
        let err = p.get_evidence(&[0; 64]).unwrap_err();
        assert!(
            matches!(err, EvidenceError::WrongTsmProvider { ref found } if found == "tdx_guest"),
            "{err}"
        );
        assert_eq!(entries(s.root.path()), 0);
    }

    #[test]
    fn generation_change_is_retried_then_given_up() {
        let s = setup();
        let k = FakeKernel {
            disturb: AtomicU32::new(1),
            ..kernel(&s)
        };
        let writes = k.writes.clone();
        let p = ConfigfsTsmProvider::with_fs(s.root.path(), None, Box::new(k)).unwrap();
        let ev = p.get_evidence(&[3; 64]).unwrap().snp().unwrap().clone();
        assert_eq!(&ev.report[0x50..0x90], &[3; 64]);
        assert_eq!(
            writes.load(Ordering::SeqCst),
            2,
            "inblob written once per attempt"
        );

        let k = FakeKernel {
            disturb: AtomicU32::new(u32::MAX),
            ..kernel(&s)
        };
        let p = ConfigfsTsmProvider::with_fs(s.root.path(), None, Box::new(k)).unwrap();
        let err = p.get_evidence(&[3; 64]).unwrap_err();
        assert!(
            matches!(
                err,
                EvidenceError::GenerationChanged {
                    attempts: MAX_ATTEMPTS,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(entries(s.root.path()), 0);
    }

    #[test]
    fn missing_outblob_is_reported() {
        let s = setup();
        let k = FakeKernel {
            outblob: false,
            ..kernel(&s)
        };
        let p = ConfigfsTsmProvider::with_fs(s.root.path(), None, Box::new(k)).unwrap();
        let err = p.get_evidence(&[0; 64]).unwrap_err();
        assert!(matches!(err, EvidenceError::MissingOutblob { .. }), "{err}");
        assert!(err.to_string().contains("dmesg"));
    }

    #[test]
    fn plain_directory_is_not_mistaken_for_configfs() {
        // The real file operations on an ordinary directory: mkdir succeeds but no attribute
        // appears, which must be reported as a wrong root, and the entry removed.
        let root = tempfile::tempdir().unwrap();
        let p = ConfigfsTsmProvider::open(root.path(), None).unwrap();
        let err = p.get_evidence(&[0; 64]).unwrap_err();
        assert!(
            matches!(
                err,
                EvidenceError::NotTsmReportDir {
                    attribute: "provider",
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(entries(root.path()), 0);
    }

    #[test]
    fn bad_generation_and_short_report_are_refused() {
        struct Broken(&'static str, Vec<u8>);
        impl TsmFs for Broken {
            fn mkdir(&self, _: &Path) -> io::Result<()> {
                Ok(())
            }
            fn rmdir(&self, _: &Path) -> io::Result<()> {
                Ok(())
            }
            fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
                Ok(match path.file_name().unwrap().to_str().unwrap() {
                    "provider" => b"sev_guest\n".to_vec(),
                    "generation" => self.0.as_bytes().to_vec(),
                    "outblob" => self.1.clone(),
                    _ => Vec::new(),
                })
            }
            fn write(&self, _: &Path, _: &[u8]) -> io::Result<()> {
                Ok(())
            }
        }
        let root = tempfile::tempdir().unwrap();
        let p =
            ConfigfsTsmProvider::with_fs(root.path(), None, Box::new(Broken("x\n", vec![0; 1184])))
                .unwrap();
        assert!(matches!(
            p.get_evidence(&[0; 64]),
            Err(EvidenceError::ConfigfsIo { .. })
        ));
        let p =
            ConfigfsTsmProvider::with_fs(root.path(), None, Box::new(Broken("7\n", vec![0; 100])))
                .unwrap();
        assert!(matches!(
            p.get_evidence(&[0; 64]),
            Err(EvidenceError::BadReportLength { len: 100 })
        ));
        let p =
            ConfigfsTsmProvider::with_fs(root.path(), None, Box::new(Broken("7\n", vec![0; 1184])))
                .unwrap();
        assert_eq!(
            p.get_evidence(&[0; 64]).unwrap().snp().unwrap().report,
            vec![0; 1184]
        );
    }
}
