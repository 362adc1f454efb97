#!/usr/bin/env bash
# Build Debian bookworm's Xen 4.17 hypervisor with Circular's patch series.
#
# Usage: xen-patches/build.sh [--cache DIR]
#
# The last line on stdout is the absolute path of the built multiboot ELF;
# everything else goes to stderr.  Results are cached under DIR (default
# ${CIRC_LAB_CACHE:-/var/cache/circ-lab}/xen-patched), keyed by a hash of the
# source version, this script, the series, every patch in it and
# config.fragment.  A complete cache entry is returned without touching the
# network.  See README.md in this directory.
set -euo pipefail

readonly XEN_SRC_PACKAGE=xen
readonly XEN_SRC_VERSION=4.17.5+72-g01140da4e8-1
# Pinned so a changed upload or a corrupted cache cannot slip in; dpkg-source
# then checks the tarballs against the checksums in this .dsc.
readonly XEN_DSC_SHA256=f13956b67fb7a65707c2b0620d89b41ee5d203434dd7bb913017356791ee66c1
readonly DEB_SRC_LIST=/etc/apt/sources.list.d/circ-deb-src.sources

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly here
readonly self="$here/build.sh"
readonly series_file="$here/series"
readonly fragment_file="$here/config.fragment"

log() { printf 'xen-patches: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
    cat >&2 <<EOF
usage: $0 [--cache DIR]

Builds the patched Xen hypervisor and prints the path of the ELF (last line).
  --cache DIR   cache directory (default: \${CIRC_LAB_CACHE:-/var/cache/circ-lab}/xen-patched)
EOF
}

