#!/bin/bash
# Scenario `smoke`: the bindings see real Xen, and real PV and PVH guests
# come and go. Runs in the lab's dom0 (see tests/lab/dom0/init).
set -u
. /lab/lib.sh

info_json() { circ xen info --json >"$LAB_OUT/$1.json"; }
# domain_field FILE NAME FIELD: a field of the named domain in `circ xen info --json`.
domain_field() { jq -r --arg n "$2" ".domains[] | select(.name == \$n) | .$3" "$LAB_OUT/$1.json"; }

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
done
check_json "memory of each guest is about 128 MiB" "$LAB_OUT/info-guests.json" \
    '[.domains[] | select(.domid != 0) | .memory_kib] | length == 2 and all(. > 120000 and . < 140000)'

t0=$(now_ms)
check "xl destroy both guests" sh -c 'xl destroy circ-pv && xl destroy circ-pvh'
timing "destroy both guests" $(($(now_ms) - t0))
check "circ xen info --json after destroy" info_json info-after
check_json "only Domain-0 remains" "$LAB_OUT/info-after.json" '.domains | length == 1 and .[0].domid == 0'
