#!/usr/bin/env bash
# A multi-GiB file through a real mount on a local Garage started here (too slow for CI;
# tests/e2e/big_files.rs is the 300 MiB variant in the suite): write it front to back
# (close returns once S3 has it), read it back after a fresh mount and compare checksums,
# rename it (above 5 GiB: a multipart UploadPartCopy in parallel) and read the renamed
# object back. Prints time, MB/s and the daemon's peak RSS of each step, and the parts
# the upload was cut in (from the ETag).
#
#   scripts/bigfile.sh
#
# Environment: BIGFILE_GIB (6), BIGFILE_MOUNT_OPTS (extra mount options, e.g.
# "--upload-memory 64MiB --upload-concurrency 8"). The data is AES-CTR keystream
# (openssl), fresh every run and as incompressible as /dev/urandom but faster.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/common.sh

GIB=${BIGFILE_GIB:-6}
read -r -a MOUNT_OPTS <<<"${BIGFILE_MOUNT_OPTS:-}"
SIZE=$((GIB << 30))

ensure_apt_packages
cargo build --release --bin s3mount
scripts/local-s3.sh install
BIN=$(pwd)/target/release/s3mount

WORK=$(mktemp -d "${TMPDIR:-/tmp}/s3mount-bigfile.XXXXXX")
MNT=$WORK/mnt
DPID=""

# Unmounts and waits (bounded) for the daemon to finish its uploads and exit.
unmount_daemon() {
    local pid=$DPID
    stop_daemon 600 || echo "daemon $pid exited with status $?" >&2
}
cleanup() {
    set +e
    unmount_daemon
    mountpoint -q "$MNT" 2>/dev/null && fusermount3 -uz "$MNT"
    scripts/local-s3.sh stop "$WORK/garage"
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
trap 'echo "bigfile: failed at line $LINENO: $BASH_COMMAND" >&2' ERR

base=$(free_port_base 3930)
scripts/local-s3.sh start "$WORK/garage" "$base" >/dev/null
source "$WORK/garage/env"

# Mounts prefix bigfile/ in the foreground, in the background of this script (so that its
# PID is known); returns once the mount is live. $1 names its cache dir and log.
mount_fg() {
    mkdir -p "$MNT"
    "$BIN" mount "$S3MOUNT_TEST_BUCKET" "$MNT" --prefix bigfile/ --endpoint-url "$AWS_ENDPOINT_URL" \
        --force-path-style --region "$AWS_REGION" --cache-dir "$WORK/cache-$1" --foreground \
        --log-level warn ${MOUNT_OPTS[@]+"${MOUNT_OPTS[@]}"} >"$WORK/mount-$1.log" 2>&1 &
    DPID=$!
    wait_mounted "bigfile: s3mount" "$WORK/mount-$1.log"
}
now() { date +%s.%N; }
calc() { awk "BEGIN { printf \"%.${2:-1}f\", $1 }"; }
peak_rss_mib() { awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$DPID/status"; }
report() { # step, seconds, bytes
    echo "  $1: $(calc "$2" 1) s, $(calc "$3 / $2 / 1e6") MB/s, daemon peak RSS $(peak_rss_mib) MiB"
}
etag() { getfattr --only-values -n user.s3.etag "$1" 2>/dev/null | tr -d '"'; }

echo "== write $GIB GiB front to back (close returns once S3 has it)"
mount_fg write
t0=$(now)
# (openssl ends on SIGPIPE once head has enough: not a failure)
{ openssl enc -aes-128-ctr -nosalt -pass "pass:$RANDOM$RANDOM$(date +%s%N)" </dev/zero 2>/dev/null || true; } |
    head -c "$SIZE" | tee >(md5sum | cut -d' ' -f1 >"$WORK/written.md5") |
    dd of="$MNT/big.bin" bs=1M iflag=fullblock status=none
t1=$(now)
report write "$(calc "$t1 - $t0" 3)" "$SIZE"
etag_big=$(etag "$MNT/big.bin")
echo "  ETag $etag_big (${etag_big##*-} parts)"
unmount_daemon
sleep 0.5 # the md5sum behind tee
written=$(cat "$WORK/written.md5")

echo "== read back after a fresh mount"
mount_fg read
size=$(stat -c %s "$MNT/big.bin")
[ "$size" = "$SIZE" ] || { echo "bigfile: $size bytes in S3, expected $SIZE" >&2; exit 1; }
t0=$(now)
read_md5=$(md5sum <"$MNT/big.bin" | cut -d' ' -f1)
t1=$(now)
report read "$(calc "$t1 - $t0" 3)" "$SIZE"
[ "$read_md5" = "$written" ] || { echo "bigfile: read back $read_md5, wrote $written" >&2; exit 1; }
echo "  checksum $read_md5 matches"

echo "== rename (a server-side copy of $GIB GiB, then delete)"
t0=$(now)
mv "$MNT/big.bin" "$MNT/renamed.bin"
t1=$(now)
report rename "$(calc "$t1 - $t0" 3)" "$SIZE"
unmount_daemon

echo "== read the renamed object back after a fresh mount"
mount_fg renamed
[ ! -e "$MNT/big.bin" ] || { echo "bigfile: big.bin still exists after the rename" >&2; exit 1; }
etag_renamed=$(etag "$MNT/renamed.bin")
echo "  ETag $etag_renamed (${etag_renamed##*-} parts copied)"
t0=$(now)
renamed_md5=$(md5sum <"$MNT/renamed.bin" | cut -d' ' -f1)
t1=$(now)
report read "$(calc "$t1 - $t0" 3)" "$SIZE"
[ "$renamed_md5" = "$written" ] || { echo "bigfile: renamed object $renamed_md5, wrote $written" >&2; exit 1; }
echo "  checksum $renamed_md5 matches"
unmount_daemon
echo "bigfile: ok"
