#!/usr/bin/env bash
# One-host Grid Engine cell for hpcagent's tests (Debian's gridengine-master/-exec/-client,
# Son of Grid Engine 8.1).
#
#   tests/gridengine/cell.sh up       install when missing, configure, start, run a probe job
#   tests/gridengine/cell.sh down     stop only the daemons `up` started (pid files)
#   tests/gridengine/cell.sh status   daemons and `qstat -f`
#
# `up` is idempotent: a cell that answers is only (re)configured, never restarted. Daemons are
# started directly (no systemd); the pids `up` started are kept under $HPCAGENT_GE_DIR
# (default /var/tmp/hpcagent-gridengine)/run. The cell: SGE_ROOT=/var/lib/gridengine,
# SGE_CELL=default (the package's), this host as qmaster, admin, submit and execution host,
# one queue all.q with one slot per CPU, no load thresholds (a busy test machine must not put
# the queue in alarm), a 1 s scheduling interval and 1 s accounting flush (qacct sees a job
# soon after it ends), and min_uid/min_gid 0 (the tests run as root, like the Slurm cluster).
set -euo pipefail

BASE=${HPCAGENT_GE_DIR:-/var/tmp/hpcagent-gridengine}
RUN=$BASE/run
CONF=$BASE/conf
export SGE_ROOT=${SGE_ROOT:-/var/lib/gridengine}
export SGE_CELL=${SGE_CELL:-default}
COMMON=$SGE_ROOT/$SGE_CELL/common
PACKAGES=(gridengine-master gridengine-exec gridengine-client)
HOST=$(hostname)

APT_LOG=$BASE/apt.log
# shellcheck source=tests/services.sh
source "$(dirname "${BASH_SOURCE[0]}")/../services.sh"

name_this_host() {
    # Grid Engine compares the name a client claims with the reverse lookup of its address.
    # Where the host name maps to a loopback address whose first name is "localhost" (a
    # container's /etc/hosts), qmaster refuses every client ("client IP resolved to host name
    # localhost. This is not identical to clients host name"); host_aliases makes both names
    # one host.
    if [[ $HOST != localhost ]]; then
        printf '%s localhost\n' "$HOST" >"$COMMON/host_aliases"
    fi
    printf '%s\n' "$HOST" >"$COMMON/act_qmaster"
}

qmaster_answers() { qconf -sh >/dev/null 2>&1; }

start_qmaster() {
    qmaster_answers && return 0
    mkdir -p /var/run/gridengine
    chown sgeadmin:sgeadmin /var/run/gridengine
    log "starting sge_qmaster"
    SGE_MASTER_PIDFILE=/var/run/gridengine/qmaster.pid /usr/sbin/sge_qmaster
    wait_for 60 "sge_qmaster to answer" qmaster_answers || die "sge_qmaster does not answer"
    cp /var/run/gridengine/qmaster.pid "$RUN/started-qmaster.pid" 2>/dev/null \
        || cp /var/spool/gridengine/qmaster/qmaster.pid "$RUN/started-qmaster.pid"
}

set_conf() { # set_conf FILE KEY VALUE: replace the line "KEY ..." unless it already says so
    [[ $(awk -v k="$2" '$1 == k {print $2}' "$1") == "$3" ]] || sed -i -E "s|^$2[[:space:]].*|$2 $3|" "$1"
}

configure() {
    qconf -sh | grep -qx "$HOST" || qconf -ah "$HOST" >/dev/null
    qconf -ss 2>/dev/null | grep -qx "$HOST" || qconf -as "$HOST" >/dev/null
    mkdir -p "$CONF"
    # Global configuration: root jobs, a quick accounting flush. -Mconf wants the file named
    # after the configuration ("global").
    qconf -sconf >"$CONF/global"
    cp "$CONF/global" "$CONF/global.old"
    set_conf "$CONF/global" min_uid 0
    set_conf "$CONF/global" min_gid 0
    sed -i -E 's/flush_time=[0-9:]+/flush_time=00:00:01/' "$CONF/global"
    cmp -s "$CONF/global" "$CONF/global.old" || qconf -Mconf "$CONF/global" >/dev/null
    # Scheduler: every second, no load adjustment.
    qconf -ssconf >"$CONF/sched"
    cp "$CONF/sched" "$CONF/sched.old"
    set_conf "$CONF/sched" schedule_interval 0:0:1
    set_conf "$CONF/sched" flush_submit_sec 1
    set_conf "$CONF/sched" flush_finish_sec 1
    set_conf "$CONF/sched" job_load_adjustments NONE
    cmp -s "$CONF/sched" "$CONF/sched.old" || qconf -Msconf "$CONF/sched" >/dev/null
}

start_execd() {
    if ! pgrep -x sge_execd >/dev/null; then
        mkdir -p /var/spool/gridengine/execd
        chown sgeadmin:sgeadmin /var/spool/gridengine/execd
        log "starting sge_execd"
        /usr/sbin/sge_execd
        wait_for 30 "sge_execd" pgrep -x sge_execd || die "sge_execd did not start"
        pgrep -x -n sge_execd >"$RUN/started-execd.pid"
    fi
    # sge_execd registers its host with qmaster when it starts (this host is an admin host).
    wait_for 60 "the execution host" bash -c "qconf -sel | grep -qx '$HOST'" \
        || die "sge_execd did not register $HOST"
}

make_queue() {
    if ! qconf -sq all.q >/dev/null 2>&1; then
        qconf -sq >"$CONF/all.q" # the template
        set_conf "$CONF/all.q" qname all.q
        set_conf "$CONF/all.q" hostlist "$HOST"
        set_conf "$CONF/all.q" slots "$(nproc)"
        set_conf "$CONF/all.q" load_thresholds NONE
        set_conf "$CONF/all.q" pe_list NONE
        set_conf "$CONF/all.q" shell /bin/bash
        qconf -Aq "$CONF/all.q" >/dev/null
    fi
    qmod -c 'all.q' >/dev/null 2>&1 || true # clear an error state left by an earlier failure
}

probe() {
    # The cell is up when a job runs to its end: qsub -sync waits and returns the job's status.
    (cd "$BASE" && timeout 120 qsub -sync y -b y -o /dev/null -j y -N hpcagent_probe true) \
        >/dev/null || die "a probe job did not run (qstat -f; $0 status)"
}

up() {
    need_root
    mkdir -p "$BASE" "$RUN"
    # The master's postinst creates the cell (spool, global configuration, sgeadmin manager).
    install_packages
    name_this_host
    start_qmaster
    configure
    start_execd
    make_queue
    probe
    log "cell up: qmaster $HOST, queue all.q"
}

down() {
    local d pid
    for d in execd qmaster; do
        pid=$(cat "$RUN/started-$d.pid" 2>/dev/null || true)
        if pid_alive "$pid"; then
            log "stopping sge_$d (pid $pid)"
            kill "$pid"
        fi
        rm -f "$RUN/started-$d.pid"
    done
}

status() {
    pgrep -a -x sge_qmaster || echo "sge_qmaster not running"
    pgrep -a -x sge_execd || echo "sge_execd not running"
    qstat -f || true
}

case "${1:-}" in
up) up ;;
down) down ;;
status) status ;;
*)
    echo "usage: $0 up|down|status" >&2
    exit 2
    ;;
esac
