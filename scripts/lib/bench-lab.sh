# shellcheck shell=bash
# Shared by the benchmarks that run a lab scenario on the patched hypervisor
# (scripts/bench memshare, scripts/bench tsys). The caller defines say and die.

# bench_lab_run REPO SCENARIO TIMEOUT_SECS LOG: builds with scripts/build
# unless $CIRC names a circ binary, runs `circ-lab run SCENARIO --xen
# patched` (its output in LOG) and prints the run directory it made. A
# failed run is said but not fatal: the caller reads what it recorded.
bench_lab_run() {
    local repo=$1 scenario=$2 limit=$3 log=$4
    local circ=${CIRC:-} runs started lab_rc=0 dir stamp found=
    if [[ -z $circ ]]; then
        say "building (scripts/build)"
        (cd "$repo" && timeout 1800 scripts/build) >&2
        circ=$repo/target/release/circ
    fi
    [[ -x $circ ]] || die "no circ binary at $circ"
    runs=${CIRC_LAB_RUNS:-$repo/lab-runs}
    started=$(date +%s)
    say "Xen: circ-lab run $scenario --xen patched ($((limit / 60)) minutes at most)"
    (cd "$repo" && timeout "$limit" "$(dirname "$circ")/circ-lab" run "$scenario" --xen patched) \
        >"$log" 2>&1 || lab_rc=$?
    ((lab_rc == 0)) || say "the lab run failed (exit $lab_rc): $(tail -n 3 "$log")"
    for dir in "$runs"/*-"$scenario"-patched; do
        stamp=$(basename "$dir")
        stamp=${stamp%%-*}
        if [[ $stamp =~ ^[0-9]+$ ]] && ((stamp >= started)); then
            found=$dir
        fi
    done
    [[ -n $found ]] || die "the lab run left no run directory under $runs (see its log: $(tail -n 3 "$log"))"
    printf '%s\n' "$found"
}
