//! Building the lab's boot artifacts from Debian packages, each cached by its inputs.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::apt::Package;
use crate::cache::{Cache, Key};
use crate::command::{cmd, output, run};
use crate::{LabConfig, LabError, Result};

/// Modules the dom0 initramfs loads, in dependency order, to mount its
/// virtio root disk (Debian builds all of them as modules).
const DOM0_INITRAMFS_MODULES: &[&str] = &[
    "crc32c_generic",
    "crc16",
    "mbcache",
    "jbd2",
    "ext4",
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "virtio_blk",
];

/// Modules the test guests' initrd loads: a Xen virtual disk with ext4 on it
/// (cas-blk serves guest disks).
const GUEST_MODULES: &[&str] = &[
    "crc32c_generic",
    "crc16",
    "mbcache",
    "jbd2",
    "ext4",
    "xen_blkfront",
];

/// Which hypervisor the lab boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XenFlavor {
    /// Debian's hypervisor binary, as shipped.
    Stock,
    /// Debian's source with the series in `xen-patches/`, built by its script.
    Patched,
}

impl fmt::Display for XenFlavor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            XenFlavor::Stock => "stock",
            XenFlavor::Patched => "patched",
        })
    }
}

/// Everything a run boots, all under the cache directory. Serialized by
/// `circ-lab build --json` for scripts that reuse the lab's cache (the
/// Debian package's install test, the live media).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Artifacts {
    pub flavor: XenFlavor,
    /// The hypervisor as a multiboot ELF (QEMU's `-kernel`).
    pub xen: PathBuf,
    /// The Linux kernel used for dom0 and guests.
    pub vmlinuz: PathBuf,
    pub kernel_version: String,
    /// Initramfs that mounts the dom0 root disk and the run's payload disk.
    pub dom0_initramfs: PathBuf,
    /// The dom0 root filesystem image (never written: runs boot it with snapshot=on).
    pub rootfs: PathBuf,
    /// A busybox initrd for small test guests.
    pub guest_initrd: PathBuf,
    /// Its `/bin/busybox` (Debian's busybox-static), which runs rewritten
    /// for the `tsys` scenario.
    pub busybox: PathBuf,
}

/// Builds (or finds in the cache) every artifact a run with `flavor` needs.
pub fn build(config: &LabConfig, flavor: XenFlavor) -> Result<Artifacts> {
    let cache = Cache::new(&config.cache_dir);
    let suite = &config.debian.suite;

    let kernel_pkg =
        Package::resolve(&config.debian.kernel_package, suite)?.resolve_dependency(suite)?;
    let mut kernel_key = Key::new("kernel");
    kernel_key.text("package", &kernel_pkg.pinned());
    let kernel = cache.get_or_build("kernel", &kernel_key, |out| build_kernel(&kernel_pkg, out))?;
    let kernel_version = read_trimmed(&kernel.join("version"))?;

    let busybox_pkg = Package::resolve(&config.debian.busybox_package, suite)?;
    let mut busybox_key = Key::new("busybox");
    busybox_key.text("package", &busybox_pkg.pinned());
    let busybox = cache
        .get_or_build("busybox", &busybox_key, |out| {
            build_busybox(&busybox_pkg, out)
        })?
        .join("busybox");

    let xen = match flavor {
        XenFlavor::Stock => stock_xen(config, &cache)?,
        XenFlavor::Patched => patched_xen(config)?,
    };

    let lab = config.lab_dir();
    let mut initramfs_key = kernel_key.clone();
    initramfs_key
        .text("busybox", &busybox_key.finish())
        .text("modules", &DOM0_INITRAMFS_MODULES.join(" "))
        .file(&lab.join("dom0/initramfs-init"))?;
    let modules = kernel.join("modules").join(&kernel_version);
    let dom0_initramfs = cache
        .get_or_build("dom0-initramfs", &initramfs_key, |out| {
            let stage = out.join("stage");
            stage_busybox_root(&stage, &busybox, &lab.join("dom0/initramfs-init"))?;
            stage_modules(&stage, &modules, DOM0_INITRAMFS_MODULES)?;
            pack_cpio(&stage, &out.join("initramfs.gz"))?;
            remove_dir(&stage)
        })?
        .join("initramfs.gz");

    let mut guest_key = kernel_key.clone();
    guest_key
        .text("busybox", &busybox_key.finish())
        .text("modules", &GUEST_MODULES.join(" "))
        .file(&lab.join("guest/init"))?;
    let guest_initrd = cache
        .get_or_build("guest-initrd", &guest_key, |out| {
            let stage = out.join("stage");
            stage_busybox_root(&stage, &busybox, &lab.join("guest/init"))?;
            stage_modules(&stage, &modules, GUEST_MODULES)?;
            pack_cpio(&stage, &out.join("initrd.gz"))?;
            remove_dir(&stage)
        })?
        .join("initrd.gz");

    let mut rootfs_key = kernel_key.clone();
    rootfs_key
        .text("suite", suite)
        .text("mirror", &config.debian.mirror)
        .text("packages", &config.debian.dom0_packages.join(","))
        .text("size", &config.machine.rootfs_size_mib.to_string())
        .file(&lab.join("dom0/rootfs-setup"))?;
    let rootfs = cache
        .get_or_build("dom0-rootfs", &rootfs_key, |out| {
            build_rootfs(
                config,
                &kernel.join("modules"),
                &lab.join("dom0/rootfs-setup"),
                out,
            )
        })?
        .join("rootfs.img");

    Ok(Artifacts {
        flavor,
        xen,
        vmlinuz: kernel.join("vmlinuz"),
        kernel_version,
        dom0_initramfs,
        rootfs,
        guest_initrd,
        busybox,
    })
}

