//! ed25519 key files: one line, a tag then 64 hex digits.
//!
//! ```text
//! KEY      circ-cas-secret-key-v1 <hex seed>      (mode 0600)
//! KEY.pub  circ-cas-public-key-v1 <hex key>
//! ```

use std::fmt;
use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
/// A publisher's public key (ed25519), as `read_public` returns it.
pub use ed25519_dalek::VerifyingKey;

const SECRET_TAG: &str = "circ-cas-secret-key-v1";
const PUBLIC_TAG: &str = "circ-cas-public-key-v1";

/// A signing key whose Debug never shows the secret.
pub struct SecretKey(SigningKey);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SecretKey(public {})",
            fingerprint(&self.0.verifying_key())
        )
    }
}

impl SecretKey {
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(Self(SigningKey::from_bytes(&seed)))
    }

    pub fn signing_key(&self) -> &SigningKey {
        &self.0
    }

    pub fn public(&self) -> VerifyingKey {
        self.0.verifying_key()
    }

    /// Writes KEY (0600) and KEY.pub; refuses to overwrite either.
    pub fn write_pair(&self, path: &Path) -> Result<PathBuf, KeyError> {
        let pub_path = public_path(path);
        let secret = format!("{SECRET_TAG} {}\n", crate::hex::encode(&self.0.to_bytes()));
        write_new(path, secret.as_bytes(), 0o600)?;
        let public = format!(
            "{PUBLIC_TAG} {}\n",
            crate::hex::encode(self.public().as_bytes())
        );
        write_new(&pub_path, public.as_bytes(), 0o644)?;
        Ok(pub_path)
    }

    pub fn read(path: &Path) -> Result<Self, KeyError> {
        let seed = read_tagged(path, SECRET_TAG)?;
        Ok(Self(SigningKey::from_bytes(&seed)))
    }
}

/// Reads a KEY.pub file.
pub fn read_public(path: &Path) -> Result<VerifyingKey, KeyError> {
    let bytes = read_tagged(path, PUBLIC_TAG)?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::Format {
        path: path.to_owned(),
        reason: "not a valid ed25519 public key",
    })
}

/// Short, printable identity of a public key: its first 8 bytes in hex.
pub fn fingerprint(key: &VerifyingKey) -> String {
    crate::hex::encode(&key.as_bytes()[..8])
}

pub fn public_path(secret: &Path) -> PathBuf {
    let mut name = secret.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read key file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write key file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a circ-cas key file: {reason}")]
    Format { path: PathBuf, reason: &'static str },
    #[error("no randomness from the OS: {0}")]
    Random(String),
}

fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), KeyError> {
    let wrap = |source| KeyError::Write {
        path: path.to_owned(),
        source,
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(wrap)?;
    file.write_all(contents).map_err(wrap)?;
    file.sync_all().map_err(wrap)
}

fn read_tagged(path: &Path, tag: &str) -> Result<[u8; 32], KeyError> {
    let format = |reason| KeyError::Format {
        path: path.to_owned(),
        reason,
    };
    let meta = fs::metadata(path).map_err(|source| KeyError::Read {
        path: path.to_owned(),
        source,
    })?;
    // A key file is one short line; do not slurp something huge by mistake.
    if meta.len() > 1024 {
        return Err(format("too large"));
    }
    let text = fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.to_owned(),
        source,
    })?;
    let (found_tag, hex) = text
        .trim()
        .split_once(' ')
        .ok_or_else(|| format("expected `TAG HEX`"))?;
    if found_tag != tag {
        return Err(format(if tag == PUBLIC_TAG {
            "expected a public key (KEY.pub)"
        } else {
            "expected a secret key"
        }));
    }
    crate::hex::decode::<32>(hex.trim()).ok_or_else(|| format("expected 64 hex digits"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn pair_round_trips_and_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let key = SecretKey::generate().unwrap();
        let pub_path = key.write_pair(&path).unwrap();
        assert_eq!(pub_path, dir.path().join("key.pub"));
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(SecretKey::read(&path).unwrap().public(), key.public());
        assert_eq!(read_public(&pub_path).unwrap(), key.public());
        assert!(key.write_pair(&path).is_err());
        // The two kinds are not interchangeable.
        assert!(read_public(&path).is_err());
        assert!(SecretKey::read(&pub_path).is_err());
        assert!(!format!("{key:?}").contains(&crate::hex::encode(&key.0.to_bytes())));
    }
}
