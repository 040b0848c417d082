#!/usr/bin/env bash
# Builds the OCI image that lazypull's tests and benchmarks use: a Debian bookworm minbase rootfs
# (layer 1) plus python3 installed on top of it through an overlay mount (layer 2, an overlayfs
# upper dir with real whiteouts), written as an OCI layout at OUTDIR/python, tag "python".
#
#   scripts/build-test-image.sh OUTDIR
#
# Needs root (debootstrap, mount, chroot) and the packages from scripts/deps.sh. The two layer
# directories are cached under ${LAZYPULL_CACHE:-/var/cache/lazypull-test}, keyed by the hash of
# this script, so only the first run downloads and installs anything; later runs only pack the
# layers (a few seconds). Delete the cache dir to force a rebuild.
set -euo pipefail

usage() { echo "usage: $0 OUTDIR" >&2; exit 2; }
[ $# -eq 1 ] || usage
[ "$(id -u)" -eq 0 ] || { echo "build-test-image: must run as root (debootstrap, mount, chroot)" >&2; exit 1; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
out=$1
suite=bookworm
cache_root=${LAZYPULL_CACHE:-/var/cache/lazypull-test}
key=$(cat "${BASH_SOURCE[0]}" "$(dirname "${BASH_SOURCE[0]}")/lib-build.sh" | sha256sum | cut -c1-16)
cache=$cache_root/python-$key
base=$cache/base
upper=$cache/upper

log() { echo "build-test-image: $*" >&2; }

# The mounts, their cleanup and the mirror: scripts/lib-build.sh.
# shellcheck source=scripts/lib-build.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib-build.sh"

build_layers() {
  local url
  url=$(mirror)

  mkdir -p "$cache_root"
  work=$(mktemp -d "$cache_root/build.XXXXXX")
  log "debootstrap --variant=minbase $suite from $url (takes a few minutes)"
  local t0=$SECONDS
  if ! debootstrap --variant=minbase "$suite" "$work/base" "$url" >"$work/debootstrap.log" 2>&1; then
    tail -n 30 "$work/debootstrap.log" >&2
    [ -f "$work/base/debootstrap/debootstrap.log" ] && tail -n 30 "$work/base/debootstrap/debootstrap.log" >&2
    log "debootstrap failed"
    exit 1
  fi
  # Like the Debian images on registries: an empty /dev (the runtime mounts its own). The
  # resolv.conf debootstrap copied from the host stays: apt in the chroot needs it.
  find "$work/base/dev" -mindepth 1 -delete
  # Also like them: no downloaded .debs and no apt lists in the base (~80 MB otherwise, which
  # would make every image here unrealistically heavy at the bottom).
  rm -rf "$work/base/var/cache/apt/archives/"*.deb "$work/base/var/lib/apt/lists/"*
  log "debootstrap done in $((SECONDS - t0)) s"

  mkdir -p "$work/upper" "$work/ovlwork" "$work/merged"
  # redirect_dir/metacopy off: every change must be fully materialized in the upper dir, since
  # it becomes a self-contained image layer.
  domount "$work/merged" -t overlay overlay \
    -o "lowerdir=$work/base,upperdir=$work/upper,workdir=$work/ovlwork,redirect_dir=off,metacopy=off"
  domount "$work/merged/proc" -t proc proc
  domount "$work/merged/dev" --bind /dev

  t0=$SECONDS
  local apt=(chroot "$work/merged" env DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8
    apt-get -o Acquire::Check-Valid-Until=false -o APT::Sandbox::User=root)
  log "apt-get install python3"
  if ! { "${apt[@]}" update && "${apt[@]}" install -y --no-install-recommends python3; } \
      >"$work/apt.log" 2>&1; then
    tail -n 30 "$work/apt.log" >&2
    log "apt-get failed"
    exit 1
  fi
  "${apt[@]}" clean
  rm -rf "$work/merged/var/lib/apt/lists/"*
  log "python3 installed in $((SECONDS - t0)) s"
  undo_mounts

  rm -rf "$work/ovlwork"
  rmdir "$work/merged"

  rm -rf "$cache"
  mkdir -p "$cache"
  mv "$work/base" "$base"
  mv "$work/upper" "$upper"
  cp "$work/debootstrap.log" "$work/apt.log" "$cache/"
  touch "$cache/complete"
  rm -rf --one-file-system "$work"
  work=""
}

t_start=$SECONDS
mkdir -p "$cache_root"
# One builder per cache at a time; a second caller waits and then reuses the result.
exec 9>"$cache_root/.lock"
flock 9
if [ -f "$cache/complete" ]; then
  log "using cached layers in $cache"
else
  # Leftovers of interrupted builds and layers cached by older versions of this script.
  for d in "$cache_root"/build.* "$cache_root"/python-*; do
    if [ ! -d "$d" ] || [ "$d" = "$cache" ]; then continue; fi
    if awk -v w="$d/" 'index($2, w) == 1 { found = 1 } END { exit !found }' /proc/self/mounts; then
      log "warning: $d has mounts; leaving it"
      continue
    fi
    log "removing stale $d"
    rm -rf --one-file-system "$d"
  done
  build_layers
fi
flock -u 9

mkdir -p "$out"
out=$(cd "$out" && pwd)
rm -rf "$out/python"
log "packing layers into $out/python"
(cd "$repo" && go run ./tools/mkimage -out "$out/python" -tag python \
  -cmd '["python3","-c","print(\"hello from python\")"]' "$base" "$upper")

# The same files flattened into one layer: a different image (other layer blobs) whose
# files are byte for byte those of python, for tests of dedup by content across images.
rm -rf "$out/python-flat"
flat=$(mktemp -d "${TMPDIR:-/tmp}/lazypull-flat.XXXXXX")
mounts+=("$flat")
mount -t overlay overlay -o "ro,lowerdir=$upper:$base" "$flat"
log "packing the flattened image into $out/python-flat"
(cd "$repo" && go run ./tools/mkimage -out "$out/python-flat" -tag python-flat \
  -cmd '["python3","-c","print(\"hello from python\")"]' "$flat")
umount "$flat"
unset 'mounts[-1]'
rmdir "$flat"

log "done in $((SECONDS - t_start)) s"
echo "$out/python"
