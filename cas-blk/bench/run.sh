#!/usr/bin/env bash
# cas-blk benchmarks (issue 3), apart from the tests: each measurement runs
# against a named peer in the same run, on the same image, and is printed
# with its ratio. Run through `scripts/bench cas`. Method and results:
# docs/cas-blk.md, "Benchmarks".
#
#   1. pack:  circ cas pack  vs  casync make, 256 KiB (casync: average) chunks
#   2. reads: qemu-io over NBD from `circ cas nbd` (chunks from nginx) vs
#             nbdkit's curl plugin (the raw image from the same nginx) vs
#             the raw image as a local file; sequential 4 MiB and random
#             4 KiB reads, cold (empty chunk cache) and warm (every chunk
#             cached)
#   3. dedup: circ cas stats on two versions of the image, beside LBCAS's
#
# Settings (environment):
#   CIRC_BENCH_IMAGE         image (default: newest lab dom0 rootfs.img)
#   CIRC_BENCH_REPS          repetitions of each warm/peer measurement (2)
#   CIRC_BENCH_RANDOM_READS  random 4 KiB reads per run (4000)
#   CIRC_BENCH_SEED          seed of the random offsets (3)
#   CIRC_BENCH_KEEP=1        keep the work directory
#   CIRC                     circ binary (default: target/release/circ, built)
# Servers listen on 127.0.0.1 / Unix sockets in the work directory only and
# are stopped on exit; every step runs under `timeout`.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)

reps=${CIRC_BENCH_REPS:-2}
random_reads=${CIRC_BENCH_RANDOM_READS:-4000}
seed=${CIRC_BENCH_SEED:-3}
chunk=256K
chunk_bytes=262144

say() { printf '%s\n' "$*" >&2; }
die() {
    say "bench: $*"
    exit 1
}

# --- tools -------------------------------------------------------------------

