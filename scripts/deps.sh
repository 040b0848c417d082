#!/usr/bin/env bash
# Installs what lazypull's build, tests and demo need: Debian packages with apt-get, and Go
# tools with `go install` into bin/tools of this repository (crictl, for the CRI tests;
# containerd 2.x with its ctr and runc shim, in bin/tools/containerd2, for the tests against
# containerd 2 beside Debian's 1.6), and containerd-stargz-grpc and soci-grpc built there from
# tools/stargz-grpc and tools/soci-grpc (for lazypull-bench e2e's stargz and soci modes).
# Idempotent: when everything is present it prints nothing and touches nothing.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
tools=$repo/bin/tools

# runsc: gVisor, a second runtime for the tests (through containerd's runc shim; Debian's
# package has no containerd-shim-runsc-v1). pigz: gzip streams of its own kind for the
# gzindex round trips (format/gzindex).
pkgs=(containerd runc runsc docker-registry fuse3 zstd debootstrap skopeo stargz-snapshotter tar gzip pigz curl iproute2 ca-certificates)

# Go tools: binary path under bin/tools, then the module package at the version the tests are
# written for. containerd 2's binaries have a directory of their own, off PATH: containerd
# looks its runc shim up on PATH, so a containerd-shim-runc-v2 of 2.x in bin/tools (which
# scripts/test.sh puts on PATH) would be the shim of Debian's containerd 1.6 too.
# scripts/containerd.sh starts each containerd with its own directory first on PATH.
containerd2=v2.4.2
gotools=(
  "crictl sigs.k8s.io/cri-tools/cmd/crictl@v1.37.0"
  "containerd2/containerd github.com/containerd/containerd/v2/cmd/containerd@$containerd2"
  "containerd2/ctr github.com/containerd/containerd/v2/cmd/ctr@$containerd2"
  "containerd2/containerd-shim-runc-v2 github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$containerd2"
)

# install_gotools: `go install` every Go tool that is missing from bin/tools or is another
# version than the one pinned above (go version -m reads the version built into a binary).
install_gotools() {
  local t bin pkg mod ver
  for t in "${gotools[@]}"; do
    read -r bin pkg <<<"$t"
    mod=${pkg%@*} ver=${pkg##*@}
    if go version -m "$tools/$bin" 2>/dev/null | awk -v v="$ver" '$1 == "mod" && $3 == v { found = 1 } END { exit !found }'; then
      continue
    fi
    echo "deps: go install $pkg into $(dirname "$tools/$bin") (a few minutes the first time)"
    mkdir -p "$(dirname "$tools/$bin")"
    GOBIN=$(dirname "$tools/$bin") go install "$pkg" || { echo "deps: go install $mod failed" >&2; exit 1; }
  done
}

# build_tool DIR NAME: bin/tools/NAME from tools/DIR, a module of its own (the library it runs
# and its dependencies stay out of lazypull's go.mod): containerd-stargz-grpc from
# tools/stargz-grpc, soci-grpc from tools/soci-grpc. Built again only when its sources or the
# Go version change: the key of the build sits beside it.
build_tool() {
  local src=$repo/tools/$1 out=$tools/$2 key f
  key=$( (go version; cat "$src/go.mod" "$src/go.sum"
    for f in "$src"/*.go; do case $f in *_test.go) ;; *) cat "$f" ;; esac; done) | sha256sum | cut -c1-16)
  if [ -x "$out" ] && [ "$(cat "$out.key" 2>/dev/null || true)" = "$key" ]; then
    return 0
  fi
  echo "deps: go build $2 (tools/$1) into $tools (a few minutes the first time)"
  mkdir -p "$tools"
  (cd "$src" && go build -o "$out.tmp" .) || { rm -f "$out.tmp"; echo "deps: build of tools/$1 failed" >&2; exit 1; }
  mv "$out.tmp" "$out"
  echo "$key" >"$out.key"
}

build_tools() {
  build_tool stargz-grpc containerd-stargz-grpc
  build_tool soci-grpc soci-grpc
}

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  install_gotools
  build_tools
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "deps: missing packages ${missing[*]}; run as root to install them" >&2
  exit 1
fi
echo "deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# The Debian packages start their services (containerd, docker-registry) on install; lazypull's
# scripts run their own instances with their own sockets and roots, so keep the packaged ones
# from starting at all.
policy=/usr/sbin/policy-rc.d
had_policy=0; [ -e "$policy" ] && had_policy=1
if [ $had_policy -eq 0 ]; then printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; fi
trap '[ $had_policy -eq 0 ] && rm -f "$policy"' EXIT
apt-get -qq update >/dev/null
apt-get -qq install -y --no-install-recommends "${missing[@]}" >/dev/null
install_gotools
build_tools
