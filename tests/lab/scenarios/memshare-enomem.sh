#!/bin/bash
# Scenario `memshare-enomem`: a copy-on-write break on a host with no free
# memory pauses the guest instead of crashing it, and circ-memshare gets it
# going again. Three PVH guests (ms-a, ms-b, ms-c, opted in) share their
# agents' identical 32 MiB buffers. Then a paused PV guest (the hog) takes
# all but a few MiB of Xen's free memory, and a guest overwrites half its
# shared buffer (16 MiB of copy-on-write breaks). Three guests, because
# breaking the last sharer of a frame needs no new frame (Xen makes it
# private again): after ms-a's write, ms-b's pages are still shared with ms-c.
# 1. daemon with --dom0-min-mib equal to dom0's memory (nothing to balloon):
#    ms-a's vCPU stays paused, not crashed; the daemon says what to do; the
#    scenario frees memory (xl destroy of the hog) and ms-a resumes by itself;
# 2. daemon restarted with the default floor, a new hog: ms-b's vCPU is
#    paused, the daemon balloons dom0 down and resumes it;
# 3. SIGTERM while ms-c's vCPU is paused and memory is short: exit 0, the
#    vCPU resumed, the rings left enabled (it pauses again, not crashed);
#    memory freed, the next daemon takes the rings over and ms-c finishes;
# 4. SIGKILL while ms-a's vCPU is paused: it stays paused (nobody answers)
#    even once memory is back; the next daemon's start resumes it.
# All guests then verify their whole buffer (copy-on-write held).
set -u
# shellcheck source=tests/lab/dom0/lib.sh
. /lab/lib.sh

STATUS_FILE=/run/circular/memshare.json

status() { circ share status --json --status-file "$STATUS_FILE" >"$LAB_OUT/$1.json"; }
free_mib() { xl info free_memory; }
domid() { xl domid "$1" 2>/dev/null; }
agent_state() { xenstore-read "/local/domain/$(domid "$1")/data/circ-agent/state" 2>/dev/null; }
agent_command() { xenstore-write "/local/domain/$(domid "$1")/data/circ-agent/command" "$2"; }
agent_filled() { [ "$(agent_state "$1")" = filled ]; }
# agent_answered GUEST COMMAND: the agent reported on COMMAND, ok or not.
agent_answered() { case $(agent_state "$1") in "$2 "*) return 0 ;; esac; return 1; }
agent_ok() { [ "$(agent_state "$1")" = "$2 ok" ] || { echo "state of $1: '$(agent_state "$1")'"; return 1; }; }
# alive NAME: exists and is not shut down, crashed or dying.
alive() { guest_alive "$1" || { echo "$1: '$(guest_state "$1")'"; return 1; }; }
# no_crash_logged DOMID...: Xen logged no "ENOMEM and no helper", and no
# triple fault or crash of these domains.
no_crash_logged() {
    local id found=0 log
    log=$( (cat "$LAB_OUT/xen-dmesg-saved.txt" 2>/dev/null; xl dmesg) )
    echo "$log" | grep 'ENOMEM and no helper' && found=1
    for id in "$@"; do
        echo "$log" | grep -E "d${id}v[0-9]+ Triple fault|Domain ${id} \(vcpu#[0-9]+\) crashed" && found=1
    done
    return "$found"
}

# vcpu_pauses NAME...: "NAME vCPU pause_count=N pause_flags=F" per vCPU,
# from Xen's domain dump (debug key q). A vCPU Xen paused for memory and
# nobody answered shows pause_count above zero with its domain running.
vcpu_pauses() {
    local dump name id
    # The dump may push older lines out of Xen's console ring: keep them
    # for no_crash_logged.
    xl dmesg >>"$LAB_OUT/xen-dmesg-saved.txt"
    xl debug-keys q
    dump=$(xl dmesg | awk '/pressed -> dumping domain info/ { buf = "" } { buf = buf $0 "\n" } END { printf "%s", buf }')
    for name in "$@"; do
        id=$(domid "$name")
        echo "$dump" | awk -v id="$id" -v name="$name" '
            /^\(XEN\) VCPU information and callbacks for domain / { mine = ($NF == id ":") }
            mine && /VCPU[0-9]+: CPU/ { vcpu = $2; sub(":", "", vcpu) }
            mine && /pause_count=/ { print name, vcpu, $2, $3 }'
    done
}
# dump_vcpus LABEL: on a failed step, what Xen says of the guests' vCPUs.
dump_vcpus() {
    vcpu_pauses ms-a ms-b ms-c >"$LAB_OUT/$1-vcpus.txt" 2>&1
    xl vcpu-list >>"$LAB_OUT/$1-vcpus.txt" 2>&1
    info "memshare-enomem: vCPUs after '$1'" "$(jq -Rsc . "$LAB_OUT/$1-vcpus.txt")"
}
# none_left_paused NAME...: every vCPU of these running guests has Xen's
# pause count at zero.
none_left_paused() {
    local out
    out=$(vcpu_pauses "$@")
    echo "$out"
    [ "$(echo "$out" | grep -c 'pause_count=')" -ge "$#" ] || { echo "no dump for some guest"; return 1; }
    ! echo "$out" | grep -q 'pause_count=[1-9]'
}

