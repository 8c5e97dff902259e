#!/bin/bash
# Singularity/Apptainer jobs: run hpcagent-slurm with --singularity-mode.
# The executor runs on the node and starts the task inside the task's container image
# (task.set_base_docker(...)), or agent.default_docker.image when the task has none;
# the image is pulled once into a shared cache. Load the runtime here if your site
# uses environment modules.
#SBATCH --job-name=clearml_task_4f6c0a8e2b9d4c1fa7e3b5d6c8f0a1b2
#SBATCH --output=task-4f6c0a8e2b9d4c1fa7e3b5d6c8f0a1b2-%j.log
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=16
#SBATCH --time=08:00:00
#SBATCH --signal=B:USR2@60

module load python/3.11

if command -v module >/dev/null 2>&1; then
    module load apptainer 2>/dev/null || module load singularity 2>/dev/null || true
fi
echo "task image: docker://nvcr.io/nvidia/pytorch:24.01-py3"

env CLEARML_CONFIG_FILE=/home/alice/.hpcagent/slurm/clearml.conf HPCAGENT_CONTAINER_MODE=singularity /opt/hpcagent/bin/python -m hpcagent execute --id 4f6c0a8e2b9d4c1fa7e3b5d6c8f0a1b2

echo done
