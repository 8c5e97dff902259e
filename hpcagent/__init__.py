"""hpcagent: run ClearML-style queued ML tasks on Slurm clusters."""

from __future__ import annotations

__version__ = "0.1.0"
