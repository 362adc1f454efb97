#!/bin/bash
# Scenario `tsys`: trusted system calls (int $0x81, xen-patches/0002) in a
# 64-bit PV guest. Runs in the lab's dom0 (see tests/lab/dom0/init).
#
# The guest runs circ-tsys-probe (started by its init for `circ.tsys` on its
# command line), which waits for a token in its xenstore `data/tsys/token`:
# - patched Xen: `circ tsys authorise` arms Xen and writes the token. The
#   probe's trusted process registers with it and makes calls through
#   int 0x81; guest root ptraces it while it blocks in a read and must not
#   see the secret pattern in its callee-saved registers nor in its FPU/SSE
#   state (xmm8-15, MXCSR, x87 control word), while it does see both for an
#   untrusted twin doing the same with `syscall`. dom0 lists the
#   trusted process while it blocks, and sees the registration end with it.
# - stock Xen: `circ tsys authorise` must fail cleanly; the scenario writes
#   "none" and the probe checks only that an untrusted int 0x81 still gets
#   SIGSEGV (and the twin).
# Then the probe runs the guest's busybox rewritten by the lab
# (/bin/busybox-tsys): started by the kernel it must die on its first
# int 0x81; on patched Xen, `sha256sum`, `cp` and `ls` run through
# circ-tsys-launch (one `circ tsys authorise` each) must print exactly what
# the plain busybox prints.
# Last, sealed I/O (patched Xen, xen-patches/0004): `circ tsys authorise
# --key-file` attaches a key to the next registration; the keyed process
# seals a file and writes and reads it through Xen; an untrusted read finds
# only CTS1 blocks; a flipped byte, a block moved and a cut file each make
# its read fail with EBADMSG. The host half opens the block the guest
# printed with the key (python's cryptography, another implementation).
# Every `circ-tsys: check` line of the guest's console becomes a check here.
set -u
# shellcheck source=tests/lab/dom0/lib.sh
. /lab/lib.sh

GUEST=tsys-pv
export GUEST_CMDLINE=circ.tsys
# Two vCPUs: the trusted process's threads call and block on both at once.
export GUEST_VCPUS=2
# The initrd is its root filesystem, in RAM: with the guest agent's 32 MiB,
# two busyboxes, the launcher and the applets' files, 128 MiB ran out.
export GUEST_MEMORY=256

check "PV guest boots to its init" start_guest "$GUEST" pv
dom=$(xl domid "$GUEST")
con=$(guest_console "$GUEST")
node() { echo "/local/domain/$dom/data/tsys/$1"; }
probe_said() { grep -aq "circ-tsys: $1" "$con"; }
guest_node_is() { [ "$(xenstore-read "$(node "$1")" 2>/dev/null)" = "$2" ]; }
list_json() { circ tsys list "$dom" --json >"$LAB_OUT/$1.json"; }
check "the guest's probe waits for its token" wait_for 60 probe_said "waiting for data/tsys/token"

t0=$(now_ms)
if [ "$LAB_XEN" = stock ]; then
    check "circ tsys authorise refuses cleanly on stock Xen" sh -c \
        "! circ tsys authorise $dom 2>'$LAB_OUT/authorise-stock.err' &&
         grep -q 'no trusted system calls' '$LAB_OUT/authorise-stock.err'"
    check "circ tsys list refuses cleanly on stock Xen" sh -c "! circ tsys list $dom"
    xenstore-write "$(node token)" none
    expected_guest_checks=12
