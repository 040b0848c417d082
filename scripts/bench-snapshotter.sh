#!/usr/bin/env bash
# The snapshotter's bars, in one run (root; about 4 minutes on a 2-CPU machine):
#
#   scripts/bench-snapshotter.sh     # needs root, bin/lazypull (make build), scripts/deps.sh
#
# Images: the python test image (scripts/build-test-image.sh, Debian bookworm minbase +
# python3, 2 gzip layers) pushed unchanged into a docker-registry on a random loopback port
# (the "original"), converted with `lazypull convert` (bench/python-0:lazy), and 9 variants
# of the converted image that each add one small layer of their own (/etc/lazypull-variant,
# a few KiB; tools/addlayer, then `lazypull convert`, which copies the two lazypull layers
# as they are and converts the new one): 10 distinct lazypull images sharing 2 layers.
#
# 1. Memory of the daemon with 10 images mounted. A `lazypull snapshotter` (fresh root and
#    store) and a private containerd using it (scripts/containerd.sh with
#    CONTAINERD_PROXY_SNAPSHOTTER); for each of the 10 images, one after the other:
#      lazypull pull --plain-http REF
#      ctr run --rm --snapshotter lazypull REF ID python3 -c "print('image N')"
#    then, 5 s after the last container, VmRSS and VmHWM (and RssAnon, RssFile) of the
#    snapshotter process from /proc/PID/status. Bar: VmRSS <= 64 MiB. Where the memory goes:
#    the Go runtime's figures and the top of a heap profile, from the snapshotter's
#    --debug-addr (net/http/pprof) after the reading.
# 2. Cold start of the python image, lazypull against plain containerd. BENCH_N rounds; in
#    each, in alternating order:
#      lazy:  a fresh containerd root and a fresh snapshotter (root and store), then, timed,
#             lazypull pull --plain-http REG/bench/python-0:lazy
#             ctr run --rm --snapshotter lazypull REG/bench/python-0:lazy ID
#      plain: a fresh containerd root (overlayfs snapshotter), then, timed,
#             ctr image pull --plain-http REG/bench/python:orig
#             ctr run --rm REG/bench/python:orig ID
#    Both containers print "hello from python" (the image's command), checked. Daemons are
#    started before the clock starts and are not timed. Bytes fetched are the registry's
#    egress: the sum of http.response.written over the "response completed" lines the
#    registry logged during the timed part (every manifest, config, blob and Range response
#    body, to containerd and to the snapshotter alike), and the snapshotter's own count
#    (fetch.Bytes in STORE/stats.json) beside it. The page cache is not dropped (the
#    registry's blobs are in it for both). Bar: lazypull fetches far fewer bytes (judged as
#    at most a quarter of the plain pull's, medians).
#
# Everything runs in a fresh mktemp -d directory (short, for unix socket paths): the
# registry, the containerds, the snapshotters, the image layouts. Every daemon started is
# stopped by its PID (containerd through scripts/containerd.sh, which also unmounts what is
# left under its directory), and the directory removed, on exit, whatever happened.
#
# Environment:
#   BENCH_N=3            rounds of part 2 (median and min-max are reported)
#   BENCH_PARTS="memory cold"  the parts to run
#   BENCH_RECORD=1       append the report (markdown) to docs/benchmarks.md; default: only print
#   LAZYPULL_TEST_IMAGES where the python test image layout is written (default: the work dir)
#   LAZYPULL_BIN         the lazypull binary to measure (default: bin/lazypull), e.g. one built
#                        from another commit, for a before/after comparison
set -euo pipefail
set -o errtrace

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD

N=${BENCH_N:-3}
parts=${BENCH_PARTS:-memory cold}
record=${BENCH_RECORD:-0}
n_images=10
bar_kib=$((64 * 1024))

log() { echo "bench-snapshotter: $*" >&2; }

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
for p in $parts; do
  case $p in memory | cold) ;; *) die "BENCH_PARTS: unknown part $p (want memory, cold)" ;; esac
