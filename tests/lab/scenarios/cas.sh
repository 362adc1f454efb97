#!/bin/bash
# Scenario `cas`: a PV guest's disk is a cas-blk image served over HTTP in
# dom0, attached through `circ cas nbd` + the kernel's nbd + blkback by the
# block-circ hotplug script. The guest checks its files; a corrupt chunk
# (a broken zstd frame, or a frame that decompresses to other bytes than
# its name) gives the guest an I/O error, never wrong data; an index is
# only accepted for the image its URL names; a new generation is seen after
# a reboot; the old one only with an explicit rollback, the state of which
# lives in /var/lib/circular/cas, not in the cache; a measured disk is served
# from the measured index only.
set -u
# shellcheck source=tests/lab/dom0/lib.sh
. /lab/lib.sh

work=/tmp/cas
store=$work/store
cache=/var/cache/circular/cas
url=http://127.0.0.1:8080/indexes/img.cidx
mkdir -p "$work/tree" /etc/circular

check "loopback is up" ip link set lo up

# The guest disk: files of known content and the check the guest runs.
head -c $((12 << 20)) /dev/urandom >"$work/tree/big.bin"
head -c $((3 << 20)) /dev/urandom >"$work/tree/data.bin"
head -c $((4 << 20)) /dev/urandom >"$work/tree/more.bin"
echo "generation one" >"$work/tree/hello.txt"
cat >"$work/tree/circ-check" <<'SH'
#!/bin/sh
# On a writable disk (the ro mount can be remounted rw) first writes
# written.txt. Then prints `sha1 FILE SUM` for each file it can read,
# `error FILE` otherwise.
cd /mnt || exit 1
if mount -o remount,rw /mnt 2>/dev/null; then
    echo "written by the guest on a writable cas-blk disk" >/mnt/written.txt
    sync
    mount -o remount,ro /mnt && echo "wrote written.txt"
fi
for f in *.bin *.txt; do
    if sum=$(sha1sum "$f" 2>/dev/null); then
        echo "sha1 $f ${sum%% *}"
    else
        echo "error $f"
    fi
done
SH
chmod 0755 "$work/tree/circ-check"
sums() { (cd "$1" && for f in *.bin *.txt; do echo "sha1 $f $(sha1sum "$f" | cut -d' ' -f1)"; done); }
sums "$work/tree" >"$LAB_OUT/cas-sums-1.txt"

image_mib=128
check "guest disk image made (ext4, ${image_mib} MiB)" \
    mke2fs -q -t ext4 -b 4096 -L circ-cas -d "$work/tree" "$work/img" "${image_mib}M"
check "signing key made" circ cas keygen --out "$work/key"
t0=$(now_ms)
check "image packed" sh -c "circ cas pack '$work/img' '$store' --key '$work/key' --name img --json >'$LAB_OUT/pack-1.json'"
timing "cas: pack ${image_mib} MiB image" $(($(now_ms) - t0))
check_json "first pack is generation 1" "$LAB_OUT/pack-1.json" '.generation == 1'
info "cas: store after pack" "$(jq -c '{image_size, chunks, zero_chunks, unique_chunks, new_stored_bytes}' "$LAB_OUT/pack-1.json")"
cp "$store/indexes/img.cidx" "$store/indexes/img-gen1.cidx"

cat >/etc/circular/cas.toml <<TOML
pubkey = "$work/key.pub"
cache = "$cache"
TOML
circ cas serve "$store" --listen 127.0.0.1:8080 >"$LAB_OUT/cas-serve.log" 2>&1 &
check "circ cas serve listens on 127.0.0.1:8080" wait_for 30 grep -q serving "$LAB_OUT/cas-serve.log"
check "block-circ is installed" test -x /etc/xen/scripts/block-circ
# Every hotplug command traced, and the servers' connections logged.
export CIRC_BLOCK_TRACE=$LAB_OUT/block-circ.trace CIRC_LOG=info

disk_line() { echo "disk = ['vdev=xvda, access=ro, script=block-circ, target=$1']"; }
console_of() { guest_console "$1"; }
checks_done() { grep -q 'circ-guest: disk checks done' "$(console_of "$1")"; }
# guest_sums NAME: the guest's `circ-check` lines, without the prefix.
guest_sums() { sed -n 's/^circ-check: //p' "$(console_of "$1")" | tr -d '\r'; }
# The cache's pack files are sparse: what is allocated is what it holds.
cache_bytes() { du -s --block-size=1 -c "$cache"/pack-*.data 2>/dev/null | awk 'END { print $1 + 0 }'; }
# cached_ids: the chunks in the cache's tables (64-byte entries after a
# 4 KiB header: byte 0 is 1 for a slot in use, bytes 8-27 the chunk's SHA-1).
cached_ids() {
    local table
    for table in "$cache"/pack-*.table; do
        [ -f "$table" ] || continue
        od -A n -v -t x1 -w64 -j 4096 "$table" |
            awk '$1 == "01" { id = ""; for (i = 9; i <= 28; i++) id = id $i; print id }'
    done
}

