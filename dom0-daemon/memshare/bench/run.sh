#!/usr/bin/env bash
# memshare benchmark (issue 5), apart from the tests: circ-memshare on Xen
# against its named peer, Linux KSM on this machine's kernel, in the same
# run, on the same guest (the lab's guest kernel and this run's guest
# initrd, whose circ-guest-agent fills the same 32 MiB in every guest), and
# printed with ratios. Nothing is asserted. Run through
# `scripts/bench memshare`; method and results: docs/memshare.md,
# "Benchmark".
#
#   Xen: `circ-lab run memshare --xen patched` (two 128 MiB PVH guests
#        shared by the daemon, under nested TCG); read from its run
#        directory (out/before.json, out/shared.json, out/freed-samples.txt).
#   KSM: two QEMU TCG processes on the host booting the same kernel and
#        initrd with the same memory; KSM turned on once both agents have
#        filled their buffers, /sys/kernel/mm/ksm and ksmd's CPU time
#        sampled every second until steady; then the guests' RAM is read
#        page by page (guest_pages.py) for the sharing that was possible.
#
# Figures, both sides: memory saved as a fraction of guest memory (and of
# what the host held), saved / possible (Satori's measure), CPU seconds per
# GiB scanned, time to 90% and to 99% of the final saving.
#
# RUN ALONE: it boots QEMUs and a lab run and writes the host's KSM
# settings (restored at exit). On a shared machine, serialize it with the
# other heavy jobs: `flock /tmp/circ-heavy.lock scripts/bench memshare`
# (this script does not take the lock itself). Needs root.
#
# Settings (environment):
#   CIRC_BENCH_LAB_RUN            an existing memshare lab run directory to
#                                 read instead of running the scenario
#   CIRC_BENCH_KSM_PAGES_TO_SCAN  KSM pages_to_scan (1000)
#   CIRC_BENCH_KSM_SLEEP_MS       KSM sleep_millisecs (20): 1000 pages every
#                                 20 ms is 50,000 pages/s at most, the
#                                 daemon's default --pages-per-sec
#   CIRC_BENCH_SETTLE_SAMPLES     KSM is steady when the saving moved less
#                                 than 0.5% over this many 1 s samples (15)
#   CIRC_BENCH_KSM_LIMIT          seconds of KSM sampling at most (600)
#   CIRC_BENCH_KEEP=1             keep the work directory
#   CIRC                          circ binary (default: scripts/build, then
#                                 target/release/circ)
# QEMU runs with no NIC and no monitor and is killed on exit; every step
# runs under `timeout`.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)

pages_to_scan=${CIRC_BENCH_KSM_PAGES_TO_SCAN:-1000}
sleep_ms=${CIRC_BENCH_KSM_SLEEP_MS:-20}
settle_samples=${CIRC_BENCH_SETTLE_SAMPLES:-15}
ksm_limit=${CIRC_BENCH_KSM_LIMIT:-600}
lab_run=${CIRC_BENCH_LAB_RUN:-}
ksm=/sys/kernel/mm/ksm
page_kib=4

say() { printf '%s\n' "$*" >&2; }
# shellcheck source=scripts/lib/bench-lab.sh
. "$repo/scripts/lib/bench-lab.sh"
die() {
    say "bench: $*"
    exit 1
}
# Arithmetic on decimals; "n/a" in, "n/a" out.
calc() {
    case "$*" in
    *n/a*) echo n/a ;;
    *) awk "BEGIN { printf \"%.4g\", $* }" ;;
    esac
}
# A ratio, or n/a when either side is missing or the divisor is zero.
ratio() {
    if [[ $1 == n/a || $2 == n/a ]] || awk -v b="$2" 'BEGIN { exit !(b == 0) }'; then
        echo n/a
    else
        calc "$1 / $2"
    fi
}
pct() {
    if [[ $1 == n/a || $2 == n/a ]]; then echo n/a; else calc "100 * $1 / $2"; fi
}

