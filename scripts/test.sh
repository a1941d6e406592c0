#!/usr/bin/env bash
# Runs the whole test suite against a fresh local Garage on 127.0.0.1 (installs what is missing).
#
#   scripts/test.sh [CARGO TEST ARGS...]     e.g. scripts/test.sh --test e2e mount_e2e::
#
# The integration tests are one binary, tests/e2e (`--test e2e`), with a module per area
# (cli, core_fs, crash, credentials, durability, mount_e2e, random_ops, s3fs_interop, server_ops,
# tools_roundtrip); a name filter after it picks tests, e.g. `--test e2e random_ops`.
# Every test binary runs even when one fails (--no-fail-fast); the exit status is non-zero
# if any test failed.
#
# The tests read AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION and
# S3MOUNT_TEST_BUCKET; S3MOUNT_TEST_GARAGE_DIR names the server's folder (for
# scripts/local-s3.sh stop/start). Release profile, so tests and benchmarks share one build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/common.sh

ensure_apt_packages
scripts/local-s3.sh install

WORK=$(mktemp -d "${TMPDIR:-/tmp}/s3mount-test.XXXXXX")
cleanup() {
    scripts/local-s3.sh stop "$WORK/garage" || true
    rm -rf "$WORK"
}
trap cleanup EXIT

base=$(free_port_base 3910)
scripts/local-s3.sh start "$WORK/garage" "$base" >/dev/null
source "$WORK/garage/env"
export S3MOUNT_TEST_GARAGE_DIR=$WORK/garage

# --test-threads=2 goes to the test binaries: after the caller's own `--` if there is one.
args=("$@")
case " ${args[*]-} " in
*" -- "*) args+=(--test-threads=2) ;;
*) args+=(-- --test-threads=2) ;;
esac

status=0
cargo test --release --no-fail-fast "${args[@]}" || status=$?
exit "$status"