done
has_part() { [[ " $parts " == *" $1 "* ]]; }

# The snapshotter running now (one at a time), and every containerd directory started.
sn_pid=""
sn_dir=""
ctd_dirs=()

# stop_ctd DIR: stops the containerd of DIR (its tasks first; it unmounts what is left).
stop_ctd() {
  "$root/scripts/containerd.sh" stop "$1" >>"$work/containerd-stop.log" 2>&1 || log "warning: containerd.sh stop $1 failed"
}

# keeper_pid DIR: the PID of the `lazypull keeper` that the snapshotter with root DIR/root
# started (it holds the layers' FUSE connections across snapshotter restarts), or nothing.
keeper_pid() {
  local p args
  for p in /proc/[0-9]*; do
    args=$(tr '\0' ' ' 2>/dev/null <"$p/cmdline") || continue
    case $args in *" keeper --socket $1/root/keeper.sock "*) echo "${p#/proc/}"; return ;; esac
  done
}

# stop_sn: stops the snapshotter's containerd, then the snapshotter (SIGTERM: it leaves its
# lazy layer mounts to its keeper, which holds their FUSE connections and answers nothing),
# detaches those mounts (`lazypull umount`: umount2 MNT_DETACH; umount(8) would statfs the
# mount first and wait forever for an answer), stops the keeper and removes the directory.
stop_sn() {
  [ -n "$sn_dir" ] || return 0
  local i rc=0 kpid m
  kpid=$(keeper_pid "$sn_dir")
  stop_ctd "$sn_dir/ctd"
  if [ -n "$sn_pid" ]; then
    kill -TERM "$sn_pid" 2>/dev/null || true
    for ((i = 0; i < 300; i++)); do
      kill -0 "$sn_pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$sn_pid" 2>/dev/null; then
      log "lazypull snapshotter (pid $sn_pid) still running 30 s after SIGTERM; SIGKILL"
      kill -KILL "$sn_pid" 2>/dev/null || true
    fi
    wait "$sn_pid" 2>/dev/null || rc=$?
    [ "$rc" -eq 0 ] || log "lazypull snapshotter (pid $sn_pid) exited with status $rc"
  fi
  while read -r m; do
    "$lazypull" umount "$m" 2>>"$work/umount.log" || log "warning: could not unmount $m"
  done < <(awk -v d="$sn_dir/" 'index($2, d) == 1 { print length($2) "\t" $2 }' /proc/self/mounts | sort -rn | cut -f2-)
  if [ -n "$kpid" ]; then
    # It would exit by itself once idle; SIGTERM saves the wait.
    kill -TERM "$kpid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
      kill -0 "$kpid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$kpid" 2>/dev/null; then
      log "lazypull keeper (pid $kpid) still running 10 s after SIGTERM; SIGKILL"
      kill -KILL "$kpid" 2>/dev/null || true
    fi
  fi
  rm -rf --one-file-system "$sn_dir"
  sn_pid=""
  sn_dir=""
}

