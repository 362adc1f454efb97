//! Pins: the one index a disk of a measured domain may be served from.
//!
//! `circ measure domain` measures the index bytes a `block-circ` disk will
//! be served from (fetched and verified as [`crate::client`] would serve
//! them) and pins their SHA-256 here before it logs the measurement.
//! `block-circ` then runs `circ cas nbd` with the frontend domain's name
//! (`--pin-domain`), which refuses any other index for that disk: a new
//! generation published after the measurement is not served until the
//! domain is measured again (and so re-pinned).
//!
//! A pin is keyed by the domain's name and the disk's target (the index URL
//! or path, exactly as xl passes it to the hotplug script), so two domains
//! on one image are pinned apart. One file per pin,
//! `STATE_DIR/pins/<SHA-256 of domain and target, hex>.pin` (TOML, naming
//! both), replaced whole and fsynced. A disk with no pin is served as before
//! (it was not measured); `--require-pin` refuses it instead.
//!
//! Pins live in dom0's state directory, as trusted as the anti-rollback
//! state: whoever can write there is dom0 (the TCB).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::hex;

/// A pin is a few hundred bytes; more is not a pin.
const MAX_PIN_LEN: u64 = 16 << 10;

/// The index one disk of one domain may be served from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pin {
    pub domain: String,
    /// The disk's target: the index URL or path.
    pub target: String,
    /// The image and generation the index was, for messages.
    pub image: String,
    pub generation: u64,
    /// SHA-256 of the index file, hex.
    pub sha256: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("cannot use the pin {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the pin {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "index {} for domain {} is not the one measured (measured: image `{}` \
         generation {}, sha256 {}; served: sha256 {served}); measure the domain \
         again (`circ measure domain`) to serve the new index",
        .pinned.target, .pinned.domain, .pinned.image, .pinned.generation, .pinned.sha256
    )]
    Mismatch { pinned: Box<Pin>, served: String },
    #[error(
        "no pin for disk {target} of domain {domain} (it was not measured; \
         `circ measure domain` pins it) and a pin is required"
    )]
    Missing { domain: String, target: String },
}

impl Pin {
    pub fn new(
        domain: &str,
        target: &str,
        image: &str,
        generation: u64,
        sha256: &[u8; 32],
    ) -> Self {
        Self {
            domain: domain.to_owned(),
            target: target.to_owned(),
            image: image.to_owned(),
            generation,
            sha256: hex::encode(sha256),
        }
    }

    /// Refuses an index whose SHA-256 is not the pinned one.
    pub fn check(&self, served_sha256: &[u8; 32]) -> Result<(), PinError> {
        if hex::decode::<32>(&self.sha256).as_ref() == Some(served_sha256) {
            return Ok(());
        }
        Err(PinError::Mismatch {
            pinned: Box::new(self.clone()),
            served: hex::encode(served_sha256),
        })
    }
}

/// For `circ measure domain`: fetches and verifies the index `opts` names,
/// exactly as [`crate::client::open`] would before serving it, and pins its
/// SHA-256 as the one index `domain`'s disk (target: the index location)
/// may be served from. Returns the verified bytes, to be measured.
pub fn pin_served_index(
    opts: &crate::client::OpenOptions,
    state_dir: &Path,
    domain: &str,
) -> Result<crate::client::VerifiedIndex, crate::client::OpenError> {
    let verified = crate::client::fetch_verified_index(opts)?;
    let pin = Pin::new(
        domain,
        &opts.index_location,
        &verified.index.name,
        verified.index.generation,
        &verified.sha256(),
    );
    let path = PinStore::new(state_dir).write(&pin)?;
    tracing::info!(domain, target = opts.index_location, generation = pin.generation, sha256 = pin.sha256, path = %path.display(), "index pinned");
    Ok(verified)
}

/// The pins under a state directory.
#[derive(Debug, Clone)]
pub struct PinStore {
    dir: PathBuf,
}

