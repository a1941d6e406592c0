#!/usr/bin/env bash
# Local single-node Garage (S3-compatible server) on 127.0.0.1, for tests, benchmarks and trying
# s3mount out. Data, config, log and credentials live in one folder.
#
#   scripts/local-s3.sh install              build Garage 2.5.0 (cached) and the TCP_NODELAY shim
#   scripts/local-s3.sh start DIR [PORT_BASE] start (or reuse) a server in DIR; S3 API on PORT_BASE
#   scripts/local-s3.sh stop DIR             stop the server of DIR (its data stays)
#   scripts/local-s3.sh env DIR              print the export lines for the server of DIR
#   scripts/local-s3.sh garage DIR ARGS...   run the garage CLI on the server of DIR (e.g. key create)
#
# PORT_BASE (default 3900): S3 API on PORT_BASE, RPC on +1, admin API on +3, all on 127.0.0.1.
# Environment: S3MOUNT_TOOLS (default ~/.cache/s3mount) holds the Garage build and nodelay.so;
# S3MOUNT_BUCKET (default s3mount) names the bucket `start` creates.
#
# Garage caveats (see S3-SERVERS.md): it ignores conditional PUT (If-None-Match/If-Match), accepts
# multipart parts < 5 MiB, deduplicates identical blocks (benchmarks must write fresh random data),
# and never sets TCP_NODELAY, which the LD_PRELOAD shim fixes (else a small GET takes ~33 ms).
set -euo pipefail

GARAGE_VERSION=2.5.0
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS=${S3MOUNT_TOOLS:-$HOME/.cache/s3mount}
GARAGE=$TOOLS/garage/bin/garage
SHIM=$TOOLS/nodelay.so
BUCKET=${S3MOUNT_BUCKET:-s3mount}
KEY_NAME=s3mount

