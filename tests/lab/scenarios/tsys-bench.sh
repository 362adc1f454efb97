#!/bin/bash
# Scenario `tsys-bench` (scripts/bench tsys, not a test): the cost of a
# trusted system call on the patched hypervisor. The guest's circ-tsys-probe,
# started with `circ.tsys=bench`, registers one process with the token dom0
# arms and runs, round after round, the same loops in it through int 0x81
# and through a plain `syscall`, and in an unregistered process through
# `syscall`: getpid, and a 4 KiB write plus a 4 KiB read on a pipe; and
# sealed I/O (xen-patches/0004, the token carries a key) against plain
# pread/pwrite on a tmpfs file, 4 KiB and 1 MiB. Its
# `circ-tsys: bench` lines (medians per call and ratios) are copied to
# $LAB_OUT/bench.txt for hvm-support/tsys-launch/bench/run.sh. The checks
# only say that the benchmark ran; no time is asserted.
set -u
# shellcheck source=tests/lab/dom0/lib.sh
. /lab/lib.sh

GUEST=tsys-bench
# loglevel=7: a worker's fatal signal shows on the console.
export GUEST_CMDLINE="circ.tsys=bench loglevel=7"
export GUEST_MEMORY=256

check "PV guest boots to its init" start_guest "$GUEST" pv
dom=$(xl domid "$GUEST")
con=$(guest_console "$GUEST")
probe_said() { grep -aq "circ-tsys: $1" "$con"; }
check "the guest's probe waits for its token" wait_for 60 probe_said "waiting for data/tsys/token"
head -c 32 /dev/urandom >"$LAB_OUT/bench.key"
check "circ tsys authorise --key-file" circ tsys authorise "$dom" --key-file "$LAB_OUT/bench.key"
t0=$(now_ms)
check "the benchmark finishes" wait_for 900 probe_said "done"
timing "tsys benchmark in the guest" $(($(now_ms) - t0))
tr -d '\r' <"$con" | grep -a '^circ-tsys: ' >"$LAB_OUT/bench.txt"
check "the guest reported both loops ran and its workers exited cleanly" sh -c \
    "grep -q 'check bench-getpid-ran ok' '$LAB_OUT/bench.txt' &&
     grep -q 'check bench-rw-ran ok' '$LAB_OUT/bench.txt' &&
     grep -q 'check bench-file-ran ok' '$LAB_OUT/bench.txt' &&
     grep -q 'check bench-workers ok' '$LAB_OUT/bench.txt'"
check_eq "14 bench lines (two loops, three kinds; four I/O figures, two kinds)" 14 \
    "$(grep -c '^circ-tsys: bench ' "$LAB_OUT/bench.txt")"
check "Xen is still up (xl info)" sh -c 'xl info >/dev/null'
check "xl destroy the guest" xl destroy "$GUEST"
