#!/usr/bin/env bash
# Drive the docker compose test cluster (used by `make cluster-up|cluster-down|cluster-test`).
#
#   cluster.sh up        start dockerd if needed, make the base image if no registry has it,
#                        build the wheelhouse from the checkout and the image, start everything
#                        and wait until every service is healthy
#   cluster.sh down      stop and remove the containers, the network and the volumes
#                        (KEEP_VOLUMES=1 keeps the volumes: database, shared home, server data)
#   cluster.sh status    the services and sinfo
#   cluster.sh logs [S]  logs of all services or of service S
#   cluster.sh shell     a login shell as the cluster user on the login node (submitter)
#   cluster.sh creds     the API server URL and key pair for the host: eval "$(cluster.sh creds)"
#
# Environment: PYTHON (host Python for the wheelhouse), HPCAGENT_CLUSTER_CA_FILES (CA files the
# containers trust; default the host's /usr/local/share/ca-certificates/*.crt), HPCAGENT_CLUSTER_PORT (server port on
# 127.0.0.1, default 18008), HPCAGENT_CLUSTER_TEMPLATES (folder of sbatch templates mounted on the
# login node), HPCAGENT_QUEUES / HPCAGENT_TEMPLATES (queues and their templates for the submitter),
# COMPOSE_PROJECT_NAME (default hpcagent-cluster).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
export COMPOSE_PROJECT_NAME="${COMPOSE_PROJECT_NAME:-hpcagent-cluster}"
export HPCAGENT_CLUSTER_PORT="${HPCAGENT_CLUSTER_PORT:-18008}"
BUILD_LOG="${TMPDIR:-/tmp}/$COMPOSE_PROJECT_NAME-build.log"
UP_LOG="${TMPDIR:-/tmp}/$COMPOSE_PROJECT_NAME-compose.log"
SERVICES=(mariadb slurmdbd slurmctld c1 c2 server submitter)

log() { echo "cluster: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

ensure_docker() { bash "$HERE/../engine.sh" || die "no Docker engine"; }

# `docker compose` (v2 plugin) where present, else Debian's docker-compose (1.29).
COMPOSE=()
ensure_compose() {
    if docker compose version >/dev/null 2>&1; then
        COMPOSE=(docker compose)
    else
        if ! command -v docker-compose >/dev/null 2>&1; then
            if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
                log "installing docker compose"
                DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends docker-compose-v2 >/dev/null 2>&1 \
                    || DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends docker-compose >/dev/null
            fi
        fi
        if docker compose version >/dev/null 2>&1; then
            COMPOSE=(docker compose)
        elif command -v docker-compose >/dev/null 2>&1; then
            COMPOSE=(docker-compose)
        else
            die "docker compose is missing: install docker-compose-v2 or docker-compose"
        fi
    fi
    COMPOSE+=(--project-directory "$HERE" -f "$HERE/docker-compose.yml")
}

compose() { "${COMPOSE[@]}" "$@"; }

container_of() { compose ps -q "$1" 2>/dev/null | head -1; }

health_of() {
    local id
    id=$(container_of "$1")
    [ -n "$id" ] || { echo missing; return; }
    docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$id"
}

wait_healthy() {
    local deadline=$((SECONDS + ${1:-300})) s bad
    while :; do
        bad=""
        for s in "${SERVICES[@]}"; do
            case $(health_of "$s") in
            healthy) ;;
            unhealthy | exited | dead | missing) bad+=" $s(failed)" ;;
            *) bad+=" $s" ;;
            esac
        done
        [ -z "$bad" ] && return 0
        if [[ $bad == *"(failed)"* ]] || [ $SECONDS -ge $deadline ]; then
            compose ps >&2 || true
            die "not healthy:$bad (see: $0 logs SERVICE)"
        fi
        sleep 2
    done
}

