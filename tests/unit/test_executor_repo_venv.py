"""Repository cache/checkout and venv cache, with real git and uv on local data (no network)."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from hpcagent.errors import EnvironmentSetupError, RepositoryError
from hpcagent.executor import repo as repo_mod
from hpcagent.executor import venv as venv_mod
from hpcagent.executor.task_info import ScriptInfo
from hpcagent.executor.venv import VenvBuilder, VenvSpec


def _git(args: list[str], cwd: Path) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t")
    env.update(GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    ).stdout


@pytest.fixture
def bare_repo(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    work = tmp_path / "work"
    work.mkdir()
    _git(["init", "-q", "-b", "main"], work)
    shas: dict[str, str] = {}
    for name in ("one", "two"):
        (work / "f.txt").write_text(name + "\n")
        _git(["add", "."], work)
        _git(["commit", "-q", "-m", name], work)
        shas[name] = _git(["rev-parse", "HEAD"], work).strip()
    _git(["tag", "v1", shas["one"]], work)
    _git(["checkout", "-q", "-b", "feature", shas["one"]], work)
    (work / "f.txt").write_text("feature\n")
    _git(["commit", "-q", "-am", "feature"], work)
    _git(["checkout", "-q", "main"], work)
    bare = tmp_path / "r.git"
    _git(["clone", "-q", "--bare", str(work), str(bare)], tmp_path)
    _git(["push", "-q", str(bare), "feature"], work)
    return bare, shas


def test_redact_and_normalise_urls() -> None:
    assert (
        repo_mod.redact_url("fatal: https://u:p@h.org/r.git x")
        == "fatal: https://***@h.org/r.git x"
    )
    norm = repo_mod.normalise_url
    assert norm("https://u:p@h.org/g/r.git", force_ssh=False, have_credentials=True) == (
        "https://h.org/g/r.git"
    )
    assert (
        norm("https://h.org/g/r.git", force_ssh=True, have_credentials=False) == "git@h.org:g/r.git"
    )
    assert (
        norm("git@h.org:g/r.git", force_ssh=False, have_credentials=True) == "https://h.org/g/r.git"
    )
    assert norm("git@h.org:g/r.git", force_ssh=False, have_credentials=False) == "git@h.org:g/r.git"
    assert norm("/local/repo.git", force_ssh=True, have_credentials=True) == "/local/repo.git"


def test_askpass_helper_keeps_secrets_out_of_files(tmp_path: Path) -> None:
    genv = repo_mod.make_git_env("alice", "s3cret", tmp_path)
    assert genv.helper is not None
    assert "s3cret" not in genv.helper.read_text()
    assert oct(genv.helper.stat().st_mode & 0o777) == "0o700"
    env = genv.env
    user = subprocess.run(
        [str(genv.helper), "Username for 'https://h'"], env=env, capture_output=True, text=True
    )
    pw = subprocess.run(
        [str(genv.helper), "Password for 'https://h'"], env=env, capture_output=True, text=True
    )
    assert (user.stdout.strip(), pw.stdout.strip()) == ("alice", "s3cret")
    genv.cleanup()
    assert not genv.helper.exists()


@pytest.mark.parametrize(
    ("script_kw", "expected"),
    [
        ({"version_num": "ONE"}, "one"),
        ({"tag": "v1"}, "one"),
        ({"branch": "feature"}, "feature"),
        ({"branch": "origin/feature"}, "feature"),
        ({}, "two"),
    ],
)
def test_checkout_order_through_cache(
    tmp_path: Path, bare_repo: tuple[Path, dict[str, str]], script_kw: dict[str, str], expected: str
) -> None:
    bare, shas = bare_repo
    if script_kw.get("version_num") == "ONE":
        script_kw = {"version_num": shas["one"]}
    script = ScriptInfo(repository=str(bare), **script_kw)
    genv = repo_mod.make_git_env("", "", tmp_path)
    notes: list[str] = []
    dest = tmp_path / "ws"
    repo_mod.checkout(script, dest, git_env=genv, vcs_cache=tmp_path / "cache", log=notes.append)
    assert (dest / "f.txt").read_text() == expected + "\n"
    assert repo_mod.mirror_path(tmp_path / "cache", str(bare)).exists()
    # the workspace's origin is the real remote, not the cache
    assert _git(["remote", "get-url", "origin"], dest).strip() == str(bare)


def test_unknown_commit_and_bad_diff_raise(
    tmp_path: Path, bare_repo: tuple[Path, dict[str, str]]
) -> None:
    bare, _ = bare_repo
    genv = repo_mod.make_git_env("", "", tmp_path)
    with pytest.raises(RepositoryError, match="checking out commit"):
        repo_mod.checkout(
            ScriptInfo(repository=str(bare), version_num="0" * 40),
            tmp_path / "a",
            git_env=genv,
            vcs_cache=None,
            log=lambda _m: None,
        )
    repo_mod.checkout(
        ScriptInfo(repository=str(bare)),
        tmp_path / "b",
        git_env=genv,
        vcs_cache=None,
        log=lambda _m: None,
    )
    bad = "diff --git a/f.txt b/f.txt\n--- a/f.txt\n+++ b/f.txt\n@@ -1 +1 @@\n-nothere\n+x\n"
    with pytest.raises(RepositoryError, match="applying the task's git diff"):
        repo_mod.apply_diff(tmp_path / "b", bad, genv, lambda _m: None)


def test_credentials_never_in_argv(
    tmp_path: Path, bare_repo: tuple[Path, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    bare, _ = bare_repo
    seen: list[list[str]] = []
    real = repo_mod.run_command

    def spy(argv: list[str], **kw: Any) -> Any:
        seen.append(list(argv))
        return real(argv, **kw)

    monkeypatch.setattr(repo_mod, "run_command", spy)
    genv = repo_mod.make_git_env("bob", "TOPSECRET", tmp_path)
    repo_mod.checkout(
        ScriptInfo(repository=str(bare)),
        tmp_path / "w",
        git_env=genv,
        vcs_cache=tmp_path / "c",
        log=lambda _m: None,
    )
    assert seen
    assert not any("TOPSECRET" in a for argv in seen for a in argv)


def test_literal_script(tmp_path: Path) -> None:
    path = repo_mod.write_literal_script(
        ScriptInfo(entry_point="sub/run.py --x", diff="print(1)\n"), tmp_path, lambda _m: None
    )
    assert path == tmp_path / "sub" / "run.py"
    assert path.read_text() == "print(1)\n"
    with pytest.raises(RepositoryError):
        repo_mod.write_literal_script(ScriptInfo(entry_point="../x.py", diff="x"), tmp_path, print)


# -- venv ---------------------------------------------------------------------------------------


def _spec(**kw: Any) -> VenvSpec:
    base: dict[str, Any] = {
        "python": venv_mod.sys.executable,
        "python_version": "3.11.7",
        "requirements": (),
    }
    base.update(kw)
    return VenvSpec(**base)


def test_key_is_order_independent_and_sensitive() -> None:
    a = _spec(requirements=("b==1", "a==2"))
    assert a.key() == _spec(requirements=("a==2", " b==1 ")).key()
    assert a.key() != _spec(requirements=("a==2", "b==1"), python_version="3.12.0").key()
    assert a.key() != _spec(requirements=("a==2", "b==1"), image="img").key()
    assert not _spec(requirements=("-r other.txt",)).keyable


def test_cache_build_hit_evict(tmp_path: Path) -> None:
    notes: list[str] = []
    b = VenvBuilder(
        cache_dir=tmp_path / "cache", max_entries=1, free_space_threshold_gb=0, log=notes.append
    )
    first = b.prepare(_spec(image="one"), tmp_path / "job1")
    assert first.built
    assert first.python.exists()
    again = b.prepare(_spec(image="one"), tmp_path / "job2")
    assert (again.built, again.path) == (False, first.path)
    other = b.prepare(_spec(image="two"), tmp_path / "job3")
    assert other.built
    assert not first.path.exists()  # evicted, max_entries=1
    assert any("evicted" in n for n in notes)


def test_concurrent_same_key_builds_once(tmp_path: Path) -> None:
    notes: list[str] = []
    lock = threading.Lock()

    def log(msg: str) -> None:
        with lock:
            notes.append(msg)

    results: list[Any] = []
    threads = [
        threading.Thread(
            target=lambda i=i: results.append(
                VenvBuilder(
                    cache_dir=tmp_path / "cache", free_space_threshold_gb=0, log=log
                ).prepare(_spec(image="same"), tmp_path / f"job{i}")
            )
        )
        for i in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3
    assert sum(r.built for r in results) == 1
    assert len({r.path for r in results}) == 1
    assert sum("building" in n for n in notes) == 1


def test_failed_install_leaves_no_entry_and_fresh_without_cache(tmp_path: Path) -> None:
    b = VenvBuilder(cache_dir=tmp_path / "cache", free_space_threshold_gb=0, log=lambda _m: None)
    spec = _spec(requirements=("no-such-package-hpcagent==9.9",), extra_args=("--no-index",))
    with pytest.raises(EnvironmentSetupError, match="installing requirements"):
        b.prepare(spec, tmp_path / "job")
    assert not (tmp_path / "cache" / spec.key()).exists()
    fresh = VenvBuilder(cache_dir=None, log=lambda _m: None).prepare(_spec(), tmp_path / "job2")
    assert (fresh.cached, fresh.path) == (False, tmp_path / "job2" / "venv")
    assert fresh.python.exists()


def test_low_free_space_evicts_then_builds_outside_cache(tmp_path: Path) -> None:
    notes: list[str] = []
    cache = tmp_path / "cache"
    VenvBuilder(cache_dir=cache, free_space_threshold_gb=0, log=notes.append).prepare(
        _spec(image="old"), tmp_path / "j1"
    )
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 1
    huge = VenvBuilder(cache_dir=cache, free_space_threshold_gb=1e9, log=notes.append)
    venv = huge.prepare(_spec(image="new"), tmp_path / "j2")
    assert not venv.cached
    assert venv.python.exists()
    assert not [p for p in cache.iterdir() if p.is_dir()]  # the old entry was evicted first
    assert any("free space" in n for n in notes)


def test_a_slow_build_step_prints_progress_lines(tmp_path: Path) -> None:
    """A real build whose every step is slowed by a real ``sleep`` in front of it (through the
    container-mode wrap seam) says it is still running, in lines that name the step."""
    notes: list[str] = []

    def slow(argv: Sequence[str]) -> tuple[list[str], dict[str, str]]:
        return ["bash", "-c", 'sleep 1; exec "$@"', "slow", *argv], dict(os.environ)

    built = VenvBuilder(cache_dir=None, log=notes.append, wrap=slow, progress_every_s=0.2).prepare(
        _spec(manager="pip"), tmp_path / "job"
    )
    assert built.python.exists()
    beats = [n for n in notes if n.endswith(" s)") and ": still running (" in n]
    steps = {b.split(": still running")[0] for b in beats}
    assert steps == {"python -m venv", "listing installed packages"}
    assert len(beats) >= 4
    assert venv_mod.PROGRESS_EVERY_S <= 5.0
