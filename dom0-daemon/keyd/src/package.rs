//! Application packages (`circ-tsys-app/1`): `NAME.toml` beside the sealed
//! program `NAME.cts1`. The manifest holds k1 in exactly one form: `[bound]`
//! to a host's bind key (deploy, migrate) or `[sealed]` to its PCRs
//! (rollout). The program is never decrypted in dom0.
//!
//! ```toml
//! format = "circ-tsys-app/1"
//! name = "hello"
//! file_id = "9f2c0e..."     # u64, hex: the CTS1 file_id of the program
//! plain_len = 812345
//! code = "hello.cts1"
//! code_sha256 = "..."
//! [bound]                   # or [sealed]
//! host_key = "..."  ephemeral = "..."  nonce = "..."  wrapped = "..."
//! ```

use std::path::{Path, PathBuf};

use circ_measured_boot::PcrSet;
use circ_tpm::{BindKeyBlob, Tpm};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::bind::{self, Bound, HostKey};
use crate::sealed::{self, SealedKey};
use crate::{KeydError, TsysKey};

pub const FORMAT: &str = "circ-tsys-app/1";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub name: String,
    /// CTS1 `file_id`, 16 hex digits (TOML integers stop at 2^63).
    pub file_id: String,
    pub plain_len: u64,
    /// The sealed program, relative to the manifest's directory.
    pub code: String,
    pub code_sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound: Option<Bound>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<SealedKey>,
}

/// A manifest and where it was read from.
#[derive(Debug, Clone)]
pub struct Package {
    pub manifest: Manifest,
    pub dir: PathBuf,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && !name.starts_with('.')
}

impl Manifest {
    /// What a bound key is tied to: this package's identity.
    fn context(&self) -> Vec<u8> {
        format!(
            "{FORMAT}\n{}\n{}\n{}\n{}",
            self.name, self.file_id, self.plain_len, self.code_sha256
        )
        .into_bytes()
    }

    pub fn file_id(&self) -> Result<u64, KeydError> {
        u64::from_str_radix(&self.file_id, 16)
            .map_err(|_| KeydError::Package(format!("file_id `{}` is not hex", self.file_id)))
    }

    pub fn from_toml(text: &str) -> Result<Self, KeydError> {
        let m: Manifest =
            toml::from_str(text).map_err(|e| KeydError::Package(e.message().to_string()))?;
        if m.format != FORMAT {
            return Err(KeydError::Package(format!(
                "format `{}` is not {FORMAT}",
                m.format
            )));
        }
        if !valid_name(&m.name) || !valid_name(&m.code) {
            return Err(KeydError::Package(
                "name and code must be plain file names".into(),
            ));
        }
        m.file_id()?;
        if m.bound.is_some() == m.sealed.is_some() {
            return Err(KeydError::Package(
                "exactly one of [bound] and [sealed] must be present".into(),
            ));
        }
        Ok(m)
    }

    pub fn to_toml(&self) -> String {
        // Strings, integers and tables of them always serialize.
        toml::to_string(self).unwrap_or_default()
    }

    /// k1 from whichever form the manifest holds: unbound with this host's
    /// bind key, or unsealed on the sealed PCRs.
    pub fn key(
        &self,
        tpm: &mut impl Tpm,
        bind_key: Option<&BindKeyBlob>,
    ) -> Result<TsysKey, KeydError> {
        match (&self.bound, &self.sealed) {
            (Some(bound), _) => {
                let bind_key = bind_key.ok_or(KeydError::KeyForm("host bind"))?;
                bind::unbind(tpm, bind_key, bound, &self.context())
            }
            (None, Some(sealed)) => sealed::unseal_key(tpm, sealed),
            (None, None) => Err(KeydError::KeyForm("bound or sealed")),
        }
    }

    /// The same package with k1 bound to `host` instead.
    pub fn bound_to(&self, key: &TsysKey, host: &HostKey) -> Result<Self, KeydError> {
        let mut out = self.clone();
        out.sealed = None;
        out.bound = Some(bind::bind(host, key, &self.context())?);
        Ok(out)
    }

    /// The same package with k1 sealed to this host's `pcrs`.
    pub fn sealed_to(
        &self,
        tpm: &mut impl Tpm,
        key: &TsysKey,
        pcrs: &PcrSet,
    ) -> Result<Self, KeydError> {
        let mut out = self.clone();
        out.bound = None;
        out.sealed = Some(sealed::seal_key(tpm, key, pcrs)?);
        Ok(out)
    }
}

