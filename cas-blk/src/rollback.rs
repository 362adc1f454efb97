//! Anti-rollback: the highest generation accepted per image name.
//!
//! Kept as `CACHE/generations/NAME` (decimal), replaced atomically. A mirror
//! that serves an older, validly signed index (to bring back a vulnerable
//! image) is refused unless the operator explicitly allows it.

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub struct GenerationStore {
    dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    #[error(
        "index `{name}` has generation {offered}, older than generation {highest} accepted before \
         (rollback refused; --allow-rollback overrides)"
    )]
    Refused {
        name: String,
        offered: u64,
        highest: u64,
    },
    #[error("cannot access generation record {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("generation record {0} is corrupt")]
    Corrupt(PathBuf),
}

impl GenerationStore {
    pub fn new(cache_dir: &Path) -> Self {
        Self {
            dir: cache_dir.join("generations"),
        }
    }

    /// Highest generation accepted for `name`, if any. `name` must have
    /// passed `layout::validate_name` (it is a file name here).
    pub fn highest(&self, name: &str) -> Result<Option<u64>, RollbackError> {
        let path = self.dir.join(name);
        match fs::read_to_string(&path) {
            Ok(text) => text
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| RollbackError::Corrupt(path)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(RollbackError::Io { path, source }),
        }
    }

    /// Refuses `generation` if lower than the highest accepted, unless
    /// `allow_rollback`. Equal is fine: the same index fetched again.
    pub fn check(
        &self,
        name: &str,
        generation: u64,
        allow_rollback: bool,
    ) -> Result<(), RollbackError> {
        match self.highest(name)? {
            Some(highest) if generation < highest && !allow_rollback => {
                Err(RollbackError::Refused {
                    name: name.to_owned(),
                    offered: generation,
                    highest,
                })
            }
            Some(highest) if generation < highest => {
                tracing::warn!(
                    name,
                    generation,
                    highest,
                    "accepting a rolled-back index as asked"
                );
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Records `generation` as accepted. An explicitly allowed rollback
    /// lowers the record, so the operator's choice sticks.
    pub fn record(&self, name: &str, generation: u64) -> Result<(), RollbackError> {
        let path = self.dir.join(name);
        let io_err = |source| RollbackError::Io {
            path: path.clone(),
            source,
        };
        fs::create_dir_all(&self.dir).map_err(io_err)?;
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let mut file = fs::File::create(&tmp).map_err(io_err)?;
        writeln!(file, "{generation}").map_err(io_err)?;
        file.sync_all().map_err(io_err)?;
        fs::rename(&tmp, &path).map_err(io_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_generations_are_refused_unless_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let store = GenerationStore::new(dir.path());
        assert_eq!(store.highest("img").unwrap(), None);
        store.check("img", 5, false).unwrap();
        store.record("img", 5).unwrap();
        store.check("img", 5, false).unwrap();
        store.check("img", 6, false).unwrap();
        assert!(matches!(
            store.check("img", 4, false),
            Err(RollbackError::Refused {
                offered: 4,
                highest: 5,
                ..
            })
        ));
        store.check("img", 4, true).unwrap();
        // Other images are independent.
        store.check("other", 1, false).unwrap();
        fs::write(dir.path().join("generations/img"), "garbage").unwrap();
        assert!(matches!(
            store.check("img", 9, false),
            Err(RollbackError::Corrupt(_))
        ));
    }
}
