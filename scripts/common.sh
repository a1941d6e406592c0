# shellcheck shell=bash
# Sourced by setup.sh, test.sh and the benchmark scripts: package installs, a free local port
# base, moto, and starting and stopping a daemon in the background.

# Debian packages the project needs: fusermount3 (fuse3), a C compiler for crates and the
# TCP_NODELAY shim, curl for health checks; attr, rsync, git, tar and s3fs (the real s3fs-fuse,
# for the interop tests) are used by the tests; python3 with venv runs the pinned moto.
S3MOUNT_APT_PACKAGES=(fuse3 build-essential pkg-config curl ca-certificates attr rsync git tar s3fs util-linux procps diffutils python3 python3-venv)

# apt-get install only what is missing (a second run does not touch apt at all).
ensure_apt_packages() {
    local missing=() p
    for p in "${S3MOUNT_APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    echo "installing apt packages: ${missing[*]}"
    "${sudo[@]}" apt-get update -q
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q "${missing[@]}"
}

# First port base from $1 upwards (steps of 10, at most 20 tries) whose S3, RPC and admin ports
# (base, base+1, base+3) are all free on 127.0.0.1.
free_port_base() {
    local base=$1 i p busy
    for ((i = 0; i < 20; i++, base += 10)); do
        busy=0
        for p in "$base" $((base + 1)) $((base + 3)); do
            if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then busy=1; fi
        done
        if [ "$busy" -eq 0 ]; then echo "$base"; return 0; fi
    done
    echo "no free port base found from $1 on" >&2
    return 1
}

# moto, pinned: an S3 emulator that stores and returns server-side encryption, storage classes
# and ACLs (Garage ignores all three), for the tests of --sse/--storage-class/--acl. Installed
# into a venv of its own under S3MOUNT_TOOLS (default ~/.cache/s3mount); sets MOTO_SERVER.
# (moto 5.2.1's CompleteMultipartUpload answer breaks aws-sdk-rust; 5.2.5 does not.)
S3MOUNT_MOTO_VERSION=5.2.5
ensure_moto() {
    local venv=${S3MOUNT_TOOLS:-$HOME/.cache/s3mount}/moto-$S3MOUNT_MOTO_VERSION
    if ! "$venv/bin/python" -c "import sys, moto; sys.exit(moto.__version__ != '$S3MOUNT_MOTO_VERSION')" 2>/dev/null; then
        echo "installing moto $S3MOUNT_MOTO_VERSION into $venv"
        rm -rf "$venv"
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q "moto[server]==$S3MOUNT_MOTO_VERSION"
    fi
    MOTO_SERVER=$venv/bin/moto_server
}

# Starts moto on 127.0.0.1:$1 with its log in $2; sets MOTO_PID. wait_moto waits (bounded)
# until it answers.
start_moto() {
    "$MOTO_SERVER" -H 127.0.0.1 -p "$1" >"$2" 2>&1 </dev/null &
    MOTO_PID=$!
}
wait_moto() {
    local i
    for ((i = 0; i < 120; i++)); do
        curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0
        kill -0 "$MOTO_PID" 2>/dev/null || break
        sleep 0.5
    done
    echo "moto did not answer on 127.0.0.1:$1 within 60 s" >&2
    return 1
}

# ---- A file system daemon run in the background of a benchmark script ------------------------
# The script starts it (`... --foreground &`), sets DPID=$! and MNT to its mount point.

# wait_mounted WHAT LOG: waits up to 30 s until $MNT is mounted. If the daemon exits first
# (its LOG is printed, DPID cleared) or time runs out, says so naming WHAT and returns 1.
wait_mounted() {
    local what=$1 log=$2 i
    for ((i = 0; i < 300; i++)); do
        mountpoint -q "$MNT" && return 0
        if ! kill -0 "$DPID" 2>/dev/null; then
            cat "$log" >&2
            DPID=""
            echo "$what exited before its mount was live" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "$what: mount not live after 30 s" >&2
    return 1
}

# stop_daemon [SECONDS]: unmounts $MNT, waits up to SECONDS (default 60) for the daemon to
# exit (it uploads what it still has first), kills it after that, clears DPID; returns its
# exit status. Nothing to do without DPID.
stop_daemon() {
    [ -n "${DPID:-}" ] || return 0
    local secs=${1:-60} i st=0
    if mountpoint -q "$MNT"; then
        fusermount3 -u "$MNT" || { sleep 1; fusermount3 -u "$MNT"; }
    fi
    for ((i = 0; i < secs * 10; i++)); do
        kill -0 "$DPID" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$DPID" 2>/dev/null; then
        echo "daemon $DPID still running $secs s after unmount; killing it" >&2
        kill -KILL "$DPID" 2>/dev/null || true
    fi
    wait "$DPID" 2>/dev/null || st=$?
    DPID=""
    return "$st"
}

# Starts target/release/examples/delayproxy in front of the S3 API on 127.0.0.1:$1 with a round
# trip of $2 ms, logging in directory $3; sets PROXY_PID and points AWS_ENDPOINT_URL at it.
start_delay_proxy() {
    local upstream=$1 rtt_ms=$2 dir=$3 i port
    target/release/examples/delayproxy --upstream "127.0.0.1:$upstream" --rtt-ms "$rtt_ms" >"$dir/proxy.out" 2>"$dir/proxy.log" &
    PROXY_PID=$!
    for ((i = 0; i < 100; i++)); do
        grep -q '^listening' "$dir/proxy.out" && break
        kill -0 "$PROXY_PID" 2>/dev/null || { cat "$dir/proxy.log" >&2; exit 1; }
        sleep 0.1
    done
    port=$(sed -n 's/^listening 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$dir/proxy.out")
    [ -n "$port" ] || { echo "the delay proxy did not start: $(cat "$dir/proxy.log")" >&2; exit 1; }
    export AWS_ENDPOINT_URL=http://127.0.0.1:$port
}

# Stops the delay proxy start_delay_proxy started, if any.
stop_delay_proxy() {
    [ -n "${PROXY_PID:-}" ] || return 0
    kill "$PROXY_PID" 2>/dev/null
    wait "$PROXY_PID" 2>/dev/null
    PROXY_PID=""
}