die() { echo "local-s3.sh: $*" >&2; exit 1; }
hex() { od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'; }

cmd_install() {
    if "$GARAGE" --version 2>/dev/null | grep -Eq "(^|[^0-9.])${GARAGE_VERSION//./\\.}([^0-9.]|$)"; then
        echo "garage $GARAGE_VERSION already installed: $GARAGE"
    else
        command -v cargo >/dev/null || die "cargo is needed to build Garage"
        echo "building garage $GARAGE_VERSION into $TOOLS/garage (about 10 minutes on 2 cores) ..."
        cargo install garage --version "$GARAGE_VERSION" --locked --root "$TOOLS/garage"
        "$GARAGE" --version
    fi
    local src=$REPO/scripts/nodelay_shim.c
    if [ ! -f "$SHIM" ] || [ "$src" -nt "$SHIM" ]; then
        mkdir -p "$TOOLS"
        gcc -O2 -shared -fPIC -o "$SHIM" "$src" -ldl
        echo "built $SHIM"
    fi
}

# Is something listening on 127.0.0.1:$1?
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# PID of the server of $DIR if it is running, else nothing.
running_pid() {
    local pid
    pid=$(cat "$DIR/garage.pid" 2>/dev/null) || return 0
    [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 0
    if tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$DIR/garage.toml"; then echo "$pid"; fi
}

g() { RUST_LOG=garage=warn "$GARAGE" -c "$DIR/garage.toml" "$@"; }

write_config() {
    local port=$1 rpc_secret admin_token
    # keep the secrets of an existing config: the node keeps its identity and its data
    rpc_secret=$(sed -n 's/^rpc_secret = "\(.*\)"/\1/p' "$DIR/garage.toml" 2>/dev/null || true)
    admin_token=$(sed -n 's/^admin_token = "\(.*\)"/\1/p' "$DIR/garage.toml" 2>/dev/null || true)
    [ -n "$rpc_secret" ] || rpc_secret=$(hex 32)
    [ -n "$admin_token" ] || admin_token=$(hex 16)
    cat >"$DIR/garage.toml" <<EOF
metadata_dir = "$DIR/meta"
data_dir = "$DIR/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$((port + 1))"
rpc_public_addr = "127.0.0.1:$((port + 1))"
rpc_secret = "$rpc_secret"

[s3_api]
s3_region = "us-east-1"
api_bind_addr = "127.0.0.1:$port"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$((port + 3))"
admin_token = "$admin_token"
EOF
    chmod 600 "$DIR/garage.toml"
}

cmd_start() {
    [ -x "$GARAGE" ] || die "garage not installed: run scripts/local-s3.sh install"
    [ -f "$SHIM" ] || die "$SHIM missing: run scripts/local-s3.sh install"
    local pid port=${1:-}
    pid=$(running_pid)
    if [ -n "$pid" ] && [ -f "$DIR/env" ]; then
        echo "# garage already running for $DIR (pid $pid)" >&2
        cat "$DIR/env"
        return 0
    fi
    [ -n "$pid" ] && die "garage (pid $pid) runs for $DIR but $DIR/env is missing; stop it first"
    if [ -z "$port" ]; then
        port=$(sed -n 's/^api_bind_addr = "127.0.0.1:\([0-9]*\)"/\1/p' "$DIR/garage.toml" 2>/dev/null | head -n 1)
        port=${port:-3900}
    fi
    [[ $port =~ ^[0-9]+$ ]] || die "bad PORT_BASE: $port"
    for p in "$port" $((port + 1)) $((port + 3)); do
        port_busy "$p" && die "127.0.0.1:$p is already in use (choose another PORT_BASE)"
    done
    mkdir -p "$DIR/meta" "$DIR/data"
    write_config "$port"

    # In its own session, so that a Ctrl-C in the terminal that started it does not stop it.
    rm -f "$DIR/garage.pid"
    LD_PRELOAD=$SHIM RUST_LOG=garage=warn setsid sh -c 'echo $$ >"$0"; exec "$@"' "$DIR/garage.pid" \
        "$GARAGE" -c "$DIR/garage.toml" server >>"$DIR/garage.log" 2>&1 </dev/null &
    local i
    for ((i = 0; i < 50; i++)); do
        pid=$(cat "$DIR/garage.pid" 2>/dev/null || true)
        [ -n "$pid" ] && break
        sleep 0.1
    done
    [ -n "$pid" ] || die "garage did not start"
    for ((i = 0; i < 120; i++)); do
        kill -0 "$pid" 2>/dev/null || { tail -n 20 "$DIR/garage.log" >&2; die "garage exited at start (log: $DIR/garage.log)"; }
        g status >/dev/null 2>&1 && break
        sleep 0.5
    done
    ((i < 120)) || die "garage did not answer within 60 s (log: $DIR/garage.log)"

    # Layout: assign this node a role once (a restart of the same DIR already has one).
    if g status 2>/dev/null | grep -q "NO ROLE ASSIGNED"; then
        local node
        node=$(g node id -q 2>/dev/null | cut -d@ -f1)
        [ -n "$node" ] || die "cannot read the node id (garage node id)"
        g layout assign -z dc1 -c 10G "$node" >/dev/null
        g layout apply --version 1 >/dev/null
    fi
    # The S3 API answers only once the layout is live everywhere; wait for it (bounded).
    for ((i = 0; i < 60; i++)); do
        g bucket list >/dev/null 2>&1 && break
        sleep 0.5
    done

    # Key: fixed per DIR (generated once and kept in DIR/key), imported once.
    if [ ! -f "$DIR/key" ]; then
        (umask 077; echo "GK$(hex 12) $(hex 32)" >"$DIR/key")
    fi
    local key_id secret
    read -r key_id secret <"$DIR/key"
    g key info "$KEY_NAME" >/dev/null 2>&1 || g key import --yes "$key_id" "$secret" -n "$KEY_NAME" >/dev/null
    g bucket info "$BUCKET" >/dev/null 2>&1 || g bucket create "$BUCKET" >/dev/null
    g bucket allow --read --write --owner "$BUCKET" --key "$KEY_NAME" >/dev/null
    g key allow --create-bucket "$KEY_NAME" >/dev/null

    (umask 077; cat >"$DIR/env" <<EOF
export AWS_ACCESS_KEY_ID=$key_id
export AWS_SECRET_ACCESS_KEY=$secret
export AWS_REGION=us-east-1
export AWS_DEFAULT_REGION=us-east-1
export AWS_ENDPOINT_URL=http://127.0.0.1:$port
export S3MOUNT_TEST_BUCKET=$BUCKET
EOF
    )
    echo "# garage running for $DIR (pid $pid), S3 API on http://127.0.0.1:$port, bucket $BUCKET" >&2
    cat "$DIR/env"
}

cmd_stop() {
    local pid i
    pid=$(running_pid)
    if [ -z "$pid" ]; then
        echo "garage is not running for $DIR" >&2
        rm -f "$DIR/garage.pid"
        return 0
    fi
    kill -TERM "$pid"
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "garage (pid $pid) still running after 10 s; sending SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$DIR/garage.pid"
    echo "garage stopped for $DIR" >&2
}

usage() { sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }

[ $# -ge 1 ] || usage
sub=$1
shift
case $sub in
install) cmd_install ;;
start | stop | env | garage)
    [ $# -ge 1 ] || usage
    mkdir -p "$1"
    DIR=$(cd "$1" && pwd)
    shift
    case $sub in
    start) cmd_start "$@" ;;
    stop) cmd_stop ;;
    env) [ -f "$DIR/env" ] || die "no $DIR/env: start the server first"; cat "$DIR/env" ;;
    garage) [ -f "$DIR/garage.toml" ] || die "no $DIR/garage.toml: start the server first"; g "$@" ;;
    esac
    ;;
*) usage ;;
esac
