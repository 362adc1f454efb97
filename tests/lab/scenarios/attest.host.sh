#!/bin/bash
# Host half of `attest`: verify dom0's quotes outside the lab, against the
# nonces the host made for this run (its own copies, in $LAB_HOST_VALUES)
# and a policy built from the files the host gave the lab (known good). The
# AK's public key is dom0's, trusted as given (docs/threat-model.md); the
# verifier checks what its TPM public area says about it.
set -u
# shellcheck source=tests/lab/dom0/lib.sh
. "$LAB_LIB"

policy="$LAB_RUN_DIR/policy.toml"
entry() { # PATH_IN_DOM0 KNOWN_GOOD_FILE
    printf '[files."%s"]\nsha256 = ["%s"]\n' "$1" "$(sha256sum "$2" | cut -d' ' -f1)"
}
{
    echo "version = 1"
    entry /lab/boot/xen "$LAB_BOOT_XEN"
    entry /lab/boot/vmlinuz "$LAB_BOOT_VMLINUZ"
    entry /lab/boot/initramfs.gz "$LAB_BOOT_INITRAMFS"
    entry /lab/guest/vmlinuz "$LAB_GUEST_VMLINUZ"
    entry /lab/guest/initrd.gz "$LAB_GUEST_INITRD"
    # The guests' xl configurations as the scenario wrote them.
    entry /lab/out/att-good.cfg "$LAB_OUT/att-good.cfg"
    entry /lab/out/att-evil.cfg "$LAB_OUT/att-evil.cfg"
} >"$policy"

verify() { # QUOTE NONCE_NAME OUTPUT
    "$CIRC" attest verify "$LAB_OUT/$1" --ak "$LAB_OUT/ak.pub" \
        --nonce "$(cat "$LAB_HOST_VALUES/$2")" --policy "$policy" >"$LAB_RUN_DIR/$3" 2>&1
}
refused() { ! verify "$@"; }
fails_naming() { # OUTPUT TEXT: verification failed and its report names TEXT
    grep -q "FAILED" "$LAB_RUN_DIR/$1" && grep -qF "$2" "$LAB_RUN_DIR/$1"
}

t0=$(now_ms)
check "good quote verifies against the policy" verify quote-good nonce-good verify-good.txt
timing "verify (host)" $(($(now_ms) - t0))
info "verified events" "$(grep -c '^ *ok' "$LAB_RUN_DIR/verify-good.txt" || true)"
check "the AK's public area: a restricted signing key fixed to the TPM, no decrypt" \
    grep -qx 'ak: fixedTPM|fixedParent|sensitiveDataOrigin|userWithAuth|noDA|restricted|sign' \
    "$LAB_RUN_DIR/verify-good.txt"
# The same quote claiming an AK that can decrypt (TPMA_OBJECT, bytes 4-7 of
# its TPMT_PUBLIC, with decrypt set): refused.
jq '.ak_public |= .[0:8] + "00070472" + .[16:]' "$LAB_OUT/quote-good" >"$LAB_OUT/quote-decrypt"
check "an AK whose public area says decrypt is refused" refused quote-decrypt nonce-good verify-decrypt.txt
check "the refusal names the attribute" fails_naming verify-decrypt.txt "has decrypt"

check "tampered state is refused" refused quote-evil nonce-evil verify-evil.txt
check "the refusal names the changed initrd" fails_naming verify-evil.txt /lab/guest/initrd.gz

check "a replayed quote (wrong nonce) is refused" refused quote-good nonce-evil verify-replay.txt
check "the refusal names the nonce" fails_naming verify-replay.txt nonce
