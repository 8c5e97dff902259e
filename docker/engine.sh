#!/usr/bin/env bash
# Make sure a Docker engine answers (used by `make test`, `make docker-up` and cluster.sh up).
#
#   docker/engine.sh          install Debian's docker.io when the engine is missing, start dockerd
#                             when it does not answer, wait until `docker info` works
#
# Idempotent: does nothing when `docker info` already answers. A machine may come with only a
# `docker` client (no engine): then docker.io is installed (as root, with apt-get). No systemd on
# the test machines: dockerd is started in the background, its log in /var/log/hpcagent-dockerd.log.
set -euo pipefail

log() { echo "docker/engine.sh: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

answers() { command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; }

answers && exit 0
if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        log "installing Debian's docker.io"
        export DEBIAN_FRONTEND=noninteractive
        apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends docker.io >/dev/null 2>&1 || {
            apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null 2>&1
            apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends docker.io >/dev/null
        }
    else
        die "the Docker engine is missing: install docker.io (Debian) or Docker CE"
    fi
fi
answers && exit 0
[ "$(id -u)" = 0 ] || die "the Docker engine is not running and we are not root to start it"
# Another caller may be starting it right now: one start at a time.
exec 9>/var/lock/hpcagent-dockerd.lock
flock -w 120 9 || die "waited 120 s for another dockerd start"
answers && exit 0
log "starting dockerd (log: /var/log/hpcagent-dockerd.log)"
setsid dockerd >>/var/log/hpcagent-dockerd.log 2>&1 </dev/null &
for ((i = 0; i < 60; i++)); do
    answers && exit 0
    sleep 1
done
die "dockerd did not start, see /var/log/hpcagent-dockerd.log"