# boot_guest NAME INDEX_URL: boots a PV guest on that disk and waits for its checks.
boot_guest() {
    local t0
    t0=$(now_ms)
    GUEST_EXTRA_CONFIG=$(disk_line "$2") start_guest "$1" pv || return 1
    wait_for 240 checks_done "$1" || { echo "guest checks did not finish"; return 1; }
    timing "$1: create to disk checks done" $(($(now_ms) - t0))
}

# --- 1. boot on generation 1: every file reads back exactly ---------------
check "guest cas-1 boots with a cas-blk disk" boot_guest cas-1 "$url"
guest_sums cas-1 >"$LAB_OUT/cas-1-guest.txt"
check_eq "cas-1: guest reads every file exactly" "$(cat "$LAB_OUT/cas-sums-1.txt")" "$(cat "$LAB_OUT/cas-1-guest.txt")"
domid=$(xl domid cas-1)
be=/local/domain/0/backend/vbd/$domid/51712
check_eq "hotplug-status is connected" connected "$(xenstore-read "$be/hotplug-status")"
check "physical-device is the nbd device (major 43 = 0x2b)" \
    sh -c "xenstore-read $be/physical-device | grep -q '^2b:'"
check_eq "backend reads params = the index URL" "$url" "$(xenstore-read "$be/params")"
# The cache holds decoded chunks; what crossed the network is their stored
# (compressed) copies (format 2: chunks of which only the frames small
# reads fetched are cached count whole here).
fetched_bytes() {
    cached_ids |
        while read -r id; do stat -c %s "$store/chunks/${id:0:2}/$id".*; done |
        awk '{ s += $1 } END { print s + 0 }'
}
info "cas: bytes fetched for boot 1 (compressed chunks; decoded in the cache) vs image" \
    "$(jq -cn --argjson f "$(fetched_bytes)" --argjson d "$(cache_bytes)" --argjson i $((image_mib << 20)) \
        '{fetched: $f, decoded: $d, image: $i}')"
# The server records the boot's chunks beside the cache's copy of the index
# (saved every 5 s of its 60 s window).
boot_list() { find "$cache/indexes" -name '*.prefetch' 2>/dev/null | head -1; }
has_boot_list() { [ -n "$(boot_list)" ]; }
check "boot 1 recorded a boot prefetch list" wait_for 20 has_boot_list
listed=$(sed -n 's/^chunks //p' "$(boot_list)" 2>/dev/null)
check "the list names chunks" test "${listed:-0}" -gt 0
info "cas: boot prefetch list recorded by boot 1" "{\"chunks\": ${listed:-0}}"
cp "$(boot_list)" "$LAB_OUT/boot.prefetch" 2>/dev/null
check "cas-1 destroyed" xl destroy cas-1
check "hotplug remove stopped the server and freed the device" \
    sh -c "! ls /run/circular/cas/*.pid 2>/dev/null && [ \"\$(cat /sys/block/nbd0/size)\" = 0 ]"

