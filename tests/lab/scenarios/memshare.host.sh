#!/bin/bash
# Host half of `memshare`: the guests' own word, from their consoles.
set -u
# shellcheck source=tests/lab/dom0/lib.sh
. "$LAB_LIB"

if [ "${LAB_XEN:-}" = stock ]; then
    check "ms-a console came back" grep -q 'circ-guest-agent: up' "$LAB_OUT/xen-logs/console/guest-ms-a.log"
    exit 0
fi
for g in ms-a ms-b ms-c; do
    check "$g console: buffer verified after its write" \
        grep -q 'circ-guest-agent: write ok' "$LAB_OUT/xen-logs/console/guest-$g.log"
    check "$g console: no verification ever failed" \
        sh -c "! grep -q 'circ-guest-agent: .* bad=' '$LAB_OUT/xen-logs/console/guest-$g.log'"
done