cleanup() {
  local rc=$? d
  trap - ERR
  set +e
  stop_sn
  for d in "${ctd_dirs[@]}"; do [ -d "$d" ] && stop_ctd "$d"; done
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
[ "$(id -u)" -eq 0 ] || die "must run as root (containerd, FUSE mounts)"
for t in go curl jq ctr containerd runc docker-registry skopeo; do
  command -v "$t" >/dev/null || die "$t not found; run scripts/deps.sh (make deps)"
done
lazypull=${LAZYPULL_BIN:-$root/bin/lazypull}
[ -x "$lazypull" ] || die "$lazypull not found; run make build"
[ -e /dev/fuse ] || die "/dev/fuse missing: this machine cannot mount FUSE"

commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo "an unknown commit")
if [ -n "$(git -C "$root" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
  commit="$commit, with uncommitted changes"
fi

work=$(mktemp -d /tmp/lzb-sn.XXXXXX)
export TMPDIR=$work/tmp
mkdir -p "$TMPDIR"
images=${LAZYPULL_TEST_IMAGES:-$work/images}
ns=bench

now_ns() { date +%s%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", (b - a) / 1e9 }'; }
stats() { # stats FILE COLUMN: median, min, max
  awk -v c="${2:-1}" '{ print $c }' "$1" | sort -g | awk '{ v[NR] = $1 } END {
    m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    printf "%s %s %s\n", m, v[1], v[NR] }'
}
med() { stats "$@" | cut -d' ' -f1; }
fmt_mrange() { # fmt_mrange FILE COLUMN FORMAT: median (min-max)
  local m lo hi
  read -r m lo hi < <(stats "$1" "$2")
  # shellcheck disable=SC2059 # the format is the argument
  printf "$3 ($3-$3)" "$m" "$lo" "$hi"
}
mb() { awk -v b="$1" 'BEGIN { printf "%.2f", b / 1e6 }'; }
mb_mrange() { # mb_mrange FILE COLUMN: median (min-max) of byte counts, in MB
  local m lo hi
  read -r m lo hi < <(stats "$1" "$2")
  if [ "$lo" = "$hi" ]; then echo "$(mb "$m") MB"; else echo "$(mb "$m") ($(mb "$lo")-$(mb "$hi")) MB"; fi
}
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; } # KiB -> MiB
proc_kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }

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
reg_log=$work/registry/registry.log

# egress_since OFFSET: "requests bytes" the registry logged as completed after byte OFFSET of
# its log. Responses are logged as they complete, a moment after the client has the bytes.
egress_since() {
  sleep 1
  tail -c +$(($1 + 1)) "$reg_log" | awk '/msg="response completed"/ {
    n++
    for (i = 1; i <= NF; i++) if ($i ~ /^http\.response\.written=/) { sub(/^[^=]*=/, "", $i); b += $i }
  } END { printf "%d %d\n", n, b }'
}

step "build the python test image (cached) and tools/addlayer"
cur_log=$work/build-test-image.log
"$root/scripts/build-test-image.sh" "$images" >"$cur_log" 2>&1
cur_log=$work/addlayer-build.log
go build -o "$work/addlayer" ./tools/addlayer >"$cur_log" 2>&1

step "push the original, convert it, and make $((n_images - 1)) variants"
orig=$reg/bench/python:orig
cur_log=$work/push.log
skopeo copy --quiet --dest-tls-verify=false "oci:$images/python:python" "docker://$orig" >"$cur_log" 2>&1
cur_log=$work/convert.log
"$lazypull" convert --json "oci:$images/python:python" "oci:$work/lazy:python" >"$cur_log" 2>&1
refs=()
for ((i = 0; i < n_images; i++)); do
  ref=$reg/bench/python-$i:lazy
  if [ "$i" -eq 0 ]; then
    "$lazypull" convert --json "oci:$work/lazy:python" "$ref" >>"$cur_log" 2>&1
  else
    mkdir -p "$work/layer-$i/etc"
    { echo "variant $i"; head -c 3000 /dev/urandom | base64; } >"$work/layer-$i/etc/lazypull-variant"
    "$work/addlayer" -src "$work/lazy:python" -dst "$work/variants:python-$i" "$work/layer-$i" >>"$cur_log" 2>&1
    "$lazypull" convert --json "oci:$work/variants:python-$i" "$ref" >>"$cur_log" 2>&1
  fi
  refs+=("$ref")
done
accept='application/vnd.oci.image.manifest.v1+json'
manifest() { curl -sf -H "Accept: $accept" "http://$reg/v2/$1/manifests/$2"; }
orig_bytes=$(manifest bench/python orig | jq '[.layers[].size] | add')
lazy_bytes=$(manifest bench/python-0 lazy | jq '[.layers[].size] | add')
[ "$(manifest bench/python-1 lazy | jq '.layers | length')" -eq 3 ] || die "variant 1 does not have 3 layers"