# --- 2. corrupt chunks on the server: I/O error, never wrong data ---------
# A chunk in the middle of big.bin gets bytes of its zstd frame overwritten
# (it no longer decompresses); one in the middle of more.bin is replaced by
# a good zstd frame of other bytes (it decompresses, to content whose SHA-1
# is not its name). Both dropped from the cache so they are fetched.
chunk_size=$(jq -r '.image_size / .chunks | ceil' "$LAB_OUT/pack-1.json")
fs_block=$(dumpe2fs -h "$work/img" 2>/dev/null | awk '/^Block size:/ {print $3}')
# chunk_at FILE OFFSET: the number of the chunk holding that byte of FILE.
chunk_at() {
    local block
    block=$(debugfs -R "bmap /$1 $(($2 / fs_block))" "$work/img" 2>/dev/null)
    echo $((block * fs_block / chunk_size))
}
chunk_plain() { dd if="$work/img" bs="$chunk_size" skip="$1" count=1 2>/dev/null; }
chunk_no=$(chunk_at big.bin $((6 << 20)))
chunk_id=$(chunk_plain "$chunk_no" | sha1sum | cut -d' ' -f1)
chunk_file=$(ls "$store/chunks/${chunk_id:0:2}/$chunk_id".* 2>/dev/null | head -1)
check "big.bin's chunk $chunk_no is in the store ($chunk_id)" test -f "$chunk_file"
cp "$chunk_file" "$work/chunk.good"
head -c 4096 /dev/urandom | dd of="$chunk_file" bs=1 seek=100 conv=notrunc 2>/dev/null
# The other: more.bin's chunk with a few bytes changed, packed on its own
# (same chunk size, zstd), its frame copied over the good chunk's file.
wrong_no=$(chunk_at more.bin $((2 << 20)))
wrong_id=$(chunk_plain "$wrong_no" | sha1sum | cut -d' ' -f1)
wrong_file=$(ls "$store/chunks/${wrong_id:0:2}/$wrong_id".* 2>/dev/null | head -1)
check "more.bin's chunk $wrong_no is in the store ($wrong_id)" test -f "$wrong_file"
cp "$wrong_file" "$work/wrong.good"
chunk_plain "$wrong_no" >"$work/wrong.plain"
printf 'not the bytes named by the chunk' | dd of="$work/wrong.plain" bs=1 seek=1000 conv=notrunc 2>/dev/null
rm -rf "$work/wrong-store"
check "a frame of other bytes made (pack of the changed chunk)" \
    circ cas pack "$work/wrong.plain" "$work/wrong-store" --key "$work/key" --name wrong --chunk-size "$chunk_size"
wrong_frame=$(find "$work/wrong-store/chunks" -type f -name '*.zst' | head -1)
# Read back through circ (scratch state): the frame decompresses to the
# changed bytes, whose SHA-1 is not the chunk's name.
decoded=$(circ cas cat "$work/wrong-store/indexes/wrong.cidx" --pubkey "$work/key.pub" \
    --state-dir "$work/scratch-state" 2>/dev/null | sha1sum | cut -d' ' -f1)
check_eq "that frame decompresses to the changed chunk" "$(sha1sum <"$work/wrong.plain" | cut -d' ' -f1)" "$decoded"
check "whose SHA-1 is not the name $wrong_id" test "$decoded" != "$wrong_id"
cp "$wrong_frame" "$wrong_file"
rm -f "$cache"/pack-*
# The cache is empty again but keeps boot 1's list: this boot prefetches it.
check "guest cas-2 boots on the corrupted store" boot_guest cas-2 "$url"
guest_sums cas-2 >"$LAB_OUT/cas-2-guest.txt"
check "cas-2: big.bin gives an I/O error" grep -qx "error big.bin" "$LAB_OUT/cas-2-guest.txt"
check "cas-2: no wrong checksum of big.bin" sh -c "! grep -q '^sha1 big.bin' '$LAB_OUT/cas-2-guest.txt'"
check "cas-2: more.bin (a chunk of wrong content) gives an I/O error" grep -qx "error more.bin" "$LAB_OUT/cas-2-guest.txt"
check "cas-2: no wrong checksum of more.bin" sh -c "! grep -q '^sha1 more.bin' '$LAB_OUT/cas-2-guest.txt'"
check_eq "cas-2: the other files read exactly" \
    "$(grep -v -e big.bin -e more.bin "$LAB_OUT/cas-sums-1.txt")" "$(grep -v -e big.bin -e more.bin "$LAB_OUT/cas-2-guest.txt")"
check "the NBD server refused the bad chunk" \
    sh -c "grep -h 'NBD request failed' /run/circular/cas/*.log | grep -q $chunk_id"
# Format 1 says the SHA-1 differs; format 2 that a frame's BLAKE3 is not
# the index's (or, if the changed frame compressed to another length, that
# the bytes where the index puts it do not decompress).
check "the NBD server refused the chunk of wrong content" \
    sh -c "grep -h 'NBD request failed' /run/circular/cas/*.log | grep $wrong_id | grep -Eq \"hashes to|index's digest|decompression failed\""
check "cas-2's server prefetched boot 1's list" \
    sh -c "grep -h 'boot prefetch done' /run/circular/cas/*.log | grep -q 'fetched=[1-9]'"
info "cas: boot prefetch on cas-2" \
    "$(grep -h 'boot prefetch done' /run/circular/cas/*.log | sed 's/.*boot prefetch done //' | jq -Rc '{server: .}')"
