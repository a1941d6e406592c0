#!/usr/bin/env bash
# Soak run of the kill -9 crash test: many cycles against a fresh local Garage.
#
#   scripts/crash-soak.sh [CYCLES] [RUNS]     (defaults: 30 cycles, 3 runs with different seeds)
#
# Each cycle mounts with --write-back, saves a batch of documents (some multipart),
# kills the daemon with SIGKILL at once or while uploads run, and remounts the same
# cache dir; every document whose close returned must then be in S3 byte for byte.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cycles=${1:-30}
runs=${2:-3}
for ((r = 1; r <= runs; r++)); do
    CRASH_CYCLES=$cycles CRASH_SEED=$((1000 + r)) scripts/test.sh --test e2e crash:: -- --nocapture 2>&1 |
        grep -E "crash test:|test result|panicked"
done
