# hpcagent build --id 4f3c2a1b0e9d4c8b8a7f6e5d4c3b2a19 (docs/containers.md): the task's environment
FROM hpcagent-test-base
LABEL org.hpcagent.task="4f3c2a1b0e9d4c8b8a7f6e5d4c3b2a19"
ENV CLEARML_AGENT__AGENT__VENVS_CACHE__PATH=/opt/hpcagent/venvs-cache
ENV CLEARML_AGENT__AGENT__VENVS_CACHE__FREE_SPACE_THRESHOLD_GB=0
ENV CLEARML_AGENT__AGENT__PACKAGE_MANAGER__TYPE=pip
COPY wheels /tmp/hpcagent-wheels
COPY build.json /opt/hpcagent/build.json
RUN python3 -m venv /opt/hpcagent/venv && /opt/hpcagent/venv/bin/pip install --no-index --find-links /tmp/hpcagent-wheels hpcagent && PIP_NO_INDEX=1 PIP_FIND_LINKS=/tmp/hpcagent-wheels /opt/hpcagent/venv/bin/python -m hpcagent.executor.prebuild /opt/hpcagent/build.json && rm -rf /tmp/hpcagent-wheels
ENTRYPOINT ["/opt/hpcagent/venv/bin/hpcagent", "execute", "--id", "4f3c2a1b0e9d4c8b8a7f6e5d4c3b2a19", "--clone"]
