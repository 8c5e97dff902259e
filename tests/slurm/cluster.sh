#!/usr/bin/env bash
# One-host Slurm cluster for hpcagent's tests (munge, MariaDB, slurmdbd, slurmctld, slurmd).
#
#   tests/slurm/cluster.sh up     [--profile acct|noacct]   install when missing, start, wait for idle
#   tests/slurm/cluster.sh down                             stop only what `up` started (pid files)
#   tests/slurm/cluster.sh status                           daemons, profile, sinfo
#   tests/slurm/cluster.sh logs                             tail of every log
#
# Profiles:
#   acct    AccountingStorageType=accounting_storage/slurmdbd (MariaDB), MinJobAge=300 (default)
#   noacct  AccountingStorageType=accounting_storage/none, MinJobAge=$NOACCT_MIN_JOB_AGE (10 s):
#           finished jobs leave squeue/scontrol soon after MinJobAge (slurmctld purges old job
#           records in a periodic pass, so "gone" comes some seconds after MinJobAge, never before).
# Switching profiles rewrites slurm.conf and restarts slurmctld and slurmd (job state is kept).
#
# Daemons are started directly (no systemd). Everything lives under $HPCAGENT_SLURM_DIR
# (default /var/tmp/hpcagent-slurm): logs/, state/, run/ (pid files). slurm.conf and slurmdbd.conf
# are written to /etc/slurm so that sbatch/squeue/sacct work without SLURM_CONF.
# Works with Debian 12 (Slurm 22.05) and Debian 13 (Slurm 24.11).
set -euo pipefail

BASE=${HPCAGENT_SLURM_DIR:-/var/tmp/hpcagent-slurm}
LOGS=$BASE/logs
STATE=$BASE/state
RUN=$BASE/run
ETC=/etc/slurm
CLUSTER=${HPCAGENT_SLURM_CLUSTER:-hpcagent}
NOACCT_MIN_JOB_AGE=${NOACCT_MIN_JOB_AGE:-10}
DB_PASS_FILE=$BASE/dbpass
MYSQL_SOCK=/run/mysqld/mysqld.sock
# systemd: systemd-analyze checks the unit files of docs/deploy.md (tests/unit/test_deploy_doc.py)
PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server systemd)

APT_LOG=$LOGS/apt.log
# shellcheck source=tests/services.sh
source "$(dirname "${BASH_SOURCE[0]}")/../services.sh"
started_pid() { cat "$RUN/started-$1.pid" 2>/dev/null || true; }
# A daemon counts as ours when `up` recorded its pid and that pid still runs.
ours_running() { pid_alive "$(started_pid "$1")"; }

make_dirs() {
    mkdir -p "$LOGS" "$STATE/ctld" "$STATE/spool" "$RUN" "$ETC"
    chmod 755 "$BASE" "$LOGS" "$RUN"
    # slurmctld/slurmdbd write their pid files after dropping to SlurmUser.
    chown slurm:slurm "$RUN"
    chown slurm:slurm "$STATE/ctld"
    chown root:root "$STATE/spool"
    local f
    for f in slurmctld.log slurmdbd.log; do touch "$LOGS/$f"; chown slurm:slurm "$LOGS/$f"; done
    touch "$LOGS/munged.log"; chown munge:munge "$LOGS/munged.log"; chmod 640 "$LOGS/munged.log"
    touch "$LOGS/mariadb.log"; chown mysql:mysql "$LOGS/mariadb.log"
    touch "$LOGS/slurmd.log"
    mkdir -p /run/munge /run/mysqld /var/lib/munge
    chown munge:munge /run/munge /var/lib/munge; chmod 755 /run/munge
    chown mysql:mysql /run/mysqld
}

slurm_version() { slurmd -V | awk '{print $2}'; }

# ---------------------------------------------------------------- munge
start_munge() {
    if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi
    [[ -s /etc/munge/munge.key ]] || {
        log "creating munge key"
        if command -v mungekey >/dev/null; then mungekey --create --force; else
            dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none; fi
        chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
    }
    log "starting munged"
    runuser -u munge -- /usr/sbin/munged 9>&- --log-file="$LOGS/munged.log" --pid-file=/run/munge/munged.pid \
        || die "munged did not start, see $LOGS/munged.log"
    wait_for 20 munged bash -c 'munge -n </dev/null | unmunge' || die "munge does not work"
    cp /run/munge/munged.pid "$RUN/started-munged.pid"
}

# ---------------------------------------------------------------- MariaDB
mysql_up() { mysqladmin --socket="$MYSQL_SOCK" ping; }

