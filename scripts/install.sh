#!/usr/bin/env bash
# Installs s3mount for the command line, /etc/fstab and systemd. Idempotent: run it again
# after an update (a running mount keeps its old binary until it is remounted).
#
#   scripts/install.sh [PREFIX]        PREFIX defaults to /usr/local
#
# It puts in place:
#   PREFIX/bin/s3mount                           the binary (target/release/s3mount, built if missing)
#   SBINDIR/mount.fuse.s3mount -> PREFIX/bin/s3mount
#                                                mount(8)'s helper for the fstab type fuse.s3mount
#   /etc/systemd/system/s3mount@.service         the unit template (ExecStart = PREFIX/bin/s3mount)
#   /etc/s3mount/example.env                     an example instance configuration
#
# SBINDIR defaults to /sbin, where mount(8) looks for helpers (/usr/sbin where /sbin links
# there, as on Debian 12). DESTDIR=DIR installs everything under DIR instead of / (packaging,
# tests); S3MOUNT_BIN=FILE installs that binary instead of target/release/s3mount.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PREFIX=${1:-/usr/local}
DESTDIR=${DESTDIR:-}
if [ -z "${SBINDIR:-}" ]; then
    SBINDIR=/sbin
    if [ -L /sbin ]; then
        SBINDIR=/$(readlink /sbin | sed 's|^/||')
    fi
fi
UNITDIR=/etc/systemd/system
CONFDIR=/etc/s3mount

bin=${S3MOUNT_BIN:-target/release/s3mount}
if [ -z "${S3MOUNT_BIN:-}" ] && [ ! -x "$bin" ]; then
    cargo build --release
fi
[ -x "$bin" ] || { echo "install.sh: $bin is not an executable" >&2; exit 1; }

install -d -m 755 "$DESTDIR$PREFIX/bin" "$DESTDIR$SBINDIR" "$DESTDIR$UNITDIR"
install -d -m 750 "$DESTDIR$CONFDIR"
install -m 755 "$bin" "$DESTDIR$PREFIX/bin/s3mount"
ln -sfn "$PREFIX/bin/s3mount" "$DESTDIR$SBINDIR/mount.fuse.s3mount"
sed "s|/usr/local/bin/s3mount|$PREFIX/bin/s3mount|g" systemd/s3mount@.service \
    >"$DESTDIR$UNITDIR/s3mount@.service.tmp"
chmod 644 "$DESTDIR$UNITDIR/s3mount@.service.tmp"
mv -f "$DESTDIR$UNITDIR/s3mount@.service.tmp" "$DESTDIR$UNITDIR/s3mount@.service"
install -m 640 systemd/example.env "$DESTDIR$CONFDIR/example.env"

if [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
fi
echo "installed: $DESTDIR$PREFIX/bin/s3mount, $DESTDIR$SBINDIR/mount.fuse.s3mount -> $PREFIX/bin/s3mount,"
echo "           $DESTDIR$UNITDIR/s3mount@.service, $DESTDIR$CONFDIR/example.env"
