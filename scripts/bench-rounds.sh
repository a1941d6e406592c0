#!/usr/bin/env bash
# The rows of scripts/bench.sh that sit near their targets, alone and repeated, each beside
# the floor any FUSE mount stands on: one local Garage, then ROUNDS times, for each row, the raw
# client, a fresh mount of each binary given, and examples/nullfuse.rs (a FUSE file system that
# answers every request at once and keeps nothing), one after the other in the same minute.
# Figures swing on a shared machine: compare within a round.
#
#   write   BIG until in S3: one PUT of fresh random data | dd bs=1M into the mount (the close
#           returns once S3 has it) | dd into nullfuse
#   read    BIG after a fresh mount: 8 parallel 8 MiB ranged GETs | dd bs=1M (or cat) | the same
#           through nullfuse
#   create  FILES x 16 KiB until in S3 by one Python writer: a sequential PUT loop |
#           scripts/benchfiles.py create through the mount | the same through nullfuse
#
#   scripts/bench-rounds.sh                                    # this checkout's release build
#   BENCH_ROWS=read BENCH_BINS="/tmp/old/s3mount target/release/s3mount" BENCH_ROUNDS=5 scripts/bench-rounds.sh
#
# "bound" is the ratio to the raw client no FUSE mount can pass here. write and read move bytes:
# a mount pays the raw transfer's CPU plus the floor's, so it needs at least (raw CPU + floor
# CPU) / cores, where the CPU is what all cores of the machine spent while the step ran,
# Garage's included (1.00 when the raw client left enough cores idle to pay the floor). create
# waits: one writer waits for each file's FUSE requests and then for its PUT, so a mount needs
# at least the raw loop's time plus the floor's.
#
# Environment: BENCH_BIG_MB (512), BENCH_FILES (1000), BENCH_ROUNDS (3), BENCH_ROWS ("write read
# create"), BENCH_BINS (space-separated s3mount binaries; default this checkout's release build),
# BENCH_MOUNT_OPTS (extra s3mount options), BENCH_READ_CMD (cat or dd; default dd bs=1M),
# BENCH_METRICS (1: print the mount's request and cache counters after each read),
# BENCH_DELAY_MS (0: the round-trip delay examples/delayproxy.rs puts between every S3 client
# and Garage, as in scripts/bench.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/common.sh

BIG_MB=${BENCH_BIG_MB:-512}
FILES=${BENCH_FILES:-1000}
ROUNDS=${BENCH_ROUNDS:-3}
read -r -a ROWS <<<"${BENCH_ROWS:-write read create}"
READ_CMD=${BENCH_READ_CMD:-dd}
METRICS=${BENCH_METRICS:-0}
read -r -a MOUNT_OPTS <<<"${BENCH_MOUNT_OPTS:-}"
DELAY_MS=${BENCH_DELAY_MS:-0}
for v in BIG_MB FILES ROUNDS DELAY_MS; do
    [[ ${!v} =~ ^[0-9]+$ ]] || { echo "bench-rounds: $v must be a number, got '${!v}'" >&2; exit 2; }
done
case $READ_CMD in cat | dd) ;; *) echo "bench-rounds: BENCH_READ_CMD must be cat or dd" >&2; exit 2 ;; esac
[ ${#ROWS[@]} -gt 0 ] || { echo "bench-rounds: BENCH_ROWS is empty" >&2; exit 2; }
for row in "${ROWS[@]}"; do
    case $row in write | read | create) ;; *) echo "bench-rounds: BENCH_ROWS takes write, read and create, got '$row'" >&2; exit 2 ;; esac
done

ensure_apt_packages
cargo build --release --bin s3mount --example rawbench --example delayproxy --example nullfuse
scripts/local-s3.sh install
read -r -a BINS <<<"${BENCH_BINS:-$(pwd)/target/release/s3mount}"
RAW=$(pwd)/target/release/examples/rawbench
NULLFUSE=$(pwd)/target/release/examples/nullfuse
FILESPY=$(pwd)/scripts/benchfiles.py

WORK=$(mktemp -d "${TMPDIR:-/tmp}/s3mount-bench-rounds.XXXXXX")
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
SMALL=16384

BIG=$((BIG_MB << 20))
# The data the next write row sends: fresh random bytes (Garage deduplicates), on disk before
# the clock starts so that its write-back does not compete with the row.
fresh_data() {
    head -c "$BIG" /dev/urandom >"$WORK/data"
    sync
}
"$RAW" put-big bench/big "$BIG" >/dev/null
"$NULLFUSE" "$FLOOR" "$BIG" >"$WORK/floor.log" 2>&1 &
FLOOR_PID=$!
MNT=$FLOOR DPID=$FLOOR_PID wait_mounted nullfuse "$WORK/floor.log" || exit 1
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
    wait_mounted "bench-rounds: $1" "$WORK/mount.log" || exit 1
}