start_mariadb() {
    if mysql_up >/dev/null 2>&1; then return 0; fi
    [[ -d /var/lib/mysql/mysql ]] || {
        log "initialising MariaDB datadir"
        mariadb-install-db --user=mysql --datadir=/var/lib/mysql >>"$LOGS/mariadb.log" 2>&1
    }
    log "starting MariaDB"
    local server
    server=$(command -v mariadbd || command -v mysqld || echo /usr/sbin/mariadbd)
    setsid "$server" --user=mysql --datadir=/var/lib/mysql --socket="$MYSQL_SOCK" \
        --pid-file=/run/mysqld/hpcagent-mariadb.pid --log-error="$LOGS/mariadb.log" --skip-networking=0 \
        --bind-address=127.0.0.1 </dev/null >>"$LOGS/mariadb.log" 2>&1 9>&- &
    echo $! >"$RUN/started-mariadb.pid"
    wait_for 60 MariaDB mysql_up || die "MariaDB did not start, see $LOGS/mariadb.log"
}

setup_database() {
    [[ -s $DB_PASS_FILE ]] || { head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$DB_PASS_FILE"; chmod 600 "$DB_PASS_FILE"; }
    local pw; pw=$(cat "$DB_PASS_FILE")
    mysql --socket="$MYSQL_SOCK" -u root <<SQL
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$pw';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$pw';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
SQL
}

# ---------------------------------------------------------------- slurmdbd
write_slurmdbd_conf() {
    local pw; pw=$(cat "$DB_PASS_FILE")
    cat >"$ETC/slurmdbd.conf" <<EOF
# Written by hpcagent tests/slurm/cluster.sh (Slurm $(slurm_version))
AuthType=auth/munge
DbdHost=localhost
SlurmUser=slurm
LogFile=$LOGS/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=$pw
EOF
    chown slurm:slurm "$ETC/slurmdbd.conf"; chmod 600 "$ETC/slurmdbd.conf"
}

start_slurmdbd() {
    # Only pid files count: other containers on this host may run their own Slurm daemons,
    # which pgrep would see.
    if ours_running slurmdbd; then return 0; fi
    log "starting slurmdbd"
    slurmdbd 9>&- || die "slurmdbd did not start, see $LOGS/slurmdbd.log"
    wait_for 30 "slurmdbd pid file" test -s "$RUN/slurmdbd.pid" || die "no slurmdbd pid, see $LOGS/slurmdbd.log"
    cp "$RUN/slurmdbd.pid" "$RUN/started-slurmdbd.pid"
    wait_for 60 slurmdbd sacctmgr -n list cluster || die "slurmdbd does not answer, see $LOGS/slurmdbd.log"
}

register_cluster() {
    if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
        log "registering cluster $CLUSTER in slurmdbd"
        sacctmgr -i add cluster "$CLUSTER" >/dev/null
    fi
    if ! sacctmgr -n -P list account format=account | grep -qx hpcagent; then
        sacctmgr -i add account hpcagent Description=hpcagent-tests Organization=hpcagent >/dev/null
    fi
    if ! sacctmgr -n -P list assoc where user=root account=hpcagent cluster="$CLUSTER" format=user | grep -qx root; then
        sacctmgr -i add user root account=hpcagent cluster="$CLUSTER" >/dev/null || true
    fi
}

# ---------------------------------------------------------------- slurm.conf
write_slurm_conf() { # write_slurm_conf PROFILE
    local profile=$1 node nodeline cpus mem ctlhost
    node=$(hostname -s)
    nodeline=$(slurmd -C | head -1)
    cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$nodeline")
    mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$nodeline")
    # Keep RealMemory a little below the measured value so the node never drains for "low memory".
    mem=$((mem * 9 / 10))
    # Take the topology fields slurmd itself reports, so the node registers without complaints.
    local topo
    topo=$(grep -o 'Boards=[0-9]* SocketsPerBoard=[0-9]* CoresPerSocket=[0-9]* ThreadsPerCore=[0-9]*' <<<"$nodeline" || true)
    ctlhost=$node
    local acct minage
    if [[ $profile == acct ]]; then
        acct="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
# AccountingStorageEnforce left unset (no enforcement), so root and any user can submit."
        minage=300
    else
        acct="AccountingStorageType=accounting_storage/none"
        minage=$NOACCT_MIN_JOB_AGE
    fi
    cat >"$ETC/slurm.conf.new" <<EOF
# Written by hpcagent tests/slurm/cluster.sh, profile=$profile (Slurm $(slurm_version))
# hpcagent-profile: $profile
ClusterName=$CLUSTER
SlurmctldHost=$ctlhost
AuthType=auth/munge
SlurmUser=slurm
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
# Memory is a consumable resource so that --mem is enforced; each CPU of a job gets DefMemPerCPU
# unless it asks for --mem. OverSubscribe=FORCE:8 lets small jobs share cores.
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=2048
SchedulerType=sched/backfill
ReturnToService=2
MaxJobCount=20000
MinJobAge=$minage
KillWait=5
OverTimeLimit=0
InactiveLimit=0
# Memory limits are enforced by polling the processes (no cgroups in containers): a job over its
# --mem is killed with SIGKILL and ends FAILED 0:9 (OUT_OF_MEMORY needs task/cgroup).
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=2
JobAcctGatherParams=OverMemoryKill
JobCompType=jobcomp/none
$acct
NodeName=$node CPUs=$cpus $topo RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE OverSubscribe=FORCE:8 State=UP
EOF
    mv "$ETC/slurm.conf.new" "$ETC/slurm.conf"
    chmod 644 "$ETC/slurm.conf"
}

current_profile() { sed -n 's/^# hpcagent-profile: //p' "$ETC/slurm.conf" 2>/dev/null || true; }

stop_pid() { # stop_pid NAME: stop a daemon that `up` started, wait until it is gone
    local name=$1 pid i
    pid=$(started_pid "$name")
    if pid_alive "$pid"; then
        log "stopping $name ($pid)"
        kill "$pid" 2>/dev/null || true
        for ((i = 0; i < 60; i++)); do pid_alive "$pid" || break; sleep 0.5; done
        pid_alive "$pid" && { log "killing $name ($pid)"; kill -9 "$pid" 2>/dev/null || true; sleep 0.5; }
    fi
    rm -f "$RUN/started-$name.pid"
}

start_daemon() { # start_daemon NAME: start slurmctld or slurmd, record its pid as ours
    local name=$1
    log "starting $name"
    rm -f "$RUN/$name.pid"
    "$name" 9>&- || die "$name did not start, see $LOGS/$name.log"
    wait_for 30 "$name pid file" test -s "$RUN/$name.pid" || die "see $LOGS/$name.log"
    cp "$RUN/$name.pid" "$RUN/started-$name.pid"
}

start_slurmctld() {
    if ours_running slurmctld; then return 0; fi
    start_daemon slurmctld
    wait_for 60 slurmctld scontrol ping || die "slurmctld does not answer, see $LOGS/slurmctld.log"
}

start_slurmd() {
    if ours_running slurmd; then return 0; fi
    start_daemon slurmd
}

node_state() { sinfo -h -n "$(hostname -s)" -o %T 2>/dev/null | head -1; }
node_usable() { local s; s=$(node_state); [[ $s == idle* || $s == mixed* || $s == allocated* ]]; }

wait_node() {
    local i s
    for ((i = 0; i < 120; i++)); do
        s=$(node_state)
        case $s in
        idle* | mixed* | allocated*) log "node $(hostname -s) is $s"; return 0 ;;
        down* | drain* | fail*) scontrol update NodeName="$(hostname -s)" State=RESUME 2>/dev/null || true ;;
        esac
        sleep 0.5
    done
    die "node did not become idle (state: ${s:-none}); see $LOGS/slurmctld.log and $LOGS/slurmd.log"
}

