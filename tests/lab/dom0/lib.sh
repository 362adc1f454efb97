# shellcheck shell=bash
# Shell library for lab scenarios running in dom0 (sourced, bash).
#
# Scenarios report through events, one JSON object per console line behind
# the `@@circ-lab ` marker (see tests/lab/src/events.rs): checks, timings and
# values. The host decides pass or fail from them.

#
# The host half of a scenario (NAME.host.sh, run by the lab after the machine
# is down, with LAB_HOST=1) sources this library too: there events go to
# stdout, which the lab reads.

LAB_OUT=${LAB_OUT:-/lab/out}

# lab_event JSON: prints one event on the console and keeps a copy.
lab_event() {
    if [ -n "${LAB_HOST:-}" ]; then
        printf '@@circ-lab %s\n' "$1"
    else
        printf '@@circ-lab %s\n' "$1" >/dev/console
    fi
    printf '%s\n' "$1" >>"$LAB_OUT/events.jsonl"
}

now_ms() { date +%s%3N; }

# check NAME CMD...: runs CMD, reports whether it succeeded; its output
# (cut short) is the detail and goes whole to $LAB_OUT/checks.log.
check() {
    local name=$1 output rc ok=false
    shift
    output=$("$@" 2>&1)
    rc=$?
    [ "$rc" -eq 0 ] && ok=true
    printf '== %s (rc=%s): %s\n%s\n' "$name" "$rc" "$*" "$output" >>"$LAB_OUT/checks.log"
    lab_event "$(jq -cn --arg name "$name" --argjson ok "$ok" --arg detail "${output:0:240}" \
        '{event: "check", name: $name, ok: $ok, detail: $detail}')"
    return "$rc"
}

# check_eq NAME EXPECTED ACTUAL: an empty EXPECTED fails too, so that two
# failed look-ups never agree.
check_eq() {
    check "$1" equal "$2" "$3"
}
equal() {
    [ -n "$1" ] || { echo "nothing expected (an earlier step failed)"; return 1; }
    [ "$1" = "$2" ] || { echo "expected '$1', got '$2'"; return 1; }
}

# jq_true FILE FILTER: FILTER holds on FILE. (jq -e alone passes on an empty file.)
jq_true() {
    test -s "$1" || { echo "$1 is empty or missing"; return 1; }
    jq -e "$2" "$1"
}

# check_json NAME FILE FILTER
check_json() { check "$1" jq_true "$2" "$3"; }

timing() {
    lab_event "$(jq -cn --arg name "$1" --argjson ms "$2" '{event: "timing", name: $name, ms: $ms}')"
}

# info NAME JSON_VALUE
info() {
    lab_event "$(jq -cn --arg name "$1" --argjson value "$2" '{event: "info", name: $name, value: $value}')"
}

# wait_for SECONDS CMD...: polls CMD every 0.5 s until it succeeds.
wait_for() {
    local deadline=$(($(date +%s) + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -ge "$deadline" ] && return 1
        sleep 0.5
    done
}

# guest_config NAME TYPE [MEMORY_MIB]: an xl config for a busybox test guest.
guest_config() {
    local cfg="$LAB_OUT/$1.cfg"
    cat >"$cfg" <<CFG
name = "$1"
type = "$2"
kernel = "/lab/guest/vmlinuz"
ramdisk = "/lab/guest/initrd.gz"
extra = "console=hvc0 quiet"
memory = ${3:-128}
vcpus = 1
on_crash = "preserve"
# A lab guest never reboots on purpose: keep one that does (e.g. after a
# triple fault) for the logs instead of restarting it under a new domid.
on_reboot = "preserve"
CFG
    # More xl settings for this guest (e.g. a disk line), if the scenario sets them.
    if [ -n "${GUEST_EXTRA_CONFIG:-}" ]; then
        printf '%s\n' "$GUEST_EXTRA_CONFIG" >>"$cfg"
    fi
    echo "$cfg"
}

guest_console() { echo "/var/log/xen/console/guest-$1.log"; }

guest_is_up() { grep -q 'circ-guest: up' "$(guest_console "$1")"; }

# start_guest NAME TYPE: creates the guest and waits until its init runs;
# reports both times. Emulated SVM has been seen to triple-fault a PVH guest
# during boot once: a guest that crashes or stays silent is retried once.
start_guest() {
    local name=$1 type=$2 cfg t0 t1 attempt
    cfg=$(guest_config "$name" "$type")
    for attempt in 1 2; do
        t0=$(now_ms)
        if xl create "$cfg" >>"$LAB_OUT/xl.log" 2>&1; then
            t1=$(now_ms)
            if wait_for 180 guest_is_up "$name"; then
                timing "$name: xl create" $((t1 - t0))
                timing "$name: create to guest init" $(($(now_ms) - t0))
                return 0
            fi
        fi
        info "$name: attempt $attempt failed" "$(jq -cn --arg state "$(xl list "$name" 2>&1 | tail -1)" '$state')"
        xl destroy "$name" >/dev/null 2>&1
        sleep 1
    done
    return 1
}
