#!/usr/bin/env bash
# The second host's first `ls -l` with --shared-metadata-index, against the raw LIST
# (examples/rawbench.rs), on one local Garage started here:
#
#   scripts/bench-shared-index.sh            (BENCH_LS_OBJECTS=10000 objects)
#
# N objects with s3fs metadata (modes 0600..0607; every BENCH_SYMLINK_EVERY-th a symlink,
# default none: `ls -l` reads a symlink's target with a GET each) are written by
# `s3mount migrate`. Host A (its own cache dir) lists them cold: a HEAD each, then it writes
# the directory's index object. Host B (another cache dir) lists them for the first time:
# one LIST and one GET. Host C (a third cache dir, without the option) shows the cold
# listing with HEADs for comparison. Each host is a fresh mount (cold kernel caches).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/common.sh

N=${BENCH_LS_OBJECTS:-10000}
SYMLINK_EVERY=${BENCH_SYMLINK_EVERY:-0}

ensure_apt_packages
cargo build --release --bin s3mount --example rawbench
scripts/local-s3.sh install
BIN=$(pwd)/target/release/s3mount
RAW=$(pwd)/target/release/examples/rawbench

WORK=$(mktemp -d "${TMPDIR:-/tmp}/s3mount-bench-shared.XXXXXX")
MNT=$WORK/mnt
DPID=""
unmount_daemon() { stop_daemon 60 || true; }
cleanup() {
    set +e
    [ -z "${BENCH_KEEP_LOGS:-}" ] || cp "$WORK"/mount-*.log "$BENCH_KEEP_LOGS"/
    unmount_daemon
    mountpoint -q "$MNT" 2>/dev/null && fusermount3 -uz "$MNT"
    scripts/local-s3.sh stop "$WORK/garage"
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

base=$(free_port_base 3930)
scripts/local-s3.sh start "$WORK/garage" "$base" >/dev/null
source "$WORK/garage/env"

now() { date +%s.%N; }
calc() { awk "BEGIN { printf \"%.${2:-3}f\", $1 }"; }
field() { sed -n "s|.* $1=\([0-9.]*\).*|\1|p" <<<"$2"; }

# Mounts prefix shared/ in the foreground (in the background of this script); $1 names the
# host (its cache dir and log), the rest are extra options.
LOG_OPT=(--log-level warn)
[ -z "${RUST_LOG:-}" ] || LOG_OPT=() # RUST_LOG=filter: the daemon logs by it
mount_fg() {
    local host=$1
    shift
    mkdir -p "$MNT"
    "$BIN" mount "$S3MOUNT_TEST_BUCKET" "$MNT" --prefix shared/ --endpoint-url "$AWS_ENDPOINT_URL" \
        --force-path-style --region "$AWS_REGION" --cache-dir "$WORK/cache-$host" --foreground \
        "${LOG_OPT[@]}" "$@" >"$WORK/mount-$host.log" 2>&1 &
    DPID=$!
    wait_mounted "s3mount (host $host)" "$WORK/mount-$host.log"
}
# Seconds of one `ls -l` of the mount; checks it printed every object.
time_ls() {
    local t0 t1 lines
    t0=$(now)
    lines=$(ls -l "$MNT" | wc -l)
    t1=$(now)
    [ "$lines" = $((N + 1)) ] || { echo "bench: ls -l printed $lines lines, expected $((N + 1))" >&2; exit 1; }
    calc "$t1 - $t0"
}

echo "== $N objects with s3fs metadata (s3mount migrate)"
mkdir -p "$WORK/src"
python3 - "$WORK/src" "$N" "$SYMLINK_EVERY" <<'PY'
import os, sys
root, n, every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(n):
    path = os.path.join(root, f"doc{i:06d}")
    if every and i % every == 0:
        os.symlink(f"target-{i}", path)
    else:
        with open(path, "wb") as f:
            f.write(b"x" * (i % 100))
        os.chmod(path, 0o600 + i % 8)
PY
"$BIN" migrate "$WORK/src" "s3://$S3MOUNT_TEST_BUCKET/shared/" --endpoint-url "$AWS_ENDPOINT_URL" \
    --force-path-style --region "$AWS_REGION" --concurrency 64 --log-level warn >/dev/null
sleep 6 # objects are indexed once their Last-Modified is 5 s old

raw_list=()
for _ in 1 2 3; do
    out=$("$RAW" list shared/)
    raw_list+=("$(field secs "$out")")
done
list_s=$(printf '%s\n' "${raw_list[@]}" | sort -n | sed -n 2p) # the median of three

mount_fg a --shared-metadata-index
host_a=$(time_ls)
index_key="shared/.s3mount-index/v1/$(printf '' | md5sum | cut -d' ' -f1)"
for ((i = 0; i < 100; i++)); do
    "$RAW" head "$index_key" >/dev/null 2>&1 && break
    sleep 0.1
done
index_line=$("$RAW" head "$index_key")
unmount_daemon

mount_fg b --shared-metadata-index
host_b=$(time_ls)
rss_b=$(awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$DPID/status")
unmount_daemon
mount_fg b --shared-metadata-index
host_b_again=$(time_ls)
unmount_daemon

mount_fg c
host_c=$(time_ls)
unmount_daemon

echo "raw LIST of $N (median of ${raw_list[*]}): $list_s s"
echo "index object: $index_line"
printf '%-62s %8s %8s\n' "ls -l of $N objects, fresh mount" "s" "x LIST"
printf '%-62s %8s %8s\n' "host A, first host (a HEAD each, then writes the index)" "$host_a" "$(calc "$host_a / $list_s" 2)"
printf '%-62s %8s %8s\n' "host B, second host, --shared-metadata-index (LIST + 1 GET)" "$host_b" "$(calc "$host_b / $list_s" 2)"
printf '%-62s %8s %8s\n' "host B remounted (its local index: LIST only)" "$host_b_again" "$(calc "$host_b_again / $list_s" 2)"
printf '%-62s %8s %8s\n' "host C, second host without the option (a HEAD each)" "$host_c" "$(calc "$host_c / $list_s" 2)"
echo "host B peak RSS: $rss_b MiB"
