#!/usr/bin/env bash
# A folder of many objects through the mount: `ls`, `ls -l`, `find`, `du` of a directory of
# BIGDIR_OBJECTS (default 100,000) objects created through the S3 API, on a fresh mount each,
# then lookups of single names. Prints each step's time, the entries it saw, the S3 requests it
# made (counted by Garage, from its /metrics) and the daemon's peak RSS (VmHWM); fails if a
# listing misses or repeats a name, if the peak RSS exceeds BIGDIR_MAX_RSS_MIB (64), or if the
# lookup of a name in the folder (the first one too: a window listing from the name on, then
# the name's metadata) costs more than two requests.
#
#   scripts/bigdir.sh
#
# Environment: BIGDIR_OBJECTS (100000), BIGDIR_MAX_RSS_MIB (64), BIGDIR_GARAGE (a directory
# for the Garage it starts; kept, with its objects, so that a second run skips the creation;
# default: a temporary one, removed at the end), BIGDIR_MOUNT_OPTS (extra mount options).
# Creating 100,000 objects takes 1–3 minutes (examples/rawbench.rs, 32 PUTs in flight).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/common.sh

N=${BIGDIR_OBJECTS:-100000}
MAX_RSS=${BIGDIR_MAX_RSS_MIB:-64}
read -r -a MOUNT_OPTS <<<"${BIGDIR_MOUNT_OPTS:-}"

ensure_apt_packages
cargo build --release --bin s3mount --example rawbench
scripts/local-s3.sh install
BIN=$(pwd)/target/release/s3mount
RAW=$(pwd)/target/release/examples/rawbench

WORK=$(mktemp -d "${TMPDIR:-/tmp}/s3mount-bigdir.XXXXXX")
GARAGE=${BIGDIR_GARAGE:-$WORK/garage}
MNT=$WORK/mnt
DPID=""

unmount_daemon() { stop_daemon 60 || true; }
cleanup() {
    set +e
    unmount_daemon
    mountpoint -q "$MNT" 2>/dev/null && fusermount3 -uz "$MNT"
    if [ -z "${BIGDIR_GARAGE:-}" ]; then scripts/local-s3.sh stop "$GARAGE"; fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -f "$GARAGE/env" ] && scripts/local-s3.sh start "$GARAGE" >/dev/null 2>&1; then
    :
else
    scripts/local-s3.sh start "$GARAGE" "$(free_port_base 3960)" >/dev/null
fi
source "$GARAGE/env"
ADMIN=$(sed -n 's/^api_bind_addr = "127.0.0.1:\([0-9]*\)"/\1/p' "$GARAGE/garage.toml" | tail -n 1)

DIR=bigdir/d$N/
have=$("$RAW" list "$DIR" | sed -n 's/.* entries=\([0-9]*\).*/\1/p')
if [ "$have" != "$N" ]; then
    echo "== creating $N objects under $DIR (32 PUTs in flight)"
    "$RAW" --jobs 32 put-many "$DIR" "$N" 64
fi

now() { date +%s.%N; }
calc() { awk "BEGIN { printf \"%.${2:-1}f\", $1 }"; }
# Garage's S3 request counters, as "Endpoint=count ..." (sorted).
counters() {
    curl -sf "http://127.0.0.1:$ADMIN/metrics" |
        sed -n 's/^api_s3_request_counter{api_endpoint="\([A-Za-z0-9]*\)"} \([0-9]*\)$/\1 \2/p' | sort
}
# The requests made since the counters $1 were taken: "HeadObject=N ListObjectsV2=M ...".
requests_since() {
    join -a 2 -e 0 -o 0,1.2,2.2 <(echo "$1") <(counters) |
        awk '$3 - $2 > 0 { printf "%s%s=%d", sep, $1, $3 - $2; sep = " " }'
}

