"""Throughput of the pre-annotation pipeline without Label Studio in the loop.

Runs ``training.preannotate.preannotate`` (the same pipeline as ``thumbnail-ml preannotate``)
on every real 480x360 thumbnail, read from disk through the local-files path, with the
predictions written to a JSON Lines file. Reports tasks per second over the whole run.

    .venv/bin/python bench/preannotate_throughput.py [--model-dir DIR] [--repeat 3]

``--repeat`` lists each image several times (as distinct tasks) for a longer, steadier run.
Without a trained model in ``--model-dir`` a small one is trained first (see
bench/predict_latency.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import save_result  # noqa: E402
from bench.predict_latency import ensure_model  # noqa: E402
from model.decode import decode_image  # noqa: E402
from tests.support import REPO_ROOT, THUMBNAILS  # noqa: E402
from thumbnail_ml.settings import Settings  # noqa: E402
from training.preannotate import JsonlPredictionSink, ListTaskSource, preannotate  # noqa: E402


def hqdefault_images() -> list[str]:
    """Return the thumbnails of 480x360 pixels, relative to the thumbnails folder."""
    found = []
    for path in sorted((THUMBNAILS / "images").rglob("*.jpg")):
        if decode_image(path.read_bytes()).shape[:2] == (360, 480):
            found.append(str(path.relative_to(THUMBNAILS)))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=REPO_ROOT / "bench" / "results" / "models")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    version = ensure_model(args.model_dir)
    images = hqdefault_images()
    tasks = [{"id": index + 1, "data": {"image": f"/data/local-files/?d={relative}"}}
             for index, relative in enumerate(images * args.repeat)]
    with tempfile.TemporaryDirectory() as scratch:
        settings = Settings(model_dir=args.model_dir, document_root=THUMBNAILS,
                            image_cache_dir=Path(scratch) / "cache", image_cache_max_mb=0)
        sink = JsonlPredictionSink(Path(scratch) / "predictions.jsonl")
        started = time.perf_counter()
        summary = preannotate(settings, None, version=version, source=ListTaskSource(tasks), writer=sink)
        elapsed = time.perf_counter() - started
    result = {"model_version": version, "tasks": len(tasks), "distinct_images": len(images),
              "predicted": summary.predicted, "failed": summary.to_dict()["failed"],
              "seconds": round(elapsed, 2), "tasks_per_second": round(summary.predicted / elapsed, 1)}
    save_result("preannotate_throughput", result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
