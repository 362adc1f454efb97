//! The lab's inputs, read from `tests/lab/lab.toml`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{LabError, Result};

/// Where the lab config lives, relative to the project root.
pub const CONFIG_PATH: &str = "tests/lab/lab.toml";

/// Debian packages the lab is built from.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DebianConfig {
    pub suite: String,
    pub mirror: String,
    pub xen_package: String,
    pub kernel_package: String,
    pub busybox_package: String,
    pub dom0_packages: Vec<String>,
}

/// The emulated machine Xen boots on.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    /// The QEMU system emulator (a name on PATH or a path).
    pub qemu: String,
    /// QEMU's `-accel` value.
    pub accel: String,
    pub memory_mib: u32,
    pub cpus: u32,
    pub cpu: String,
    pub xen_cmdline: String,
    pub dom0_cmdline: String,
    pub rootfs_size_mib: u32,
    pub payload_size_mib: u32,
    /// Give dom0 a TPM 2.0 (QEMU's TPM TIS backed by a fresh swtpm per run).
    pub tpm: bool,
}

impl MachineConfig {
    /// `CIRC_LAB_QEMU`, `CIRC_LAB_ACCEL` and `CIRC_LAB_CPU` replace the
    /// configured emulator, accelerator and CPU model for one run: for
    /// measuring a change (docs/lab.md, "PVH boot reliability") before it
    /// goes into lab.toml. Overridden runs say so in their log.
    fn apply_env_overrides(&mut self) {
        for (var, field) in [
            ("CIRC_LAB_QEMU", &mut self.qemu),
            ("CIRC_LAB_ACCEL", &mut self.accel),
            ("CIRC_LAB_CPU", &mut self.cpu),
        ] {
            if let Ok(value) = std::env::var(var) {
                if !value.is_empty() {
                    tracing::warn!("{var}={value} overrides lab.toml's {field:?}");
                    *field = value;
                }
            }
        }
    }
}

/// Limits of one scenario run.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub timeout_secs: u64,
}

/// The whole lab configuration plus where it is used.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabConfig {
    pub debian: DebianConfig,
    pub machine: MachineConfig,
    pub run: RunConfig,
    /// Named lists of scenarios, each entry `SCENARIO:HYPERVISORS` (stock,
    /// patched or both): `circ-lab suite NAME` runs one.
    pub suites: BTreeMap<String, Vec<String>>,
    /// The project checkout (holds tests/lab and xen-patches).
    #[serde(skip)]
    pub root: PathBuf,
    /// Where built artifacts are cached.
    #[serde(skip)]
    pub cache_dir: PathBuf,
}

impl LabConfig {
    /// Reads `tests/lab/lab.toml` under the project `root`.
    pub fn load(root: &Path, cache_dir: PathBuf) -> Result<Self> {
        let path = root.join(CONFIG_PATH);
        let text = std::fs::read_to_string(&path).map_err(|source| LabError::ConfigRead {
            path: path.clone(),
            source,
        })?;
        let mut config =
            Self::parse(&text).map_err(|source| LabError::ConfigParse { path, source })?;
        config.root = root.to_path_buf();
        config.machine.apply_env_overrides();
        config.cache_dir = cache_dir;
        Ok(config)
    }

    fn parse(text: &str) -> std::result::Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// The lab's own files (init scripts, scenarios).
    pub fn lab_dir(&self) -> PathBuf {
        self.root.join("tests/lab")
    }

    /// Finds the project root: the nearest ancestor of `start` holding the lab config.
    pub fn find_root(start: &Path) -> Option<PathBuf> {
        start
            .ancestors()
            .find(|dir| dir.join(CONFIG_PATH).is_file())
            .map(Path::to_path_buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> String {
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("lab.toml")).unwrap()
    }

    #[test]
    fn shipped_config_parses() {
        let config = LabConfig::parse(&shipped()).unwrap();
        assert_eq!(config.debian.suite, "bookworm");
        assert!(config
            .debian
            .dom0_packages
            .iter()
            .any(|p| p == "xen-utils-4.17"));
        assert!(
            !config.machine.dom0_cmdline.contains(','),
            "QEMU splits -initrd on commas"
        );
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let text = shipped().replace("[run]", "[run]\nbogus = 1");
        let err = LabConfig::parse(&text).unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }

    #[test]
    fn root_is_found_from_a_subdirectory() {
        let here = Path::new(env!("CARGO_MANIFEST_DIR"));
        let root = LabConfig::find_root(&here.join("src")).unwrap();
        assert!(root.join(CONFIG_PATH).is_file());
    }
}
