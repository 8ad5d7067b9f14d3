# syntax=docker/dockerfile:1
# Images of the ML backend. Pick one with --target:
#   backend     the server, with the LiteRT runtime only (no TensorFlow), so it stays small and starts fast
#   worker      the training worker, with TensorFlow for the CPU
#   worker-gpu  the training worker, with TensorFlow and NVIDIA's CUDA and cuDNN libraries
# The build-* stages create each virtual environment in /opt/venv. The final stages copy it onto
# the same slim base, so no compiler or pip cache ends up in a final image. Without --target,
# `docker build` builds the last stage, backend.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS source
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 VENV=/opt/venv
WORKDIR /src
COPY pyproject.toml requirements.lock README.md ./
COPY backend ./backend
COPY model ./model
COPY training ./training
COPY thumbnail_ml ./thumbnail_ml

# requirements.lock is used as constraints, so each environment gets the locked version of
# whatever it needs and nothing else from the lock.
FROM source AS build-backend
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m venv "$VENV" && "$VENV/bin/pip" install -c requirements.lock .

FROM source AS build-worker
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m venv "$VENV" && "$VENV/bin/pip" install -c requirements.lock ".[train]"

# tensorflow[and-cuda] is the same TensorFlow release as the tensorflow-cpu of the "train" extra,
# plus the CUDA and cuDNN libraries as pip wheels. The host needs only the NVIDIA driver and the
# NVIDIA Container Toolkit. Keep both pins equal to those of the "train" extra in pyproject.toml.
FROM source AS build-worker-gpu
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m venv "$VENV" && "$VENV/bin/pip" install -c requirements.lock . "tensorflow[and-cuda]==2.21.0" "keras==3.15.1"

FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PATH=/opt/venv/bin:$PATH \
    MODEL_DIR=/data/models IMAGE_CACHE_DIR=/data/image-cache
# A new named volume mounted on these directories takes their owner, so the app user can write
# to the model store and the image cache.
RUN useradd --create-home --uid 10001 --user-group app \
 && mkdir -p /data/models /data/image-cache \
 && chown -R app:app /data
WORKDIR /home/app

FROM runtime AS worker-gpu
COPY --from=build-worker-gpu /opt/venv /opt/venv
USER app
CMD ["thumbnail-ml", "worker"]

FROM runtime AS worker
COPY --from=build-worker /opt/venv /opt/venv
USER app
CMD ["thumbnail-ml", "worker"]

FROM runtime AS backend
COPY --from=build-backend /opt/venv /opt/venv
# GET /health of the server in this container. It sends the BASIC_AUTH_USER credentials when
# they are set, because the server then requires them on every endpoint, /health included.
COPY <<EOF /opt/healthcheck.py
import base64
import os
import sys
import urllib.request

url = f"http://127.0.0.1:{os.environ.get('PORT', '9090')}/health"
request = urllib.request.Request(url)
user = os.environ.get("BASIC_AUTH_USER")
if user:
    credentials = f"{user}:{os.environ.get('BASIC_AUTH_PASS', '')}".encode()
    request.add_header("Authorization", "Basic " + base64.b64encode(credentials).decode())
# No proxy: a proxy from the environment cannot reach this container's loopback address.
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    with opener.open(request, timeout=4) as response:
        sys.exit(0 if response.status == 200 else 1)
except OSError as error:
    print(f"GET {url} failed: {error}", file=sys.stderr)
    sys.exit(1)
EOF
# HOST=0.0.0.0 so that other containers reach the server; the code's default, 127.0.0.1,
# would only accept connections from inside this container.
ENV HOST=0.0.0.0 PORT=9090
USER app
EXPOSE 9090
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 CMD ["python", "/opt/healthcheck.py"]
CMD ["thumbnail-ml", "serve"]
