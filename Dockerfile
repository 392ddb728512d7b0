# The job image: the recipe the launcher builds for runtime: docker (see README.md).
# Build context, made by the launcher:
#   wheelhouse/        every wheel the job's requirements need, resolved on the launching machine,
#                      so that neither the build nor the lab hosts need the internet
#   requirements.txt   the job's requirements
#   launcher/          the launcher's in-rank helpers (rankexec, metrics): standard library only
#   job/               the job's workdir: last, so that a code edit rebuilds only that layer
ARG BASE=python:3.11-slim
FROM ${BASE}
COPY wheelhouse/ /opt/launch/wheelhouse/
COPY requirements.txt /opt/launch/requirements.txt
RUN python3 -m pip install --no-cache-dir --no-index --find-links /opt/launch/wheelhouse \
        -r /opt/launch/requirements.txt \
    && rm -rf /opt/launch/wheelhouse
COPY launcher/ /opt/launch/lib/launcher/
ENV PYTHONPATH=/opt/launch/lib PYTHONUNBUFFERED=1
COPY job/ /workspace/
WORKDIR /workspace
