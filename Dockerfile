# syntax=docker/dockerfile:1
# Two targets on one slim base:
#   backend: the server with the LiteRT runtime only (no TensorFlow): small and fast to start.
#   worker:  training with TensorFlow (CPU). Build with --build-arg TENSORFLOW=tensorflow[and-cuda]
#            on a CUDA-capable host for a GPU worker.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml requirements.lock README.md ./
COPY backend ./backend
COPY model ./model
COPY training ./training
COPY thumbnail_ml ./thumbnail_ml
RUN python -m venv /opt/backend && /opt/backend/bin/pip install -c requirements.lock . \
 && python -m venv /opt/worker && /opt/worker/bin/pip install -c requirements.lock ".[train]"

FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONUNBUFFERED=1 MODEL_DIR=/data/models IMAGE_CACHE_DIR=/data/image-cache HOST=0.0.0.0 PORT=9090
RUN useradd --create-home --uid 10001 app && mkdir -p /data && chown app /data
WORKDIR /home/app

FROM runtime AS backend
COPY --from=build /opt/backend /opt/backend
ENV PATH=/opt/backend/bin:$PATH
USER app
EXPOSE 9090
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s \
  CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:9090/health', timeout=2)" || exit 1
CMD ["thumbnail-ml", "serve"]

FROM runtime AS worker
COPY --from=build /opt/worker /opt/worker
ENV PATH=/opt/worker/bin:$PATH
USER app
CMD ["thumbnail-ml", "worker"]