# start_sn NAME [DEBUG]: a lazypull snapshotter with a fresh root and store under $work/NAME
# (with --debug-addr 127.0.0.1:0 if DEBUG), and a fresh containerd of its own using it.
start_sn() {
  sn_dir=$work/$1
  mkdir -p "$sn_dir"
  printf 'root = "%s"\nstore = "%s"\nplain_http = true\nprofile_policy = "referrers"\n' "$sn_dir/root" "$sn_dir/store" >"$sn_dir/config.toml"
  cur_log=$sn_dir/snapshotter.log
  local args=(snapshotter --config "$sn_dir/config.toml" --address "$sn_dir/sn.sock") i
  [ -z "${2:-}" ] || args+=(--debug-addr 127.0.0.1:0)
  "$lazypull" "${args[@]}" >"$cur_log" 2>&1 &
  sn_pid=$!
  for ((i = 0; i < 300; i++)); do
    [ -S "$sn_dir/sn.sock" ] && break
    kill -0 "$sn_pid" 2>/dev/null || die "lazypull snapshotter exited at start"
    sleep 0.1
  done
  [ -S "$sn_dir/sn.sock" ] || die "lazypull snapshotter: no socket after 30 s"
  ctd_dirs+=("$sn_dir/ctd")
  cur_log=$work/containerd-start.log
  CONTAINERD_PROXY_SNAPSHOTTER=$sn_dir/sn.sock "$root/scripts/containerd.sh" start "$sn_dir/ctd" 2>>"$cur_log"
  cur_log=$sn_dir/snapshotter.log
}
ctr_() { ctr --address "$1/containerd.sock" --namespace "$ns" "${@:2}"; }

# ---------------------------------------------------------------------------------------------
if has_part memory; then
  step "memory: $n_images images through one snapshotter"
  start_sn mem debug
  debug_addr=$(sed -n 's/.*msg="serving Go profiles" addr=\([^ ]*\).*/\1/p' "$sn_dir/snapshotter.log" | head -n 1)
  [ -n "$debug_addr" ] || die "the snapshotter did not log its debug address"
  rss_start=$(proc_kib "$sn_pid" VmRSS)
  : >"$work/mem-curve"
  for ((i = 0; i < n_images; i++)); do
    cur_log=$work/mem-run.log
    "$lazypull" pull --address "$sn_dir/ctd/containerd.sock" --snapshotter-address "$sn_dir/sn.sock" --namespace "$ns" --plain-http "${refs[i]}" >"$cur_log" 2>&1
    out=$(ctr_ "$sn_dir/ctd" run --rm --snapshotter lazypull "${refs[i]}" "mem-$i" python3 -c "print('image $i')" 2>"$cur_log")
    [ "$out" = "image $i" ] || die "container of ${refs[i]} printed '$out', want 'image $i'"
    echo "$((i + 1)) $(proc_kib "$sn_pid" VmRSS)" >>"$work/mem-curve"
    log "image $i: VmRSS $(proc_kib "$sn_pid" VmRSS) kB"
  done
  sleep 5
  rss=$(proc_kib "$sn_pid" VmRSS)
  hwm=$(proc_kib "$sn_pid" VmHWM)
  rss_anon=$(proc_kib "$sn_pid" RssAnon)
  rss_file=$(proc_kib "$sn_pid" RssFile)
  threads=$(awk '$1 == "Threads:" { print $2 }' "/proc/$sn_pid/status")
  kpid=$(keeper_pid "$sn_dir")
  pss=$(awk '$1 == "Pss:" { print $2 }' "/proc/$sn_pid/smaps_rollup")
  keeper_rss=- keeper_mib=- keeper_pss=- keeper_pss_mib=-
  if [ -n "$kpid" ]; then
    keeper_rss=$(proc_kib "$kpid" VmRSS)
    keeper_mib=$(mib "$keeper_rss")
    keeper_pss=$(awk '$1 == "Pss:" { print $2 }' "/proc/$kpid/smaps_rollup")
    keeper_pss_mib=$(mib "$keeper_pss")
  fi
  fuse_mounts=$(awk -v d="$sn_dir/" '$3 == "fuse.lazypull" && index($2, d) == 1' /proc/self/mounts | wc -l)
  images_open=$(jq '.images | length' "$sn_dir/store/stats.json")
  chunks_fetched=$(jq '.store.ChunksFetched' "$sn_dir/store/stats.json")
  fetched_bytes=$(jq '.fetch.Bytes' "$sn_dir/store/stats.json")
  curl -sf "http://$debug_addr/debug/pprof/heap?debug=1" >"$work/heap.txt"
  curl -sf -o "$work/heap.pb.gz" "http://$debug_addr/debug/pprof/heap"
  memstat() { awk -v k="$1" '$1 == "#" && $2 == k && $3 == "=" { printf "%.1f", $4 / 1048576; exit }' "$work/heap.txt"; }
  heap_inuse=$(memstat HeapInuse)
  heap_alloc=$(memstat HeapAlloc)
  heap_released=$(memstat HeapReleased)
  go_sys=$(memstat Sys)
  next_gc=$(memstat NextGC)
  go tool pprof -top -sample_index=inuse_space -nodecount=12 "$lazypull" "$work/heap.pb.gz" 2>/dev/null |
    sed -n '/^ *flat/,$p' >"$work/heap-top.txt" || true
  verdict_mem=MISSED
  [ "$rss" -le "$bar_kib" ] && verdict_mem=MET
  log "VmRSS $rss kB, VmHWM $hwm kB (bar $bar_kib kB): $verdict_mem"
  stop_sn
