#!/usr/bin/env bash
# Builds circular-live.iso (docs/live.md), as root: a hybrid BIOS + UEFI ISO
# (grub-mkrescue, xorriso) whose GRUB boots the lab's patched Xen through
# multiboot2 with Debian's dom0 kernel and a live initramfs; dom0's root is
# a squashfs of the lab's dom0 root file system with the Debian package
# `circular` installed, mounted under a tmpfs overlay.
#
#   live/build.sh [--deb FILE]      (scripts/media build)
#
# The ISO is cached like the lab's artifacts, by its inputs (the hypervisor,
# kernel, busybox and package files, the lab's root file system entry, every
# file of live/ but boot.sh): ${CIRC_LAB_CACHE:-/var/cache/circ-lab}/live-<16 hex>/. The
# last line of stdout is the ISO's path; everything else goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
live=$repo/live
# shellcheck source=scripts/lib/dom0-root.sh
. scripts/lib/dom0-root.sh

say() { printf 'live: %s\n' "$*" >&2; }
die() {
    say "FAIL: $*"
    exit 1
}

deb=
while (($#)); do
    case $1 in
    --deb)
        (($# >= 2)) || die "--deb needs a file"
        deb=$(realpath -- "$2")
        shift 2
        ;;
    *) die "unknown argument: $1 (usage: live/build.sh [--deb FILE])" ;;
    esac
done
((EUID == 0)) || die "must run as root (mount, chroot)"
for tool in grub-mkrescue xorriso mformat mksquashfs jq cpio gzip chroot mount sha256sum; do
    command -v "$tool" >/dev/null || die "$tool is missing (scripts/setup installs it)"
done
[[ -d /usr/lib/grub/i386-pc && -d /usr/lib/grub/x86_64-efi ]] ||
    die "GRUB's BIOS or UEFI modules are missing (grub-pc-bin, grub-efi-amd64-bin)"

lab=$repo/target/release/circ-lab
[[ -x $lab ]] || die "no $lab: run scripts/build"
artifacts=$("$lab" build --xen patched --json)
field() { jq -er ".$1" <<<"$artifacts"; }
xen=$(field xen)
vmlinuz=$(field vmlinuz)
kver=$(field kernel_version)
rootfs=$(field rootfs)
busybox=$(field busybox)
if [[ -z $deb ]]; then
    deb=$(scripts/deb | tail -n 1)
fi
for file in "$xen" "$vmlinuz" "$rootfs" "$busybox" "$deb"; do
    [[ -f $file ]] || die "missing input $file"
done

# --- the cache key ------------------------------------------------------------
# The root file system's lab entry is named by its own input key; the rest
# is hashed.
key=$(
    {
        echo "circular-live 1"
        echo "rootfs $(basename "$(dirname "$rootfs")")"
        sha256sum "$xen" "$vmlinuz" "$busybox" "$deb" | awk '{print $1}'
        # boot.sh only measures an ISO; it is not an input.
        (cd "$live" && find . -type f ! -name boot.sh -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
        sha256sum scripts/lib/dom0-root.sh
    } | sha256sum | cut -c1-16
)
cache_root=${CIRC_LAB_CACHE:-/var/cache/circ-lab}
entry=$cache_root/live-$key
if [[ -f $entry/.complete ]]; then
    say "cached: $entry"
    printf '%s\n' "$entry/circular-live.iso"
    exit 0
fi

started=$(date +%s)
scratch=$(mktemp -d "$cache_root/.live-$key.XXXXXX")
work=$scratch/work
root=$work/root
cleanup() {
    dom0_root_unmount "$work"
    if [[ -d $scratch ]]; then rm -rf "$scratch"; fi
}
trap cleanup EXIT

# --- dom0's root: the lab's, read-only, with the package installed on top ----
dom0_root_mount "$rootfs" "$work" 1g
in_root() { in_dom0_root "$work" "$@"; }

cp "$deb" "$root/tmp/circular.deb"
in_root dpkg -i /tmp/circular.deb >&2 || die "dpkg -i $(basename "$deb") failed in the root"
rm "$root/tmp/circular.deb"
install -m 0755 "$live/init" "$root/sbin/circ-live-init"
install -m 0755 "$live/welcome" "$root/usr/sbin/circ-live-welcome"
install -m 0755 "$live/poweroff" "$root/usr/sbin/circ-live-poweroff"
echo circular-live >"$root/etc/hostname"
while read -r pkg; do
    status=$(in_root dpkg-query -W -f '${Status}' "$pkg" 2>/dev/null || true)
    [[ $status == "install ok installed" ]] || die "package $pkg is not in the root (live/packages)"
done < <(grep -v '^#' "$live/packages" | grep -v '^$')
say "root: $(basename "$(dirname "$rootfs")") + $(basename "$deb") + live/init, welcome, poweroff"

# --- the live initramfs ---------------------------------------------------------
stage=$scratch/initramfs
mkdir -p "$stage"/{bin,dev,proc,sys,newroot,run,modules}
install -m 0755 "$busybox" "$stage/bin/busybox"
install -m 0755 "$live/initramfs-init" "$stage/init"
# Each group of live/modules with the dependencies of its modules, in the
# order the root's modules.dep gives, each module once; `--` between groups.
declare -A staged=()
group_modules() {
    local ko name
    (($#)) || return 0
    while read -r ko; do
        name=$(basename "$ko" .ko)
        [[ -z ${staged[$name]:-} ]] || continue
        staged[$name]=1
        install -m 0644 "$root$ko" "$stage/modules/$name.ko"
        echo "$name"
    done < <(in_root modprobe -S "$kver" --show-depends -a "$@" | awk '$1 == "insmod" {print $2}')
}
group=()
while read -r line; do
    if [[ $line == -- ]]; then
        group_modules "${group[@]}"
        echo --
        group=()
    else
        group+=("$line")
    fi
done < <(grep -v '^#' "$live/modules" | grep -v '^$') >"$stage/modules.order"
group_modules "${group[@]}" >>"$stage/modules.order"
kos=${#staged[@]}
wanted=$(grep -cv '^#\|^$\|^--$' "$live/modules")
((kos >= wanted)) || die "modprobe resolved $kos modules for the $wanted of live/modules"
iso=$scratch/iso
mkdir -p "$iso/boot/grub" "$iso/live"
(cd "$stage" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet | gzip -9n) \
    >"$iso/boot/initrd.gz"
say "initramfs: busybox + $kos modules"

umount "$root/proc"
# --- the ISO ----------------------------------------------------------------------
# zstd: Debian's kernel reads it, and it decompresses fastest at boot.
nice -n 10 mksquashfs "$root" "$iso/live/root.squashfs" -comp zstd -noappend -quiet \
    -e lost+found >&2 || die "mksquashfs failed"
dom0_root_unmount "$work"
gzip -9n -c "$xen" >"$iso/boot/xen.gz"
install -m 0644 "$vmlinuz" "$iso/boot/vmlinuz"
install -m 0644 "$live/grub.cfg" "$iso/boot/grub/grub.cfg"
grub-mkrescue -o "$scratch/circular-live.iso" "$iso" -- -volid CIRCULAR_LIVE >&2 2>"$scratch/grub-mkrescue.log" ||
    die "grub-mkrescue failed: $(tail -n 5 "$scratch/grub-mkrescue.log")"
# Both boot paths must be in the image: El Torito for BIOS and the EFI
# system partition image for UEFI.
report=$(xorriso -indev "$scratch/circular-live.iso" -report_el_torito plain 2>/dev/null)
grep -q 'BIOS' <<<"$report" && grep -q 'UEFI' <<<"$report" ||
    die "the ISO lacks a BIOS or a UEFI boot image: $report"

size() { stat -c %s "$1"; }
jq -n --arg key "$key" --arg deb "$(basename "$deb")" --arg rootfs "$(basename "$(dirname "$rootfs")")" \
    --argjson iso "$(size "$scratch/circular-live.iso")" \
    --argjson squashfs "$(size "$iso/live/root.squashfs")" \
    --argjson initrd "$(size "$iso/boot/initrd.gz")" \
    --argjson secs "$(($(date +%s) - started))" \
    '{key: $key, deb: $deb, rootfs: $rootfs, iso_bytes: $iso, squashfs_bytes: $squashfs,
      initrd_bytes: $initrd, build_secs: $secs}' >"$scratch/build.json"
rm -rf "$iso" "$stage" "$work"
touch "$scratch/.complete"
mv -T "$scratch" "$entry" 2>/dev/null || [[ -f $entry/.complete ]] || die "cannot move the ISO into $entry"
say "built $entry/circular-live.iso ($(($(size "$entry/circular-live.iso") / 1048576)) MiB in $(($(date +%s) - started)) s)"
printf '%s\n' "$entry/circular-live.iso"