# Installs Debian packages for missing commands. Services are kept from
# starting during the install (nginx's package would start a server on
# port 80): a policy-rc.d saying "forbidden" unless the system has one.
ensure_packages() {
    local missing=() pair cmd pkg
    for pair in nginx:nginx-light nbdkit:nbdkit casync:casync qemu-io:qemu-utils \
        qemu-img:qemu-utils filefrag:e2fsprogs debugfs:e2fsprogs jq:jq curl:curl; do
        cmd=${pair%%:*}
        pkg=${pair#*:}
        if ! command -v "$cmd" >/dev/null 2>&1 && [[ " ${missing[*]} " != *" $pkg "* ]]; then
            missing+=("$pkg")
        fi
    done
    if ((${#missing[@]})); then
        say "installing ${missing[*]}"
        local policy=/usr/sbin/policy-rc.d made_policy=0
        if [[ ! -e $policy ]]; then
            printf '#!/bin/sh\nexit 101\n' >"$policy"
            chmod 0755 "$policy"
            made_policy=1
        fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2 ||
            {
                ((made_policy)) && rm -f "$policy"
                die "apt-get install ${missing[*]} failed"
            }
        ((made_policy)) && rm -f "$policy"
    fi
    # Debian ships the curl plugin inside the nbdkit package.
    nbdkit curl --dump-plugin >/dev/null 2>&1 || die "nbdkit has no curl plugin"
}

ensure_packages

circ=${CIRC:-}
if [[ -z $circ ]]; then
    say "building circ (release)"
    (cd "$repo" && cargo build --release -q -p circ) >&2
    circ=$repo/target/release/circ
fi
[[ -x $circ ]] || die "no circ binary at $circ"

image=${CIRC_BENCH_IMAGE:-}
if [[ -z $image ]]; then
    # shellcheck disable=SC2012 # names are fixed lab cache paths
    image=$(ls -t /var/cache/circ-lab/dom0-rootfs-*/rootfs.img 2>/dev/null | head -n1 || true)
fi
[[ -n $image && -f $image ]] || die "no image: set CIRC_BENCH_IMAGE (default is the lab's dom0 rootfs.img)"
image_size=$(stat -c %s "$image")

work=$(mktemp -d /tmp/circ-bench-cas.XXXXXX)
# nginx's workers (user nobody) read the web root under it.
chmod 0755 "$work"
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ ${CIRC_BENCH_KEEP:-0} == 1 ]]; then
        say "work directory kept: $work"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

stop() {
    local pid=$1 keep=() p
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for p in "${pids[@]}"; do
        [[ $p == "$pid" ]] || keep+=("$p")
    done
    pids=("${keep[@]}")
}

# Runs "$@" with its output in $log; sets `elapsed` (seconds).
elapsed=0
timed() {
    local log=$1 t0 t1
    shift
    t0=$(date +%s%N)
    if ! "$@" >"$log" 2>&1; then
        say "failed: $*"
        tail -n 5 "$log" >&2
        exit 1
    fi
    t1=$(date +%s%N)
    elapsed=$(awk -v n=$((t1 - t0)) 'BEGIN { printf "%.6f", n / 1e9 }')
}

# Arithmetic on decimals.
calc() { awk "BEGIN { printf \"%.6g\", $* }"; }
max() { awk -v a="$1" -v b="$2" 'BEGIN { print (a > b ? a : b) }'; }
min() { awk -v a="$1" -v b="$2" 'BEGIN { print (a < b ? a : b) }'; }

wait_for() { # wait_for SECONDS DESCRIPTION TEST...
    local secs=$1 what=$2 i
    shift 2
    for ((i = 0; i < secs * 10; i++)); do
        if "$@"; then
            return 0
        fi
        sleep 0.1
    done
    die "timed out waiting for $what"
}

versions() {
    say "machine: $(nproc) cores, $(awk '/model name/ { sub(/.*: /, ""); print; exit }' /proc/cpuinfo), load $(cut -d' ' -f1-3 /proc/loadavg)"
    say "circ $("$circ" --version | awk '{ print $2 }'), casync $(dpkg-query -W -f '${Version}' casync), nbdkit $(nbdkit --version | awk '{ print $2 }'), nginx $(nginx -v 2>&1 | sed 's/.*nginx\///'), qemu-io $(qemu-io --version | awk 'NR == 1 { print $3 }')"
    say "image: $image ($image_size bytes)"
}

# --- 1. pack -------------------------------------------------------------------

"$circ" cas keygen --out "$work/key" >/dev/null
# Both packers read the image from the page cache.
cat "$image" >/dev/null

bench_pack() {
    local rep t_circ=1e18 t_casync=1e18
    for ((rep = 1; rep <= reps; rep++)); do
        rm -rf "$work/store" "$work/casync"
        # casync does not fsync its chunks: compare without it.
        timed "$work/pack.log" timeout 300 "$circ" cas pack "$image" "$work/store" \
            --key "$work/key" --name img --chunk-size "$chunk" --no-sync
        t_circ=$(min "$t_circ" "$elapsed")
        mkdir -p "$work/casync"
        timed "$work/casync.log" timeout 300 casync make --chunk-size="$chunk_bytes" \
            --store="$work/casync/store.castr" "$work/casync/img.caibx" "$image"
        t_casync=$(min "$t_casync" "$elapsed")
    done
    # Once more with the per-chunk fsync `pack` does by default.
    rm -rf "$work/store"
    timed "$work/pack.log" timeout 300 "$circ" cas pack "$image" "$work/store" \
        --key "$work/key" --name img --chunk-size "$chunk"
    pack_t_circ_sync=$elapsed
    pack_circ_mbs=$(calc "$image_size / 1e6 / $t_circ")
    pack_casync_mbs=$(calc "$image_size / 1e6 / $t_casync")
    pack_circ_sync_mbs=$(calc "$image_size / 1e6 / $pack_t_circ_sync")
    pack_t_circ=$t_circ
    pack_t_casync=$t_casync
    pack_line=$(tail -n1 "$work/pack.log")
    pack_store_bytes=$(du -sb "$work/store/chunks" | cut -f1)
    # Format 2 (the default) beside format 1: stored size, index included.
    pack_v1_bytes=""
    if "$circ" cas pack --help 2>/dev/null | grep -q -- '--format'; then
        rm -rf "$work/store-v1"
        timed "$work/pack-v1.log" timeout 300 "$circ" cas pack "$image" "$work/store-v1" \
            --key "$work/key" --name img --chunk-size "$chunk" --no-sync --format 1
        pack_t_v1=$elapsed
        pack_v1_bytes=$(du -sb --apparent-size "$work/store-v1" | cut -f1)
        pack_v2_bytes=$(du -sb --apparent-size "$work/store" | cut -f1)
        pack_v1_index=$(stat -c %s "$work/store-v1/indexes/img.cidx")
        pack_v2_index=$(stat -c %s "$work/store/indexes/img.cidx")
        rm -rf "$work/store-v1"
    fi
    pack_casync_bytes=$(du -sb "$work/casync/store.castr" | cut -f1)
    pack_casync_chunks=$(find "$work/casync/store.castr" -type f -name '*.cacnk' | wc -l)
}

# --- 2. reads ------------------------------------------------------------------

# The image's data (allocated extents, in file-system blocks): reads go
# where a guest's file system has data, not into never-written space,
# which `circ cas nbd` would answer without any fetch (zero chunks).
make_workloads() {
    local extents=$work/extents
    if ! filefrag -e "$image" 2>/dev/null | awk '
        /blocks of [0-9]+ bytes/ { for (i = 1; i <= NF; i++) if ($i == "blocks" && $(i + 1) == "of") bs = $(i + 2) }
        /^ *[0-9]+:/ { gsub(/\.\./, " "); gsub(/:/, " "); print $2 * bs, ($3 + 1) * bs }
    ' >"$extents" || [[ ! -s $extents ]]; then
        say "no extent map (filefrag): reading the whole image"
        echo "0 $image_size" >"$extents"
    fi
    # Sequential: every 4 MiB window holding data, in order.
    awk -v size="$image_size" -v w=4194304 '
        { s = int($1 / w); e = int(($2 - 1) / w); for (i = s; i <= e; i++) win[i] = 1 }
        END {
            n = 0; for (i in win) idx[++n] = i + 0
            for (i = 2; i <= n; i++) { v = idx[i]; j = i - 1; while (j > 0 && idx[j] > v) { idx[j + 1] = idx[j]; j-- } idx[j + 1] = v }
            for (i = 1; i <= n; i++) { off = idx[i] * w; len = size - off < w ? size - off : w; print "read -q " off " " len }
        }' "$extents" >"$work/seq.cmds"
    # Random: 4 KiB blocks drawn uniformly from the data, fixed seed.
    awk -v n="$random_reads" -v seed="$seed" -v size="$image_size" '
        { a[NR] = int($1 / 4096); b[NR] = int($2 / 4096); total += b[NR] - a[NR] }
        END {
            srand(seed)
            for (k = 0; k < n; k++) {
                r = int(rand() * total)
                for (i = 1; i <= NR; i++) { len = b[i] - a[i]; if (r < len) break; r -= len }
                off = (a[i] + r) * 4096
                if (off + 4096 > size) off = size - 4096 - (size % 4096)
                print "read -q " off " 4096"
            }
        }' "$extents" >"$work/rand.cmds"
    seq_bytes=$(awk '{ s += $4 } END { print s }' "$work/seq.cmds")
    seq_count=$(wc -l <"$work/seq.cmds")
}

qemu_io() { timeout 240 qemu-io -f raw -r "$1" <"$2"; }

# One qemu-io run over a command file; prints seconds net of qemu-io's own
# start-up and connection (a run with no commands, measured just before).
measure() {
    local target=$1 cmds=$2 base
    timed "$work/qemu-io.log" qemu_io "$target" /dev/null
    base=$elapsed
    timed "$work/qemu-io.log" qemu_io "$target" "$cmds"
    max 0.0001 "$(calc "$elapsed - $base")"
}

# Best of `reps` runs (seconds).
measure_best() {
    local target=$1 cmds=$2 best=1e18 rep
    for ((rep = 1; rep <= reps; rep++)); do
        best=$(min "$best" "$(measure "$target" "$cmds")")
    done
    echo "$best"
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start_nginx() {
    local dir=$work/nginx _
    mkdir -p "$dir/tmp" "$work/www"
    ln -s "$work/store" "$work/www/store"
    ln -s "$image" "$work/www/img.raw"
    for _ in 1 2 3 4 5 6 7 8; do
        port=$((20000 + (RANDOM % 20000)))
        port_free "$port" && break
    done
    cat >"$dir/nginx.conf" <<EOF
worker_processes auto;
user nobody nogroup;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log;
events { worker_connections 512; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    default_type application/octet-stream;
    server {
        listen 127.0.0.1:$port;
        root $work/www;
    }
}
EOF
    nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" >"$dir/stdout.log" 2>&1 &
    pids+=($!)
    wait_for 10 "nginx on 127.0.0.1:$port" port_open "$port"
    curl -sf -o /dev/null -r 0-4095 "http://127.0.0.1:$port/img.raw" || die "nginx does not serve the image"
}

sock_ready() { [[ -S $1 ]]; }

# Reads the whole image through a cache directory, filling it.
fill_cache() {
    timeout 300 "$circ" cas cat "http://127.0.0.1:$port/store/indexes/img.cidx" \
        --pubkey "$work/key.pub" --cache "$1" --state-dir "$work/state" >/dev/null
}
log_has() { grep -q "$2" "$1" 2>/dev/null; }

# Starts `circ cas nbd` on a cache directory; sets `circ_pid`.
start_circ_nbd() {
    local cache=$1 sock=$work/circ.sock log=$work/circ-nbd.log
    # The log goes before the server starts: its `>` runs in the background
    # job, and the previous server's "serving" line must not be taken for
    # this one's (a race that failed a run on a loaded host).
    rm -f "$sock" "$log"
    timeout 900 "$circ" cas nbd "http://127.0.0.1:$port/store/indexes/img.cidx" --socket "$sock" \
        --read-only --pubkey "$work/key.pub" --cache "$cache" --state-dir "$work/state" >"$log" 2>&1 &
    circ_pid=$!
    pids+=("$circ_pid")
    wait_for 30 "circ cas nbd" log_has "$log" '^serving'
    wait_for 5 "circ cas nbd's socket" sock_ready "$sock"
}

bench_reads() {
    make_workloads
    start_nginx
    local circ_url="nbd+unix:///?socket=$work/circ.sock"
    local nbdkit_url="nbd+unix:///?socket=$work/nbdkit.sock"
    local rep t

    say "reads: local raw file"
    local_seq=$(measure_best "$image" "$work/seq.cmds")
    local_rand=$(measure_best "$image" "$work/rand.cmds")

    say "reads: nbdkit curl"
    nbdkit --exit-with-parent -f -U "$work/nbdkit.sock" curl "url=http://127.0.0.1:$port/img.raw" \
        >"$work/nbdkit.log" 2>&1 &
    local nbdkit_pid=$!
    pids+=("$nbdkit_pid")
    wait_for 30 "nbdkit" sock_ready "$work/nbdkit.sock"
    nbdkit_seq=$(measure_best "$nbdkit_url" "$work/seq.cmds")
    nbdkit_rand=$(measure_best "$nbdkit_url" "$work/rand.cmds")
    stop "$nbdkit_pid"

    # Cold: a new server on an empty cache for every run.
    say "reads: circ cas nbd, cold"
    circ_cold_seq=1e18
    circ_cold_rand=1e18
    for ((rep = 1; rep <= reps; rep++)); do
        start_circ_nbd "$work/cold-seq-$rep"
        t=$(measure "$circ_url" "$work/seq.cmds")
        circ_cold_seq=$(min "$circ_cold_seq" "$t")
        stop "$circ_pid"
        start_circ_nbd "$work/cold-rand-$rep"
        t=$(measure "$circ_url" "$work/rand.cmds")
        circ_cold_rand=$(min "$circ_cold_rand" "$t")
        stop "$circ_pid"
    done

    # Warm: every chunk in the cache (filled by `circ cas cat`), then a new
    # server, which learns the cache's content when it starts.
    say "reads: circ cas nbd, warm"
    timed "$work/cat.log" fill_cache "$work/warm"
    start_circ_nbd "$work/warm"
    circ_warm_seq=$(measure_best "$circ_url" "$work/seq.cmds")
    circ_warm_rand=$(measure_best "$circ_url" "$work/rand.cmds")
    # The export is the image, byte for byte.
    timeout 300 qemu-img compare -f raw -F raw "$image" "$circ_url" >"$work/compare.log" 2>&1 ||
        die "circ cas nbd does not serve the image: $(cat "$work/compare.log")"
    stop "$circ_pid"
}

# --- 3. dedup ------------------------------------------------------------------

bench_dedup() {
    local v2=$work/v2.img
    cp --sparse=always "$image" "$v2"
    # Version 2: /etc/motd rewritten, 16 MiB of new data (an update's worth).
    head -c 16777216 /dev/urandom >"$work/update.bin"
    printf 'Circular dom0, version 2\n' >"$work/motd"
    cat >"$work/debugfs.cmds" <<EOF
rm /etc/motd
write $work/motd /etc/motd
mkdir /var/lib/circ-bench
write $work/update.bin /var/lib/circ-bench/update.bin
EOF
    debugfs -w -f "$work/debugfs.cmds" "$v2" >"$work/debugfs.log" 2>&1 || die "debugfs failed"
    timeout 300 "$circ" cas stats "$image" "$v2" --chunk-sizes 16K,64K,256K --json >"$work/stats-change.json"
    # Two successive lab builds of the image, when the cache has an older one.
    previous=""
    if [[ -z ${CIRC_BENCH_IMAGE:-} ]]; then
        # shellcheck disable=SC2012 # names are fixed lab cache paths
        previous=$(ls -t /var/cache/circ-lab/dom0-rootfs-*/rootfs.img 2>/dev/null | sed -n 2p || true)
    fi
    if [[ -n $previous ]]; then
        timeout 300 "$circ" cas stats "$previous" "$image" --chunk-sizes 16K,64K,256K --json >"$work/stats-builds.json"
    fi
}

mbs_seq() { calc "$seq_bytes / 1e6 / $1"; }
iops() { calc "$random_reads / $1"; }

# --- report --------------------------------------------------------------------

# verdict RATIO OP THRESHOLD -> "yes"/"NO"
verdict() { awk -v r="$1" -v t="$3" -v op="$2" 'BEGIN { ok = (op == ">=" ? r >= t : r <= t); print (ok ? "yes" : "NO") }'; }

report() {
    local ls ns cs ws lr nr cr wr
    ls=$(mbs_seq "$local_seq") ns=$(mbs_seq "$nbdkit_seq") cs=$(mbs_seq "$circ_cold_seq") ws=$(mbs_seq "$circ_warm_seq")
    lr=$(iops "$local_rand") nr=$(iops "$nbdkit_rand") cr=$(iops "$circ_cold_rand") wr=$(iops "$circ_warm_rand")

    echo
    echo "cas-blk benchmarks ($(date -u +%Y-%m-%dT%H:%MZ))"
    versions 2>&1
    echo "pack: $pack_line"
    echo
    echo "1. pack, $chunk chunks (casync: average), image read from the page cache, best of $reps"
    printf '%-34s %10s %10s %8s\n' "" "seconds" "MB/s" "store MB"
    printf '%-34s %10.2f %10.0f %8.1f\n' "circ cas pack --no-sync (zstd)" "$pack_t_circ" "$pack_circ_mbs" "$(calc "$pack_store_bytes / 1e6")"
    printf '%-34s %10.2f %10.0f %8s\n' "circ cas pack (fsync per chunk)" "$pack_t_circ_sync" "$pack_circ_sync_mbs" "-"
    printf '%-34s %10.2f %10.0f %8.1f  (%s chunks)\n' "casync make (zstd)" "$pack_t_casync" "$pack_casync_mbs" "$(calc "$pack_casync_bytes / 1e6")" "$pack_casync_chunks"
    local pr
    pr=$(calc "$pack_circ_mbs / $pack_casync_mbs")
    printf '%-34s %10s %10.2fx  target >= 2x: %s\n' "circ / casync" "" "$pr" "$(verdict "$pr" ">=" 2)"
    if [[ -n $pack_v1_bytes ]]; then
        local sr
        sr=$(calc "$pack_v2_bytes / $pack_v1_bytes")
        echo "   store by index format (chunks + index, apparent bytes), 256K chunks, zstd:"
        printf '   format 1 %.1f MB (index %.2f MB, pack %.2f s); format 2 (64K frames) %.1f MB (index %.2f MB): %.3fx  target <= 1.1x: %s\n' \
            "$(calc "$pack_v1_bytes / 1e6")" "$(calc "$pack_v1_index / 1e6")" "$pack_t_v1" \
            "$(calc "$pack_v2_bytes / 1e6")" "$(calc "$pack_v2_index / 1e6")" "$sr" "$(verdict "$sr" "<=" 1.1)"
    fi

    echo
    echo "2. reads with qemu-io (one client, one request at a time), MB/s or IOPS net of qemu-io start-up"
    echo "   sequential: $seq_count x 4 MiB over the image's data ($(printf '%.0f' "$(calc "$seq_bytes / 1e6")") MB); random: $random_reads x 4 KiB in the data, seed $seed"
    echo "   peers and warm circ: best of $reps; cold circ: best of $reps, each a new server on an empty cache"
    printf '%-20s %12s %12s %12s %12s %11s %10s  %s\n' "" "circ nbd" "nbdkit-curl" "local raw" "circ/nbdkit" "circ/local" "target" "met"
    local row name c n l rn rl target met
    for row in "seq 4M cold MB/s|$cs|$ns|$ls|cold" "seq 4M warm MB/s|$ws|$ns|$ls|warm" \
        "rand 4K cold IOPS|$cr|$nr|$lr|cold" "rand 4K warm IOPS|$wr|$nr|$lr|warm"; do
        IFS='|' read -r name c n l target <<<"$row"
        rn=$(calc "$c / $n")
        rl=$(calc "$c / $l")
        if [[ $target == cold ]]; then
            met=$(verdict "$rn" ">=" 1)
            target=">=1x nbdkit"
        else
            met="$(verdict "$rn" ">=" 2)/$(verdict "$rl" ">=" 0.7)"
            target=">=2x, >=0.7"
        fi
        printf '%-20s %12.0f %12.0f %12.0f %11.2fx %10.2fx %11s  %s\n' "$name" "$c" "$n" "$l" "$rn" "$rl" "$target" "$met"
    done
    printf '   rand 4K in MB/s: circ cold %.1f, warm %.1f, nbdkit-curl %.1f, local %.1f\n' \
        "$(calc "$cr * 4096 / 1e6")" "$(calc "$wr * 4096 / 1e6")" "$(calc "$nr * 4096 / 1e6")" "$(calc "$lr * 4096 / 1e6")"

    echo
    echo "3. dedup (circ cas stats, zstd), two versions of the image, beside LBCAS's published figures"
    echo "   LBCAS: a 3.75 GB image (1.88x statified), stored MB per chunk size; 'vs 256K' = stored / stored at 256K"
    print_stats "v1 + v2 (v2 = v1 + /etc/motd rewritten + 16 MiB new file)" "$work/stats-change.json"
    if [[ -f $work/stats-builds.json ]]; then
        print_stats "previous lab build + newest ($(basename "$(dirname "$previous")") -> $(basename "$(dirname "$image")"))" "$work/stats-builds.json"
    fi
}

print_stats() {
    echo "   $1"
    printf '   %-6s %12s %10s %10s %10s %8s %8s %10s | %11s %8s\n' "chunk" "input MB" "chunks" "zero" "unique" "stored MB" "dedup" "vs 256K" "LBCAS MB" "vs 256K"
    jq -r '(map(select(.chunk_size == 262144)) | .[0].stored_bytes) as $base
        | .[] | [.chunk_size, .input_bytes, .chunks, .zero_chunks, .unique_chunks, .stored_bytes, .dedup_ratio, ($base // .stored_bytes)] | @tsv' "$2" |
        while IFS=$'\t' read -r size input chunks zero unique stored dedup base; do
            local lbcas=""
            case $size in
            16384) lbcas=4352 ;;
            65536) lbcas=5241 ;;
            262144) lbcas=6723 ;;
            esac
            printf '   %-6s %12.1f %10d %10d %10d %8.1f %8.2f %10.3f | %11s %8s\n' "$((size / 1024))K" \
                "$(calc "$input / 1e6")" "$chunks" "$zero" "$unique" "$(calc "$stored / 1e6")" "$dedup" \
                "$(calc "$stored / $base")" "${lbcas:--}" "$([[ -n $lbcas ]] && printf '%.3f' "$(calc "$lbcas / 6723")" || echo -)"
        done
}

versions
say "1/3 pack"
bench_pack
say "2/3 reads"
bench_reads
say "3/3 dedup"
bench_dedup
report