impl PinStore {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.join("pins"),
        }
    }

    /// The file of `domain`'s disk `target`. Both are hashed (with the
    /// domain's length first, so no two pairs share a file name): names and
    /// URLs may hold any character.
    pub fn path(&self, domain: &str, target: &str) -> PathBuf {
        let mut h = Sha256::new();
        h.update((domain.len() as u64).to_be_bytes());
        h.update(domain.as_bytes());
        h.update(target.as_bytes());
        let digest: [u8; 32] = h.finalize().into();
        self.dir.join(format!("{}.pin", hex::encode(&digest)))
    }

    /// Writes `pin`, replacing the disk's previous one, durably (the file
    /// and its directory are fsynced before this returns).
    pub fn write(&self, pin: &Pin) -> Result<PathBuf, PinError> {
        let path = self.path(&pin.domain, &pin.target);
        let io = |source| PinError::Io {
            path: path.clone(),
            source,
        };
        let text = toml::to_string(pin).map_err(|e| io(io::Error::other(e)))?;
        let text = format!(
            "# circ-cas pin: disk {} of domain {} is served from this index only\n{text}",
            pin.target, pin.domain
        );
        fs::create_dir_all(&self.dir).map_err(io)?;
        crate::store::dir::write_atomic(&path, text.as_bytes(), true).map_err(io)?;
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        Ok(path)
    }

    /// The pin of `domain`'s disk `target`, if there is one.
    pub fn read(&self, domain: &str, target: &str) -> Result<Option<Pin>, PinError> {
        let path = self.path(domain, target);
        let corrupt = |reason: String| PinError::Corrupt {
            path: path.clone(),
            reason,
        };
        let bytes = match crate::store::dir::read_bounded(&path, MAX_PIN_LEN) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Err(corrupt("too large".into())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(PinError::Io { path, source }),
        };
        let text = String::from_utf8(bytes).map_err(|_| corrupt("not UTF-8".into()))?;
        let pin: Pin = toml::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
        if pin.domain != domain || pin.target != target {
            return Err(corrupt(format!(
                "it is for disk {} of domain {}",
                pin.target, pin.domain
            )));
        }
        if hex::decode::<32>(&pin.sha256).is_none() {
            return Err(corrupt("sha256 is not 64 hex digits".into()));
        }
        Ok(Some(pin))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_round_trip_per_domain_and_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = PinStore::new(dir.path());
        let target = "http://h/indexes/img.cidx";
        assert_eq!(store.read("web1", target).unwrap(), None);
        let pin = Pin::new("web1", target, "img", 2, &[7; 32]);
        store.write(&pin).unwrap();
        assert_eq!(store.read("web1", target).unwrap(), Some(pin.clone()));
        assert_eq!(store.read("web2", target).unwrap(), None, "another domain");
        assert_eq!(store.read("web1", "/other.cidx").unwrap(), None);
        // No two (domain, target) pairs share a file.
        assert_ne!(store.path("ab", "c"), store.path("a", "bc"));

        pin.check(&[7; 32]).unwrap();
        let err = pin.check(&[8; 32]).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, PinError::Mismatch { .. }));
        assert!(
            msg.contains("generation 2") && msg.contains("measure the domain again"),
            "{msg}"
        );
    }

    #[test]
    fn a_damaged_or_moved_pin_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = PinStore::new(dir.path());
        let pin = Pin::new("web1", "/i.cidx", "img", 1, &[1; 32]);
        let path = store.write(&pin).unwrap();
        // Another disk's pin copied over this one's name.
        let other = Pin::new("web2", "/i.cidx", "img", 1, &[1; 32]);
        fs::copy(store.write(&other).unwrap(), &path).unwrap();
        assert!(matches!(
            store.read("web1", "/i.cidx"),
            Err(PinError::Corrupt { .. })
        ));
        for garbage in ["", "domain = 1", "\u{0}\u{1}", &"x".repeat(20 << 10)] {
            fs::write(&path, garbage).unwrap();
            assert!(
                matches!(store.read("web1", "/i.cidx"), Err(PinError::Corrupt { .. })),
                "{garbage:.20}"
            );
        }
        let mut bad = pin;
        bad.sha256 = "zz".into();
        fs::write(&path, toml::to_string(&bad).unwrap()).unwrap();
        assert!(matches!(
            store.read("web1", "/i.cidx"),
            Err(PinError::Corrupt { .. })
        ));
    }
}
