#!/usr/bin/env bash
# Shared by registry.sh and containerd.sh (sourced): the life of a daemon that the script
# starts in the background, records by PID, waits for and stops. The sourcing script defines
# log() and timeout_s.

# alive PID: true while PID exists and is not a zombie.
alive() {
  local state
  state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "$state" != Z ]
}

# running_as PIDFILE PATTERN: true if the PID recorded in PIDFILE is alive and its command
# line contains PATTERN (not another process that got the PID since).
running_as() {
  local pid
  [ -f "$1" ] || return 1
  pid=$(cat "$1")
  [[ $pid =~ ^[0-9]+$ ]] && alive "$pid" || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$2"
}

# kill_wait SIGNAL PID: sends SIGNAL to PID and waits until it is gone.
kill_wait() {
  kill "-$1" "$2" 2>/dev/null || true
  while alive "$2"; do sleep 0.1; done
}

# terminate PID SECONDS: SIGTERM, and SIGKILL if PID is still alive SECONDS later; returns
# once it is gone.
terminate() {
  local pid=$1 secs=$2 i
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < secs * 10; i++)); do
    alive "$pid" || return 0
    sleep 0.1
  done
  log "pid $pid still alive after ${secs}s; sending SIGKILL"
  kill_wait KILL "$pid"
}

# wait_ready NAME PID PIDFILE LOGFILE WHERE CHECK...: waits up to timeout_s seconds until the
# command CHECK... succeeds. If the daemon NAME (PID) exits first, or does not answer in time
# (then it is stopped), it says so with the tail of LOGFILE, removes PIDFILE and exits 1.
wait_ready() {
  local name=$1 pid=$2 pidfile=$3 logfile=$4 where=$5 deadline=$((SECONDS + timeout_s))
  shift 5
  until "$@"; do
    if ! alive "$pid"; then
      log "$name exited during startup; log tail:"
      tail -n 20 "$logfile" >&2
      rm -f "$pidfile"
      exit 1
    fi
    if [ $SECONDS -ge $deadline ]; then
      log "no answer $where after ${timeout_s}s; log tail:"
      tail -n 20 "$logfile" >&2
      kill_wait TERM "$pid"
      rm -f "$pidfile"
      exit 1
    fi
    sleep 0.1
  done
}