fi

# ---------------------------------------------------------------------------------------------
if has_part cold; then
  : >"$work/cold-lazy"
  : >"$work/cold-plain"
  load_before=$(cut -d' ' -f1-3 /proc/loadavg)
  cold_lazy() { # one lazy round: pull_s run_s total_s requests egress fetch.Bytes chunks
    local r=$1 t0 t1 t2 mark out egress i
    start_sn "cold-lazy-$r"
    mark=$(stat -c %s "$reg_log")
    cur_log=$work/cold-run.log
    t0=$(now_ns)
    "$lazypull" pull --address "$sn_dir/ctd/containerd.sock" --snapshotter-address "$sn_dir/sn.sock" --namespace "$ns" --plain-http "${refs[0]}" >"$cur_log" 2>&1
    t1=$(now_ns)
    out=$(ctr_ "$sn_dir/ctd" run --rm --snapshotter lazypull "${refs[0]}" "cold-lazy-$r" 2>"$cur_log")
    t2=$(now_ns)
    [ "$out" = "hello from python" ] || die "lazy container printed '$out'"
    egress=$(egress_since "$mark")
    # The snapshotter writes its figures every 2 s: wait for a write after the run.
    touch "$work/mark"
    for ((i = 0; i < 60; i++)); do
      [ "$sn_dir/store/stats.json" -nt "$work/mark" ] && break
      sleep 0.1
    done
    echo "$(secs "$t0" "$t1") $(secs "$t1" "$t2") $(secs "$t0" "$t2") $egress" \
      "$(jq '.fetch.Bytes' "$sn_dir/store/stats.json") $(jq '.store.ChunksFetched' "$sn_dir/store/stats.json")" >>"$work/cold-lazy"
    stop_sn
    log "lazy round $r: $(tail -n 1 "$work/cold-lazy")"
  }
  cold_plain() { # one plain round: pull_s run_s total_s requests egress
    local r=$1 t0 t1 t2 mark out egress
    local d=$work/cold-plain-$r
    ctd_dirs+=("$d")
    cur_log=$work/containerd-start.log
    env -u CONTAINERD_PROXY_SNAPSHOTTER "$root/scripts/containerd.sh" start "$d" 2>>"$cur_log"
    mark=$(stat -c %s "$reg_log")
    cur_log=$work/cold-run.log
    t0=$(now_ns)
    ctr_ "$d" image pull --plain-http "$orig" >"$cur_log" 2>&1
    t1=$(now_ns)
    out=$(ctr_ "$d" run --rm "$orig" "cold-plain-$r" 2>"$cur_log")
    t2=$(now_ns)
    [ "$out" = "hello from python" ] || die "plain container printed '$out'"
    egress=$(egress_since "$mark")
    echo "$(secs "$t0" "$t1") $(secs "$t1" "$t2") $(secs "$t0" "$t2") $egress" >>"$work/cold-plain"
    stop_ctd "$d"
    rm -rf --one-file-system "$d"
    log "plain round $r: $(tail -n 1 "$work/cold-plain")"
  }
  for ((r = 1; r <= N; r++)); do
    step "cold start, round $r of $N"
    if ((r % 2)); then cold_lazy "$r"; cold_plain "$r"; else cold_plain "$r"; cold_lazy "$r"; fi
  done
  load_after=$(cut -d' ' -f1-3 /proc/loadavg)
  byte_ratio=$(awk -v a="$(med "$work/cold-lazy" 5)" -v b="$(med "$work/cold-plain" 5)" 'BEGIN { printf "%.3f", a / b }')
  time_ratio=$(awk -v a="$(med "$work/cold-lazy" 3)" -v b="$(med "$work/cold-plain" 3)" 'BEGIN { printf "%.2f", a / b }')
  verdict_cold=MISSED
  awk -v r="$byte_ratio" 'BEGIN { exit !(r <= 0.25) }' && verdict_cold=MET
