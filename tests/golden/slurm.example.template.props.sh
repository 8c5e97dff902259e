#!/bin/bash
# available template variables (default value separator ":")
# gpu-queue
# 9f8e7d6c5b4a39281706f5e4d3c2b1a0
# login1:hpcagent-slurm.
# complex template variables  (default value separator ":")
# 4f6c0a8e2b9d4c1fa7e3b5d6c8f0a1b2
# train resnet (lr=0.1); it's $fast
# 0a1b2c3d4e5f60718293a4b5c6d7e8f9
# alice's key


# example
#SBATCH --job-name=clearml_task_4f6c0a8e2b9d4c1fa7e3b5d6c8f0a1b2       # Job name DO NOT CHANGE
#SBATCH --ntasks=1                    # Run on a single CPU
# #SBATCH --mem=1mb                   # Job memory request
# #SBATCH --time=00:05:00             # Time limit hrs:min:sec
#SBATCH --output=task-4f6c0a8e2b9d4c1fa7e3b5d6c8f0a1b2-%j.log
#SBATCH --partition debug
#SBATCH --cpus-per-task=1
#SBATCH --priority=5
#SBATCH --nodes=2


module load python/3.11

echo whoami $(whoami)

env CLEARML_CONFIG_FILE=/home/alice/.hpcagent/slurm/clearml.conf /opt/hpcagent/bin/python -m hpcagent execute --id 4f6c0a8e2b9d4c1fa7e3b5d6c8f0a1b2

echo done