fn build_kernel(pkg: &Package, out: &Path) -> Result<()> {
    let root = pkg.unpack(out)?;
    let boot = root.join("boot");
    let vmlinuz = find_file(&boot, |name| name.starts_with("vmlinuz-"))?;
    let version = vmlinuz
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .unwrap_or_default()
        .to_owned();
    rename(&vmlinuz, &out.join("vmlinuz"))?;
    rename(&root.join("lib/modules"), &out.join("modules"))?;
    write(&out.join("version"), version.as_bytes())?;
    cleanup_unpacked(out)
}

fn build_busybox(pkg: &Package, out: &Path) -> Result<()> {
    let root = pkg.unpack(out)?;
    rename(&root.join("bin/busybox"), &out.join("busybox"))?;
    cleanup_unpacked(out)
}

fn stock_xen(config: &LabConfig, cache: &Cache) -> Result<PathBuf> {
    let pkg = Package::resolve(&config.debian.xen_package, &config.debian.suite)?;
    let mut key = Key::new("xen-stock");
    key.text("package", &pkg.pinned());
    let entry = cache.get_or_build("xen-stock", &key, |out| {
        let root = pkg.unpack(out)?;
        let boot = root.join("boot");
        let gz = find_file(&boot, |n| n.starts_with("xen-") && n.ends_with(".gz"))?;
        // QEMU's multiboot loader takes the uncompressed 32-bit ELF.
        let target = out.join("xen");
        run(&mut cmd(
            "sh",
            [
                "-c".as_ref(),
                "gzip -dc \"$1\" > \"$2\"".as_ref(),
                "sh".as_ref(),
                gz.as_os_str(),
                target.as_os_str(),
            ],
        ))?;
        if let Ok(config) = find_file(&boot, |n| n.starts_with("xen-") && n.ends_with(".config")) {
            rename(&config, &out.join("xen.config"))?;
        }
        cleanup_unpacked(out)
    })?;
    Ok(entry.join("xen"))
}

/// Runs the patch series' own build script, which keeps its own cache.
fn patched_xen(config: &LabConfig) -> Result<PathBuf> {
    let script = config.root.join("xen-patches/build.sh");
    let cache = config.cache_dir.join("xen-patched");
    let stdout = output(
        cmd(
            "bash",
            [script.as_os_str(), "--cache".as_ref(), cache.as_os_str()],
        )
        .stderr(std::process::Stdio::inherit()),
    )?;
    let path = stdout.lines().last().map(str::trim).unwrap_or_default();
    let path = PathBuf::from(path);
    if !path.is_file() {
        return Err(LabError::MissingArtifact {
            what: "patched hypervisor (last line of xen-patches/build.sh)".into(),
            path,
        });
    }
    Ok(path)
}

