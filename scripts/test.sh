#!/usr/bin/env bash
# `make test`: starts a real registry (docker-registry) and a real containerd on loopback and
# private sockets, builds the Debian test image (cached), runs every Go test with them, and
# stops everything it started. The end-to-end tests fail, not skip, when LAZYPULL_E2E=1 and
# a facility is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

work=$(mktemp -d /tmp/lazypull-test.XXXXXX)
cleanup() {
  "$root/scripts/containerd.sh" stop "$work/containerd" || true
  "$root/scripts/registry.sh" stop "$work/registry" || true
  rm -rf "$work"
}
trap cleanup EXIT

port=$(( 15000 + RANDOM % 5000 ))
"$root/scripts/registry.sh" start "$work/registry" "127.0.0.1:$port"
"$root/scripts/containerd.sh" start "$work/containerd"
# The OCI layouts are packed again on every run (seconds; the slow part, the layers, is
# cached): into this run's own directory, since a shared one is deleted and rewritten by a
# concurrent run while this one's tests read it.
images=${LAZYPULL_TEST_IMAGES:-$work/images}
"$root/scripts/build-test-image.sh" "$images"

export LAZYPULL_E2E=1
export LAZYPULL_TEST_REGISTRY="127.0.0.1:$port"
export LAZYPULL_TEST_CONTAINERD="$work/containerd/containerd.sock"
export LAZYPULL_TEST_IMAGES="$images"
export LAZYPULL_BIN="$root/bin/lazypull"
# The Go tools scripts/deps.sh installs (crictl).
export PATH="$root/bin/tools:$PATH"
# TEST_PKGS and TEST_RUN narrow the run while working on something: TEST_RUN=TestMount make test
go test -count=1 -timeout 20m ${TEST_VERBOSE:+-v} ${TEST_RUN:+-run "$TEST_RUN"} ${TEST_PKGS:-./...}
# tools/stargz-grpc is a module of its own, which ./... does not reach.
if [ -z "${TEST_PKGS:-}" ]; then
  (cd tools/stargz-grpc && go test -count=1 ${TEST_VERBOSE:+-v} ${TEST_RUN:+-run "$TEST_RUN"} ./...)
fi
