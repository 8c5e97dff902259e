"""``hpcagent daemon``: queued tasks run on this machine (no Slurm) by the submitter's loop.

``run.py`` wires the loop (:func:`~hpcagent.daemon.run.run_daemon`), ``slots.py`` decides how
many tasks run and which GPUs each gets, ``gpus.py`` holds the GPU pool. The CLI is
``hpcagent.commands.daemon``.
"""
