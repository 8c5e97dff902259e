"""Submitter pieces: working hours, switches, CLI argument shapes, output files, ledger."""

from __future__ import annotations

import datetime as dt
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from hpcagent.commands.longrunning import expand_greedy
from hpcagent.commands.slurm import GREEDY, _pair_templates, slurm_cmd
from hpcagent.errors import UsageError
from hpcagent.scheduler.slurm import SlurmScheduler
from hpcagent.submitter.blocks import agent_execute_command
from hpcagent.submitter.instance import DAEMON_FILES, SUBMITTER_FILES, read_pid, single_instance
from hpcagent.submitter.ledger import FINISHED, PULLED, RENDERED, SUBMITTED, Ledger
from hpcagent.submitter.outputs import tail, write_script
from hpcagent.submitter.worktime import (
    WorkingHours,
    force_from_properties,
    force_from_tags,
    may_pull,
    parse_span,
)

# 2026-11-29 is a Sunday.
SUN_18 = dt.datetime(2026, 11, 29, 18, 30)
MON_09 = dt.datetime(2026, 11, 30, 9, 0)
WED_18 = dt.datetime(2026, 12, 2, 18, 0)


def test_span_hours_and_days() -> None:
    span = parse_span("17-20 SUN-TUE")
    assert span.contains(SUN_18)
    assert not span.contains(MON_09)
    assert not span.contains(WED_18)
    assert parse_span("17-20").contains(WED_18)
    assert parse_span("22-6").contains(dt.datetime(2026, 11, 30, 3, 0))
    assert parse_span("9 MON").contains(MON_09)
    assert parse_span("0-23 FRI-MON").contains(SUN_18)


@pytest.mark.parametrize("bad", ["", "25", "17-20 XYZ", "17-20 SUN-TUE extra", "a-b"])
def test_bad_spans(bad: str) -> None:
    with pytest.raises(UsageError):
        parse_span(bad)


def test_working_hours() -> None:
    up = WorkingHours.parse(["17-20 SUN-TUE", "9 MON"], [])
    assert up.working(SUN_18)
    assert up.working(MON_09)
    assert not up.working(WED_18)
    down = WorkingHours.parse([], ["17-20 SUN-TUE"])
    assert not down.working(SUN_18)
    assert down.working(WED_18)
    assert WorkingHours().working(WED_18)
    with pytest.raises(UsageError):
        WorkingHours.parse(["1"], ["2"])


def test_switches() -> None:
    assert force_from_properties([{"key": "force", "value": "on"}]) is True
    assert force_from_properties([{"key": "FORCE", "value": "off"}]) is False
    assert force_from_properties([{"key": "other", "value": "on"}]) is None
    assert force_from_tags(["x", "force_workers:on"]) is True
    assert force_from_tags(["force_workers:off"]) is False
    assert force_from_tags([]) is None
    assert may_pull(False, None, None) is False
    assert may_pull(False, True, None) is True
    assert may_pull(True, False, None) is False
    assert may_pull(True, True, False) is False
    assert may_pull(False, False, True) is True


def test_greedy_options() -> None:
    args = ["--template-files", "a", "b", "--queue", "q1", "q2", "--max-jobs", "2", "--dry-run"]
    assert expand_greedy(args, GREEDY) == [
        "--template-files", "a", "--template-files", "b",
        "--queue", "q1", "--queue", "q2", "--max-jobs", "2", "--dry-run",
    ]  # fmt: skip


def test_template_pairing() -> None:
    assert _pair_templates(("t",), ("a", "b")) == [("a", Path("t")), ("b", Path("t"))]
    assert _pair_templates(("t1", "t2"), ("a", "b")) == [("a", Path("t1")), ("b", Path("t2"))]
    with pytest.raises(UsageError, match="2 templates for 3 queues"):
        _pair_templates(("t1", "t2"), ("a", "b", "c"))


def test_cli_usage_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    conf = tmp_path / "c.conf"
    conf.write_text(f'slurm {{ state_dir: "{tmp_path / "state"}" }}\n')
    res = runner.invoke(
        slurm_cmd,
        ["--config-file", str(conf), "--template-files", "a", "b", "--queue", "q1", "q2", "q3"],
    )
    assert isinstance(res.exception, UsageError)
    assert "2 templates for 3 queues" in str(res.exception)
    res = runner.invoke(slurm_cmd, ["--config-file", str(conf), "--status", "--json"])
    assert res.exit_code == 0, res.output
    assert '"running": false' in res.output


