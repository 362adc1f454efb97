//! What `circ measure file` and `circ measure domain` measure, computed before
//! anything is logged: a missing file fails the command without a partial
//! measurement.
//!
//! Files are hashed here. The index of a disk that `block-circ` serves is not
//! a file: cas-blk fetches and verifies it, so the caller supplies it (see
//! [`ServedIndex`]); this crate stays free of networking and of cas-blk.

use std::path::{Path, PathBuf};

use crate::eventlog::{EventKind, Measurement};
use crate::pcr::PcrIndex;
use crate::xlcfg::{self, ServedDisk, XlError};
use crate::Digests;

/// An error from the caller's index source, kept whole for the message.
pub type SourceError = Box<dyn std::error::Error + Send + Sync>;

/// The index bytes cas-blk will serve for a disk, as the caller fetched and
/// verified them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedIndex {
    pub bytes: Vec<u8>,
    /// Recorded with the event, e.g. the image's name and generation.
    pub description: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum MeasurementError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is not UTF-8; the event log records paths as text")]
    NotUtf8(PathBuf),
    #[error("cannot parse {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: XlError,
    },
    #[error(
        "disk {disk} of domain {domain} is served by block-circ from {target}, \
         and its index cannot be measured"
    )]
    ServedIndex {
        domain: String,
        disk: usize,
        target: String,
        #[source]
        source: SourceError,
    },
}

/// Hashes a file, recording its canonical path (what a policy names).
pub fn of_file(
    path: &Path,
    pcr: PcrIndex,
    kind: EventKind,
    domain: Option<&str>,
    description: Option<String>,
) -> Result<Measurement, MeasurementError> {
    let read = |source| MeasurementError::Read {
        path: path.to_owned(),
        source,
    };
    let canonical = xlcfg::resolve(path).map_err(read)?;
    let Some(name) = canonical.to_str() else {
        return Err(MeasurementError::NotUtf8(canonical));
    };
    let file = std::fs::File::open(&canonical).map_err(read)?;
    let digests = Digests::of_reader(file, false).map_err(read)?;
    Ok(Measurement {
        pcr,
        kind,
        digests,
        domain: domain.map(str::to_owned),
        path: Some(name.to_owned()),
        description,
    })
}

/// Everything a domain configuration boots, in log order: the configuration,
/// its kernel and ramdisk, each local cas-blk index, then each disk
/// `block-circ` serves, whose index `served` supplies (it is called with the
/// domain's name and the disk). The served index is recorded under the disk's
/// target (URL or path), which is what a policy names.
pub fn of_domain(
    xl_cfg: &Path,
    pcr: PcrIndex,
    served: &mut dyn FnMut(&str, &ServedDisk) -> Result<ServedIndex, SourceError>,
) -> Result<Vec<Measurement>, MeasurementError> {
    let text = std::fs::read_to_string(xl_cfg).map_err(|source| MeasurementError::Read {
        path: xl_cfg.to_owned(),
        source,
    })?;
    let plan = xlcfg::plan(&text).map_err(|source| MeasurementError::Parse {
        path: xl_cfg.to_owned(),
        source,
    })?;
    let name = plan.name.as_str();
    if plan.guest_chooses_kernel {
        tracing::warn!(
            domain = name,
            "the guest chooses its own kernel: only its configuration and disk indexes are measured"
        );
    }
    let file = |path: &Path, kind| of_file(path, pcr, kind, Some(name), None);
    let mut out = vec![file(xl_cfg, EventKind::DomainConfig)?];
    if let Some(k) = &plan.kernel {
        out.push(file(k, EventKind::DomainKernel)?);
    }
    if let Some(r) = &plan.ramdisk {
        out.push(file(r, EventKind::DomainRamdisk)?);
    }
    for idx in &plan.cas_indexes {
        out.push(file(idx, EventKind::DomainCasIndex)?);
    }
    for disk in &plan.served_disks {
        let index = served(name, disk).map_err(|source| MeasurementError::ServedIndex {
            domain: name.to_owned(),
            disk: disk.index,
            target: disk.target.clone(),
            source,
        })?;
        out.push(Measurement {
            pcr,
            kind: EventKind::DomainCasIndex,
            digests: Digests::of_bytes(&index.bytes, false),
            domain: Some(name.to_owned()),
            path: Some(disk.target.clone()),
            description: index.description,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_served_disks(_: &str, d: &ServedDisk) -> Result<ServedIndex, SourceError> {
        Err(format!("unexpected served disk {}", d.target).into())
    }

    #[test]
    fn a_domain_is_hashed_in_log_order() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        std::fs::write(p("k"), b"kernel").unwrap();
        std::fs::write(p("r"), b"ramdisk").unwrap();
        std::fs::write(p("i.cidx"), b"local index").unwrap();
        let cfg = p("d.cfg");
        std::fs::write(
            &cfg,
            format!(
                "name = 'd'\nkernel = '{}'\nramdisk = '{}'\n\
                 disk = [ 'script=block-circ, target=http://h/indexes/img.cidx',\n\
                          'target={}' ]\n",
                p("k").display(),
                p("r").display(),
                p("i.cidx").display()
            ),
        )
        .unwrap();
        let pcr = crate::pcr::DOMAIN_PCR;
        let mut asked = Vec::new();
        let ms = of_domain(&cfg, pcr, &mut |domain, disk| {
            asked.push((domain.to_owned(), disk.target.clone()));
            Ok(ServedIndex {
                bytes: b"served index".to_vec(),
                description: Some("image img generation 2".into()),
            })
        })
        .unwrap();
        assert_eq!(asked, [("d".into(), "http://h/indexes/img.cidx".into())]);
        let kinds: Vec<EventKind> = ms.iter().map(|m| m.kind).collect();
        assert_eq!(
            kinds,
            [
                EventKind::DomainConfig,
                EventKind::DomainKernel,
                EventKind::DomainRamdisk,
                EventKind::DomainCasIndex,
                EventKind::DomainCasIndex,
            ]
        );
        assert_eq!(
            ms[1].digests,
            Digests::of_bytes(b"kernel", false),
            "the kernel's bytes"
        );
        let served = &ms[4];
        assert_eq!(served.digests, Digests::of_bytes(b"served index", false));
        assert_eq!(served.path.as_deref(), Some("http://h/indexes/img.cidx"));
        assert_eq!(served.domain.as_deref(), Some("d"));
        assert!(ms.iter().all(|m| m.pcr == pcr));
    }

    #[test]
    fn a_missing_file_or_unmeasurable_disk_fails_the_whole_plan() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("d.cfg");
        std::fs::write(&cfg, "name = 'd'\nkernel = '/nonexistent/vmlinuz'\n").unwrap();
        let err = of_domain(&cfg, crate::pcr::DOMAIN_PCR, &mut no_served_disks).unwrap_err();
        assert!(
            matches!(err, MeasurementError::Read { ref path, .. } if path == Path::new("/nonexistent/vmlinuz")),
            "{err}"
        );

        std::fs::write(
            &cfg,
            "name = 'd'\ndisk = [ 'script=block-circ, target=http://h/indexes/img.cidx' ]\n",
        )
        .unwrap();
        let err = of_domain(&cfg, crate::pcr::DOMAIN_PCR, &mut no_served_disks).unwrap_err();
        assert!(
            matches!(err, MeasurementError::ServedIndex { disk: 0, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("served by block-circ"), "{err}");
    }
}
