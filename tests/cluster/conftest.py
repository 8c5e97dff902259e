"""tests/cluster holds the driver of the docker compose cluster test (a plain script).

It needs a running cluster (``make cluster-up``) and is run by ``make cluster-test``; the normal
``pytest`` run never collects it.
"""

from __future__ import annotations

collect_ignore_glob = ["*.py"]
