#!/usr/bin/env bash
# Builds the images of `lazypull-bench e2e`: one shared Debian bookworm minbase layer (debootstrap)
# and, per application, one layer of what `apt-get install --no-install-recommends` adds on top
# of it (an overlayfs upper dir, real whiteouts), packed by tools/mkimage into an OCI layout
# OUTDIR/APP (tag APP) with gzip layers, the way real images are made: base + app.
#
#   scripts/build-bench-images.sh OUTDIR APP...      # APP: python python-v2 node gcc postgres jdk big ml
#
# python-v2 is the next version of python, for the image-update scenario: the same base layer,
# and its app layer built again from the same base with a few packages added (python3-yaml,
# python3-six: bookworm carries one version of a package, so "upgraded" here means "added or
# changed", not a newer version of the same package) and a few of the app's files changed.
#
# Every image's Cmd prints a readiness line on stdout (see the apps table below); the harness
# waits for it. Needs root and the packages of scripts/deps.sh. The mirror is read at run time
# from the URIs: line of /etc/apt/sources.list.d/debian.sources.
#
# Cached under ${LAZYPULL_BENCH_CACHE:-/var/cache/lazypull-bench}: the base is keyed by the hash
# of what builds it (lib-build.sh, the suite, build_base), each app layer by the base's key and
# the hash of its own definition (packages, Cmd, setup, build_app), so that adding or changing
# one app rebuilds that app only. The packed layouts are kept in OUTDIR with the app's key and
# packed again only when it changes. A separate cache root from
# scripts/build-test-image.sh's, so that neither ever removes what the other's users read.
set -euo pipefail