cp /run/circular/cas/*.log "$LAB_OUT/" 2>/dev/null
check "cas-2 destroyed" xl destroy cas-2
cp "$work/chunk.good" "$chunk_file"
cp "$work/wrong.good" "$wrong_file"

# --- 3. a new generation ---------------------------------------------------
cp --sparse=always "$work/img" "$work/img2"
echo "generation two" >"$work/hello2.txt"
debugfs -w -R "rm /hello.txt" "$work/img2" >/dev/null 2>&1
check "image updated (hello.txt rewritten)" \
    sh -c "debugfs -w -R 'write $work/hello2.txt hello.txt' '$work/img2' && debugfs -R 'cat /hello.txt' '$work/img2' | grep -q 'generation two'"
t0=$(now_ms)
check "new image packed" sh -c "circ cas pack '$work/img2' '$store' --key '$work/key' --name img --json >'$LAB_OUT/pack-2.json'"
timing "cas: re-pack after a one-file change" $(($(now_ms) - t0))
check_json "second pack is generation 2 and adds few chunks" "$LAB_OUT/pack-2.json" \
    '.generation == 2 and .new_chunks <= 4'
info "cas: re-pack" "$(jq -c '{generation, new_chunks, new_stored_bytes}' "$LAB_OUT/pack-2.json")"
sed 's/^sha1 hello.txt .*/sha1 hello.txt '"$(sha1sum "$work/hello2.txt" | cut -d' ' -f1)"'/' \
    "$LAB_OUT/cas-sums-1.txt" >"$LAB_OUT/cas-sums-2.txt"
check "guest cas-3 boots on generation 2" boot_guest cas-3 "$url"
check_eq "cas-3: guest sees generation 2" "$(cat "$LAB_OUT/cas-sums-2.txt")" "$(guest_sums cas-3)"
check "cas-3 destroyed" xl destroy cas-3

# --- 4. image binding and rollback -----------------------------------------
# An index is only trusted for the image its URL names: img's generation-1
# index served as image `img-gen1` is refused.
check "the anti-rollback state is in /var/lib/circular/cas, not in the cache" \
    sh -c "[ \"\$(cat /var/lib/circular/cas/generations/img)\" = 2 ] && [ ! -e '$cache/generations' ]"
other=http://127.0.0.1:8080/indexes/img-gen1.cidx
cfg=$(GUEST_EXTRA_CONFIG=$(disk_line "$other") guest_config cas-4 pv)
check "an index for another image than the URL names is refused (xl create fails)" \
    sh -c "! xl create '$cfg' >>'$LAB_OUT/xl.log' 2>&1"
