"""Containers: Apptainer/Singularity, Docker/Podman, the shared image cache, the template shim,
and ``hpcagent build`` (docs/containers.md).

| module | what |
| --- | --- |
| ``base`` | neutral: request, binds, env rules, SSH, ``PreparedCommand``, ``Session`` |
| ``images`` | image references (spython's URI split): sources, local paths, Docker names |
| ``apptainer`` | runtime + version, ``build_exec_argv``, ``ApptainerSession`` |
| ``docker`` | Docker/Podman argv, ``DockerSession`` (abort, container pids for metrics) |
| ``cache`` | ``ensure_image``: pull once into the shared SIF cache (executor and submitter) |
| ``shim`` | the seed's ``singularity exec ${CLEARML_AGENT_EXECUTE}`` form |
| ``mode`` | the executor's entry: ``choose_mode``, ``open_session``, ``inner_env`` |
| ``build`` | ``hpcagent build``: Dockerfile, Apptainer ``.def`` (spython), the image build |

The package imports config, errors and the process seam only; the executor, the submitter and
the commands import it.
"""
