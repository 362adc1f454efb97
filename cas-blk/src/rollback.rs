//! Anti-rollback: the highest generation accepted per image name.
//!
//! Kept in a state directory of its own (`/var/lib/circular/cas` by
//! default), never in the chunk cache: the cache is untrusted and optional,
//! and whoever could lower a record there could bring back an old image.
//! One file per image, `STATE/generations/NAME` (decimal), replaced whole
//! (temporary file, fsync, rename, fsync of the directory) so that a crash
//! leaves the old record or the new one, never a torn one. A check and its
//! record happen under one exclusive lock (`STATE/generations/.lock`), so
//! two servers opening generations 5 and 6 of one image at once cannot
//! leave 5 recorded after 6 was accepted.
//!
//! A mirror that serves an older, validly signed index (to bring back a
//! vulnerable image) is refused unless the operator explicitly allows it.
//! State that cannot be used (a directory that cannot be created, a record
//! that cannot be read or written, or that does not parse) fails closed:
//! the open is refused, and only an explicit rollback allowance goes past.

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

/// Where the state lives unless told otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/circular/cas";

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
    #[error(
        "cannot use the anti-rollback state {path} (refusing to go on without it; give a usable \
         --state-dir, or --allow-rollback)"
    )]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("generation record {0} is corrupt (refusing to go on; --allow-rollback overrides)")]
    Corrupt(PathBuf),
}

impl GenerationStore {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.join("generations"),
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

    /// Accepts `generation` of `name` and records it, under the lock:
    /// refused if lower than the highest accepted, unless `allow_rollback`,
    /// which then lowers the record so the operator's choice sticks. Equal
    /// is fine (the same index fetched again). With `allow_rollback`,
    /// unusable state is logged and passed over.
    pub fn accept(
        &self,
        name: &str,
        generation: u64,
        allow_rollback: bool,
    ) -> Result<(), RollbackError> {
        match self.accept_locked(name, generation, allow_rollback) {
            Err(error @ RollbackError::Io { .. }) if allow_rollback => {
                tracing::warn!(
                    name,
                    generation,
                    error = %crate::error_chain(&error),
                    "anti-rollback state unusable, going on as --allow-rollback asks"
                );
                Ok(())
            }
            result => result,
        }
    }

    fn accept_locked(
        &self,
        name: &str,
        generation: u64,
        allow_rollback: bool,
    ) -> Result<(), RollbackError> {
        let _lock = self.lock()?;
        let highest = match self.highest(name) {
            Err(RollbackError::Corrupt(path)) if allow_rollback => {
                tracing::warn!(path = %path.display(), "replacing a corrupt generation record as --allow-rollback asks");
                None
            }
            other => other?,
        };
        match highest {
            Some(highest) if generation == highest => Ok(()),
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
                self.write(name, generation)
            }
            _ => self.write(name, generation),
        }
    }

    /// The directory's lock, held until the returned file closes.
    fn lock(&self) -> Result<fs::File, RollbackError> {
        let path = self.dir.join(".lock");
        let io_err = |source| RollbackError::Io {
            path: path.clone(),
            source,
        };
        fs::create_dir_all(&self.dir).map_err(io_err)?;
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err)?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| io_err(e.into()))?;
        Ok(file)
    }

    /// Replaces the record of `name`; the caller holds the lock.
    fn write(&self, name: &str, generation: u64) -> Result<(), RollbackError> {
        let path = self.dir.join(name);
        let io_err = |source| RollbackError::Io {
            path: path.clone(),
            source,
        };
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let mut file = fs::File::create(&tmp).map_err(io_err)?;
        writeln!(file, "{generation}").map_err(io_err)?;
        file.sync_all().map_err(io_err)?;
        fs::rename(&tmp, &path).map_err(io_err)?;
        fs::File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(io_err)
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
        store.accept("img", 5, false).unwrap();
        assert_eq!(store.highest("img").unwrap(), Some(5));
        store.accept("img", 5, false).unwrap();
        store.accept("img", 6, false).unwrap();
        assert!(matches!(
            store.accept("img", 4, false),
            Err(RollbackError::Refused {
                offered: 4,
                highest: 6,
                ..
            })
        ));
        assert_eq!(
            store.highest("img").unwrap(),
            Some(6),
            "a refusal records nothing"
        );
        // Allowed: accepted, and the record goes down with it.
        store.accept("img", 4, true).unwrap();
        assert_eq!(store.highest("img").unwrap(), Some(4));
        // Other images are independent.
        store.accept("other", 1, false).unwrap();
        assert_eq!(store.highest("img").unwrap(), Some(4));
    }

    #[test]
    fn unusable_state_fails_closed_unless_rollback_is_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let store = GenerationStore::new(dir.path());
        store.accept("img", 3, false).unwrap();
        // A record that does not parse.
        fs::write(dir.path().join("generations/img"), "garbage").unwrap();
        let err = store.accept("img", 9, false).unwrap_err();
        assert!(matches!(err, RollbackError::Corrupt(_)), "{err:?}");
        store.accept("img", 2, true).unwrap();
        assert_eq!(
            store.highest("img").unwrap(),
            Some(2),
            "replaced when allowed"
        );

        // A state directory that cannot be created: a file is in the way.
        let blocked = dir.path().join("blocked");
        fs::write(&blocked, "").unwrap();
        let store = GenerationStore::new(&blocked);
        let err = store.accept("img", 1, false).unwrap_err();
        assert!(matches!(err, RollbackError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("--state-dir"), "{err}");
        store.accept("img", 1, true).unwrap();
    }

    #[test]
    fn concurrent_accepts_never_lower_the_record() {
        // Sixteen openers of one image at once, each with its generation:
        // whatever the interleaving, the record ends at the highest, and
        // every refusal named a generation above the refused one.
        for _ in 0..8 {
            let dir = tempfile::tempdir().unwrap();
            std::thread::scope(|scope| {
                for generation in (1..=16u64).rev() {
                    let path = dir.path();
                    scope.spawn(move || {
                        match GenerationStore::new(path).accept("img", generation, false) {
                            Ok(()) => {}
                            Err(RollbackError::Refused {
                                offered, highest, ..
                            }) => assert!(highest > offered),
                            Err(other) => panic!("{other:?}"),
                        }
                    });
                }
            });
            let store = GenerationStore::new(dir.path());
            assert_eq!(store.highest("img").unwrap(), Some(16));
            let leftovers: Vec<_> = fs::read_dir(dir.path().join("generations"))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|name| name.ends_with(".tmp"))
                .collect();
            assert!(leftovers.is_empty(), "{leftovers:?}");
        }
    }
}
