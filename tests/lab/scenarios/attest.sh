#!/bin/bash
# Scenario `attest`: measured boot and domain attestation with dom0's TPM
# (QEMU's TPM TIS backed by a fresh swtpm). dom0 measures the boot files it
# was given (dom0 measuring itself: nothing measures from the boot loader
# yet) and each domain before `xl create`, then quotes over the nonces the
# host made for this run; the host half verifies the quotes against its own
# copy of the nonces and a policy built from the known-good files.
# circ-lab fresh: nonce-good nonce-evil
set -u
# shellcheck source=tests/lab/dom0/lib.sh
. /lab/lib.sh

export CIRC_MEASURE_LOG="$LAB_OUT/measurements.log"
export CIRC_STATE_DIR=/var/lib/circular
mkdir -p "$CIRC_STATE_DIR"

check "dom0 has a TPM resource manager" test -c /dev/tpmrm0
for file in xen vmlinuz initramfs.gz; do
    check "measure boot file /lab/boot/$file" \
        circ measure file "/lab/boot/$file" --description "boot: $file"
done

# A guest measured before it is created: kernel, initrd and its config.
cfg=$(guest_config att-good pvh)
t0=$(now_ms)
check "circ measure domain att-good" circ measure domain "$cfg"
timing "measure domain" $(($(now_ms) - t0))
check "att-good boots after its measurement" start_guest att-good pvh

check "attestation key created" circ attest ak --out "$LAB_OUT/ak.pub"
nonce=$(cat /lab/host/nonce-good)
t0=$(now_ms)
check "quote with the event log (good state)" \
    circ attest quote --nonce "$nonce" --out "$LAB_OUT/quote-good"
timing "quote" $(($(now_ms) - t0))
check "circ attest verify in dom0 (signature, nonce, replay)" \
    circ attest verify "$LAB_OUT/quote-good" --ak "$LAB_OUT/ak.pub" --nonce "$nonce"

# Someone swaps the guests' initrd: the next domain is measured with it.
echo "tampered" >>/lab/guest/initrd.gz
cfg=$(guest_config att-evil pvh)
check "circ measure domain att-evil (changed initrd)" circ measure domain "$cfg"
xl create "$cfg" >>"$LAB_OUT/xl.log" 2>&1
nonce=$(cat /lab/host/nonce-evil)
check "quote with the event log (tampered state)" \
    circ attest quote --nonce "$nonce" --out "$LAB_OUT/quote-evil"
circ measure show >"$LAB_OUT/measurements.txt" 2>&1
xl destroy att-evil >/dev/null 2>&1
xl destroy att-good >/dev/null 2>&1
check "the TPM holds no transient objects afterwards" circ tpm flush
