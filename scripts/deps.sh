#!/usr/bin/env bash
# Installs what lazypull's build, tests and demo need, with apt-get. Idempotent: when every
# package is present it prints nothing and touches nothing.
set -euo pipefail

pkgs=(containerd runc docker-registry fuse3 zstd debootstrap skopeo stargz-snapshotter tar gzip curl iproute2 ca-certificates)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

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