cmd_up() {
    local profile=$1
    need_root
    mkdir -p "$LOGS"
    install_packages
    make_dirs
    start_munge
    # slurm.conf first: sacctmgr reads it too.
    if [[ $(current_profile) != "$profile" ]] || ! ours_running slurmctld; then
        if ours_running slurmctld || ours_running slurmd; then
            log "switching to profile $profile: restarting slurmctld and slurmd"
        fi
        stop_pid slurmd
        stop_pid slurmctld
        write_slurm_conf "$profile"
    fi
    if [[ $profile == acct ]]; then
        start_mariadb
        setup_database
        write_slurmdbd_conf
        start_slurmdbd
        register_cluster
    fi
    start_slurmctld
    start_slurmd
    wait_node
    log "up (profile $profile, Slurm $(slurm_version), logs in $LOGS)"
}

cmd_down() {
    need_root
    local name
    for name in slurmd slurmctld slurmdbd mariadb munged; do stop_pid "$name"; done
    log "down"
}

cmd_status() {
    local name pid rc=0
    echo "profile: $(current_profile)  slurm: $(slurm_version 2>/dev/null || echo missing)  logs: $LOGS"
    for name in munged mariadb slurmdbd slurmctld slurmd; do
        pid=$(started_pid "$name")
        if pid_alive "$pid"; then echo "$name: running (pid $pid)"; else echo "$name: not started by cluster.sh"; fi
    done
    sinfo 2>&1 || rc=1
    node_usable || rc=1
    return $rc
}

cmd_logs() {
    local f
    for f in "$LOGS"/*.log; do echo "==> $f <=="; tail -n "${TAIL_LINES:-40}" "$f"; done
}

main() {
    local cmd=${1:-} profile=acct
    shift || true
    while [[ $# -gt 0 ]]; do
        case $1 in
        --profile) profile=${2:?--profile needs acct or noacct}; shift 2 ;;
        --profile=*) profile=${1#--profile=}; shift ;;
        *) die "unknown argument $1" ;;
        esac
    done
    [[ $profile == acct || $profile == noacct ]] || die "profile must be acct or noacct"
    # One `up`/`down` at a time (tests and other helpers may call up concurrently). Daemons are
    # started with fd 9 closed so that they never hold this lock.
    if [[ $cmd == up || $cmd == down ]]; then
        mkdir -p "$BASE"
        exec 9>"$BASE/.lock"
        flock 9
    fi
    case $cmd in
    up) cmd_up "$profile" ;;
    down) cmd_down ;;
    status) cmd_status ;;
    logs) cmd_logs ;;
    *) echo "usage: $0 up|down|status|logs [--profile acct|noacct]" >&2; exit 2 ;;
    esac
}

main "$@"
