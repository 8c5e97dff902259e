#!/bin/bash
#SBATCH --job-name=clearml_task_4f6c0a8e2b9d4c1fa7e3b5d6c8f0a1b2
#SBATCH --output=task-4f6c0a8e2b9d4c1fa7e3b5d6c8f0a1b2-%j.log
#SBATCH --ntasks=1
#SBATCH --nodes=2
#SBATCH --time=08:00:00
#SBATCH --comment="train resnet (lr=0.1); it's $fast"

module load python/3.11

echo "task" 'train resnet (lr=0.1); it'"'"'s $fast' "from queue" gpu-queue

env CLEARML_CONFIG_FILE=/home/alice/.hpcagent/slurm/clearml.conf /opt/hpcagent/bin/python -m hpcagent execute --id 4f6c0a8e2b9d4c1fa7e3b5d6c8f0a1b2

echo done
