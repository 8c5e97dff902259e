# shellcheck shell=bash
# What the one-host test services' scripts share (sourced by tests/slurm/cluster.sh and
# tests/gridengine/cell.sh; not run by itself): messages, waiting, the root check and the
# installation of Debian packages.
#
# The sourcing script sets PACKAGES (the Debian packages it needs) and APT_LOG (where apt-get's
# output goes) before it calls install_packages. Messages name the script that was run.

log() { echo "${0##*/}: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
pid_alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null; }

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
    local secs=$1 what=$2; shift 2
    local i
    for ((i = 0; i < secs * 2; i++)); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    log "timed out after ${secs}s waiting for $what"
    return 1
}

need_root() { [[ $(id -u) -eq 0 ]] || die "must run as root (installs packages, starts daemons)"; }

install_packages() { # the missing ones of PACKAGES; apt-get waits for a lock another one holds
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    command -v apt-get >/dev/null || die "apt-get not found; install ${missing[*]} by hand"
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Without the package lists (a fresh machine) or with stale ones the first try fails.
    if ! apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}" \
        >"$APT_LOG" 2>&1; then
        apt-get -o DPkg::Lock::Timeout=600 update -q >>"$APT_LOG" 2>&1
        apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}" \
            >>"$APT_LOG" 2>&1 || die "apt-get install failed, see $APT_LOG"
    fi
}
