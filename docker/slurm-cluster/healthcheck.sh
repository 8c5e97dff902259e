#!/usr/bin/env bash
# Healthcheck of each role (docker compose `healthcheck:`); exit 0 when the role can serve.
set -euo pipefail
case ${1:?role} in
mariadb) mysqladmin --protocol=socket ping ;;
slurmdbd) sacctmgr -n list cluster ;;
slurmctld) scontrol ping | grep -q UP ;;
slurmd)
    state=$(sinfo -h -n "$(hostname -s)" -o %T)
    case $state in idle* | mixed* | allocated* | completing*) exit 0 ;; *) exit 1 ;; esac
    ;;
server)
    python3 -c 'import urllib.request,sys; urllib.request.urlopen("http://127.0.0.1:8008/debug.ping", timeout=5)'
    ;;
submitter) pgrep -u "${CLUSTER_USER:-hpcuser}" -f hpcagent-slurm >/dev/null && sinfo -h >/dev/null ;;
*) exit 1 ;;
esac
