#!/usr/bin/env bash
# Entry point of every container of the hpcagent test cluster; the first argument is the role.
#
#   init       one-shot, before everything: munge key, database password, API key pair and the
#              shared file system layout (home of $CLUSTER_USER with its clearml.conf). Each secret
#              is made once, at the first start, into a volume; none is ever in the image or repo.
#   mariadb    MariaDB for slurmdbd
#   slurmdbd   Slurm accounting daemon
#   slurmctld  Slurm controller (registers the cluster, account and user in slurmdbd first)
#   slurmd     compute node (c1, c2: the node name is the container's host name)
#   server     embedded hpcagent server (`hpcagent server`), credentials from the init step
#   submitter  the login node: munge + Slurm client + `hpcagent-slurm` running as $CLUSTER_USER
#
# Daemons run in the foreground (-D / -F) so the container lives and dies with them; tini is
# PID 1 and reaps what they leave behind.
set -euo pipefail

SECRETS=/cluster/secrets
SHARED=/shared
CLUSTER_USER=${CLUSTER_USER:-hpcuser}
USER_HOME=$SHARED/home/$CLUSTER_USER
SERVER_URL=${HPCAGENT_SERVER_URL:-http://server:8008}

log() { echo "entrypoint[$ROLE]: $*" >&2; }

# The Slurm daemons run under other process names (dc-slurmctld, ...: the kernel names a
# process after the file it was started from, here a symlink): a host that runs its own Slurm
# sees every container's processes, and tools there that look daemons up by name
# (pgrep -x slurmctld, as tests/slurm/cluster.sh does) must not take ours for theirs.
# argv[0] stays the real name: slurmctld crashes at start when it is not.
daemon() { # daemon NAME ARGS...: exec /usr/sbin/NAME as dc-NAME
    local name=$1
    shift
    ln -sf "/usr/sbin/$name" "/usr/local/sbin/dc-$name"
    exec -a "$name" "/usr/local/sbin/dc-$name" "$@"
}
die() { log "ERROR: $*"; exit 1; }

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
    local secs=$1 what=$2 i
    shift 2
    for ((i = 0; i < secs; i++)); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 1
    done
    die "timed out after ${secs}s waiting for $what"
}

