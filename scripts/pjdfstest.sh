#!/usr/bin/env bash
# Runs the POSIX file system suite pjdfstest 0.2.2 (the Rust rewrite) as root on a fresh
# s3mount mount of a fresh local Garage, and prints how many cases passed.
#
#   scripts/pjdfstest.sh [PATTERN...]     e.g. scripts/pjdfstest.sh chmod rename::
#
# PATTERNs (substrings of case names such as `chmod::` or `open::eloop`) restrict the run.
# Installs what is missing: the apt packages, Garage, pjdfstest (cargo install into
# $S3MOUNT_TOOLS/pjdfstest, default ~/.cache/s3mount/pjdfstest, reused), the dummy users
# `tests:tests` (and `nobody`) that the suite switches to, and target/release/s3mount if it
# is missing. The suite's settings are in scripts/pjdfstest.toml.
#
# Environment:
#   PJDFSTEST_MIN_PASS  fail (exit 1) if fewer cases pass (default 348; 0 with PATTERNs)
#   PJDFSTEST_LOG_DIR   where pjdfstest.log (full output) and s3mount.log go
#                       (default target/pjdfstest)
#   PJDFSTEST_NAPTIME   override `naptime` (seconds slept before timestamp checks)
#   PJDFSTEST_TIMEOUT   kill the suite after this many seconds (default 3600)
#   PJDFSTEST_MOUNT_OPTS extra s3mount mount options (e.g. "--metadata-ttl 0")
#   PJDFSTEST_BUILD=1   run `cargo build --release` even if the binary exists
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$(pwd)
source scripts/common.sh

