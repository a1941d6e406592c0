#!/usr/bin/env bash
# Speed of `s3mount migrate` next to `cp -a` of a tree of the same shape through a mount, on one
# local Garage started here (with the TCP_NODELAY shim), in one run. Prints files/s and MB/s of
# both, their ratio, and the time of a rerun that finds everything already there.
#
#   scripts/bench-migrate.sh
#
# Environment: BENCH_MIGRATE_SMALL (1992 files of BENCH_MIGRATE_SMALL_KIB KiB, default 256),
# BENCH_MIGRATE_BIG (8 files of BENCH_MIGRATE_BIG_MIB MiB, default 72): by default 2,000 files
# and 1.05 GiB in 40 folders. BENCH_MIGRATE_OPTS: extra migrate options (e.g. --concurrency 32).
# BENCH_BIN: the s3mount binary to measure (default: this checkout's release build, built here).
# Each side gets its own random data (Garage deduplicates identical blocks); the trees live in
# /dev/shm so that the local disk is not what is measured.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/common.sh

SMALL_N=${BENCH_MIGRATE_SMALL:-1992}
SMALL_KIB=${BENCH_MIGRATE_SMALL_KIB:-256}
BIG_N=${BENCH_MIGRATE_BIG:-8}
BIG_MIB=${BENCH_MIGRATE_BIG_MIB:-72}
read -r -a OPTS <<<"${BENCH_MIGRATE_OPTS:-}"
DIRS=40

ensure_apt_packages
[ -n "${BENCH_BIN:-}" ] || cargo build --release --bin s3mount
scripts/local-s3.sh install
BIN=${BENCH_BIN:-$(pwd)/target/release/s3mount}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/s3mount-bench-migrate.XXXXXX")
DATA=$(mktemp -d /dev/shm/s3mount-bench-migrate.XXXXXX)
MNT=$WORK/mnt
DPID=""
cleanup() {
    set +e
    if [ -n "$DPID" ]; then
        mountpoint -q "$MNT" && fusermount3 -u "$MNT"
        wait "$DPID" 2>/dev/null
    fi
    mountpoint -q "$MNT" 2>/dev/null && fusermount3 -uz "$MNT"
    scripts/local-s3.sh stop "$WORK/garage"
    rm -rf "$WORK" "$DATA"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

base=$(free_port_base 3930)
scripts/local-s3.sh start "$WORK/garage" "$base" >/dev/null
source "$WORK/garage/env"

now() { date +%s.%N; }
calc() { awk "BEGIN { printf \"%.${2:-1}f\", $1 }"; }

# A tree of SMALL_N + BIG_N files of fresh random data in DIRS folders.
make_tree() {
    local root=$1 d i
    for ((d = 0; d < DIRS; d++)); do mkdir -p "$root/dept-$d/cases"; done
    head -c $((SMALL_N * SMALL_KIB * 1024)) /dev/urandom |
        split -b $((SMALL_KIB * 1024)) -d -a 5 - "$root/small-"
    i=0
    for f in "$root"/small-*; do
        mv "$f" "$root/dept-$((i % DIRS))/cases/doc-$i.pdf"
        i=$((i + 1))
    done
    for ((i = 0; i < BIG_N; i++)); do
        head -c $((BIG_MIB << 20)) /dev/urandom >"$root/dept-$i/scan-$i.tiff"
    done
}

FILES=$((SMALL_N + BIG_N))
BYTES=$((SMALL_N * SMALL_KIB * 1024 + BIG_N * (BIG_MIB << 20)))
echo "== two trees of $FILES files, $(calc "$BYTES / 1073741824" 2) GiB each, in $DATA"
make_tree "$DATA/a"
make_tree "$DATA/b"

echo "== s3mount migrate"
t0=$(now)
"$BIN" migrate "$DATA/a" "s3://$S3MOUNT_TEST_BUCKET/migrated/" --endpoint-url "$AWS_ENDPOINT_URL" \
    --force-path-style --region "$AWS_REGION" ${OPTS[@]+"${OPTS[@]}"} | tail -1
t1=$(now)
MIG_S=$(calc "$t1 - $t0" 2)

echo "== s3mount migrate again (nothing changed)"
t0=$(now)
"$BIN" migrate "$DATA/a" "s3://$S3MOUNT_TEST_BUCKET/migrated/" --endpoint-url "$AWS_ENDPOINT_URL" \
    --force-path-style --region "$AWS_REGION" ${OPTS[@]+"${OPTS[@]}"} | tail -1
t1=$(now)
RERUN_S=$(calc "$t1 - $t0" 2)

echo "== cp -a through a mount (close() returns once S3 has each file)"
mkdir -p "$MNT"
"$BIN" mount "$S3MOUNT_TEST_BUCKET" "$MNT" --prefix copied/ --endpoint-url "$AWS_ENDPOINT_URL" \
    --force-path-style --region "$AWS_REGION" --cache-dir "$WORK/cache" --foreground \
    --log-level warn >"$WORK/mount.log" 2>&1 &
DPID=$!
for ((i = 0; i < 300; i++)); do mountpoint -q "$MNT" && break; sleep 0.1; done
mountpoint -q "$MNT" || { cat "$WORK/mount.log" >&2; echo "bench: mount not live" >&2; exit 1; }
t0=$(now)
cp -a "$DATA/b/." "$MNT/"
t1=$(now)
CP_S=$(calc "$t1 - $t0" 2)
fusermount3 -u "$MNT"
wait "$DPID"
DPID=""

mb() { calc "$BYTES / $1 / 1e6"; }
fps() { calc "$FILES / $1" 0; }
echo
echo "migrate vs cp -a through the mount: $FILES files, $(calc "$BYTES / 1e6" 0) MB, Garage on 127.0.0.1, $(date -u +%F)"
printf '%-34s %9s %10s %9s\n' "" "seconds" "files/s" "MB/s"
printf '%-34s %9s %10s %9s\n' "s3mount migrate" "$MIG_S" "$(fps "$MIG_S")" "$(mb "$MIG_S")"
printf '%-34s %9s %10s %9s\n' "cp -a through the mount" "$CP_S" "$(fps "$CP_S")" "$(mb "$CP_S")"
printf '%-34s %9s\n' "migrate rerun (nothing to copy)" "$RERUN_S"
echo "migrate is $(calc "$CP_S / $MIG_S") x as fast as cp -a through the mount"
