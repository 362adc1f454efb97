#!/bin/bash
# Scenario `smoke`: the bindings see real Xen, and real PV and PVH guests
# come and go. Runs in the lab's dom0 (see tests/lab/dom0/init).
set -u
# shellcheck source=tests/lab/dom0/lib.sh
. /lab/lib.sh

info_json() { circ xen info --json >"$LAB_OUT/$1.json"; }
# domain_field FILE NAME FIELD: a field of the named domain in `circ xen info --json`.
domain_field() { jq -r --arg n "$2" ".domains[] | select(.name == \$n) | .$3" "$LAB_OUT/$1.json"; }

check "events travel on the lab's event channel (virtio-serial)" test -c "${LAB_EVENTS:-/nonexistent}"
check "circ xen info --json runs in dom0" info_json info-dom0
check_json "Domain-0 is listed as domain 0" "$LAB_OUT/info-dom0.json" \
    '.domains[] | select(.domid == 0 and .name == "Domain-0")'
check_json "Xen version is 4.17.x" "$LAB_OUT/info-dom0.json" '.xen.version | startswith("4.17.")'
check_json "virt_caps include hvm and hap (emulated SVM with NPT)" "$LAB_OUT/info-dom0.json" \
    '.xen.virt_caps | index("hvm") and index("hap")'
check "circ xen info (text) runs" circ xen info
info "xen" "$(jq -c .xen "$LAB_OUT/info-dom0.json")"
check "dom0 sees the lab's TPM" test -c /dev/tpm0

check "PV guest boots to its init" start_guest circ-pv pv
check "PVH guest boots to its init" start_guest circ-pvh pvh

check "circ xen info --json with guests" info_json info-guests
for guest in circ-pv:pv circ-pvh:pvh; do
    type=${guest#*:}
    guest=${guest%:*}
    check_eq "$guest has type $type" "$type" "$(domain_field info-guests "$guest" type)"
    state=$(domain_field info-guests "$guest" state)
    check "$guest is running or blocked (state: $state)" \
        test "$state" = running -o "$state" = blocked
    domid=$(xl domid "$guest")
    check_eq "$guest domid matches xl" "$domid" "$(domain_field info-guests "$guest" domid)"
    check_eq "$guest name read through the xenstore bindings" \
        "$guest" "$(circ xen store read "/local/domain/$domid/name")"
    check "$guest xenstore directory lists its console" \
        sh -c "circ xen store ls /local/domain/$domid | grep -qx console"
    check_eq "$guest console ring-ref agrees with xenstore-read" \
        "$(xenstore-read "/local/domain/$domid/console/ring-ref")" \
        "$(circ xen store read "/local/domain/$domid/console/ring-ref")"
    check "$guest kernel reports its guest type" \
        grep -q "circ-guest: up type=${type^^}" "$(guest_console "$guest")"
    # The console page mapped by grant (circ-xen's grant mapping), as xenconsoled does.
    check "$guest console ring read through its console grant" \
        sh -c "circ xen console $domid >'$LAB_OUT/$guest-console-grant.txt'"
    check "$guest console ring holds its init's line" \
        grep -aq "circ-guest: up type=${type^^}" "$LAB_OUT/$guest-console-grant.txt"
    circ xen vcpu "$domid" --json >"$LAB_OUT/$guest-vcpu0.json"
    check_json "$guest vCPU 0 context read (rip, cr3 set)" "$LAB_OUT/$guest-vcpu0.json" \
        '.rip != "0x0" and .cr3 != "0x0"'
done

# Populated memory through batched foreign mappings with per-page errors.
pvh=$(xl domid circ-pvh)
circ xen memory "$pvh" --json >"$LAB_OUT/circ-pvh-memory.json"
check_json "circ-pvh populated memory is its 128 MiB (32768 pages, plus a few special pages)" \
    "$LAB_OUT/circ-pvh-memory.json" '.populated_pages >= 32000 and .populated_pages < 34000'
timing "circ-pvh: probe populated memory" "$(jq -r '.probe_ms // 0' "$LAB_OUT/circ-pvh-memory.json")"

# The page-table walker (circ-shadow) on a real guest: vCPU 0's tables,
# kernel half included (the vCPU may be idle, in the kernel's own tables).
# HVM/PVH entries hold gfns; the walk reads them through foreign mappings.
circ shadow capture "$pvh" --vcpu 0 --all --pause --json >"$LAB_OUT/circ-pvh-shadow.json"
check_json "circ-pvh page tables walked from vCPU 0's CR3: the kernel's direct map of its RAM, in fewer VA runs than VA+PA runs" \
    "$LAB_OUT/circ-pvh-shadow.json" '.pages >= 16384 and .va_runs >= 1 and .va_runs <= .va_pa_runs'
info "circ-pvh: page-table capture" "$(jq -c '{pages, leaves, va_runs, va_pa_runs, run_format_bytes, capture_ms}' "$LAB_OUT/circ-pvh-shadow.json")"
refused_cr3() {
    ! circ shadow capture "$pvh" --cr3 0xffffffff000 >"$LAB_OUT/bad-cr3.txt" 2>&1 &&
        grep -qi "cr3\|frame\|map" "$LAB_OUT/bad-cr3.txt"
}
check "a CR3 outside the guest is refused with an error naming it" refused_cr3

# A xenstore watch through the bindings sees a write.
timeout 30 circ xen store watch /local/domain/0/circ-smoke --count 2 >"$LAB_OUT/watch.txt" &
watcher=$!
wait_for 10 grep -q . "$LAB_OUT/watch.txt"
circ xen store write /local/domain/0/circ-smoke/answer 42
wait "$watcher"
check_eq "xenstore watch fires on a write below it" \
    /local/domain/0/circ-smoke/answer "$(sed -n 2p "$LAB_OUT/watch.txt")"
check_eq "xenstore write then read through the bindings" 42 \
    "$(circ xen store read /local/domain/0/circ-smoke/answer)"
check_json "memory of each guest is about 128 MiB" "$LAB_OUT/info-guests.json" \
    '[.domains[] | select(.domid != 0) | .memory_kib] | length == 2 and all(. > 120000 and . < 140000)'

t0=$(now_ms)
check "xl destroy both guests" sh -c 'xl destroy circ-pv && xl destroy circ-pvh'
timing "destroy both guests" $(($(now_ms) - t0))
check "circ xen info --json after destroy" info_json info-after
check_json "only Domain-0 remains" "$LAB_OUT/info-after.json" '.domains | length == 1 and .[0].domid == 0'
