#!/bin/bash
# Host half of `smoke`: the logs dom0 kept came back to the run directory.
set -u
# shellcheck source=tests/lab/dom0/lib.sh
. "$LAB_LIB"

check "guest consoles came back from dom0" \
    grep -q 'circ-guest: up' "$LAB_OUT/xen-logs/console/guest-circ-pv.log" \
    "$LAB_OUT/xen-logs/console/guest-circ-pvh.log"
check "Xen ran with SVM" grep -qF 'HVM: SVM enabled' "$LAB_OUT/xen-dmesg.log"
check "Xen uses nested paging (HAP)" grep -qF 'Hardware Assisted Paging (HAP) detected' "$LAB_OUT/xen-dmesg.log"
