#!/usr/bin/env bash
# One command from a fresh Debian 12 machine (with cargo) to a live mount:
# installs apt packages, builds s3mount, builds and starts a local Garage S3 server on 127.0.0.1
# (data in $S3MOUNT_HOME/garage), creates bucket and key, and mounts the bucket's prefix docs/.
#
#   scripts/setup.sh [MOUNTPOINT]      (default /mnt/s3mount)
#
# Environment: S3MOUNT_HOME (default ~/.local/share/s3mount), S3MOUNT_BUCKET (default s3mount),
# S3MOUNT_PORT (S3 API port, default 3900), S3MOUNT_TOOLS (Garage build cache, ~/.cache/s3mount).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/common.sh

MNT=${1:-/mnt/s3mount}
HOME_DIR=${S3MOUNT_HOME:-$HOME/.local/share/s3mount}
GARAGE_DIR=$HOME_DIR/garage

ensure_apt_packages
cargo build --release
scripts/local-s3.sh install
scripts/local-s3.sh start "$GARAGE_DIR" "${S3MOUNT_PORT:-3900}" >/dev/null
source "$GARAGE_DIR/env"

mkdir -p "$MNT" "$HOME_DIR/cache"
MNT=$(cd "$MNT" && pwd)
BIN=$(pwd)/target/release/s3mount
if mountpoint -q "$MNT"; then
    echo "$MNT is already a mount point; not mounting again"
else
    "$BIN" mount "$S3MOUNT_TEST_BUCKET" "$MNT" --prefix docs/ \
        --endpoint-url "$AWS_ENDPOINT_URL" --force-path-style --region "$AWS_REGION" \
        --cache-dir "$HOME_DIR/cache"
fi

cat <<EOF

s3mount: bucket '$S3MOUNT_TEST_BUCKET', prefix docs/ (Garage at $AWS_ENDPOINT_URL) is mounted on $MNT
  unmount:        fusermount3 -u $MNT
  stop Garage:    scripts/local-s3.sh stop $GARAGE_DIR     (data stays in $GARAGE_DIR/data)
  S3 credentials: source $GARAGE_DIR/env
  mount again:    source $GARAGE_DIR/env && $BIN mount $S3MOUNT_TEST_BUCKET $MNT --prefix docs/ \\
                    --endpoint-url $AWS_ENDPOINT_URL --force-path-style --cache-dir $HOME_DIR/cache
EOF
