#!/usr/bin/env bash
# Local 3-node Garage cluster on 127.0.0.1 with replication factor 3 (every object on all three
# nodes; reads and writes need a quorum of 2), for the cluster test and for trying s3mount
# against more than one storage node. Everything lives in one folder, a subfolder per node.
#
#   scripts/local-s3-cluster.sh start DIR [PORT_BASE]  start (or reuse) the 3 nodes; connect them,
#                                                     assign and apply the layout, create key+bucket
#   scripts/local-s3-cluster.sh stop DIR               stop all nodes (their data stays)
#   scripts/local-s3-cluster.sh kill-node DIR N        SIGKILL node N (1-3), as a crash would
#   scripts/local-s3-cluster.sh stop-node DIR N        stop node N cleanly (SIGTERM)
#   scripts/local-s3-cluster.sh start-node DIR N       start node N again with its data and
#                                                     connect it to the running nodes
#   scripts/local-s3-cluster.sh env DIR                print the export lines (node 1's endpoint)
#
# Node N (1-3) listens on PORT_BASE + 10*(N-1) (S3 API), +1 (RPC), +3 (admin), so the default
# PORT_BASE 3900 gives S3 APIs on 3900, 3910 and 3920. All nodes share one rpc_secret. `env`
# prints what scripts/local-s3.sh prints for one node (AWS_ENDPOINT_URL = node 1) plus
# S3MOUNT_CLUSTER_ENDPOINT_1..3 for each node's S3 API and S3MOUNT_CLUSTER_DIR.
# Garage is built by `scripts/local-s3.sh install`; S3MOUNT_TOOLS and S3MOUNT_BUCKET as there.
set -euo pipefail

TOOLS=${S3MOUNT_TOOLS:-$HOME/.cache/s3mount}
GARAGE=$TOOLS/garage/bin/garage
SHIM=$TOOLS/nodelay.so
BUCKET=${S3MOUNT_BUCKET:-s3mount}
KEY_NAME=s3mount
NODES=(1 2 3)