fn build_rootfs(config: &LabConfig, modules: &Path, setup: &Path, out: &Path) -> Result<()> {
    let tree = out.join("tree");
    let include = format!("--include={}", config.debian.dom0_packages.join(","));
    run(&mut cmd(
        "debootstrap",
        [
            "--variant=minbase",
            &include,
            &config.debian.suite,
            &tree.to_string_lossy(),
            &config.debian.mirror,
        ],
    ))?;
    run(&mut cmd(
        "cp",
        [
            "-a".as_ref(),
            modules.as_os_str(),
            tree.join("lib/").as_os_str(),
        ],
    ))?;
    run(&mut cmd("bash", [setup.as_os_str(), tree.as_os_str()]))?;
    let image = out.join("rootfs.img");
    run(&mut cmd(
        "mke2fs",
        [
            "-q".as_ref(),
            "-t".as_ref(),
            "ext4".as_ref(),
            "-L".as_ref(),
            "circ-dom0".as_ref(),
            "-d".as_ref(),
            tree.as_os_str(),
            image.as_os_str(),
            format!("{}M", config.machine.rootfs_size_mib).as_ref(),
        ],
    ))?;
    remove_dir(&tree)
}

/// Lays out a minimal busybox root: `/bin/busybox`, `/init` and mount points.
fn stage_busybox_root(stage: &Path, busybox: &Path, init: &Path) -> Result<()> {
    for dir in ["bin", "dev", "proc", "sys", "newroot", "tmp", "run"] {
        mkdir(&stage.join(dir))?;
    }
    copy(busybox, &stage.join("bin/busybox"))?;
    copy(init, &stage.join("init"))?;
    run(&mut cmd(
        "chmod",
        ["0755".as_ref(), stage.join("init").as_os_str()],
    ))
}

/// Copies kernel modules into `stage/modules` and lists them, in load
/// order, in `stage/modules.order` (busybox `insmod` does no dependency work).
fn stage_modules(stage: &Path, tree: &Path, names: &[&str]) -> Result<()> {
    let module_dir = stage.join("modules");
    mkdir(&module_dir)?;
    let mut order = String::new();
    for (name, path) in find_modules(tree, names)? {
        copy(&path, &module_dir.join(format!("{name}.ko")))?;
        order.push_str(&name);
        order.push('\n');
    }
    write(&stage.join("modules.order"), order.as_bytes())
}

/// Packs `stage` as a gzip'd newc cpio archive, the format Linux unpacks.
pub(crate) fn pack_cpio(stage: &Path, target: &Path) -> Result<()> {
    run(cmd(
        "sh",
        [
            "-c".as_ref(),
            "find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet | gzip -9n > \"$1\"".as_ref(),
            "sh".as_ref(),
            target.as_os_str(),
        ],
    )
    .current_dir(stage))
}

/// Finds each module's `.ko` under a kernel's module tree.
fn find_modules(tree: &Path, names: &[&str]) -> Result<Vec<(String, PathBuf)>> {
    let mut found = BTreeMap::new();
    walk(tree, &mut |path| {
        let file = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if let Some(stem) = file.strip_suffix(".ko") {
            found.insert(stem.replace('-', "_"), path.to_path_buf());
        }
    })?;
    names
        .iter()
        .map(|name| {
            found
                .get(*name)
                .map(|path| ((*name).to_owned(), path.clone()))
                .ok_or_else(|| LabError::MissingArtifact {
                    what: format!("kernel module {name}.ko"),
                    path: tree.to_path_buf(),
                })
        })
        .collect()
}

fn walk(dir: &Path, visit: &mut dyn FnMut(&Path)) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(LabError::io(dir))? {
        let path = entry.map_err(LabError::io(dir))?.path();
        if path.is_dir() {
            walk(&path, visit)?;
        } else {
            visit(&path);
        }
    }
    Ok(())
}