unmount_bin() {
    stop_daemon || echo "bench-rounds: $1 exited with status $?" >&2
    rm -rf "$WORK/cache"
}

# Runs row $1 through path $2 (the file to write or read; the folder to create files in);
# prints "RATE CPU SECS" (MB/s, or files/s for create).
timed_row() {
    if [ "$1" = write ]; then fresh_data; fi
    local t0 t1 c0 c1 out
    c0=$(busy)
    t0=$(now)
    case $1 in
    write) dd if="$WORK/data" of="$2" bs=1M status=none ;; # close returns once S3 has it
    read) if [ "$READ_CMD" = cat ]; then cat "$2" >/dev/null; else dd if="$2" of=/dev/null bs=1M status=none; fi ;;
    create) out=$(python3 "$FILESPY" create "$2" "$FILES" "$SMALL") ;; # times itself, data ready
    esac
    t1=$(now)
    c1=$(busy)
    if [ "$1" = create ]; then
        echo "$(field files/s "$out") $(calc "$c1 - $c0" 2) $(field secs "$out")"
    else
        echo "$(calc "$BIG / ($t1 - $t0) / 1e6") $(calc "$c1 - $c0" 2) $(calc "$t1 - $t0" 3)"
    fi
}

# Row $1 through a fresh mount of binary $2 (writes under a name of their own, $3); prints
# "RATE CPU SECS".
mount_row() {
    mount_bin "$2"
    local out path=$MNT/big
    if [ "$1" != read ]; then path=$MNT/$3; else stat "$path" >/dev/null; fi
    out=$(timed_row "$1" "$path")
    if [ "$1" = read ] && [ "$METRICS" = 1 ]; then
        curl -s "127.0.0.1:$metrics_port/metrics" |
            grep -E '^s3mount_(cache_(hits|misses)_total|requests_total\{op="GetObject"\}|bytes_downloaded_total)' |
            tr '\n' ' ' >&2
        echo >&2
    fi
    unmount_bin "$2"
    echo "$out"
}

echo "write, read: $BIG_MB MiB, MB/s; create: $FILES x 16 KiB, files/s; (machine CPU-seconds on $CORES cores)"
echo "each mount with its ratio to the raw client of the same round; bound: the most a FUSE mount can reach"
for ((r = 1; r <= ROUNDS; r++)); do
    for row in "${ROWS[@]}"; do
        case $row in
        write)
            out=$("$RAW" --unsigned-payload --part-size "$BIG" put-big "bench/raw-$r" "$BIG")
            raw=$(field MB/s "$out") raw_cpu=$(field cpu "$out") raw_secs=$(field secs "$out")
            floor=$(timed_row write "$FLOOR/sink")
            ;;
        read)
            out=$("$RAW" get-big bench/big)
            raw=$(field MB/s "$out") raw_cpu=$(field cpu "$out") raw_secs=$(field secs "$out")
            floor=$(timed_row read "$FLOOR/big")
            ;;
        create)
            c0=$(busy)
            out=$("$RAW" --unsigned-payload --jobs 1 put-many "bench/raw-c$r/f" "$FILES" "$SMALL")
            raw=$(field files/s "$out") raw_cpu=$(calc "$(busy) - $c0" 2) raw_secs=$(field secs "$out")
            floor=$(timed_row create "$FLOOR")
            ;;
        esac
        read -r floor_rate floor_cpu floor_secs <<<"$floor"
        line="round $r $row: raw $raw ($raw_cpu)"
        for ((b = 0; b < ${#BINS[@]}; b++)); do
            bin=${BINS[$b]}
            out=$(mount_row "$row" "$bin" "$row-$r-$b")
            read -r rate cpu _ <<<"$out"
            line+="  $(basename "$(dirname "$bin")")/$(basename "$bin") $rate ($cpu) $(calc "$rate / $raw" 2)x"
        done
        if [ "$row" = create ]; then
            bound=$(calc "$raw_secs / ($raw_secs + $floor_secs)" 2)
        else
            need=$(calc "($raw_cpu + $floor_cpu) / $CORES" 3)
            bound=$(calc "$raw_secs / ($need > $raw_secs ? $need : $raw_secs)" 2)
        fi
        line+="  FUSE floor $floor_rate ($floor_cpu)  bound ${bound}x"
        echo "$line"
    done
done
