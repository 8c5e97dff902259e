#!/bin/bash
# Grid Engine job for one ClearML task (hpcagent-slurm --scheduler gridengine). Grid Engine
# reads the "#$" lines as qsub options (no comments on them); "# #$" lines are switched off.
# The job name (hpcagent-slurm passes its own on the qsub command line, which wins):
#$ -N clearml_task_4f6c0a8e2b9d4c1fa7e3b5d6c8f0a1b2
# Run with bash, in the folder hpcagent-slurm runs in, with its environment (as sbatch's
# default --export=ALL), stderr into stdout, into this file:
#$ -S /bin/bash
#$ -cwd
#$ -V
#$ -j y
#$ -o task-4f6c0a8e2b9d4c1fa7e3b5d6c8f0a1b2-$JOB_ID.log
# Time limit, memory per slot, queue, slots:
# #$ -l h_rt=00:05:00
# #$ -l h_vmem=1G
# #$ -q all.q
# #$ -pe smp 1

module load python/3.11

echo whoami $(whoami)

env CLEARML_CONFIG_FILE=/home/alice/.hpcagent/slurm/clearml.conf /opt/hpcagent/bin/python -m hpcagent execute --id 4f6c0a8e2b9d4c1fa7e3b5d6c8f0a1b2

echo done
