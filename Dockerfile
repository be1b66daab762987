# One image for every process of the stack (api, nginx, worker, beat, migrate).
# CPU build of PyTorch: the compose stack has no GPU; a GPU worker image would swap
# the torch wheel for a CUDA one and nothing else.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    # glibc: keep large tensor buffers mapped between batches (4-5x faster CPU inference here).
    MALLOC_MMAP_MAX_=0 \
    MALLOC_TRIM_THRESHOLD_=68719476736 \
    LOOKALIKE_HOME=/data \
    LOOKALIKE_ARTIFACTS_DIR=/data/artifacts

RUN apt-get update \
    && apt-get install -y --no-install-recommends dataset-fashion-mnist curl nginx \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY requirements.lock ./
# requirements.lock pins the CUDA build that this project's machines install; in the
# image the CPU wheels of the same versions are used instead (much smaller).
RUN grep -v -E '^(nvidia-|triton==|cuda-)' requirements.lock > /tmp/req.txt \
    && pip install --index-url https://download.pytorch.org/whl/cpu torch==2.14.1 torchvision==0.29.1 \
    && pip install -r /tmp/req.txt

COPY . .
RUN pip install --no-deps . && useradd --system --home /data lookalike && mkdir -p /data && chown lookalike /data
USER lookalike
EXPOSE 8000
CMD ["lookalike", "serve", "--bind", "0.0.0.0:8000"]