random_token() { # random_token NCHARS: letters and digits only (safe in configs and SQL)
    local out=""
    while [ "${#out}" -lt "$1" ]; do
        out+=$(head -c 64 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')
    done
    printf '%s' "${out:0:$1}"
}

# ---------------------------------------------------------------------------------------- init
role_init() {
    mkdir -p "$SECRETS"
    chmod 700 "$SECRETS"
    # Munge key: the one secret every Slurm daemon and client must share.
    if [ ! -s /etc/munge/munge.key ]; then
        log "creating the munge key"
        if command -v mungekey >/dev/null; then
            mungekey --create --force --keyfile=/etc/munge/munge.key
        else
            dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
        fi
    fi
    chown munge:munge /etc/munge /etc/munge/munge.key
    chmod 700 /etc/munge
    chmod 400 /etc/munge/munge.key
    if [ ! -s "$SECRETS/db.pass" ]; then
        log "creating the slurmdbd database password"
        random_token 32 >"$SECRETS/db.pass"
    fi
    if [ ! -s "$SECRETS/api.env" ]; then
        log "creating the hpcagent API key pair"
        umask 077
        {
            echo "HPCAGENT_SERVER_ACCESS_KEY=$(random_token 20)"
            echo "HPCAGENT_SERVER_SECRET_KEY=$(random_token 40)"
        } >"$SECRETS/api.env.tmp"
        mv "$SECRETS/api.env.tmp" "$SECRETS/api.env"
        umask 022
    fi
    chmod 600 "$SECRETS"/*
    # The shared file system: homes, task workspaces, the venv cache.
    mkdir -p "$SHARED/home" "$USER_HOME/.hpcagent/slurm-logs" "$SHARED/venvs-cache" "$SHARED/workspaces" \
        "$SHARED/vcs-cache"
    chmod 755 "$SHARED" "$SHARED/home"
    chown -R "$CLUSTER_USER:$CLUSTER_USER" "$USER_HOME" "$SHARED/venvs-cache" "$SHARED/workspaces" \
        "$SHARED/vcs-cache"
    write_clearml_conf
    log "done"
}

write_clearml_conf() {
    # shellcheck disable=SC1091
    . "$SECRETS/api.env"
    local conf=$USER_HOME/clearml.conf
    umask 077
    cat >"$conf.tmp" <<CONF
# Written by the init step of the hpcagent docker compose cluster (entrypoint.sh).
# On the shared home, so the submitter (login node) and the executors (c1, c2) read the same file.
api {
  api_server: "$SERVER_URL"
  credentials {
    access_key: "$HPCAGENT_SERVER_ACCESS_KEY"
    secret_key: "$HPCAGENT_SERVER_SECRET_KEY"
  }
}
agent {
  package_manager { type: pip }
  venvs_dir: "$SHARED/workspaces"
  venvs_cache { path: "$SHARED/venvs-cache" }
  vcs_cache { path: "$SHARED/vcs-cache" }
  task_ping_interval_sec: 30
}
slurm {
  state_dir: "$USER_HOME/.hpcagent/slurm"
  poll_interval_sec: 2
  max_poll_interval_sec: 10
}
CONF
    umask 022
    chown "$CLUSTER_USER:$CLUSTER_USER" "$conf.tmp"
    mv "$conf.tmp" "$conf"
}

# --------------------------------------------------------------------------------------- munge
start_munge() {
    [ -s /etc/munge/munge.key ] || die "no munge key: the init service has not run"
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown munge:munge /run/munge /var/lib/munge /var/log/munge
    chmod 755 /run/munge
    runuser -u munge -- /usr/sbin/munged --foreground --force &
    wait_for 30 munged bash -c 'munge -n </dev/null | unmunge'
}

# ------------------------------------------------------------------------------------- mariadb
role_mariadb() {
    local pw
    pw=$(cat "$SECRETS/db.pass")
    mkdir -p /run/mysqld
    chown mysql:mysql /run/mysqld /var/lib/mysql
    if [ ! -d /var/lib/mysql/mysql ]; then
        log "initialising the data folder"
        mariadb-install-db --user=mysql --datadir=/var/lib/mysql --skip-test-db >/dev/null
    fi
    # Runs at every start: keeps the slurm user's password in step with the secret.
    local init=/run/mysqld/init.sql
    cat >"$init" <<SQL
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'%' IDENTIFIED BY '$pw';
ALTER USER 'slurm'@'%' IDENTIFIED BY '$pw';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'%';
FLUSH PRIVILEGES;
SQL
    chown mysql:mysql "$init"
    chmod 600 "$init"
    exec mariadbd --user=mysql --datadir=/var/lib/mysql --bind-address=0.0.0.0 \
        --skip-name-resolve --init-file="$init" --innodb-buffer-pool-size=128M --innodb-lock-wait-timeout=900
}

# ------------------------------------------------------------------------------------ slurmdbd
role_slurmdbd() {
    local pw
    pw=$(cat "$SECRETS/db.pass")
    cat >/etc/slurm/slurmdbd.conf <<CONF
AuthType=auth/munge
DbdHost=slurmdbd
SlurmUser=slurm
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=mariadb
StoragePort=3306
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=$pw
CONF
    chown slurm:slurm /etc/slurm/slurmdbd.conf
    chmod 600 /etc/slurm/slurmdbd.conf
    start_munge
    daemon slurmdbd -D
}

# ----------------------------------------------------------------------------------- slurmctld
role_slurmctld() {
    start_munge
    wait_for 120 slurmdbd sacctmgr -n list cluster
    local cluster
    cluster=$(sed -n 's/^ClusterName=//p' /etc/slurm/slurm.conf)
    if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$cluster"; then
        sacctmgr -i add cluster "$cluster" >/dev/null
    fi
    if ! sacctmgr -n -P list account format=account | grep -qx hpcagent; then
        sacctmgr -i add account hpcagent Description=hpcagent Organization=hpcagent >/dev/null
    fi
    local u
    for u in root "$CLUSTER_USER"; do
        if ! sacctmgr -n -P list assoc where user="$u" format=user | grep -qx "$u"; then
            sacctmgr -i add user "$u" account=hpcagent cluster="$cluster" >/dev/null
        fi
    done
    daemon slurmctld -D
}

# -------------------------------------------------------------------------------------- slurmd
role_slurmd() {
    start_munge
    wait_for 120 slurmctld scontrol ping
    daemon slurmd -D -N "$(hostname -s)"
}

# -------------------------------------------------------------------------------------- server
role_server() {
    set -a
    # shellcheck disable=SC1091
    . "$SECRETS/api.env"
    set +a
    mkdir -p /var/lib/hpcagent-server
    exec hpcagent server --host 0.0.0.0 --port 8008 --data-dir /var/lib/hpcagent-server
}

# ----------------------------------------------------------------------------------- submitter
role_submitter() {
    start_munge
    wait_for 120 slurmctld scontrol ping
    # Queue i uses template i. Templates come from /templates (docker/slurm-cluster/templates, or
    # a site's own folder: HPCAGENT_CLUSTER_TEMPLATES) and /repo-templates (the repo's templates/).
    local -a templates queues
    read -r -a queues <<<"${HPCAGENT_QUEUES:-cluster example}"
    read -r -a templates <<<"${HPCAGENT_TEMPLATES:-/templates/cluster.sbatch /repo-templates/slurm.example.template}"
    cd "$USER_HOME"
    local -a as_user=(runuser -u "$CLUSTER_USER" -- env HOME="$USER_HOME" USER="$CLUSTER_USER"
        LOGNAME="$CLUSTER_USER" CLEARML_CONFIG_FILE="$USER_HOME/clearml.conf")
    # hpcagent-slurm serves existing queues only: make ours on the (empty) server first.
    "${as_user[@]}" /opt/hpcagent/bin/python -c '
import sys
from hpcagent.api import ApiClient
from hpcagent.config import load_settings
client = ApiClient.from_settings(load_settings())
for name in sys.argv[1:]:
    print("queue", name, client.queues.by_name(name, create=True)["id"])
' "${queues[@]}"
    local -a args=() t q
    for t in "${templates[@]}"; do args+=(--template-files "$t"); done
    for q in "${queues[@]}"; do args+=(--queue "$q"); done
    # shellcheck disable=SC2086  # HPCAGENT_SUBMITTER_ARGS is a list of words on purpose
    exec "${as_user[@]}" hpcagent-slurm "${args[@]}" ${HPCAGENT_SUBMITTER_ARGS:-}
}

ROLE=${1:-help}
shift || true
case $ROLE in
init) role_init ;;
mariadb) role_mariadb ;;
slurmdbd) role_slurmdbd ;;
slurmctld) role_slurmctld ;;
slurmd) role_slurmd ;;
server) role_server ;;
submitter) role_submitter ;;
sleep) start_munge; exec sleep infinity ;;
*) exec "$ROLE" "$@" ;;
esac
