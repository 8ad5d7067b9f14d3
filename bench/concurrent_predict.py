"""Throughput and latency of /predict under 32 concurrent clients for 60 seconds.

Starts the real server (``thumbnail-ml serve`` with its default WORKERS and THREADS) on
127.0.0.1, with the thumbnails folder as Label Studio's local-files root. Each client sends
one task per request, cycling through the real 480x360 thumbnails, as fast as the server
responds. Every response must be a 200 with one result holding choices; anything else counts
as an error. Reports requests per second, p50, p99, and the serving processes' resident
memory before and after.

    .venv/bin/python bench/concurrent_predict.py [--clients 32] [--seconds 60] [--model-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests  # noqa: E402

from bench.common import save_result  # noqa: E402
from bench.predict_latency import ensure_model, process_tree_rss_mb  # noqa: E402
from bench.preannotate_throughput import hqdefault_images  # noqa: E402
from model.label_config import default_label_config_xml  # noqa: E402
from tests.load import run_load  # noqa: E402
from tests.servers import start_backend  # noqa: E402
from tests.support import REPO_ROOT, THUMBNAILS  # noqa: E402


def check_prediction(payload: dict, response: requests.Response) -> str | None:
    """Return why a /predict response is wrong for a one-task payload, or None."""
    if response.status_code != 200:
        return f"HTTP {response.status_code}: {response.text[:200]}"
    results = response.json().get("results", [])
    if len(results) != 1 or not results[0].get("result"):
        return f"task {payload['tasks'][0]['id']}: no choices in {response.text[:200]}"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--model-dir", type=Path, default=REPO_ROOT / "bench" / "results" / "models")
    args = parser.parse_args()
    version = ensure_model(args.model_dir)
    images = hqdefault_images()
    label_config = default_label_config_xml()

    def make_payload(client: int, number: int) -> dict:
        index = (client * 7919 + number) % len(images)
        return {"tasks": [{"id": index + 1, "data": {"image": f"/data/local-files/?d={images[index]}"}}],
                "project": "1.1796413751", "label_config": label_config}

    with tempfile.TemporaryDirectory() as scratch:
        env = {"MODEL_DIR": str(args.model_dir), "LOCAL_FILES_DOCUMENT_ROOT": str(THUMBNAILS),
               "LABEL_STUDIO_URL": "", "LABEL_STUDIO_API_KEY": "", "IMAGE_CACHE_DIR": str(Path(scratch) / "cache"),
               "LOG_LEVEL": "WARNING"}
        server = start_backend(env, Path(scratch) / "server.log")
        try:
            requests.post(f"{server.url}/predict", json=make_payload(0, 0), timeout=30).raise_for_status()
            rss_before = process_tree_rss_mb(server.process.pid)
            load = run_load(f"{server.url}/predict", make_payload, args.clients, args.seconds, check=check_prediction)
            rss_after = process_tree_rss_mb(server.process.pid)
        finally:
            server.stop()

    errors = load.server_errors() + load.failed_checks
    result = {
        "model_version": version, "clients": args.clients, "duration_s": round(load.duration_s, 1),
        "requests": load.requests, "errors": errors, "statuses": {str(k): v for k, v in load.statuses.items()},
        "error_examples": load.failure_examples,
        "requests_per_second": round(load.requests / load.duration_s, 1),
        "p50_ms": round(load.percentile(50) * 1000, 1), "p99_ms": round(load.percentile(99) * 1000, 1),
        "rss_mb_before": round(sum(rss_before.values()), 1), "rss_mb_after": round(sum(rss_after.values()), 1),
        "server_processes": len(rss_after),
    }
    save_result("concurrent_predict", result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
