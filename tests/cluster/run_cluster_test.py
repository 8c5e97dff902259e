"""End-to-end check of the docker compose Slurm cluster (``make cluster-test``).

Run from the host against a cluster started by ``make cluster-up``: tasks are created and
enqueued through the server's REST API the way a user would, hpcagent-slurm (login node)
submits them to Slurm, ``hpcagent execute`` runs them on c1 and c2, and every outcome is read
back through the API (plus ``sacct`` on the controller for the Slurm side):

1. two single-node tasks that each take a whole node run at the same time, one on c1 and one on
   c2 (the node in each task's runtime, and the task's log from that node);
2. a two-node task (``hyperparams.properties.num_nodes = 2`` through the template's
   ``${CLEARML_TASK.hyperparams.properties.num_nodes.value:1}``) whose ``srun hostname`` prints
   both nodes into the task's log, and whose Slurm job ran on c1 and c2;
3. an abort of a running task: the task ends ``stopped`` and its Slurm job is gone;
4. a failing task: it ends ``failed`` with the script's exit code in its log or status;
5. a task that cannot start (``num_nodes = 3`` on two nodes) stays queued with its Slurm job id
   and pending reason in its status message; aborting it cancels the job (sacct CANCELLED);
6. a task from a git repository on the shared file system, at a given commit, runs that
   commit's code (through the executor's repository cache on the shared file system);
7. a task on the queue served by the repository's unchanged seed template
   (``templates/slurm.example.template``, queue ``example``) completes on a compute node.

Exit status 0 when every check passed, 1 otherwise; one line per check on stdout.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hpcagent.api import ApiClient

REPO = Path(__file__).resolve().parents[2]
CLUSTER_SH = REPO / "docker" / "slurm-cluster" / "cluster.sh"
FINAL = {"completed", "failed", "stopped", "published", "closed"}

SCRIPT_SPREAD = textwrap.dedent(
    """\
    import os, socket, time
    print("hello from", socket.gethostname(), "job", os.environ.get("SLURM_JOB_ID"), flush=True)
    time.sleep(25)
    print("done on", socket.gethostname(), flush=True)
    """
)
SCRIPT_TWO_NODES = textwrap.dedent(
    """\
    import os, subprocess
    print("nodes:", os.environ.get("SLURM_JOB_NODELIST"), "nnodes:", os.environ.get("SLURM_NNODES"))
    nnodes = os.environ["SLURM_NNODES"]
    argv = ["srun", "--overlap", "-N", nnodes, "--ntasks-per-node=1", "hostname"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    for line in sorted(out.split()):
        print("srun ran on", line, flush=True)
    """
)
SCRIPT_ABORT = textwrap.dedent(
    """\
    import time
    for i in range(600):
        print("still running", i, flush=True)
        time.sleep(1)
    """
)
#: Made on the login node as the cluster user: a repository with two commits; the task asks for
#: the first, so its output proves the checkout honoured ``version_num``.
MAKE_REPO = textwrap.dedent(
    """\
    set -e
    repo=$HOME/cluster-test-repo
    rm -rf "$repo" && mkdir -p "$repo" && cd "$repo"
    git init -q
    echo 'print("from the repository, first commit")' > main.py
    git add main.py && git -c user.name=t -c user.email=t@example.invalid commit -qm first
    git rev-parse HEAD
    echo 'print("from the repository, second commit")' > main.py
    git -c user.name=t -c user.email=t@example.invalid commit -qam second
    """
)
SCRIPT_FAIL = textwrap.dedent(
    """\
    import sys
    print("about to fail on purpose", flush=True)
    sys.exit(3)
    """
)


class Check:
    """Collects the outcome of each check and prints one line for each.

    ``note`` is always printed; ``detail`` (the task as the server sees it) only on failure.
    """

    def __init__(self) -> None:
        self.failures: list[str] = []

    def __call__(self, ok: bool, what: str, detail: str = "", *, note: str = "") -> bool:
        parts = [note] if note else []
        if not ok and detail:
            parts.append(detail)
        extra = f"  ({'; '.join(parts)})" if parts else ""
        print(f"{'PASS' if ok else 'FAIL'}  {what}{extra}", flush=True)
        if not ok:
            self.failures.append(what)
        return ok


def credentials() -> dict[str, str]:
    out = subprocess.run(
        ["bash", str(CLUSTER_SH), "creds"], capture_output=True, text=True, check=True
    ).stdout
    lines = (line.removeprefix("export ") for line in out.splitlines())
    pairs = (line.split("=", 1) for line in lines if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def in_service(service: str, *argv: str) -> str:
    """Run a command in the running container of a compose service; its stdout."""
    cid = subprocess.run(
        [
            "docker",
            "ps",
            "-q",
            "--filter",
            f"label=com.docker.compose.project={project()}",
            "--filter",
            f"label=com.docker.compose.service={service}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    if not cid:
        raise RuntimeError(f"no running {service} container: is the cluster up (make cluster-up)?")
    return subprocess.run(
        ["docker", "exec", cid[0], *argv], capture_output=True, text=True, check=True
    ).stdout


def controller(*argv: str) -> str:
    """Run a Slurm command on the slurmctld container; its stdout."""
    return in_service("slurmctld", *argv)


def project() -> str:
    return os.environ.get("COMPOSE_PROJECT_NAME", "hpcagent-cluster")


def make_task(
    client: ApiClient, project_id: str, name: str, script: str, props: dict[str, str]
) -> str:
    hyper = {
        "properties": {
            key: {"section": "properties", "name": key, "value": value, "type": "str"}
            for key, value in props.items()
        }
    }
    return client.tasks.create(
        name,
        project_id,
        script={
            "entry_point": "task.py",
            "working_dir": ".",
            "binary": "python3",
            "diff": script,
        },
        hyperparams=hyper,
    )


def wait_until(
    client: ApiClient, task_id: str, pred: Callable[[dict[str, Any]], bool], timeout: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    task: dict[str, Any] = {}
    while time.monotonic() < deadline:
        task = client.tasks.get_by_id(task_id)
        if pred(task):
            return task
        time.sleep(2)
    return task


def log_text(client: ApiClient, task_id: str) -> str:
    reply = client.events.get_task_log(task_id, batch_size=5000, navigate_earlier=False)
    return "\n".join(str(e.get("msg", "")) for e in reply.get("events") or [])


def task_node(task: dict[str, Any]) -> tuple[str, str]:
    """The compute node a single-node task ran on, from its runtime, and a warning ('' if none).

    The executor records ``hpcagent_worker`` (``<node>:slurm-<job>``) and
    ``_exec_agent_hostname`` and ``job_nodes`` (docs/structure.md). All that are present should
    name the same node (a disagreement is printed as a WARN line); the node is the executor's
    own word (``hpcagent_worker``).
    """
    runtime = task.get("runtime") or {}
    seen = {
        "hpcagent_worker": str(runtime.get("hpcagent_worker", "")).split(":")[0],
        "_exec_agent_hostname": str(runtime.get("_exec_agent_hostname", "")),
        "job_nodes": str(runtime.get("job_nodes", "")),
    }
    node = seen["hpcagent_worker"] or seen["job_nodes"] or seen["_exec_agent_hostname"]
    odd = {k: v for k, v in seen.items() if v != node}
    warning = f"runtime disagrees with node {node!r}: {odd}" if odd else ""
    return node, warning


def describe(task: dict[str, Any]) -> str:
    return (
        f"status={task.get('status')} message={task.get('status_message')!r} "
        f"reason={task.get('status_reason')!r} runtime={task.get('runtime')}"
    )


def sacct_nodes(job_id: str) -> tuple[str, str]:
    out = controller("sacct", "-X", "-P", "-n", "-j", job_id, "-o", "State,NodeList")
    line = (out.strip().splitlines() or ["|"])[0]
    state, _, nodes = line.partition("|")
    return state, nodes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queue", default="cluster", help="queue with the cluster template")
    parser.add_argument(
        "--example-queue", default="example", help="queue with the seed template ('' skips)"
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per phase")
    args = parser.parse_args()
    check = Check()

    try:
        creds = credentials()
        controller("true")
        served = in_service("submitter", "printenv", "HPCAGENT_QUEUES").split()
    except (subprocess.CalledProcessError, RuntimeError) as exc:
        print(f"cluster-test: the cluster is not up (make cluster-up): {exc}", file=sys.stderr)
        return 2
    wanted = [q for q in (args.queue, args.example_queue) if q]
    if not set(wanted) <= set(served):
        print(
            f"cluster-test: the submitter serves {served}, the test needs {wanted}: start the "
            "cluster with the default queues (make cluster-down cluster-up)",
            file=sys.stderr,
        )
        return 2
    client = ApiClient(
        creds["CLEARML_API_HOST"], creds["CLEARML_API_ACCESS_KEY"], creds["CLEARML_API_SECRET_KEY"]
    )
    print(f"server {client.host}, queue {args.queue!r}", flush=True)
    print(controller("sinfo").rstrip(), flush=True)
    queue = client.queues.by_name(args.queue, create=True)
    project_id = client.projects.create(f"cluster-test-{int(time.time())}")

    def enqueue(name: str, script: str, props: dict[str, str], qid: str = "") -> str:
        tid = make_task(client, project_id, name, script, props)
        client.tasks.enqueue(tid, qid or queue["id"])
        print(f"enqueued {name}: {tid}", flush=True)
        return tid

    # -- 1. two whole-node tasks at the same time: one on c1, one on c2
    spread = [enqueue(f"spread-{i}", SCRIPT_SPREAD, {"cpus": "2"}) for i in (1, 2)]
    hosts = []
    for tid in spread:
        task = wait_until(client, tid, lambda t: t.get("status") in FINAL, args.timeout)
        check(task.get("status") == "completed", f"whole-node task {tid} completed", describe(task))
        host, warning = task_node(task)
        if warning:
            print(f"WARN  task {tid}: {warning}", flush=True)
        hosts.append(host)
        log = log_text(client, tid)
        check(f"done on {host}" in log, f"task {tid} log comes from its node {host!r}")
    check(sorted(hosts) == ["c1", "c2"], "the two tasks ran on c1 and c2", note=f"nodes {hosts}")

    # -- 2. two nodes, 3. abort, 4. failure: at the same time
    two = enqueue("two-nodes", SCRIPT_TWO_NODES, {"num_nodes": "2"})
    abort = enqueue("abort-me", SCRIPT_ABORT, {})
    fail = enqueue("fail-on-purpose", SCRIPT_FAIL, {})
    pending = enqueue("never-starts", 'print("never")\n', {"num_nodes": "3"})
    user = "hpcuser"
    first = in_service(
        "submitter",
        "runuser",
        "-u",
        user,
        "--",
        "env",
        f"HOME=/shared/home/{user}",
        "bash",
        "-c",
        MAKE_REPO,
    ).strip()
    repo_task = client.tasks.create(
        "from-git",
        project_id,
        script={
            "repository": f"/shared/home/{user}/cluster-test-repo",
            "version_num": first,
            "entry_point": "main.py",
            "working_dir": ".",
            "binary": "python3",
        },
    )
    client.tasks.enqueue(repo_task, queue["id"])
    print(f"enqueued from-git: {repo_task}", flush=True)
    example = ""
    if args.example_queue:
        example_q = client.queues.by_name(args.example_queue)
        example = enqueue("seed-template", SCRIPT_SPREAD.replace("25", "1"), {}, example_q["id"])

    task = wait_until(
        client,
        abort,
        lambda t: t.get("status") in FINAL or "still running 3" in log_text(client, abort),
        args.timeout,
    )
    check(
        task.get("status") == "in_progress", f"task {abort} runs before the abort", describe(task)
    )
    abort_job = str((task.get("runtime") or {}).get("job_id", ""))
    client.tasks.stop(abort, status_reason="aborted by cluster-test")
    task = wait_until(client, abort, lambda t: t.get("status") in FINAL, 120)
    check(
        task.get("status") == "stopped",
        f"aborted task {abort} is stopped",
        describe(task),
        note=f"status_message {task.get('status_message')!r}",
    )
    if check(
        bool(abort_job),
        f"aborted task {abort} recorded its Slurm job",
        describe(task),
        note=f"job {abort_job}",
    ):
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and controller("squeue", "-h", "-j", abort_job).strip():
            time.sleep(2)
        left = controller("squeue", "-h", "-j", abort_job).strip()
        check(not left, f"Slurm job {abort_job} of the aborted task left squeue", left)

    task = wait_until(client, two, lambda t: t.get("status") in FINAL, args.timeout)
    check(task.get("status") == "completed", f"two-node task {two} completed", describe(task))
    log = log_text(client, two)
    check(
        "srun ran on c1" in log and "srun ran on c2" in log,
        f"two-node task {two} ran srun on c1 and c2 (task log)",
        note=" | ".join(
            line for line in log.splitlines() if "srun ran on" in line or "nodes:" in line
        ),
    )
    job = str((task.get("runtime") or {}).get("job_id", ""))
    if check(bool(job), f"two-node task {two} recorded its Slurm job in runtime", describe(task)):
        state, nodes = sacct_nodes(job)
        check(nodes == "c[1-2]", f"Slurm job {job} ran on c[1-2] (sacct)", note=f"{state} {nodes}")

    task = wait_until(client, fail, lambda t: t.get("status") in FINAL, args.timeout)
    check(
        task.get("status") == "failed",
        f"failing task {fail} is failed",
        describe(task),
        note=f"status_message {task.get('status_message')!r}",
    )
    log = log_text(client, fail)
    check("about to fail on purpose" in log, f"failing task {fail} log has its output")

    task = wait_until(
        client, pending, lambda t: "PENDING" in str(t.get("status_message", "")), args.timeout
    )
    message = str(task.get("status_message", ""))
    check(
        task.get("status") == "queued" and "PENDING" in message,
        f"task {pending} (3 nodes) waits as queued with Slurm's pending reason",
        describe(task),
        note=f"status_message {message!r}",
    )
    match = re.search(r"\b(?:job|slurm job)\s+(\d+)", message)
    pending_job = str((task.get("runtime") or {}).get("job_id", "")) or (
        match.group(1) if match else ""
    )
    client.tasks.stop(pending, status_reason="aborted by cluster-test while pending")
    task = wait_until(client, pending, lambda t: t.get("status") in FINAL, 120)
    check(task.get("status") == "stopped", f"pending task {pending} is stopped", describe(task))
    if check(bool(pending_job), f"pending task {pending} named its Slurm job", describe(task)):
        deadline = time.monotonic() + 90
        state = ""
        while time.monotonic() < deadline:
            state, _ = sacct_nodes(pending_job)
            if state.startswith("CANCELLED"):
                break
            time.sleep(2)
        check(
            state.startswith("CANCELLED"),
            f"Slurm job {pending_job} of the pending task was cancelled",
            note=f"sacct {state}",
        )

    task = wait_until(client, repo_task, lambda t: t.get("status") in FINAL, args.timeout)
    log = log_text(client, repo_task)
    check(
        task.get("status") == "completed" and "from the repository, first commit" in log,
        f"task {repo_task} ran commit {first[:8]} of a git repository on the shared file system",
        describe(task) + " log: " + log[-800:],
    )

    if example:
        task = wait_until(client, example, lambda t: t.get("status") in FINAL, args.timeout)
        host, warning = task_node(task)
        if warning:
            print(f"WARN  task {example}: {warning}", flush=True)
        check(
            task.get("status") == "completed" and host in ("c1", "c2"),
            f"task {example} on queue {args.example_queue!r} (seed template) completed on {host!r}",
            describe(task),
        )

    print(controller("sacct", "-X", "-o", "JobID,JobName%40,State,NodeList,ExitCode").rstrip())
    if check.failures:
        print(f"cluster-test: {len(check.failures)} check(s) failed", flush=True)
        return 1
    print("cluster-test: all checks passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
