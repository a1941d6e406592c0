#!/usr/bin/env bash
# The "read BIG after a fresh mount" row of scripts/bench.sh alone, repeated, for finding where a
# sequential cold read loses: one local Garage, one object of fresh random data, then ROUNDS times
# the raw client (8 parallel 8 MiB ranged GETs) and `dd bs=1M` through a fresh mount of each
# binary given, one after the other in the same minute. Figures swing on a shared machine: compare
# within a round.
#
#   scripts/bench-read.sh                                   # this checkout's release build
#   BENCH_BINS="/tmp/old/s3mount target/release/s3mount" BENCH_ROUNDS=5 scripts/bench-read.sh
#
# Environment: BENCH_BIG_MB (512), BENCH_ROUNDS (3), BENCH_BINS (space-separated s3mount
# binaries; default this checkout's release build), BENCH_MOUNT_OPTS (extra s3mount options),
# BENCH_READ_CMD (cat or dd; default dd bs=1M), BENCH_METRICS (1: print the mount's request and
# cache counters after each read), BENCH_DELAY_MS (0: the round-trip delay examples/delayproxy.rs
# puts between every client and Garage, as in scripts/bench.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/common.sh

BIG_MB=${BENCH_BIG_MB:-512}
ROUNDS=${BENCH_ROUNDS:-3}
READ_CMD=${BENCH_READ_CMD:-dd}
METRICS=${BENCH_METRICS:-0}
read -r -a MOUNT_OPTS <<<"${BENCH_MOUNT_OPTS:-}"
DELAY_MS=${BENCH_DELAY_MS:-0}
for v in BIG_MB ROUNDS DELAY_MS; do
    [[ ${!v} =~ ^[0-9]+$ ]] || { echo "bench-read: $v must be a number, got '${!v}'" >&2; exit 2; }
done
case $READ_CMD in cat | dd) ;; *) echo "bench-read: BENCH_READ_CMD must be cat or dd" >&2; exit 2 ;; esac

ensure_apt_packages
cargo build --release --bin s3mount --example rawbench --example delayproxy
scripts/local-s3.sh install
read -r -a BINS <<<"${BENCH_BINS:-$(pwd)/target/release/s3mount}"
RAW=$(pwd)/target/release/examples/rawbench

WORK=$(mktemp -d "${TMPDIR:-/tmp}/s3mount-bench-read.XXXXXX")
MNT=$WORK/mnt
mkdir -p "$MNT"
DPID=""
PROXY_PID=""
cleanup() {
    set +e
    if mountpoint -q "$MNT" 2>/dev/null; then fusermount3 -u "$MNT" || fusermount3 -uz "$MNT"; fi
    [ -z "$DPID" ] || wait "$DPID" 2>/dev/null
    stop_delay_proxy
    scripts/local-s3.sh stop "$WORK/garage"
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

base=$(free_port_base 3960)
scripts/local-s3.sh start "$WORK/garage" "$base" >/dev/null
source "$WORK/garage/env"
now() { date +%s.%N; }
calc() { awk "BEGIN { printf \"%.${2:-1}f\", $1 }"; }
field() { sed -n "s|.* $1=\([0-9.]*\).*|\1|p" <<<" $2"; }

BIG=$((BIG_MB << 20))
"$RAW" put-big bench/big "$BIG" >/dev/null
if [ "$DELAY_MS" != 0 ]; then
    start_delay_proxy "$base" "$DELAY_MS" "$WORK"
    echo "every client goes through a ${DELAY_MS} ms round-trip delay proxy"
fi
metrics_port=$((base + 7))

# Mounts with binary $1, reads bench/big through it, prints MB/s; unmounts.
mount_read() {
    local bin=$1 opts=()
    [ "$METRICS" != 1 ] || opts=(--metrics-addr "127.0.0.1:$metrics_port")
    "$bin" mount "$S3MOUNT_TEST_BUCKET" "$MNT" --prefix bench/ --endpoint-url "$AWS_ENDPOINT_URL" \
        --force-path-style --region "$AWS_REGION" --cache-dir "$WORK/cache" --foreground \
        --log-level warn ${MOUNT_OPTS[@]+"${MOUNT_OPTS[@]}"} ${opts[@]+"${opts[@]}"} \
        >"$WORK/mount.log" 2>&1 &
    DPID=$!
    local i
    for ((i = 0; i < 300; i++)); do
        mountpoint -q "$MNT" && break
        kill -0 "$DPID" 2>/dev/null || { cat "$WORK/mount.log" >&2; exit 1; }
        sleep 0.1
    done
    mountpoint -q "$MNT" || { echo "bench-read: mount not live after 30 s" >&2; exit 1; }
    stat "$MNT/big" >/dev/null
    local t0 t1
    t0=$(now)
    if [ "$READ_CMD" = cat ]; then cat "$MNT/big" >/dev/null; else dd if="$MNT/big" of=/dev/null bs=1M status=none; fi
    t1=$(now)
    if [ "$METRICS" = 1 ]; then
        curl -s "127.0.0.1:$metrics_port/metrics" |
            grep -E '^s3mount_(cache_(hits|misses)_total|requests_total\{op="GetObject"\}|bytes_downloaded_total)' |
            tr '\n' ' ' >&2
        echo >&2
    fi
    fusermount3 -u "$MNT"
    wait "$DPID" || echo "bench-read: $bin exited with status $?" >&2
    DPID=""
    rm -rf "$WORK/cache"
    calc "$BIG / ($t1 - $t0) / 1e6"
}

echo "read $BIG_MB MiB after a fresh mount ($READ_CMD), MB/s; ratio to the raw 8-GET figure of the same round"
for ((r = 1; r <= ROUNDS; r++)); do
    raw=$(field MB/s "$("$RAW" get-big bench/big)")
    line="round $r: raw $raw"
    for bin in "${BINS[@]}"; do
        mbs=$(mount_read "$bin")
        line+="  $(basename "$(dirname "$bin")")/$(basename "$bin") $mbs ($(calc "$mbs / $raw" 2)x)"
    done
    echo "$line"
done
