#!/usr/bin/env bash
# `make test`: starts a real registry (docker-registry) and a real containerd on loopback and
# private sockets, builds the Debian test image (cached), runs every Go test with them, and
# stops everything it started. The end-to-end tests fail, not skip, when LAZYPULL_E2E=1 and
# a facility is missing.
#
# Two containerds: every test runs against Debian's containerd 1.6, then the end-to-end tests
# that run containers through containerd (the snapshotter's, CRI's: $containerd_tests below)
# run again against containerd 2.x (bin/tools/containerd2, from scripts/deps.sh), with its own
# config format (version 3) and its own ctr first on PATH. TEST_CONTAINERD_VERSIONS="1.6 2"
# is the default; TEST_CONTAINERD_VERSIONS=2 runs everything against 2.x only.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

# The end-to-end tests that run again on each further containerd version: every test that
# starts a snapshotter with its containerd (startSnapshotter), and those that run images in
# the shared one. TestContainerdTestsListed (test/e2e) fails when a test that starts a
# snapshotter is missing here.
containerd_tests='^(TestSnapshotter|TestCRI|TestBadLabels|TestGVisor|TestAuthRegistry|TestProfileSnapshotterPrefetch|TestConvertedImageRunsInPlainContainerd|TestProfileContainerd|TestProfileVolume|TestProfilePinnedSnapshotter|TestForgedLabelsNotTrusted)'

work=$(mktemp -d /tmp/lazypull-test.XXXXXX)
started=()
cleanup() {
  local d
  for d in "${started[@]}"; do "$root/scripts/containerd.sh" stop "$d" || true; done
  "$root/scripts/registry.sh" stop "$work/registry" || true
  rm -rf "$work"
}
trap cleanup EXIT

port=$(( 15000 + RANDOM % 5000 ))
"$root/scripts/registry.sh" start "$work/registry" "127.0.0.1:$port"
# The OCI layouts are packed again on every run (seconds; the slow part, the layers, is
# cached): into this run's own directory, since a shared one is deleted and rewritten by a
# concurrent run while this one's tests read it.
images=${LAZYPULL_TEST_IMAGES:-$work/images}
"$root/scripts/build-test-image.sh" "$images"

export LAZYPULL_E2E=1
export LAZYPULL_TEST_REGISTRY="127.0.0.1:$port"
export LAZYPULL_TEST_IMAGES="$images"
export LAZYPULL_BIN="$root/bin/lazypull"
# The Go tools scripts/deps.sh installs (crictl).
export PATH="$root/bin/tools:$PATH"

# with_containerd VERSION CMD...: runs CMD with a containerd VERSION of its own: the shared
# one at LAZYPULL_TEST_CONTAINERD, CONTAINERD_VERSION for those the tests start through
# scripts/containerd.sh, and that version's ctr first on PATH.
with_containerd() {
  local v=$1 d=$work/containerd-$1; shift
  mkdir -p "$work/ctr-$v"
  CONTAINERD_VERSION=$v "$root/scripts/containerd.sh" start "$d"
  started+=("$d")
  ln -sfn "$(readlink "$d/ctr")" "$work/ctr-$v/ctr"
  echo "test: containerd $v: $*" >&2
  local t0=$SECONDS
  CONTAINERD_VERSION=$v LAZYPULL_TEST_CONTAINERD="$d/containerd.sock" PATH="$work/ctr-$v:$PATH" "$@"
  echo "test: containerd $v: $((SECONDS - t0)) s" >&2
}

read -r -a versions <<<"${TEST_CONTAINERD_VERSIONS:-1.6 2}"
# TEST_PKGS and TEST_RUN narrow the run while working on something: TEST_RUN=TestMount make test
with_containerd "${versions[0]}" go test -count=1 -timeout 20m ${TEST_VERBOSE:+-v} ${TEST_RUN:+-run "$TEST_RUN"} ${TEST_PKGS:-./...}
for v in "${versions[@]:1}"; do
  case " ${TEST_PKGS:-./...} " in
    *" ./... "* | *" ./test/e2e "* | *" ./test/... "*) ;;
    *) continue ;;
  esac
  with_containerd "$v" go test -count=1 -timeout 20m ${TEST_VERBOSE:+-v} -run "${TEST_RUN:-$containerd_tests}" ./test/e2e
done
# tools/stargz-grpc and tools/soci-grpc are modules of their own, which ./... does not reach.
# TestLazyPullE2E of tools/soci-grpc starts its own registry and containerd (the version of
# CONTAINERD_VERSION, 1.6 here).
if [ -z "${TEST_PKGS:-}" ]; then
  (cd tools/stargz-grpc && go test -count=1 ${TEST_VERBOSE:+-v} ${TEST_RUN:+-run "$TEST_RUN"} ./...)
  (cd tools/soci-grpc && go test -count=1 -timeout 15m ${TEST_VERBOSE:+-v} ${TEST_RUN:+-run "$TEST_RUN"} ./...)
fi
