# syntax=docker/dockerfile:1
# lil-sparse sidecar: CUDA, torch, FlashInfer and the gRPC server in one image.
#
#   docker build -t ghcr.io/lil-sparse/lil-sparse:0.1.0 .
#   docker run --gpus all -p 50051:50051 -p 9400:9400 ghcr.io/lil-sparse/lil-sparse:0.1.0
#
# The chart (helm/lil-sparse) runs it with a read-only root filesystem as uid 10001: everything
# the process writes goes to $HOME=/tmp and the model cache $LIL_SPARSE_CACHE, both volumes there.

# The devel image, not the runtime one: FlashInfer compiles its kernels with nvcc on first use
# (just in time, against the Python headers too) and caches them under $HOME/.cache/flashinfer.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-devel-ubuntu24.04

FROM ${CUDA_IMAGE} AS build
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, from the CUDA 12.8 index, so that installing the project never pulls another build.
ARG TORCH_VERSION=2.9.1
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
WORKDIR /src
COPY . .
# The "gpu" extra pins flashinfer-python; ninja is what its JIT builds with.
RUN pip install ".[gpu]" ninja

FROM ${CUDA_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-dev ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --user-group --no-create-home --home-dir /tmp lil \
    && mkdir -p /models && chown 10001:10001 /models
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    LIL_SPARSE_CACHE=/models \
    LIL_SPARSE_DEVICE=cuda
USER 10001:10001
WORKDIR /tmp
EXPOSE 50051 9400
# The chart overrides command and args; this default serves the default model on the GPU,
# fetching it into $LIL_SPARSE_CACHE when it is not there yet. The server alone binds 127.0.0.1;
# in a container it must listen on every interface to be reachable through -p.
ENTRYPOINT []
CMD ["python", "-m", "server", "--model", "smollm2-135m-instruct", "--host", "0.0.0.0"]
