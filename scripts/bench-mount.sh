#!/usr/bin/env bash
# The lazy mount's bars, in one run (root; 4 to 5 minutes on a 2-CPU machine):
#
#   scripts/bench-mount.sh            # needs root, bin/lazypull (make build), scripts/deps.sh
#
# 1. Cold read from the registry: an image with one 1 GiB file of random (incompressible)
#    bytes, built with tools/mkimage and converted into a docker-registry on a random loopback
#    port. Each of BENCH_N rounds mounts the image on a fresh store, drops the page cache and
#    times
#      dd if=MNT/bigfile of=/dev/null bs=1M
#    then drops the page cache again and times
#      curl -s -o /dev/null http://REG/v2/big/blobs/LAYER      (the converted layer blob)
#    and, for reference, curl fetching the same blob in Range requests of the mount's mean
#    request size, one after the other on one connection (what the registry costs per
#    request, without lazypull's work). The mount does more than curl: Range requests, zstd
#    decompression and a sha256 check of every chunk, and writing every chunk to the store.
#    Bar: mount MB/s >= 0.8x curl MB/s (whole blob).
# 2. Reading a file that is complete in the store: once the last round's store holds the
#    whole file (assembled into one object), a new mount opens it through FUSE passthrough.
#    BENCH_N rounds of 4 reads each, interleaved (ABBA), the page cache dropped before each:
#    dd of MNT/bigfile, and dd of the store's object file itself (the same bytes on the same
#    disk; the passthrough backing file); a round's figure is the median of its 4 reads. Then
#    the same with a hot page cache, for reference. Bar: mount >= 0.95x disk.
# 3. Bytes fetched to run `python3 -c 'print(1)'` (chroot into a fresh mount of the python test
#    image, scripts/build-test-image.sh), against the bytes it reads, measured two ways:
#      - the bytes the kernel asked the mount for: the data of every FUSE_READ reply on that
#        mount's connection, from the kernel's fuse_request_send/fuse_request_end tracepoints
#        (a private tracefs instance). This is what the page cache took in: the process's own
#        reads and page faults plus the kernel's read-ahead (1 MiB windows on this mount).
#      - an upper bound: the total size of the distinct regular files it opened or executed
#        (strace -e openat,open,execve after the chroot, plus the ELF interpreter).
#    Fetched is the mount's figures (STORE/stats.json) once written after the run:
#    fetch.Bytes (all response bytes from the registry, the indexes included), store.
#    BytesFetched (compressed chunk bytes) and store.Bytes (the store was empty: the
#    uncompressed bytes of the chunks fetched). Bar: fetched <= 1.2x the bytes read; judged on
#    the uncompressed chunk bytes (like for like), the network bytes given as well.
#
# Everything runs in a fresh mktemp -d directory: the registry (scripts/registry.sh), the
# stores, the mount points. Mounts are stopped with SIGTERM (then `lazypull umount` if still
# mounted), the registry with its script, the tracefs instance removed (and tracefs unmounted
# if this script mounted it), and the directory removed, on exit, whatever happened.
# The page cache is dropped (echo 3 > /proc/sys/vm/drop_caches) before every cold read: that
# slows other work on the machine for a moment.
#
# Environment:
#   BENCH_N=3            rounds of each measure (median and min-max are reported)
#   BENCH_RECORD=1       append the report (markdown) to docs/benchmarks.md; default: only print
#   LAZYPULL_TEST_IMAGES where the python test image layout is written (default: the work dir,
#                        so that tests reading the shared one are not disturbed)
set -euo pipefail
set -o errtrace

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD

N=${BENCH_N:-3}
record=${BENCH_RECORD:-0}
big_bytes=$((1 << 30))

log() { echo "bench-mount: $*" >&2; }

step_name="start"
cur_log=""
work=""
step() { step_name=$*; log "== $*"; }
report_failure() {
  if [ -n "$work" ] && [ -e "$work/.failed" ]; then return; fi
  [ -z "$work" ] || : >"$work/.failed"
  log "FAILED in step '$step_name': $*"
  if [ -n "$cur_log" ] && [ -s "$cur_log" ]; then
    log "last lines of $cur_log:"
    tail -n 25 "$cur_log" >&2
  fi
}
die() { trap - ERR; report_failure "$*"; exit 1; }
on_err() {
  trap - ERR
  report_failure "exit status $1 at line $2: $3"
  exit "$1"
}
trap 'on_err $? $LINENO "$BASH_COMMAND"' ERR

[[ $N =~ ^[1-9][0-9]*$ ]] || die "BENCH_N=$N: want a positive integer"

# The mount running now (one at a time): its PID and mount point.
mount_pid=""
mount_dir=""
tracefs=/sys/kernel/tracing
trace_inst=""
mounted_tracefs=0

stop_mount() {
  [ -n "$mount_pid" ] || return 0
  local i rc=0
  kill -TERM "$mount_pid" 2>/dev/null || true
  for ((i = 0; i < 200; i++)); do
    kill -0 "$mount_pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$mount_pid" 2>/dev/null; then
    log "lazypull mount (pid $mount_pid) still running 20 s after SIGTERM; SIGKILL"
    kill -KILL "$mount_pid" 2>/dev/null || true
  fi
  wait "$mount_pid" 2>/dev/null || rc=$?
  [ "$rc" -eq 0 ] || log "lazypull mount (pid $mount_pid) exited with status $rc"
  if mountpoint -q "$mount_dir" 2>/dev/null; then
    "$root/bin/lazypull" umount "$mount_dir" || umount -l "$mount_dir" || true
  fi
  mount_pid=""
  mount_dir=""
}

