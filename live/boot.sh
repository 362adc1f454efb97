#!/usr/bin/env bash
# Boots circular-live.iso once under QEMU software emulation, the lab's
# machine (emulated AMD CPU with SVM + NPT, no NIC; tests/lab/lab.toml),
# from -cdrom through BIOS, and measures it: seconds from QEMU's start to
# Xen's banner, the initramfs finding the medium, the Xen toolstack up in
# dom0 and the root shell. Then, through the serial console, the shell runs
# `circ xen info` and `xl list` (the package's tools on the medium's Xen)
# and `circ-live-poweroff`. Fails when a step does not come in time.
# Run it under the lab's lock (flock) when sharing the machine.
#
#   live/boot.sh ISO [--out DIR] [--timeout SECS] [--uefi]     (scripts/media boot)
#
# --uefi boots through OVMF's UEFI firmware (Debian's ovmf) instead of BIOS.
#
# DIR (default target/live-boot/<time>) receives serial.log and result.json.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'live-boot: %s\n' "$*" >&2; }
die() {
    say "FAIL: $*"
    exit 1
}

iso=
out=
limit=600
firmware=(-boot d)
while (($#)); do
    case $1 in
    --out)
        (($# >= 2)) || die "--out needs a directory"
        out=$2
        shift 2
        ;;
    --timeout)
        (($# >= 2)) || die "--timeout needs seconds"
        limit=$2
        shift 2
        ;;
    --uefi)
        ovmf=/usr/share/ovmf/OVMF.fd
        [[ -f $ovmf ]] || die "no $ovmf (apt-get install ovmf)"
        firmware=(-bios "$ovmf")
        shift
        ;;
    -*) die "unknown argument: $1" ;;
    *)
        iso=$(realpath -- "$1")
        shift
        ;;
    esac
done
[[ -f $iso ]] || die "usage: live/boot.sh ISO [--out DIR] [--timeout SECS]"
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 is missing (scripts/setup)"
out=${out:-target/live-boot/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out"
out=$(realpath "$out")
log=$out/serial.log
: >"$log"

# The serial port through a pair of FIFOs: QEMU writes NAME.out, reads
# NAME.in. Kept open read-write here so that neither side blocks.
mkfifo "$out/serial.in" "$out/serial.out"
exec 7<>"$out/serial.in" 8<>"$out/serial.out"
cat <&8 >>"$log" &
reader=$!
started=$(date +%s.%N)
qemu-system-x86_64 -accel tcg,thread=multi -smp 2 -cpu qemu64,+svm,+npt -m 3072 \
    -cdrom "$iso" "${firmware[@]}" -nic none -display none -monitor none -no-reboot \
    -serial "pipe:$out/serial" >"$out/qemu.log" 2>&1 &
qemu=$!
cleanup() {
    kill "$qemu" 2>/dev/null || true
    kill "$reader" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -f "$out/serial.in" "$out/serial.out"
}
trap cleanup EXIT

elapsed() { awk -v from="$started" -v now="$(date +%s.%N)" 'BEGIN {printf "%.1f", now - from}'; }
# wait_for TEXT: seconds since QEMU started when TEXT first shows in the log.
wait_for() {
    local text=$1
    while ! grep -qF -- "$text" "$log"; do
        kill -0 "$qemu" 2>/dev/null || die "QEMU exited before '$text' (see $log)"
        (($(date +%s) - ${started%.*} < limit)) || die "no '$text' within $limit s (see $log)"
        sleep 0.2
    done
    elapsed
}

t_xen=$(wait_for "Xen version 4.17")
say "$(printf '%6.1f' "$t_xen") s  Xen's banner"
t_medium=$(wait_for "circular-live: medium")
say "$(printf '%6.1f' "$t_medium") s  initramfs found the medium"
t_toolstack=$(wait_for "circular-live: Xen toolstack up")
say "$(printf '%6.1f' "$t_toolstack") s  Xen toolstack up in dom0"
t_ready=$(wait_for "circular-live: ready")
say "$(printf '%6.1f' "$t_ready") s  root shell on the console"
grep -q "Domain-0" "$log" || die "the first-boot screen shows no Domain-0 (circ xen info)"

# The shell answers: the package's circ and Xen's xl against the running Xen.
sleep 2
# The markers are split in the command line so that its echo never matches.
printf '%s\n' 'circ xen info --json | jq -cM "{version: .xen.version, domains: [.domains[].name]}"; echo "circ-""rc=$?"' >&7
wait_for "circ-rc=" >/dev/null
grep -q 'circ-rc=0' "$log" || die "circ xen info failed in the live dom0 (see $log)"
xen_info=$(grep -ao '{"version":"4.17[^}]*}' "$log" | tail -n 1 || true)
[[ -n $xen_info ]] || die "circ xen info --json printed no Xen 4.17 version"
say "circ xen info: $xen_info"
printf '%s\n' 'xl list; echo "xl-""rc=$?"' >&7
wait_for "xl-rc=" >/dev/null
grep -q 'xl-rc=0' "$log" || die "xl list failed in the live dom0 (see $log)"

printf '%s\n' 'circ-live-poweroff' >&7
for _ in $(seq 300); do
    kill -0 "$qemu" 2>/dev/null || break
    sleep 0.2
done
! kill -0 "$qemu" 2>/dev/null || die "the machine did not power off within 60 s"
t_off=$(elapsed)
say "$(printf '%6.1f' "$t_off") s  powered off"

jq -n --arg iso "$iso" --arg firmware "${firmware[*]}" --argjson iso_bytes "$(stat -c %s "$iso")" \
    --argjson xen "$t_xen" --argjson medium "$t_medium" --argjson toolstack "$t_toolstack" \
    --argjson ready "$t_ready" --argjson off "$t_off" --arg xen_info "$xen_info" \
    '{iso: $iso, firmware: $firmware, iso_bytes: $iso_bytes, secs_to_xen_banner: $xen, secs_to_medium: $medium,
      secs_to_toolstack: $toolstack, secs_to_root_shell: $ready, secs_to_poweroff: $off,
      circ_xen_info: $xen_info}' | tee "$out/result.json"
say "PASS ($out)"
