#!/usr/bin/env bash
# Many writers through one mount, in the default and the --write-back mode: MW_PROCS (32)
# processes create MW_FILES (10,000) files of 1–256 KiB, then MW_LOGS (8) processes append
# MW_APPENDS (200) checksummed lines each to their own log while MW_LOGS others read the logs
# and check every complete line. Every close must succeed; afterwards every object is
# compared with what was written through the S3 API (MD5 of a GET), not through the mount.
# Prints files/s, the daemon's peak RSS (VmHWM), its peak number of open fds and of those on
# stage files (sampled from /proc/PID/fd every 0.1 s); fails above MW_MAX_RSS_MIB (64) or
# MW_MAX_FDS (512: at most 256 stage files are open, whatever the write-back backlog).
#
#   scripts/many-writers.sh
#
# Environment: MW_PROCS, MW_FILES, MW_LOGS, MW_APPENDS, MW_MAX_RSS_MIB, MW_MAX_FDS,
# MW_MODES ("default write-back").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/common.sh

PROCS=${MW_PROCS:-32}
FILES=${MW_FILES:-10000}
LOGS=${MW_LOGS:-8}
APPENDS=${MW_APPENDS:-200}
MAX_RSS=${MW_MAX_RSS_MIB:-64}
MAX_FDS=${MW_MAX_FDS:-512}
MODES=${MW_MODES:-default write-back}

ensure_apt_packages
cargo build --release --bin s3mount --example manywriters
scripts/local-s3.sh install
BIN=$(pwd)/target/release/s3mount
MW=$(pwd)/target/release/examples/manywriters

WORK=$(mktemp -d "${TMPDIR:-/tmp}/s3mount-writers.XXXXXX")
MNT=$WORK/mnt
DPID=""
SAMPLER=""

unmount_daemon() { stop_daemon 600 || true; }
cleanup() {
    set +e
    [ -n "$SAMPLER" ] && kill "$SAMPLER" 2>/dev/null
    unmount_daemon
    mountpoint -q "$MNT" 2>/dev/null && fusermount3 -uz "$MNT"
    scripts/local-s3.sh stop "$WORK/garage"
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

scripts/local-s3.sh start "$WORK/garage" "$(free_port_base 3980)" >/dev/null
source "$WORK/garage/env"

now() { date +%s.%N; }
calc() { awk "BEGIN { printf \"%.${2:-1}f\", $1 }"; }

FAILED=0
declare -A RATE RSS FDS STAGE_FDS
for mode in $MODES; do
    opts=()
    [ "$mode" = write-back ] && opts=(--write-back)
    prefix=mw-$mode/
    echo "== $mode: $PROCS processes create $FILES files of 1-256 KiB"
    mkdir -p "$MNT"
    "$BIN" mount "$S3MOUNT_TEST_BUCKET" "$MNT" --prefix "$prefix" --endpoint-url "$AWS_ENDPOINT_URL" \
        --force-path-style --region "$AWS_REGION" --cache-dir "$WORK/cache-$mode" --foreground \
        --log-level warn "${opts[@]}" >"$WORK/mount-$mode.log" 2>&1 &
    DPID=$!
    wait_mounted "many-writers: s3mount" "$WORK/mount-$mode.log" || exit 1
    # Peak open fds of the daemon, and of those on stage files (not the journal), sampled
    # while the writers run.
    (
        peak=0 peak_stage=0
        while kill -0 "$DPID" 2>/dev/null; do
            # (find fails on an fd closed while it looks: the count still holds.)
            n=$(ls "/proc/$DPID/fd" 2>/dev/null | wc -l) || true
            [ "$n" -gt "$peak" ] && peak=$n && echo "$peak" >"$WORK/fds-$mode"
            n=$(find "/proc/$DPID/fd" -lname "$WORK/cache-$mode/stage/*" \
                -not -lname "*/journal-*" 2>/dev/null | wc -l) || true
            [ "$n" -gt "$peak_stage" ] && peak_stage=$n && echo "$n" >"$WORK/stage-fds-$mode"
            sleep 0.1
        done
    ) &
    SAMPLER=$!
    out=$("$MW" write "$MNT" --procs "$PROCS" --files "$FILES") || { echo "$out"; FAILED=1; }
    echo "  $out"
    RATE[$mode]=$(sed -n 's/.*files\/s=\([0-9.]*\).*/\1/p' <<<"$out")
    echo "== $mode: $LOGS appenders x $APPENDS lines, $LOGS readers checking every complete line"
    if ! out=$("$MW" logs "$MNT" --writers "$LOGS" --appends "$APPENDS"); then
        echo "many-writers: appenders or readers failed ($mode)" >&2
        FAILED=1
    fi
    echo "  $out"
    RSS[$mode]=$(awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$DPID/status")
    unmount_daemon # waits for the background uploads of --write-back
    kill "$SAMPLER" 2>/dev/null || true
    wait "$SAMPLER" 2>/dev/null || true
    SAMPLER=""
    FDS[$mode]=$(cat "$WORK/fds-$mode" 2>/dev/null || echo 0)
    STAGE_FDS[$mode]=$(cat "$WORK/stage-fds-$mode" 2>/dev/null || echo 0)
    echo "== $mode: checking through the S3 API"
    "$MW" verify "$prefix" --procs "$PROCS" --files "$FILES" || FAILED=1
    "$MW" verify-logs "$prefix" --writers "$LOGS" --appends "$APPENDS" || FAILED=1
    if awk "BEGIN { exit !(${RSS[$mode]} > $MAX_RSS) }"; then
        echo "many-writers: $mode: peak RSS ${RSS[$mode]} MiB is above $MAX_RSS MiB" >&2
        FAILED=1
    fi
    if [ "${FDS[$mode]}" -gt "$MAX_FDS" ]; then
        echo "many-writers: $mode: ${FDS[$mode]} open fds, more than $MAX_FDS" >&2
        FAILED=1
    fi
done

echo
echo "s3mount $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $PROCS writers x $FILES files of 1-256 KiB, Garage on 127.0.0.1, $(date -u +%F)"
printf '%-12s %10s %14s %10s %16s\n' mode files/s "peak RSS MiB" "peak fds" "peak stage fds"
for mode in $MODES; do
    printf '%-12s %10s %14s %10s %16s\n' "$mode" "${RATE[$mode]:--}" "${RSS[$mode]}" "${FDS[$mode]}" \
        "${STAGE_FDS[$mode]}"
done
exit "$FAILED"
