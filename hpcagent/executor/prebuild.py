"""Build a task's venv into the venv cache while an image is built (``hpcagent build``).

Runs inside the image being built: ``python -m hpcagent.executor.prebuild BUILD_JSON`` with the
image's configuration (``CLEARML_AGENT__AGENT__VENVS_CACHE__PATH`` and friends, set by the
recipe in :mod:`hpcagent.container.build`). The spec is made as the executor makes it for a
run outside a container (interpreter, manager, the task's ``container.image``, recorded
requirements), so ``hpcagent execute`` in a container of the image finds the venv in the cache
instead of installing (``venv cache: hit``); a spec that no longer matches only costs a fresh
install at launch. The wheels come from the build's wheelhouse (``PIP_NO_INDEX`` and
``PIP_FIND_LINKS`` set by the recipe): no index is needed.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from hpcagent.config import load_settings
from hpcagent.errors import HpcAgentError
from hpcagent.executor.options import ExecutorConfig
from hpcagent.executor.venv import VenvBuilder, VenvSpec, resolve_python


def prebuild(build_json: Path) -> Path:
    """Build (or find) the task's venv in the configured cache; returns its interpreter."""
    doc = json.loads(build_json.read_text())
    cfg = ExecutorConfig.from_settings(load_settings())
    python, version = resolve_python(cfg.python_binary, str(doc.get("script_binary") or ""))
    spec = VenvSpec(
        python=python,
        python_version=version,
        requirements=tuple(str(r) for r in doc.get("requirements") or ()),
        manager=cfg.package_manager,
        image=str(doc.get("container_image") or ""),
        system_site_packages=cfg.system_site_packages,
        extra_args=tuple(cfg.package_manager_extra_args),
    )
    builder = VenvBuilder(
        cache_dir=cfg.venvs_cache_path,
        max_entries=cfg.venvs_cache_max_entries,
        free_space_threshold_gb=cfg.venvs_cache_free_space_threshold_gb,
        log=print,
    )
    with tempfile.TemporaryDirectory() as fresh:
        return builder.prepare(spec, Path(fresh)).python


def main(argv: Sequence[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m hpcagent.executor.prebuild BUILD_JSON", file=sys.stderr)
        return 2
    try:
        print(f"prebuild: {prebuild(Path(argv[0]))}")
    except HpcAgentError as exc:
        print(f"prebuild: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
