# shellcheck shell=bash
# A throwaway copy of the lab's dom0 root file system, for scripts/deb-check
# and live/build.sh: the cached ext4 image mounted read-only (noload: no
# journal replay, so not a byte of the cache is written) under an overlay
# whose upper half is a tmpfs. The caller defines die.

# dom0_root_mount IMAGE DIR TMPFS_SIZE: the copy at DIR/root, /proc mounted
# in it; DIR holds the mounts.
dom0_root_mount() {
    local image=$1 dir=$2 size=$3
    mkdir -p "$dir/lower" "$dir/rw" "$dir/root"
    mount -o ro,loop,noload "$image" "$dir/lower" || die "cannot mount $image read-only"
    mount -t tmpfs -o "size=$size" tmpfs "$dir/rw"
    mkdir "$dir/rw/upper" "$dir/rw/work"
    mount -t overlay overlay \
        -o "lowerdir=$dir/lower,upperdir=$dir/rw/upper,workdir=$dir/rw/work" "$dir/root" ||
        die "cannot mount an overlay over $image"
    mount -t proc proc "$dir/root/proc"
}

# dom0_root_unmount DIR: undoes dom0_root_mount, as far as it got.
dom0_root_unmount() {
    local mnt
    for mnt in "$1/root/proc" "$1/root" "$1/rw" "$1/lower"; do
        if mountpoint -q "$mnt"; then
            umount "$mnt" || echo "cannot unmount $mnt" >&2
        fi
    done
}

# in_dom0_root DIR COMMAND...: runs COMMAND chrooted in the copy, in a
# clean environment.
in_dom0_root() {
    local dir=$1
    shift
    chroot "$dir/root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"
}