PJD_VERSION=0.2.2
TOOLS=${S3MOUNT_TOOLS:-$HOME/.cache/s3mount}
PJD_ROOT=$TOOLS/pjdfstest
PJD=$PJD_ROOT/bin/pjdfstest
LOG_DIR=${PJDFSTEST_LOG_DIR:-$REPO/target/pjdfstest}
TIMEOUT=${PJDFSTEST_TIMEOUT:-3600}
if [ $# -gt 0 ]; then MIN_PASS=${PJDFSTEST_MIN_PASS:-0}; else MIN_PASS=${PJDFSTEST_MIN_PASS:-348}; fi
BIN=$REPO/target/release/s3mount

die() { echo "pjdfstest.sh: $*" >&2; exit 2; }
now() { date +%s; }

[ "$(id -u)" -eq 0 ] || die "must run as root (the suite switches users and changes owners)"

t0=$(now)
ensure_apt_packages
scripts/local-s3.sh install

# pjdfstest, built once into its own root.
if "$PJD" --version 2>/dev/null | grep -qx "pjdfstest $PJD_VERSION"; then
    echo "pjdfstest $PJD_VERSION already installed: $PJD"
else
    command -v cargo >/dev/null || die "cargo is needed to build pjdfstest"
    echo "building pjdfstest $PJD_VERSION into $PJD_ROOT ..."
    cargo install pjdfstest --version "$PJD_VERSION" --locked --root "$PJD_ROOT"
fi

# The dummy users of scripts/pjdfstest.toml: nobody:nogroup (Debian's) and tests:tests,
# each user's primary group being the group named beside it.
getent group nogroup >/dev/null || groupadd -r nogroup
getent passwd nobody >/dev/null ||
    useradd -r -g nogroup -M -d /nonexistent -s /usr/sbin/nologin -c nobody nobody
getent group tests >/dev/null || groupadd tests
getent passwd tests >/dev/null ||
    useradd -g tests -M -d / -s /usr/sbin/nologin -c "Dummy user for pjdfstest" tests
[ "$(id -gn nobody)" = nogroup ] || die "the primary group of nobody is not nogroup"
[ "$(id -gn tests)" = tests ] || die "the primary group of tests is not tests"

if [ ! -x "$BIN" ] || [ "${PJDFSTEST_BUILD:-0}" = 1 ]; then
    cargo build --release
fi
t_install=$(($(now) - t0))

# The EROFS cases remount the mount read-only and back (`mount -o remount,ro`); mount(8)
# hands that to the helper of type fuse.s3mount, which is s3mount itself.
HELPER=/usr/sbin/mount.fuse.s3mount
helper_added=0
if [ ! -e "$HELPER" ]; then
    ln -s "$BIN" "$HELPER"
    helper_added=1
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/s3mount-pjdfstest.XXXXXX")
# The suite switches to nobody/tests, who must be able to reach the mount point.
chmod 755 "$WORK"
MNT=$WORK/mnt
CACHE=$WORK/cache
mkdir -p "$MNT" "$WORK/secondary" "$LOG_DIR"
chmod 755 "$MNT" "$WORK/secondary"
LOG=$LOG_DIR/pjdfstest.log
MLOG=$LOG_DIR/s3mount.log
mounted=0

cleanup() {
    set +e
    cd /
    if [ "$mounted" = 1 ]; then
        if ! fusermount3 -u "$MNT" 2>/dev/null; then
            sleep 1
            fusermount3 -u "$MNT" || fusermount3 -uz "$MNT"
        fi
        # The daemon holds an flock on its cache dir until its uploads are done.
        [ -f "$CACHE/lock" ] && flock -w 60 "$CACHE/lock" true
    fi
    "$REPO/scripts/local-s3.sh" stop "$WORK/garage" >/dev/null
    rm -rf "$WORK"
    [ "$helper_added" = 0 ] || rm -f "$HELPER"
}
trap cleanup EXIT

base=$(free_port_base 3960)
scripts/local-s3.sh start "$WORK/garage" "$base" >/dev/null
# shellcheck source=/dev/null
source "$WORK/garage/env"

read -r -a extra <<<"${PJDFSTEST_MOUNT_OPTS:-}"
: >"$MLOG"
"$BIN" mount "$S3MOUNT_TEST_BUCKET" "$MNT" --prefix pjd/ --allow-other \
    --endpoint-url "$AWS_ENDPOINT_URL" --force-path-style --region "$AWS_REGION" \
    --cache-dir "$CACHE" --log-level warn "${extra[@]}" 2>>"$MLOG"
mounted=1
mountpoint -q "$MNT" || die "s3mount returned 0 but $MNT is not a mount point"

CONF=$WORK/pjdfstest.toml
cp scripts/pjdfstest.toml "$CONF"
if [ -n "${PJDFSTEST_NAPTIME:-}" ]; then
    sed -i "s/^naptime = .*/naptime = $PJDFSTEST_NAPTIME/" "$CONF"
fi

echo "running pjdfstest $PJD_VERSION on $MNT (s3://$S3MOUNT_TEST_BUCKET/pjd/ at $AWS_ENDPOINT_URL)"
echo "full output: $LOG"
t1=$(now)
status=0
(cd "$MNT" && NO_COLOR=1 RUST_BACKTRACE=0 timeout --kill-after=10 "$TIMEOUT" \
    "$PJD" -c "$CONF" -p "$MNT" -s "$WORK/secondary" "$@") >"$LOG" 2>&1 || status=$?
# Colours off (NO_COLOR), but strip escape sequences anyway.
sed -i 's/\x1b\[[0-9;]*m//g' "$LOG"
# pjdfstest 0.2.2's posix_fallocate::affected_only_create_flags never closes the two files it
# opens O_RDWR, so every erofs_* case that runs after it fails: the kernel refuses to remount a
# file system read-only while a file on it is open for writing (EBUSY). So the erofs cases run
# again in a pjdfstest process of their own, and those results count (both logs are kept).
if [ $# -eq 0 ] && [ "$status" != 124 ] && [ "$status" != 137 ]; then
    ELOG=${LOG%.log}-erofs.log
    (cd "$MNT" && NO_COLOR=1 RUST_BACKTRACE=0 timeout --kill-after=10 "$TIMEOUT" \
        "$PJD" -c "$CONF" -p "$MNT" -s "$WORK/secondary" erofs) >"$ELOG" 2>&1 || true
    sed -i 's/\x1b\[[0-9;]*m//g' "$ELOG"
    erofs_result='^[^[:space:]]+::erofs_[^[:space:]]* +(ok|FAILED|skipped|failed as expected|PASSED UNEXPECTEDLY)$'
    if grep -qE "$erofs_result" "$ELOG"; then
        cp "$LOG" "${LOG%.log}-whole.log"
        { grep -vE "$erofs_result|^Summary:" "${LOG%.log}-whole.log" || true; grep -v '^Summary:' "$ELOG"; } >"$LOG"
        echo "erofs_* cases counted from their own run: $ELOG (the whole run: ${LOG%.log}-whole.log)"
    fi
fi
t_run=$(($(now) - t1))
if [ "$status" = 124 ] || [ "$status" = 137 ]; then
    echo "pjdfstest timed out after $TIMEOUT s (partial results)"
fi

# A result line is "NAME<spaces>ok|FAILED|skipped|failed as expected|PASSED UNEXPECTEDLY".
count() { grep -cE "^[^[:space:]]+ +$1\$" "$LOG" || true; }
pass=$(count ok)
fail=$(count FAILED)
skip=$(count skipped)
xfail=$(count "failed as expected")
xpass=$(count "PASSED UNEXPECTEDLY")
total=$((pass + fail + skip + xfail + xpass))
if [ "$total" = 0 ]; then
    echo "pjdfstest ran no case (exit status $status); the end of its output:" >&2
    tail -n 20 "$LOG" >&2
fi

echo
echo "per syscall group: passed failed skipped"
awk '
    $NF == "ok" || $NF == "FAILED" || $NF == "skipped" {
        split($1, part, "::"); g = part[1]; seen[g] = 1; n[g, $NF]++
    }
    END { for (g in seen) printf "  %-16s %4d %4d %4d\n", g, n[g, "ok"], n[g, "FAILED"], n[g, "skipped"] }
' "$LOG" | sort
echo
echo "failing cases (first line of the message):"
[ "$fail" -gt 0 ] || echo "  (none)"
awk '
    function flush() { if (name != "") printf "  %-60s %s\n", name, substr(msg, 1, 160); name = "" }
    / FAILED$/ { flush(); name = $1; msg = ""; want = 1; next }
    want && /^\t/ { sub(/^\t/, ""); msg = $0; next }
    want && /^ *(left|right):/ { sub(/^ */, ""); msg = msg " (" $0 ")"; next }
    { flush(); want = 0 }
    END { flush() }
' "$LOG" | sort
[ "$xpass" = 0 ] || { echo "passed unexpectedly:"; grep -E " PASSED UNEXPECTEDLY$" "$LOG" | awk '{print "  " $1}'; }
echo
grep -E "^Summary:" "$LOG" || true
echo "pjdfstest: $pass passed, $fail failed, $skip skipped, $xfail failed as expected, $xpass passed unexpectedly, of $total cases"
echo "time: install/check ${t_install}s, suite ${t_run}s; log $LOG, daemon log $MLOG"

if [ "$pass" -lt "$MIN_PASS" ]; then
    echo "FAIL: $pass passed, fewer than PJDFSTEST_MIN_PASS=$MIN_PASS" >&2
    exit 1
fi
echo "OK: $pass passed (PJDFSTEST_MIN_PASS=$MIN_PASS)"
