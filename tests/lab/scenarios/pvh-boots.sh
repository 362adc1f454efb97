#!/bin/bash
# Scenario `pvh-boots`: how reliably PVH guests boot under the lab's
# emulated SVM. Creates PVH guests two at a time (their boots overlap, as in
# memshare and attest), waits for each one's init or its death, destroys
# them, and repeats: PVH_BOOTS boots in all (default 30). No retry: every
# death counts. Not in CI; docs/lab.md gives the measured rates.
# Guests get the lab's usual settings (`guest_svm_lines` in lib.sh: vCPUs
# on physical CPU 1). `pvh-boots-unpinned` (a link to this script) measures
# the lab as it was before: guest vCPUs free to run on both CPUs.
set -u
# shellcheck source=tests/lab/dom0/lib.sh
. /lab/lib.sh

case $(cat /lab/scenario.name 2>/dev/null) in
*-unpinned) export GUEST_SVM_CPUS= ;;
esac

boots=${PVH_BOOTS:-30}
deadline_secs=${GUEST_BOOT_SECS:-180}
attempted=0
died=0
slow=0

# outcome NAME CREATED_MS: waits until guest NAME's init runs (up), it dies
# (died) or the deadline passes (silent); prints the outcome.
outcome() {
    local name=$1 created=$2
    while :; do
        if guest_is_up "$name"; then
            echo up
            return
        fi
        if ! guest_alive "$name"; then
            echo died
            return
        fi
        if [ $(($(now_ms) - created)) -ge $((deadline_secs * 1000)) ]; then
            echo silent
            return
        fi
        sleep 0.5
    done
}

round=0
while [ "$attempted" -lt "$boots" ]; do
    round=$((round + 1))
    names=()
    declare -A created=()
    for slot in a b; do
        [ $((attempted + ${#names[@]})) -lt "$boots" ] || break
        name="pvh-$round$slot"
        cfg=$(guest_config "$name" pvh)
        created[$name]=$(now_ms)
        if xl create "$cfg" >>"$LAB_OUT/xl.log" 2>&1; then
            names+=("$name")
        else
            attempted=$((attempted + 1))
            died=$((died + 1))
            info "$name: xl create failed" "$(tail -3 "$LAB_OUT/xl.log" | jq -Rsc .)"
        fi
    done
    for name in "${names[@]}"; do
        attempted=$((attempted + 1))
        result=$(outcome "$name" "${created[$name]}")
        ms=$(($(now_ms) - created[$name]))
        case $result in
        up) timing "$name: create to guest init" "$ms" ;;
        *)
            [ "$result" = died ] && died=$((died + 1))
            [ "$result" = silent ] && slow=$((slow + 1))
            xl dmesg >"$LAB_OUT/$name-xl-dmesg.txt" 2>&1
            cp "$(guest_console "$name")" "$LAB_OUT/$name-console.txt" 2>/dev/null
            info "$name: $result" "$(jq -cn --arg state "$(xl list "$name" 2>&1 | tail -1)" \
                --argjson ms "$ms" --arg xen "$(xl dmesg | grep -E 'd[0-9]+v[0-9]' | tail -5)" \
                '{state: $state, ms_since_create: $ms, xen: $xen}')"
            ;;
        esac
    done
    for name in "${names[@]}"; do
        xl destroy "$name" >/dev/null 2>&1
    done
    unset created
done

info "pvh boots" "$(jq -cn --argjson attempted "$attempted" --argjson died "$died" \
    --argjson silent "$slow" '{attempted: $attempted, died: $died, silent: $silent}')"
check_eq "PVH boots attempted" "$boots" "$attempted"
check_eq "PVH guests that died during boot" 0 "$died"
check_eq "PVH guests silent for ${deadline_secs} s" 0 "$slow"
check "only Domain-0 remains" sh -c '[ "$(xl list | wc -l)" -eq 2 ]'
