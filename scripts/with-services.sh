#!/usr/bin/env bash
# Runs a command with the services the tests need, the way `make test` does:
#
#   scripts/with-services.sh CMD [ARGS...]
#
# A service that already answers is used as it is and left running. One that is
# not running is started (as root), waited for, and stopped again when CMD ends:
# on success, on failure and on Ctrl-C or SIGTERM alike. The exit status is CMD's
# (130 after Ctrl-C, 143 after SIGTERM).
#
# Services:
#   dockerd   Docker's daemon: the interop and build-parity tests, notebook 03
#             (an image loaded into Docker) and the docker-vs-vm lab's Docker
#             backend compare minicontainer with it.
# (The registries the tests push to are started by the tests themselves, one per
# test, on free loopback ports.)
#
# DOCKER and DOCKERD name the client and the daemon (tests put fakes there).
set -uo pipefail

DOCKER=${DOCKER:-docker}
DOCKERD=${DOCKERD:-dockerd}

if [ $# -eq 0 ]; then
    echo "usage: $0 CMD [ARGS...]" >&2
    exit 2
fi

started_pids=() # what we started, stopped in reverse order

stop_started() {
    local i pid
    for ((i = ${#started_pids[@]} - 1; i >= 0; i--)); do
        pid=${started_pids[i]}
        kill -TERM "$pid" 2>/dev/null || continue
        # dockerd stops its containers and its containerd first: give it time.
        for _ in $(seq 300); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "services: pid $pid did not stop within 30 s: killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
        echo "services: stopped pid $pid"
    done
    started_pids=()
}
trap stop_started EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

docker_answers() { timeout 10 "$DOCKER" info >/dev/null 2>&1; }

start_dockerd() {
    if ! PATH="$PATH:/usr/sbin:/sbin" command -v "$DOCKERD" >/dev/null 2>&1; then
        echo "services: dockerd is not installed (make setup installs docker.io): the tests that compare with Docker say so"
        return 0
    fi
    if docker_answers; then
        echo "services: dockerd already answering"
        return 0
    fi
    if [ "$(id -u)" -ne 0 ]; then
        echo "services: dockerd is not running and only root may start it: the tests that compare with Docker say so"
        return 0
    fi
    local log pid
    log=$(mktemp "${TMPDIR:-/tmp}/minicontainer-dockerd.XXXXXX.log")
    PATH="$PATH:/usr/sbin:/sbin" "$DOCKERD" >"$log" 2>&1 </dev/null &
    pid=$!
    started_pids+=("$pid")
    for _ in $(seq 120); do
        docker_answers && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    if ! docker_answers; then
        echo "services: dockerd did not answer within 60 s; its log ($log):" >&2
        tail -n 30 "$log" >&2
        exit 1
    fi
    echo "services: started dockerd (pid $pid, log $log); it is stopped when the tests end"
}

start_dockerd
"$@"
