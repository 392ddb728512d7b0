# The job image: the recipe `launch` builds for runtime: docker (launcher/image/build.py).
# Its build context, made by the launcher:
#   requirements.txt   the job's requirements (empty when it has none)
#   launcher/          what ships with the ranks (launcher/node: contract, rank wrapper, supervisor,
#                      metrics writer): standard library only
# The job's workdir is not in the image: each host keeps copies of it by content hash and the node's
# container mounts one read-only at /workspace (launcher/sync), so a code edit needs no new image.
# Requirements come from a wheelhouse resolved on the launching machine and served on its loopback
# (the build runs with host networking), so no index is needed and no wheel stays in a layer.
ARG BASE=python:3.11-slim
FROM ${BASE}
ARG WHEELS_URL=http://127.0.0.1:29499/
COPY requirements.txt /opt/launch/requirements.txt
RUN if grep -qv -e '^[[:space:]]*$' -e '^[[:space:]]*#' /opt/launch/requirements.txt; then \
        python3 -m pip install --no-cache-dir --no-index --find-links "$WHEELS_URL" \
            -r /opt/launch/requirements.txt; \
    fi
COPY launcher/ /opt/launch/lib/launcher/
ENV PYTHONPATH=/opt/launch/lib PYTHONUNBUFFERED=1
WORKDIR /workspace
