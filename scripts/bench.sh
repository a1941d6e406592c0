#!/usr/bin/env bash
# Speed and memory of s3mount against a plain S3 client (examples/rawbench.rs, aws-sdk-s3 with
# 8 requests in flight), in one run on one local Garage started here with the TCP_NODELAY shim.
# Prints a table: each figure, its ratio to the plain client, and the target of issue 3.
#
#   scripts/bench.sh
#
# Environment: BENCH_BIG_MB (1024), BENCH_FILES (1000), BENCH_LS_OBJECTS (10000),
# BENCH_JOBS (8 parallel writers/readers for small files), BENCH_VERIFY (1: cmp the 1 GiB file
# read back), BENCH_RAW_ONLY (1: plain client only), BENCH_MOUNT_OPTS (extra mount options),
# BENCH_BIN (the s3mount binary to measure; default this checkout's release build, e.g. an
# older build to compare against in back-to-back runs).
# Every write step writes fresh random data (Garage deduplicates identical blocks).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/common.sh

BIG_MB=${BENCH_BIG_MB:-1024}
FILES=${BENCH_FILES:-1000}
LS_N=${BENCH_LS_OBJECTS:-10000}
JOBS=${BENCH_JOBS:-8}
VERIFY=${BENCH_VERIFY:-1}
RAW_ONLY=${BENCH_RAW_ONLY:-0}
read -r -a MOUNT_OPTS <<<"${BENCH_MOUNT_OPTS:-}"
SMALL=16384

ensure_apt_packages
if [ "$RAW_ONLY" = 1 ]; then
    cargo build --release --example rawbench
else
    cargo build --release --bin s3mount --example rawbench
fi
scripts/local-s3.sh install
BIN=${BENCH_BIN:-$(pwd)/target/release/s3mount}
RAW=$(pwd)/target/release/examples/rawbench

WORK=$(mktemp -d "${TMPDIR:-/tmp}/s3mount-bench.XXXXXX")
DATA=$(mktemp -d /dev/shm/s3mount-bench.XXXXXX) # source data for the writes, in RAM
MNT=$WORK/mnt
DPID=""