if [ "$LAB_XEN" = stock ]; then
    # No sharing, hence no copy-on-write breaks: only the report.
    check "circ share status runs" status stock
    check_json "status reports sharing unsupported" "$LAB_OUT/stock.json" '.host.sharing_supported == false'
    exit 0
fi

GUEST_READY=agent_filled GUEST_BOOT_SECS=240 \
    check "ms-a, ms-b, ms-c (PVH) boot and fill their buffers" start_guests pvh ms-a ms-b ms-c || exit 1
for g in ms-a ms-b ms-c; do
    check "circ share enable $g" circ share enable "$g"
done
domids="$(domid ms-a) $(domid ms-b) $(domid ms-c)"

dom0_mib() { xl list 0 | awk 'NR == 2 { print $3 }'; }
dom0_start=$(dom0_mib)
info "memshare-enomem: start" "$(jq -cn --argjson free "$(free_mib)" --argjson dom0 "$dom0_start" \
    '{free_mib: $free, dom0_mib: $dom0}')"

daemon=
# start_daemon FLAGS...: (re)start circ-memshare.
start_daemon() {
    circ-memshare --interval 2 --no-stability-wait --cpu-budget 1 --status-file "$STATUS_FILE" \
        "$@" >>"$LAB_OUT/daemon.log" 2>>"$LAB_OUT/daemon.err" &
    daemon=$!
}
# daemon_json FILTER: the running daemon's status holds FILTER.
daemon_json() {
    status now &&
        jq -e --argjson pid "$daemon" ".daemon.pid == \$pid and ($1)" "$LAB_OUT/now.json" >/dev/null
}
all_shared() {
    daemon_json '[.domains[] | select(.name | startswith("ms-")) | .shr_pages >= 8192] == [true, true, true]
                 and (.daemon.enomem.rings | length) == 3'
}

# Phase 1: nothing to balloon (floor = dom0's memory).
start_daemon --dom0-min-mib "$dom0_start"
check "daemon shares the buffers and holds a sharing ring per guest" wait_for 400 all_shared
check "status after sharing" status shared
info "memshare-enomem: shared" "$(jq -c '{host, enomem: .daemon.enomem}' "$LAB_OUT/shared.json")"

# fill_memory NAME: a paused PV guest that takes all of Xen's free memory
# but a few MiB (less than one guest's 16 MiB of copy-on-write breaks).
fill_memory() {
    local free cfg slack
    for slack in 4 8 16; do
        free=$(free_mib)
        cfg=$(guest_config "$1" pv $((free - slack)))
        if xl create -p "$cfg" >>"$LAB_OUT/xl.log" 2>&1; then
            echo "$1: $((free - slack)) MiB; Xen has $(free_mib) MiB free"
            [ "$(free_mib)" -lt 12 ]
            return
        fi
        xl destroy "$1" >/dev/null 2>&1
    done
    return 1
}
# watch_guest NAME FILE: sample what the operator sees while waiting.
watch_guest() {
    {
        date +%T
        xl list "$1" | tail -n 1
        xl vcpu-list "$1" | tail -n +2
        jq -c '.daemon.enomem | {paused_now, events, vcpus_resumed, dom0_ballooned_kib, at_dom0_floor}' \
            "$LAB_OUT/now.json" 2>/dev/null
    } >>"$2"
}

check "hog-1 takes Xen's free memory" fill_memory hog-1 || exit 1
t_write=$(now_ms)
check "ms-a starts overwriting half its shared buffer" agent_command ms-a write
paused() { daemon_json ".daemon.enomem.paused | any(.domid == $(domid "$1"))"; }
check "ms-a's vCPU is paused for memory (a sharing ring request)" wait_for 120 paused ms-a
timing "memshare-enomem: write to vCPU paused" $(($(now_ms) - t_write))
for _ in 1 2 3 4 5 6; do
    watch_guest ms-a "$LAB_OUT/phase1-ms-a.txt"
    sleep 1
done
info "memshare-enomem: ms-a while paused (xl list, xl vcpu-list, status)" \
    "$(jq -Rsc . "$LAB_OUT/phase1-ms-a.txt")"