cache_root=${CIRC_LAB_CACHE:-/var/cache/circ-lab}/xen-patched
while (($#)); do
    case $1 in
        --cache)
            (($# >= 2)) || { usage; die "--cache needs a directory"; }
            cache_root=$2
            shift 2
            ;;
        --cache=*)
            cache_root=${1#--cache=}
            shift
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            usage
            die "unknown argument: $1"
            ;;
    esac
done
[[ -n $cache_root ]] || die "empty cache directory"
cache_root=$(realpath -m -- "$cache_root")

# --- cache key --------------------------------------------------------------

sha256_of() { sha256sum <"$1" | cut -d' ' -f1; }

# Patch names from the series file: '#' starts a comment, blank lines are
# skipped, every entry must be NNNN-name.patch next to this script.
series_patches() {
    local line
    while IFS= read -r line || [[ -n $line ]]; do
        line=${line%%#*}
        line=${line//[[:space:]]/}
        [[ -n $line ]] || continue
        [[ $line =~ ^[0-9]{4}-[A-Za-z0-9._+-]+\.patch$ ]] ||
            die "series: bad entry '$line' (want NNNN-name.patch)"
        [[ -f $here/$line ]] || die "series: $line does not exist in $here"
        printf '%s\n' "$line"
    done <"$series_file"
}

[[ -f $series_file ]] || die "missing $series_file"
[[ -f $fragment_file ]] || die "missing $fragment_file"
# Command substitution, not process substitution, so a bad entry stops us.
patch_list=$(series_patches)
patches=()
[[ -z $patch_list ]] || mapfile -t patches <<<"$patch_list"

key_text=$(
    printf 'source %s %s\n' "$XEN_SRC_PACKAGE" "$XEN_SRC_VERSION"
    printf 'build.sh %s\n' "$(sha256_of "$self")"
    printf 'series %s\n' "$(sha256_of "$series_file")"
    printf 'config.fragment %s\n' "$(sha256_of "$fragment_file")"
    for p in "${patches[@]}"; do
        printf 'patch %s %s\n' "$p" "$(sha256_of "$here/$p")"
    done
)
key=$(printf '%s\n' "$key_text" | sha256sum | cut -c1-20)
readonly key
readonly out_dir="$cache_root/out/$key"

entry_complete() {
    [[ -f $out_dir/stamp && -s $out_dir/xen && -s $out_dir/xen-syms && -s $out_dir/config ]]
}

# Fast path: nothing but local file reads.
if entry_complete; then
    printf '%s\n' "$out_dir/xen"
    exit 0
fi

# --- slow path: everything below may download and build ----------------------

# Keep stdout for the final path only.
exec 3>&1 1>&2

need_cmds() {
    local c missing=()
    for c in "$@"; do
        command -v "$c" >/dev/null 2>&1 || missing+=("$c")
    done
    ((${#missing[@]} == 0)) ||
        die "missing commands: ${missing[*]} (apt-get install build-essential flex bison python3 dpkg-dev patch xz-utils util-linux)"
}
need_cmds apt-get apt-cache dpkg-source patch make gcc ld flex bison python3 sha256sum flock xz od realpath

mkdir -p "$cache_root"
exec 9>"$cache_root/.lock"
log "waiting for the cache lock $cache_root/.lock"
flock 9
# Another run may have finished this entry while we waited.
if entry_complete; then
    printf '%s\n' "$out_dir/xen" >&3
    exit 0
fi

t_start=$SECONDS
log "building key $key (Xen $XEN_SRC_VERSION, ${#patches[@]} patch(es))"

# --- source package, cached by version -----------------------------------------

readonly src_dir="$cache_root/src/$XEN_SRC_VERSION"
readonly dsc_name="${XEN_SRC_PACKAGE}_${XEN_SRC_VERSION}.dsc"

source_version_known() {
    local info # not 'apt-cache | grep -q': SIGPIPE would fail it under pipefail
    info=$(apt-cache showsrc "$XEN_SRC_PACKAGE" 2>/dev/null) || return 1
    grep -qxF "Version: $XEN_SRC_VERSION" <<<"$info"
}

ensure_deb_src() {
    source_version_known && return 0
    [[ $(id -u) -eq 0 ]] ||
        die "no deb-src entry knows $XEN_SRC_PACKAGE $XEN_SRC_VERSION and we are not root to add $DEB_SRC_LIST"
    if [[ ! -f $DEB_SRC_LIST ]]; then
        log "adding $DEB_SRC_LIST (deb-src for bookworm main)"
        cat >"$DEB_SRC_LIST" <<'EOF'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    fi
    log "apt-get update"
    apt-get update -q >&2 || die "apt-get update failed"
    source_version_known ||
        die "apt does not know source $XEN_SRC_PACKAGE $XEN_SRC_VERSION even with $DEB_SRC_LIST"
}

fetch_source() {
    if [[ -f $src_dir/complete ]]; then
        log "source package cached in $src_dir"
        return 0
    fi
    ensure_deb_src
    mkdir -p "$cache_root/src"
    local tmp
    tmp=$(mktemp -d "$cache_root/src/.download.XXXXXX")
    log "downloading source $XEN_SRC_PACKAGE=$XEN_SRC_VERSION"
    (cd "$tmp" && apt-get source -q --download-only "$XEN_SRC_PACKAGE=$XEN_SRC_VERSION") >&2 ||
        die "apt-get source $XEN_SRC_PACKAGE=$XEN_SRC_VERSION failed"
    [[ -f $tmp/$dsc_name ]] || die "download did not produce $dsc_name"
    touch "$tmp/complete"
    rm -rf "$src_dir"
    mv "$tmp" "$src_dir"
}

fetch_source
[[ $(sha256_of "$src_dir/$dsc_name") == "$XEN_DSC_SHA256" ]] ||
    die "$src_dir/$dsc_name does not match the pinned sha256; remove $src_dir to re-download"

# --- patched source tree ---------------------------------------------------------

# One build tree per source version, reused across keys when only patches
# changed, so make rebuilds just what a patch touched.  Anything else that
# shapes the build (this script, the config fragment, the compiler) is part of
# the tree's signature; a mismatch means a fresh tree.
readonly tree_root="$cache_root/tree/$XEN_SRC_VERSION"
readonly tree="$tree_root/src"
readonly tree_git="$tree_root/git"
readonly tree_state="$tree_root/state"
tree_sig=$(
    printf 'build.sh %s\n' "$(sha256_of "$self")"
    printf 'config.fragment %s\n' "$(sha256_of "$fragment_file")"
    printf 'cc %s\n' "$(gcc --version | sed -n 1p)"
    printf 'ld %s\n' "$(ld --version | sed -n 1p)"
)
tree_sig=$(printf '%s\n' "$tree_sig" | sha256sum | cut -c1-20)
readonly tree_sig

mkdir -p "$tree_root"
rm -rf "$tree_root"/staging.* "$tree_root"/*.orig.tar.*

prepare_staging() { # DIR: unpack, apply Debian's patches (dpkg-source) and ours
    local dir=$1 p
    log "unpacking with dpkg-source -x (applies Debian's patches)"
    dpkg-source -x "$src_dir/$dsc_name" "$dir" >&2 || die "dpkg-source -x failed"
    for p in "${patches[@]}"; do
        log "applying $p"
        patch -d "$dir" -p1 --batch --forward --fuzz=0 --no-backup-if-mismatch \
            --reject-file=- <"$here/$p" >&2 ||
            die "patch $p does not apply to Xen $XEN_SRC_VERSION"
    done
}

have_git() { command -v git >/dev/null 2>&1; }
tgit() { git -C "$tree" --git-dir="$tree_git" --work-tree="$tree" "$@"; }

# Records the current source files of $tree, before anything is built in it.
init_tree_git() {
    rm -rf "$tree_git"
    have_git || return 0
    tgit init -q
    tgit add -A -f . >/dev/null
}

fresh_tree() {
    local staging=$1
    log "fresh build tree"
    rm -rf "$tree" "$tree_git" "$tree_state"
    mv "$staging" "$tree" || die "cannot move $staging to $tree"
    init_tree_git
}

# Brings $tree to the contents of DIR, rewriting only files that differ so
# that their mtimes alone tell make what to rebuild.  Fails if the tree
# cannot be trusted for that.
sync_tree() {
    local staging=$1 index=$tree_root/import-index old new
    have_git || return 1
    [[ -d $tree && -d $tree_git && -f $tree_state ]] || return 1
    [[ $(sed -n 1p "$tree_state") == "$tree_sig" ]] || return 1
    # "building" means an earlier run died mid-build: partial objects possible.
    [[ $(sed -n 2p "$tree_state") != building ]] || return 1
    rm -f "$index"
    GIT_INDEX_FILE=$index git -C "$staging" --git-dir="$tree_git" --work-tree="$staging" \
        add -A -f . >/dev/null || return 1
    new=$(GIT_INDEX_FILE=$index git --git-dir="$tree_git" write-tree) || return 1
    rm -f "$index"
    tgit update-index -q --refresh >/dev/null || true
    old=$(tgit write-tree) || return 1
    # Refuses if the build changed a tracked source file: then start afresh.
    tgit read-tree -m -u "$old" "$new" || return 1
    log "reused build tree: $(git --git-dir="$tree_git" diff-tree -r --name-only "$old" "$new" | wc -l) file(s) changed"
}

set_tree_state() { printf '%s\n%s\n' "$tree_sig" "$1" >"$tree_state"; }

# --- configure and build -----------------------------------------------------------

readonly build_log="$tree_root/build.log"

make_xen() {
    # Same knobs as debian/rules for the hypervisor; WGET/GIT like Debian so
    # nothing is fetched at build time.
    WGET=/bin/false GIT=/bin/false make -C "$tree/xen" \
        XEN_TARGET_ARCH=x86_64 \
        EXTRA_CFLAGS_XEN_CORE="-ffile-prefix-map=$tree=. -fdebug-prefix-map=$tree=." \
        "$@"
}

configure_and_build() {
    local cfg=$tree/xen/.config prev=$tree_root/config.prev
    log "configuring: debian/xen-kconfig + config.fragment, make olddefconfig"
    rm -f "$prev"
    if [[ -f $cfg ]]; then cp -p "$cfg" "$prev"; fi
    cat "$tree/debian/xen-kconfig" "$fragment_file" >"$cfg"
    make_xen olddefconfig >>"$build_log" 2>&1 || return 1
    # A .config newer than include/config/auto.conf makes the build rerun
    # syncconfig, which rewrites autoconf.h and so recompiles everything: keep
    # the old mtime when nothing changed.
    if [[ -f $prev ]] && cmp -s "$cfg" "$prev"; then touch -r "$prev" "$cfg"; fi
    rm -f "$prev"
    check_config || return 1
    log "make -j$(nproc) -C xen (log: $build_log)"
    make_xen -j"$(nproc)" >>"$build_log" 2>&1
}

# Every option the fragment sets must have survived olddefconfig.
check_config() {
    local line name bad=0
    while IFS= read -r line || [[ -n $line ]]; do
        if [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)=n$ || $line =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
            name=${BASH_REMATCH[1]}
            if grep -q "^$name=" "$tree/xen/.config"; then
                log "config: $name should be unset but is: $(grep "^$name=" "$tree/xen/.config")"
                bad=1
            fi
        elif [[ $line =~ ^CONFIG_[A-Za-z0-9_]+= ]]; then
            if ! grep -qxF "$line" "$tree/xen/.config"; then
                log "config: '$line' did not survive olddefconfig (missing dependency?)"
                bad=1
            fi
        fi
    done <"$fragment_file"
    return "$bad"
}

# The lab boots the ELF with QEMU's multiboot loader (-kernel), which wants a
# 32-bit ELF carrying a multiboot header (magic 0x1badb002) in its first 8 KiB.
check_elf() {
    local f=$1 words
    [[ $(od -An -tx1 -N5 "$f" | tr -d ' \n') == 7f454c4601 ]] || die "$f is not a 32-bit ELF"
    [[ $(od -An -tx2 -j18 -N2 "$f" | tr -d ' \n') == 0003 ]] || die "$f is not an i386 ELF"
    # Into a variable first: 'od | grep -q' can fail under pipefail (SIGPIPE).
    words=$(od -An -v -tx4 -N8192 "$f")
    grep -qw 1badb002 <<<"$words" || die "$f has no multiboot header in its first 8 KiB"
}

tree_was_fresh=0
build_once() { # MODE: reuse|fresh
    local parent staging
    # dpkg-source -x wants to create the directory and leaves a copy of the
    # orig tarball beside it: give it a parent of its own.
    # (Called as an 'if' condition, where set -e is off: check explicitly.)
    parent=$(mktemp -d "$tree_root/staging.XXXXXX") || die "mktemp in $tree_root failed"
    staging=$parent/src
    prepare_staging "$staging"
    tree_was_fresh=0
    if [[ $1 == fresh ]] || ! sync_tree "$staging"; then
        fresh_tree "$staging"
        tree_was_fresh=1
    fi
    rm -rf "$parent"
    : >"$build_log"
    set_tree_state building
    if configure_and_build; then
        set_tree_state ok
        return 0
    fi
    set_tree_state failed
    return 1
}

if ! build_once reuse; then
    tail -n 60 "$build_log" >&2 || true
    ((tree_was_fresh == 0)) || die "build failed (full log: $build_log)"
    log "build failed in a reused tree; retrying once from a fresh tree to rule out stale objects"
    if ! build_once fresh; then
        tail -n 60 "$build_log" >&2 || true
        die "build failed (full log: $build_log)"
    fi
fi

check_elf "$tree/xen/xen"

# --- publish: copy to a temp dir, stamp last, rename into place ------------------

mkdir -p "$cache_root/out"
tmp_out=$(mktemp -d "$cache_root/out/.tmp.XXXXXX")
cp "$tree/xen/xen" "$tmp_out/xen"
cp "$tree/xen/xen-syms" "$tmp_out/xen-syms"
cp "$tree/xen/.config" "$tmp_out/config"
cp "$build_log" "$tmp_out/build.log"
printf '%s\n' "$key_text" >"$tmp_out/key.txt"
printf 'built %s in %ss\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$((SECONDS - t_start))" >"$tmp_out/stamp"
chmod 755 "$tmp_out"
rm -rf "$out_dir"
mv "$tmp_out" "$out_dir"

log "done in $((SECONDS - t_start))s: $out_dir"
printf '%s\n' "$out_dir/xen" >&3