# Unmounts the current mount and waits (bounded) for its daemon to finish uploads and exit.
unmount_daemon() {
    [ -n "$DPID" ] || return 0
    mountpoint -q "$MNT" && fusermount3 -u "$MNT"
    local i
    for ((i = 0; i < 3000; i++)); do
        kill -0 "$DPID" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$DPID" 2>/dev/null; then
        echo "daemon $DPID still running 300 s after unmount; killing it" >&2
        kill -KILL "$DPID" 2>/dev/null || true
    fi
    wait "$DPID" 2>/dev/null || echo "daemon $DPID exited with status $?" >&2
    DPID=""
}
cleanup() {
    set +e
    if [ -n "$DPID" ]; then
        unmount_daemon
    fi
    mountpoint -q "$MNT" 2>/dev/null && fusermount3 -uz "$MNT"
    scripts/local-s3.sh stop "$WORK/garage"
    rm -rf "$WORK" "$DATA"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

base=$(free_port_base 3920)
scripts/local-s3.sh start "$WORK/garage" "$base" >/dev/null
source "$WORK/garage/env"

now() { date +%s.%N; }
calc() { awk "BEGIN { printf \"%.${2:-1}f\", $1 }"; }
field() { sed -n "s|.* $1=\([0-9.]*\).*|\1|p" <<<"$2"; } # value of key=value in a rawbench line
raw() { local out; out=$("$RAW" "$@"); echo "  raw: $out" >&2; echo "$out"; }

# Mounts bucket prefix bench/ on $MNT in the foreground, in the background of this script, so
# that its PID is known; returns once the mount is live. $1 names its cache dir and log.
mount_fg() {
    mkdir -p "$MNT"
    "$BIN" mount "$S3MOUNT_TEST_BUCKET" "$MNT" --prefix bench/ --endpoint-url "$AWS_ENDPOINT_URL" \
        --force-path-style --region "$AWS_REGION" --cache-dir "$WORK/cache-$1" --foreground \
        --log-level warn ${MOUNT_OPTS[@]+"${MOUNT_OPTS[@]}"} >"$WORK/mount-$1.log" 2>&1 &
    DPID=$!
    local i
    for ((i = 0; i < 300; i++)); do
        mountpoint -q "$MNT" && return 0
        if ! kill -0 "$DPID" 2>/dev/null; then
            cat "$WORK/mount-$1.log" >&2
            DPID=""
            echo "bench: the mount exited before it was live" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "bench: mount not live after 30 s" >&2
    return 1
}
peak_rss_mib() { awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$DPID/status"; }

declare -A M R # figures: M = mount, R = raw client
BIG=$((BIG_MB << 20))

if [ "$RAW_ONLY" != 1 ]; then
    echo "== preparing fresh random data in $DATA"
    head -c "$BIG" /dev/urandom >"$DATA/big"
    for d in small8 small1; do
        mkdir -p "$DATA/$d"
        head -c $((FILES * SMALL)) /dev/urandom | split -b "$SMALL" -d -a 6 - "$DATA/$d/f"
    done
fi
per_job=$(((FILES + JOBS - 1) / JOBS))

echo "== sequential write of $BIG_MB MiB"
out=$(raw put-big bench-raw/big "$BIG")
R[write]=$(field MB/s "$out")
if [ "$RAW_ONLY" != 1 ]; then
    mount_fg write
    t0=$(now)
    dd if="$DATA/big" of="$MNT/big" bs=1M status=none # close() returns once S3 has the object
    t1=$(now)
    M[write]=$(calc "$BIG / ($t1 - $t0) / 1e6")
    M[rss_write]=$(peak_rss_mib)
    unmount_daemon
    echo "  mount: $(calc "$t1 - $t0" 3) s, ${M[write]} MB/s, peak RSS ${M[rss_write]} MiB"
    size=$(field bytes "$(raw head bench/big)")
    [ "$size" = "$BIG" ] || { echo "bench: bench/big has $size bytes in S3, expected $BIG" >&2; exit 1; }
fi

echo "== sequential read of $BIG_MB MiB after a fresh mount"
if [ "$RAW_ONLY" != 1 ]; then
    mount_fg read
    t0=$(now)
    dd if="$MNT/big" of=/dev/null bs=1M status=none
    t1=$(now)
    M[read]=$(calc "$BIG / ($t1 - $t0) / 1e6")
    M[rss_read]=$(peak_rss_mib)
    echo "  mount: $(calc "$t1 - $t0" 3) s, ${M[read]} MB/s, peak RSS ${M[rss_read]} MiB"
    if [ "$VERIFY" = 1 ]; then
        cmp "$DATA/big" "$MNT/big" && echo "  mount: content verified (cmp)"
    fi
    unmount_daemon
    out=$(raw get-big bench/big)
else
    out=$(raw get-big bench-raw/big)
fi
R[read]=$(field MB/s "$out")
rm -f "$DATA/big"

echo "== create $FILES files of 16 KiB"
out=$(raw put-many bench-raw/small/ "$FILES" "$SMALL")
R[create]=$(field files/s "$out")
if [ "$RAW_ONLY" != 1 ]; then
    mount_fg create
    mkdir "$MNT/small8" "$MNT/small1"
    t0=$(now)
    (cd "$DATA/small8" && printf '%s\0' f* | xargs -0 -P "$JOBS" -n "$per_job" cp -t "$MNT/small8/")
    t1=$(now)
    M[create]=$(calc "$FILES / ($t1 - $t0)")
    t0=$(now)
    cp "$DATA/small1/"f* "$MNT/small1/"
    t1=$(now)
    M[create1]=$(calc "$FILES / ($t1 - $t0)")
    M[rss_create]=$(peak_rss_mib)
    unmount_daemon
    echo "  mount: ${M[create]} files/s with $JOBS writers, ${M[create1]} files/s with one cp"
    for d in small8 small1; do
        n=$(field entries "$(raw list "bench/$d/")")
        [ "$n" = "$FILES" ] || { echo "bench: bench/$d/ has $n objects in S3, expected $FILES" >&2; exit 1; }
    done
fi

echo "== read $FILES files of 16 KiB after a fresh mount"
out=$(raw get-many bench-raw/small/ "$FILES")
R[readsmall]=$(field files/s "$out")
if [ "$RAW_ONLY" != 1 ]; then
    mount_fg readsmall
    t0=$(now)
    bytes=$( (cd "$DATA/small8" && printf '%s\0' f*) | (cd "$MNT/small8" && xargs -0 -P "$JOBS" -n "$per_job" cat) | wc -c)
    t1=$(now)
    M[readsmall]=$(calc "$FILES / ($t1 - $t0)")
    t0=$(now)
    bytes1=$(cat "$MNT/small1/"f* | wc -c)
    t1=$(now)
    M[readsmall1]=$(calc "$FILES / ($t1 - $t0)")
    M[rss_readsmall]=$(peak_rss_mib)
    unmount_daemon
    echo "  mount: ${M[readsmall]} files/s with $JOBS readers, ${M[readsmall1]} files/s with one cat"
    for b in "$bytes" "$bytes1"; do
        [ "$b" = $((FILES * SMALL)) ] || { echo "bench: read $b bytes, expected $((FILES * SMALL))" >&2; exit 1; }
    done
fi

echo "== ls -l of $LS_N objects created through the S3 API"
raw put-many bench/ls/ "$LS_N" 64 >/dev/null
out=$(raw list bench/ls/)
R[ls]=$(field secs "$out")
if [ "$RAW_ONLY" != 1 ]; then
    # The metadata index keeps objects whose Last-Modified is some seconds old (settled).
    sleep 6
    mount_fg ls
    t0=$(now)
    lines=$(ls -l "$MNT/ls" | wc -l)
    t1=$(now)
    M[ls]=$(calc "$t1 - $t0" 3)
    t0=$(now)
    ls -l "$MNT/ls" >/dev/null
    t1=$(now)
    M[ls_warm]=$(calc "$t1 - $t0" 3)
    M[rss_ls]=$(peak_rss_mib)
    unmount_daemon
    # A remount with the same cache dir: the persistent metadata index answers for
    # every unchanged object, so only the LIST goes to the server.
    mount_fg ls
    t0=$(now)
    lines_restart=$(ls -l "$MNT/ls" | wc -l)
    t1=$(now)
    M[ls_restart]=$(calc "$t1 - $t0" 3)
    unmount_daemon
    echo "  mount: cold ${M[ls]} s, warm ${M[ls_warm]} s, after a remount ${M[ls_restart]} s"
    [ "$lines_restart" = $((LS_N + 1)) ] || { echo "bench: ls -l after remount printed $lines_restart lines" >&2; exit 1; }
    [ "$lines" = $((LS_N + 1)) ] || { echo "bench: ls -l printed $lines lines, expected $((LS_N + 1))" >&2; exit 1; }
fi

# One table row: label, mount figure, raw figure, ratio kind (up: mount/raw for rates,
# down: mount/raw for times), target (">= N", "<= N", "<= Nx" or "-").
row() {
    local label=$1 m=${2:--} r=${3:--} target=$4 ratio="-" met="-"
    if [ "$m" != - ] && [ "$r" != - ]; then ratio=$(calc "$m / $r" 2); fi
    case $target in
    ">= "*) [ "$m" != - ] && met=$(awk "BEGIN { print ($m >= ${target#>= }) ? \"yes\" : \"NO\" }") ;;
    "<= "*x) [ "$ratio" != - ] && met=$(awk "BEGIN { t = \"${target#<= }\"; sub(/x/, \"\", t); print ($ratio <= t + 0) ? \"yes\" : \"NO\" }") ;;
    "<= "*) [ "$m" != - ] && met=$(awk "BEGIN { print ($m <= ${target#<= }) ? \"yes\" : \"NO\" }") ;;
    esac
    printf '%-50s %10s %10s %7s  %-8s %s\n' "$label" "$m" "$r" "$ratio" "$target" "$met"
}

