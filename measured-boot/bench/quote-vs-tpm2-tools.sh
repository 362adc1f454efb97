#!/bin/bash
# Quote + verify latency: `circ attest quote` / `circ attest verify` against
# tpm2-tools' `tpm2_quote` / `tpm2_checkquote`, on one private swtpm, same PCRs.
# Not a test: prints mean milliseconds per operation and the ratios.
#
#   measured-boot/bench/quote-vs-tpm2-tools.sh [ITERATIONS] [path/to/circ]
set -euo pipefail

n=${1:-20}
circ=${2:-target/release/circ}
[ -x "$circ" ] || { echo "build circ first: cargo build --release -p circ" >&2; exit 1; }
circ=$(realpath "$circ")
work=$(mktemp -d)
cleanup() { [ -n "${swtpm_pid:-}" ] && kill "$swtpm_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir "$work/tpm"
swtpm socket --tpm2 --tpmstate dir="$work/tpm" --server type=tcp,port="$port",bindaddr=127.0.0.1 \
    --ctrl type=tcp,port=$((port + 1)),bindaddr=127.0.0.1 --flags not-need-init,startup-clear &
swtpm_pid=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.05; done

export TPM2TOOLS_TCTI="swtpm:host=127.0.0.1,port=$port" CIRC_TPM_TCTI="swtpm:host=127.0.0.1,port=$port"
export CIRC_MEASURE_LOG="$work/measurements.log" CIRC_STATE_DIR="$work/state" CIRC_TPM_CONFIG="$work/tpm.toml"
export TSS2_LOG=all+none CIRC_LOG=warn
: >"$work/tpm.toml"
cd "$work"

# Same starting point for both: three events in PCR 15, one AK each (ECC P-256, endorsement hierarchy).
for f in a b c; do echo "$f" >"$f"; "$circ" measure file "$f" --pcr 15 >/dev/null; done
"$circ" attest ak --out ak.pem 2>/dev/null
tpm2_createek -c ek.ctx -G ecc -u ek.pub >/dev/null
tpm2_createak -C ek.ctx -c ak.ctx -G ecc -g sha256 -s ecdsa -u tak.pub -f pem >/dev/null
tpm2_flushcontext -t

ms() { # mean ms of "$@" over $n runs
    local t0 t1
    t0=$(date +%s%N)
    for _ in $(seq "$n"); do "$@" >/dev/null 2>&1; done
    t1=$(date +%s%N)
    echo $(( (t1 - t0) / n / 1000 ))
}
us_to_ms() { awk -v u="$1" 'BEGIN { printf "%.2f", u / 1000 }'; }

nonce=00112233445566778899aabbccddeeff
circ_quote=$(ms "$circ" attest quote --nonce $nonce --out quote.json)
circ_verify=$(ms "$circ" attest verify quote.json --ak ak.pem --nonce $nonce)
"$circ" attest verify quote.json --ak ak.pem --nonce $nonce >/dev/null # must pass

# tpm2_quote with a saved AK context (-c ak.ctx): the tools' fastest path.
t2_quote=$(ms tpm2_quote -c ak.ctx -l sha256:15 -q $nonce -m msg -s sig -o pcrs.out -g sha256)
t2_verify=$(ms tpm2_checkquote -u tak.pub -m msg -s sig -f pcrs.out -g sha256 -q $nonce)
tpm2_checkquote -u tak.pub -m msg -s sig -f pcrs.out -g sha256 -q $nonce >/dev/null # must pass

printf '%-34s %10s %10s %8s\n' "operation ($n runs, mean)" "circ ms" "tpm2 ms" "ratio"
printf '%-34s %10s %10s %8s\n' "quote (process + TPM)" "$(us_to_ms "$circ_quote")" "$(us_to_ms "$t2_quote")" \
    "$(awk -v a="$circ_quote" -v b="$t2_quote" 'BEGIN { printf "%.2f", a / b }')"
printf '%-34s %10s %10s %8s\n' "verify (no TPM)" "$(us_to_ms "$circ_verify")" "$(us_to_ms "$t2_verify")" \
    "$(awk -v a="$circ_verify" -v b="$t2_verify" 'BEGIN { printf "%.2f", a / b }')"
echo "(circ quote includes loading the AK under a re-derived primary, reading PCR values and embedding the log;"
echo " circ verify includes log replay; tpm2_checkquote checks signature, nonce and PCR digest only)"