die() { echo "local-s3-cluster.sh: $*" >&2; exit 1; }
hex() { od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'; }
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

node_dir() { echo "$DIR/node$1"; }
s3_port() { echo $((BASE + 10 * ($1 - 1))); }

# PID of node $1's server if it is running, else nothing.
running_pid() {
    local pid nd
    nd=$(node_dir "$1")
    pid=$(cat "$nd/garage.pid" 2>/dev/null) || return 0
    [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 0
    if tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$nd/garage.toml"; then echo "$pid"; fi
}

# garage CLI against node $1 (quiet logs).
g() {
    local n=$1
    shift
    RUST_LOG=garage=warn "$GARAGE" -c "$(node_dir "$n")/garage.toml" "$@"
}

# The port base of an existing cluster in DIR (from node 1's config), else nothing.
saved_base() {
    sed -n 's/^api_bind_addr = "127.0.0.1:\([0-9]*\)"/\1/p' "$DIR/node1/garage.toml" 2>/dev/null | head -n 1
}

write_config() {
    local n=$1 secret=$2 nd port
    nd=$(node_dir "$n")
    port=$(s3_port "$n")
    mkdir -p "$nd/meta" "$nd/data"
    local admin_token
    admin_token=$(sed -n 's/^admin_token = "\(.*\)"/\1/p' "$nd/garage.toml" 2>/dev/null || true)
    [ -n "$admin_token" ] || admin_token=$(hex 16)
    cat >"$nd/garage.toml" <<EOF
metadata_dir = "$nd/meta"
data_dir = "$nd/data"
db_engine = "sqlite"
replication_factor = 3
rpc_bind_addr = "127.0.0.1:$((port + 1))"
rpc_public_addr = "127.0.0.1:$((port + 1))"
rpc_secret = "$secret"

[s3_api]
s3_region = "us-east-1"
api_bind_addr = "127.0.0.1:$port"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$((port + 3))"
admin_token = "$admin_token"
EOF
    chmod 600 "$nd/garage.toml"
}

# Starts node $1 from its config and waits until its CLI answers.
launch() {
    local n=$1 nd pid i
    nd=$(node_dir "$n")
    pid=$(running_pid "$n")
    [ -n "$pid" ] && return 0
    local port
    port=$(s3_port "$n")
    for p in "$port" $((port + 1)) $((port + 3)); do
        port_busy "$p" && die "127.0.0.1:$p is already in use (node $n; choose another PORT_BASE)"
    done
    rm -f "$nd/garage.pid"
    # In its own session, so that a Ctrl-C in the terminal that started it does not stop it.
    LD_PRELOAD=$SHIM RUST_LOG=garage=warn setsid sh -c 'echo $$ >"$0"; exec "$@"' "$nd/garage.pid" \
        "$GARAGE" -c "$nd/garage.toml" server >>"$nd/garage.log" 2>&1 </dev/null &
    for ((i = 0; i < 50; i++)); do
        pid=$(cat "$nd/garage.pid" 2>/dev/null || true)
        [ -n "$pid" ] && break
        sleep 0.1
    done
    [ -n "$pid" ] || die "node $n did not start"
    for ((i = 0; i < 120; i++)); do
        kill -0 "$pid" 2>/dev/null || { tail -n 20 "$nd/garage.log" >&2; die "node $n exited at start (log: $nd/garage.log)"; }
        g "$n" status >/dev/null 2>&1 && return 0
        sleep 0.25
    done
    die "node $n did not answer within 30 s (log: $nd/garage.log)"
}

cmd_start() {
    [ -x "$GARAGE" ] || die "garage not installed: run scripts/local-s3.sh install"
    [ -f "$SHIM" ] || die "$SHIM missing: run scripts/local-s3.sh install"
    BASE=${1:-$(saved_base)}
    BASE=${BASE:-3900}
    [[ $BASE =~ ^[0-9]+$ ]] || die "bad PORT_BASE: $BASE"
    local secret n i
    secret=$(sed -n 's/^rpc_secret = "\(.*\)"/\1/p' "$DIR/node1/garage.toml" 2>/dev/null || true)
    [ -n "$secret" ] || secret=$(hex 32)
    for n in "${NODES[@]}"; do
        [ -n "$(running_pid "$n")" ] || write_config "$n" "$secret"
    done
    for n in "${NODES[@]}"; do launch "$n"; done

    # Connect node 1 to the others (idempotent), then give every node a role once.
    local ids=()
    for n in "${NODES[@]}"; do
        ids+=("$(g "$n" node id -q 2>/dev/null | cut -d@ -f1)")
        [ -n "${ids[-1]}" ] || die "cannot read node $n's id"
    done
    for n in 2 3; do
        for ((i = 0; i < 20; i++)); do
            g 1 node connect "${ids[n - 1]}@127.0.0.1:$(($(s3_port "$n") + 1))" >/dev/null 2>&1 && break
            sleep 0.5
        done
        ((i < 20)) || die "node 1 cannot connect to node $n (log: $(node_dir "$n")/garage.log)"
    done
    if g 1 status 2>/dev/null | grep -q "NO ROLE ASSIGNED"; then
        for n in "${NODES[@]}"; do
            # One zone per node: Garage then keeps one copy in each (zone-level redundancy).
            g 1 layout assign -z "dc$n" -c 1G "${ids[n - 1]}" >/dev/null
        done
        g 1 layout apply --version 1 >/dev/null
    fi
    # The S3 API answers once every node has the layout; wait for it (bounded).
    for ((i = 0; i < 120; i++)); do
        g 1 bucket list >/dev/null 2>&1 && break
        sleep 0.5
    done
    ((i < 120)) || die "the cluster did not become ready within 60 s"

    if [ ! -f "$DIR/key" ]; then
        (umask 077; echo "GK$(hex 12) $(hex 32)" >"$DIR/key")
    fi
    local key_id key_secret
    read -r key_id key_secret <"$DIR/key"
    g 1 key info "$KEY_NAME" >/dev/null 2>&1 || g 1 key import --yes "$key_id" "$key_secret" -n "$KEY_NAME" >/dev/null
    g 1 bucket info "$BUCKET" >/dev/null 2>&1 || g 1 bucket create "$BUCKET" >/dev/null
    g 1 bucket allow --read --write --owner "$BUCKET" --key "$KEY_NAME" >/dev/null
    # Every node serves the bucket once the key and bucket tables reached it (bounded wait).
    for n in "${NODES[@]}"; do
        for ((i = 0; i < 60; i++)); do
            g "$n" bucket info "$BUCKET" >/dev/null 2>&1 && break
            sleep 0.5
        done
    done

    (umask 077; cat >"$DIR/env" <<EOF
export AWS_ACCESS_KEY_ID=$key_id
export AWS_SECRET_ACCESS_KEY=$key_secret
export AWS_REGION=us-east-1
export AWS_DEFAULT_REGION=us-east-1
export AWS_ENDPOINT_URL=http://127.0.0.1:$(s3_port 1)
export S3MOUNT_TEST_BUCKET=$BUCKET
export S3MOUNT_CLUSTER_ENDPOINT_1=http://127.0.0.1:$(s3_port 1)
export S3MOUNT_CLUSTER_ENDPOINT_2=http://127.0.0.1:$(s3_port 2)
export S3MOUNT_CLUSTER_ENDPOINT_3=http://127.0.0.1:$(s3_port 3)
export S3MOUNT_CLUSTER_DIR=$DIR
EOF
    )
    echo "# garage cluster running for $DIR: S3 APIs on 127.0.0.1:$(s3_port 1), $(s3_port 2), $(s3_port 3); bucket $BUCKET" >&2
    cat "$DIR/env"
}

# Stops node $1 with signal $2 and waits for it to be gone.
halt() {
    local n=$1 sig=$2 pid i
    pid=$(running_pid "$n")
    if [ -z "$pid" ]; then
        echo "node $n is not running for $DIR" >&2
        return 0
    fi
    kill "-$sig" "$pid"
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "node $n (pid $pid) still running after 10 s; sending SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$(node_dir "$n")/garage.pid"
    echo "node $n stopped ($sig) for $DIR" >&2
}

node_arg() {
    [[ ${1:-} =~ ^[123]$ ]] || die "node number must be 1, 2 or 3, not '${1:-}'"
    echo "$1"
}

usage() { sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }

[ $# -ge 2 ] || usage
sub=$1
mkdir -p "$2"
DIR=$(cd "$2" && pwd)
shift 2
case $sub in
start) cmd_start "$@" ;;
stop) for n in "${NODES[@]}"; do halt "$n" TERM; done ;;
kill-node) halt "$(node_arg "${1:-}")" KILL ;;
stop-node) halt "$(node_arg "${1:-}")" TERM ;;
start-node)
    n=$(node_arg "${1:-}")
    BASE=$(saved_base)
    [ -n "$BASE" ] || die "no cluster in $DIR: run start first"
    launch "$n"
    # Connect it with the running nodes, both ways, now: a node that saw a peer fail
    # reconnects to it only at its next retry (20 s and more later), and until then
    # sends it no requests.
    for m in "${NODES[@]}"; do
        [ "$m" != "$n" ] && [ -n "$(running_pid "$m")" ] || continue
        g "$m" node connect "$(g "$n" node id -q 2>/dev/null)" >/dev/null 2>&1 &&
            g "$n" node connect "$(g "$m" node id -q 2>/dev/null)" >/dev/null 2>&1 ||
            echo "nodes $n and $m could not connect yet (Garage retries on its own)" >&2
    done
    echo "node $n running for $DIR (S3 API on 127.0.0.1:$(s3_port "$n"))" >&2
    ;;
env) [ -f "$DIR/env" ] || die "no $DIR/env: start the cluster first"; cat "$DIR/env" ;;
*) usage ;;
esac
