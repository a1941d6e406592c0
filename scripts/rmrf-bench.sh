#!/usr/bin/env bash
# Time of `rm -rf` of a folder of N objects through s3mount and through s3fs-fuse, in one run on
# one local Garage started here (with the TCP_NODELAY shim). The objects are put with the plain
# client (examples/rawbench.rs), each side gets a fresh prefix of its own and a fresh mount, and
# the script prints both times, the ratio s3mount/s3fs and the S3 requests s3mount made by op.
# The floor, measured in the same run: the plain client deleting the same number of objects one
# DELETE at a time, as `rm` unlinks one name at a time and each unlink returns only once its
# object is gone.
#
#   scripts/rmrf-bench.sh
#
# Environment: RMRF_FILES (10000), RMRF_SIZE (16KiB, bytes per object), RMRF_MOUNT_OPTS (extra
# s3mount options), RMRF_S3FS (1: also measure s3fs, when /usr/bin/s3fs is installed),
# RMRF_BIN (the s3mount binary; default this checkout's release build), RMRF_BIN_BEFORE (another
# s3mount binary, e.g. an older build, measured in the same run on a third prefix).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/common.sh

N=${RMRF_FILES:-10000}
SIZE=${RMRF_SIZE:-16KiB}
WITH_S3FS=${RMRF_S3FS:-1}
read -r -a MOUNT_OPTS <<<"${RMRF_MOUNT_OPTS:-}"
case "$N" in '' | *[!0-9]*) echo "rmrf-bench: RMRF_FILES must be a number, got '$N'" >&2; exit 2 ;; esac

ensure_apt_packages
cargo build --release --bin s3mount --example rawbench
scripts/local-s3.sh install
BIN=${RMRF_BIN:-$(pwd)/target/release/s3mount}
BEFORE=${RMRF_BIN_BEFORE:-}
RAW=$(pwd)/target/release/examples/rawbench
if [ "$WITH_S3FS" = 1 ] && ! command -v s3fs >/dev/null; then
    echo "rmrf-bench: s3fs is not installed (apt-get install s3fs); measuring s3mount only" >&2
    WITH_S3FS=0
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/s3mount-rmrf.XXXXXX")
MNT=$WORK/mnt
DPID=""

