#!/bin/bash
# Scenario `memshare`: the page sharing daemon on real Xen. Three PVH guests
# (ms-a and ms-b opted in, ms-c not) each run circ-guest-agent, which fills
# a 32 MiB buffer with the same pattern in every guest. circ-memshare shares
# identical pages; then each guest overwrites half its buffer with its own
# pattern and verifies all of it (copy-on-write: no guest ever sees another's
# bytes); a shared guest is destroyed and the host must stay consistent.
# On the stock hypervisor (no CONFIG_MEM_SHARING) the tools must refuse cleanly.
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
# agent_says GUEST COMMAND: send COMMAND, wait for "COMMAND ok".
agent_says_ok() {
    agent_command "$1" "$2" || return 1
    wait_for 90 state_is "$1" "$2 ok" || { echo "state of $1: $(agent_state "$1")"; return 1; }
    echo "$1: $(agent_state "$1")"
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
for g in ms-a ms-b ms-c; do
    check "$g (PVH) boots" start_guest "$g" pvh
done
agent_filled() {
    wait_for 120 state_is "$1" filled && return 0
    echo "state: '$(agent_state "$1")'; console:"
    tail -n 5 "$(guest_console "$1")"
    return 1
}
for g in ms-a ms-b ms-c; do
    check "$g agent filled its buffer" agent_filled "$g"
done

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
check "daemon runs and sharing settles" wait_for 480 settled
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
check "circ share status after the writes" status written
info "memshare: after copy-on-write" "$(jq -c '.host' "$LAB_OUT/written.json")"
check_json "the writes broke sharing of those pages (freed pages dropped)" "$LAB_OUT/written.json" \
    ".host.freed_pages < $freed"
sleep 6
for g in ms-a ms-b ms-c; do
    check "$g verifies again after more rounds" agent_says_ok "$g" verify-2
done
check "status after more rounds" status cow
check_json "the daemon counted copy-on-write breaks" "$LAB_OUT/cow.json" \
    '[.domains[] | select(.name == "ms-a" or .name == "ms-b") | .unshared_since] | add > 0'

# A shared guest destroyed: its memory comes back, the others carry on.
b_memory=$(field cow ms-b memory_kib)
b_domid=$(domid ms-b)
free_before_destroy=$(free_mib)
check "xl destroy ms-b (shared)" xl destroy ms-b
gone() { ! xl list ms-b >/dev/null 2>&1; }
check "ms-b is gone" wait_for 30 gone
sleep 6
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
check "the daemon removed ms-b's opt-in key" wait_for 20 key_gone
check "the daemon reported no fatal error" sh -c "! grep -q '^circ-memshare:' $LAB_OUT/daemon.err"

kill "$daemon"
wait "$daemon" 2>/dev/null
check "xl destroy the rest" sh -c 'xl destroy ms-a && xl destroy ms-c'
sleep 3
check "status with no guests" status empty
check_json "no shared frames remain" "$LAB_OUT/empty.json" '.host.freed_pages == 0 and .host.used_frames == 0'
free_end=$(free_mib)
check "free memory back to where it started ($free_initial -> $free_end MiB)" \
    test "$free_end" -ge $((free_initial - 4))
