# Helper image for the compose try-out only (never for production): moto's
# Secrets Manager emulator, boto3 to seed it, and a Python for the client.
# Build secrets as in docker/Dockerfile (optional: host pip settings, CA).
ARG BASE=python:3.12-slim
FROM ${BASE}
RUN --mount=type=secret,id=pipconf --mount=type=secret,id=cacert \
    set -eu; \
    if [ -s /run/secrets/pipconf ]; then export PIP_CONFIG_FILE=/run/secrets/pipconf; fi; \
    if [ -s /run/secrets/cacert ]; then export PIP_CERT=/run/secrets/cacert; fi; \
    python3 -m venv /opt/demo; \
    PIP_NO_CACHE_DIR=1 /opt/demo/bin/python -m pip install -q --disable-pip-version-check \
        'moto[server]>=5' boto3
ENV PATH=/opt/demo/bin:${PATH} PYTHONUNBUFFERED=1
# moto keeps everything in memory; nothing needs root.
USER 65534:65534
