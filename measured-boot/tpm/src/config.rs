//! Where the TPM commands find the TPM, the event log and their state
//! directory. Each setting comes from, in increasing priority: the default,
//! the TOML file, the environment, the caller's flags. The layers are parsed
//! first ([`TpmSettings`]), then merged and validated into a [`TpmConfig`].
//!
//! ```toml
//! # /etc/circular/tpm.toml (or CIRC_TPM_CONFIG, or the caller's path)
//! tcti = "device:/dev/tpmrm0"
//! log = "/var/lib/circular/measurements.log"
//! state_dir = "/var/lib/circular"
//! ```

use std::path::{Path, PathBuf};
use std::str::FromStr as _;

use serde::Deserialize;
use tss_esapi::tcti_ldr::TctiNameConf;

/// The configuration file read when none is named.
pub const CONFIG_PATH: &str = "/etc/circular/tpm.toml";
pub const DEFAULT_LOG: &str = "/var/lib/circular/measurements.log";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/circular";
/// The kernel's resource manager (several programs can share the TPM), used
/// when it exists; else the raw device.
const RESOURCE_MANAGER: &str = "/dev/tpmrm0";

/// Environment variables, one per setting, and the one naming the file.
pub const ENV_TCTI: &str = "CIRC_TPM_TCTI";
pub const ENV_LOG: &str = "CIRC_MEASURE_LOG";
pub const ENV_STATE_DIR: &str = "CIRC_STATE_DIR";
pub const ENV_CONFIG: &str = "CIRC_TPM_CONFIG";

/// One layer of settings (the file's keys, the environment, or the flags);
/// unset fields leave the layer below in place.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpmSettings {
    /// TCTI, e.g. `device:/dev/tpm0` or `swtpm:host=127.0.0.1,port=2321`.
    pub tcti: Option<String>,
    /// The measurement event log.
    pub log: Option<PathBuf>,
    /// Holds the attestation key blob.
    pub state_dir: Option<PathBuf>,
}

impl TpmSettings {
    pub fn parse(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// The environment's layer; an empty variable counts as unset.
    pub fn from_env() -> Self {
        let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
        Self {
            tcti: var(ENV_TCTI).map(|v| v.to_string_lossy().into_owned()),
            log: var(ENV_LOG).map(PathBuf::from),
            state_dir: var(ENV_STATE_DIR).map(PathBuf::from),
        }
    }

    /// `self` over `lower`.
    fn over(self, lower: Self) -> Self {
        Self {
            tcti: self.tcti.or(lower.tcti),
            log: self.log.or(lower.log),
            state_dir: self.state_dir.or(lower.state_dir),
        }
    }
}

/// The settings to use, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmConfig {
    pub tcti: String,
    pub log: PathBuf,
    pub state_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid TPM configuration")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error(
        "`{0}` is not a TCTI (examples: `device:/dev/tpmrm0`, `swtpm:host=127.0.0.1,port=2321`)"
    )]
    BadTcti(String),
    #[error("`{0}` is set but empty")]
    Empty(&'static str),
}

impl TpmConfig {
    /// Reads the file (`config_file`, else `CIRC_TPM_CONFIG`, else
    /// `/etc/circular/tpm.toml` if it exists: only a file nobody named may be
    /// missing), then layers the environment and `flags` over it.
    pub fn load(config_file: Option<&Path>, flags: TpmSettings) -> Result<Self, ConfigError> {
        let named = config_file.map(Path::to_owned).or_else(|| {
            std::env::var_os(ENV_CONFIG)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        });
        let file = match named {
            Some(path) => read_file(&path)?,
            None => match read_file(Path::new(CONFIG_PATH)) {
                Err(ConfigError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    TpmSettings::default()
                }
                other => other?,
            },
        };
        Self::resolve(file, TpmSettings::from_env(), flags)
    }

    /// Merges the layers (lowest first), fills in defaults and validates.
    pub fn resolve(
        file: TpmSettings,
        env: TpmSettings,
        flags: TpmSettings,
    ) -> Result<Self, ConfigError> {
        let s = flags.over(env).over(file);
        let tcti = match s.tcti {
            Some(t) => t,
            None if Path::new(RESOURCE_MANAGER).exists() => format!("device:{RESOURCE_MANAGER}"),
            None => "device:/dev/tpm0".into(),
        };
        if TctiNameConf::from_str(&tcti).is_err() {
            return Err(ConfigError::BadTcti(tcti));
        }
        let path = |value: Option<PathBuf>, key, default: &str| match value {
            Some(p) if p.as_os_str().is_empty() => Err(ConfigError::Empty(key)),
            Some(p) => Ok(p),
            None => Ok(PathBuf::from(default)),
        };
        Ok(Self {
            tcti,
            log: path(s.log, "log", DEFAULT_LOG)?,
            state_dir: path(s.state_dir, "state_dir", DEFAULT_STATE_DIR)?,
        })
    }
}

fn read_file(path: &Path) -> Result<TpmSettings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_owned(),
        source,
    })?;
    TpmSettings::parse(&text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(tcti: Option<&str>, log: Option<&str>, state: Option<&str>) -> TpmSettings {
        TpmSettings {
            tcti: tcti.map(str::to_owned),
            log: log.map(PathBuf::from),
            state_dir: state.map(PathBuf::from),
        }
    }

    #[test]
    fn flags_beat_the_environment_which_beats_the_file() {
        let file = layer(Some("device:/dev/tpm0"), Some("/f.log"), Some("/f"));
        let env = layer(Some("swtpm:port=1"), Some("/e.log"), None);
        let flags = layer(Some("swtpm:port=2"), None, None);
        let c = TpmConfig::resolve(file, env, flags).unwrap();
        assert_eq!(c.tcti, "swtpm:port=2");
        assert_eq!(c.log, Path::new("/e.log"));
        assert_eq!(c.state_dir, Path::new("/f"));

        let c = TpmConfig::resolve(
            TpmSettings::default(),
            TpmSettings::default(),
            layer(Some("device:/dev/tpm0"), None, None),
        )
        .unwrap();
        assert_eq!(c.log, Path::new(DEFAULT_LOG));
        assert_eq!(c.state_dir, Path::new(DEFAULT_STATE_DIR));
    }

    #[test]
    fn bad_values_are_refused() {
        let none = TpmSettings::default;
        assert!(matches!(
            TpmConfig::resolve(none(), none(), layer(Some("carrier-pigeon"), None, None)),
            Err(ConfigError::BadTcti(t)) if t == "carrier-pigeon"
        ));
        assert!(matches!(
            TpmConfig::resolve(
                layer(Some("device:/dev/tpm0"), Some(""), None),
                none(),
                none()
            ),
            Err(ConfigError::Empty("log"))
        ));
        assert!(TpmSettings::parse("tcti = \"device\"\ntctii = 1\n").is_err());
        assert_eq!(
            TpmSettings::parse("state_dir = \"/s\"\n").unwrap(),
            layer(None, None, Some("/s"))
        );
    }

    #[test]
    fn a_named_file_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("tpm.toml");
        assert!(matches!(
            TpmConfig::load(Some(&missing), TpmSettings::default()),
            Err(ConfigError::Io { .. })
        ));
        std::fs::write(&missing, "tcti = \"swtpm:port=9\"\n").unwrap();
        let flags = layer(None, None, Some("/flag"));
        let c = TpmConfig::load(Some(&missing), flags).unwrap();
        assert_eq!(c.state_dir, Path::new("/flag"));
    }
}