check "ms-a is alive (not crashed) while paused" alive ms-a
still_writing() { ! agent_answered ms-a write || { echo "state: $(agent_state ms-a)"; return 1; }; }
check "ms-a has not finished its write while paused" still_writing
at_floor() { daemon_json '.daemon.enomem.at_dom0_floor and .daemon.enomem.paused_now >= 1'; }
check "status: paused, dom0 at its floor" wait_for 30 at_floor
check "status (text) shows the paused vCPUs" sh -c \
    "circ share status --status-file $STATUS_FILE | tee $LAB_OUT/paused.txt | grep -q 'paused now'"
check "the daemon logged what the operator must do" \
    grep -q "out of memory: vCPUs stay paused.*xl destroy" "$LAB_OUT/daemon.err"
check "dom0 was not ballooned below its floor" test "$(dom0_mib)" -ge $((dom0_start - 1))

t_free=$(now_ms)
check "operator frees memory: xl destroy hog-1" xl destroy hog-1
check "ms-a resumes by itself and its write completes" wait_for 180 agent_answered ms-a write
timing "memshare-enomem: memory freed to write done" $(($(now_ms) - t_free))
check "ms-a verified its whole buffer after the write" agent_ok ms-a write
resumed() { daemon_json '.daemon.enomem.vcpus_resumed >= 1 and .daemon.enomem.paused_now == 0'; }
check "status: vCPU resumed, none paused" wait_for 30 resumed
check "status after phase 1" status phase1
info "memshare-enomem: phase 1" "$(jq -c '.daemon.enomem' "$LAB_OUT/phase1.json")"
for g in ms-a ms-b ms-c; do
    check "$g alive" alive "$g"
done

# Phase 2: the default floor, so the daemon balloons dom0.
check "daemon stops" kill "$daemon"
wait "$daemon" 2>/dev/null
start_daemon
# The status file is written after each round: a round of three guests can
# take minutes when the host's cores are busy (seen at 120 s). Generous
# bound: the run's own time limit still catches a daemon that never comes.
rings_back() { daemon_json '(.daemon.enomem.rings | length) == 3'; }
check "restarted daemon holds the three rings" wait_for 300 rings_back
check "hog-2 takes Xen's free memory" fill_memory hog-2 || exit 1
t_write=$(now_ms)
check "ms-b starts overwriting half its shared buffer" agent_command ms-b write
: >"$LAB_OUT/phase2-ms-b.txt"
done_or_watch() {
    watch_guest ms-b "$LAB_OUT/phase2-ms-b.txt"
    agent_answered ms-b write
}
check "ms-b's write completes (paused, dom0 ballooned, resumed)" wait_for 180 done_or_watch
timing "memshare-enomem: write with ballooning" $(($(now_ms) - t_write))
info "memshare-enomem: ms-b during its write (xl list, xl vcpu-list, status)" \
    "$(jq -Rsc . "$LAB_OUT/phase2-ms-b.txt")"
check "ms-b verified its whole buffer after the write" agent_ok ms-b write
ballooned() {
    daemon_json '.daemon.enomem.events >= 1 and .daemon.enomem.vcpus_resumed >= 1
                 and .daemon.enomem.paused_now == 0 and .daemon.enomem.dom0_ballooned_kib >= 65536'
}
check "status: ENOMEM seen, dom0 ballooned >= 64 MiB, vCPU resumed" wait_for 30 ballooned
check "status after phase 2" status phase2
info "memshare-enomem: phase 2" "$(jq -c '.daemon.enomem' "$LAB_OUT/phase2.json")"
dom0_end=$(dom0_mib)
info "memshare-enomem: dom0 memory" "$(jq -cn --argjson a "$dom0_start" --argjson b "$dom0_end" \
    '{dom0_mib_start: $a, dom0_mib_end: $b}')"
check "dom0 gave memory back ($dom0_start -> $dom0_end MiB)" test "$dom0_end" -le $((dom0_start - 32))
check "the daemon logged the ballooning" grep -q "ballooning dom0 down" "$LAB_OUT/daemon.err"

check "xl destroy hog-2" xl destroy hog-2