else
    check "circ tsys list before authorising" list_json before
    check_json "domain not authorised before" "$LAB_OUT/before.json" \
        '.[0].authorised == false and .[0].token_armed == false and (.[0].processes | length) == 0'
    check "circ tsys authorise" circ tsys authorise "$dom"
    check "circ tsys list after authorising" list_json armed
    check_json "authorised, one registration armed" "$LAB_OUT/armed.json" \
        ".[0].domid == $dom and .[0].authorised and .[0].token_armed"

    # The trusted process blocks in a read until dom0 has looked.
    check "the trusted process blocks for dom0 to look" \
        wait_for 300 guest_node_is state trusted-blocked
    check "circ tsys list while it blocks" list_json during
    check_json "Xen holds one trusted process, its call in flight" "$LAB_OUT/during.json" \
        '.[0].processes | length == 1 and .[0].pending == 1'
    check_json "its counters: calls forwarded, restored, one deferred (signal)" \
        "$LAB_OUT/during.json" \
        '.[0].processes[0] | .calls >= 7 and .restores >= 6 and .deferred >= 1'
    check_json "the token was used up" "$LAB_OUT/during.json" '.[0].token_armed == false'
    check_json "other entries into the kernel (interrupts, events) concealed too" \
        "$LAB_OUT/during.json" '.[0].processes[0].bounces >= 1'
    # (`cloak_exposed` counts the entries while its fork child still shared
    # the page copy-on-write: visible then, by design.)
    check_json "Xen holds its private page while it blocks (hidden from the kernel)" \
        "$LAB_OUT/during.json" '.[0].processes[0] | .cloak_pages == 1 and .cloak_held == 1'
    circ tsys list >"$LAB_OUT/during.txt" 2>&1
    xenstore-write "$(node go)" 1

    # Rewritten busybox applets through circ-tsys-launch: one token each
    # (the fourth: a trusted shell that execs, which ends its trust).
    for i in 1 2 3 4; do
        check "applet $i: the guest's launcher asks for a token" \
            wait_for 300 guest_node_is state "want-token-$i"
        check "applet $i: circ tsys authorise" circ tsys authorise "$dom"
    done

    # Sealed I/O (xen-patches/0004): a key for the next registration. Its
    # hex goes back to the host half, which opens the block the guest prints.
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$LAB_OUT/seal-key.hex"
    check "sealed I/O: the probe asks for a keyed token" \
        wait_for 300 guest_node_is state want-key-token
    check "circ tsys authorise --key-file" \
        circ tsys authorise "$dom" --key-file "$LAB_OUT/seal-key.hex"
    check "sealed I/O: the keyed process holds its sealed file" \
        wait_for 300 guest_node_is state sealed-holding
    check "circ tsys list while it holds" list_json sealed
    check_json "Xen holds a keyed process: one sealed fd, 3 blocks sealed, 5 calls refused" \
        "$LAB_OUT/sealed.json" \
        '.[0].processes | length == 1 and (.[0] | .keyed and .sealed_fds == 1 and .sealed_blocks == 3 and .seal_refused == 5)'
    xenstore-write "$(node go-seal)" 1

    # Keys from dom0's TPM (issue 11, circ-keyd): an application
    # (circ-tsys-sealapp) rewritten and deployed under k1 bound to this
    # host's TPM, rolled out (k1 sealed to PCRs 14, 15), its ciphertext
    # handed to the guest through xenstore, rolled in (k1 unsealed and given
    # to Xen with a token). The guest's registered process must decrypt it
    # through Xen to what was deployed; rolled in again, the launcher runs it
    # from the ciphertext, and it writes and reads a secret file sealed by
    # Xen under k1.
    # The state (the TPM-wrapped bind key) in $LAB_OUT: the host half migrates
    # the package from this TPM (its state, after the run) to a second one.
    export CIRC_STATE_DIR="$LAB_OUT/circ-state" CIRC_MEASURE_LOG="$LAB_OUT/tsys-measurements.log"
    mkdir -p "$CIRC_STATE_DIR"
    check "circ tsys rewrite the application" \
        circ tsys rewrite /lab/bin/circ-tsys-sealapp --output "$LAB_OUT/app.bin"
    check "circ tsys host-key (a bind key in dom0's TPM)" \
        circ tsys host-key --out "$LAB_OUT/host.pem"
    check "circ tsys deploy (k1 bound to that key)" \
        circ tsys deploy "$LAB_OUT/app.bin" --host-key "$LAB_OUT/host.pem" --name app --out "$LAB_OUT/pkg"
    check "circ tsys rollout (k1 sealed to PCRs 14, 15)" \
        circ tsys rollout "$LAB_OUT/pkg/app.toml" --out "$LAB_OUT/rolled"
    check "the probe asks for the package" wait_for 300 guest_node_is state want-package
    hex=$(od -An -v -tx1 "$LAB_OUT/rolled/app.cts1" | tr -d ' \n')
    chunks=0
    while [ -n "$hex" ]; do
        xenstore-write "$(node pkg/$chunks)" "${hex:0:4000}"
        hex=${hex:4000}
        chunks=$((chunks + 1))
    done
    xenstore-write "$(node pkg/chunks)" "$chunks" "$(node pkg/len)" "$(stat -c %s "$LAB_OUT/app.bin")" \
        "$(node pkg/file-id)" "$(sed -n 's/^file_id = "\(.*\)"$/\1/p' "$LAB_OUT/rolled/app.toml")" \
        "$(node pkg/sha256)" "$(sha256sum <"$LAB_OUT/app.bin" | cut -d' ' -f1)"
    check "circ tsys rollin (k1 unsealed, loaded into Xen for one registration)" \
        circ tsys rollin "$LAB_OUT/rolled/app.toml" --domain "$dom"
    check "the launcher asks for a token to run the application" \
        wait_for 300 guest_node_is state want-launch
    check "circ tsys rollin again, for the launcher" \
        circ tsys rollin "$LAB_OUT/rolled/app.toml" --domain "$dom"
    check "the probe is done with the application" wait_for 300 guest_node_is state launched
    check "a changed measurement goes into PCR 14" \
        circ measure file "$LAB_OUT/app.bin" --description "tsys: a measured file"
    check "circ tsys rollin is then refused (exit 3), naming PCR 14" sh -c \
        "circ tsys rollin '$LAB_OUT/rolled/app.toml' --domain $dom 2>'$LAB_OUT/rollin-refused.err'
         [ \$? -eq 3 ] && grep -q 'PCR 14' '$LAB_OUT/rollin-refused.err'"
    expected_guest_checks=49