[[ $(id -u) == 0 ]] || die "run as root (KSM settings, /proc/PID/pagemap, /proc/kpageflags)"
[[ -w $ksm/run ]] || die "$ksm is missing or not writable"
for cmd in qemu-system-x86_64 jq python3 timeout awk; do
    command -v "$cmd" >/dev/null || die "missing $cmd"
done
clk_tck=$(getconf CLK_TCK)

work=$(mktemp -d /tmp/circ-bench-memshare.XXXXXX)
qemu_pids=()
ksm_saved=()
# Unmerges everything KSM merged (run=2) and stops the guests.
stop_guests() {
    local pid
    if ((${#ksm_saved[@]})); then
        timeout 120 sh -c "echo 2 >$ksm/run" || say "could not unmerge KSM pages"
    fi
    for pid in "${qemu_pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${qemu_pids[@]}"; do
        timeout 30 tail --pid="$pid" -f /dev/null 2>/dev/null || kill -9 "$pid" 2>/dev/null || true
    done
    qemu_pids=()
}
cleanup() {
    local setting
    stop_guests
    # Then the KSM settings as they were.
    for setting in "${ksm_saved[@]}"; do
        echo "${setting#*=}" >"$ksm/${setting%%=*}" || say "could not restore $ksm/${setting%%=*}"
    done
    if [[ ${CIRC_BENCH_KEEP:-0} == 1 ]]; then
        say "work directory kept: $work"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

machine() {
    say "machine: $(nproc) cores, $(awk '/model name/ { sub(/.*: /, ""); print; exit }' /proc/cpuinfo), kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
}

# --- Xen: the lab's memshare scenario ------------------------------------------

if [[ -z $lab_run ]]; then
    machine
    lab_run=$(bench_lab_run "$repo" memshare 1500 "$work/lab.log")
fi
[[ -d $lab_run/out ]] || die "no out/ in $lab_run"
say "Xen: run directory $lab_run"

xen_json() { # xen_json FILE FILTER: a value, or n/a
    local v
    v=$(jq -r "$2 // \"n/a\"" "$lab_run/out/$1" 2>/dev/null) || v=n/a
    echo "${v:-n/a}"
}
# Guest memory before sharing: ms-a + ms-b.
x_guest_pages=$(xen_json before.json \
    '[.domains[] | select(.name == "ms-a" or .name == "ms-b") | .memory_kib] | if length == 2 then add / 4 else null end')
x_saved=$(xen_json shared.json '.host.freed_pages')
x_possible=$(xen_json shared.json '.daemon.last_round.duplicate_pages')
x_zero=$(xen_json shared.json '.daemon.last_round.zero_pages')
x_scanned=$(xen_json shared.json '.daemon.pages_scanned_total')
x_cpu=$(xen_json shared.json '.daemon.cpu_seconds')
x_window=$(xen_json shared.json \
    'if .daemon.started_unix_ms then (.daemon.updated_unix_ms - .daemon.started_unix_ms) / 1000 else null end')
x_rounds=$(xen_json shared.json '.daemon.rounds')
x_after_pages=$(xen_json shared.json \
    '[.domains[] | select(.name == "ms-a" or .name == "ms-b") | .memory_kib] | if length == 2 then add / 4 else null end')
x_frames=$(xen_json shared.json '.host.used_frames')
x_settled=n/a
if [[ -f $lab_run/report.json ]]; then
    x_settled=$(jq -r '[.events[] | .[1] | select(.event == "timing" and .name == "memshare: daemon start to settled") | .ms / 1000] | first // "n/a"' "$lab_run/report.json")
fi
# first_at SAMPLES FRACTION: seconds of the first sample reaching FRACTION
# of the last one ("t value" lines).
first_at() {
    awk -v f="$2" '{ t[NR] = $1; v[NR] = $2 } END {
        if (NR == 0 || v[NR] <= 0) { print "n/a"; exit }
        for (i = 1; i <= NR; i++) if (v[i] >= f * v[NR]) { printf "%.1f\n", t[i]; exit }
    }' "$1"
}
x_samples=$work/xen-samples.txt
if [[ -s $lab_run/out/freed-samples.txt ]]; then
    awk '{ print $1 / 1000, $2 }' "$lab_run/out/freed-samples.txt" >"$x_samples"
else
    : >"$x_samples"
fi
x_t90=$(first_at "$x_samples" 0.9)
x_t99=$(first_at "$x_samples" 0.99)
# Host memory held by the guests after sharing: their private pages plus
# the shared frames (all of them back ms-a/ms-b pages here).
x_held_after=n/a
[[ $x_after_pages != n/a && $x_frames != n/a ]] && x_held_after=$(calc "$x_after_pages + $x_frames")
[[ $x_saved == n/a ]] && say "Xen: no shared.json figures (the scenario did not reach 'settled')"
[[ $x_cpu == n/a ]] && say "Xen: the run's daemon reports no CPU time (built before the accounting?)"

# --- KSM: two QEMU guests on the host --------------------------------------------

kernel=$(awk '{ for (i = 1; i < NF; i++) if ($i == "-initrd") { print $(i + 1); exit } }' "$lab_run/qemu.cmdline")
initrd=$lab_run/guest-initrd.gz
[[ -f $kernel ]] || die "no guest kernel (from $lab_run/qemu.cmdline): $kernel"
[[ -f $initrd ]] || die "no guest initrd: $initrd"
guest_mib=n/a
if [[ $x_guest_pages != n/a ]]; then
    guest_mib=$(calc "$x_guest_pages / 2 * $page_kib / 1024")
    guest_mib=${guest_mib%.*}
fi
# xl's memory = 128 is 128 MiB plus a few pages of Xen's; QEMU gets 128.
[[ $guest_mib =~ ^[0-9]+$ ]] && ((guest_mib >= 128 && guest_mib < 132)) || guest_mib=128

# Another process with merged pages would blur the host-wide counters.
others=0
for f in /proc/[0-9]*/ksm_merging_pages; do
    n=$(cat "$f" 2>/dev/null) || continue
    others=$((others + n))
done
((others == 0)) || say "warning: other processes have $others pages merged by KSM already"

for setting in run pages_to_scan sleep_millisecs; do
    ksm_saved+=("$setting=$(cat "$ksm/$setting")")
done
echo 0 >"$ksm/run"
echo "$pages_to_scan" >"$ksm/pages_to_scan"
echo "$sleep_ms" >"$ksm/sleep_millisecs"
ksm_settings=$(for s in pages_to_scan sleep_millisecs use_zero_pages merge_across_nodes max_page_sharing smart_scan advisor_mode; do
    [[ -r $ksm/$s ]] && printf '%s=%s ' "$s" "$(cat "$ksm/$s")"
done)
thp=$(sed 's/.*\[\(.*\)\].*/\1/' /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null || echo n/a)

machine
say "KSM: two QEMU TCG guests, ${guest_mib} MiB each: $kernel + $initrd"
boot_t0=$(date +%s.%N)
for g in a b; do
    timeout $((ksm_limit + 900)) qemu-system-x86_64 -accel tcg -smp 1 -cpu qemu64 -m "$guest_mib" \
        -kernel "$kernel" -initrd "$initrd" -append "console=ttyS0 quiet" \
        -display none -vga none -monitor none -nic none -no-reboot \
        -serial "file:$work/guest-$g.log" -pidfile "$work/qemu-$g.pid" \
        2>"$work/qemu-$g.err" &
    for ((i = 0; i < 100; i++)); do
        [[ -s $work/qemu-$g.pid ]] && break
        sleep 0.1
    done
    [[ -s $work/qemu-$g.pid ]] || die "QEMU $g did not start: $(cat "$work/qemu-$g.err")"
    qemu_pids+=("$(cat "$work/qemu-$g.pid")")
done
filled() { grep -q 'circ-guest-agent: .*filled' "$work/guest-$1.log" 2>/dev/null; }
for g in a b; do
    for ((i = 0; i < 3000; i++)); do
        filled "$g" && break
        grep -q 'circ-guest-agent: no xenbus.*idle' "$work/guest-$g.log" 2>/dev/null &&
            die "this initrd's circ-guest-agent does not fill its buffer without Xen (built before that change): rebuild and run the lab again"
        sleep 0.1
    done
    filled "$g" || die "guest $g: the agent did not fill its buffer in 300 s: $(tail -n 3 "$work/guest-$g.log")"
done
boot_s=$(calc "$(date +%s.%N) - $boot_t0")
say "KSM: both guests filled their buffers after ${boot_s} s"
sleep 2

pages_before=$(timeout 120 python3 "$here/guest_pages.py" "$guest_mib" "${qemu_pids[@]}") ||
    die "reading the guests' RAM failed"

ksmd=$(ps -eo pid=,comm= | awk '$2 == "ksmd" { print $1; exit }')
[[ -n $ksmd ]] || die "no ksmd thread"
ksmd_ticks() { awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$ksmd/stat"; }
counter() { cat "$ksm/$1"; }
# Anonymous memory the QEMUs hold (KiB): a page merged by KSM counts in
# each process mapping it; the kernel's zero page counts in none.
rss_anon() {
    local pid sum=0
    for pid in "${qemu_pids[@]}"; do
        sum=$((sum + $(awk '/^RssAnon:/ { print $2 }' "/proc/$pid/status")))
    done
    echo "$sum"
}
merging() {
    local pid sum=0
    for pid in "${qemu_pids[@]}"; do
        sum=$((sum + $(cat "/proc/$pid/ksm_merging_pages")))
    done
    echo "$sum"
}

scanned0=$(counter pages_scanned)
scans0=$(counter full_scans)
ticks0=$(ksmd_ticks)
rss0=$(rss_anon)
samples=$work/ksm-samples.txt
: >"$samples"
say "KSM: on ($ksm_settings)"
t0=$(date +%s.%N)
echo 1 >"$ksm/run"
steady=0
for ((i = 1; i <= ksm_limit; i++)); do
    sleep 1
    t=$(calc "$(date +%s.%N) - $t0")
    # t saved sharing shared scanned full_scans ksmd_cpu_s merging_pages
    # saved: pages the host got back, by merging (pages_sharing) or because
    # a huge page split by KSM returned its zero-filled subpages to the
    # zero page (kernels >= 6.12): the drop in RssAnon counts those.
    sharing=$(counter pages_sharing)
    printf '%s %s %s %s %s %s %s %s\n' "$t" "$(((rss0 - $(rss_anon)) / page_kib + sharing))" "$sharing" \
        "$(counter pages_shared)" "$(($(counter pages_scanned) - scanned0))" \
        "$(($(counter full_scans) - scans0))" "$(calc "($(ksmd_ticks) - $ticks0) / $clk_tck")" \
        "$(merging)" >>"$samples"
    if ((i > settle_samples)); then
        # Steady: two full scans done, and the saving moved less than 0.5%
        # over the last settle_samples samples.
        if awk -v n="$settle_samples" '{ v[NR] = $2; s[NR] = $6 } END {
            a = v[NR - n]; b = v[NR]; d = b - a; if (d < 0) d = -d
            exit !(s[NR] >= 2 && b > 0 && d <= 0.005 * b) }' "$samples"; then
            steady=1
            break
        fi
    fi
done
((steady)) || say "KSM: not steady after $ksm_limit s; figures are as of then"
pages_after=$(timeout 120 python3 "$here/guest_pages.py" "$guest_mib" "${qemu_pids[@]}") ||
    die "reading the guests' RAM failed"
stop_guests
printf '%s\n' "$pages_before" >"$work/guest-pages-before.json"
printf '%s\n' "$pages_after" >"$work/guest-pages-after.json"

# --- calibration: the daemon's scan on the host's own CPU ---------------------------
say "calibration: circ-memshare's scan over the fake hypervisor on the host"
(cd "$repo" && timeout 900 cargo build --release -q -p circ-memshare --example scan_cost) >&2
native=$(timeout 600 "$repo/target/release/examples/scan_cost" "$((guest_mib * 256 + 18))" 8) ||
    die "scan_cost failed"
n_per_gib=$(calc "$(jq -r .cpu_seconds_per_gib_scanned <<<"$native")")
read -r k_window k_saved k_sharing k_shared k_scanned k_scans k_cpu k_merging <<<"$(tail -n 1 "$samples")"
k_guest_pages=$((2 * guest_mib * 1024 / page_kib))
# From the guests' RAM, page by page: before KSM and at the end. Held
# after = populated pages (merged ones counted in each guest, zero-page
# mappings not at all) minus pages_sharing (the extra mappings of KSM pages).
k_populated=$(jq -r .populated <<<"$pages_before")
k_possible=$(jq -r .duplicate <<<"$pages_before")
k_possible_after=$(jq -r .duplicate <<<"$pages_after")
k_zero=$(jq -r .zero <<<"$pages_before")
k_thp_before=$(jq -r .thp <<<"$pages_before")
k_held_after=$(($(jq -r .populated <<<"$pages_after") - k_sharing))
k_saved_ram=$((k_populated - k_held_after))
k_t90=$(first_at <(awk '{ print $1, $2 }' "$samples") 0.9)
k_t99=$(first_at <(awk '{ print $1, $2 }' "$samples") 0.99)
k_scans_t99=$(awk -v t="$k_t99" '$1 >= t { print $6; exit }' "$samples")
foreign=$((k_merging - k_sharing - k_shared))
((foreign == 0)) || say "note: KSM's host-wide counters and the QEMUs' own differ by $foreign pages (other merged processes?)"

# --- report ----------------------------------------------------------------------

gib() { calc "$1 * $page_kib / 1048576"; }
mib() { if [[ $1 == n/a ]]; then echo n/a; else calc "$1 * $page_kib / 1024"; fi; }
x_gib=n/a
[[ $x_scanned != n/a ]] && x_gib=$(gib "$x_scanned")
k_gib=$(gib "$k_scanned")
x_per_gib=$(ratio "$x_cpu" "$x_gib")
k_per_gib=$(ratio "$k_cpu" "$k_gib")
x_core=$(ratio "$x_cpu" "$x_window")
k_core=$(ratio "$k_cpu" "$k_window")

row() { printf '%-44s %14s %14s %10s\n' "$@"; }
echo
echo "memshare benchmark: circ-memshare (Xen, lab) vs Linux KSM (host), same guest kernel + initrd"
echo "  Xen run: $lab_run (rounds $x_rounds)"
echo "  KSM: kernel $(uname -r), $ksm_settings; THP $thp; guests booted and filled in ${boot_s} s"
echo "  machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo
row "" "Xen+daemon" "KSM" "Xen/KSM"
row "guest memory, 2 guests (MiB)" "$(mib "$x_guest_pages")" "$(mib "$k_guest_pages")" "$(ratio "$x_guest_pages" "$k_guest_pages")"
row "held by the host before (MiB)" "$(mib "$x_guest_pages")" "$(mib "$k_populated")" "$(ratio "$x_guest_pages" "$k_populated")"
row "  of which THP-backed (MiB)" "0" "$(mib "$k_thp_before")" ""
row "zero pages among them, before (MiB)" "$(mib "$x_zero")" "$(mib "$k_zero")" "$(ratio "$x_zero" "$k_zero")"
row "possible saving (MiB)" "$(mib "$x_possible")" "$(mib "$k_possible")" "$(ratio "$x_possible" "$k_possible")"
row "saved at steady state (MiB)" "$(mib "$x_saved")" "$(mib "$k_saved")" "$(ratio "$x_saved" "$k_saved")"
row "  of which merged (Xen: freed; KSM: sharing)" "$(mib "$x_saved")" "$(mib "$k_sharing")" "$(ratio "$x_saved" "$k_sharing")"
row "saved / guest memory (%)" "$(pct "$x_saved" "$x_guest_pages")" "$(pct "$k_saved" "$k_guest_pages")" "$(ratio "$(pct "$x_saved" "$x_guest_pages")" "$(pct "$k_saved" "$k_guest_pages")")"
row "saved / held before (%)" "$(pct "$x_saved" "$x_guest_pages")" "$(pct "$k_saved" "$k_populated")" "$(ratio "$(pct "$x_saved" "$x_guest_pages")" "$(pct "$k_saved" "$k_populated")")"
row "saved / possible (%) [Satori: 94]" "$(pct "$x_saved" "$x_possible")" "$(pct "$k_saved" "$k_possible")" "$(ratio "$(pct "$x_saved" "$x_possible")" "$(pct "$k_saved" "$k_possible")")"
row "held by the host after (MiB)" "$(mib "$x_held_after")" "$(mib "$k_held_after")" "$(ratio "$x_held_after" "$k_held_after")"
row "scanned until steady/settled (GiB)" "$x_gib" "$k_gib" "$(ratio "$x_gib" "$k_gib")"
row "scanner CPU until then (s)" "$x_cpu" "$k_cpu" "$(ratio "$x_cpu" "$k_cpu")"
row "CPU s per GiB scanned" "$x_per_gib" "$k_per_gib" "$(ratio "$x_per_gib" "$k_per_gib")"
row "  daemon's scan alone, host CPU (fake hv)" "$n_per_gib" "$k_per_gib" "$(ratio "$n_per_gib" "$k_per_gib")"
row "scanner CPU / wall (cores)" "$x_core" "$k_core" "$(ratio "$x_core" "$k_core")"
row "time to 90% of final saving (s)" "$x_t90" "$k_t90" "$(ratio "$x_t90" "$k_t90")"
row "time to 99% of final saving (s)" "$x_t99" "$k_t99" "$(ratio "$x_t99" "$k_t99")"
row "time to settled/steady (s)" "$x_settled" "$k_window" "$(ratio "$x_settled" "$k_window")"
row "rounds / full scans until settled/steady" "$x_rounds" "$k_scans" ""
echo
echo "  Xen possible saving: the daemon's last round (pages scanned minus distinct contents); KSM's: the guests' populated RAM when KSM was turned on (at the end: $(mib "$k_possible_after") MiB)"
echo "  KSM saved: RssAnon drop + pages_sharing = $(mib "$k_saved") MiB; from the guests' RAM page by page: $(mib "$k_saved_ram") MiB; pages_shared $k_shared; full scans until 99%: ${k_scans_t99:-n/a}"
echo "  Xen: daemon start to 'settled' = a round shared nothing (lab); KSM: saving moved < 0.5% over ${settle_samples} s, >= 2 full scans"
echo "  Xen's CPU seconds are dom0's (a vCPU under nested TCG; user $(xen_json shared.json '.daemon.cpu_user_ms / 1000') s, system $(xen_json shared.json '.daemon.cpu_system_ms / 1000') s); ksmd's are the host's"
echo "  daemon's scan alone: examples/scan_cost, first rounds (map, copy, key; no sharing) of 2 x $((guest_mib * 256 + 18)) pages, 8 times: $native"
echo "  Satori (seed paper): 93% of a statified Gentoo guest's duplicated pages deduplicated after login; up to 94% of possible sharing"