cleanup() {
  local rc=$?
  trap - ERR
  set +e
  stop_mount
  if [ -n "$trace_inst" ] && [ -d "$trace_inst" ]; then
    echo 0 >"$trace_inst/tracing_on"
    echo 0 >"$trace_inst/events/fuse/enable" 2>/dev/null
    rmdir "$trace_inst"
  fi
  [ "$mounted_tracefs" -eq 0 ] || umount "$tracefs"
  if [ -n "$work" ] && [ -d "$work" ]; then
    "$root/scripts/registry.sh" stop "$work/registry"
    if awk -v w="$work/" 'index($2, w) == 1 { f = 1 } END { exit !f }' /proc/self/mounts; then
      log "warning: mounts left under $work; not removing it"
    else
      rm -rf --one-file-system "$work"
    fi
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "check prerequisites"
[ "$(id -u)" -eq 0 ] || die "must run as root (FUSE mounts, chroot, drop_caches, tracefs)"
for t in go curl docker-registry dd chroot mountpoint; do
  command -v "$t" >/dev/null || die "$t not found; run scripts/deps.sh (make deps)"
done
[ -x "$root/bin/lazypull" ] || die "bin/lazypull not found; run make build"
lazypull=$root/bin/lazypull
need=()
command -v strace >/dev/null || need+=(strace)
command -v jq >/dev/null || need+=(jq)
command -v readelf >/dev/null || need+=(binutils)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get -qq install -y --no-install-recommends "${need[@]}" >/dev/null 2>&1 ||
    { apt-get -qq update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get -qq install -y --no-install-recommends "${need[@]}" >/dev/null; } ||
    die "could not install ${need[*]}"
fi

# The tree as the run starts (bin/lazypull is taken as it is: build it from this tree).
commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo "an unknown commit")
if [ -n "$(git -C "$root" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
  commit="$commit, with uncommitted changes"
fi

work=$(mktemp -d /tmp/lazypull-bench-mount.XXXXXX)
export TMPDIR=$work/tmp
mkdir -p "$TMPDIR"
images=${LAZYPULL_TEST_IMAGES:-$work/images}
hz=$(getconf CLK_TCK)

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
now_ns() { date +%s%N; }
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
rchar() { awk '$1 == "rchar:" { print $2 }' "/proc/$1/io"; }

# start_mount REF STORE MNT LOG: lazypull mount in the background; waits for the mount and
# for its first stats.json (written once the images are open).
start_mount() {
  local ref=$1 store=$2 mnt=$3 mlog=$4 i
  mkdir -p "$store" "$mnt"
  rm -f "$store/stats.json"
  cur_log=$mlog
  "$lazypull" mount --plain-http --store "$store" "$ref" "$mnt" >"$mlog" 2>&1 &
  mount_pid=$!
  mount_dir=$mnt
  for ((i = 0; i < 300; i++)); do
    if mountpoint -q "$mnt" && [ -s "$store/stats.json" ]; then return 0; fi
    kill -0 "$mount_pid" 2>/dev/null || die "lazypull mount exited before mounting"
    sleep 0.1
  done
  die "lazypull mount: $mnt not mounted (or no stats.json) after 30 s"
}

# wait_stats STORE MARKER: waits until the mount wrote stats.json after MARKER, twice (so that
# the background store writers of the chunks fetched before MARKER have finished).
wait_stats() {
  local store=$1 marker=$2 i
  for ((i = 0; i < 60; i++)); do
    [ "$store/stats.json" -nt "$marker" ] && break
    sleep 0.1
  done
  [ "$store/stats.json" -nt "$marker" ] || die "no stats.json written after the run in 6 s"
  touch "$marker"
  for ((i = 0; i < 60; i++)); do
    [ "$store/stats.json" -nt "$marker" ] && return 0
    sleep 0.1
  done
  die "no second stats.json written after the run in 6 s"
}

# timed_dd FILE: reads FILE with dd bs=1M; prints "seconds bytes".
timed_dd() {
  local t0 t1 bytes
  t0=$(now_ns)
  dd if="$1" of=/dev/null bs=1M 2>"$work/dd.err"
  t1=$(now_ns)
  bytes=$(awk '/bytes/ { print $1; exit }' "$work/dd.err")
  awk -v a="$t0" -v b="$t1" -v n="$bytes" 'BEGIN { printf "%.3f %d\n", (b - a) / 1e9, n }'
}

# stats FILE [COLUMN]: "median min max" of a column of numbers (default 1).
stats() {
  awk -v c="${2:-1}" '{ print $c }' "$1" | sort -g | awk '{ v[NR] = $1 } END {
    m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    printf "%s %s %s\n", m, v[1], v[NR] }'
}
med() { stats "$@" | cut -d' ' -f1; }
# fmt_mrange FILE COLUMN PRINTF: "median (min-max)" formatted with PRINTF.
fmt_mrange() {
  local m lo hi
  read -r m lo hi < <(stats "$1" "$2")
  # shellcheck disable=SC2059 # the format is the argument
  printf "$3 ($3-$3)" "$m" "$lo" "$hi"
}
mbps() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.1f", b / 1e6 / s }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
ge() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a >= b) }'; }

step "start a registry on a random loopback port"
reg=""
for _ in 1 2 3 4 5; do
  port=$((20000 + RANDOM % 20000))
  if "$root/scripts/registry.sh" start "$work/registry" "127.0.0.1:$port" 2>>"$work/registry-start.log"; then
    reg=127.0.0.1:$port
    break
  fi
done
[ -n "$reg" ] || { cur_log=$work/registry-start.log; die "could not start a registry (5 ports tried)"; }
reg_pid=$(cat "$work/registry/registry.pid")

