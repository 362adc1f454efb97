//! Debian packages: resolving versions in the configured suite, downloading
//! and unpacking them without installing anything on the host.

use std::path::{Path, PathBuf};

use crate::command::{cmd, output, run};
use crate::{LabError, Result};

/// A binary package pinned to the version its suite carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Package {
    pub name: String,
    pub version: String,
}

impl Package {
    /// Resolves `name` to the version in `suite`'s main component.
    /// Newer versions from other pockets (security, backports) are ignored so
    /// that everything in the lab comes from one consistent suite.
    pub(crate) fn resolve(name: &str, suite: &str) -> Result<Self> {
        let madison = output(&mut cmd("apt-cache", ["madison", name]))?;
        let version =
            version_in_suite(&madison, suite).ok_or_else(|| LabError::PackageNotFound {
                package: name.to_owned(),
                suite: suite.to_owned(),
            })?;
        Ok(Package {
            name: name.to_owned(),
            version,
        })
    }

    /// Follows a metapackage (such as `linux-image-amd64`) to the package it depends on.
    pub(crate) fn resolve_dependency(&self, suite: &str) -> Result<Self> {
        let show = output(&mut cmd("apt-cache", ["show", &self.pinned()]))?;
        let target = first_dependency(&show).ok_or_else(|| LabError::PackageNotFound {
            package: format!("dependency of {}", self.pinned()),
            suite: suite.to_owned(),
        })?;
        Package::resolve(&target, suite)
    }

    /// `name=version`, as apt takes it.
    pub(crate) fn pinned(&self) -> String {
        format!("{}={}", self.name, self.version)
    }

    /// Downloads the .deb into `dir` and unpacks it into `dir/root`.
    pub(crate) fn unpack(&self, dir: &Path) -> Result<PathBuf> {
        run(cmd("apt-get", ["download", "-q", &self.pinned()]).current_dir(dir))?;
        let deb = std::fs::read_dir(dir)
            .map_err(LabError::io(dir))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .find(|p| {
                p.extension().is_some_and(|e| e == "deb")
                    && p.file_name().is_some_and(|n| {
                        n.to_string_lossy().starts_with(&format!("{}_", self.name))
                    })
            })
            .ok_or_else(|| LabError::MissingArtifact {
                what: format!("{}.deb", self.name),
                path: dir.to_path_buf(),
            })?;
        let root = dir.join("root");
        run(&mut cmd(
            "dpkg-deb",
            ["-x".as_ref(), deb.as_os_str(), root.as_os_str()],
        ))?;
        Ok(root)
    }
}

/// Picks the version `apt-cache madison` lists for `<suite>/main`.
fn version_in_suite(madison: &str, suite: &str) -> Option<String> {
    let wanted = format!("{suite}/main");
    madison.lines().find_map(|line| {
        let mut fields = line.split('|').map(str::trim);
        let (_name, version, source) = (fields.next()?, fields.next()?, fields.next()?);
        source
            .split_whitespace()
            .any(|token| token == wanted)
            .then(|| version.to_owned())
    })
}

/// The first package named in a `Depends:` field of `apt-cache show` output.
fn first_dependency(show: &str) -> Option<String> {
    let depends = show.lines().find_map(|l| l.strip_prefix("Depends:"))?;
    let first = depends.split([',', '|']).next()?.trim();
    let name = first.split_whitespace().next()?;
    (!name.is_empty()).then(|| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MADISON: &str = "\
xen-hypervisor-4.17-amd64 | 4.17.7+13-g2445b30a44-0+deb12u1 | http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
xen-hypervisor-4.17-amd64 | 4.17.5+72-g01140da4e8-1 | http://deb.debian.org/debian bookworm/main amd64 Packages
";

    #[test]
    fn picks_the_suite_not_the_security_pocket() {
        assert_eq!(
            version_in_suite(MADISON, "bookworm").as_deref(),
            Some("4.17.5+72-g01140da4e8-1")
        );
        assert_eq!(
            version_in_suite(MADISON, "bookworm-security").as_deref(),
            Some("4.17.7+13-g2445b30a44-0+deb12u1")
        );
        assert_eq!(version_in_suite(MADISON, "trixie"), None);
        assert_eq!(version_in_suite("garbage\n| |\n", "bookworm"), None);
    }

    #[test]
    fn follows_the_first_dependency() {
        let show = "Package: linux-image-amd64\nVersion: 6.1.176-1\nDepends: linux-image-6.1.0-50-amd64 (= 6.1.176-1)\n";
        assert_eq!(
            first_dependency(show).as_deref(),
            Some("linux-image-6.1.0-50-amd64")
        );
        assert_eq!(first_dependency("Package: x\n"), None);
        assert_eq!(first_dependency("Depends: \n"), None);
    }
}
