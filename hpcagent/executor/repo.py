"""The task's workspace: a repository checkout through a per-user cache, or a literal script.

Repository flow (docs/executor.md):

1. the URL is normalised (``force_git_ssh_protocol``; https with credentials);
2. a bare mirror ``<vcs_cache>/<name>.<sha256(url)[:16]>.git`` is created or fetched under a
   file lock, so concurrent jobs on a shared filesystem fetch once at a time;
3. a cheap local clone (hard links) of the mirror becomes the workspace;
4. checkout: ``version_num``, else ``tag``, else ``branch``, else the default branch;
5. ``script.diff`` is applied as clearml-agent applies it (``git apply --unidiff-zero``, see
   :func:`apply_diff`); a diff that does not apply fails with the rejected hunks.

Credentials (``agent.git_user``/``agent.git_pass``) never appear in argv, logs or printed URLs:
git asks for them through a ``GIT_ASKPASS`` helper that reads them from its environment, and
every URL that is printed goes through :func:`redact_url`.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from hpcagent.errors import CommandError, RepositoryError
from hpcagent.executor.options import ExecutorConfig
from hpcagent.executor.task_info import ScriptInfo
from hpcagent.process import CommandResult, run_command

#: git operations on big repositories can take long; a hung network must still end.
GIT_TIMEOUT_S = 1800.0
LOCK_TIMEOUT_S = 3600.0

# Patterns kept as text: re compiles (and caches) each on first use, not every job at import.
_USERINFO = r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)[^/@\s]*@"
_HTTPS = r"^https?://(?:[^/@]*@)?(?P<host>[^/:]+)(?::\d+)?/(?P<path>.+)$"
_SCP_SSH = r"^(?:[^@/]+@)?(?P<host>[^:/]+):(?P<path>[^/].*)$"
_SSH_URL = r"^ssh://(?:[^@/]+@)?(?P<host>[^/:]+)(?::\d+)?/(?P<path>.+)$"

Logger = Callable[[str], None]


def redact_url(text: str) -> str:
    """Replace any ``user:pass@`` in URLs inside ``text`` with ``***@``."""
    return re.sub(_USERINFO, lambda m: f"{m.group('scheme')}***@", text)


def normalise_url(url: str, *, force_ssh: bool, have_credentials: bool) -> str:
    """Apply ``force_git_ssh_protocol`` and the https-with-credentials rule.

    * ``force_ssh``: ``https://host/path`` → ``git@host:path``;
    * otherwise, with credentials, ``git@host:path`` / ``ssh://`` → ``https://host/path``
      (credentials only work over https; ClearML's ``translate_ssh``);
    * embedded userinfo in https URLs is always removed (the askpass helper supplies it).
    Local paths and ``file://`` URLs are returned unchanged.
    """
    if url.startswith(("/", "file://", ".")) or os.path.isdir(url):
        return url
    m = re.match(_HTTPS, url)
    if m:
        if force_ssh:
            return f"git@{m.group('host')}:{m.group('path')}"
        return re.sub(r"^(https?://)[^/@]*@", r"\1", url)
    m = re.match(_SSH_URL, url) or re.match(_SCP_SSH, url)
    if m and have_credentials and not force_ssh:
        return f"https://{m.group('host')}/{m.group('path')}"
    return url


@dataclass
class GitEnv:
    """Environment for git calls: askpass helper, no prompts, no user config surprises."""

    env: dict[str, str]
    helper: Path | None = None

    def cleanup(self) -> None:
        if self.helper is not None:
            self.helper.unlink(missing_ok=True)


def make_git_env(user: str, password: str, temp_dir: Path) -> GitEnv:
    """Build the env for git; with credentials, write a 0700 askpass helper into ``temp_dir``.

    The helper contains no secret: it prints ``$HPCAGENT_GIT_USER`` or ``$HPCAGENT_GIT_PASS``
    depending on git's prompt, and those variables live only in git's environment.
    """
    env = dict(os.environ)
    env["GIT_TERMINAL_PROMPT"] = "0"
    env.setdefault("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
    if not (user or password):
        return GitEnv(env)
    fd, name = tempfile.mkstemp(prefix="hpcagent-askpass-", suffix=".sh", dir=temp_dir)
    with os.fdopen(fd, "w") as fh:
        fh.write(
            "#!/bin/sh\n"
            'case "$1" in\n'
            '  Username*|username*) printf "%s\\n" "$HPCAGENT_GIT_USER" ;;\n'
            '  *) printf "%s\\n" "$HPCAGENT_GIT_PASS" ;;\n'
            "esac\n"
        )
    os.chmod(name, stat.S_IRWXU)
    env.update(GIT_ASKPASS=name, HPCAGENT_GIT_USER=user, HPCAGENT_GIT_PASS=password)
    return GitEnv(env, Path(name))


def _git(
    args: list[str], *, env: Mapping[str, str], cwd: Path | None = None, what: str = ""
) -> CommandResult:
    """Run git; raise :class:`RepositoryError` with redacted stderr when it fails."""
    try:
        res = run_command(["git", *args], timeout=GIT_TIMEOUT_S, env=dict(env), cwd=cwd)
    except CommandError as exc:  # timeout or missing git binary
        raise RepositoryError(f"{what or 'git ' + args[0]} failed: {redact_url(str(exc))}") from exc
    if res.returncode != 0:
        detail = redact_url((res.stderr or res.stdout).strip())[-1500:]
        raise RepositoryError(
            f"{what or 'git ' + args[0]} failed (exit {res.returncode}): {detail}",
            stderr=detail,
            returncode=res.returncode,
        )
    return res


def mirror_path(cache_dir: Path, url: str) -> Path:
    """Where the bare mirror of ``url`` lives in the cache (stable per URL, credentials ignored)."""
    clean = redact_url(url).rstrip("/")
    name = re.sub(r"\.git$", "", clean.rsplit("/", 1)[-1].rsplit(":", 1)[-1]) or "repo"
    name = re.sub(r"[^A-Za-z0-9_.\-]", "_", name)
    digest = hashlib.sha256(clean.encode()).hexdigest()[:16]
    return cache_dir / f"{name}.{digest}.git"


def update_mirror(cache_dir: Path, url: str, git_env: GitEnv, log: Logger) -> Path:
    """Create or fetch the bare mirror of ``url`` under its file lock; return its path."""
    from filelock import FileLock, Timeout  # here: a task without a repository never needs it

    cache_dir.mkdir(parents=True, exist_ok=True)
    mirror = mirror_path(cache_dir, url)
    lock = FileLock(str(mirror) + ".lock")
    try:
        with lock.acquire(timeout=LOCK_TIMEOUT_S):
            if (mirror / "HEAD").exists():
                log(f"repository cache: fetching {redact_url(url)}")
                _git(["remote", "set-url", "origin", url], env=git_env.env, cwd=mirror, what="git")
                _git(
                    [
                        "fetch",
                        "--prune",
                        "--tags",
                        "--force",
                        "origin",
                        "+refs/heads/*:refs/heads/*",
                    ],
                    env=git_env.env,
                    cwd=mirror,
                    what=f"fetching {redact_url(url)}",
                )
            else:
                log(f"repository cache: cloning {redact_url(url)}")
                tmp = mirror.with_name(mirror.name + f".tmp{os.getpid()}")
                _git(
                    ["clone", "--mirror", "--quiet", url, str(tmp)],
                    env=git_env.env,
                    what=f"cloning {redact_url(url)}",
                )
                os.replace(tmp, mirror)
    except Timeout as exc:
        raise RepositoryError(
            f"timed out waiting for the repository cache lock {lock.lock_file}"
        ) from exc
    return mirror


def checkout(
    script: ScriptInfo,
    dest: Path,
    *,
    git_env: GitEnv,
    vcs_cache: Path | None,
    log: Logger,
    force_ssh: bool = False,
) -> str:
    """Clone ``script.repository`` into ``dest`` at the task's revision; return the commit sha."""
    have_creds = "GIT_ASKPASS" in git_env.env
    url = normalise_url(script.repository, force_ssh=force_ssh, have_credentials=have_creds)
    source = str(update_mirror(vcs_cache, url, git_env, log)) if vcs_cache is not None else url
    log(f"cloning {redact_url(script.repository)} into {dest}")
    _git(
        ["clone", "--quiet", "--no-checkout", source, str(dest)],
        env=git_env.env,
        what=f"cloning {redact_url(script.repository)}",
    )
    if script.version_num:
        ref, what = script.version_num, f"commit {script.version_num}"
    elif script.tag:
        ref, what = f"refs/tags/{script.tag}", f"tag {script.tag}"
    elif script.branch:
        branch = script.branch.removeprefix("origin/")
        ref, what = f"refs/remotes/origin/{branch}", f"branch {branch}"
    else:
        ref, what = "HEAD", "the default branch"
    _git(
        ["checkout", "--quiet", "--detach", ref],
        env=git_env.env,
        cwd=dest,
        what=f"checking out {what}",
    )
    if vcs_cache is not None:
        # The clone's origin is the cache; point it at the real remote for the user's code.
        _git(["remote", "set-url", "origin", url], env=git_env.env, cwd=dest, what="git")
    sha = str(_git(["rev-parse", "HEAD"], env=git_env.env, cwd=dest).stdout).strip()
    log(f"checked out {what} ({sha[:12]})")
    return sha


#: Files a diff changes (``--- a/<path>``); the agent creates the missing ones before applying.
_DIFF_OLD_FILE = r"(?m)^--- a/(?P<path>.+?)\t?$"


def apply_diff(repo_dir: Path, diff: str, git_env: GitEnv, log: Logger) -> None:
    """Apply the task's uncommitted changes as clearml-agent does; raise RepositoryError
    with the rejected hunks when the diff does not apply.

    The agent's rules: ``git apply --unidiff-zero`` (``clearml-task`` and the SDK may record
    diffs without context lines), the diff text ends with an extra newline (a diff whose last
    line lost its newline is not "corrupt"), and every file the diff changes (``--- a/path``)
    that the commit lacks is created empty first (a file the user never committed but
    changed). New and deleted files are git's own business (``/dev/null``).
    """
    if not diff.strip():
        return
    root = repo_dir.resolve()
    for match in re.finditer(_DIFF_OLD_FILE, diff):
        target = (repo_dir / match.group("path")).resolve()
        if root in target.parents and not os.path.lexists(target):
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch()
            log(f"created {match.group('path')} (changed by the diff, missing in the commit)")
    patch = repo_dir / ".git" / "hpcagent-task.diff"
    patch.write_text(diff + "\n")
    base = ["apply", "--unidiff-zero", "--whitespace=nowarn"]
    try:
        try:
            _git(
                [*base, str(patch)],
                env=git_env.env,
                cwd=repo_dir,
                what="applying the task's git diff (script.diff)",
            )
        except RepositoryError as exc:
            raise RepositoryError(
                str(exc) + _rejected_hunks(repo_dir, patch, base, git_env)
            ) from exc
    finally:
        patch.unlink(missing_ok=True)
    log("applied the task's uncommitted changes (script.diff)")


def _rejected_hunks(repo_dir: Path, patch: Path, base: list[str], git_env: GitEnv) -> str:
    """The hunks git rejects (``--reject`` writes them to ``*.rej``), for the task's log; the
    workspace is thrown away after a failed apply, so the partial apply does no harm."""
    try:
        run_command(
            ["git", *base, "--reject", str(patch)],
            timeout=GIT_TIMEOUT_S,
            env=dict(git_env.env),
            cwd=repo_dir,
        )
    except CommandError:
        return ""
    parts = []
    for rej in sorted(repo_dir.rglob("*.rej")):
        if ".git" not in rej.relative_to(repo_dir).parts:
            rel = rej.relative_to(repo_dir)
            parts.append(f"\nrejected hunk(s) of {str(rel)[: -len('.rej')]}:\n{rej.read_text()}")
    return "".join(parts)[-3000:]


def write_literal_script(script: ScriptInfo, code_dir: Path, log: Logger) -> Path:
    """Write the script text stored on a repository-less task to ``code_dir/<entry_point>``."""
    if not script.diff.strip():
        raise RepositoryError("the task has no repository and no script text (script.diff)")
    entry = script.entry_point.split()[0] if script.entry_point else "script.py"
    if entry == "-m" or os.path.isabs(entry) or ".." in Path(entry).parts:
        raise RepositoryError(f"unsupported entry point for a script without repository: {entry}")
    target = code_dir / entry
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(script.diff)
    log(f"wrote the task's script to {target}")
    return target


def prepare_workspace(
    script: ScriptInfo, workdir: Path, cfg: ExecutorConfig, log: Logger
) -> tuple[Path, Path, Path | None]:
    """The task's code under ``workdir``: returns (working dir, code dir for ``PYTHONPATH``,
    repository root or None).

    A literal script is written to ``workdir/code``; a repository is checked out to
    ``workdir/repo`` through the cache, ``script.diff`` applied, with the credentials helper
    removed afterwards. A ``working_dir`` that leaves the repository is a RepositoryError.
    """
    if script.is_literal:
        code_dir = workdir / "code"
        write_literal_script(script, code_dir, log)
        return code_dir, code_dir, None
    repo_dir = workdir / "repo"
    git_env = make_git_env(cfg.git_user, cfg.git_pass, workdir)
    try:
        checkout(
            script,
            repo_dir,
            git_env=git_env,
            vcs_cache=cfg.vcs_cache_path,
            log=log,
            force_ssh=cfg.force_git_ssh_protocol,
        )
        apply_diff(repo_dir, script.diff, git_env, log)
    finally:
        git_env.cleanup()
    cwd = (repo_dir / script.working_dir).resolve()
    if repo_dir.resolve() not in (cwd, *cwd.parents):
        raise RepositoryError(f"working_dir {script.working_dir!r} leaves the repository")
    return cwd, repo_dir, repo_dir