# Unmounts the current mount and waits (bounded) for its process to exit.
unmount_daemon() { stop_daemon 60 || true; }
cleanup() {
    set +e
    unmount_daemon
    mountpoint -q "$MNT" 2>/dev/null && fusermount3 -uz "$MNT"
    scripts/local-s3.sh stop "$WORK/garage"
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

base=$(free_port_base 3950)
scripts/local-s3.sh start "$WORK/garage" "$base" >/dev/null
source "$WORK/garage/env"

now() { date +%s.%N; }
calc() { awk "BEGIN { printf \"%.${2:-2}f\", $1 }"; }

# Waits (bounded) until $MNT is a mount point served by process $DPID; $1 names its log.

# Puts N objects under $1/d/ and times `rm -rf $MNT/d`; prints the seconds. Checks that nothing
# is left under the prefix afterwards.
time_rmrf() {
    local prefix=$1 t0 t1 left
    [ -d "$MNT/d" ] || { echo "rmrf-bench: $MNT/d is not there" >&2; return 1; }
    t0=$(now)
    rm -rf "$MNT/d"
    t1=$(now)
    [ ! -e "$MNT/d" ] || { echo "rmrf-bench: $MNT/d still exists after rm -rf" >&2; return 1; }
    left=$("$RAW" list "$prefix/" | sed -n 's/.* entries=\([0-9]*\).*/\1/p')
    [ "${left:-x}" = 0 ] || { echo "rmrf-bench: $left entries left under $prefix/ in S3" >&2; return 1; }
    calc "$t1 - $t0" 3
}

echo "== $N objects of $SIZE under rmrf-s3mount/d/ and rmrf-s3fs/d/"
"$RAW" put-many rmrf-s3mount/d/f "$N" "$SIZE" | sed 's/^/  raw: /'
[ "$WITH_S3FS" = 1 ] && "$RAW" put-many rmrf-s3fs/d/f "$N" "$SIZE" | sed 's/^/  raw: /'
if [ -n "$BEFORE" ]; then "$RAW" put-many rmrf-before/d/f "$N" "$SIZE" | sed 's/^/  raw: /'; fi
"$RAW" put-many rmrf-raw/d/f "$N" "$SIZE" | sed 's/^/  raw: /'

echo "== the plain client: one DELETE at a time"
out=$("$RAW" --jobs 1 delete-many rmrf-raw/d/f "$N")
echo "  raw: $out"
T_RAW=$(sed -n 's/.* secs=\([0-9.]*\).*/\1/p' <<<"$out")

# Mounts prefix $2 with s3mount binary $1 and prints the time of `rm -rf` and its requests.
rmrf_s3mount() {
    mkdir -p "$MNT"
    "$1" mount "$S3MOUNT_TEST_BUCKET" "$MNT" --prefix "$2/" --endpoint-url "$AWS_ENDPOINT_URL" \
        --force-path-style --region "$AWS_REGION" --cache-dir "$WORK/cache-$2" --foreground \
        --log-level warn ${MOUNT_OPTS[@]+"${MOUNT_OPTS[@]}"} >"$WORK/$2.log" 2>&1 &
    DPID=$!
    wait_mounted "rmrf-bench: $1" "$WORK/$2.log"
    T_RM=$(time_rmrf "$2")
    echo "  $1: $T_RM s"
    "$1" status "$MNT" | sed -n '/S3 requests/,/^bytes:/p' | sed 's/^/  /'
    unmount_daemon
}

echo "== rm -rf through s3mount"
rmrf_s3mount "$BIN" rmrf-s3mount
T_MOUNT=$T_RM
if [ -n "$BEFORE" ]; then
    echo "== rm -rf through the other s3mount build"
    rmrf_s3mount "$BEFORE" rmrf-before
    T_BEFORE=$T_RM
fi

if [ "$WITH_S3FS" = 1 ]; then
    echo "== rm -rf through s3fs"
    printf '%s:%s\n' "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" >"$WORK/passwd"
    chmod 600 "$WORK/passwd"
    s3fs "$S3MOUNT_TEST_BUCKET:/rmrf-s3fs" "$MNT" -f -o "url=$AWS_ENDPOINT_URL" \
        -o use_path_request_style -o "passwd_file=$WORK/passwd" -o "endpoint=$AWS_REGION" \
        -o dbglevel=warn >"$WORK/s3fs.log" 2>&1 </dev/null &
    DPID=$!
    wait_mounted "rmrf-bench: s3fs" "$WORK/s3fs.log"
    T_S3FS=$(time_rmrf rmrf-s3fs)
    echo "  s3fs: $T_S3FS s"
    unmount_daemon
fi

echo
printf '%-32s %10s\n' "rm -rf of $N objects" "seconds"
printf '%-32s %10s\n' "s3mount" "$T_MOUNT"
printf '%-32s %10s\n' "raw, one DELETE at a time" "$T_RAW"
printf '%-32s %10s\n' "ratio s3mount / raw" "$(calc "$T_MOUNT / $T_RAW")"
if [ -n "$BEFORE" ]; then printf '%-32s %10s\n' "s3mount, RMRF_BIN_BEFORE" "$T_BEFORE"; fi
if [ "$WITH_S3FS" = 1 ]; then
    printf '%-32s %10s\n' "s3fs (same run)" "$T_S3FS"
    printf '%-32s %10s   (target <= 0.80)\n' "ratio s3mount / s3fs" "$(calc "$T_MOUNT / $T_S3FS")"
    printf '%-32s %10s\n' "ratio s3fs / raw" "$(calc "$T_S3FS / $T_RAW")"
    if [ -n "$BEFORE" ]; then printf '%-32s %10s\n' "ratio RMRF_BIN_BEFORE / s3fs" "$(calc "$T_BEFORE / $T_S3FS")"; fi
fi