step "build tools/mkimage"
cur_log=$work/mkimage-build.log
go build -o "$work/mkimage" ./tools/mkimage >"$cur_log" 2>&1

step "make the 1 GiB image (random bytes; mkimage, gzip level 1)"
rootfs=$work/big-rootfs
mkdir -p "$rootfs"/{etc,tmp,usr/bin,var/lib/data}
echo big >"$rootfs/etc/hostname"
head -c "$big_bytes" /dev/urandom >"$rootfs/bigfile"
big_sha=$(sha256sum "$rootfs/bigfile" | cut -d' ' -f1)
cur_log=$work/mkimage.log
"$work/mkimage" -out "$work/big-oci" -tag big -gzip-level 1 -cmd '["/bigfile"]' "$rootfs" >"$cur_log" 2>&1
rm -rf "$rootfs"

step "convert it into the registry"
cur_log=$work/convert-big.log
t0=$(now_ns)
"$lazypull" convert --json "oci:$work/big-oci:big" "$reg/big:lazy" >"$cur_log" 2>&1
convert_big_s=$(awk -v a="$t0" -v b="$(now_ns)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')
rm -rf "$work/big-oci"
accept='application/vnd.oci.image.manifest.v1+json'
manifest() { curl -sf -H "Accept: $accept" "http://$reg/v2/$1/manifests/$2"; }
manifest big lazy >"$work/big-manifest.json" || die "cannot get the manifest of $reg/big:lazy"
[ "$(jq '.layers | length' "$work/big-manifest.json")" -eq 1 ] || die "the converted image has more than one layer"
blob=$(jq -r '.layers[0].digest' "$work/big-manifest.json")
blob_bytes=$(jq -r '.layers[0].size' "$work/big-manifest.json")
blob_type=$(jq -r '.layers[0].mediaType' "$work/big-manifest.json")
log "layer $blob: $blob_bytes bytes ($blob_type); conversion took $convert_big_s s"

# curl_blob OUT: GET of the whole layer blob; appends "seconds MB/s curl_MB/s registry_CPU_s".
curl_blob() {
  local r0 r1 t0 t1 out code got speed s
  r0=$(ticks "$reg_pid")
  t0=$(now_ns)
  out=$(curl -s -o /dev/null -w '%{http_code} %{size_download} %{speed_download}' "http://$reg/v2/big/blobs/$blob")
  t1=$(now_ns)
  r1=$(ticks "$reg_pid")
  read -r code got speed <<<"$out"
  if [ "$code" != 200 ] || [ "$got" != "$blob_bytes" ]; then
    die "curl: HTTP $code, $got bytes (want 200, $blob_bytes)"
  fi
  s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')
  echo "$s $(mbps "$blob_bytes" "$s") $(awk -v s="$speed" 'BEGIN { printf "%.1f", s / 1e6 }')" \
    "$(awk -v d=$((r1 - r0)) -v hz="$hz" 'BEGIN { printf "%.2f", d / hz }')" >>"$1"
}

# curl_ranges OUT: the whole blob again, in Range requests of range_size bytes, one after the
# other over one keep-alive connection (one curl process, a config of one URL per range);
# appends "seconds MB/s registry_CPU_s".
range_cfg=$work/ranges.cfg
curl_ranges() {
  local r0 r1 t0 t1 got s
  r0=$(ticks "$reg_pid")
  t0=$(now_ns)
  curl -K "$range_cfg" >"$work/ranges.out"
  t1=$(now_ns)
  r1=$(ticks "$reg_pid")
  got=$(awk '{ s += $1 } END { printf "%d", s }' "$work/ranges.out")
  [ "$got" = "$blob_bytes" ] || die "curl of the ranges got $got bytes, want $blob_bytes"
  s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')
  echo "$s $(mbps "$blob_bytes" "$s") $(awk -v d=$((r1 - r0)) -v hz="$hz" 'BEGIN { printf "%.2f", d / hz }')" >>"$1"
}

step "warm up: one untimed curl of the blob (the first read of a file just written is slower on this disk)"
drop_caches
curl_blob "$work/curl-warm"

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
: >"$work/cold-mount"
: >"$work/cold-curl"
: >"$work/cold-ranges"
for ((i = 1; i <= N; i++)); do
  step "cold round $i of $N: dd of bigfile through a fresh mount"
  store=$work/store-cold-$i
  start_mount "$reg/big:lazy" "$store" "$work/mnt-cold-$i" "$work/mount-cold-$i.log"
  base_req=$(jq -r '.fetch.Requests' "$store/stats.json")
  base_bytes=$(jq -r '.fetch.Bytes' "$store/stats.json")
  drop_caches
  c0=$(ticks "$mount_pid")
  r0=$(ticks "$reg_pid")
  read -r dd_s dd_bytes < <(timed_dd "$work/mnt-cold-$i/bigfile")
  c1=$(ticks "$mount_pid")
  r1=$(ticks "$reg_pid")
  [ "$dd_bytes" -eq "$big_bytes" ] || die "dd read $dd_bytes bytes through the mount, want $big_bytes"
  marker=$work/cold-$i.marker
  touch "$marker"
  wait_stats "$store" "$marker"
  req=$(($(jq -r '.fetch.Requests' "$store/stats.json") - base_req))
  req_bytes=$(($(jq -r '.fetch.Bytes' "$store/stats.json") - base_bytes))
  chunks=$(jq -r '.store.ChunksFetched' "$store/stats.json")
  # seconds MB/s lazypull_CPU_s registry_CPU_s requests bytes chunks
  echo "$dd_s $(mbps "$big_bytes" "$dd_s") $(awk -v d=$((c1 - c0)) -v hz="$hz" 'BEGIN { printf "%.2f", d / hz }')" \
    "$(awk -v d=$((r1 - r0)) -v hz="$hz" 'BEGIN { printf "%.2f", d / hz }') $req $req_bytes $chunks" >>"$work/cold-mount"
  log "mount: $dd_s s, $(mbps "$big_bytes" "$dd_s") MB/s; $req requests for $req_bytes bytes"
  if [ "$i" -lt "$N" ]; then
    stop_mount
    rm -rf "$store" "$work/mnt-cold-$i"
  else
    step "wait until the store holds bigfile as one complete object"
    obj=$store/objects/${big_sha:0:2}/$big_sha
    for ((j = 0; j < 1200; j++)); do
      [ -f "$obj" ] && break
      kill -0 "$mount_pid" 2>/dev/null || die "lazypull mount exited"
      sleep 0.1
    done
    [ -f "$obj" ] || die "no complete object $obj 120 s after the read (chunks not assembled)"
    [ "$(stat -c %s "$obj")" -eq "$big_bytes" ] || die "$obj is not $big_bytes bytes"
    stop_mount
  fi
  if [ "$i" -eq 1 ]; then
    # The mount's mean request size, rounded to 64 KiB, for the Range requests curl replays.
    range_size=$(awk -v b="$req_bytes" -v n="$req" 'BEGIN { r = int(b / n / 65536 + 0.5) * 65536; if (r < 65536) r = 65536; print r }')
    : >"$range_cfg"
    for ((off = 0; off < blob_bytes; off += range_size)); do
      [ "$off" -eq 0 ] || echo next >>"$range_cfg"
      printf 'url = "http://%s/v2/big/blobs/%s"\nrange = "%d-%d"\noutput = "/dev/null"\nsilent\nfail\nwrite-out = "%%{size_download}\\n"\n' \
        "$reg" "$blob" "$off" "$((off + range_size - 1))" >>"$range_cfg"
    done
    range_reqs=$(grep -c '^url' "$range_cfg")
  fi

  step "cold round $i of $N: curl the layer blob, whole and in $range_reqs Range requests of $range_size bytes"
  drop_caches
  curl_blob "$work/cold-curl"
  drop_caches
  curl_ranges "$work/cold-ranges"
  log "curl: $(tail -n 1 "$work/cold-curl" | cut -d' ' -f2) MB/s whole, $(tail -n 1 "$work/cold-ranges" | cut -d' ' -f2) MB/s in ranges"
done
# Per round: mount MB/s / curl MB/s, and mount / ranges.
paste -d' ' "$work/cold-mount" "$work/cold-curl" "$work/cold-ranges" |
  awk '{ printf "%.2f %.2f\n", $2 / $9, $2 / $13 }' >"$work/cold-ratio"

step "passthrough: mount the same store again"
mnt=$work/mnt-local
start_mount "$reg/big:lazy" "$store" "$mnt" "$work/mount-local.log"
grep -q 'passthrough=true' "$work/mount-local.log" || die "the mount says the kernel does not offer passthrough"
[ "$(stat -c %d "$(dirname "$obj")")" = "$(stat -c %d "$work")" ] || die "the store object is not on the work dir's file system"
# local_read WHICH: one cold read (caches dropped) of the mount's file or the object; prints
# "seconds bytes_the_mount_process_read".
local_read() {
  local f=$obj p0 p1 s n
  if [ "$1" = mount ]; then f=$mnt/bigfile; fi
  drop_caches
  p0=$(rchar "$mount_pid")
  read -r s n < <(timed_dd "$f")
  p1=$(rchar "$mount_pid")
  [ "$n" -eq "$big_bytes" ] || die "dd read $n bytes of $f, want $big_bytes"
  echo "$s $((p1 - p0))"
}
step "local: one untimed cold read of the object (its first read since it was written)"
local_read disk >/dev/null
: >"$work/local-cold"
for ((i = 1; i <= N; i++)); do
  step "local round $i of $N: 4 cold reads each of MNT/bigfile and of the store object, interleaved"
  if ((i % 2)); then order="mount disk disk mount mount disk disk mount"; else order="disk mount mount disk disk mount mount disk"; fi
  : >"$work/round-mount"
  : >"$work/round-disk"
  pread=0
  for w in $order; do
    read -r s p < <(local_read "$w")
    echo "$s" >>"$work/round-$w"
    if [ "$w" = mount ]; then pread=$((pread + p)); fi
  done
  ms=$(med "$work/round-mount")
  ds=$(med "$work/round-disk")
  log "mount $(mbps "$big_bytes" "$ms") MB/s, disk $(mbps "$big_bytes" "$ds") MB/s (medians of 4: $(tr '\n' ' ' <"$work/round-mount")/ $(tr '\n' ' ' <"$work/round-disk")s); the mount process read $pread bytes meanwhile"
  echo "$ms $(mbps "$big_bytes" "$ms") $ds $(mbps "$big_bytes" "$ds") $(ratio "$ds" "$ms") $pread" >>"$work/local-cold"
done
step "local, hot page cache: one read of each to warm up, then $N of each, interleaved"
: >"$work/local-hot"
timed_dd "$mnt/bigfile" >/dev/null
timed_dd "$obj" >/dev/null
for ((i = 1; i <= N; i++)); do
  p0=$(rchar "$mount_pid")
  read -r m_s _ < <(timed_dd "$mnt/bigfile")
  p1=$(rchar "$mount_pid")
  read -r d_s _ < <(timed_dd "$obj")
  echo "$m_s $(mbps "$big_bytes" "$m_s") $d_s $(mbps "$big_bytes" "$d_s") $(ratio "$d_s" "$m_s") $((p1 - p0))" >>"$work/local-hot"
done
log "hot: mount $(med "$work/local-hot" 2) MB/s, disk $(med "$work/local-hot" 4) MB/s"
stop_mount
rm -rf "$store" "$work/mnt-cold-$N" "$mnt"
load_after_big=$(cut -d' ' -f1-3 /proc/loadavg)

step "build the python test image (scripts/build-test-image.sh)"
cur_log=$work/build-image.log
"$root/scripts/build-test-image.sh" "$images" >"$cur_log" 2>&1
[ -f "$images/python/index.json" ] || die "no OCI layout at $images/python"

step "convert it into the registry"
cur_log=$work/convert-python.log
"$lazypull" convert --json "oci:$images/python:python" "$reg/python:lazy" >"$cur_log" 2>&1
manifest python lazy >"$work/python-manifest.json" || die "cannot get the manifest of $reg/python:lazy"
py_layers=$(jq '.layers | length' "$work/python-manifest.json")
py_image_bytes=$(jq '[.layers[].size] | add' "$work/python-manifest.json")

step "set up a tracefs instance for the FUSE request tracepoints"
trace_ok=1
if [ ! -d "$tracefs/instances" ]; then
  if mount -t tracefs nodev "$tracefs" 2>/dev/null; then mounted_tracefs=1; fi
fi
if [ -d "$tracefs/instances" ] && [ -d "$tracefs/events/fuse/fuse_request_end" ]; then
  trace_inst=$tracefs/instances/lazypull-bench-mount-$$
  mkdir "$trace_inst"
  echo 8192 >"$trace_inst/buffer_size_kb"
else
  trace_ok=0
  log "no tracefs or no fuse tracepoints (Linux 6.15+): reporting only the strace upper bound"
fi

# open_files STRACE: the paths of the files opened or executed with success after the chroot,
# one a line (relative ones made absolute: chroot(1) changes to /); stdout. Counts opens
# relative to a directory fd other than the cwd, which it cannot place, in $work/skipped.
open_files() {
  awk -v skipped="$work/skipped" '
    /chroot\(/ && / = 0$/ { on = 1; next }
    !on { next }
    /(openat|open|execve)\(/ && !/unfinished/ && / = [0-9]+$/ {
      if ($0 ~ /openat\(/ && $0 !~ /openat\(AT_FDCWD, "/) { skip++; next }
      if (match($0, /"[^"]*"/)) {
        p = substr($0, RSTART + 1, RLENGTH - 2)
        if (p !~ /^\//) p = "/" p
        if (!(p in seen)) { seen[p] = 1; print p }
      }
    }
    END { print skip + 0 > skipped }' "$1"
}

: >"$work/py"
for ((i = 1; i <= N; i++)); do
  step "python round $i of $N: chroot MNT python3 -c 'print(1)' on a fresh store"
  store=$work/store-py-$i
  mnt=$work/mnt-py-$i
  start_mount "$reg/python:lazy" "$store" "$mnt" "$work/mount-py-$i.log"
  base_fetch=$(jq -r '.fetch.Bytes' "$store/stats.json")
  base_req=$(jq -r '.fetch.Requests' "$store/stats.json")
  if [ "$trace_ok" -eq 1 ]; then
    read -r maj min < <(stat -c '%Hd %Ld' "$mnt")
    conn=$(((maj << 20) | min))
    for e in fuse_request_send fuse_request_end; do
      echo "connection == $conn" >"$trace_inst/events/fuse/$e/filter"
      echo 1 >"$trace_inst/events/fuse/$e/enable"
    done
    echo >"$trace_inst/trace"
    echo 1 >"$trace_inst/tracing_on"
  fi
  cur_log=$work/python-$i.out
  strace -f -e trace=openat,open,execve,chroot -o "$work/strace-$i.out" \
    chroot "$mnt" python3 -c 'print(1)' >"$cur_log" 2>&1
  [ "$(cat "$cur_log")" = 1 ] || die "python3 printed '$(cat "$cur_log")', want 1"
  marker=$work/py-$i.marker
  touch "$marker"
  kread=""
  nread=""
  if [ "$trace_ok" -eq 1 ]; then
    echo 0 >"$trace_inst/tracing_on"
    cat "$trace_inst/trace" >"$work/trace-$i.txt"
    echo 0 >"$trace_inst/events/fuse/enable"
    if grep -q 'overrun: [1-9]' "$trace_inst"/per_cpu/cpu*/stats; then
      die "the trace buffer overran; FUSE reads were lost"
    fi
    # A FUSE_READ reply's len is its 16-byte header plus the data.
    read -r nread kread kerr < <(awk '
      function field(name,   j) { for (j = 1; j < NF; j++) if ($j == name) return $(j + 1) }
      /fuse_request_send:/ && /\(FUSE_READ\)/ { r[field("req")] = 1 }
      /fuse_request_end:/ { q = field("req"); if (q in r) { n++; b += field("len") - 16; if (field("error") != 0) e++ } }
      END { print n + 0, b + 0, e + 0 }' "$work/trace-$i.txt")
    [ "$kerr" -eq 0 ] || die "$kerr FUSE_READ requests failed"
  fi
  wait_stats "$store" "$marker"
  cp "$store/stats.json" "$work/stats-py-$i.json"
  s=$work/stats-py-$i.json
  fetch_bytes=$(jq -r '.fetch.Bytes' "$s")
  fetch_req=$(jq -r '.fetch.Requests' "$s")
  chunk_c=$(jq -r '.store.BytesFetched' "$s")
  chunks=$(jq -r '.store.ChunksFetched' "$s")
  chunk_u=$(jq -r '.store.Bytes' "$s")

  # The upper bound, from the mount: after the figures above, as it reads more (stat, readelf).
  open_files "$work/strace-$i.out" >"$work/opened-$i"
  exe=$(chroot "$mnt" readlink -f /usr/bin/python3)
  interp=$(readelf -l "$mnt$exe" | sed -n 's/.*Requesting program interpreter: \(.*\)]$/\1/p')
  [ -z "$interp" ] || echo "$interp" >>"$work/opened-$i"
  mapfile -t opened <"$work/opened-$i"
  read -r nfiles ubytes < <(chroot "$mnt" stat -L -c '%d:%i %s %F' -- "${opened[@]}" 2>/dev/null |
    awk '$3 == "regular" && !($1 in s) { s[$1] = 1; n++; b += $2 } END { print n + 0, b + 0 }')
  skipped=$(cat "$work/skipped")
  log "fetched $fetch_bytes bytes ($((fetch_bytes - base_fetch)) for the run, $((fetch_req - base_req)) requests);" \
    "chunks $chunks: $chunk_c compressed, $chunk_u uncompressed; kernel read ${kread:-?} bytes in ${nread:-?} FUSE_READs;" \
    "$nfiles files opened, $ubytes bytes"
  # fetch_bytes fetch_run fetch_req_run chunks chunk_c chunk_u kread nread nfiles ubytes skipped base_fetch
  echo "$fetch_bytes $((fetch_bytes - base_fetch)) $((fetch_req - base_req)) $chunks $chunk_c $chunk_u" \
    "${kread:-0} ${nread:-0} $nfiles $ubytes $skipped $base_fetch" >>"$work/py"
  stop_mount
  rm -rf "$store" "$mnt"
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

step "report"
cur_log=""
ratio_cold=$(med "$work/cold-ratio" 1)
ratio_ranges=$(med "$work/cold-ratio" 2)
# Registry CPU milliseconds per MiB served: whole blob, curl's ranges, the mount's requests.
mib=$(awk -v b="$blob_bytes" 'BEGIN { print b / 1048576 }')
ms_whole=$(med "$work/cold-curl" 4 | awk -v m="$mib" '{ printf "%.1f", $1 * 1000 / m }')
ms_range=$(med "$work/cold-ranges" 3 | awk -v m="$mib" '{ printf "%.1f", $1 * 1000 / m }')
awk '{ print $4 * 1000 / ($6 / 1048576) }' "$work/cold-mount" >"$work/cold-mount-ms"
ms_mount=$(med "$work/cold-mount-ms" | awk '{ printf "%.1f", $1 }')
local_ratio=$(med "$work/local-cold" 5)
hot_ratio=$(med "$work/local-hot" 5)
verdict_cold=MISSED
ge "$ratio_cold" 0.8 && verdict_cold=MET
verdict_local=MISSED
ge "$local_ratio" 0.95 && verdict_local=MET

awk '{
  # fetch/kread, chunk_c/kread, chunk_u/kread, kread/ubytes, chunk_u/ubytes
  printf "%s %s %s %s %s\n", ($7 ? $1 / $7 : 0), ($7 ? $5 / $7 : 0), ($7 ? $6 / $7 : 0), ($10 ? $7 / $10 : 0), $6 / $10
}' "$work/py" >"$work/py-ratios"
awk -v img="$py_image_bytes" '{ print $1 / img, $2 / img }' "$work/py" >"$work/py-frac"
r_net=$(printf '%.2f' "$(med "$work/py-ratios" 1)")
r_unc=$(printf '%.2f' "$(med "$work/py-ratios" 3)")
r_unc_ub=$(printf '%.2f' "$(med "$work/py-ratios" 5)")
verdict_py=MISSED
if [ "$trace_ok" -eq 1 ]; then
  awk -v a="$r_unc" 'BEGIN { exit !(a <= 1.2) }' && verdict_py=MET
  py_headline="uncompressed chunks ${r_unc}x, network bytes ${r_net}x the bytes the kernel read"
else
  awk -v a="$r_unc_ub" 'BEGIN { exit !(a <= 1.2) }' && verdict_py="MET (against the upper bound only)"
  py_headline="uncompressed chunks ${r_unc_ub}x the size of the files opened (no tracepoints)"
fi

cpu=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)
fs_type=$(findmnt -no FSTYPE -T "$work" 2>/dev/null || stat -f -c %T "$work")
disk=$(df --output=source "$work" | tail -n 1)
pct() { awk -v a="$1" 'BEGIN { printf "%.1f%%", 100 * a }'; }
human() { awk -v b="$1" 'BEGIN { printf "%.2f MB", b / 1e6 }'; }
mr() { # mr FILE COLUMN: median (min-max) of integer byte counts, in MB
  local m lo hi
  read -r m lo hi < <(stats "$1" "$2")
  if [ "$lo" = "$hi" ]; then human "$m"; else printf '%s (%s-%s)' "$(human "$m")" "$(human "$lo")" "$(human "$hi")"; fi
}
mri() { # mri FILE COLUMN: median (min-max) of integers
  local m lo hi
  read -r m lo hi < <(stats "$1" "$2")
  if [ "$lo" = "$hi" ]; then echo "$m"; else echo "$m ($lo-$hi)"; fi
}

report=$work/report.md
{
  echo
  echo "## scripts/bench-mount.sh, $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo
  echo "Command: \`scripts/bench-mount.sh\` (BENCH_N=$N; root); the script ran for $SECONDS s."
  echo "Machine: $(nproc) CPUs, ${cpu:-unknown CPU}, Linux $(uname -r); work dir, stores and registry on" \
    "$fs_type ($disk), the same disk."
  echo "Versions: $("$lazypull" version 2>&1 | head -n 1) (bin/lazypull; the work tree was at $commit when the run started);" \
    "registry: Debian's docker-registry $(dpkg-query -W -f='${Version}' docker-registry 2>/dev/null || echo '(version unknown)'); curl $(curl --version | awk 'NR == 1 { print $2 }')."
  echo "Load average (1, 5, 15 min) at the start: $load_before; after the 1 GiB parts: $load_after_big; at the end: $load_after."
  echo "Medians of $N rounds, (min-max). MB = 10^6 bytes. Each cold read follows \`sync; echo 3 > /proc/sys/vm/drop_caches\`."
  echo
  echo "### Bar: cold read through the mount >= 0.8x curl of the same blob: $verdict_cold (${ratio_cold}x)"
  echo
  echo "Image: one layer, a 1 GiB file of random bytes and a few directories (tools/mkimage), converted" \
    "with \`lazypull convert\` into the loopback registry in $convert_big_s s: layer blob $blob_bytes bytes ($blob_type)."
  echo "Mount: a fresh store, \`lazypull mount\`, then \`dd if=MNT/bigfile of=/dev/null bs=1M\`, wall clock" \
    "over 2^30 bytes. It fetches the chunks with HTTP Range requests ($(mri "$work/cold-mount" 5) of them, for" \
    "$(mri "$work/cold-mount" 6) bytes, $(mri "$work/cold-mount" 7) chunks), decompresses each zstd frame," \
    "checks its sha256 and has it written to the store; curl only moves bytes. curl: \`curl -s -o /dev/null" \
    "http://REG/v2/big/blobs/$blob\`, wall clock of the process over the blob's bytes (and curl's own" \
    "\`%{speed_download}\`); the bar is against this. For reference, curl again fetching the whole blob in" \
    "$range_reqs Range requests of $range_size bytes (the mount's mean request size, rounded to 64 KiB)," \
    "one after the other over one keep-alive connection. Each round: the mount, then curl, then the" \
    "ranges, each after dropping the caches; one untimed curl before the rounds."
  echo
  echo "| reader | seconds | MB/s | reader CPU s | registry CPU s | registry CPU per MiB |"
  echo "|---|---|---|---|---|---|"
  echo "| lazy mount, dd of bigfile (2^30 bytes) | $(fmt_mrange "$work/cold-mount" 1 %s) | $(fmt_mrange "$work/cold-mount" 2 %s) | $(med "$work/cold-mount" 3) (lazypull mount) | $(med "$work/cold-mount" 4) | $ms_mount ms |"
  echo "| curl, the layer blob ($blob_bytes bytes) | $(fmt_mrange "$work/cold-curl" 1 %s) | $(fmt_mrange "$work/cold-curl" 2 %s) (curl says $(med "$work/cold-curl" 3)) | - | $(med "$work/cold-curl" 4) | $ms_whole ms |"
  echo "| curl, the same in $range_reqs Range requests (reference) | $(fmt_mrange "$work/cold-ranges" 1 %s) | $(fmt_mrange "$work/cold-ranges" 2 %s) | - | $(med "$work/cold-ranges" 3) | $ms_range ms |"
  echo
  echo "Mount / curl of the whole blob: **$(fmt_mrange "$work/cold-ratio" 1 %s)x** (the bar); mount / curl in" \
    "Range requests of the same size: $(fmt_mrange "$work/cold-ratio" 2 %s)x."
  echo
  if [ "$verdict_cold" = MISSED ]; then
    echo "**The bar is missed** on this run: the mount reads at ${ratio_cold}x curl's rate. The registry" \
      "spends $ms_range ms of CPU per MiB it serves in Range requests of $range_size bytes, against" \
      "$ms_whole ms per MiB of the whole blob in one GET: fetched in requests of the size the mount makes," \
      "the blob comes at $(med "$work/cold-ranges" 2) MB/s even to curl, which does nothing with the bytes, and the mount" \
      "reaches ${ratio_ranges}x that. The registry and lazypull share the $(nproc) CPUs: during the" \
      "mount's read they used $(med "$work/cold-mount" 4) and $(med "$work/cold-mount" 3) CPU seconds" \
      "in $(med "$work/cold-mount" 1) s of wall clock (medians)."
    echo
  fi
  echo "### Bar: sequential read of a fully local file through the mount >= 0.95x local disk: $verdict_local (${local_ratio}x)"
  echo
  echo "After round $N above the store holds bigfile as one complete object (its name checked to be the" \
    "sha256 of the bytes written); a new \`lazypull mount\` of the same store (its log says passthrough=true)" \
    "opens it through FUSE passthrough, with that object as the backing file. Compared: \`dd\` of" \
    "MNT/bigfile, and \`dd\` of the object file itself (the same bytes on the same disk). Cold: after one" \
    "untimed read of the object, $N rounds of eight reads, mount, disk, disk, mount, mount, disk, disk," \
    "mount (disk first in even rounds), each after dropping the caches; a round's time for each is the" \
    "median of its four reads, to damp the outliers of single cold reads." \
    "Hot: $N interleaved reads of each without dropping the caches, after one read of each." \
    "\"Mount process read\" is the growth of the lazypull process's rchar during the reads through the" \
    "mount (summed over a round's four): with passthrough the data never passes through it."
  echo
  echo "| | mount, MB/s | disk (store object), MB/s | mount / disk | mount process read |"
  echo "|---|---|---|---|---|"
  echo "| cold (page cache dropped) | $(fmt_mrange "$work/local-cold" 2 %s) | $(fmt_mrange "$work/local-cold" 4 %s) | **$(fmt_mrange "$work/local-cold" 5 %s)** | $(mri "$work/local-cold" 6) bytes |"
  echo "| hot (in the page cache), for reference | $(fmt_mrange "$work/local-hot" 2 %s) | $(fmt_mrange "$work/local-hot" 4 %s) | $(fmt_mrange "$work/local-hot" 5 %s) | $(mri "$work/local-hot" 6) bytes |"
  echo
  if [ "$verdict_local" = MISSED ]; then
    echo "**The bar is missed** on this run: the mount reads at ${local_ratio}x the disk's rate."
    echo
  fi
  echo "### Bar: bytes fetched for \`python3 -c 'print(1)'\` <= 1.2x the bytes it reads: $verdict_py ($py_headline)"
  echo
  echo "Image: the python test image (scripts/build-test-image.sh, Debian bookworm minbase + python3)," \
    "converted into the registry: $py_layers layers, $py_image_bytes bytes of lazypull layer blobs." \
    "Each round: a fresh store, \`lazypull mount\`, \`chroot MNT python3 -c 'print(1)'\` under strace, then" \
    "the mount's STORE/stats.json once written twice after the run."
  echo
  echo "- Fetched: \`fetch.Bytes\`, every response byte from the registry since the mount started (the" \
    "manifest, config and the layers' indexes at mount time included; the part after mounting is" \
    "the run); \`store.BytesFetched\`, the compressed chunk bytes; \`store.Bytes\`, what the store holds" \
    "afterwards: the chunks uncompressed, the store having been empty."
  if [ "$trace_ok" -eq 1 ]; then
    echo "- Read, tight: the data bytes of every FUSE_READ reply on the mount's connection, from the" \
      "kernel's \`fuse:fuse_request_send\`/\`fuse:fuse_request_end\` tracepoints (reply length less its" \
      "16-byte header). That is what the kernel asked the mount for: the process's read() calls and" \
      "mmap page faults plus the kernel's read-ahead (1 MiB on this mount), so more than the" \
      "process itself touches; a file opened again once complete in the store would be read" \
      "through passthrough, outside this count (its bytes were fetched by the first open)."
  fi
  echo "- Read, upper bound: the total size of the distinct regular files python3 opened or executed" \
    "with success after the chroot (\`strace -f -e trace=openat,open,execve,chroot\`; stat in the mount)," \
    "plus its ELF interpreter, which the kernel opens without a syscall of the process; opens" \
    "relative to another directory fd, which could not be placed: $(med "$work/py" 11)."
  echo
  echo "| what | bytes |"
  echo "|---|---|"
  echo "| fetched from the registry (\`fetch.Bytes\`), in all | $(mr "$work/py" 1) |"
  echo "| of which at mount time (manifest, config, indexes) | $(mr "$work/py" 12) |"
  echo "| of which for the run | $(mr "$work/py" 2) in $(mri "$work/py" 3) requests |"
  echo "| chunks fetched, compressed (\`store.BytesFetched\`) | $(mr "$work/py" 5), $(mri "$work/py" 4) chunks |"
  echo "| chunks fetched, uncompressed (\`store.Bytes\` after the run) | $(mr "$work/py" 6) |"
  if [ "$trace_ok" -eq 1 ]; then
    echo "| read: kernel FUSE_READ replies | $(mr "$work/py" 7) in $(mri "$work/py" 8) requests |"
  fi
  echo "| read, upper bound: files opened | $(mr "$work/py" 10) in $(mri "$work/py" 9) files |"
  echo "| image, lazypull layer blobs | $(human "$py_image_bytes") |"
  echo
  echo "| ratio | value |"
  echo "|---|---|"
  if [ "$trace_ok" -eq 1 ]; then
    echo "| uncompressed chunks / kernel reads (the bar) | **$(fmt_mrange "$work/py-ratios" 3 %.2f)x** |"
    echo "| fetched from the registry, in all / kernel reads | $(fmt_mrange "$work/py-ratios" 1 %.2f)x |"
    echo "| compressed chunks / kernel reads | $(fmt_mrange "$work/py-ratios" 2 %.2f)x |"
    echo "| kernel reads / files opened | $(fmt_mrange "$work/py-ratios" 4 %.2f)x |"
  fi
  echo "| uncompressed chunks / files opened | $(fmt_mrange "$work/py-ratios" 5 %.2f)x |"
  echo "| fraction of the image fetched, in all | $(pct "$(med "$work/py-frac" 1)") |"
  echo "| fraction of the image fetched for the run | $(pct "$(med "$work/py-frac" 2)") |"
  echo
  if [ "$verdict_py" = MISSED ]; then
    echo "**The bar is missed** on this run."
    echo
  fi
} >"$report"

echo
echo "cold read:  curl $(med "$work/cold-curl" 2) MB/s, mount $(med "$work/cold-mount" 2) MB/s: ${ratio_cold}x (bar >= 0.8: $verdict_cold);" \
  "curl in $range_reqs ranges $(med "$work/cold-ranges" 2) MB/s"
echo "local read: mount $(med "$work/local-cold" 2) MB/s, disk $(med "$work/local-cold" 4) MB/s: ${local_ratio}x (bar >= 0.95: $verdict_local); hot ${hot_ratio}x"
echo "python:     $py_headline (bar <= 1.2: $verdict_py)"
echo
cat "$report"
if [ "$record" = 1 ]; then
  cat "$report" >>"$root/docs/benchmarks.md"
  log "appended the report to docs/benchmarks.md"
else
  log "BENCH_RECORD=1 appends this report to docs/benchmarks.md"
fi
