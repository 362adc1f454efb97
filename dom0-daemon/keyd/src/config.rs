//! `/etc/circular/keyd.toml`: which rolled-out applications `circ-keyd`
//! loads into Xen, for which domains. The TPM is found as for every `circ`
//! TPM command (`/etc/circular/tpm.toml`, `CIRC_TPM_*`).
//!
//! ```toml
//! [[app]]
//! package = "/var/lib/circular/tsys/hello/hello.toml"   # rolled out ([sealed])
//! domain = "web1"                                       # name or domid
//! hand_over = true                                      # token to the guest's xenstore
//! ```

use std::path::{Path, PathBuf};

use circ_hv::{DomId, Transaction, XenStore};
use serde::Deserialize;

use crate::KeydError;

pub const CONFIG_PATH: &str = "/etc/circular/keyd.toml";

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeydConfig {
    #[serde(default)]
    pub app: Vec<AppEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppEntry {
    pub package: PathBuf,
    pub domain: String,
    #[serde(default = "yes")]
    pub hand_over: bool,
}

fn yes() -> bool {
    true
}

impl KeydConfig {
    pub fn parse(text: &str) -> Result<Self, KeydError> {
        toml::from_str(text)
            .map_err(|e| KeydError::Package(format!("keyd config: {}", e.message())))
    }

    pub fn read(path: &Path) -> Result<Self, KeydError> {
        let text = std::fs::read_to_string(path).map_err(|e| KeydError::io(path, e))?;
        Self::parse(&text)
    }
}

/// A domain named by domid or by name (`/local/domain/N/name`, which the
/// guest cannot write).
pub fn resolve_domain<X: XenStore + ?Sized>(xs: &X, domain: &str) -> Result<DomId, KeydError> {
    if let Ok(id) = domain.parse::<u16>() {
        return Ok(DomId(id));
    }
    for entry in xs.directory(Transaction::NONE, "/local/domain")? {
        let Ok(id) = entry.parse::<u16>() else {
            continue;
        };
        let path = format!("/local/domain/{id}/name");
        if xs.read_string(Transaction::NONE, &path).ok().as_deref() == Some(domain) {
            return Ok(DomId(id));
        }
    }
    Err(KeydError::Package(format!(
        "no running domain named `{domain}`"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_apps_and_refuses_unknown_keys() {
        let c = KeydConfig::parse(
            "[[app]]\npackage = \"/p/a.toml\"\ndomain = \"web1\"\n[[app]]\npackage = \"/p/b.toml\"\ndomain = \"7\"\nhand_over = false\n",
        )
        .unwrap();
        assert_eq!(c.app.len(), 2);
        assert!(c.app[0].hand_over);
        assert!(!c.app[1].hand_over);
        let err = KeydConfig::parse("[[app]]\npackage = \"/p\"\ndomain = \"x\"\nkey = \"00\"\n")
            .unwrap_err();
        assert!(err.to_string().contains("unknown field `key`"), "{err}");
        assert_eq!(KeydConfig::parse("").unwrap(), KeydConfig::default());
    }
}