usage() { echo "usage: $0 OUTDIR APP... (APP: python python-v2 node gcc postgres jdk big ml)" >&2; exit 2; }
[ $# -ge 2 ] || usage
[ "$(id -u)" -eq 0 ] || { echo "build-bench-images: must run as root (debootstrap, mount, chroot)" >&2; exit 1; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
out=$1; shift
suite=bookworm
cache_root=${LAZYPULL_BENCH_CACHE:-/var/cache/lazypull-bench}

log() { echo "build-bench-images: $*" >&2; }

# The apps: packages to install, the image's Cmd (JSON), and an optional setup run in the
# chroot after the install. Each Cmd prints its readiness line (the harness's table has it).
declare -A pkgs cmds setups
# python runs a small app of a few files in /app (as an app image would), so that python-v2
# has app files to change.
pkgs[python]="python3"
cmds[python]='["python3","/app/main.py"]'
# The app's files that python-v2 keeps as they are.
python_kept='cat >/app/settings.py <<"EOF"
NAME = "python"
DATA = "/app/data"
EOF
printf "{\"greeting\": \"hello\"}\n" >/app/data/messages.json'
setups[python]='mkdir -p /app/data
cat >/app/main.py <<"EOF"
import json, os, greet, settings
with open(os.path.join(settings.DATA, "messages.json")) as f:
    messages = json.load(f)
print(greet.hello(messages["greeting"], settings.NAME))
EOF
cat >/app/greet.py <<"EOF"
def hello(greeting, name):
    return greeting + " from " + name
EOF
'"$python_kept"
# v2: two packages added, main.py and greet.py changed, a YAML file added, settings.py and
# messages.json unchanged.
pkgs[python-v2]="python3 python3-yaml python3-six"
cmds[python-v2]='["python3","/app/main.py"]'
setups[python-v2]='mkdir -p /app/data
cat >/app/main.py <<"EOF"
import json, os, yaml, greet, settings
with open(os.path.join(settings.DATA, "messages.json")) as f:
    messages = json.load(f)
with open(os.path.join(settings.DATA, "release.yaml")) as f:
    release = yaml.safe_load(f)
print(greet.hello(messages["greeting"], settings.NAME, release["version"]))
EOF
cat >/app/greet.py <<"EOF"
import six
def hello(greeting, name, version):
    return six.text_type(greeting + " from " + name + " " + version)
EOF
'"$python_kept"'
printf "version: v2\nchanges: [yaml, six]\n" >/app/data/release.yaml'
pkgs[node]="nodejs"
cmds[node]='["node","-e","console.log(\"hello from node\")"]'
pkgs[gcc]="gcc libc6-dev"
cmds[gcc]='["sh","-c","gcc -O1 -o /tmp/hello /hello.c && /tmp/hello"]'
setups[gcc]='printf "#include <stdio.h>\nint main(void) { puts(\"hello from gcc\"); return 0; }\n" >/hello.c'
# The server as the postgres image runs it, on a cluster made at build time (the official image
# makes it on first start; its initdb would time the disk, not the image). No TCP listener.
pkgs[postgres]="postgresql-15"
cmds[postgres]='["sh","-c","exec runuser -u postgres -- /usr/lib/postgresql/15/bin/postgres -D /var/lib/postgresql/data -c listen_addresses= -c unix_socket_directories=/tmp 2>&1"]'
setups[postgres]='mkdir -p /var/lib/postgresql/data && chown postgres:postgres /var/lib/postgresql/data && runuser -u postgres -- /usr/lib/postgresql/15/bin/initdb --no-sync -D /var/lib/postgresql/data >/dev/null'
pkgs[jdk]="openjdk-17-jdk-headless"
cmds[jdk]='["java","-cp","/opt/hello","Hello"]'
setups[jdk]='mkdir -p /opt/hello && printf "public class Hello { public static void main(String[] a) { System.out.println(\"hello from java\"); } }\n" >/opt/hello/Hello.java && javac -d /opt/hello /opt/hello/Hello.java'
# Over 1 GiB uncompressed: a C/C++ toolchain with LLVM and clang, running one small command.
pkgs[big]="clang-14 llvm-14-dev lld-14 g++ gfortran libboost-all-dev"
cmds[big]='["sh","-c","clang-14 --version >/dev/null && echo hello from big"]'

# An ML-sized image (opt-in): python3 with numpy and a 3 GiB weights file of generated
# (incompressible, like real weights) bytes, of which the start reads 1.5 GiB: the first
# GiB in order, 16 MiB at a time (as a loader reads the first tensors), then 128 ranges of
# 4 MiB at scattered offsets through np.memmap; ready once they are loaded and summed.
pkgs[ml]="python3 python3-numpy"
cmds[ml]='["python3","/app/load.py"]'
setups[ml]='mkdir -p /app /models
python3 - <<"EOF"
import numpy as np
rng = np.random.default_rng(0)
with open("/models/weights.bin", "wb") as f:
    for _ in range(48):
        f.write(rng.bytes(64 << 20))
EOF
cat >/app/load.py <<"EOF"
import os, numpy as np
W, MiB = "/models/weights.bin", 1 << 20
size = os.path.getsize(W)
total = 0
with open(W, "rb", buffering=0) as f:
    buf = bytearray(16 * MiB)
    for _ in range(64):
        n = f.readinto(buf)
        total += int(np.frombuffer(buf, dtype=np.uint64)[: n // 8].sum(dtype=np.uint64))
m = np.memmap(W, dtype=np.uint8, mode="r")
rng = np.random.default_rng(1)
for o in rng.integers(1024 * MiB // 4096, (size - 4 * MiB) // 4096, size=128):
    o = int(o) * 4096
    total += int(m[o : o + 4 * MiB].view(np.uint64).sum(dtype=np.uint64))
print("weights loaded", total % 1000003, flush=True)
EOF'

for app in "$@"; do
  [ -n "${pkgs[$app]:-}" ] || { log "unknown app $app"; usage; }
done

# The mounts, their cleanup and the mirror: scripts/lib-build.sh.
# shellcheck source=scripts/lib-build.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib-build.sh"

build_base() { # -> $cache_root/base-$base_key
  local url t0=$SECONDS
  url=$(mirror)
  work=$(mktemp -d "$cache_root/build.XXXXXX")
  log "debootstrap --variant=minbase $suite from $url (takes a few minutes)"
  if ! debootstrap --variant=minbase "$suite" "$work/base" "$url" >"$work/debootstrap.log" 2>&1; then
    tail -n 30 "$work/debootstrap.log" >&2
    log "debootstrap failed"
    exit 1
  fi
  # As the Debian images on registries: an empty /dev, no .debs, no apt lists.
  find "$work/base/dev" -mindepth 1 -delete
  rm -rf "$work/base/var/cache/apt/archives/"*.deb "$work/base/var/lib/apt/lists/"*
  mv "$work/base" "$cache_root/base-$base_key"
  rm -rf --one-file-system "$work"
  work=""
  log "base built in $((SECONDS - t0)) s"
}

build_app() { # build_app APP KEY -> $cache_root/APP-KEY (an overlayfs upper dir over the base)
  local app=$1 key=$2 base=$cache_root/base-$base_key t0=$SECONDS
  work=$(mktemp -d "$cache_root/build.XXXXXX")
  mkdir -p "$work/upper" "$work/ovlwork" "$work/merged"
  # redirect_dir/metacopy off: every change fully materialized in the upper dir, a layer.
  domount "$work/merged" -t overlay overlay \
    -o "lowerdir=$base,upperdir=$work/upper,workdir=$work/ovlwork,redirect_dir=off,metacopy=off"
  domount "$work/merged/proc" -t proc proc
  domount "$work/merged/dev" --bind /dev
  # Packages' maintainer scripts must not start services in the chroot.
  printf '#!/bin/sh\nexit 101\n' >"$work/merged/usr/sbin/policy-rc.d"
  chmod +x "$work/merged/usr/sbin/policy-rc.d"
  local apt=(chroot "$work/merged" env DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8
    apt-get -o Acquire::Check-Valid-Until=false -o APT::Sandbox::User=root)
  log "$app: apt-get install ${pkgs[$app]}"
  # shellcheck disable=SC2086 # the package list is split on purpose
  if ! { "${apt[@]}" update && "${apt[@]}" install -y --no-install-recommends ${pkgs[$app]}; } \
      >"$work/apt.log" 2>&1; then
    tail -n 30 "$work/apt.log" >&2
    log "$app: apt-get failed"
    exit 1
  fi
  "${apt[@]}" clean
  if [ -n "${setups[$app]:-}" ]; then
    chroot "$work/merged" env LC_ALL=C.UTF-8 sh -ec "${setups[$app]}" || { log "$app: setup failed"; exit 1; }
  fi
  rm -rf "$work/merged/var/lib/apt/lists/"* "$work/merged/usr/sbin/policy-rc.d"
  undo_mounts
  rm -rf "$work/ovlwork"
  rmdir "$work/merged"
  rm -rf "${cache_root:?}/$app-$key"
  mv "$work/upper" "$cache_root/$app-$key"
  cp "$work/apt.log" "$cache_root/$app-$key.apt.log"
  rm -rf --one-file-system "$work"
  work=""
  log "$app: built in $((SECONDS - t0)) s ($(du -sh "$cache_root/$app-$key" | cut -f1))"
}

# The keys: what builds the base, then per app the base's key and what builds the app.
base_key=$( { cat "$(dirname "${BASH_SOURCE[0]}")/lib-build.sh"; echo "$suite"; declare -f build_base; } |
  sha256sum | cut -c1-16)
app_key() { # app_key APP
  { echo "$base_key"; declare -f build_app; printf '%s\n' "${pkgs[$1]}" "${cmds[$1]}" "${setups[$1]:-}"; } |
    sha256sum | cut -c1-16
}

mkdir -p "$cache_root" "$out"
out=$(cd "$out" && pwd)
# One builder per cache at a time; a second caller waits, then reuses the result.
exec 9>"$cache_root/.lock"
flock 9
for d in "$cache_root"/build.*; do # leftovers of interrupted builds
  [ -d "$d" ] || continue
  if awk -v w="$d/" 'index($2, w) == 1 { found = 1 } END { exit !found }' /proc/self/mounts; then
    log "warning: $d has mounts; leaving it"
  else
    rm -rf --one-file-system "$d"
  fi
done
[ -d "$cache_root/base-$base_key" ] || build_base
for app in "$@"; do
  key=$(app_key "$app")
  [ -d "$cache_root/$app-$key" ] || build_app "$app" "$key"
  if [ "$(cat "$out/$app/.key" 2>/dev/null || true)" = "$key" ]; then
    log "$app: using packed $out/$app"
    continue
  fi
  # Packed beside it, then swapped in: a bench of another checkout (another key) may be
  # reading OUTDIR/APP, and the flock covers builders only; the swap keeps its window short.
  log "$app: packing into $out/$app"
  rm -rf "${out:?}/.$app.new"
  (cd "$repo" && go run ./tools/mkimage -out "$out/.$app.new" -tag "$app" -cmd "${cmds[$app]}" \
    "$cache_root/base-$base_key" "$cache_root/$app-$key")
  echo "$key" >"$out/.$app.new/.key"
  rm -rf "${out:?}/$app"
  mv "$out/.$app.new" "$out/$app"
done
flock -u 9
