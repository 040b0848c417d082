#!/usr/bin/env bash
# `make bench-convert`: lazypull's converter against ctr-remote's eStargz conversion, on the same
# image (the Debian bookworm + python3 test image of scripts/build-test-image.sh), in one run.
#
#   scripts/bench-convert.sh            # needs root, bin/lazypull (make build), scripts/deps.sh
#
# 1. Converter throughput, as uncompressed MB/s (MB = 10^6 bytes; the uncompressed size is the
#    sum of the image's tar streams, i.e. of the sizes behind its diff IDs):
#      lazypull convert oci:SRC:python oci:OUT:lazy                      (layout -> layout)
#      lazypull convert REG/python:src REG/lazy-I:latest                 (registry -> registry)
#      ctr-remote image convert --estargz --oci REG/python:src REG/python:esgz-I
#                                      (containerd content store -> content store, its defaults)
#    and, for reference, ctr-remote with --estargz-compression-level 1 (its default is 9).
#    Each is run once to warm up (the level-1 runs share ctr-remote's), then BENCH_N times
#    (default 3; the level-1 one BENCH_ESGZ_EXTRA_N times, default 1), interleaved; the median and the min-max of the wall-clock time are reported,
#    and the median CPU time of the converter plus the daemon it works through (containerd,
#    or the registry), which other load on the machine disturbs much less. Bar, on the
#    wall-clock medians: lazypull (layout -> layout) >= 2x ctr-remote (its default settings).
# 2. Index vs eStargz TOC, per layer of the same image, with tools/indexsize: lazypull's index
#    payload against the eStargz TOC gzip member (compressed), and the index body against
#    stargz.index.json (uncompressed). Bar: index <= 1/3 of the TOC.
#
# Everything runs in a fresh mktemp -d directory: a docker-registry on a random loopback port
# (scripts/registry.sh) and a private containerd (scripts/containerd.sh). Both are stopped, and
# the directory removed, on exit, whatever happened.
#
# Environment:
#   BENCH_N=3                 timed runs of each converter
#   BENCH_ESGZ_EXTRA_LEVEL=1  the extra ctr-remote compression level measured; empty: skip it
#   BENCH_ESGZ_EXTRA_N=1      timed runs at that level (at most BENCH_N; one keeps the whole
#                             script under ~5 minutes on an idle 2-CPU machine)
#   BENCH_RECORD=1            append the report (markdown) to docs/benchmarks.md; default: only
#                             print it
#   LAZYPULL_TEST_IMAGES      where the test image layout is written (default: the work dir)
set -euo pipefail
set -o errtrace # the ERR trap below fires inside functions too

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD

N=${BENCH_N:-3}
extra_level=${BENCH_ESGZ_EXTRA_LEVEL-1}
extra_n=${BENCH_ESGZ_EXTRA_N:-1}
record=${BENCH_RECORD:-0}

log() { echo "bench-convert: $*" >&2; }

[[ $N =~ ^[1-9][0-9]*$ ]] || die "BENCH_N=$N: want a positive integer"
[[ -z $extra_level || $extra_level =~ ^[1-9]$ ]] || die "BENCH_ESGZ_EXTRA_LEVEL=$extra_level: want 1 to 9, or empty"
[[ $extra_n =~ ^[1-9][0-9]*$ ]] || die "BENCH_ESGZ_EXTRA_N=$extra_n: want a positive integer"
extra_n=$((extra_n < N ? extra_n : N))

# step NAME: what is being done, named in the error if it fails. cur_log: the output of the
# command running now, whose tail is shown on failure.
step_name="start"
cur_log=""
work=""
step() { step_name=$*; log "== $*"; }
# report MSG: says which step failed, how, and the tail of cur_log. A failure inside $(...)
# is reported there, and marked in the work dir, so that the shell waiting for it does not
# report it a second time.
report() {
  if [ -n "$work" ] && [ -e "$work/.failed" ]; then return; fi
  [ -z "$work" ] || : >"$work/.failed"
  log "FAILED in step '$step_name': $*"
  if [ -n "$cur_log" ] && [ -s "$cur_log" ]; then
    log "last lines of $cur_log:"
    tail -n 25 "$cur_log" >&2
  fi
}
die() { trap - ERR; report "$*"; exit 1; }
on_err() { # on_err RC LINE COMMAND
  trap - ERR
  report "exit status $1 at line $2: $3"
  exit "$1"
}
trap 'on_err $? $LINENO "$BASH_COMMAND"' ERR