fi

check "the guest's probe finishes" wait_for 300 probe_said "done"
timing "guest probe: token to done" $(($(now_ms) - t0))

# Every check the guest reported, as a check here; lines are
# "circ-tsys: check NAME ok|FAIL DETAIL".
tr -d '\r' <"$con" | grep -a '^circ-tsys: check ' >"$LAB_OUT/guest-checks.txt"
while read -r _ _ name verdict detail; do
    check "guest: $name" sh -c "echo \"\$1\"; [ \"\$2\" = ok ]" _ "$detail" "$verdict"
done <"$LAB_OUT/guest-checks.txt"
check_eq "the guest reported every check" "$expected_guest_checks" \
    "$(wc -l <"$LAB_OUT/guest-checks.txt")"
for name in getpid-ns flood-ns-per-call; do
    line=$(tr -d '\r' <"$con" | grep -a "^circ-tsys: info $name " | tail -1)
    [ -n "$line" ] && info "guest $name" "$(jq -cn --arg v "${line#*"$name" }" '$v')"
done

if [ "$LAB_XEN" != stock ]; then
    check "circ tsys list after the trusted process exited" list_json after
    check_json "its registration ended with its address space" "$LAB_OUT/after.json" \
        '.[0].processes | length == 0'
    check_json "Xen counted the untrusted int 0x81 it left to the guest kernel" \
        "$LAB_OUT/after.json" '.[0].refused >= 20000'
    xl dmesg >"$LAB_OUT/xen-dmesg-tsys.log" 2>&1
    check "Xen logged the registration" grep -q "tsys: registered" "$LAB_OUT/xen-dmesg-tsys.log"
    check "Xen logged the end of the registration" \
        grep -q "tsys: l4 .* gone, registration ends" "$LAB_OUT/xen-dmesg-tsys.log"
    fpu_line=$(grep -o "FPU state: [0-9]* bytes per process" "$LAB_OUT/xen-dmesg-tsys.log" | head -1)
    check "Xen allocated the FPU state buffer at authorise" test -n "$fpu_line"
    [ -n "$fpu_line" ] && info "xen tsys FPU buffer" "$(jq -cn --arg v "$fpu_line" '$v')"
    check "Xen's tsys log stayed short despite the flood (rate-limited)" \
        test "$(grep -c 'tsys:' "$LAB_OUT/xen-dmesg-tsys.log")" -lt 50
    check "circ tsys revoke" circ tsys revoke "$dom"
    check "circ tsys list after revoking" list_json revoked
    check_json "domain no longer authorised" "$LAB_OUT/revoked.json" \
        '.[0].authorised == false and .[0].token_armed == false'
fi

check "Xen is still up (xl info)" sh -c 'xl info >/dev/null'
check "the guest is still alive" guest_alive "$GUEST"
check "xl destroy the guest" xl destroy "$GUEST"
