//! Artifacts cached under a key derived from their inputs.
//!
//! An entry is a directory `<cache>/<name>-<key>`; it is complete once its
//! `.complete` stamp exists. Builders write into a scratch directory that is
//! renamed into place, so an interrupted build never leaves a half entry.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::{LabError, Result};

const STAMP: &str = ".complete";

/// Accumulates the inputs of one artifact into its cache key.
#[derive(Debug, Clone, Default)]
pub(crate) struct Key(Sha256);

impl Key {
    pub(crate) fn new(kind: &str) -> Self {
        let mut key = Key(Sha256::new());
        key.text("kind", kind);
        key
    }

    /// Adds a named text input (a package version, a command line, ...).
    pub(crate) fn text(&mut self, label: &str, value: &str) -> &mut Self {
        for part in [label.as_bytes(), value.as_bytes()] {
            self.0.update((part.len() as u64).to_le_bytes());
            self.0.update(part);
        }
        self
    }

    /// Adds the contents of a file (a script, a patch).
    pub(crate) fn file(&mut self, path: &Path) -> Result<&mut Self> {
        let bytes = std::fs::read(path).map_err(LabError::io(path))?;
        let label = path
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        self.0.update(label.as_bytes());
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(&bytes);
        Ok(self)
    }

    /// The first 16 hex digits of the digest: enough to tell inputs apart.
    pub(crate) fn finish(&self) -> String {
        let digest = self.0.clone().finalize();
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// The cache directory.
#[derive(Debug, Clone)]
pub(crate) struct Cache {
    dir: PathBuf,
}

impl Cache {
    pub(crate) fn new(dir: &Path) -> Self {
        Cache {
            dir: dir.to_path_buf(),
        }
    }

    /// Returns the entry for `name` under `key`, building it with `build` if it
    /// is missing. `build` gets an empty scratch directory to fill.
    pub(crate) fn get_or_build(
        &self,
        name: &str,
        key: &Key,
        build: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<PathBuf> {
        let entry = self.dir.join(format!("{name}-{}", key.finish()));
        if entry.join(STAMP).is_file() {
            tracing::info!(artifact = name, path = %entry.display(), "cached");
            return Ok(entry);
        }
        std::fs::create_dir_all(&self.dir).map_err(LabError::io(&self.dir))?;
        let scratch = self.dir.join(format!(".{name}-{}.tmp", key.finish()));
        remove_dir_if_exists(&scratch)?;
        std::fs::create_dir_all(&scratch).map_err(LabError::io(&scratch))?;
        tracing::info!(artifact = name, "building");
        let started = std::time::Instant::now();
        build(&scratch)?;
        std::fs::write(scratch.join(STAMP), b"").map_err(LabError::io(&scratch))?;
        remove_dir_if_exists(&entry)?;
        std::fs::rename(&scratch, &entry).map_err(LabError::io(&entry))?;
        tracing::info!(
            artifact = name,
            secs = started.elapsed().as_secs_f32(),
            path = %entry.display(),
            "built"
        );
        Ok(entry)
    }
}

fn remove_dir_if_exists(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(LabError::io(dir)(err)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn keys_depend_on_every_input_and_its_framing() {
        let a = Key::new("k").text("a", "bc").finish();
        let b = Key::new("k").text("ab", "c").finish();
        let c = Key::new("k").text("a", "bc").finish();
        assert_ne!(a, b);
        assert_eq!(a, c);
        assert_eq!(a.len(), 16);
    }

    #[test]
    fn second_get_reuses_the_entry() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let key = Key::new("thing");
        let builds = Cell::new(0);
        let build = |out: &Path| {
            builds.set(builds.get() + 1);
            std::fs::write(out.join("file"), b"x").map_err(LabError::io(out))
        };
        let first = cache.get_or_build("thing", &key, build).unwrap();
        let second = cache.get_or_build("thing", &key, build).unwrap();
        assert_eq!(first, second);
        assert_eq!(builds.get(), 1);
        assert!(first.join("file").is_file());
    }

    #[test]
    fn failed_build_leaves_no_entry() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let key = Key::new("thing");
        let err = cache
            .get_or_build("thing", &key, |_| {
                Err(LabError::MissingArtifact {
                    what: "x".into(),
                    path: "y".into(),
                })
            })
            .unwrap_err();
        assert!(matches!(err, LabError::MissingArtifact { .. }));
        let rebuilt = cache
            .get_or_build("thing", &key, |out| {
                std::fs::write(out.join("ok"), b"").map_err(LabError::io(out))
            })
            .unwrap();
        assert!(rebuilt.join("ok").is_file());
    }
}