# The containers trust what the host trusts locally (a TLS-inspecting proxy's CA, say).
copy_host_cas() {
    local dir=$HERE/ca-certificates f
    rm -f "$dir"/*.crt
    local -a files
    read -r -a files <<<"${HPCAGENT_CLUSTER_CA_FILES:-$(echo /usr/local/share/ca-certificates/*.crt)}"
    for f in "${files[@]}"; do
        [ -f "$f" ] && cp "$f" "$dir/$(basename "${f%.crt}").crt"
    done
    return 0
}

cmd_up() {
    ensure_docker
    ensure_compose
    bash "$HERE/base-image.sh"
    log "building the wheelhouse from the checkout"
    PYTHON="${PYTHON:-python3}" bash "$HERE/build-wheelhouse.sh" 2> >(grep -v 'is ignored: it is neither' >&2)
    copy_host_cas
    log "building the image (log: $BUILD_LOG)"
    # The legacy builder (compose 1.x) keeps the containers of failed steps unless told not to.
    local -a build_flags=()
    [ "${COMPOSE[0]}" = docker-compose ] && build_flags=(--force-rm)
    if ! compose build "${build_flags[@]}" init >"$BUILD_LOG" 2>&1; then
        tail -30 "$BUILD_LOG" >&2
        die "the image build failed, see $BUILD_LOG"
    fi
    log "starting the cluster"
    if ! compose up -d >"$UP_LOG" 2>&1; then
        cat "$UP_LOG" >&2
        die "compose up failed"
    fi
    wait_healthy 300
    prune_images
    compose ps
    docker exec "$(container_of slurmctld)" sinfo
    eval "$(cmd_creds)"
    log "up: server $CLEARML_API_HOST (credentials: $0 creds)"
}

# Each rebuild leaves the previous image dangling once no container uses it: drop ours (by label;
# nobody else's).
prune_images() { docker image prune -f --filter label=org.hpcagent.cluster=1 >/dev/null || true; }

cmd_down() {
    ensure_compose
    local vol=(-v)
    [ "${KEEP_VOLUMES:-0}" = 1 ] && vol=()
    if ! compose down "${vol[@]}" --remove-orphans >"$UP_LOG" 2>&1; then
        cat "$UP_LOG" >&2
        die "compose down failed"
    fi
    local left
    left=$(docker ps -aq --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME")
    [ -z "$left" ] || die "containers left: $left"
    prune_images
    if [ ${#vol[@]} -gt 0 ]; then
        log "down: no container, network or volume of $COMPOSE_PROJECT_NAME is left"
    else
        log "down: no container or network of $COMPOSE_PROJECT_NAME is left (volumes kept)"
    fi
}

cmd_creds() {
    ensure_compose >/dev/null
    local id
    id=$(container_of server)
    [ -n "$id" ] || die "the cluster is not up"
    echo "export CLEARML_API_HOST=http://127.0.0.1:$HPCAGENT_CLUSTER_PORT"
    docker exec "$id" cat /cluster/secrets/api.env \
        | sed -n -e 's/^HPCAGENT_SERVER_ACCESS_KEY=/export CLEARML_API_ACCESS_KEY=/p' \
              -e 's/^HPCAGENT_SERVER_SECRET_KEY=/export CLEARML_API_SECRET_KEY=/p'
}

main() {
    local cmd=${1:-}
    shift || true
    case $cmd in
    up) cmd_up ;;
    down) cmd_down ;;
    status) ensure_compose; compose ps; docker exec "$(container_of slurmctld)" sinfo ;;
    logs) ensure_compose; compose logs --no-color --tail="${TAIL:-200}" "$@" ;;
    shell) ensure_compose; docker exec -it -u "${CLUSTER_USER:-hpcuser}" -w "/shared/home/${CLUSTER_USER:-hpcuser}" "$(container_of submitter)" bash -l ;;
    creds) cmd_creds ;;
    *) echo "usage: $0 up|down|status|logs [SERVICE]|shell|creds" >&2; exit 2 ;;
    esac
}

main "$@"
