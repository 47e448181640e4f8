#!/usr/bin/env bash
# Make sure a Docker engine answers on the socket; start one if not.
#   - reuses an engine that already answers (whoever started it);
#   - otherwise starts `dockerd --bridge=none --iptables=false --ip6tables=false` in the
#     background (detached, log in $DOCKERD_LOG) and waits up to $DOCKERD_WAIT seconds (60).
# Exit 0 when the engine answers, 1 otherwise (with the tail of the daemon log).
# Environment (mostly for testing this script): DOCKERD_SOCK (default /var/run/docker.sock),
#   DOCKERD_WAIT, DOCKERD_LOG (default /var/log/minerwatch-test-dockerd.log),
#   DOCKERD_EXTRA_ARGS (extra flags, e.g. a separate --data-root/--exec-root/--pidfile).
set -euo pipefail
SOCK="${DOCKERD_SOCK:-/var/run/docker.sock}"
WAIT="${DOCKERD_WAIT:-60}"
LOG="${DOCKERD_LOG:-/var/log/minerwatch-test-dockerd.log}"

log() { printf '[start-dockerd] %s\n' "$*" >&2; }

PYBIN="$(command -v python3 || echo /usr/bin/python3)"
ping_engine() {
    # GET /_ping on the unix socket; needs no docker client.
    [ -S "$SOCK" ] || return 1
    timeout 10 "$PYBIN" - "$SOCK" <<'PY' >/dev/null 2>&1
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(5)
s.connect(sys.argv[1])
s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
data = b""
while True:
    chunk = s.recv(4096)
    if not chunk:
        break
    data += chunk
sys.exit(0 if data.startswith(b"HTTP/1.") and b" 200 " in data.split(b"\r\n", 1)[0] else 1)
PY
}

if ping_engine; then
    log "Docker engine already answering on $SOCK"
    exit 0
fi

if [ "$(id -u)" != 0 ]; then
    log "ERROR: no Docker engine on $SOCK and not root: cannot start dockerd"
    exit 1
fi
command -v dockerd >/dev/null 2>&1 || { log "ERROR: dockerd not installed (apt-get install docker.io)"; exit 1; }

# Serialise concurrent starters.
exec 9>"${TMPDIR:-/tmp}/minerwatch-start-dockerd.lock"
flock -w "$((WAIT + 30))" 9 || true

DPID=""
if ping_engine; then
    log "Docker engine came up on $SOCK"
    exit 0
fi
# A dockerd of the default instance may already be starting: don't start a second one.
if [ -z "${DOCKERD_EXTRA_ARGS:-}" ] && [ -s /var/run/docker.pid ] \
   && kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null \
   && grep -q dockerd "/proc/$(cat /var/run/docker.pid)/comm" 2>/dev/null; then
    DPID="$(cat /var/run/docker.pid)"
    log "dockerd (pid $DPID) is running but not answering yet; waiting"
else
    mkdir -p "$(dirname "$LOG")"
    HOSTARG=()
    [ "$SOCK" != /var/run/docker.sock ] && HOSTARG=(-H "unix://$SOCK")
    # shellcheck disable=SC2086
    setsid nohup dockerd --bridge=none --iptables=false --ip6tables=false "${HOSTARG[@]}" \
        ${DOCKERD_EXTRA_ARGS:-} </dev/null >>"$LOG" 2>&1 &
    DPID=$!
    log "started dockerd (pid $DPID), log: $LOG"
fi

deadline=$(( $(date +%s) + WAIT ))
while [ "$(date +%s)" -lt "$deadline" ]; do
    if ping_engine; then
        log "Docker engine answering on $SOCK"
        exit 0
    fi
    if ! kill -0 "$DPID" 2>/dev/null; then
        log "ERROR: dockerd (pid $DPID) exited; last lines of $LOG:"
        tail -n 30 "$LOG" >&2 || true
        exit 1
    fi
    sleep 0.5
done
log "ERROR: Docker engine did not answer on $SOCK within ${WAIT}s; last lines of $LOG:"
tail -n 30 "$LOG" >&2 || true
exit 1