def test_agent_execute_command_is_quoted() -> None:
    cmd = agent_execute_command(
        "abc", hpcagent=["/opt/my env/python", "-m", "hpcagent"], config_file=Path("/s/c.conf")
    )
    assert (
        cmd == "env CLEARML_CONFIG_FILE=/s/c.conf '/opt/my env/python' -m hpcagent execute --id abc"
    )


def test_slurm_output_path_and_tail(tmp_path: Path) -> None:
    output_path = SlurmScheduler().output_path
    script = "#!/bin/bash\n#SBATCH --output=task-%x-%j.log\n"
    p = output_path("12", job_name="clearml_task_a", script=script, submit_dir=tmp_path)
    assert p == tmp_path / "task-clearml_task_a-12.log"
    assert output_path("7", job_name="n", script="#!/bin/bash\n", submit_dir=tmp_path) == (
        tmp_path / "slurm-7.out"
    )
    script = "#SBATCH -D /work\n#SBATCH -o out-%j.txt\n"
    assert output_path("3", job_name="n", script=script, submit_dir=tmp_path) == Path(
        "/work/out-3.txt"
    )
    f = tmp_path / "o.log"
    f.write_text("".join(f"line {i}\n" for i in range(100)))
    assert tail(f, max_lines=2) == "line 98\nline 99"
    assert tail(tmp_path / "missing") == ""


def test_script_mode(tmp_path: Path) -> None:
    p = write_script(tmp_path / "s" / "job.sh", "#!/bin/bash\n")
    assert p.stat().st_mode & 0o777 == 0o700
    assert p.read_text() == "#!/bin/bash\n"


def test_ledger_states_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    led = Ledger(path)
    led.record_pulled("t1", "q", "qn")
    led.record_pulled("t2", "q", "qn")
    led.mark_rendered("t2", tmp_path / "x.sh")
    led.record_pulled("t3", "q2", "qn2")
    led.mark_rendered("t3", tmp_path / "y.sh")
    led.mark_submitted("t3", "55")
    led.record_pulled("t4", "q", "qn")
    led.mark_finished("t4", "done")
    led.close()
    assert path.stat().st_mode & 0o777 == 0o600
    led = Ledger(path)
    states = {e.task_id: (e.state, e.job_id) for e in led.live()}
    assert states == {"t1": (PULLED, None), "t2": (RENDERED, None), "t3": (SUBMITTED, "55")}
    assert led.live_by_queue() == {"q": 2, "q2": 1}
    entry = led.get("t4")
    assert entry is not None
    assert entry.state == FINISHED
    assert entry.outcome == "done"
    led.close()
    # committed with synchronous=FULL in WAL mode: a plain reader sees every row
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0] == 4


def test_single_instance_holds_lock_pid_file_and_signals(tmp_path: Path) -> None:
    """One process per state folder: the second is refused with the caller's message; the pid
    file holds this pid while inside and is gone after; SIGTERM only sets the stop event."""
    before = signal.getsignal(signal.SIGTERM)
    with single_instance(tmp_path, SUBMITTER_FILES, "busy here") as stop:
        assert read_pid(tmp_path / "hpcagent-slurm.pid") == os.getpid()
        assert (tmp_path / "submitter.lock").exists()
        # a second process on the same folder is refused
        probe = (
            "import sys; from pathlib import Path; "
            "from hpcagent.submitter.instance import SUBMITTER_FILES, single_instance\n"
            "try:\n"
            "    with single_instance(Path(sys.argv[1]), SUBMITTER_FILES, 'busy here'): pass\n"
            "except Exception as exc: print(type(exc).__name__, exc)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == "UsageError busy here"
        assert not stop.is_set()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.wait(5)
    assert not (tmp_path / "hpcagent-slurm.pid").exists()
    assert signal.getsignal(signal.SIGTERM) == before
    with single_instance(tmp_path, SUBMITTER_FILES, "busy here"):  # released: free again
        pass


def test_single_instance_keeps_a_pid_file_of_another_process(tmp_path: Path) -> None:
    """A pid file rewritten by someone else (a newer run) is not removed on the way out."""
    pid_file = DAEMON_FILES.pid_in(tmp_path)
    with single_instance(tmp_path, DAEMON_FILES, "busy"):
        pid_file.write_text("1\n")
    assert read_pid(pid_file) == 1
