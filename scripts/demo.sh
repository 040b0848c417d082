#!/usr/bin/env bash
# `make demo`: the main job end to end on this machine. Builds a real Debian + python3 image
# (debootstrap, cached), pushes it to a private registry on loopback, converts it with
# `lazypull convert`, and runs the original and the converted image with a private plain
# containerd; then times cold starts of python over an emulated 100 Mbit/s + 20 ms link,
# plain containerd against lazypull (`lazypull-bench e2e`, short form), and says where the chart
# is. Cleans up everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
bin=$root/bin/lazypull

work=$(mktemp -d /tmp/lazypull-demo.XXXXXX)
cleanup() {
  "$root/scripts/containerd.sh" stop "$work/containerd" >/dev/null 2>&1 || true
  "$root/scripts/registry.sh" stop "$work/registry" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
step() { printf '\n== %s\n' "$*"; }

step "starting a registry and containerd on loopback (in $work)"
port=$(( 25000 + RANDOM % 5000 ))
reg=127.0.0.1:$port
"$root/scripts/registry.sh" start "$work/registry" "$reg"
"$root/scripts/containerd.sh" start "$work/containerd"
ctr() { command ctr --address "$work/containerd/containerd.sock" --namespace demo "$@"; }

step "building the Debian bookworm + python3 image (cached after the first run)"
images=${LAZYPULL_TEST_IMAGES:-/var/cache/lazypull-test/images}
"$root/scripts/build-test-image.sh" "$images" >/dev/null
skopeo copy --quiet --dest-tls-verify=false "oci:$images/python:python" "docker://$reg/demo/python:orig"
echo "pushed $reg/demo/python:orig"

step "lazypull convert $reg/demo/python:orig $reg/demo/python:lazy"
"$bin" convert "$reg/demo/python:orig" "$reg/demo/python:lazy"

step "the converted manifest: zstd layers with the index location in their annotations"
skopeo inspect --tls-verify=false --raw "docker://$reg/demo/python:lazy" | python3 -m json.tool | sed -n '1,40p'

step "plain containerd pulls and runs both (overlayfs, runc)"
for tag in orig lazy; do
  t0=$(date +%s.%N)
  ctr image pull --plain-http "$reg/demo/python:$tag" >/dev/null
  t1=$(date +%s.%N)
  out=$(ctr run --rm "$reg/demo/python:$tag" "demo-$tag-$$")
  t2=$(date +%s.%N)
  printf '%-5s pull %5.2fs  run %5.2fs  prints: %s\n' "$tag" "$(awk "BEGIN{print $t1 - $t0}")" "$(awk "BEGIN{print $t2 - $t1}")" "$out"
done

echo "(the lazy pull is quick here because containerd already holds the original's snapshots:
 the converted layers keep the diff IDs, so the chain IDs are the same)"

step "sizes in the registry"
for tag in orig lazy; do
  size=$(skopeo inspect --tls-verify=false --raw "docker://$reg/demo/python:$tag" |
    python3 -c 'import json,sys; m=json.load(sys.stdin); print(sum(l["size"] for l in m["layers"]))')
  printf '%-5s %d bytes of layers\n' "$tag" "$size"
done

# The short form of `lazypull-bench e2e` (make bench-e2e): one image, one link, plain vs lazypull
# without and with a prefetch profile, every start cold. It starts its own registry, link, containerd and snapshotter, and stops
# them; the results stay in bench-results/demo.
step "cold starts over an emulated 100 Mbit/s link with 20 ms round trip: plain containerd vs lazypull"
echo "(the first time, the bench image is built from Debian packages: a few minutes)"
"$root/bin/lazypull-bench" e2e --images python --links 100M/20ms --modes plain,lazypull,lazypull-profile --n 3 --warm 2 \
  --scripts "$root/scripts" --lazypull "$bin" --out "$root/bench-results/demo"
echo
echo "Chart: $root/bench-results/demo/chart.png; report: $root/bench-results/demo/report.html"
