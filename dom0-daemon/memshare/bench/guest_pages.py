#!/usr/bin/env python3
"""Guest RAM of QEMU processes, page by page, for the memshare benchmark.

Usage: guest_pages.py GUEST_MIB PID...   (root: pagemap PFNs, kpageflags)

For each QEMU, the guest RAM is the mergeable (`mg`) anonymous mapping of
exactly GUEST_MIB MiB. Its pages that the host holds are those present in
/proc/PID/pagemap and not the kernel's shared zero page (a guest read of
never-written RAM maps that page: it costs nothing). Those pages are read
from /proc/PID/mem and hashed; across all the QEMUs:

  populated   pages the host holds for guest RAM (before any merging)
  duplicate   populated minus distinct contents: the most KSM could save
              (Satori's "possible sharing")
  zero        all-zero populated pages
  ksm         pages mapped to a KSM page now (kpageflags KPF_KSM)
  thp         pages inside a transparent huge page now

Prints one JSON object.
"""

import collections
import hashlib
import json
import struct
import sys

PAGE = 4096
PRESENT = 1 << 63
PFN_MASK = (1 << 55) - 1
KPF_KSM = 1 << 21
KPF_THP = 1 << 22
KPF_ZERO_PAGE = 1 << 24
ZERO = bytes(PAGE)


def guest_ram(pid, size):
    """(start, end) of the mergeable anonymous mapping of `size` bytes."""
    found = []
    start = end = None
    with open(f"/proc/{pid}/smaps", encoding="ascii", errors="replace") as smaps:
        for line in smaps:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5 and not fields[0].endswith(":"):
                lo, hi = (int(x, 16) for x in fields[0].split("-"))
                anonymous = len(fields) == 5
                start, end = (lo, hi) if anonymous and hi - lo == size else (None, None)
            elif fields[0] == "VmFlags:" and start is not None and "mg" in fields[1:]:
                found.append((start, end))
    if len(found) != 1:
        sys.exit(f"guest_pages: pid {pid}: {len(found)} mergeable mappings of {size} bytes")
    return found[0]


def scan(pid, size, kflags, digests, totals):
    start, end = guest_ram(pid, size)
    pages = (end - start) // PAGE
    with open(f"/proc/{pid}/pagemap", "rb") as pm:
        pm.seek(start // PAGE * 8)
        entries = struct.unpack(f"<{pages}Q", pm.read(pages * 8))
    held = []
    for index, entry in enumerate(entries):
        if not entry & PRESENT:
            continue
        kflags.seek((entry & PFN_MASK) * 8)
        (flags,) = struct.unpack("<Q", kflags.read(8))
        if flags & KPF_ZERO_PAGE:
            continue
        held.append(index)
        totals["ksm"] += bool(flags & KPF_KSM)
        totals["thp"] += bool(flags & KPF_THP)
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for index in held:
            mem.seek(start + index * PAGE)
            data = mem.read(PAGE)
            if data == ZERO:
                totals["zero"] += 1
            digests[hashlib.blake2b(data, digest_size=16).digest()] += 1
    totals["populated"] += len(held)
    return {"pid": pid, "populated": len(held)}


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    size = int(sys.argv[1]) * 1024 * 1024
    digests = collections.Counter()
    totals = {"populated": 0, "zero": 0, "ksm": 0, "thp": 0}
    per = []
    with open("/proc/kpageflags", "rb") as kflags:
        for pid in sys.argv[2:]:
            per.append(scan(int(pid), size, kflags, digests, totals))
    totals["distinct"] = len(digests)
    totals["duplicate"] = totals["populated"] - len(digests)
    totals["per_process"] = per
    print(json.dumps(totals))


if __name__ == "__main__":
    main()