fi

# ---------------------------------------------------------------------------------------------
cpu=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)
report=$work/report.md
{
  echo
  echo "## scripts/bench-snapshotter.sh, $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo
  echo "Command: \`scripts/bench-snapshotter.sh\` (\`make bench-snapshotter\`; BENCH_N=$N, BENCH_PARTS=\"$parts\"; root);" \
    "the script ran for $SECONDS s."
  echo "Machine: $(nproc) CPUs, ${cpu:-unknown CPU}, $(awk '/^MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)," \
    "Linux $(uname -r)."
  echo "Versions: $("$lazypull" version 2>&1 | head -n 1) (${LAZYPULL_BIN:-bin/lazypull}; the work tree was at $commit when the run started);" \
    "containerd $(dpkg-query -W -f='${Version}' containerd 2>/dev/null || echo '?'), runc $(dpkg-query -W -f='${Version}' runc 2>/dev/null || echo '?')," \
    "docker-registry $(dpkg-query -W -f='${Version}' docker-registry 2>/dev/null || echo '?')."
  echo "Images: the python test image (Debian bookworm minbase + python3): original 2 gzip layers," \
    "$orig_bytes bytes; converted, $lazy_bytes bytes of lazypull layers; $((n_images - 1)) variants of the" \
    "converted image, each with one more small layer (tools/addlayer)."
  if has_part memory; then
    echo
    echo "### Bar: daemon RSS with $n_images images mounted <= 64 MiB: $verdict_mem ($(mib "$rss") MiB)"
    echo
    echo "One \`lazypull snapshotter\` and its containerd; for each of the $n_images images, \`lazypull pull\`, then" \
      "\`ctr run --rm --snapshotter lazypull REF ID python3 -c \"print('image N')\"\`. Read from" \
      "/proc/PID/status of the snapshotter 5 s after the last container exited; it then served" \
      "$fuse_mounts FUSE layer mounts (the 2 shared layers once, and each variant's own layer) for" \
      "$images_open open images, with $threads threads; it had fetched $chunks_fetched chunks" \
      "($(mb "$fetched_bytes") MB from the registry, indexes included)."
    echo
    echo "| | KiB | MiB |"
    echo "|---|---|---|"
    echo "| VmRSS, at start (no image) | $rss_start | $(mib "$rss_start") |"
    echo "| **VmRSS**, $n_images images | **$rss** | **$(mib "$rss")** |"
    echo "| of which RssAnon (Go heap, stacks, runtime) | $rss_anon | $(mib "$rss_anon") |"
    echo "| of which RssFile (the binary's pages) | $rss_file | $(mib "$rss_file") |"
    echo "| VmHWM (peak) | $hwm | $(mib "$hwm") |"
    echo "| for reference: Pss (file pages shared with other processes split among them) | $pss | $(mib "$pss") |"
    echo "| for reference: VmRSS of its \`lazypull keeper\` (holds the FUSE connections; a process of its own) | $keeper_rss | $keeper_mib |"
    echo "| for reference: Pss of the keeper (the same binary: most of its pages are the snapshotter's too) | $keeper_pss | $keeper_pss_mib |"
    echo
    echo "VmRSS after each image (KiB): $(awk '{ printf "%s%s", (NR > 1 ? ", " : ""), $2 }' "$work/mem-curve")."
    echo
    echo "Go runtime (MiB, runtime.MemStats from the heap profile): HeapAlloc $heap_alloc, HeapInuse $heap_inuse," \
      "HeapReleased $heap_released, Sys $go_sys, NextGC $next_gc. Heap profile, in use at the last GC" \
      "(\`go tool pprof -top -sample_index=inuse_space\`):"
    echo
    echo '```'
    cat "$work/heap-top.txt"
    echo '```'
  fi
  if has_part cold; then
    echo
    echo "### Bar: cold \`lazypull pull\` + \`ctr run\` fetches far fewer bytes than \`ctr image pull\` + \`ctr run\` (taken as <= 0.25x): $verdict_cold (${byte_ratio}x the bytes)"
    echo
    echo "Each round: a fresh containerd root (and for lazypull a fresh snapshotter root and store), daemons" \
      "started before the clock; timed: the pull, then \`ctr run --rm\` until the container printed" \
      "\"hello from python\" and exited. Bytes: the registry's egress during the timed part (sum of" \
      "http.response.written in its log: manifests, configs, blobs and Range responses), and lazypull's" \
      "own count (fetch.Bytes: the snapshotter's requests, not containerd's manifest and config). Medians" \
      "of $N rounds (min-max), lazy and plain alternating first; loopback registry; page cache not dropped." \
      "Load average (1, 5, 15 min) before: $load_before; after: $load_after."
    echo
    echo "| | pull, s | run, s | total, s | requests | bytes from the registry | lazypull fetch.Bytes | chunks |"
    echo "|---|---|---|---|---|---|---|---|"
    echo "| \`lazypull pull\` + \`ctr run --snapshotter lazypull\` | $(fmt_mrange "$work/cold-lazy" 1 %s) | $(fmt_mrange "$work/cold-lazy" 2 %s) | **$(fmt_mrange "$work/cold-lazy" 3 %s)** | $(fmt_mrange "$work/cold-lazy" 4 %s) | **$(mb_mrange "$work/cold-lazy" 5)** | $(mb_mrange "$work/cold-lazy" 6) | $(fmt_mrange "$work/cold-lazy" 7 %s) |"
    echo "| \`ctr image pull\` + \`ctr run\` (overlayfs) | $(fmt_mrange "$work/cold-plain" 1 %s) | $(fmt_mrange "$work/cold-plain" 2 %s) | **$(fmt_mrange "$work/cold-plain" 3 %s)** | $(fmt_mrange "$work/cold-plain" 4 %s) | **$(mb_mrange "$work/cold-plain" 5)** | - | - |"
    echo
    echo "lazypull / plain: bytes ${byte_ratio}x (medians), wall clock ${time_ratio}x."
  fi
} >"$report"

echo
cat "$report"
if [ "$record" = 1 ]; then
  cat "$report" >>"$root/docs/benchmarks.md"
  log "appended the report to docs/benchmarks.md"
else
  log "BENCH_RECORD=1 appends this report to docs/benchmarks.md"
fi
