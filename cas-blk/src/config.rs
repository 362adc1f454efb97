//! Client settings from a TOML file (e.g. `/etc/circular/cas.toml`), for
//! commands started by scripts (the `block-circ` hotplug script) rather than
//! by hand. Precedence: file < environment < flag; the CLI applies it.
//!
//! ```toml
//! pubkey = "/etc/circular/cas.pub"     # publisher's public key
//! cache = "/var/cache/circular/cas"    # chunk cache (untrusted)
//! cache_mib = 4096
//! mirrors = ["http://10.0.0.2:8080/"]  # extra store roots
//! state_dir = "/var/lib/circular/cas"  # anti-rollback state (this is the default)
//! image = "debian-12"                  # the image asked for, when the index
//!                                      # URL's file name is not NAME.cidx
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    pub pubkey: Option<PathBuf>,
    pub cache: Option<PathBuf>,
    pub cache_mib: Option<u64>,
    #[serde(default)]
    pub mirrors: Vec<String>,
    pub state_dir: Option<PathBuf>,
    pub image: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid cas-blk client configuration")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
}

impl ClientConfig {
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    pub fn parse(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses_unknown_keys() {
        let c = ClientConfig::parse(
            "pubkey = \"/k.pub\"\ncache = \"/c\"\ncache_mib = 64\nmirrors = [\"http://m/\"]\n\
             state_dir = \"/s\"\nimage = \"img\"\n",
        )
        .unwrap();
        assert_eq!(c.state_dir.as_deref(), Some(Path::new("/s")));
        assert_eq!(c.image.as_deref(), Some("img"));
        assert_eq!(c.pubkey.as_deref(), Some(Path::new("/k.pub")));
        assert_eq!(c.cache_mib, Some(64));
        assert_eq!(c.mirrors, vec!["http://m/".to_owned()]);
        assert_eq!(ClientConfig::parse("").unwrap(), ClientConfig::default());
        assert!(ClientConfig::parse("pubkey = \"/k\"\npubkye = 1\n").is_err());
    }
}
