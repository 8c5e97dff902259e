"""``python -m hpcagent`` is the ``hpcagent`` command."""

from __future__ import annotations

from hpcagent.cli import main

main()
