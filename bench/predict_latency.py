"""Latency of /predict for one task with a local image, and the server's memory and start-up time.

Starts the real server (``thumbnail-ml serve``, gunicorn, 1 worker, 2 threads) on 127.0.0.1
with the images' folder mounted as Label Studio's local-files root, so each request reads a
480x360 JPEG from disk, decodes, crops, resizes and predicts it. Sends sequential requests on
one keep-alive connection and reports p50 and p99, the resident memory of the serving
processes afterwards, and the time from start to the first prediction. Then, in the same run,
it sends the same requests to the naive baseline (bench/naive_server.py: Flask's server and
Keras ``model.predict`` per request, same model version) and reports the ratios.

    .venv/bin/python bench/predict_latency.py [--requests 1000] [--model-dir DIR]

Without a trained model in ``--model-dir`` it first trains a small one on the labelled
thumbnails (a few epochs: latency does not depend on how well the model is trained).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests  # noqa: E402

from bench.common import save_result  # noqa: E402
from model.label_config import default_label_config_xml  # noqa: E402
from model.store import ModelStore  # noqa: E402
from tests.servers import free_port, start_backend  # noqa: E402
from tests.support import REPO_ROOT, THUMBNAILS, write_json_min_export  # noqa: E402

IMAGE = "images/basile-bron__Thumbnail-clickbait-detection/0.0_-qggDCWJYjk.jpg"  # 480x360, letterboxed


def ensure_model(model_dir: Path) -> str:
    store = ModelStore(model_dir)
    version = store.current_version("default")
    if version:
        return version
    with tempfile.TemporaryDirectory() as scratch:
        export = Path(scratch) / "export.json"
        write_json_min_export(export)
        subprocess.run(
            [sys.executable, "-m", "thumbnail_ml", "train", "--export", str(export), "--images", str(THUMBNAILS),
             "--epochs", "3", "--patience", "3"],
            check=True, cwd=REPO_ROOT, env={**os.environ, "MODEL_DIR": str(model_dir)}, capture_output=True,
        )
    return store.current_version("default")


def process_tree_rss_mb(root_pid: int) -> dict[int, float]:
    """Return pid -> resident memory (MiB) for ``root_pid`` and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                children.setdefault(int(fields[1]), []).append(int(entry.name))
            except (OSError, IndexError):
                continue
    found, stack = {}, [root_pid]
    while stack:
        pid = stack.pop()
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    found[pid] = int(line.split()[1]) / 1024
        except OSError:
            continue
        stack.extend(children.get(pid, []))
    return found


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


REQUEST_BODY = {
    "tasks": [{"id": 1, "data": {"image": f"/data/local-files/?d={IMAGE}"}}],
    "project": "1.1796413751",
    "label_config": default_label_config_xml(),
}
WARM_UP_REQUESTS = 20


def time_requests(url: str, count: int, body: dict = REQUEST_BODY) -> list[float]:
    """Send ``count`` sequential requests on one connection after a warm-up; returns milliseconds."""
    session = requests.Session()
    for _ in range(WARM_UP_REQUESTS):
        session.post(f"{url}/predict", json=body, timeout=60).raise_for_status()
    latencies = []
    for _ in range(count):
        begin = time.perf_counter()
        response = session.post(f"{url}/predict", json=body, timeout=60)
        latencies.append((time.perf_counter() - begin) * 1000)
        response.raise_for_status()
    return latencies


def summarise(latencies: list[float]) -> dict:
    return {
        "requests": len(latencies),
        "p50_ms": round(statistics.median(latencies), 2),
        "p99_ms": round(percentile(latencies, 0.99), 2),
        "mean_ms": round(statistics.fmean(latencies), 2),
    }


def measure_naive(model_dir: Path, version: str, count: int) -> dict:
    """Start the naive baseline server, time ``count`` requests and stop it."""
    port = free_port()
    with tempfile.TemporaryDirectory() as scratch:
        log_path = Path(scratch) / "naive.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve().parent / "naive_server.py"), "--model-dir", str(model_dir),
                 "--version", version, "--document-root", str(THUMBNAILS), "--port", str(port)],
                stdout=log, stderr=subprocess.STDOUT,
            )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    requests.get(f"{url}/health", timeout=1).raise_for_status()
                    break
                except requests.RequestException:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"the naive server did not start:\n{log_path.read_text()[-2000:]}")
                    time.sleep(0.5)
            latencies = time_requests(url, count)
            rss = process_tree_rss_mb(process.pid)
        finally:
            process.terminate()
            process.wait(timeout=30)
    return {**summarise(latencies), "rss_mb": round(max(rss.values()), 1)}


def measure(model_dir: Path, count: int) -> dict:
    body = REQUEST_BODY
    with tempfile.TemporaryDirectory() as scratch:
        env = {"MODEL_DIR": str(model_dir), "LOCAL_FILES_DOCUMENT_ROOT": str(THUMBNAILS),
               "LABEL_STUDIO_URL": "", "LABEL_STUDIO_API_KEY": "", "IMAGE_CACHE_DIR": str(Path(scratch) / "cache"),
               "LOG_LEVEL": "WARNING", "WORKERS": "1", "THREADS": "2"}
        started = time.perf_counter()
        server = start_backend(env, Path(scratch) / "server.log")
        session = requests.Session()
        first = session.post(f"{server.url}/predict", json=body, timeout=30)
        startup_s = time.perf_counter() - started
        first.raise_for_status()
        assert first.json()["results"][0]["result"], first.text
        try:
            latencies = time_requests(server.url, count, body)
            rss = process_tree_rss_mb(server.process.pid)
        finally:
            server.stop()
    return {
        **summarise(latencies),
        "startup_to_first_prediction_s": round(startup_s, 2),
        "rss_mb_by_process": {str(pid): round(mb, 1) for pid, mb in rss.items()},
        "rss_mb_largest_process": round(max(rss.values()), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--baseline-requests", type=int, help="requests to the naive server (default: --requests)")
    parser.add_argument("--model-dir", type=Path, default=REPO_ROOT / "bench" / "results" / "models")
    args = parser.parse_args()
    version = ensure_model(args.model_dir)
    ours = measure(args.model_dir, args.requests)
    naive = measure_naive(args.model_dir, version, args.baseline_requests or args.requests)
    result = {
        "model_version": version, **ours, "naive": naive,
        "p50_speedup": round(naive["p50_ms"] / ours["p50_ms"], 1),
        "p99_speedup": round(naive["p99_ms"] / ours["p99_ms"], 1),
    }
    save_result("predict_latency", result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