fn find_file(dir: &Path, matches: impl Fn(&str) -> bool) -> Result<PathBuf> {
    std::fs::read_dir(dir)
        .map_err(LabError::io(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(&matches))
        .ok_or_else(|| LabError::MissingArtifact {
            what: "expected file".into(),
            path: dir.to_path_buf(),
        })
}

/// Drops the downloaded .deb and what is left of its unpacked tree.
fn cleanup_unpacked(out: &Path) -> Result<()> {
    remove_dir(&out.join("root"))?;
    for entry in std::fs::read_dir(out).map_err(LabError::io(out))? {
        let path = entry.map_err(LabError::io(out))?.path();
        if path.extension().is_some_and(|e| e == "deb") {
            std::fs::remove_file(&path).map_err(LabError::io(&path))?;
        }
    }
    Ok(())
}

fn read_trimmed(path: &Path) -> Result<String> {
    Ok(std::fs::read_to_string(path)
        .map_err(LabError::io(path))?
        .trim()
        .to_owned())
}

pub(crate) fn mkdir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(LabError::io(path))
}

pub(crate) fn copy(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to)
        .map(drop)
        .map_err(LabError::io(from))
}

pub(crate) fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(LabError::io(path))
}

fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(LabError::io(from))
}

pub(crate) fn remove_dir(path: &Path) -> Result<()> {
    std::fs::remove_dir_all(path).map_err(LabError::io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_are_found_by_normalised_name_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path();
        std::fs::create_dir_all(tree.join("kernel/crypto")).unwrap();
        std::fs::create_dir_all(tree.join("kernel/fs/ext4")).unwrap();
        std::fs::write(tree.join("kernel/crypto/crc32c-generic.ko"), b"").unwrap();
        std::fs::write(tree.join("kernel/fs/ext4/ext4.ko"), b"").unwrap();
        let found = find_modules(tree, &["ext4", "crc32c_generic"]).unwrap();
        assert_eq!(found[0].0, "ext4");
        assert_eq!(found[1].0, "crc32c_generic");
        let err = find_modules(tree, &["virtio_blk"]).unwrap_err();
        assert!(err.to_string().contains("virtio_blk"), "{err}");
    }

    #[test]
    fn json_names_every_path_and_the_flavor_in_lowercase() {
        // `circ-lab build --json` is read by scripts (jq -r .rootfs).
        let a = Artifacts {
            flavor: XenFlavor::Patched,
            xen: "/c/xen".into(),
            vmlinuz: "/c/vmlinuz".into(),
            kernel_version: "6.1.0-50-amd64".into(),
            dom0_initramfs: "/c/initramfs.gz".into(),
            rootfs: "/c/rootfs.img".into(),
            guest_initrd: "/c/initrd.gz".into(),
            busybox: "/c/busybox".into(),
        };
        let v = serde_json::to_value(&a).unwrap();
        assert_eq!(v["flavor"], "patched");
        assert_eq!(v["rootfs"], "/c/rootfs.img");
        assert_eq!(v["dom0_initramfs"], "/c/initramfs.gz");
        assert_eq!(v["kernel_version"], "6.1.0-50-amd64");
        assert_eq!(v.as_object().unwrap().len(), 8);
    }

    #[test]
    fn cpio_archive_is_produced() {
        let dir = tempfile::tempdir().unwrap();
        let stage = dir.path().join("stage");
        std::fs::create_dir_all(stage.join("bin")).unwrap();
        std::fs::write(stage.join("init"), b"#!/bin/sh\n").unwrap();
        let target = dir.path().join("out.gz");
        pack_cpio(&stage, &target).unwrap();
        let listing = output(&mut cmd(
            "sh",
            [
                "-c",
                &format!("gzip -dc {} | cpio -it --quiet", target.display()),
            ],
        ))
        .unwrap();
        assert!(listing.lines().any(|l| l == "init"), "{listing}");
        assert!(listing.lines().any(|l| l == "bin"), "{listing}");
    }
}