mount_fg() {
    mkdir -p "$MNT"
    "$BIN" mount "$S3MOUNT_TEST_BUCKET" "$MNT" --prefix bigdir/ --endpoint-url "$AWS_ENDPOINT_URL" \
        --force-path-style --region "$AWS_REGION" --cache-dir "$WORK/cache" --foreground \
        --log-level warn ${MOUNT_OPTS[@]+"${MOUNT_OPTS[@]}"} >>"$WORK/mount.log" 2>&1 &
    DPID=$!
    wait_mounted "bigdir: s3mount" "$WORK/mount.log" || exit 1
}
peak_rss_mib() { awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$DPID/status"; }

FAILED=0
declare -A T RSS REQ SEEN
# step NAME COMMAND...: runs COMMAND (its output is one name or line per entry) on a fresh mount.
step() {
    local name=$1 before t0 t1 out
    shift
    mount_fg
    before=$(counters)
    t0=$(now)
    "$@" >"$WORK/$name.out"
    t1=$(now)
    T[$name]=$(calc "$t1 - $t0" 2)
    RSS[$name]=$(peak_rss_mib)
    REQ[$name]=$(requests_since "$before")
    unmount_daemon
    echo "  $name: ${T[$name]} s, peak RSS ${RSS[$name]} MiB, requests: ${REQ[$name]}"
    if awk "BEGIN { exit !(${RSS[$name]} > $MAX_RSS) }"; then
        echo "bigdir: $name: peak RSS ${RSS[$name]} MiB is above $MAX_RSS MiB" >&2
        FAILED=1
    fi
}
# check NAME EXPECTED: the output of step NAME holds each name of the directory exactly once.
check_names() {
    local name=$1 n dup
    n=$(wc -l <"$WORK/$name.names")
    dup=$(sort "$WORK/$name.names" | uniq -d | wc -l)
    SEEN[$name]=$n
    if [ "$n" != "$N" ] || [ "$dup" != 0 ]; then
        echo "bigdir: $name saw $n names ($dup repeated), expected each of $N once" >&2
        FAILED=1
    fi
}

echo "== $N objects under $DIR; each step on a fresh mount"
step ls ls "$MNT/d$N"
cp "$WORK/ls.out" "$WORK/ls.names"
check_names ls
step ls_l ls -l "$MNT/d$N"
awk 'NR > 1 { print $NF }' "$WORK/ls_l.out" >"$WORK/ls_l.names"
check_names ls_l
bad_size=$(awk 'NR > 1 && $5 != 64' "$WORK/ls_l.out" | wc -l)
[ "$bad_size" = 0 ] || { echo "bigdir: ls -l shows $bad_size sizes other than 64" >&2; FAILED=1; }
step find find "$MNT/d$N" -mindepth 1
sed 's|.*/||' "$WORK/find.out" >"$WORK/find.names"
check_names find
step du du -s --apparent-size --block-size=1 "$MNT/d$N"
du_bytes=$(awk '{ print $1 }' "$WORK/du.out")
[ "$du_bytes" -ge $((N * 64)) ] || { echo "bigdir: du says $du_bytes bytes, expected at least $((N * 64))" >&2; FAILED=1; }
# Lookups on a fresh mount: the folder itself, a first name, then another name (each a window
# listing from the name on and the name's metadata: at most two requests).
mount_fg
stat "$MNT/d$N" >/dev/null
before=$(counters)
[ "$(stat -c %s "$MNT/d$N/$(printf '%06d' $((N / 2)))")" = 64 ] || { echo "bigdir: stat of a name failed" >&2; FAILED=1; }
REQ[lookup1]=$(requests_since "$before")
before=$(counters)
t0=$(now)
[ "$(stat -c %s "$MNT/d$N/$(printf '%06d' $((N / 3)))")" = 64 ] || { echo "bigdir: stat of a name failed" >&2; FAILED=1; }
t1=$(now)
REQ[lookup]=$(requests_since "$before")
T[lookup]=$(calc "$t1 - $t0" 3)
RSS[lookup]=$(peak_rss_mib)
unmount_daemon
echo "  first lookup in the folder: ${REQ[lookup1]}; the next: ${REQ[lookup]}"
for which in lookup1 lookup; do
    lookup_requests=$(awk -v r="${REQ[$which]}" 'BEGIN { n = split(r, a, " "); s = 0; for (i = 1; i <= n; i++) { split(a[i], kv, "="); s += kv[2] } print s }')
    if [ "$lookup_requests" -gt 2 ]; then
        echo "bigdir: the lookup of one name made $lookup_requests requests (${REQ[$which]}), expected at most 2" >&2
        FAILED=1
    fi
done

echo
echo "s3mount $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $N objects, Garage on 127.0.0.1, $(date -u +%F)"
printf '%-8s %9s %12s %10s  %s\n' step seconds entries "RSS MiB" "S3 requests (HeadBucket: the mount's check)"
for s in ls ls_l find du lookup; do
    printf '%-8s %9s %12s %10s  %s\n' "$s" "${T[$s]}" "${SEEN[$s]:--}" "${RSS[$s]}" "${REQ[$s]}"
done
exit "$FAILED"
