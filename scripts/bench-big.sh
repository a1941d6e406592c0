#!/usr/bin/env bash
# The two big-file rows of scripts/bench.sh alone, repeated, with the floor any FUSE mount
# stands on: one local Garage, then ROUNDS times, for each row (write BIG until in S3, read it
# after a fresh mount), the raw client (one PUT; 8 parallel 8 MiB ranged GETs), `dd bs=1M`
# through a fresh mount of each binary given, and `dd` through examples/nullfuse.rs (a FUSE
# file system that moves the bytes through the kernel and does nothing else), one after the
# other in the same minute. Figures swing on a shared machine: compare within a round.
#
#   scripts/bench-big.sh                                   # this checkout's release build
#   BENCH_ROWS=read BENCH_BINS="/tmp/old/s3mount target/release/s3mount" BENCH_ROUNDS=5 scripts/bench-big.sh
#
# Each figure is printed with its CPU cost: the CPU-seconds all cores of the machine spent busy
# while it ran, Garage's included. The FUSE floor is what a mount pays on top of the S3 transfer
# (the kernel's copies through the FUSE device and the page cache, the daemon's reads and
# replies), so no mount can take less than (raw CPU + floor CPU) / cores for the row: "bound" is
# the ratio to the raw client that this leaves at most (1.00 when the raw client left enough
# cores idle to pay the floor).
#
# Environment: BENCH_BIG_MB (512), BENCH_ROUNDS (3), BENCH_ROWS ("write read"), BENCH_BINS
# (space-separated s3mount binaries; default this checkout's release build), BENCH_MOUNT_OPTS
# (extra s3mount options), BENCH_READ_CMD (cat or dd; default dd bs=1M), BENCH_METRICS (1: print
# the mount's request and cache counters after each read), BENCH_DELAY_MS (0: the round-trip
# delay examples/delayproxy.rs puts between every S3 client and Garage, as in scripts/bench.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/common.sh

BIG_MB=${BENCH_BIG_MB:-512}
ROUNDS=${BENCH_ROUNDS:-3}
read -r -a ROWS <<<"${BENCH_ROWS:-write read}"
READ_CMD=${BENCH_READ_CMD:-dd}
METRICS=${BENCH_METRICS:-0}
read -r -a MOUNT_OPTS <<<"${BENCH_MOUNT_OPTS:-}"
DELAY_MS=${BENCH_DELAY_MS:-0}
for v in BIG_MB ROUNDS DELAY_MS; do
    [[ ${!v} =~ ^[0-9]+$ ]] || { echo "bench-big: $v must be a number, got '${!v}'" >&2; exit 2; }
done
case $READ_CMD in cat | dd) ;; *) echo "bench-big: BENCH_READ_CMD must be cat or dd" >&2; exit 2 ;; esac
[ ${#ROWS[@]} -gt 0 ] || { echo "bench-big: BENCH_ROWS is empty" >&2; exit 2; }
for row in "${ROWS[@]}"; do
    case $row in write | read) ;; *) echo "bench-big: BENCH_ROWS takes write and read, got '$row'" >&2; exit 2 ;; esac
done

ensure_apt_packages
cargo build --release --bin s3mount --example rawbench --example delayproxy --example nullfuse
scripts/local-s3.sh install
read -r -a BINS <<<"${BENCH_BINS:-$(pwd)/target/release/s3mount}"
RAW=$(pwd)/target/release/examples/rawbench
NULLFUSE=$(pwd)/target/release/examples/nullfuse

