# shellcheck shell=bash
# Shell library for lab scenarios running in dom0 (sourced, bash).
#
# Scenarios report through events: one JSON object per line behind the
# `@@circ-lab ` marker (see tests/lab/src/events.rs): checks, timings and
# values. The host decides pass or fail from them. In dom0 every event goes
# to the lab's event channel, a virtio-serial port that only dom0 writes
# (LAB_EVENTS, set up by the lab's init): the verdict is read from there.
# A copy goes to the console for people reading serial.log, where Xen's
# own output can cut into it, and to $LAB_OUT/events.jsonl.
#
# The host half of a scenario (NAME.host.sh, run by the lab after the machine
# is down, with LAB_HOST=1) sources this library too: there events go to
# stdout, which the lab reads.

LAB_OUT=${LAB_OUT:-/lab/out}

# The name QEMU gives the event channel's port (tests/lab/src/run.rs).
LAB_EVENT_PORT=org.circular.lab.events

# lab_event_device: the event channel's device node, from sysfs (dom0 has
# no udev), waiting up to 10 s for the port to appear.
lab_event_device() {
    local port _
    for _ in $(seq 100); do
        for port in /sys/class/virtio-ports/*; do
            if [ "$(cat "$port/name" 2>/dev/null)" = "$LAB_EVENT_PORT" ] && [ -c "/dev/${port##*/}" ]; then
                echo "/dev/${port##*/}"
                return 0
            fi
        done
        sleep 0.1
    done
    return 1
}

# lab_event JSON: reports one event. In dom0 the lab's init opened the
# event channel once, as file descriptor 9, which every process of the
# scenario inherits: a virtio port can be open only once at a time, and one
# write per line keeps the lines of concurrent writers whole.
lab_event() {
    if [ -n "${LAB_HOST:-}" ]; then
        printf '@@circ-lab %s\n' "$1"
    else
        [ -n "${LAB_EVENTS:-}" ] && printf '@@circ-lab %s\n' "$1" >&9
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

# guest_svm_lines TYPE: xl settings for guests that run under the emulated
# SVM (pvh, hvm); PV guests do not, and keep Xen's defaults.
# - tsc_mode = "native": QEMU's emulated CPU has no invariant TSC, so Xen's
#   default would intercept every RDTSC of such a guest (a VM exit, decoded
#   by Xen: the emulated SVM has no next-RIP). The guest kernel's clock reads
#   RDTSC constantly, and every exit under TCG's SVM costs time.
# - cpus = "1": every such guest's vCPU on physical CPU 1 (dom0's vCPUs still
#   run on both), so that no two vCPUs run under the emulated SVM at once.
#   With two guests booting side by side on both CPUs, 4 of 30 PVH boots
#   triple-faulted, each with Xen's own RIP in the guest's state; pinned, 0
#   of 30 (docs/lab.md, "PVH boot reliability"). GUEST_SVM_CPUS overrides
#   the list ("" for no pinning, as `pvh-boots-unpinned` measures).
guest_svm_lines() {
    case $1 in
    pv) echo '# PV: not under SVM (Xen defaults)' ;;
    *)
        echo 'tsc_mode = "native"'
        [ -n "${GUEST_SVM_CPUS-1}" ] && echo "cpus = \"${GUEST_SVM_CPUS-1}\""
        ;;
    esac
    return 0
}

# guest_config NAME TYPE [MEMORY_MIB]: an xl config for a busybox test guest.
# GUEST_CMDLINE adds to the guest kernel's command line (e.g. circ.tsys);
# GUEST_VCPUS sets the number of vCPUs (default 1); GUEST_MEMORY the memory
# in MiB when MEMORY_MIB is not given (default 128).
guest_config() {
    local cfg="$LAB_OUT/$1.cfg"
    cat >"$cfg" <<CFG
name = "$1"
type = "$2"
kernel = "/lab/guest/vmlinuz"
ramdisk = "/lab/guest/initrd.gz"
extra = "console=hvc0 quiet${GUEST_CMDLINE:+ $GUEST_CMDLINE}"
memory = ${3:-${GUEST_MEMORY:-128}}
vcpus = ${GUEST_VCPUS:-1}
$(guest_svm_lines "$2")
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

guest_is_up() { grep -qs 'circ-guest: up' "$(guest_console "$1")"; }

# guest_state NAME: xl's state flags (e.g. "-b----"), empty if no such domain.
guest_state() { xl list "$1" 2>/dev/null | awk 'NR == 2 { print $5 }'; }

# guest_alive NAME: the domain exists and has not shut down, crashed or died.
# (Lab guests keep a domain that reboots, e.g. after a triple fault: it shows
# as shut down.)
guest_alive() {
    local state
    state=$(guest_state "$1")
    [ -n "$state" ] && [ "${state#*[scd]}" = "$state" ]
}

# guest_ready NAME: its init runs and, if the scenario set GUEST_READY (a
# command, given the guest's name), that holds too (e.g. its agent reported).
guest_ready() {
    guest_is_up "$1" || return 1
    [ -z "${GUEST_READY:-}" ] || "$GUEST_READY" "$1"
}

# start_guests TYPE NAME...: creates every guest first, then waits until each
# one is ready (guest_ready), so that their boots overlap; reports each one's
# create time and time to its init. A guest that dies or stays silent for
# GUEST_BOOT_SECS (default 180) during boot is destroyed and created again,
# once, reported as an `info` event: emulated SVM has been seen to
# triple-fault a PVH guest during boot. Fails if a guest fails twice.
start_guests() {
    local type=$1 name cfg t now failed=0
    shift
    local -A created_ms tries
    local pending=("$@") next
    for name in "$@"; do
        tries[$name]=0
    done
    # One attempt at creating guest $1.
    _start_guests_create() {
        cfg=$(guest_config "$1" "$type")
        tries[$1]=$((tries[$1] + 1))
        created_ms[$1]=$(now_ms)
        if xl create "$cfg" >>"$LAB_OUT/xl.log" 2>&1; then
            timing "$1: xl create" $(($(now_ms) - created_ms[$1]))
        fi
    }
    for name in "$@"; do
        _start_guests_create "$name"
    done
    while [ "${#pending[@]}" -gt 0 ]; do
        next=()
        for name in "${pending[@]}"; do
            now=$(now_ms)
            if guest_ready "$name"; then
                timing "$name: create to guest init" $((now - created_ms[$name]))
                continue
            fi
            t=$((now - created_ms[$name]))
            if guest_alive "$name" && [ "$t" -lt $((${GUEST_BOOT_SECS:-180} * 1000)) ]; then
                next+=("$name")
                continue
            fi
            info "$name: attempt ${tries[$name]} failed" \
                "$(jq -cn --arg state "$(xl list "$name" 2>&1 | tail -1)" --argjson ms "$t" \
                    '{state: $state, ms_since_create: $ms}')"
            echo "$name: attempt ${tries[$name]} failed after $t ms: $(xl list "$name" 2>&1 | tail -1)"
            xl destroy "$name" >/dev/null 2>&1
            # The next attempt logs to a console file of its own.
            mv "$(guest_console "$name")" "$(guest_console "$name").attempt${tries[$name]}" 2>/dev/null
            if [ "${tries[$name]}" -lt 2 ]; then
                sleep 1
                _start_guests_create "$name"
                next+=("$name")
            else
                failed=1
            fi
        done
        pending=("${next[@]}")
        [ "${#pending[@]}" -gt 0 ] && sleep 0.5
    done
    return "$failed"
}

# start_guest NAME TYPE: start_guests for one guest.
start_guest() { start_guests "$2" "$1"; }
