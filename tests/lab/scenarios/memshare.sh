#!/bin/bash
# Scenario `memshare`: the page sharing daemon on real Xen. Three PVH guests
# (ms-a and ms-b opted in, ms-c not) each run circ-guest-agent, which fills
# a 32 MiB buffer with the same pattern in every guest. circ-memshare shares
# identical pages; then each guest overwrites half its buffer with its own
# pattern and verifies all of it (copy-on-write: no guest ever sees another's
# bytes); a shared guest is destroyed and the host must stay consistent.
# On the stock hypervisor (no CONFIG_MEM_SHARING) the tools must refuse cleanly.
#
# A guest that crashes fails the run, at once. Only a guest that dies (or
# stays silent) while booting, before any sharing, is created again, once
# (start_guests): emulated SVM has triple-faulted PVH guests at boot.
set -u
# shellcheck source=tests/lab/dom0/lib.sh
. /lab/lib.sh

STATUS_FILE=/run/circular/memshare.json

# status NAME: `circ share status --json` into $LAB_OUT/NAME.json.
status() { circ share status --json --status-file "$STATUS_FILE" >"$LAB_OUT/$1.json"; }
# field FILE NAME FIELD: a field of the named domain in a status file.
field() { jq -r --arg n "$2" ".domains[] | select(.name == \$n) | .$3" "$LAB_OUT/$1.json"; }
host_field() { jq -r ".host.$2" "$LAB_OUT/$1.json"; }
free_mib() { xl info free_memory; }

domid() { xl domid "$1" 2>/dev/null; }
agent_state() { xenstore-read "/local/domain/$(domid "$1")/data/circ-agent/state" 2>/dev/null; }
agent_command() { xenstore-write "/local/domain/$(domid "$1")/data/circ-agent/command" "$2"; }
state_is() { [ "$(agent_state "$1")" = "$2" ]; }
# agent_says_ok GUEST COMMAND: send COMMAND, wait for "COMMAND ok".
agent_says_ok() {
    agent_command "$1" "$2" || return 1
    wait_running 90 agent_answered "$1" "$2"
    state_is "$1" "$2 ok" || { echo "state of $1: $(agent_state "$1")"; return 1; }
    echo "$1: $(agent_state "$1")"
}
# agent_answered GUEST COMMAND: the agent reported on COMMAND, ok or not.
agent_answered() { case $(agent_state "$1") in "$2 "*) return 0 ;; esac; return 1; }
# agent_gfns GUEST FILE: the gfns of the agent's buffer pages (buffer order,
# one per line), as the agent read them from its pagemap.
agent_gfns() {
    local base n i
    base="/local/domain/$(domid "$1")/data/circ-agent/gfns"
    n=$(xenstore-read "$base/count") || return 1
    for ((i = 0; i < n; i++)); do
        xenstore-read "$base/$i" || return 1
    done | tr ' ' '\n' | grep . >"$2"
    [ "$(wc -l <"$2")" -eq 8192 ] || { echo "$1: $(wc -l <"$2") gfns"; return 1; }
}
# pages NAME GUEST [FILE]: `circ share pages` of the guest's buffer gfns (or
# FILE) into $LAB_OUT/NAME.json.
pages() {
    circ share pages "$2" --gfn-file "${3:-$LAB_OUT/gfns-$2.txt}" --json >"$LAB_OUT/$1.json"
}

