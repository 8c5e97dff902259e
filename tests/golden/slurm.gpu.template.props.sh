#!/bin/bash
# GPU jobs. Per-task overrides come from the task's user properties
# (task.set_user_properties(num_gpus=2, partition="a100", time_limit="08:00:00")).
#SBATCH --job-name=clearml_task_4f6c0a8e2b9d4c1fa7e3b5d6c8f0a1b2
#SBATCH --output=task-4f6c0a8e2b9d4c1fa7e3b5d6c8f0a1b2-%j.log
#SBATCH --partition=a100
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --gres=gpu:4
#SBATCH --cpus-per-task=16
#SBATCH --mem=64G
#SBATCH --time=08:00:00
#SBATCH --signal=B:USR2@120
#SBATCH --open-mode=append

module load python/3.11

echo "queue gpu-queue, task 4f6c0a8e2b9d4c1fa7e3b5d6c8f0a1b2 on $(hostname)"
nvidia-smi --query-gpu=name,memory.total --format=csv || echo "nvidia-smi not available"

env CLEARML_CONFIG_FILE=/home/alice/.hpcagent/slurm/clearml.conf /opt/hpcagent/bin/python -m hpcagent execute --id 4f6c0a8e2b9d4c1fa7e3b5d6c8f0a1b2

echo done
