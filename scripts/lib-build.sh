#!/usr/bin/env bash
# Shared by the image build scripts (sourced): the mounts a build makes and their cleanup,
# and the Debian mirror to build from. The sourcing script defines log() and sets work=.
# Mount points made by this run, innermost last; cleanup unmounts them in reverse order, then
# anything else left mounted under the work dir (debootstrap's own /proc, /sys if it died).
mounts=()
work=""
cleanup() {
  local rc=$? i m
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
    umount "${mounts[i]}" 2>/dev/null || umount -l "${mounts[i]}" 2>/dev/null ||
      log "warning: could not unmount ${mounts[i]}"
  done
  mounts=()
  if [ -n "$work" ] && [ -d "$work" ]; then
    while read -r m; do
      umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "warning: could not unmount $m"
    done < <(awk -v w="$work/" 'index($2, w) == 1 { print length($2) "\t" $2 }' /proc/self/mounts |
      sort -rn | cut -f2-)
    # Never delete through a mount that is still there (a bind of the host's /dev, say).
    if awk -v w="$work/" 'index($2, w) == 1 { found = 1 } END { exit !found }' /proc/self/mounts; then
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

domount() { # domount TARGET MOUNT-ARGS...
  local target=$1; shift
  mount "$@" "$target"
  mounts+=("$target")
}

undo_mounts() {
  local i
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount "${mounts[i]}"; done
  mounts=()
}

# mirror prints the Debian mirror this machine uses, read at run time (never written down).
mirror() {
  local sources=/etc/apt/sources.list.d/debian.sources url
  url=$(awk '/^URIs:/ { print $2; exit }' "$sources" 2>/dev/null || true)
  [ -n "$url" ] || { log "no URIs: line in $sources"; exit 1; }
  echo "$url"
}
