"""Schedulers: one interface (``base.Scheduler``) over Slurm (``slurm``) and local bash runs
(``local``), with pacing (``pacer``). ``commands.run_command`` is hpcagent's single subprocess
seam. Nothing is imported here, so that importing ``hpcagent.scheduler.commands`` stays cheap.
See docs/slurm.md.
"""
