#!/usr/bin/env bash
# Runs the whole test suite against a fresh local Garage on 127.0.0.1 (installs what is missing).
#
#   scripts/test.sh [CARGO TEST ARGS...]     e.g. scripts/test.sh --test e2e mount_e2e::
#
# The integration tests are one binary, tests/e2e (`--test e2e`), with a module per area
# (big_files, check, cli, cluster, core_fs, crash, credentials, durability, fd_bound, lookups, meta_index, migrate,
# mount_e2e, object_options, observability, odd_keys, random_ops, readdir_model, s3fs_interop,
# scale, server_ops, tools_roundtrip, trash, two_hosts); a name filter after it picks tests,
# e.g. `--test e2e random_ops`.
# Every test binary runs even when one fails (--no-fail-fast); the exit status is non-zero
# if any test failed.
#
# The tests read AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION and
# S3MOUNT_TEST_BUCKET; S3MOUNT_TEST_GARAGE_DIR names the server's folder (for
# scripts/local-s3.sh stop/start/garage). S3MOUNT_TEST_MOTO_URL is a moto 5.2.5 server (for
# what Garage ignores: encryption, storage classes, ACLs). Release profile, so tests and
# benchmarks share one build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/common.sh

ensure_apt_packages
scripts/local-s3.sh install

ensure_moto

WORK=$(mktemp -d "${TMPDIR:-/tmp}/s3mount-test.XXXXXX")
MOTO_PID=
cleanup() {
    scripts/local-s3.sh stop "$WORK/garage" || true
    [ -z "$MOTO_PID" ] || kill "$MOTO_PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# moto starts (a few seconds) while Garage does.
moto_port=$(free_port_base 5010)
start_moto "$moto_port" "$WORK/moto.log"
base=$(free_port_base 3910)
scripts/local-s3.sh start "$WORK/garage" "$base" >/dev/null
source "$WORK/garage/env"
export S3MOUNT_TEST_GARAGE_DIR=$WORK/garage
wait_moto "$moto_port"
export S3MOUNT_TEST_MOTO_URL=http://127.0.0.1:$moto_port

# --test-threads=2 goes to the test binaries: after the caller's own `--` if there is one.
args=("$@")
case " ${args[*]-} " in
*" -- "*) args+=(--test-threads=2) ;;
*) args+=(-- --test-threads=2) ;;
esac

status=0
cargo test --release --no-fail-fast "${args[@]}" || status=$?
exit "$status"
