"""Pull once: the shared image cache, with the apptainer STAND-IN's `pull` (tests/fakes).

The stand-in copies a folder from its local "registry" into a tar "SIF" and appends one line
per pull to a log file, so the tests can count pulls. Its pull sleeps a little so that
concurrent callers really overlap.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hpcagent.config import ContainerSettings
from hpcagent.container.apptainer import resolve_runtime
from hpcagent.container.cache import cache_name, cached_image_path, ensure_image
from hpcagent.errors import ContainerError

REPO = Path(__file__).resolve().parents[2]
STANDIN = REPO / "tests" / "fakes" / "apptainer-standin"


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    reg = tmp_path / "registry"
    img = reg / "lab_tiny_1.0"
    (img / "etc").mkdir(parents=True)
    (img / "etc" / "os-release").write_text("NAME=tiny\n")
    monkeypatch.setenv("APPTAINER_STANDIN_REGISTRY", str(reg))
    monkeypatch.setenv("APPTAINER_STANDIN_PULL_LOG", str(tmp_path / "pulls.log"))
    return reg


def _pulls(tmp_path: Path) -> list[str]:
    log = tmp_path / "pulls.log"
    return log.read_text().splitlines() if log.exists() else []


def test_cache_name_is_stable_and_distinct() -> None:
    a = cache_name("docker://lab/tiny:1.0")
    assert a == cache_name("docker://lab/tiny:1.0")
    assert a.startswith("lab_tiny_1.0-")
    assert a.endswith(".sif")
    assert a != cache_name("docker://lab/tiny:1.1")
    assert cache_name("oras://x/y") != cache_name("docker://x/y")


def test_local_images_are_used_as_they_are(tmp_path: Path) -> None:
    sandbox = tmp_path / "rootfs"
    sandbox.mkdir()
    settings = ContainerSettings(binary=str(STANDIN), cache_dir=tmp_path / "cache")
    assert ensure_image(str(sandbox), settings) == str(sandbox)
    assert not (tmp_path / "cache").exists()


def test_pull_then_hit(tmp_path: Path, registry: Path) -> None:
    settings = ContainerSettings(binary=str(STANDIN), cache_dir=tmp_path / "cache")
    logs: list[str] = []
    first = ensure_image("docker://lab/tiny:1.0", settings, log=logs.append)
    assert Path(first) == cached_image_path("docker://lab/tiny:1.0", tmp_path / "cache")
    assert Path(first).stat().st_size > 0
    assert any("pulling docker://lab/tiny:1.0" in m for m in logs)
    second = ensure_image("docker://lab/tiny:1.0", settings, runtime=resolve_runtime(str(STANDIN)))
    assert second == first
    assert len(_pulls(tmp_path)) == 1


def test_leftover_of_a_killed_pull_is_removed(tmp_path: Path, registry: Path) -> None:
    settings = ContainerSettings(binary=str(STANDIN), cache_dir=tmp_path / "cache")
    target = cached_image_path("docker://lab/tiny:1.0", settings.cache_dir)
    settings.cache_dir.mkdir()
    stale = settings.cache_dir / f".{target.name}.pulling.999999"
    stale.write_bytes(b"half an image")
    assert ensure_image("docker://lab/tiny:1.0", settings) == str(target)
    assert not stale.exists()


def test_unwritable_cache_is_a_container_error(tmp_path: Path, registry: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    settings = ContainerSettings(binary=str(STANDIN), cache_dir=blocker / "cache")
    with pytest.raises(ContainerError, match="cannot create the image cache"):
        ensure_image("docker://lab/tiny:1.0", settings)


def test_failed_pull_leaves_nothing(tmp_path: Path, registry: Path) -> None:
    settings = ContainerSettings(binary=str(STANDIN), cache_dir=tmp_path / "cache")
    with pytest.raises(ContainerError, match="not in the stand-in registry"):
        ensure_image("docker://lab/absent:1", settings)
    leftovers = [p.name for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".pull")]
    assert leftovers == []


PULL_ONE = """
import sys
from hpcagent.config import load_settings
from hpcagent.container.cache import ensure_image
settings = load_settings(config_file=sys.argv[2])
print(ensure_image(sys.argv[1], settings.container, log=lambda m: print(m, file=sys.stderr)))
"""


def test_four_concurrent_jobs_pull_once(
    tmp_path: Path, registry: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four processes want one image at once (each loads the config and calls ensure_image, as
    jobs and the submitter do): exactly one pull runs, all four get the same complete SIF."""
    cache = tmp_path / "cache"
    conf = tmp_path / "clearml.conf"
    conf.write_text(f'agent {{ container {{ binary: "{STANDIN}", cache_dir: "{cache}" }} }}\n')
    monkeypatch.setenv("APPTAINER_STANDIN_PULL_DELAY", "3")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    argv = [sys.executable, "-c", PULL_ONE, "docker://lab/tiny:1.0"]
    procs = [
        subprocess.Popen(
            [*argv, str(conf)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], [r[1] for r in results]
    paths = {r[0].strip() for r in results}
    assert paths == {str(cached_image_path("docker://lab/tiny:1.0", cache))}
    assert len(_pulls(tmp_path)) == 1
    # the others waited on the lock and reused the file (none pulled again)
    assert sum("pulled by another job" in r[1] for r in results) >= 1
    assert not list(cache.glob(".*.pulling.*"))