cleanup() {
  local rc=$?
  trap - ERR
  set +e
  if [ -n "$work" ] && [ -d "$work" ]; then
    "$root/scripts/containerd.sh" stop "$work/containerd"
    "$root/scripts/registry.sh" stop "$work/registry"
    rm -rf --one-file-system "$work"
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "check prerequisites"
[ "$(id -u)" -eq 0 ] || die "must run as root (the test image build and containerd need it)"
for t in ctr ctr-remote skopeo containerd go; do
  command -v "$t" >/dev/null || die "$t not found; run scripts/deps.sh (make deps)"
done
[ -x "$root/bin/lazypull" ] || die "bin/lazypull not found; run make build"
lazypull=$root/bin/lazypull

work=$(mktemp -d /tmp/lazypull-bench.XXXXXX)
images=${LAZYPULL_TEST_IMAGES:-$work/images}

step "start a registry on a random loopback port"
reg=""
for _ in 1 2 3 4 5; do
  port=$((20000 + RANDOM % 20000))
  if "$root/scripts/registry.sh" start "$work/registry" "127.0.0.1:$port"; then
    reg=127.0.0.1:$port
    break
  fi
done
[ -n "$reg" ] || die "could not start a registry (5 ports tried)"

step "start containerd"
"$root/scripts/containerd.sh" start "$work/containerd"
sock=$work/containerd/containerd.sock
ctr_() { ctr --address "$sock" "$@"; }

step "build the test image (scripts/build-test-image.sh)"
cur_log=$work/build-image.log
"$root/scripts/build-test-image.sh" "$images" >"$cur_log" 2>&1
src=$images/python
[ -f "$src/index.json" ] || die "no OCI layout at $src"

step "build tools/indexsize"
cur_log=$work/indexsize-build.log
go build -o "$work/indexsize" ./tools/indexsize >"$cur_log" 2>&1
indexsize=$work/indexsize

step "measure the source image (tools/indexsize: tar stream sizes, checked against the diff IDs)"
cur_log=$work/src-layers.tsv
"$indexsize" -tsv -layout "$src:python" >"$cur_log"
layers=$(wc -l <"$cur_log")
tar_bytes=$(awk -F'\t' '{ s += $5 } END { printf "%d", s }' "$cur_log")
src_blob_bytes=$(awk -F'\t' '{ s += $4 } END { printf "%d", s }' "$cur_log")
[ "$tar_bytes" -gt 0 ] || die "source image has no tar bytes"
log "source: $layers layers, $src_blob_bytes bytes compressed, $tar_bytes bytes uncompressed"

step "push the source image to the registry (skopeo)"
cur_log=$work/skopeo.log
skopeo --insecure-policy copy --dest-tls-verify=false "oci:$src:python" "docker://$reg/python:src" >"$cur_log" 2>&1

step "pull the source image into containerd (ctr image pull)"
cur_log=$work/ctr-pull.log
ctr_ image pull --plain-http "$reg/python:src" >"$cur_log" 2>&1

# daemon_ticks PIDFILE: user+system CPU time of the daemon whose PID is in PIDFILE, in ticks.
hz=$(getconf CLK_TCK)
daemon_ticks() { awk '{ print $14 + $15 }' "/proc/$(cat "$1")/stat"; }

# timed KEY RUN DAEMON CMD...: runs CMD with its output in $work/KEY-RUN.log and, unless RUN
# is "warm", appends "wall cpu daemon_cpu" (seconds) to $work/times-KEY: wall-clock time, the
# user+system CPU time of CMD and its children, and the CPU time DAEMON (a PID file, or -)
# used meanwhile. Prints the wall-clock seconds.
timed() {
  local key=$1 run=$2 daemon=$3 d0=0 d1=0 line
  shift 3
  cur_log=$work/$key-$run.log
  [ "$daemon" = - ] || d0=$(daemon_ticks "$daemon")
  local TIMEFORMAT='%R %U %S'
  { time "$@" >"$cur_log" 2>&1; } 2>"$work/$key-$run.time" || die "'$*' exited with status $?"
  [ "$daemon" = - ] || d1=$(daemon_ticks "$daemon")
  line=$(awk -v d=$((d1 - d0)) -v hz="$hz" '{ printf "%.3f %.3f %.3f\n", $1, $2 + $3, d / hz }' "$work/$key-$run.time")
  [ "$run" = warm ] || echo "$line" >>"$work/times-$key"
  echo "${line%% *}"
}

# The converters. Each run writes to a new destination, so nothing is skipped as already there.
ctd_pid=$work/containerd/containerd.pid
reg_pid=$work/registry/registry.pid
run_oci() { # run_oci RUN
  rm -rf "$work/lazy-oci-$1"
  timed oci "$1" - "$lazypull" convert --json "oci:$src:python" "oci:$work/lazy-oci-$1:lazy"
}
run_reg() { timed reg "$1" "$reg_pid" "$lazypull" convert --json "$reg/python:src" "$reg/lazy-$1:latest"; }
run_esgz() {
  timed esgz "$1" "$ctd_pid" ctr-remote --address "$sock" image convert --estargz --oci \
    "$reg/python:src" "$reg/python:esgz-$1"
}
run_extra() {
  timed extra "$1" "$ctd_pid" ctr-remote --address "$sock" image convert --estargz \
    --estargz-compression-level "$extra_level" --oci "$reg/python:src" "$reg/python:esgz-l$extra_level-$1"
}

step "warm up: each converter once"
t=$(run_oci warm)
log "lazypull oci -> oci: $t s"
t=$(run_reg warm)
log "lazypull registry -> registry: $t s"
t=$(run_esgz warm)
log "ctr-remote --estargz: $t s"
rm -rf "$work/lazy-oci-warm"

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for ((i = 1; i <= N; i++)); do
  step "run $i of $N: lazypull oci -> oci"
  t=$(run_oci "$i")
  log "$t s"
  # Keep the first run's output for the index comparison; the others only take room.
  [ "$i" -eq 1 ] || rm -rf "$work/lazy-oci-$i"
  step "run $i of $N: lazypull registry -> registry"
  t=$(run_reg "$i")
  log "$t s"
  step "run $i of $N: ctr-remote image convert --estargz --oci"
  t=$(run_esgz "$i")
  log "$t s"
  if [ -n "$extra_level" ] && [ "$i" -le "$extra_n" ]; then
    step "run $i of $extra_n: ctr-remote image convert --estargz --estargz-compression-level $extra_level --oci"
    t=$(run_extra "$i")
    log "$t s"
  fi
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

step "check that every lazypull run wrote the same image"
cur_log=""
# --json summaries: {"source":...,"digest":"sha256:<manifest>",...}; logs say digest=..., not "digest":
manifest_of() { grep -o '"digest":"sha256:[0-9a-f]\{64\}"' "$1" | cut -d'"' -f4; }
lazy_digest=$(manifest_of "$work/oci-1.log")
[ -n "$lazy_digest" ] || die "no JSON summary in $work/oci-1.log"
for f in "$work"/oci-[0-9]*.log "$work"/reg-*.log; do
  d=$(manifest_of "$f")
  [ "$d" = "$lazy_digest" ] || die "$(basename "$f" .log) wrote manifest ${d:-(none)}, run 1 wrote $lazy_digest"
done

step "export the eStargz image from containerd (ctr image export)"
cur_log=$work/export.log
ctr_ image export "$work/esgz.tar" "$reg/python:esgz-1" >"$cur_log" 2>&1
mkdir -p "$work/esgz"
tar -C "$work/esgz" -xf "$work/esgz.tar"
rm -f "$work/esgz.tar"

step "index and TOC sizes (tools/indexsize)"
cur_log=$work/lazy-layers.tsv
"$indexsize" -tsv -layout "$work/lazy-oci-1:lazy" >"$cur_log"
cur_log=$work/esgz-layers.tsv
"$indexsize" -tsv -layout "$work/esgz" >"$cur_log"
cur_log=""
[ "$(wc -l <"$work/lazy-layers.tsv")" -eq "$layers" ] || die "lazypull image has $(wc -l <"$work/lazy-layers.tsv") layers, source $layers"
[ "$(wc -l <"$work/esgz-layers.tsv")" -eq "$layers" ] || die "eStargz image has $(wc -l <"$work/esgz-layers.tsv") layers, source $layers"
awk -F'\t' '$3 != "lazypull" { exit 1 }' "$work/lazy-layers.tsv" || die "a layer of the lazypull image is not a lazypull layer"
awk -F'\t' '$3 != "estargz" { exit 1 }' "$work/esgz-layers.tsv" || die "a layer of the converted image is not eStargz"
# The lazypull layers' tar streams are the source's, byte for byte (indexsize checked the diff IDs).
cut -f5 "$work/src-layers.tsv" | cmp -s - <(cut -f5 "$work/lazy-layers.tsv") || die "lazypull tar sizes differ from the source's"

step "report"
# stats KEY COLUMN: "median min max" of that column (1 wall, 2 cpu, 3 daemon cpu) of the runs.
stats() {
  cut -d' ' -f"$2" "$work/times-$1" | sort -g | awk '{ v[NR] = $1 } END {
    m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    printf "%.3f %.3f %.3f\n", m, v[1], v[NR] }'
}
mbps() { awk -v b="$tar_bytes" -v s="$1" 'BEGIN { printf "%.1f", b / 1e6 / s }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
med() { stats "$1" "$2" | cut -d' ' -f1; }
# cpu_med KEY: median over the runs of the converter's CPU seconds plus its daemon's.
cpu_med() {
  awk '{ print $2 + $3 }' "$work/times-$1" | sort -g | awk '{ v[NR] = $1 } END {
    printf "%.3f\n", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

ratio_oci=$(ratio "$(med esgz 1)" "$(med oci 1)")
ratio_reg=$(ratio "$(med esgz 1)" "$(med reg 1)")
ratio_cpu=$(ratio "$(cpu_med esgz)" "$(cpu_med oci)")
verdict_tp=MISSED
awk -v r="$ratio_oci" 'BEGIN { exit !(r >= 2) }' && verdict_tp=MET

# tp_row KEY LABEL: a markdown row. The MB/s range runs from the slowest run to the fastest.
tp_row() {
  local m lo hi
  read -r m lo hi < <(stats "$1" 1)
  printf '| %s | %s (%s-%s) | %s (%s-%s) | %s + %s | %s |\n' "$2" "$m" "$lo" "$hi" \
    "$(mbps "$m")" "$(mbps "$hi")" "$(mbps "$lo")" \
    "$(med "$1" 2)" "$(med "$1" 3)" "$(mbps "$(cpu_med "$1")")"
}

# Index vs TOC, per layer and in total: columns of indexsize -tsv are
# layer digest format blob tar entries chunks meta meta_raw sha256s.
index_table=$(paste "$work/lazy-layers.tsv" "$work/esgz-layers.tsv" | awk -F'\t' '
  function pct(a, b) { return sprintf("%.1f%%", 100 * a / b) }
  {
    printf "| %s | %d / %d | %d / %d | %d | %d | %s | %d | %d | %s | %d / %d |\n",
      $1, $6, $16, $7, $17, $8, $18, pct($8, $18), $9, $19, pct($9, $19), 32 * $10, 32 * $20
    le += $6; ee += $16; lc += $7; ec += $17; lm += $8; em += $18; lr += $9; er += $19
    ls += 32 * $10; es += 32 * $20
  }
  END {
    printf "| all | %d / %d | %d / %d | %d | %d | %s | %d | %d | %s | %d / %d |\n",
      le, ee, lc, ec, lm, em, pct(lm, em), lr, er, pct(lr, er), ls, es
  }')
read -r idx_c toc_c idx_r toc_r < <(paste "$work/lazy-layers.tsv" "$work/esgz-layers.tsv" |
  awk -F'\t' '{ a += $8; b += $18; c += $9; d += $19 } END { print a, b, c, d }')
ratio_c=$(ratio "$idx_c" "$toc_c")
ratio_r=$(ratio "$idx_r" "$toc_r")
verdict_c=MISSED verdict_r=MISSED
awk -v a="$idx_c" -v b="$toc_c" 'BEGIN { exit !(3 * a <= b) }' && verdict_c=MET
awk -v a="$idx_r" -v b="$toc_r" 'BEGIN { exit !(3 * a <= b) }' && verdict_r=MET
worst_layer=$(paste "$work/lazy-layers.tsv" "$work/esgz-layers.tsv" |
  awk -F'\t' '{ r = $8 / $18; if (r > w) w = r } END { printf "%.2f", w }')
floor=$(awk -F'\t' '{ s += 32 * $10 } END { print s }' "$work/lazy-layers.tsv")
floor_pct=$(awk -v f="$floor" -v a="$idx_c" 'BEGIN { printf "%.0f%%", 100 * f / a }')
floor_vs_toc=$(ratio "$floor" "$toc_c")
nonsha_ratio=$(awk -v a="$idx_c" -v b="$toc_c" -v fa="$floor" \
  -v fb="$(awk -F'\t' '{ s += 32 * $10 } END { print s }' "$work/esgz-layers.tsv")" \
  'BEGIN { printf "%.2f", (a - fa) / (b - fb) }')

cpu=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)
commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo "an unknown commit")
if [ -n "$(git -C "$root" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
  commit="$commit, with uncommitted changes"
fi
report=$work/report.md
{
  echo
  echo "## make bench-convert, $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo
  echo "Command: \`make bench-convert\` (scripts/bench-convert.sh, BENCH_N=$N); the script ran for $SECONDS s."
  echo "Machine: $(nproc) CPUs, ${cpu:-unknown CPU}, Linux $(uname -r)."
  echo "Versions: $("$lazypull" version 2>&1 | head -n 1) (bin/lazypull, built from the work tree at $commit); ctr-remote from stargz-snapshotter" \
    "$(dpkg-query -W -f='${Version}' stargz-snapshotter 2>/dev/null || echo '(version unknown)'); $(containerd --version 2>&1 | awk '{ print "containerd", $3 }')."
  echo "Image: the test image of scripts/build-test-image.sh (Debian bookworm minbase + python3)," \
    "$layers gzip layers, $src_blob_bytes bytes compressed, $tar_bytes bytes of tar" \
    "($(awk -v b="$tar_bytes" 'BEGIN { printf "%.1f", b / 1e6 }') MB, the sum of the diff IDs' sizes)."
  echo
  echo "### Bar: converter throughput, lazypull >= 2x ctr-remote: $verdict_tp (${ratio_oci}x)"
  echo
  echo "Wall-clock seconds and uncompressed MB/s (10^6 bytes of tar per second): median of $N runs" \
    "after one warm-up run each, and (min-max); the runs were interleaved. CPU: median user+system" \
    "seconds of the converter process and its children, + those of the daemon it works through" \
    "(containerd for ctr-remote, the registry for registry -> registry), and the MB per CPU-second" \
    "of the two together."
  echo
  echo "| converter | seconds | MB/s | CPU s | MB per CPU-s |"
  echo "|---|---|---|---|---|"
  tp_row oci "lazypull convert, OCI layout -> OCI layout"
  tp_row reg "lazypull convert, registry -> registry (loopback)"
  tp_row esgz "ctr-remote image convert --estargz --oci (content store -> content store)"
  if [ -n "$extra_level" ]; then
    tp_row extra "ctr-remote, same, --estargz-compression-level $extra_level ($extra_n run$([ "$extra_n" -eq 1 ] || echo s))"
  fi
  echo
  echo "Load average (1, 5, 15 min) before the timed runs: $load_before; after: $load_after."
  if awk -v a="${load_before%% *}" -v b="${load_after%% *}" -v n="$(nproc)" 'BEGIN { exit !(a > n / 2 || b > n / 2 + 1) }'; then
    echo "Other work was running on the machine: the wall-clock figures are noisy, the CPU" \
      "figures much less so."
  fi
  echo
  echo "lazypull is ${ratio_oci}x ctr-remote locally (OCI layout against content store) and" \
    "${ratio_reg}x from and to the registry (wall-clock medians); ${ratio_cpu}x in CPU time" \
    "(local conversion, daemons included)."
  if [ -n "$extra_level" ]; then
    echo "ctr-remote's default gzip level is 9; at level $extra_level lazypull is still" \
      "$(ratio "$(med extra 1)" "$(med oci 1)")x, so the gap is not the compression level alone."
  fi
  if [ "$verdict_tp" = MISSED ]; then
    echo "**The bar is missed**: lazypull is below 2x ctr-remote on this run."
  fi
  echo
  echo "### Bar: index <= 1/3 of the eStargz TOC, compressed: $verdict_c (${ratio_c}x); uncompressed: $verdict_r (${ratio_r}x)"
  echo
  echo "Per layer (\`tools/indexsize\`): lazypull index payload against the eStargz TOC gzip member" \
    "(compressed; footers not counted), and the index body against stargz.index.json" \
    "(uncompressed). Entries and chunks are lazypull / eStargz (ctr-remote's default chunk size);" \
    "the sha256 floor is 32 bytes per distinct SHA-256 value the metadata carries."
  echo
  echo "| layer | entries | chunks | index, compressed | TOC, compressed | index/TOC | index body | TOC JSON | body/JSON | sha256 floor |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
  echo "$index_table"
  echo
  if [ "$verdict_c" = MISSED ]; then
    echo "**The compressed bar is missed** (worst layer ${worst_layer}x). Both formats carry a" \
      "SHA-256 per chunk (and per multi-chunk file), 32 bytes of entropy each that no compressor" \
      "removes: they are $floor bytes, ${floor_pct} of lazypull's compressed index and alone" \
      "${floor_vs_toc}x the eStargz TOC, so 1/3 cannot be reached while every chunk is verified" \
      "with a sha256 (and lazypull's 128 KiB average chunks give it more chunks than eStargz's" \
      "default). Everything but the digests is ${nonsha_ratio}x eStargz's."
  fi
  if [ "$verdict_r" = MISSED ]; then
    echo "**The uncompressed bar is missed.**"
  fi
} >"$report"

# The console summary, then the markdown.
echo
echo "throughput (median of $N; uncompressed MB/s of $tar_bytes tar bytes; CPU incl. daemon):"
sum_row() { printf '  %-42s %8s s %7s MB/s  %8s CPU-s\n' "$2" "$(med "$1" 1)" "$(mbps "$(med "$1" 1)")" "$(cpu_med "$1")"; }
sum_row oci "lazypull oci -> oci"
sum_row reg "lazypull registry -> registry"
sum_row esgz "ctr-remote --estargz"
if [ -n "$extra_level" ]; then
  sum_row extra "ctr-remote --estargz (level $extra_level)"
fi
echo "  lazypull / ctr-remote: ${ratio_oci}x wall-clock (bar >= 2x: $verdict_tp), ${ratio_cpu}x CPU"
echo "index vs TOC: compressed $idx_c / $toc_c = ${ratio_c}x (bar <= 0.33: $verdict_c);" \
  "uncompressed $idx_r / $toc_r = ${ratio_r}x ($verdict_r)"
echo
cat "$report"
if [ "$record" = 1 ]; then
  docs=$root/docs/benchmarks.md
  if [ ! -f "$docs" ]; then
    printf '# Benchmarks\n\nRecorded runs, newest last. See the end of each section for the bars.\n' >"$docs"
  fi
  cat "$report" >>"$docs"
  log "appended the report to docs/benchmarks.md"
else
  log "BENCH_RECORD=1 appends this report to docs/benchmarks.md"
fi