WORK=$(mktemp -d "${TMPDIR:-/tmp}/s3mount-bench-big.XXXXXX")
MNT=$WORK/mnt
FLOOR=$WORK/floor
mkdir -p "$MNT" "$FLOOR"
DPID=""
FLOOR_PID=""
PROXY_PID=""
cleanup() {
    set +e
    for m in "$MNT" "$FLOOR"; do
        if mountpoint -q "$m" 2>/dev/null; then fusermount3 -u "$m" || fusermount3 -uz "$m"; fi
    done
    [ -z "$DPID" ] || wait "$DPID" 2>/dev/null
    [ -z "$FLOOR_PID" ] || wait "$FLOOR_PID" 2>/dev/null
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
# CPU-seconds all cores have spent busy so far (user, nice, system, irq, softirq; USER_HZ 100).
busy() { awk '/^cpu / { printf "%.2f", ($2 + $3 + $4 + $7 + $8) / 100 }' /proc/stat; }
CORES=$(nproc)

BIG=$((BIG_MB << 20))
# The data the next write row sends: fresh random bytes (Garage deduplicates), on disk before
# the clock starts so that its write-back does not compete with the row.
fresh_data() {
    head -c "$BIG" /dev/urandom >"$WORK/data"
    sync "$WORK/data"
}
"$RAW" put-big bench/big "$BIG" >/dev/null
"$NULLFUSE" "$FLOOR" "$BIG" >"$WORK/floor.log" 2>&1 &
FLOOR_PID=$!
for ((i = 0; i < 100; i++)); do
    mountpoint -q "$FLOOR" && break
    kill -0 "$FLOOR_PID" 2>/dev/null || { cat "$WORK/floor.log" >&2; exit 1; }
    sleep 0.1
done
if [ "$DELAY_MS" != 0 ]; then
    start_delay_proxy "$base" "$DELAY_MS" "$WORK"
    echo "every S3 client goes through a ${DELAY_MS} ms round-trip delay proxy"
fi
metrics_port=$((base + 7))

# Mounts binary $1 on $MNT; DPID is its process.
mount_bin() {
    local opts=()
    [ "$METRICS" != 1 ] || opts=(--metrics-addr "127.0.0.1:$metrics_port")
    "$1" mount "$S3MOUNT_TEST_BUCKET" "$MNT" --prefix bench/ --endpoint-url "$AWS_ENDPOINT_URL" \
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
    mountpoint -q "$MNT" || { echo "bench-big: mount not live after 30 s" >&2; exit 1; }
}

unmount_bin() {
    fusermount3 -u "$MNT"
    wait "$DPID" || echo "bench-big: $1 exited with status $?" >&2
    DPID=""
    rm -rf "$WORK/cache"
}

# Runs row $1 (write or read) through the file $2 with dd (or cat); prints "MB/s cpu".
# Each write gets fresh data.
timed_dd() {
    if [ "$1" = write ]; then fresh_data; fi
    local t0 t1 c0 c1
    c0=$(busy)
    t0=$(now)
    if [ "$1" = write ]; then
        dd if="$WORK/data" of="$2" bs=1M status=none # close returns once S3 has it
    elif [ "$READ_CMD" = cat ]; then
        cat "$2" >/dev/null
    else
        dd if="$2" of=/dev/null bs=1M status=none
    fi
    t1=$(now)
    c1=$(busy)
    echo "$(calc "$BIG / ($t1 - $t0) / 1e6") $(calc "$c1 - $c0" 2)"
}

# Row $1 through a fresh mount of binary $2 (writes to a key of their own, $3); prints
# "MB/s cpu".
mount_row() {
    mount_bin "$2"
    local out file=$MNT/big
    if [ "$1" = read ]; then stat "$file" >/dev/null; else file=$MNT/$3; fi
    out=$(timed_dd "$1" "$file")
    if [ "$1" = read ] && [ "$METRICS" = 1 ]; then
        curl -s "127.0.0.1:$metrics_port/metrics" |
            grep -E '^s3mount_(cache_(hits|misses)_total|requests_total\{op="GetObject"\}|bytes_downloaded_total)' |
            tr '\n' ' ' >&2
        echo >&2
    fi
    unmount_bin "$2"
    echo "$out"
}

echo "$BIG_MB MiB, MB/s (machine CPU-seconds on $CORES cores); mount ratio to the raw client of the same round;"
echo "bound: the most a FUSE mount can reach, (raw CPU + FUSE floor CPU) / $CORES cores against the raw time"
for ((r = 1; r <= ROUNDS; r++)); do
    for row in "${ROWS[@]}"; do
        if [ "$row" = write ]; then
            out=$("$RAW" --unsigned-payload --part-size "$BIG" put-big "bench/raw-$r" "$BIG")
            floor=$(timed_dd write "$FLOOR/sink")
        else
            out=$("$RAW" get-big bench/big)
            floor=$(timed_dd read "$FLOOR/big")
        fi
        raw=$(field MB/s "$out") raw_cpu=$(field cpu "$out") raw_secs=$(field secs "$out")
        read -r floor_mbs floor_cpu <<<"$floor"
        line="round $r $row: raw $raw ($raw_cpu)"
        for ((b = 0; b < ${#BINS[@]}; b++)); do
            bin=${BINS[$b]}
            read -r mbs cpu <<<"$(mount_row "$row" "$bin" "written-$r-$b")"
            line+="  $(basename "$(dirname "$bin")")/$(basename "$bin") $mbs ($cpu) $(calc "$mbs / $raw" 2)x"
        done
        bound=$(calc "$raw_secs / (($raw_cpu + $floor_cpu) / $CORES > $raw_secs ? ($raw_cpu + $floor_cpu) / $CORES : $raw_secs)" 2)
        line+="  FUSE floor $floor_mbs ($floor_cpu)  bound ${bound}x"
        echo "$line"
    done
done
