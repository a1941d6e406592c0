#!/usr/bin/env bash
# Runs fsx 0.3.2 (the File System eXerciser, Rust rewrite) on a fresh s3mount mount of a
# fresh local Garage: fixed seeds and profiles, each a few thousand random operations whose
# every read is checked against fsx's own copy of the file. Once in the default mode and once
# with --write-back.
#
#   scripts/fsx.sh [PROFILE...]        profiles: space copy mmap all (default: all four)
#
# Profiles (the operation weights are below):
#   space  pwrite/pread/truncate with posix_fallocate and hole punching (fallocate(2)
#          modes 0 and PUNCH_HOLE|KEEP_SIZE), close/reopen (an upload each) and fsync
#   copy   copy_file_range(2) within the file, sendfile(2) reads, posix_fadvise(2)
#   mmap   reads and writes through mmap(2), msync(MS_INVALIDATE)
#   all    every operation fsx 0.3.2 has
# fsx 0.3.2 has no zero-range operation; FALLOC_FL_ZERO_RANGE is tested in
# tests/e2e/conformance.rs.
#
# Installs what is missing: the apt packages, Garage, fsx (cargo install into
# $S3MOUNT_TOOLS/fsx, default ~/.cache/s3mount/fsx, unless an fsx 0.3.2 is on PATH), and
# builds target/release/s3mount if it is out of date.
#
# Environment:
#   FSX_OPS       operations per run (default 3000)
#   FSX_SEEDS     seeds, each run with every profile (default "1 2")
#   FSX_MODES     mount modes (default "default write-back")
#   FSX_LOG_DIR   where fsx's logs and artifacts and s3mount.log go (default target/fsx)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$(pwd)
source scripts/common.sh

FSX_VERSION=0.3.2
TOOLS=${S3MOUNT_TOOLS:-$HOME/.cache/s3mount}
OPS=${FSX_OPS:-3000}
SEEDS=${FSX_SEEDS:-"1 2"}
MODES=${FSX_MODES:-"default write-back"}
LOG_DIR=${FSX_LOG_DIR:-$REPO/target/fsx}
BIN=$REPO/target/release/s3mount
if [ $# -gt 0 ]; then PROFILES=("$@"); else PROFILES=(space copy mmap all); fi

die() { echo "fsx.sh: $*" >&2; exit 2; }

ensure_apt_packages
scripts/local-s3.sh install
FSX=$TOOLS/fsx/bin/fsx
if ! "$FSX" --version 2>/dev/null | grep -qx "fsx $FSX_VERSION"; then
    if command -v fsx >/dev/null && fsx --version | grep -qx "fsx $FSX_VERSION"; then
        FSX=$(command -v fsx)
    else
        command -v cargo >/dev/null || die "cargo is needed to build fsx"
        echo "building fsx $FSX_VERSION into $TOOLS/fsx ..."
        cargo install fsx --version "$FSX_VERSION" --locked --root "$TOOLS/fsx"
    fi
fi
cargo build --release --bin s3mount # (a no-op when the binary is up to date)

# The weights of each profile (fsx.toml [weights]; unnamed ones are 0 but read and write).
profile_weights() {
    case $1 in
    space) echo "read = 10
write = 10
truncate = 4
close_open = 1
fsync = 1
posix_fallocate = 5
punch_hole = 5
mapread = 0
mapwrite = 0" ;;
    copy) echo "read = 10
write = 10
truncate = 2
close_open = 1
copy_file_range = 8
sendfile = 5
posix_fadvise = 3
mapread = 0
mapwrite = 0" ;;
    mmap) echo "read = 5
write = 5
truncate = 2
close_open = 1
mapread = 10
mapwrite = 10
invalidate = 2" ;;
    all) echo "read = 10
write = 10
truncate = 3
close_open = 1
fsync = 1
fdatasync = 1
mapread = 5
mapwrite = 5
invalidate = 1
posix_fallocate = 3
punch_hole = 3
sendfile = 3
posix_fadvise = 2
copy_file_range = 3" ;;
    *) die "unknown profile $1 (space, copy, mmap, all)" ;;
    esac
}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/s3mount-fsx.XXXXXX")
MNT=$WORK/mnt
mkdir -p "$MNT" "$LOG_DIR"
MLOG=$LOG_DIR/s3mount.log
: >"$MLOG"
mounted=0

unmount() {
    [ "$mounted" = 1 ] || return 0
    if ! fusermount3 -u "$MNT" 2>/dev/null; then
        sleep 1
        fusermount3 -u "$MNT" || fusermount3 -uz "$MNT"
    fi
    # The daemon holds an flock on its cache dir until its uploads are done.
    [ -f "$WORK/cache/lock" ] && flock -w 60 "$WORK/cache/lock" true
    mounted=0
}

cleanup() {
    set +e
    cd /
    unmount
    "$REPO/scripts/local-s3.sh" stop "$WORK/garage" >/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

base=$(free_port_base 3980)
scripts/local-s3.sh start "$WORK/garage" "$base" >/dev/null
# shellcheck source=/dev/null
source "$WORK/garage/env"

t0=$(date +%s)
runs=0
failed=()
for mode in $MODES; do
    opts=()
    case $mode in
    default) ;;
    write-back) opts=(--write-back) ;;
    *) die "unknown mode $mode (default, write-back)" ;;
    esac
    rm -rf "$WORK/cache"
    echo "--- mount ($mode)" >>"$MLOG"
    "$BIN" mount "$S3MOUNT_TEST_BUCKET" "$MNT" --prefix "fsx-$mode/" \
        --endpoint-url "$AWS_ENDPOINT_URL" --force-path-style --region "$AWS_REGION" \
        --cache-dir "$WORK/cache" --log-level warn "${opts[@]}" 2>>"$MLOG"
    mounted=1
    mountpoint -q "$MNT" || die "s3mount returned 0 but $MNT is not a mount point"
    for profile in "${PROFILES[@]}"; do
        conf=$WORK/$profile.toml
        printf 'flen = 262144\n[weights]\n%s\n' "$(profile_weights "$profile")" >"$conf"
        for seed in $SEEDS; do
            name=$mode-$profile-$seed
            log=$LOG_DIR/$name.log
            mkdir -p "$LOG_DIR/$name"
            t=$(date +%s)
            if (cd "$LOG_DIR/$name" && "$FSX" -f "$conf" -N "$OPS" -S "$seed" -P "$LOG_DIR/$name" \
                "$MNT/$name") >"$log" 2>&1; then
                echo "ok      $name ($OPS operations, $(($(date +%s) - t)) s)"
            else
                echo "FAILED  $name (log $log); its end:"
                tail -n 15 "$log" | sed 's/^/    /'
                failed+=("$name")
            fi
            runs=$((runs + 1))
            rm -f "$MNT/$name"
        done
    done
    unmount
done

echo "fsx $FSX_VERSION: $((runs - ${#failed[@]})) of $runs runs passed in $(($(date +%s) - t0)) s; logs in $LOG_DIR"
[ ${#failed[@]} -eq 0 ] || { echo "FAIL: ${failed[*]}" >&2; exit 1; }
