"""``script.diff`` applied as clearml-agent applies it (executor/repo.py ``apply_diff``), with
real git: zero-context diffs, new, deleted and uncommitted-but-changed files, and a diff that
does not apply (its rejected hunk in the error)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import _git

from hpcagent.errors import RepositoryError
from hpcagent.executor import repo as repo_mod

BASE = "a = 1\nb = 2\nc = 3\nd = 4\ne = 5\nf = 6\ng = 7\n"


@pytest.fixture
def work(tmp_path: Path) -> Path:
    repo = tmp_path / "w"
    repo.mkdir()
    _git(["init", "-q", "-b", "main"], repo)
    (repo / "m.py").write_text(BASE)
    (repo / "old.py").write_text("gone = True\n")
    _git(["add", "."], repo)
    _git(["commit", "-q", "-m", "c"], repo)
    return repo


def _diff_of_changes(repo: Path, *extra: str) -> str:
    """Change the work tree, record ``git diff`` (as the SDK/clearml-task do), reset it."""
    (repo / "m.py").write_text(BASE.replace("b = 2", "b = 20").replace("f = 6", "f = 60"))
    (repo / "old.py").unlink()
    (repo / "new.py").write_text("fresh = 1\n")
    _git(["add", "-N", "new.py"], repo)
    diff = _git(["diff", *extra], repo)
    _git(["reset", "-q", "--hard"], repo)
    (repo / "new.py").unlink(missing_ok=True)
    return diff


def _genv(tmp_path: Path) -> repo_mod.GitEnv:
    return repo_mod.make_git_env("", "", tmp_path)


@pytest.mark.parametrize("context", ["-U0", "-U3"])
def test_zero_and_normal_context_new_and_deleted_files(
    work: Path, tmp_path: Path, context: str
) -> None:
    diff = _diff_of_changes(work, context)
    if context == "-U0":
        assert "@@ -2 +2 @@" in diff  # really without context lines
    repo_mod.apply_diff(work, diff.rstrip("\n"), _genv(tmp_path), lambda _m: None)
    assert (work / "m.py").read_text() == BASE.replace("b = 2", "b = 20").replace("f = 6", "f = 60")
    assert not (work / "old.py").exists()
    assert (work / "new.py").read_text() == "fresh = 1\n"


def test_file_changed_but_never_committed_is_created_first(work: Path, tmp_path: Path) -> None:
    diff = "--- a/extra.txt\n+++ b/extra.txt\n@@ -0,0 +1 @@\n+hello\n"
    notes: list[str] = []
    repo_mod.apply_diff(work, diff, _genv(tmp_path), notes.append)
    assert (work / "extra.txt").read_text() == "hello\n"
    assert any("extra.txt" in n for n in notes)


def test_diff_that_does_not_apply_names_the_rejected_hunk(work: Path, tmp_path: Path) -> None:
    diff = _diff_of_changes(work, "-U0").replace("-b = 2", "-b = 999")
    with pytest.raises(RepositoryError) as err:
        repo_mod.apply_diff(work, diff, _genv(tmp_path), lambda _m: None)
    text = str(err.value)
    assert "applying the task's git diff" in text
    assert "rejected hunk(s) of m.py" in text
    assert "-b = 999" in text
    assert "+b = 20" in text