# Phase 3: SIGTERM while a vCPU is paused for memory, memory still short.
# The daemon must resume the vCPU, exit 0 and, since Xen is still short,
# leave the rings enabled: the retried write pauses the vCPU again rather
# than Xen crashing the guest ("ENOMEM and no helper"). ms-c overwrites the
# first half of its buffer, still shared by all three guests.
check "daemon stops (SIGTERM)" kill "$daemon"
wait "$daemon" 2>/dev/null
start_daemon --dom0-min-mib "$(dom0_mib)"
check "daemon with nothing to balloon holds the three rings" wait_for 300 rings_back
check "hog-3 takes Xen's free memory" fill_memory hog-3 || exit 1
check "ms-c starts overwriting the first half of its shared buffer" agent_command ms-c write-first
check "ms-c's vCPU is paused for memory" wait_for 120 paused ms-c
t_term=$(now_ms)
kill -TERM "$daemon"
term_rc=0
wait "$daemon" || term_rc=$?
timing "memshare-enomem: SIGTERM to exit" $(($(now_ms) - t_term))
check_eq "SIGTERM with a vCPU paused: the daemon exits 0" 0 "$term_rc"
check "final status written" status term
info "memshare-enomem: stopped by SIGTERM" "$(jq -c '.daemon | {stopped, enomem}' "$LAB_OUT/term.json")"
check_json "final status: the paused vCPU was resumed, rings left enabled (memory short)" "$LAB_OUT/term.json" \
    '.daemon.stopped.vcpus_resumed >= 1 and (.daemon.stopped.rings_left_enabled | length) == 3
     and .daemon.enomem.paused_now == 0'
check "the daemon logged why it left the rings enabled" \
    grep -q "stopping while Xen is short of memory" "$LAB_OUT/daemon.err"
sleep 5
check "ms-c alive after the daemon stopped (not crashed)" alive ms-c
still_writing_c() { ! agent_answered ms-c write-first || { echo "state: $(agent_state ms-c)"; return 1; }; }
check "ms-c's write, still short of memory, paused again on the ring left enabled" still_writing_c
check "operator frees memory: xl destroy hog-3" xl destroy hog-3
sleep 5
check "ms-c stays paused with nobody on its ring" still_writing_c
start_daemon
check "the next daemon takes over the rings and ms-c's write completes" \
    wait_for 180 agent_answered ms-c write-first || dump_vcpus phase3-takeover
check "after the take-over no guest vCPU is left paused by Xen" none_left_paused ms-a ms-b ms-c
check "ms-c verified its whole buffer" agent_ok ms-c write-first
check "the daemon logged the take-over" grep -q "took over a sharing ring" "$LAB_OUT/daemon.err"

# Phase 4: SIGKILL while a vCPU is paused; the next start resumes it. ms-a
# overwrites its first half (still shared with ms-b).
kill "$daemon"
wait "$daemon" 2>/dev/null
start_daemon --dom0-min-mib "$(dom0_mib)"
check "daemon (nothing to balloon) holds the three rings again" wait_for 300 rings_back
check "hog-4 takes Xen's free memory" fill_memory hog-4 || exit 1
check "ms-a starts overwriting the first half of its buffer" agent_command ms-a write-first
check "ms-a's vCPU is paused for memory" wait_for 120 paused ms-a || dump_vcpus phase4-write
check "SIGKILL the daemon" kill -KILL "$daemon"
wait "$daemon" 2>/dev/null
check "operator frees memory: xl destroy hog-4" xl destroy hog-4
sleep 5
still_writing_a() { ! agent_answered ms-a write-first || { echo "state: $(agent_state ms-a)"; return 1; }; }
check "ms-a stays paused after SIGKILL (nobody answers its ring)" still_writing_a
check "ms-a alive (paused, not crashed)" alive ms-a
t_start=$(now_ms)
start_daemon
check "the next start resumes ms-a and its write completes" wait_for 180 agent_answered ms-a write-first ||
    dump_vcpus phase4-takeover
timing "memshare-enomem: daemon start to the killed daemon's vCPU resumed and write done" $(($(now_ms) - t_start))
check "ms-a verified its whole buffer" agent_ok ms-a write-first
check "after the second take-over no guest vCPU is left paused by Xen" none_left_paused ms-a ms-b ms-c
check "status after the take-over" status takeover
check_json "the new daemon holds all three rings" "$LAB_OUT/takeover.json" '(.daemon.enomem.rings | length) == 3'

for g in ms-a ms-b ms-c; do
    agent_command "$g" verify-2
    check "$g verifies its buffer again" wait_for 90 agent_answered "$g" verify-2
    check "$g: verify-2 ok" agent_ok "$g" verify-2
    check "$g still alive" alive "$g"
done
# shellcheck disable=SC2086 # one word per domid
check "Xen logged no crash of the guests (and no 'ENOMEM and no helper')" no_crash_logged $domids
check "the daemon reported no fatal error" sh -c "! grep -q '^circ-memshare:' $LAB_OUT/daemon.err"
check "daemon still running" kill -0 "$daemon"
kill "$daemon"
wait "$daemon" 2>/dev/null
xl destroy ms-a
xl destroy ms-b
xl destroy ms-c