check "the hotplug script reported the other image" \
    grep -q "is for image \`img\`, but image \`img-gen1\` was asked for" /run/circular/cas/*.log
xl destroy cas-4 >/dev/null 2>&1
# The mirror goes back to generation 1 at img's own URL: refused, then
# accepted when asked.
cp "$store/indexes/img.cidx" "$work/img-gen2.cidx"
cp "$store/indexes/img-gen1.cidx" "$store/indexes/img.cidx"
cfg=$(GUEST_EXTRA_CONFIG=$(disk_line "$url") guest_config cas-4 pv)
check "generation 1 after generation 2 is refused (xl create fails)" \
    sh -c "! xl create '$cfg' >>'$LAB_OUT/xl.log' 2>&1"
check "the hotplug script reported the refused rollback" \
    grep -q "rollback refused" /run/circular/cas/*.log /var/log/xen/xen-hotplug.log "$LAB_OUT/xl.log"
xl destroy cas-4 >/dev/null 2>&1
export CIRC_CAS_ALLOW_ROLLBACK=1
check "guest cas-5 boots on generation 1 with the rollback allowed" boot_guest cas-5 "$url"
unset CIRC_CAS_ALLOW_ROLLBACK
check_eq "cas-5: guest sees generation 1 again" "$(cat "$LAB_OUT/cas-sums-1.txt")" "$(guest_sums cas-5)"
check "cas-5 destroyed" xl destroy cas-5
cp "$work/img-gen2.cidx" "$store/indexes/img.cidx"

# --- 5. a writable disk: the guest writes, dom0 commits, the next boot sees it
# Writes go to the overlay block-circ keeps per guest and disk; the store is
# never written. `circ cas commit` turns the overlay into generation 3.
overlay=/var/lib/circular/cas/overlays/cas-6-51712.ovl
rw_line="disk = ['vdev=xvda, access=rw, script=block-circ, target=$url']"
boot_rw() {
    local t0
    t0=$(now_ms)
    GUEST_EXTRA_CONFIG=$rw_line start_guest cas-6 pv || return 1
    wait_for 240 checks_done cas-6 || { echo "guest checks did not finish"; return 1; }
    timing "cas-6: create to disk checks done (writable disk)" $(($(now_ms) - t0))
}
store_state() { find "$store" -type f -exec sha1sum {} + | sort | sha1sum; }
store_before=$(store_state)
check "guest cas-6 boots with a writable cas-blk disk" boot_rw
check "cas-6 wrote to its disk" grep -q "circ-check: wrote written.txt" "$(console_of cas-6)"
rw_log=/run/circular/cas/vbd-$(xl domid cas-6)-51712.log
check "cas-6 destroyed" xl destroy cas-6
# block-circ remove detaches the nbd device, then sends SIGTERM: the server
# flushes the overlay and exits 0 (it is not killed).
check "cas-6's server stopped on SIGTERM with its overlay flushed" \
    grep -q "NBD server stopped, disk flushed" "$rw_log"
cp "$rw_log" "$LAB_OUT/cas-6-nbd.log" 2>/dev/null
check "the guest's writes are in its overlay" test -s "$overlay"
check_eq "the guest's writes left the store as it was" "$store_before" "$(store_state)"
check "overlay committed" sh -c "circ cas commit '$overlay' --index '$url' --pubkey '$work/key.pub' --key '$work/key' --store '$store' --json >'$LAB_OUT/commit.json'"
check_json "the commit is generation 3" "$LAB_OUT/commit.json" '.generation == 3 and .new_chunks >= 1'
info "cas: commit of the guest's writes" "$(jq -c '{generation, changed_chunks, new_chunks, written_blocks}' "$LAB_OUT/commit.json")"
rm -f "$overlay"
check "guest cas-7 boots on generation 3" boot_guest cas-7 "$url"
check "cas-7 reads the file cas-6 wrote" \
    grep -q "circ-check: sha1 written.txt $(echo "written by the guest on a writable cas-blk disk" | sha1sum | cut -d' ' -f1)" "$(console_of cas-7)"
check_eq "cas-7: every other file as in generation 2" "$(cat "$LAB_OUT/cas-sums-2.txt")" "$(guest_sums cas-7 | grep -v '^sha1 written.txt ')"
check "cas-7 destroyed" xl destroy cas-7

# --- 6. a measured disk is served from the measured index only -------------
# `circ measure domain` (dom0's TPM) measures the index bytes cas-blk serves
# for the block-circ disk and pins them for cas-8's disk; block-circ then
# refuses any other index for it, until the domain is measured again.
export CIRC_MEASURE_LOG=$LAB_OUT/measurements.log
cfg8=$(GUEST_EXTRA_CONFIG=$(disk_line "$url") guest_config cas-8 pv)
index_sha256() { sha256sum <"$store/indexes/img.cidx" | cut -d' ' -f1; }
check "circ measure domain cas-8 measures and pins its block-circ disk" \
    sh -c "circ measure domain '$cfg8' >'$LAB_OUT/measure-cas-8.txt' 2>&1"
check "the measurement is the served index's bytes, under its URL" \
    grep -q "$url (cas-blk image img generation 3) sha256:$(index_sha256)" "$LAB_OUT/measure-cas-8.txt"
check "guest cas-8 boots on its measured disk" boot_guest cas-8 "$url"
check "cas-8 destroyed" xl destroy cas-8
# Its next boot must not find this boot's lines in the console log.
mv "$(console_of cas-8)" "$(console_of cas-8).gen3"
check "generation 4 published after the measurement" \
    sh -c "circ cas pack '$work/img2' '$store' --key '$work/key' --name img --json >'$LAB_OUT/pack-4.json'"
check "cas-8 on an index other than the measured one is refused (xl create fails)" \
    sh -c "! xl create '$cfg8' >>'$LAB_OUT/xl.log' 2>&1"
check "the hotplug script reported the unmeasured index" \
    grep -q "is not the one measured" /run/circular/cas/*.log
xl destroy cas-8 >/dev/null 2>&1
check "circ measure domain cas-8 again pins generation 4" \
    sh -c "circ measure domain '$cfg8' | grep -q 'generation 4) sha256:$(index_sha256)'"
check "guest cas-8 boots on generation 4 once measured again" boot_guest cas-8 "$url"
check "cas-8 destroyed" xl destroy cas-8
check_eq "only Domain-0 remains" 1 "$(xl list | tail -n +2 | wc -l)"
cp /run/circular/cas/*.log "$LAB_OUT/" 2>/dev/null
