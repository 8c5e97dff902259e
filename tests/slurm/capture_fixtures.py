"""Capture real Slurm outputs for the parser tests (run by hand on the one-host cluster).

    .venv/bin/python tests/slurm/capture_fixtures.py [--noacct]

Submits one job per state the local cluster can produce, waits until each reached it, then
saves the exact argv/stdout/stderr/returncode of sbatch, squeue, sacct and scontrol as JSON under
``tests/slurm/fixtures/slurm-<version>/``, with ``expect`` mapping job ids to the state that job
was built to reach. Everything it submits is cancelled at the end. ``--noacct`` also switches the
cluster to the no-accounting profile for a moment to record sacct's refusal and scontrol output,
then switches back.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from hpcagent.process import CommandResult, run_command  # noqa: E402
from hpcagent.scheduler.slurm_parse import (  # noqa: E402
    parse_sbatch_output,
    sacct_argv,
    squeue_argv,
)

CLUSTER_SH = ROOT / "tests" / "slurm" / "cluster.sh"

JOBS: dict[str, tuple[list[str], str, str]] = {
    # name: (extra sbatch args, script body, expected state)
    "completed": ([], "echo ok\nexit 0\n", "COMPLETED"),
    "failed3": ([], "echo failing >&2\nexit 3\n", "FAILED"),
    "killed9": ([], "kill -9 $$\n", "FAILED"),
    "running": ([], "sleep 600\n", "RUNNING"),
    "cancel_running": ([], "sleep 600\n", "CANCELLED"),
    "cancel_pending": (["--hold"], "sleep 600\n", "CANCELLED"),
    "pending_held": (["--hold"], "sleep 600\n", "PENDING"),
    "pending_begin": (["--begin=now+3600"], "sleep 600\n", "PENDING"),
    "timeout": (["--time=1"], "sleep 600\n", "TIMEOUT"),
    "oom": (
        ["--mem=40M"],
        "python3 -c 'import time; b = bytearray(400 * 1024 * 1024); time.sleep(60)'\n",
        # Without cgroups, JobAcctGatherParams=OverMemoryKill kills the step: FAILED 0:9.
        "FAILED",
    ),
    "array": (["--array=1-3"], "exit 0\n", "COMPLETED"),
    "array_held": (["--array=1-4%2", "--hold"], "sleep 600\n", "PENDING"),
}
HET_SCRIPT = "#SBATCH -n1\n#SBATCH hetjob\n#SBATCH -n1\nsleep 600\n"


def version() -> str:
    out = run_command(["sbatch", "--version"], timeout=30).stdout.split()
    return out[1] if len(out) > 1 else "unknown"


def save(folder: Path, name: str, res: CommandResult, **extra: Any) -> None:
    data = {
        "captured": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "slurm_version": version(),
        "handmade": False,
        "argv": list(res.argv),
        "returncode": res.returncode,
        "stdout": res.stdout,
        "stderr": res.stderr,
        **extra,
    }
    (folder / f"{name}.json").write_text(json.dumps(data, indent=1) + "\n")
    print(f"saved {name}: rc={res.returncode}")


def sbatch(tmp: Path, name: str, args: list[str], body: str) -> CommandResult:
    script = tmp / f"{name}.sh"
    script.write_text("#!/bin/bash\n" + body)
    return run_command(
        [
            "sbatch",
            "--parsable",
            f"--job-name=fx_{name}",
            f"--output={tmp}/%x-%j.out",
            *args,
            str(script),
        ],
        timeout=60,
    )


def states(ids: list[str]) -> dict[str, str]:
    res = run_command(
        ["squeue", "-h", "-t", "all", "-o", "%i|%T", f"--jobs={','.join(ids)}"], timeout=60
    )
    out: dict[str, str] = {}
    for line in res.stdout.splitlines():
        jid, _, st = line.partition("|")
        out[jid] = st
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--noacct", action="store_true")
    opts = ap.parse_args()
    folder = ROOT / "tests" / "slurm" / "fixtures" / f"slurm-{version()}"
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="hpcagent-fx-", dir="/var/tmp"))
    tmp.chmod(0o777)
    ids: dict[str, str] = {}
    try:
        for name, (args, body, _) in JOBS.items():
            res = sbatch(tmp, name, args, body)
            parsed = parse_sbatch_output(res.stdout)
            assert parsed, res
            ids[name] = parsed[0]
            if name == "completed":
                save(folder, "sbatch_ok", res)
        (tmp / "het.sh").write_text("#!/bin/bash\n" + HET_SCRIPT)
        res = run_command(
            [
                "sbatch",
                "--parsable",
                "--job-name=fx_het",
                f"--output={tmp}/het-%j.out",
                str(tmp / "het.sh"),
            ],
            timeout=60,
        )
        ids["het"] = parse_sbatch_output(res.stdout)[0]  # type: ignore[index]
        save(folder, "sbatch_het", res)
        # Rejections.
        for name, args, body in [
            ("sbatch_invalid_partition", ["--partition=nosuchpart"], "exit 0\n"),
            ("sbatch_invalid_gres", ["--gres=gpu:1"], "exit 0\n"),
            ("sbatch_invalid_time", ["--time=notatime"], "exit 0\n"),
            ("sbatch_bad_directive", [], "#SBATCH --no-such-option=1\nexit 0\n"),
            ("sbatch_invalid_nodes", ["--nodes=5"], "exit 0\n"),
        ]:
            save(folder, name, sbatch(tmp, name, args, body))
        time.sleep(3)
        run_command(["scancel", ids["cancel_pending"]], timeout=60)
        deadline = time.monotonic() + 200
        while time.monotonic() < deadline:
            st = states([ids["cancel_running"], ids["timeout"], ids["oom"]])
            if st.get(ids["cancel_running"]) == "RUNNING":
                run_command(["scancel", ids["cancel_running"]], timeout=60)
            if st.get(ids["timeout"]) == "TIMEOUT" and st.get(ids["oom"]) not in (
                "RUNNING",
                "PENDING",
                None,
            ):
                break
            time.sleep(2)
        time.sleep(5)
        expect = {ids[n]: JOBS[n][2] for n in JOBS}
        # The het job's state depends on what else runs on the node: parsed, not expected.
        all_ids = list(ids.values())
        save(
            folder,
            "squeue_states",
            run_command(squeue_argv(all_ids), timeout=60),
            expect=expect,
            names=ids,
        )
        save(
            folder,
            "sacct_states",
            run_command(sacct_argv(all_ids), timeout=60),
            expect=expect,
            names=ids,
        )
        save(
            folder,
            "scontrol_states",
            run_command(["scontrol", "--oneliner", "show", "job"], timeout=60),
            expect=expect,
            names=ids,
        )
        save(
            folder,
            "squeue_unknown_single",
            run_command(["squeue", "--noheader", "--jobs=999999"], timeout=60),
        )
        save(folder, "squeue_unknown_pair", run_command(squeue_argv(["999999"]), timeout=60))
        save(folder, "sacct_unknown", run_command(sacct_argv(["999999"]), timeout=60))
        save(folder, "scancel_unknown", run_command(["scancel", "999999"], timeout=60))
        if opts.noacct:
            subprocess.run([str(CLUSTER_SH), "up", "--profile", "noacct"], check=True)
            save(folder, "sacct_disabled", run_command(sacct_argv(all_ids), timeout=60))
            res = sbatch(tmp, "noacct_failed3", [], "exit 3\n")
            jid = parse_sbatch_output(res.stdout)[0]  # type: ignore[index]
            ids["noacct_failed3"] = jid
            for _ in range(60):
                res = run_command(["scontrol", "--oneliner", "show", "job", jid], timeout=60)
                if "JobState=FAILED" in res.stdout:
                    break
                time.sleep(0.5)
            save(folder, "scontrol_noacct", res, expect={jid: "FAILED"})
            save(
                folder,
                "scontrol_unknown",
                run_command(["scontrol", "--oneliner", "show", "job", "999999"], timeout=60),
            )
    finally:
        run_command(["scancel", *ids.values()], timeout=60)
        if opts.noacct:
            subprocess.run([str(CLUSTER_SH), "up", "--profile", "acct"], check=True)
    print("fixtures in", folder)


if __name__ == "__main__":
    main()
