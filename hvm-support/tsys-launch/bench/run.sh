#!/usr/bin/env bash
# Trusted system calls benchmark (issue 10), apart from the tests: the cost
# of a call through int $0x81 (xen-patches/0002) against its named peer, a
# plain `syscall` of an unregistered process, measured in the same run, in
# the same guest, round after round in turn (the lab's `tsys-bench`
# scenario on the patched hypervisor; tests/lab/guest/tsys-probe.c,
# `bench`). Nothing is asserted. Run through `scripts/bench tsys`; method
# and results: docs/tsys.md, "Benchmark".
#
# Loops, per call (medians of 7 rounds):
#   getpid   20,000 calls
#   rw4k     5,000 pairs of a 4 KiB write and a 4 KiB read on a pipe
#   file-w4k, file-r4k   500 4 KiB pwrite / pread on a tmpfs file
#   file-w1m, file-r1m   16 MiB written / read, per MiB (sealed: 64 KiB a call)
# Kinds of the file loops: sealed (the registered process, its token keyed
# by dom0, the fd sealed: xen-patches/0004) and plain (the unregistered one).
# Kinds:
#   trusted-int81    a registered process, through int $0x81 (forwarded)
#   trusted-syscall  the same process through `syscall` (concealed, not
#                    forwarded: the cost of concealment alone)
#   plain            an unregistered process through `syscall` (the peer)
#
# Settings (environment):
#   CIRC_BENCH_LAB_RUN   an existing tsys-bench run directory to read
#   CIRC                 circ binary (default: scripts/build, then
#                        target/release/circ)
# It boots the lab: serialize it with other heavy jobs on a shared machine
# (`flock /tmp/circ-heavy.lock scripts/bench tsys`). Needs root.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
lab_run=${CIRC_BENCH_LAB_RUN:-}

say() { printf '%s\n' "$*" >&2; }
# shellcheck source=scripts/lib/bench-lab.sh
. "$repo/scripts/lib/bench-lab.sh"
die() {
    say "bench: $*"
    exit 1
}

if [[ -z $lab_run ]]; then
    say "machine: $(nproc) cores, $(awk '/model name/ { sub(/.*: /, ""); print; exit }' /proc/cpuinfo), load $(cut -d' ' -f1-3 /proc/loadavg)"
    log=$(mktemp)
    lab_run=$(bench_lab_run "$repo" tsys-bench 1500 "$log")
    rm -f "$log"
fi
bench=$lab_run/out/bench.txt
[[ -s $bench ]] || die "no bench results in $bench"

# "circ-tsys: bench LOOP KIND median_ns=.. min_ns=.. max_ns=.. ratio_to_plain=.."
field() { grep -a "^circ-tsys: bench $1 $2 " "$bench" | tail -1 | tr ' ' '\n' | sed -n "s/^$3=//p"; }
echo "Trusted system calls, patched Xen 4.17 under nested QEMU TCG ($lab_run)"
printf '%-8s %-16s %12s %12s %12s %10s\n' loop kind median_ns min_ns max_ns vs_plain
for loop in getpid rw4k; do
    for kind in plain trusted-syscall trusted-int81; do
        printf '%-8s %-16s %12s %12s %12s %9sx\n' "$loop" "$kind" \
            "$(field "$loop" "$kind" median_ns)" "$(field "$loop" "$kind" min_ns)" \
            "$(field "$loop" "$kind" max_ns)" "$(field "$loop" "$kind" ratio_to_plain)"
    done
done
echo "target (issue 10): trusted-int81 at most 2x plain per call"
echo
echo "Sealed I/O (xen-patches/0004): a keyed process's pread/pwrite on a sealed tmpfs file"
echo "(ChaCha20-Poly1305 in Xen, 64 KiB per call) against an unregistered process's on a plain one"
printf '%-9s %-7s %12s %12s %12s %10s %12s\n' io kind median_ns min_ns max_ns vs_plain throughput
for io in file-w4k file-r4k file-w1m file-r1m; do
    for kind in plain sealed; do
        ratio=$(field "$io" "$kind" ratio_to_plain)
        printf '%-9s %-7s %12s %12s %12s %9sx %11sx\n' "$io" "$kind" \
            "$(field "$io" "$kind" median_ns)" "$(field "$io" "$kind" min_ns)" \
            "$(field "$io" "$kind" max_ns)" "$ratio" \
            "$(awk -v r="$ratio" 'BEGIN { if (r > 0) printf "%.2f", 1 / r; else print "?" }')"
    done
done
echo "target (issue 11): sealed 1 MiB writes (file-w1m) at least 0.5x plain throughput"
