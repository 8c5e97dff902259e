"""Schedulers: one interface (``base.Scheduler``) over Slurm (``slurm``) and local bash runs
(``local``), with pacing (``pacer``). Their commands run through ``hpcagent.process``, the one
place that starts processes. Nothing is imported here, so that importing one backend stays cheap.
See docs/slurm.md.
"""
