"""A private Slurm for one test run: its own slurmdbd, slurmctld and slurmd, on free ports,
with its own state folder, database and ``SLURM_CONF``: :class:`PrivateSlurm`.

The fault suite (tests/chaos.py) stops slurmctld and slurmdbd for minutes; the one-host cluster
of tests/slurm/cluster.sh is shared by everyone on the machine, so the suite stops these
daemons instead. Only munge and MariaDB are shared (neither is ever stopped here): the private
slurmdbd keeps its jobs in a database and under a MariaDB user of its own, both dropped by
:meth:`PrivateSlurm.close`. Everything else lives under one folder (``/var/tmp/hpcs-*``: short,
because slurmd's step sockets live in its spool folder and a socket path has 108 bytes).

A Slurm command reaches this cluster when its environment holds :attr:`PrivateSlurm.env`
(``SLURM_CONF`` names the private slurm.conf; slurmdbd finds its slurmdbd.conf next to it).
Needs root, and the packages and daemons of ``tests/slurm/cluster.sh up`` (which it runs,
idempotent, when munge, MariaDB or the Slurm commands are missing).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

CLUSTER_SH = Path(__file__).resolve().parent / "slurm" / "cluster.sh"
MYSQL = ["mysql", "--socket=/run/mysqld/mysqld.sock", "-u", "root"]


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def _shared_parts_up() -> bool:
    if not all(shutil.which(c) for c in ("slurmctld", "slurmdbd", "slurmd", "sbatch", "mysql")):
        return False
    cred = subprocess.run(["munge", "-n"], capture_output=True, stdin=subprocess.DEVNULL)
    munge = subprocess.run(["unmunge"], input=cred.stdout, capture_output=True)
    mysql = subprocess.run([*MYSQL, "-e", "SELECT 1"], capture_output=True)
    return cred.returncode == munge.returncode == mysql.returncode == 0


def _wait(what: str, ok: Callable[[], bool], timeout: float, logs: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ok():
            return
        time.sleep(0.5)
    tails = "\n".join(
        f"==> {f.name} <==\n" + "\n".join(f.read_text(errors="replace").splitlines()[-15:])
        for f in sorted(logs.glob("*.log"))
    )
    raise RuntimeError(f"private Slurm: {what} not ready after {timeout:.0f} s\n{tails}")


class PrivateSlurm:
    """``with PrivateSlurm() as slurm:`` a running private cluster; ``slurm.env`` for the
    commands; :meth:`stop_controllers` / :meth:`start_controllers` stop and start its
    slurmctld and slurmdbd (slurmd and the running jobs stay)."""

    def __init__(self, log: Callable[[str], None] = print, base: Path | None = None) -> None:
        self.log = log
        token = secrets.token_hex(4)
        self.cluster = f"chaos{token}"
        self.db = f"hpcagent_chaos_{token}"
        self.db_user = f"hpcchaos_{token}"
        self._db_made = False
        if base is None:
            self.base = Path(tempfile.mkdtemp(prefix="hpcs-", dir="/var/tmp"))
            self.base.chmod(0o755)
            # who owns it and what to drop, for reap_stale() after a run that was killed
            (self.base / "owner").write_text(f"{os.getpid()} {self.db} {self.db_user}\n")
        else:  # a left-over one (reap_stale)
            self.base = base
            _, self.db, self.db_user = (base / "owner").read_text().split()
            self._db_made = True
        self.node = socket.gethostname().split(".")[0]
        self.ctld_port, self.slurmd_port, self.dbd_port = _free_ports(3)
        self.etc = self.base / "etc"
        self.logs = self.base / "logs"
        self.run = self.base / "run"
        self.env = {"SLURM_CONF": str(self.etc / "slurm.conf")}

    # -- commands ----------------------------------------------------------------------------
    def cmd(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """A Slurm command against this cluster (never raises for its exit status)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        try:
            return subprocess.run(
                argv, env={**env, **self.env}, capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired as exc:
            return subprocess.CompletedProcess(argv, 124, "", f"timed out: {exc}")

    def _daemon(self, name: str) -> None:
        (self.run / f"{name}.pid").unlink(missing_ok=True)
        res = self.cmd(name, timeout=120)
        if res.returncode != 0:
            raise RuntimeError(f"private Slurm: {name} did not start: {res.stderr[-2000:]}")
        _wait(f"{name} pid file", lambda: (self.run / f"{name}.pid").exists(), 30, self.logs)

    def _pid(self, name: str) -> int | None:
        """The pid of this cluster's ``name`` daemon while it runs (never another process
        that got its pid: the daemon's own name and this cluster's SLURM_CONF must match)."""
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((self.run / f"{name}.pid").read_text().split()[0])
            proc = Path(f"/proc/{pid}")
            argv0 = proc.joinpath("cmdline").read_bytes().split(b"\0")[0]
            conf = f"SLURM_CONF={self.env['SLURM_CONF']}".encode()
            if Path(argv0.decode()).name == name and conf in proc.joinpath(
                "environ"
            ).read_bytes().split(b"\0"):
                return pid
        return None

    def _stop(self, name: str) -> None:
        pid = self._pid(name)
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                os.kill(pid, 0)
                time.sleep(0.2)
            os.kill(pid, signal.SIGKILL)
        (self.run / f"{name}.pid").unlink(missing_ok=True)

    # -- life --------------------------------------------------------------------------------
    def start(self) -> PrivateSlurm:
        """Start the three daemons (after removing what runs killed before their end left);
        on failure, :meth:`close` still removes what was made."""
        reap_stale(self.log)
        if not _shared_parts_up():  # a clean machine: install and start munge and MariaDB
            res = subprocess.run(["bash", str(CLUSTER_SH), "up"], capture_output=True,
                                 text=True, timeout=900)  # fmt: skip
            if res.returncode != 0:
                raise RuntimeError(f"tests/slurm/cluster.sh up failed: {res.stderr[-2000:]}")
        for d in (self.etc, self.logs, self.run, self.base / "ctld", self.base / "spool"):
            d.mkdir(parents=True, exist_ok=True)
        self._make_db()
        self._write_conf()
        self._daemon("slurmdbd")
        _wait("slurmdbd", self._dbd_answers, 60, self.logs)
        self.cmd("sacctmgr", "-i", "add", "cluster", self.cluster)
        self._daemon("slurmctld")
        _wait("slurmctld", lambda: self.cmd("scontrol", "ping").returncode == 0, 60, self.logs)
        self._daemon("slurmd")

        def node_up() -> bool:
            state = self.cmd("sinfo", "-h", "-o", "%T").stdout.strip()
            if state.startswith(("down", "drain", "fail")):
                self.cmd("scontrol", "update", f"NodeName={self.node}", "State=RESUME")
            return state.startswith(("idle", "mixed", "allocated"))

        _wait("node", node_up, 90, self.logs)
        ports = f"slurmctld :{self.ctld_port}, slurmdbd :{self.dbd_port}"
        self.log(
            f"  private Slurm {self.cluster}: {ports}, slurmd :{self.slurmd_port}, in {self.base}"
        )
        return self

    def _dbd_answers(self) -> bool:
        return self.cmd("sacctmgr", "-n", "list", "cluster").returncode == 0

    def stop_controllers(self) -> None:
        """Stop slurmctld and slurmdbd (SIGTERM, as an administrator's stop does)."""
        self._stop("slurmctld")
        self._stop("slurmdbd")

    def start_controllers(self) -> None:
        """Start slurmdbd and slurmctld again (slurmctld recovers its state folder)."""
        self._daemon("slurmdbd")
        self._daemon("slurmctld")
        _wait("slurmctld", lambda: self.cmd("scontrol", "ping").returncode == 0, 60, self.logs)

    def close(self) -> None:
        """Cancel what still runs, stop the three daemons, drop the database and its user,
        remove the folder."""
        if self._pid("slurmctld") is not None:
            self.cmd("scancel", "--full", "-u", "root", timeout=30)
        for name in ("slurmctld", "slurmd", "slurmdbd"):
            self._stop(name)
        if self._db_made:
            sql = (f"DROP DATABASE IF EXISTS {self.db};"
                   f"DROP USER IF EXISTS '{self.db_user}'@'localhost';")  # fmt: skip
            subprocess.run([*MYSQL, "-e", sql], capture_output=True, timeout=60)
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> PrivateSlurm:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- configuration -----------------------------------------------------------------------
    def _make_db(self) -> None:
        self._db_pass = secrets.token_hex(16)
        sql = (
            f"CREATE DATABASE {self.db};"
            f"CREATE USER '{self.db_user}'@'localhost' IDENTIFIED BY '{self._db_pass}';"
            f"GRANT ALL ON {self.db}.* TO '{self.db_user}'@'localhost';"
        )
        res = subprocess.run([*MYSQL], input=sql, capture_output=True, text=True, timeout=60)
        if res.returncode != 0:
            raise RuntimeError(f"private Slurm: cannot make its database: {res.stderr}")
        self._db_made = True

    def _write_conf(self) -> None:
        nodeline = subprocess.run(["slurmd", "-C"], capture_output=True, text=True).stdout
        fields = dict(f.split("=", 1) for f in nodeline.split()[:12] if "=" in f)
        cpus = fields.get("CPUs", "1")
        topo = " ".join(
            f"{k}={fields[k]}"
            for k in ("Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore")
            if k in fields
        )
        b = self.base
        dbd = self.etc / "slurmdbd.conf"
        dbd.write_text(
            f"AuthType=auth/munge\nDbdHost=localhost\nDbdPort={self.dbd_port}\nSlurmUser=root\n"
            f"LogFile={self.logs}/slurmdbd.log\nPidFile={self.run}/slurmdbd.pid\n"
            "StorageType=accounting_storage/mysql\nStorageHost=localhost\n"
            f"StorageLoc={self.db}\nStorageUser={self.db_user}\nStoragePass={self._db_pass}\n"
        )
        dbd.chmod(0o600)
        (self.etc / "slurm.conf").write_text(
            f"ClusterName={self.cluster}\nSlurmctldHost={self.node}\n"
            f"SlurmctldPort={self.ctld_port}\nSlurmdPort={self.slurmd_port}\n"
            "AuthType=auth/munge\nSlurmUser=root\nSlurmdUser=root\n"
            f"StateSaveLocation={b}/ctld\nSlurmdSpoolDir={b}/spool\n"
            f"SlurmctldPidFile={self.run}/slurmctld.pid\nSlurmdPidFile={self.run}/slurmd.pid\n"
            f"SlurmctldLogFile={self.logs}/slurmctld.log\nSlurmdLogFile={self.logs}/slurmd.log\n"
            "ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nMpiDefault=none\n"
            "SelectType=select/cons_tres\nSelectTypeParameters=CR_Core\n"
            "SchedulerType=sched/backfill\nReturnToService=2\nMinJobAge=300\nKillWait=5\n"
            "InactiveLimit=0\nSlurmdTimeout=30\nJobAcctGatherType=jobacct_gather/none\nJobCompType=jobcomp/none\n"
            "AccountingStorageType=accounting_storage/slurmdbd\n"
            f"AccountingStorageHost=localhost\nAccountingStoragePort={self.dbd_port}\n"
            f"NodeName={self.node} CPUs={cpus} {topo} RealMemory=1000 State=UNKNOWN\n"
            f"PartitionName=chaos Nodes={self.node} Default=YES MaxTime=INFINITE "
            "OverSubscribe=FORCE:8 State=UP\n"
        )


def reap_stale(log: Callable[[str], None] = print) -> None:
    """Remove the private clusters whose owning process is gone (a run killed before its
    end): their daemons, database and folder."""
    for base in Path("/var/tmp").glob("hpcs-*"):
        with contextlib.suppress(OSError, ValueError):
            owner = int((base / "owner").read_text().split()[0])
            with contextlib.suppress(OSError):
                if "\nState:\tZ" not in Path(f"/proc/{owner}/status").read_text():
                    continue  # its owner runs (a zombie does not)
            log(f"  removing the private Slurm left by process {owner}: {base}")
            PrivateSlurm(log, base).close()


if __name__ == "__main__":  # a quick look: start, submit one job, stop and start the controllers
    with PrivateSlurm() as s:
        print(
            s.cmd(
                "sbatch", "--parsable", f"--output={s.base}/demo-%j.out", "--wrap", "sleep 2"
            ).stdout
        )
        s.stop_controllers()
        print("squeue while stopped:", s.cmd("squeue", timeout=30).stderr.strip()[:200])
        s.start_controllers()
        time.sleep(5)
        print(s.cmd("sacct", "-X", "-n", "-P", "-o", "JobID,State").stdout)
