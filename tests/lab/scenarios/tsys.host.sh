#!/bin/bash
# Host half of `tsys`: the sealed block the guest printed (xen-patches/0004,
# sealed by Xen's own ChaCha20-Poly1305) must open with the key dom0 chose
# under another implementation (python's cryptography), with the CTS1
# additional data (header, block index) that docs/tsys.md specifies.
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
