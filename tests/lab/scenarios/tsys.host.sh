#!/bin/bash
# Host half of `tsys`:
# - the sealed block the guest printed (xen-patches/0004, sealed by Xen's own
#   ChaCha20-Poly1305) must open with the key dom0 chose under another
#   implementation (python's cryptography), with the CTS1 additional data
#   (header, block index) that docs/tsys.md specifies;
# - migration (issue 11): the package dom0 deployed, bound to dom0's TPM (the
#   lab's swtpm, restarted on its state after the run), moves to a second
#   swtpm only after that TPM's quote over a fresh challenge verifies; the
#   destination can then unseal k1; a replayed quote is refused.
set -u
# shellcheck source=tests/lab/dom0/lib.sh
. "$LAB_LIB"

con="$LAB_OUT/xen-logs/console/guest-tsys-pv.log"
check "the guest's console came back" test -s "$con"
if [ "${LAB_XEN:-}" = stock ]; then
    check "no sealed block on stock Xen" sh -c "! grep -aq 'circ-tsys: sealed-block0' '$con'"
    exit 0
fi

check "Xen's sealed block opens with the key under another ChaCha20-Poly1305" \
    python3 - "$LAB_OUT/seal-key.hex" "$con" <<'PY'
import sys
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

key = bytes.fromhex(open(sys.argv[1]).read().strip())
block = bytes.fromhex("".join(
    line.split()[2] for line in open(sys.argv[2], errors="replace").read().replace("\r", "").splitlines()
    if line.startswith("circ-tsys: sealed-block0 ")))
assert len(block) == 4144, f"block 0 is {len(block)} bytes, want 4144"
hdr, ct, tag = block[:32], block[32:4128], block[4128:]
assert hdr[:4] == b"CTS1", hdr[:4]
assert int.from_bytes(hdr[4:8], "little") == 4096, "len"
assert int.from_bytes(hdr[8:16], "little") == 0x5EA1ED0F11E00001, "file id"
assert hdr[28:32] == bytes(4), "reserved bytes"
aead = ChaCha20Poly1305(key)
plain = aead.decrypt(hdr[16:28], ct + tag, hdr + (0).to_bytes(8, "little"))
want = "".join("CIRC-SEALED-SECRET-%04d|" % k for k in range(171)).encode()[:4096]
assert plain == want, "plaintext differs from what the guest wrote"
try:
    aead.decrypt(hdr[16:28], ct + tag, hdr + (1).to_bytes(8, "little"))
    sys.exit("opened as block 1 too: the index is not bound")
except InvalidTag:
    pass
print("block 0: CTS1, 4096 bytes, file id and index bound, plaintext as written")
PY

# --- migration between two TPMs --------------------------------------------
circ=${CIRC:?the host half needs \$CIRC}
work=$(mktemp -d)
pids=()
cleanup() {
    [ ${#pids[@]} -gt 0 ] && kill "${pids[@]}" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
# Starts a swtpm on state dir $1 and sets variable $2 to its TCTI.
# Retries on a taken port.
start_swtpm() {
    local port tries
    for tries in 1 2 3 4 5; do
        port=$((20000 + (RANDOM % 4000) * 2))
        swtpm socket --tpm2 --tpmstate dir="$1" \
            --server type=tcp,port=$port,bindaddr=127.0.0.1 \
            --ctrl type=tcp,port=$((port + 1)),bindaddr=127.0.0.1 \
            --flags not-need-init,startup-clear </dev/null >/dev/null 2>>"$work/swtpm.log" &
        pids+=($!)
        for _ in $(seq 50); do
            if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
                printf -v "$2" 'swtpm:host=127.0.0.1,port=%s' "$port"
                return 0
            fi
            kill -0 "${pids[-1]}" 2>/dev/null || break
            sleep 0.1
        done
        echo "swtpm attempt $tries on port $port failed" >>"$work/swtpm.log"
    done
    return 1
}
mkdir -p "$work/src-tpm" "$work/dst-tpm" "$work/dst-state"
cp -a "$LAB_RUN_DIR/tpm/." "$work/src-tpm/"
src_tcti='' dst_tcti=
start_swtpm "$work/src-tpm" src_tcti
start_swtpm "$work/dst-tpm" dst_tcti
check "the source TPM (dom0's, from its state) and a second swtpm run" \
    test -n "$src_tcti" -a -n "$dst_tcti"
src() { CIRC_TPM_TCTI=$src_tcti CIRC_STATE_DIR="$LAB_OUT/circ-state" "$circ" "$@"; }
dst() {
    CIRC_TPM_TCTI=$dst_tcti CIRC_STATE_DIR="$work/dst-state" \
        CIRC_MEASURE_LOG="$work/dst-state/measurements.log" "$circ" "$@"
}

check "destination: its boot measured (the lab's Xen)" \
    dst measure file "$LAB_BOOT_XEN" --description "destination: xen"
check "destination: circ tsys host-key" dst tsys host-key --out "$work/dst.pem"
check "destination: circ attest ak" dst attest ak --out "$work/dst-ak.pem"
nonce=$(src tsys challenge)
check "destination: circ tsys host-quote over the source's challenge" \
    dst tsys host-quote --nonce "$nonce" --out "$work/q.json"
check "source: circ tsys migrate after the quote verifies" \
    src tsys migrate "$LAB_OUT/pkg/app.toml" --to "$work/dst.pem" --quote "$work/q.json" \
    --ak "$work/dst-ak.pem" --nonce "$nonce" --out "$work/to-dst"
check "destination: rollout of the migrated package (k1 unbound by its TPM)" \
    dst tsys rollout "$work/to-dst/app.toml" --out "$work/dst-rolled"
check "destination: rollin --check (k1 unseals there)" \
    dst tsys rollin "$work/dst-rolled/app.toml" --check
check "source: the program is the same ciphertext on both hosts" \
    cmp "$LAB_OUT/pkg/app.cts1" "$work/to-dst/app.cts1"
nonce2=$(src tsys challenge)
check "source: a replayed quote (answering an old challenge) is refused, exit 3" sh -c '
    "$@" 2>"$0"; rc=$?; cat "$0" >&2; [ $rc -eq 3 ] && grep -q "wrong nonce" "$0"' \
    "$work/replayed.err" env CIRC_TPM_TCTI="$src_tcti" CIRC_STATE_DIR="$LAB_OUT/circ-state" \
    "$circ" tsys migrate "$LAB_OUT/pkg/app.toml" --to "$work/dst.pem" --quote "$work/q.json" \
    --ak "$work/dst-ak.pem" --nonce "$nonce2" --out "$work/replayed"
