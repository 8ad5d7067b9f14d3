"""The real backend under load on loopback: 32 clients on /predict for 60 s, and a webhook burst.

Good tasks are real thumbnails read from a local-files document root. Bad tasks point at a
RoutedServer standing in for Label Studio, which serves a corrupt image and 404s. The
backend runs under gunicorn with its default single worker of two threads. The webhook
burst uses Redis database 12 on 127.0.0.1:6379 and flushes only that database.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from pathlib import Path

import pytest
import requests
from redis import Redis
from rq import Queue

from model.label_config import default_label_config_xml
from tests.http_fixtures import Route, RoutedServer
from tests.load import run_burst, run_load
from tests.servers import start_backend
from tests.support import THUMBNAIL_IMAGES
from training.queue import QUEUE_NAME

pytestmark = pytest.mark.slow

LOAD_REDIS_URL = os.environ.get("LOAD_REDIS_URL", "redis://127.0.0.1:6379/12")
CONFIG = default_label_config_xml()
CLIENTS = 32
DURATION_S = 60.0
WARM_UP_S = 5.0
GOOD_IMAGES = 24
# Growth of a serving worker's resident memory over the 60 s run, after a 5 s warm-up, that
# still counts as flat. A leak of one decoded 1280x720 thumbnail per request (2.7 MB) would
# exceed it within the first few dozen requests.
MAX_RSS_GROWTH_MIB = 48
BAD_PATHS = ("/data/upload/1/corrupt.jpg", "/data/upload/1/missing.jpg")


@pytest.fixture(scope="module")
def served(trained_model, tmp_path_factory):
    """The real backend with the trained model, its document root and the fake Label Studio."""
    root = tmp_path_factory.mktemp("load")
    document_root = root / "files"
    folder = document_root / "thumbs"
    folder.mkdir(parents=True)
    names = []
    for path in sorted(THUMBNAIL_IMAGES.rglob("*.jpg"))[:GOOD_IMAGES]:
        name = f"{len(names)}-{path.name}"
        shutil.copy(path, folder / name)
        names.append(name)

    label_studio = RoutedServer()
    label_studio.routes[BAD_PATHS[0]] = Route(200, b"\xff\xd8\xff\xe0 not really a JPEG" * 40,
                                              {"Content-Type": "image/jpeg"})
    env = {"MODEL_DIR": str(trained_model.store.root), "REDIS_URL": LOAD_REDIS_URL,
           "LOCAL_FILES_DOCUMENT_ROOT": str(document_root), "LABEL_STUDIO_URL": label_studio.url,
           "LABEL_STUDIO_API_KEY": "legacy-token-for-load-tests", "IMAGE_CACHE_DIR": str(root / "cache"),
           "LOG_LEVEL": "WARNING"}
    backend = start_backend(env, root / "backend.log")
    try:
        yield backend, names
    finally:
        backend.stop()
        label_studio.close()


def _worker_pids(master_pid: int) -> list[int]:
    """Return the gunicorn worker processes: the children of the server's master process."""
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    return [int(pid) for pid in children]


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"/proc/{pid}/status has no VmRSS line")


def _make_payload(names: list[str]):
    """Build /predict bodies of 1 to 4 tasks, each a good thumbnail (2 in 3) or a bad image."""

    def make(client: int, number: int) -> dict:
        rng = random.Random(client * 1_000_003 + number)
        tasks = []
        for index in range(rng.randint(1, 4)):
            task_id = number * 10 + index
            if rng.random() < 2 / 3:
                image = f"/data/local-files/?d=thumbs/{rng.choice(names)}"
            else:
                image = rng.choice(BAD_PATHS)
            tasks.append({"id": task_id, "data": {"image": image}})
        return {"tasks": tasks, "project": "1.1796413751", "label_config": CONFIG}

    return make


def _check_predictions(payload: dict, response: requests.Response) -> str | None:
    """Return why a /predict response is wrong: each good task needs choices, each bad one none."""
    if response.status_code != 200:
        return f"HTTP {response.status_code}: {response.text[:200]}"
    results = response.json()["results"]
    if len(results) != len(payload["tasks"]):
        return f"{len(results)} results for {len(payload['tasks'])} tasks"
    for task, result in zip(payload["tasks"], results):
        good = task["data"]["image"].startswith("/data/local-files/")
        if good and not (result["result"] and result["result"][0]["value"]["choices"]):
            return f"good task {task} got no choices: {result}"
        if not good and result["result"]:
            return f"bad task {task} got a prediction: {result}"
    return None


def test_predict_under_load(served, capsys):
    """32 clients post mixed good and bad tasks to /predict for 60 s.

    Nothing is lost: no 5xx and no transport error, every good task gets choices, every bad
    one an empty result, and the serving worker's resident memory stays flat (within
    ``MAX_RSS_GROWTH_MIB`` after a warm-up). The user gets predictions within the printed p99.
    """
    backend, names = served
    url = f"{backend.url}/predict"
    make_payload = _make_payload(names)
    warm_up = run_load(url, make_payload, CLIENTS, WARM_UP_S, check=_check_predictions)
    assert warm_up.server_errors() == 0, warm_up.summary()
    workers = _worker_pids(backend.process.pid)
    assert workers, "gunicorn started no worker process"
    rss_before = {pid: _rss_mib(pid) for pid in workers}

    result = run_load(url, make_payload, CLIENTS, DURATION_S, check=_check_predictions)

    rss_after = {pid: _rss_mib(pid) for pid in workers}
    with capsys.disabled():
        print(f"\n/predict with {CLIENTS} clients: {result.summary()}")
        print("serving worker RSS (MiB): " + ", ".join(
            f"pid {pid} {rss_before[pid]:.0f} -> {rss_after[pid]:.0f}" for pid in workers))
    assert _worker_pids(backend.process.pid) == workers, "a serving worker was restarted during the run"
    assert result.requests > CLIENTS
    assert result.server_errors() == 0, result.summary()
    assert set(result.statuses) == {200}, result.summary()
    assert result.failed_checks == 0, result.failure_examples
    for pid in workers:
        assert rss_after[pid] - rss_before[pid] <= MAX_RSS_GROWTH_MIB, (pid, rss_before[pid], rss_after[pid])


def test_webhook_burst_queues_one_training(served):
    """100 annotation webhooks for one project within 1 s, from 10 clients.

    Nothing is lost: every webhook gets a 200 response in under 1 s, and together they queue one
    training job (at most two trainings may follow a burst, one running and one pending).
    """
    backend, _ = served
    redis = Redis.from_url(LOAD_REDIS_URL)
    redis.flushdb()
    payloads = [{"action": "ANNOTATION_CREATED", "project": {"id": 11}, "annotation": {"id": 9000 + number}}
                for number in range(100)]
    try:
        started = time.monotonic()
        result = run_burst(f"{backend.url}/webhook", payloads, within_s=1.0, clients=10)
        elapsed = time.monotonic() - started
        queue = Queue(QUEUE_NAME, connection=redis)
        jobs = queue.count + queue.deferred_job_registry.count
    finally:
        redis.flushdb()
    assert result.requests == 100
    assert result.statuses == {200: 100}, result.summary()
    assert max(result.latencies_s) < 1.0, result.summary()
    assert elapsed < 2.0
    assert jobs == 1