# The guests that must be running, and the domid each one booted as.
LIVE=()
declare -A DOMID
# guests_dead: "NAME(state)" for each guest of LIVE that is no longer running
# as the domain it booted as (crashed, shut down, rebooted or gone).
guests_dead() {
    local list g line state
    list=$(xl list 2>/dev/null) || { echo "(xl list failed)"; return; }
    for g in "${LIVE[@]}"; do
        line=$(awk -v n="$g" '$1 == n { print $2, $5 }' <<<"$list")
        state=${line#* }
        case $line in
        "${DOMID[$g]} "*) [ "${state#*[scd]}" = "$state" ] || printf '%s(%s) ' "$g" "$state" ;;
        *) printf '%s(%s) ' "$g" "${line:-gone}" ;;
        esac
    done
}
# guests_running: every guest of LIVE still runs; otherwise says which died
# and what Xen logged about them.
guests_running() {
    local dead
    dead=$(guests_dead)
    [ -z "$dead" ] && return 0
    echo "guest died: $dead"
    xl dmesg | grep -E 'Triple fault|crash' | tail -n 5
    return 1
}
# stop_unless_guests_run: a guest that crashed fails the run at once (the
# remaining steps would only time out).
stop_unless_guests_run() {
    [ -z "$(guests_dead)" ] && return 0
    check "all guests still running" guests_running
    exit 1
}
# wait_running SECONDS CMD...: wait_for, but gives up as soon as a guest died.
wait_running() {
    local deadline=$(($(date +%s) + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        guests_running || return 1
        [ "$(date +%s)" -ge "$deadline" ] && return 1
        sleep 1
    done
}
# no_crash_logged NAME...: Xen logged no triple fault or crash of the domain
# each guest booted as.
no_crash_logged() {
    local g id found=0
    for g in "$@"; do
        id=${DOMID[$g]}
        if xl dmesg | grep -E "d${id}v[0-9]+ Triple fault|Domain ${id} \(vcpu#[0-9]+\) crashed"; then
            found=1
        fi
    done
    return "$found"
}

if [ "$LAB_XEN" = stock ]; then
    check "PVH guest boots" start_guest ms-a pvh
    refuses() {
        ! circ share enable ms-a 2>"$LAB_OUT/enable-stock.err" &&
            grep -q "no memory sharing" "$LAB_OUT/enable-stock.err"
    }
    check "circ share enable says this Xen has no memory sharing" refuses
    check "circ share status runs" status stock
    check_json "status reports sharing unsupported" "$LAB_OUT/stock.json" '.host.sharing_supported == false'
    check "xl destroy" xl destroy ms-a
    exit 0
fi

free_initial=$(free_mib)
t_first_guest=$(now_ms)
# The three boots overlap; a guest is ready once its agent filled its buffer.
agent_filled() { state_is "$1" filled; }
GUEST_READY=agent_filled GUEST_BOOT_SECS=240 \
    check "ms-a, ms-b, ms-c (PVH, same kernel and initrd) boot" start_guests pvh ms-a ms-b ms-c
timing "memshare: first guest create to all agents ready" $(($(now_ms) - t_first_guest))
agent_says_filled() {
    agent_filled "$1" && return 0
    echo "state: '$(agent_state "$1")'; console:"
    tail -n 5 "$(guest_console "$1")"
    return 1
}
for g in ms-a ms-b ms-c; do
    check "$g agent filled its buffer" agent_says_filled "$g" || exit 1
    DOMID[$g]=$(domid "$g")
    LIVE+=("$g")
done
info "memshare: domids" "$(for g in ms-a ms-b ms-c; do jq -cn --arg n "$g" --argjson id "${DOMID[$g]}" '{($n): $id}'; done | jq -cs add)"

check "circ share enable ms-a" circ share enable ms-a
check "circ share enable ms-b" circ share enable ms-b
check "circ share policy --json runs" sh -c "circ share policy --json >$LAB_OUT/policy.json"
check_json "policy: ms-a, ms-b eligible; ms-c not opted in; dom0 never" "$LAB_OUT/policy.json" \
    '(.[] | select(.name == "ms-a") | .policy == "eligible") and
     (.[] | select(.name == "ms-b") | .policy == "eligible") and
     (.[] | select(.name == "ms-c") | .policy == "not-opted-in") and
     (.[] | select(.domid == 0) | .policy == "control-domain")'
check "circ share status before" status before
free_before=$(free_mib)
c_memory_before=$(field before ms-c memory_kib)

start_daemon() {
    circ-memshare --interval 2 --status-file "$STATUS_FILE" --prometheus "$LAB_OUT/memshare.prom" \
        --json >>"$LAB_OUT/daemon.log" 2>>"$LAB_OUT/daemon.err" &
    daemon=$!
}
start_daemon
t_daemon=$(now_ms)

# Sample the host's freed pages until a round shares nothing more.
samples="$LAB_OUT/freed-samples.txt"
: >"$samples"
settled() {
    status now || return 1
    printf '%s %s\n' "$(($(now_ms) - t_daemon))" "$(host_field now freed_pages)" >>"$samples"
    jq -e '.daemon.rounds >= 3 and .daemon.last_round.pages_shared == 0 and .host.freed_pages > 0' \
        "$LAB_OUT/now.json" >/dev/null
}
check "daemon runs and sharing settles" wait_running 480 settled
stop_unless_guests_run
check "daemon is still running" kill -0 "$daemon"
check "circ share status after sharing" status shared
check "circ share status (text) runs" circ share status --status-file "$STATUS_FILE"
freed=$(host_field shared freed_pages)
final_t=$(tail -n1 "$samples" | cut -d' ' -f1)
t90=$(awk -v f="$freed" '$2 >= 0.9 * f { print $1; exit }' "$samples")
info "memshare: freed pages samples (ms since daemon start, freed)" \
    "$(jq -Rsc 'split("\n") | map(select(length > 0) | split(" ") | map(tonumber))' "$samples")"
timing "memshare: daemon start to 90% of final sharing" "${t90:-$final_t}"
timing "memshare: first guest create to 90% of final sharing" $((t_daemon + ${t90:-$final_t} - t_first_guest))
timing "memshare: daemon start to settled" "$final_t"
free_shared=$(free_mib)
info "memshare: host" "$(jq -c --argjson before "$free_before" --argjson after "$free_shared" \
    '.host + {free_mib_before: $before, free_mib_after: $after}' "$LAB_OUT/shared.json")"
for g in ms-a ms-b ms-c; do
    info "memshare: $g" "$(jq -c --arg n "$g" '.domains[] | select(.name == $n)' "$LAB_OUT/shared.json")"
done
info "memshare: last round" "$(jq -c .daemon.last_round "$LAB_OUT/shared.json")"

check_json "the agents' buffers (8192 pages each) are shared: >= 8192 pages freed" \
    "$LAB_OUT/shared.json" '.host.freed_pages >= 8192'
# The figures above could be met by zero pages alone. Ask Xen about the
# buffer pages themselves (XENMEM_sharing_op_debug_gfn: the gfns a frame
# backs): each buffer page holds a pattern that differs from page to page
# but is the same in ms-a and ms-b, so each must share its frame with
# exactly one other gfn (its twin in the other guest).
for g in ms-a ms-b ms-c; do
    check "$g agent reported its 8192 buffer gfns" agent_gfns "$g" "$LAB_OUT/gfns-$g.txt"
done
for g in ms-a ms-b; do
    check "circ share pages $g (buffer gfns)" pages "pages-$g" "$g"
    info "memshare: $g buffer pages" "$(jq -c . "$LAB_OUT/pages-$g.json")"
    check_json "$g: >= 99% of its 8192 buffer pages share a frame with one other page" \
        "$LAB_OUT/pages-$g.json" '.pages == 8192 and (.refs["2"] // 0) >= 8110'
done
refuses_ms_c() { ! pages pages-ms-c ms-c 2>"$LAB_OUT/pages-ms-c.err" && grep -q 'not-opted-in' "$LAB_OUT/pages-ms-c.err"; }
check "circ share pages refuses ms-c (not opted in; asking would turn sharing on)" refuses_ms_c
for g in ms-a ms-b; do
    check_json "$g has >= 8192 pages backed by shared frames" "$LAB_OUT/shared.json" \
        ".domains[] | select(.name == \"$g\") | .shr_pages >= 8192 and .pages_scanned > 20000"
done
check_json "ms-c (not opted in) untouched: not scanned, nothing shared" "$LAB_OUT/shared.json" \
    '.domains[] | select(.name == "ms-c") | .shr_pages == 0 and .pages_scanned == 0 and .pages_shared == 0'
check_eq "ms-c memory unchanged" "$c_memory_before" "$(field shared ms-c memory_kib)"
check_json "dom0 untouched" "$LAB_OUT/shared.json" '.domains[] | select(.domid == 0) | .shr_pages == 0'
check "Xen's free memory grew by >= 32 MiB ($free_before -> $free_shared MiB)" \
    test "$free_shared" -ge $((free_before + 32))
check "Prometheus file has the freed pages" grep -q '^circ_memshare_freed_pages [1-9]' "$LAB_OUT/memshare.prom"

# Restart: the daemon keeps no state of its own; Xen has it.
check "daemon stops" kill "$daemon"
wait "$daemon" 2>/dev/null
once() { circ share scan --once --json --status-file "$LAB_OUT/once.json" >"$LAB_OUT/once.log"; }
check "circ share scan --once after a restart" once
check_json "the restarted scan recognizes the shared pages and shares nothing twice" \
    "$LAB_OUT/once.log" '.already_shared >= 8192 and .pages_shared < 1000'
check "sharing survived the restart" status restarted
# Guests keep running, so a few of their shared pages may be written (and
# unshared) meanwhile: at least 99% of the sharing must survive.
check_json "freed pages kept (>= 99%) across the restart" "$LAB_OUT/restarted.json" \
    ".host.freed_pages >= $freed * 0.99"
start_daemon

# Copy-on-write: every guest writes half its buffer with its own pattern,
# then checks all of it.
for g in ms-a ms-b ms-c; do
    check "$g writes half its buffer and verifies all of it" agent_says_ok "$g" write
done
stop_unless_guests_run
# Copy-on-write, seen from Xen: the written half of ms-a's buffer is private
# again, the other half still shared.
tail -n 4096 "$LAB_OUT/gfns-ms-a.txt" >"$LAB_OUT/gfns-ms-a-written.txt"
head -n 4096 "$LAB_OUT/gfns-ms-a.txt" >"$LAB_OUT/gfns-ms-a-kept.txt"
check "circ share pages ms-a (written half)" pages pages-ms-a-written ms-a "$LAB_OUT/gfns-ms-a-written.txt"
check_json "ms-a: the 4096 pages it wrote are private again" \
    "$LAB_OUT/pages-ms-a-written.json" '.pages == 4096 and .private == 4096'
check "circ share pages ms-a (kept half)" pages pages-ms-a-kept ms-a "$LAB_OUT/gfns-ms-a-kept.txt"
check_json "ms-a: >= 99% of the 4096 pages it did not write still shared" \
    "$LAB_OUT/pages-ms-a-kept.json" '.pages == 4096 and .shared_with_others >= 4055'
check "circ share status after the writes" status written
info "memshare: after copy-on-write" "$(jq -c '.host' "$LAB_OUT/written.json")"
check_json "the writes broke sharing of those pages (freed pages dropped)" "$LAB_OUT/written.json" \
    ".host.freed_pages < $freed"
# The daemon sees copy-on-write breaks as drops of Xen's shr_pages at the
# start and end of its rounds: wait until a round that began after the
# writes has ended. (The status file is the restarted daemon's only once it
# finished a round.)
rounds_written=$(jq -r --argjson pid "$daemon" \
    'if .daemon.pid == $pid then .daemon.rounds else 0 end' "$LAB_OUT/written.json")
rounds_past() {
    status rounds &&
        jq -e --argjson pid "$daemon" ".daemon.pid == \$pid and .daemon.rounds >= $1" \
            "$LAB_OUT/rounds.json" >/dev/null
}
check "the daemon ran two more rounds" wait_running 240 rounds_past $((rounds_written + 2))
for g in ms-a ms-b ms-c; do
    check "$g verifies again after more rounds" agent_says_ok "$g" verify-2
done
stop_unless_guests_run
check "status after more rounds" status cow
check_json "the daemon counted copy-on-write breaks" "$LAB_OUT/cow.json" \
    '[.domains[] | select(.name == "ms-a" or .name == "ms-b") | .unshared_since] | add > 0'

# A shared guest destroyed: its memory comes back, the others carry on.
b_memory=$(field cow ms-b memory_kib)
b_domid=$(domid ms-b)
free_before_destroy=$(free_mib)
LIVE=(ms-a ms-c)
check "xl destroy ms-b (shared)" xl destroy ms-b
gone() { ! xl list ms-b >/dev/null 2>&1; }
check "ms-b is gone" wait_for 30 gone
# Xen frees a dead domain's memory asynchronously: give it up to 30 s.
freed_back() { [ $(($(free_mib) - free_before_destroy)) -ge $((b_memory * 9 / 10 / 1024)) ]; }
wait_for 30 freed_back
free_after_destroy=$(free_mib)
info "memshare: destroy ms-b" "$(jq -cn --argjson before "$free_before_destroy" \
    --argjson after "$free_after_destroy" --argjson b_kib "$b_memory" \
    '{free_mib_before: $before, free_mib_after: $after, ms_b_memory_kib: $b_kib}')"
check "free memory returned (>= 90% of ms-b's $((b_memory / 1024)) MiB)" \
    test $((free_after_destroy - free_before_destroy)) -ge $((b_memory * 9 / 10 / 1024))
check "the daemon survived the guest's destruction" kill -0 "$daemon"
check "ms-a still verifies" agent_says_ok ms-a verify-3
check "ms-c still verifies" agent_says_ok ms-c verify-3
check "status after destroy" status destroyed
check_json "ms-b is no longer listed" "$LAB_OUT/destroyed.json" '[.domains[] | select(.name == "ms-b")] | length == 0'
key_gone() { ! xenstore-exists "/local/domain/0/circular/memshare/$b_domid"; }
check "the daemon removed ms-b's opt-in key" wait_running 90 key_gone
check "the daemon reported no fatal error" sh -c "! grep -q '^circ-memshare:' $LAB_OUT/daemon.err"
check "ms-a and ms-c still run as the domains they booted as" guests_running
check "Xen logged no crash of the scenario's guests" no_crash_logged ms-a ms-b ms-c

kill "$daemon"
wait "$daemon" 2>/dev/null
LIVE=()
check "xl destroy the rest" sh -c 'xl destroy ms-a && xl destroy ms-c'
no_shared_frames() { status empty && jq -e '.host.freed_pages == 0 and .host.used_frames == 0' "$LAB_OUT/empty.json"; }
wait_for 30 no_shared_frames
check "status with no guests" status empty
check_json "no shared frames remain" "$LAB_OUT/empty.json" '.host.freed_pages == 0 and .host.used_frames == 0'
free_end=$(free_mib)
check "free memory back to where it started ($free_initial -> $free_end MiB)" \
    test "$free_end" -ge $((free_initial - 4))