echo
MEASURED=${BENCH_BIN:+$BENCH_BIN}
echo "s3mount ${MEASURED:-$(git rev-parse --short HEAD 2>/dev/null || echo '?')} vs plain aws-sdk-s3 client, Garage $("${S3MOUNT_TOOLS:-$HOME/.cache/s3mount}/garage/bin/garage" --version 2>/dev/null | sed -n 's/^garage [a-z:]*v\{0,1\}\([0-9.]*\).*/\1/p') on 127.0.0.1 (TCP_NODELAY shim), $(date -u +%F)"
printf '%-50s %10s %10s %7s  %-8s %s\n' workload s3mount raw ratio target met
row "sequential write $BIG_MB MiB until in S3, MB/s" "${M[write]-}" "${R[write]}" ">= 250"
row "sequential read $BIG_MB MiB, fresh mount, MB/s" "${M[read]-}" "${R[read]}" ">= 650"
row "create $FILES x 16 KiB until in S3, files/s ($JOBS w)" "${M[create]-}" "${R[create]}" ">= 300"
row "  same with one writer (cp), files/s" "${M[create1]-}" "${R[create]}" "-"
row "read $FILES x 16 KiB, fresh mount, files/s ($JOBS r)" "${M[readsmall]-}" "${R[readsmall]}" "-"
row "  same with one reader (cat), files/s" "${M[readsmall1]-}" "${R[readsmall]}" "-"
row "ls -l of $LS_N objects, cold, s (raw: LIST)" "${M[ls]-}" "${R[ls]}" "<= 2x"
row "  warm, s" "${M[ls_warm]-}" "${R[ls]}" "-"
row "  after a remount (metadata index), s" "${M[ls_restart]-}" "${R[ls]}" "<= 1.3x"
row "peak RSS during the write, MiB" "${M[rss_write]-}" - "<= 64"
row "peak RSS during the read, MiB" "${M[rss_read]-}" - "<= 64"
[ "$RAW_ONLY" = 1 ] || row "peak RSS: create / read small / ls, MiB" "${M[rss_create]}/${M[rss_readsmall]}/${M[rss_ls]}" - "-"
echo "(raw = examples/rawbench.rs, 8 requests in flight; ratio = s3mount / raw)"
