"""A naive ML backend, the baseline that bench/predict_latency.py measures our server against.

This is the server most tutorials build: Flask's own threaded server, the Keras model loaded
once, and per request a full Pillow decode, a resize of the whole frame (bars included) and a
call to ``model.predict``. It accepts the same ``/predict`` body with the same result shape
and reads the same model version from the store, so both servers do the same work for the
client. It is a benchmark baseline only: no input checks, no crop, no tuned thresholds.

    .venv/bin/python bench/naive_server.py --model-dir DIR --version VERSION --document-root DIR --port 9191
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlparse

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from flask import Flask, jsonify, request  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.manifest import Manifest  # noqa: E402
from model.store import ModelStore  # noqa: E402

logger = logging.getLogger("naive-server")


def create_naive_app(version_dir: Path, document_root: Path) -> Flask:
    """Build the baseline Flask app serving the Keras model saved in ``version_dir``."""
    manifest = Manifest.read(version_dir)
    model = keras.models.load_model(version_dir / "model.keras", compile=False)
    height, width = manifest.input["height"], manifest.input["width"]
    app = Flask("naive-server")

    @app.get("/health")
    def health():
        return jsonify({"status": "UP"})

    @app.post("/predict")
    def predict():
        results = []
        for task in request.get_json()["tasks"]:
            relative = parse_qs(urlparse(task["data"]["image"]).query)["d"][0]
            image = Image.open(io.BytesIO((document_root / relative).read_bytes())).convert("RGB")
            pixels = np.asarray(image.resize((width, height)), dtype=np.float32)[np.newaxis]
            probabilities = model.predict(pixels, verbose=0)[0]
            chosen = [name for name, p in zip(manifest.classes, probabilities) if p >= 0.5] or ["None"]
            results.append({
                "model_version": manifest.version,
                "score": float(np.min(np.abs(probabilities - 0.5))),
                "result": [{"from_name": "choice", "to_name": "image", "type": "choices",
                            "value": {"choices": chosen}}],
            })
        return jsonify({"results": results})

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="model store to read the version from")
    parser.add_argument("--version", help="model version to serve (default: the current default-lineage one)")
    parser.add_argument("--document-root", type=Path, required=True, help="folder that local-files URLs point into")
    parser.add_argument("--port", type=int, default=9191)
    args = parser.parse_args()
    store = ModelStore(args.model_dir)
    version = args.version or store.current_version("default")
    if version is None:
        parser.error(f"no model version in {args.model_dir}: train one first")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    app = create_naive_app(store.version_dir(version), args.document_root)
    app.run(host="127.0.0.1", port=args.port, threaded=True)


if __name__ == "__main__":
    main()
