"""The task's Python environment: a cached venv keyed by interpreter, requirements and image.

Cache layout (``agent.venvs_cache.path``)::

    <cache>/<key>/                  the venv, built IN PLACE (see below)
    <cache>/<key>/.hpcagent-complete  JSON marker written last: key, python, requirements, freeze
    <cache>/<key>.lock              per-key build lock (filelock)
    <cache>/.evict.lock             eviction lock

``key = sha256("hpcagent-venv-v1", interpreter version, manager, image, system-site flag,
sorted requirement lines)``.

Why in place and not "build to a temporary name and rename": a venv is not relocatable
(``bin/activate`` and every console script carry the absolute path of the venv), so a renamed
venv would have broken entry points. Instead the build happens at the final path while the
per-key lock is held, and the marker is written last (atomically, via rename). Readers use an
entry only when its marker exists, so a half-built or crashed build is never used: the next
builder removes it and starts over. N jobs wanting the same key at once therefore build it
once; the others wait on the lock and find the marker.

A hit touches the marker (LRU clock). After a build, entries beyond ``max_entries`` are evicted
oldest first; when free space is below ``free_space_threshold_gb`` entries are evicted before
building, and if that is not enough the venv is built outside the cache. Requirements that point
at local files (``-r``, ``-e``, paths) cannot be keyed and always get a fresh venv.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from hpcagent.errors import CommandError, EnvironmentSetupError
from hpcagent.process import CommandResult, run_command

MARKER = ".hpcagent-complete"
KEY_VERSION = "hpcagent-venv-v1"
INSTALL_TIMEOUT_S = 3600.0
#: A build step (venv, install, freeze) still running prints a line this often, so that a long
#: install is never mistaken for a hung one (at most 5 s of silence).
PROGRESS_EVERY_S = 4.0
LOCK_TIMEOUT_S = 3600.0
_UNKEYABLE_PREFIXES = ("-r", "--requirement", "-e", "--editable", "-c", ".", "/", "file:")

Logger = Callable[[str], None]


@dataclass(frozen=True)
class VenvSpec:
    """What the venv must contain."""

    python: str
    python_version: str
    requirements: tuple[str, ...]
    manager: str = "uv"
    image: str = ""
    system_site_packages: bool = False
    extra_args: tuple[str, ...] = ()

    @property
    def keyable(self) -> bool:
        return not any(r.startswith(_UNKEYABLE_PREFIXES) for r in self.requirements)

    def key(self) -> str:
        """The cache key (sha256 hex); independent of requirement order and whitespace."""
        parts = [
            KEY_VERSION,
            self.python_version,
            self.manager,
            self.image,
            str(self.system_site_packages),
            *sorted(r.strip() for r in self.requirements if r.strip()),
        ]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()


@dataclass
class Venv:
    """A ready environment."""

    path: Path
    frozen: str
    cached: bool
    built: bool
    key: str = ""
    log_lines: list[str] = field(default_factory=list)

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"


def find_uv() -> str | None:
    """The uv binary on PATH or next to the running interpreter, or None."""
    found = shutil.which("uv")
    if found:
        return found
    beside = Path(sys.executable).parent / "uv"
    return str(beside) if beside.exists() else None


def resolve_python(
    configured: str, task_binary: str, recorded: str = "", log: Logger | None = None
) -> tuple[str, str]:
    """Pick the interpreter; returns ``(path, version)``.

    ``agent.python_binary``, else the task's ``pythonX.Y`` binary, else ``python<recorded>``
    (the SDK's ``# Python X.Y`` requirements header), else the interpreter running hpcagent.
    When the task wants a version this node lacks, ``log`` gets one line saying so.
    """
    candidates: list[str] = []
    if configured:
        candidates.append(configured)
    base = os.path.basename(task_binary or "")
    if base.startswith("python") and base not in ("python", "python3"):
        candidates.append(base)
    if recorded:
        candidates.append(f"python{recorded}")
    for cand in candidates:
        path = shutil.which(cand) or (cand if os.path.isabs(cand) and os.path.exists(cand) else "")
        if path:
            res = _run([path, "-c", "import platform;print(platform.python_version())"], "python")
            return path, res.stdout.strip()
    if candidates and log is not None:
        log(
            f"Python {' / '.join(candidates)} (recorded on the task) not found on this node;"
            f" using Python {platform.python_version()} ({sys.executable})"
        )
    return sys.executable, platform.python_version()


def _run(argv: list[str], what: str, env: dict[str, str] | None = None) -> CommandResult:
    try:
        res = run_command(argv, timeout=INSTALL_TIMEOUT_S, env=env)
    except CommandError as exc:
        raise EnvironmentSetupError(f"{what} failed: {exc}") from exc
    if res.returncode != 0:
        detail = (res.stderr.strip() or res.stdout.strip())[-2000:]
        raise EnvironmentSetupError(
            f"{what} failed (exit {res.returncode}): {detail}",
            stderr=detail,
            returncode=res.returncode,
        )
    return res


@contextmanager
def progress(log: Logger, what: str, every_s: float) -> Iterator[None]:
    """While the block runs, ``log`` "<what>: still running (N s)" every ``every_s`` seconds."""
    done = threading.Event()
    start = time.monotonic()

    def beat() -> None:
        while not done.wait(every_s):
            log(f"{what}: still running ({time.monotonic() - start:.0f} s)")

    thread = threading.Thread(target=beat, name="venv-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


class VenvBuilder:
    """Builds venvs, through the cache when one is configured."""

    def __init__(
        self,
        *,
        cache_dir: Path | None,
        max_entries: int = 10,
        free_space_threshold_gb: float = 2.0,
        log: Logger = print,
        wrap: Callable[[Sequence[str]], tuple[list[str], dict[str, str]]] | None = None,
        progress_every_s: float = PROGRESS_EVERY_S,
    ) -> None:
        self.progress_every_s = progress_every_s
        self.cache_dir = cache_dir
        # Container mode: every build command runs in the image (hpcagent/container/mode.py).
        self.wrap = wrap
        self.max_entries = max(1, max_entries)
        self.free_space_threshold_gb = free_space_threshold_gb
        self.log = log

    # -- public ------------------------------------------------------------------------------

    def prepare(self, spec: VenvSpec, fresh_dir: Path) -> Venv:
        """Return a venv for ``spec``: a cache hit, a cache build, or a fresh venv in
        ``fresh_dir`` (cache off, unkeyable requirements or no space)."""
        if self.cache_dir is None:
            return self._fresh(spec, fresh_dir, "the venv cache is off")
        if not spec.keyable:
            return self._fresh(spec, fresh_dir, "requirements refer to local files")
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        key = spec.key()
        entry = self.cache_dir / key
        hit = self._hit(entry, key)
        if hit is not None:
            return hit
        from filelock import FileLock, Timeout  # a miss only: ~0.04 s to import

        lock = FileLock(str(self.cache_dir / f"{key}.lock"))
        try:
            with lock.acquire(timeout=LOCK_TIMEOUT_S):
                hit = self._hit(entry, key)  # built by another job while we waited
                if hit is not None:
                    return hit
                if not self._ensure_space():
                    return self._fresh(spec, fresh_dir, "not enough free space for the cache")
                self.log(f"venv cache: building {key[:16]} ({len(spec.requirements)} requirements)")
                shutil.rmtree(entry, ignore_errors=True)  # a crashed build left it half done
                try:
                    frozen = self._build(spec, entry)
                except BaseException:
                    shutil.rmtree(entry, ignore_errors=True)
                    raise
                self._write_marker(entry, key, spec, frozen)
        except Timeout as exc:
            raise EnvironmentSetupError(
                f"timed out waiting for venv cache lock {lock.lock_file}"
            ) from exc
        self.evict(keep=key)
        return Venv(entry, frozen, cached=True, built=True, key=key)

    def evict(self, keep: str = "") -> list[str]:
        """Remove least-recently-used entries beyond ``max_entries``; return removed keys."""
        if self.cache_dir is None:
            return []
        from filelock import FileLock

        removed: list[str] = []
        with FileLock(str(self.cache_dir / ".evict.lock")):
            entries = self._entries()
            excess = len(entries) - self.max_entries
            for entry in entries:  # oldest first
                if excess <= 0:
                    break
                if entry.name == keep:
                    continue
                self._remove(entry)
                removed.append(entry.name)
                excess -= 1
        for key in removed:
            self.log(f"venv cache: evicted {key[:16]} (least recently used)")
        return removed

    # -- internals ---------------------------------------------------------------------------

    def _entries(self) -> list[Path]:
        """Complete entries, oldest use first."""
        assert self.cache_dir is not None
        found = [p for p in self.cache_dir.iterdir() if p.is_dir() and (p / MARKER).exists()]
        return sorted(found, key=lambda p: (p / MARKER).stat().st_mtime)

    def _remove(self, entry: Path) -> None:
        (entry / MARKER).unlink(missing_ok=True)  # readers stop using it first
        trash = entry.with_name(f".trash-{entry.name}-{os.getpid()}")
        try:
            os.replace(entry, trash)
        except OSError:
            trash = entry
        shutil.rmtree(trash, ignore_errors=True)

    def _hit(self, entry: Path, key: str) -> Venv | None:
        marker = entry / MARKER
        try:
            info = json.loads(marker.read_text())
        except (OSError, ValueError):
            return None
        if not os.path.lexists(entry / "bin" / "python"):  # an in-image venv links into it
            return None
        with contextlib.suppress(OSError):  # a read-only cache: a SIF from `hpcagent build`
            os.utime(marker)  # LRU clock
        self.log(f"venv cache: hit {key[:16]}")
        return Venv(entry, str(info.get("freeze", "")), cached=True, built=False, key=key)

    def _free_gb(self) -> float:
        assert self.cache_dir is not None
        return shutil.disk_usage(self.cache_dir).free / 1024**3

    def _ensure_space(self) -> bool:
        if self._free_gb() >= self.free_space_threshold_gb:
            return True
        from filelock import FileLock

        with FileLock(str(self.cache_dir / ".evict.lock")):  # type: ignore[operator]
            for entry in self._entries():
                self.log(f"venv cache: evicting {entry.name[:16]} (free space below threshold)")
                self._remove(entry)
                if self._free_gb() >= self.free_space_threshold_gb:
                    return True
        return self._free_gb() >= self.free_space_threshold_gb

    def _fresh(self, spec: VenvSpec, fresh_dir: Path, why: str) -> Venv:
        path = fresh_dir / "venv"
        self.log(f"building a fresh venv in {path} ({why})")
        shutil.rmtree(path, ignore_errors=True)
        frozen = self._build(spec, path)
        return Venv(path, frozen, cached=False, built=True)

    def _write_marker(self, entry: Path, key: str, spec: VenvSpec, frozen: str) -> None:
        tmp = entry / (MARKER + ".tmp")
        tmp.write_text(
            json.dumps(
                {
                    "key": key,
                    "python": spec.python,
                    "python_version": spec.python_version,
                    "manager": spec.manager,
                    "image": spec.image,
                    "requirements": list(spec.requirements),
                    "freeze": frozen,
                    "built_at": time.time(),
                },
                indent=1,
            )
        )
        os.replace(tmp, entry / MARKER)

    def _build(self, spec: VenvSpec, path: Path) -> str:
        """Create the venv at ``path`` and install the requirements; return the freeze text."""
        uv = find_uv() if spec.manager == "uv" and self.wrap is None else None
        if spec.manager == "uv" and uv is None:
            self.log("uv not found; using pip")
        py = str(path / "bin" / "python")
        ssp = ["--system-site-packages"] if spec.system_site_packages else []
        if uv:
            self._logged(
                self._run(
                    [uv, "venv", "--quiet", *ssp, "--python", spec.python, str(path)], "uv venv"
                )
            )
        else:
            self._logged(self._run([spec.python, "-m", "venv", *ssp, str(path)], "python -m venv"))
        if spec.requirements:
            req_file = path / "hpcagent-requirements.txt"
            req_file.write_text("\n".join(spec.requirements) + "\n")
            if uv:
                argv = [uv, "pip", "install", "--python", py, *spec.extra_args, "-r", str(req_file)]
            else:
                argv = [
                    py,
                    "-m",
                    "pip",
                    "install",
                    "--disable-pip-version-check",
                    *spec.extra_args,
                    "-r",
                    str(req_file),
                ]
            self.log("installing requirements: " + ", ".join(spec.requirements))
            self._logged(self._run(argv, "installing requirements"))
        freeze = [uv, "pip", "freeze", "--python", py] if uv else [py, "-m", "pip", "freeze"]
        return str(self._run(freeze, "listing installed packages").stdout)

    def _run(self, argv: list[str], what: str) -> CommandResult:
        with progress(self.log, what, self.progress_every_s):
            if self.wrap is None:
                return _run(argv, what)
            wrapped, env = self.wrap(argv)
            return _run(wrapped, what, env)

    def _logged(self, res: CommandResult) -> None:
        for text in (res.stdout, res.stderr):
            for line in text.splitlines():
                if line.strip():
                    self.log(line)


def split_extra_args(args: Sequence[str]) -> tuple[str, ...]:
    """Config extra args as a tuple (each already one argv item)."""
    return tuple(str(a) for a in args)