/// Encrypts `program` into CTS1 under a fresh k1 bound to `host`: the
/// manifest and the sealed program. k1 is dropped (zeroized) on return.
pub fn deploy(
    name: &str,
    program: &[u8],
    host: &HostKey,
) -> Result<(Manifest, Vec<u8>), KeydError> {
    if !valid_name(name) {
        return Err(KeydError::Package(format!(
            "`{name}` is not a plain name (letters, digits, -_.)"
        )));
    }
    let key = TsysKey::random().map_err(|e| KeydError::io(Path::new("/dev/urandom"), e))?;
    let mut id = [0u8; 8];
    getrandom::fill(&mut id).map_err(KeydError::Random)?;
    let file_id = u64::from_le_bytes(id);
    let code = circ_tsys_seal::seal_file(key.as_bytes(), file_id, program)?;
    let manifest = Manifest {
        format: FORMAT.into(),
        name: name.into(),
        file_id: format!("{file_id:016x}"),
        plain_len: program.len() as u64,
        code: format!("{name}.cts1"),
        code_sha256: hex::encode(Sha256::digest(&code)),
        bound: None,
        sealed: None,
    };
    let manifest = manifest.bound_to(&key, host)?;
    Ok((manifest, code))
}

impl Package {
    /// Reads a manifest and checks its program's digest.
    pub fn read(path: &Path) -> Result<Self, KeydError> {
        let text = std::fs::read_to_string(path).map_err(|e| KeydError::io(path, e))?;
        let manifest = Manifest::from_toml(&text)?;
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let pkg = Self { manifest, dir };
        let code = pkg.code()?;
        let digest = hex::encode(Sha256::digest(&code));
        if digest != pkg.manifest.code_sha256 {
            return Err(KeydError::Package(format!(
                "{} does not match the manifest (sha256 {digest})",
                pkg.code_path().display()
            )));
        }
        Ok(pkg)
    }

    pub fn code_path(&self) -> PathBuf {
        self.dir.join(&self.manifest.code)
    }

    pub fn code(&self) -> Result<Vec<u8>, KeydError> {
        let path = self.code_path();
        std::fs::read(&path).map_err(|e| KeydError::io(&path, e))
    }

    /// Writes `manifest` and `code` into `dir` (created), each through a
    /// temporary file and a rename. Returns the manifest's path.
    pub fn write(dir: &Path, manifest: &Manifest, code: &[u8]) -> Result<PathBuf, KeydError> {
        std::fs::create_dir_all(dir).map_err(|e| KeydError::io(dir, e))?;
        write_atomic(&dir.join(&manifest.code), code)?;
        let path = dir.join(format!("{}.toml", manifest.name));
        write_atomic(&path, manifest.to_toml().as_bytes())?;
        Ok(path)
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), KeydError> {
    use std::io::Write as _;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        // A crash leaves the old file or the whole new one, never a torn one.
        f.sync_all()
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(KeydError::io(&tmp, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| KeydError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(seed: u8) -> HostKey {
        let secret = p256::SecretKey::from_slice(&[seed; 32]).unwrap();
        HostKey::from_sec1(secret.public_key().to_sec1_bytes().as_ref()).unwrap()
    }

    fn manifest() -> Manifest {
        deploy("hello", b"program", &host(7)).unwrap().0
    }

    #[test]
    fn manifests_round_trip_and_hold_no_key() {
        let m = manifest();
        let text = m.to_toml();
        assert_eq!(Manifest::from_toml(&text).unwrap(), m);
        assert!(text.contains("[bound]") && !text.contains("[sealed]"));
        assert_eq!(m.plain_len, 7);
        assert_eq!(m.code, "hello.cts1");
    }

    #[test]
    fn hostile_manifests_are_refused() {
        let good = manifest().to_toml();
        let file_id = good.lines().find(|l| l.starts_with("file_id")).unwrap();
        let cases = [
            (good.replace("circ-tsys-app/1", "circ-tsys-app/2"), "format"),
            (format!("extra = 1\n{good}"), "unknown field"),
            (
                good.replace("hello.cts1", "../../etc/shadow"),
                "plain file names",
            ),
            (
                good.replace("name = \"hello\"", "name = \".x\""),
                "plain file names",
            ),
            (good.replace("[bound]", "[elsewhere]"), "unknown field"),
            (good.replace(file_id, "file_id = \"xyz\""), "is not hex"),
        ];
        for (text, expected) in cases {
            let err = Manifest::from_toml(&text).unwrap_err().to_string();
            assert!(err.contains(expected), "{expected}: {err}");
        }
        let mut neither = manifest();
        neither.bound = None;
        let err = Manifest::from_toml(&neither.to_toml()).unwrap_err();
        assert!(err.to_string().contains("exactly one"), "{err}");
    }

    #[test]
    fn deploy_refuses_names_that_are_not_plain() {
        for name in ["", "a/b", "..", ".hidden", &"x".repeat(65)] {
            assert!(deploy(name, b"p", &host(9)).is_err(), "{name:?}");
        }
    }
}
