"""Faults a deployment meets: a full or read-only model disk, an unreachable Label Studio,
Redis going away, two workers on one project, and the start-up warning for an open address.

Each test uses the real part that fails: a small tmpfs mounted for the model store, real
worker processes, a real ``redis-server``, and real HTTP servers on 127.0.0.1. Queue tests
use Redis database 12 on 127.0.0.1:6379 and flush only that database.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from redis import Redis
from rq import Queue
from rq.job import Job

from model.label_config import default_label_config_xml, parse_label_config
from model.letterbox import CropSettings
from model.manifest import Manifest
from model.preprocess import InputSpec
from model.store import DEFAULT_LINEAGE, ModelStore, StoreError
from tests.http_fixtures import Route, RoutedServer
from tests.servers import free_port, start_backend, start_worker
from tests.support import THUMBNAIL_IMAGES, THUMBNAILS, labelled_thumbnails, write_json_min_export
from training.dataset import ImageIndex, build_dataset, is_validation
from training.exports import read_export
from training.jobs_report import recent_jobs
from training.queue import JOB_FUNCTION, QUEUE_NAME, enqueue_training, running_key

pytestmark = pytest.mark.slow

FAULTS_REDIS_URL = os.environ.get("FAULTS_REDIS_URL", "redis://127.0.0.1:6379/12")
CONFIG = default_label_config_xml()
CLASSES = list(parse_label_config(CONFIG).choices)
# Enough tasks for a validation split of at least 5 (about 20 % of tasks, chosen by task id).
SEED_TASKS = 60
DISK_SIZE = "16m"
JOB_WAIT_S = 300


# -- a small real training set and a seeded model store ----------------------------------


@pytest.fixture(scope="module")
def seed_store(trained_model, tmp_path_factory) -> ModelStore:
    """A copy of the session's trained model store: its default lineage serves one version."""
    return _copy_store(trained_model.store, tmp_path_factory.mktemp("faults-seed") / "models")


@pytest.fixture(scope="module")
def small_dataset(seed_store, tmp_path_factory):
    """The first labelled real thumbnails, preprocessed for the seed version's input."""
    manifest = seed_store.manifest(seed_store.current_version(DEFAULT_LINEAGE))
    export = tmp_path_factory.mktemp("faults-export") / "export.json"
    write_json_min_export(export)
    tasks, _ = read_export(export, parse_label_config(CONFIG), "None")
    return build_dataset(tasks[:SEED_TASKS], ImageIndex(THUMBNAIL_IMAGES), CLASSES,
                         InputSpec.from_dict(manifest.input), CropSettings.from_dict(manifest.crop))


def _copy_store(seed: ModelStore, target: Path) -> ModelStore:
    shutil.copytree(seed.root, target, dirs_exist_ok=True)
    return ModelStore(target)


# -- 1. the model disk fills up or turns read-only while a version is published ----------


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, text=True)


@pytest.fixture
def small_disk(tmp_path):
    """A real 16 MiB tmpfs mounted for the test, so writes fail with the kernel's own errors.

    Mounting needs root (as in CI); without it the test is skipped with the reason.
    """
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    try:
        _mount("-t", "tmpfs", "-o", f"size={DISK_SIZE}", "tmpfs", str(mountpoint))
    except (subprocess.CalledProcessError, FileNotFoundError) as error:
        detail = getattr(error, "stderr", "") or error
        pytest.skip(f"cannot mount a tmpfs for the full-disk tests (needs root): {detail}")
    yield mountpoint
    # Remount writable first, so a test that failed while the disk was read-only still cleans up.
    subprocess.run(["mount", "-o", "remount,rw", str(mountpoint)], capture_output=True)
    result = subprocess.run(["umount", str(mountpoint)], capture_output=True, text=True)
    if result.returncode != 0:
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)


def _fill(directory: Path) -> Path:
    """Write zeros into ``directory`` until its file system reports ENOSPC; returns the file."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as handle:
        while True:
            try:
                handle.write(b"\0" * 65536)
            except OSError as error:
                assert error.errno == errno.ENOSPC, error
                break
    return filler


def _store_listing(store: ModelStore) -> dict:
    """What serving can see of the default lineage: CURRENT and every entry of versions/."""
    versions_dir = store.lineage_dir(DEFAULT_LINEAGE) / "versions"
    return {
        "current": store.current_version(DEFAULT_LINEAGE),
        "entries": sorted(entry.name for entry in versions_dir.iterdir()),
        "versions": [manifest.version for manifest in store.versions(DEFAULT_LINEAGE)],
    }


def _train_and_publish(dataset, store: ModelStore, progress=None):
    """Run the real trainer from the lineage's current version; the tolerance makes it publish."""
    from training.trainer import TrainingOptions, train_version

    options = TrainingOptions(epochs=1, patience=1, tolerance=1.0)
    return train_version(dataset, store, DEFAULT_LINEAGE, "None", options,
                         parent=store.current_version(DEFAULT_LINEAGE), progress=progress)


def _assert_later_publish_works(store: ModelStore, before: dict) -> None:
    """Publish a copy of the current version's files through the store, as the trainer does."""
    current = store.version_dir(before["current"])
    staging = store.create_staging_dir()
    for name in ("model.keras", "model.tflite"):
        shutil.copy(current / name, staging / name)
    manifest = Manifest.read(current)
    manifest.parent = before["current"]
    published = store.publish(DEFAULT_LINEAGE, staging, manifest)
    after = _store_listing(store)
    assert after["current"] == published.version
    assert after["versions"] == before["versions"] + [published.version]


@pytest.mark.parametrize("stage", ["exporting", "publishing", "stored"])
def test_disk_full_keeps_current(stage, small_disk, seed_store, small_dataset, caplog):
    """The model disk fills up at one step of writing a new version.

    ``exporting``: before the Keras and LiteRT files are written to staging; ``publishing``:
    before the manifest is written; ``stored``: after the version directory was renamed into
    ``versions/``, before CURRENT is replaced. Nothing is lost: CURRENT keeps the old version,
    no new entry is left in ``versions/``, and staging is emptied. The user sees a failed job
    whose error names MODEL_DIR and "No space left on device", and, once space is freed, the
    next publish works.
    """
    store = _copy_store(seed_store, small_disk / "models")
    before = _store_listing(store)
    filled: list[Path] = []

    def fill_at(event: dict) -> None:
        if event.get("stage") == stage and not filled:
            filled.append(_fill(small_disk))

    class FillOnStored(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if stage == "stored" and record.getMessage().startswith("stored model version") and not filled:
                filled.append(_fill(small_disk))

    caplog.set_level(logging.INFO, logger="model.store")
    handler = FillOnStored()
    logging.getLogger("model.store").addHandler(handler)
    try:
        with pytest.raises((StoreError, OSError, RuntimeError)) as failure:
            _train_and_publish(small_dataset, store, progress=fill_at)
    finally:
        logging.getLogger("model.store").removeHandler(handler)
    assert filled, f"the disk was never filled at stage {stage!r}"

    message = str(failure.value)
    assert str(store.root) in message
    assert "No space left on device" in message
    assert _store_listing(store) == before
    assert list((store.root / "staging").iterdir()) == []

    filled[0].unlink()
    _assert_later_publish_works(store, before)


def test_read_only_disk_keeps_current(small_disk, seed_store, small_dataset):
    """The model disk is remounted read-only just before the new version is published.

    Nothing is lost: CURRENT keeps the old version and no new entry appears in ``versions/``.
    The files already written to staging stay there (a read-only disk cannot delete them);
    serving never reads staging. The user sees a failed job whose error names MODEL_DIR and
    "Read-only file system"; after a remount read-write, the next publish works.
    """
    store = _copy_store(seed_store, small_disk / "models")
    before = _store_listing(store)

    def remount_at_publish(event: dict) -> None:
        if event.get("stage") == "publishing":
            _mount("-o", "remount,ro", str(small_disk))

    with pytest.raises((StoreError, OSError)) as failure:
        _train_and_publish(small_dataset, store, progress=remount_at_publish)
    message = str(failure.value)
    assert str(store.root) in message
    assert "Read-only file system" in message
    assert _store_listing(store) == before

    _mount("-o", "remount,rw", str(small_disk))
    _assert_later_publish_works(store, before)


# -- 2. Label Studio unreachable while a job pulls the annotations -----------------------


@pytest.fixture
def queue_redis():
    connection = Redis.from_url(FAULTS_REDIS_URL)
    connection.flushdb()
    yield connection
    connection.flushdb()


def _wait_for_jobs_to_end(redis: Redis, job_ids: list[str], timeout: float = JOB_WAIT_S) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = {job["id"]: job for job in recent_jobs(redis, limit=50) if job["id"] in job_ids}
        if len(jobs) == len(job_ids) and all(job["status"] in ("finished", "failed") for job in jobs.values()):
            return jobs
        time.sleep(0.5)
    raise AssertionError(f"jobs {job_ids} did not end within {timeout} s: {recent_jobs(redis, limit=10)}")


def test_label_studio_down_fails_job(queue_redis, seed_store, tmp_path):
    """Label Studio returns 502 to the first pull attempt and then stops listening.

    The pull is retried with backoff (the SDK retries each call twice more, so the first
    attempt makes 3 requests), then the job fails. Nothing is lost: the store is unchanged.
    The user sees a failed job whose error names the Label Studio URL and the connection
    error, and the worker log shows each retry with its delay.
    """
    store = _copy_store(seed_store, tmp_path / "models")
    before = _store_listing(store)
    label_studio = RoutedServer()
    label_studio.routes["/api/projects/1/"] = Route(502, b"<html>502 Bad Gateway</html>", {"Content-Type": "text/html"})
    url = label_studio.url

    def stop_after_first_attempt() -> None:
        deadline = time.monotonic() + JOB_WAIT_S
        while len(label_studio.requests) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        label_studio.close()

    stopper = threading.Thread(target=stop_after_first_attempt, daemon=True)
    stopper.start()
    env = {"REDIS_URL": FAULTS_REDIS_URL, "MODEL_DIR": str(store.root), "LABEL_STUDIO_URL": url,
           "LABEL_STUDIO_API_KEY": "legacy-token-for-fault-tests", "IMAGE_CACHE_DIR": str(tmp_path / "cache"),
           "LOG_LEVEL": "INFO"}
    job = enqueue_training(queue_redis, 1, "START_TRAINING", job_timeout=600)
    worker = start_worker(env, tmp_path / "worker.log", "--burst")
    try:
        worker.process.wait(timeout=JOB_WAIT_S)
    finally:
        worker.stop()
        stopper.join(timeout=5)
        if stopper.is_alive():
            label_studio.close()

    result = _wait_for_jobs_to_end(queue_redis, [job.job_id], timeout=10)[job.job_id]
    assert result["status"] == "failed", result
    assert url in result["error"]
    assert "failed after 5 attempt(s)" in result["error"]
    assert "Connection refused" in result["error"]
    assert len(label_studio.requests) == 3

    log = worker.log()
    retries = [line for line in log.splitlines() if "reading project 1 failed" in line and "retrying in" in line]
    assert len(retries) == 4, log[-3000:]
    assert "HTTP 502" in retries[0]
    for line, delay in zip(retries, ("1.0 s", "2.0 s", "4.0 s", "8.0 s")):
        assert f"retrying in {delay}" in line
    assert _store_listing(store) == before


# -- 3. two workers and one project ------------------------------------------------------


class FakeLabelStudio:
    """The two Label Studio API calls of an annotation pull, with tasks the test can add to.

    The check is about our queue and lock, so a stand-in serves the pull instead of a real
    Label Studio, which takes a minute to start. Its tasks response has Label Studio 1.23's shape.
    """

    def __init__(self, tasks: list[dict]) -> None:
        self.tasks = list(tasks)
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - name fixed by http.server
                parts = urlsplit(self.path)
                if parts.path == "/api/projects/1/":
                    body = {"id": 1, "title": "two workers", "label_config": CONFIG}
                elif parts.path == "/api/tasks/":
                    page = int(parse_qs(parts.query).get("page", ["1"])[0])
                    tasks = list(owner.tasks) if page == 1 else []
                    body = {"tasks": tasks, "total": len(owner.tasks), "total_annotations": len(owner.tasks),
                            "total_predictions": 0}
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _api_tasks(document_root: Path, first: int, count: int) -> list[dict]:
    """Label Studio task objects with one annotation each, for the labelled real thumbnails."""
    folder = document_root / "thumbs"
    folder.mkdir(exist_ok=True)
    tasks = []
    items = list(labelled_thumbnails().items())[first:first + count]
    for offset, (relative, labels) in enumerate(items):
        task_id = first + offset + 1
        name = f"{task_id}-{Path(relative).name}"
        shutil.copy(THUMBNAILS / relative, folder / name)
        region = {"from_name": "choice", "to_name": "image", "type": "choices", "value": {"choices": labels}}
        tasks.append({
            "id": task_id, "data": {"image": f"/data/local-files/?d=thumbs/{name}"}, "total_annotations": 1,
            "annotations": [{"id": 5000 + task_id, "result": [region], "was_cancelled": False,
                             "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"}],
        })
    return tasks


ACTIVE_STAGES = {"pulling", "fetching images", "starting", "training", "exporting", "reporting", "publishing"}


def _sample_active_jobs(redis: Redis, job_ids: list[str], stop: threading.Event, samples: list) -> None:
    """Record, every 0.1 s, which jobs are past the lock and the holder of the project's lock."""
    while not stop.is_set():
        active = []
        for job in Job.fetch_many(list(job_ids), connection=redis):
            if job is None:
                continue
            stage = (job.meta.get("progress") or {}).get("stage")
            if job.get_status() == "started" and stage in ACTIVE_STAGES:
                active.append(job.id)
        holder = redis.get(running_key(1))
        samples.append((time.monotonic(), active, holder.decode() if holder else None))
        time.sleep(0.1)


def _wait_until_pulled(redis: Redis, job_ids: list[str], workers: list) -> None:
    """Wait until one of the jobs has pulled the annotations (it reports a later stage)."""
    deadline = time.monotonic() + JOB_WAIT_S
    while time.monotonic() < deadline:
        for job in Job.fetch_many(job_ids, connection=redis):
            if (job.meta.get("progress") or {}).get("stage") in ACTIVE_STAGES - {"pulling"}:
                return
        time.sleep(0.1)
    raise AssertionError(f"no job got past pulling:\n{workers[0].log()[-2000:]}")


def test_two_workers_train_one_at_a_time(queue_redis, seed_store, tmp_path):
    """Two worker processes and three jobs of one project: never two trainings at once.

    Two jobs are put on the queue directly, without the dependency that ``enqueue_training``
    adds, as if two events had raced. Both workers take one each at once, so only the
    project lock keeps them apart. While the first trains, ten tasks are added and 20 events
    arrive: they coalesce into one job that waits for the running one. Nothing is lost or
    trained twice for the same events: every job finishes, the coalesced job trains on the added
    tasks, and the samples never show two jobs past the lock. The user sees three finished
    jobs in ``thumbnail-ml jobs``.
    """
    store = _copy_store(seed_store, tmp_path / "models")
    document_root = tmp_path / "files"
    document_root.mkdir()
    label_studio = FakeLabelStudio(_api_tasks(document_root, 0, 40))
    extra_tasks = _api_tasks(document_root, 40, 10)
    env = {"REDIS_URL": FAULTS_REDIS_URL, "MODEL_DIR": str(store.root), "LABEL_STUDIO_URL": label_studio.url,
           "LABEL_STUDIO_API_KEY": "legacy-token-for-fault-tests", "LOCAL_FILES_DOCUMENT_ROOT": str(document_root),
           "IMAGE_CACHE_DIR": str(tmp_path / "cache"), "TRAIN_EPOCHS": "1", "LOG_LEVEL": "INFO"}

    queue = Queue(QUEUE_NAME, connection=queue_redis)
    raced = [
        queue.enqueue(JOB_FUNCTION, 1, job_id=f"train-project-1-raced{index}", job_timeout=600, result_ttl=3600,
                      meta={"project": 1, "reason": "raced", "progress": {"stage": "queued"}}).id
        for index in range(2)
    ]
    workers = [start_worker(env, tmp_path / f"worker-{index}.log") for index in range(2)]
    samples: list = []
    stop = threading.Event()
    job_ids = list(raced)
    sampler = threading.Thread(target=_sample_active_jobs, args=(queue_redis, job_ids, stop, samples), daemon=True)
    sampler.start()
    try:
        _wait_until_pulled(queue_redis, raced, workers)
        label_studio.tasks.extend(extra_tasks)
        events = [enqueue_training(queue_redis, 1, "ANNOTATION_CREATED", job_timeout=600) for _ in range(20)]
        coalesced = {event.job_id for event in events}
        assert len(coalesced) == 1
        job_ids.extend(coalesced)
        jobs = _wait_for_jobs_to_end(queue_redis, job_ids)
    finally:
        stop.set()
        sampler.join(timeout=5)
        for worker in workers:
            worker.stop()
        label_studio.close()

    logs = "\n".join(worker.log()[-2000:] for worker in workers)
    assert all(job["status"] == "finished" for job in jobs.values()), f"{jobs}\n{logs}"
    overlapping = [(at, active) for at, active, _ in samples if len(active) > 1]
    assert overlapping == []
    assert all(holder == active[0] for _, active, holder in samples if active)
    assert {job_id for _, active, _ in samples for job_id in active} == set(job_ids)

    labelled = {job_id: jobs[job_id]["result"]["labelled"] for job_id in job_ids}
    [coalesced_id] = coalesced
    assert labelled[coalesced_id] == 50
    first_active = next(active[0] for _, active, _ in samples if active)
    assert labelled[first_active] == 40
    job = Job.fetch(coalesced_id, connection=queue_redis)
    assert job._dependency_ids == [first_active]


def test_too_few_validation_tasks_skips_job(queue_redis, seed_store, tmp_path):
    """A project at MIN_LABELLED_TASKS whose split gives under 5 validation tasks: the job is skipped.

    The validation split is chosen by a hash of the task id, so 20 labelled tasks (ids 1 to
    20) put only 2 in validation. Nothing is lost and nothing is published: the user gets a
    skipped job whose reason gives the number of examples in each split and requests more
    labelled tasks, not a failed job with a traceback.
    """
    from training.trainer import MIN_VALIDATION

    task_ids = range(1, 21)
    assert sum(is_validation(task_id) for task_id in task_ids) < MIN_VALIDATION

    store = _copy_store(seed_store, tmp_path / "models")
    before = _store_listing(store)
    document_root = tmp_path / "files"
    document_root.mkdir()
    label_studio = FakeLabelStudio(_api_tasks(document_root, 0, len(task_ids)))
    env = {"REDIS_URL": FAULTS_REDIS_URL, "MODEL_DIR": str(store.root), "LABEL_STUDIO_URL": label_studio.url,
           "LABEL_STUDIO_API_KEY": "legacy-token-for-fault-tests", "LOCAL_FILES_DOCUMENT_ROOT": str(document_root),
           "IMAGE_CACHE_DIR": str(tmp_path / "cache"), "MIN_LABELLED_TASKS": "20", "LOG_LEVEL": "INFO"}
    job = enqueue_training(queue_redis, 1, "ANNOTATION_CREATED", job_timeout=600)
    worker = start_worker(env, tmp_path / "worker.log", "--burst")
    try:
        worker.process.wait(timeout=JOB_WAIT_S)
    finally:
        worker.stop()
        label_studio.close()

    result = _wait_for_jobs_to_end(queue_redis, [job.job_id], timeout=10)[job.job_id]
    assert result["status"] == "finished", result
    assert result["result"]["status"] == "skipped", result
    assert "too few usable examples" in result["result"]["reason"]
    assert "label more tasks" in result["result"]["reason"]
    assert "Traceback" not in worker.log()
    assert _store_listing(store) == before


# -- 4. Redis stops and comes back --------------------------------------------------------


class RedisServer:
    """A ``redis-server`` of the test's own on 127.0.0.1, with an append-only file in ``directory``."""

    def __init__(self, directory: Path, port: int) -> None:
        self.directory = directory
        self.port = port
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.directory / "redis.log", "ab") as log:
            self.process = subprocess.Popen(
                ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.directory),
                 "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
                stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 10
        while True:
            try:
                if Redis(port=self.port, socket_connect_timeout=0.2).ping():
                    return
            except Exception:  # noqa: BLE001 - still starting
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


def test_redis_restart_webhooks_recover(seed_store, tmp_path):
    """Our own Redis stops while the backend runs, then restarts on the same port.

    While it is down, /predict still returns choices, /webhook returns 503 within 1 s and
    /health reports the queue as unavailable. After the restart the first webhook is
    accepted again and joins the job queued before the outage. Nothing is lost (the queued
    job survives, through Redis's append-only file) and nothing is queued twice.
    """
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed: install the redis-server package")
    redis_dir = tmp_path / "redis"
    redis_dir.mkdir()
    server = RedisServer(redis_dir, free_port())
    server.start()
    document_root = tmp_path / "files"
    document_root.mkdir()
    task = _api_tasks(document_root, 0, 1)[0]
    store = _copy_store(seed_store, tmp_path / "models")
    env = {"REDIS_URL": f"redis://127.0.0.1:{server.port}/0", "MODEL_DIR": str(store.root),
           "LOCAL_FILES_DOCUMENT_ROOT": str(document_root), "IMAGE_CACHE_DIR": str(tmp_path / "cache"),
           "LOG_LEVEL": "INFO"}
    backend = start_backend(env, tmp_path / "backend.log")
    redis = Redis(port=server.port)
    webhook = {"action": "ANNOTATION_CREATED", "project": {"id": 7}}
    try:
        first = requests.post(f"{backend.url}/webhook", json=webhook, timeout=5)
        assert first.status_code == 200, first.text
        job_id = first.json()["job_id"]

        server.stop()
        predicted = requests.post(f"{backend.url}/predict", timeout=30,
                                  json={"tasks": [{"id": task["id"], "data": task["data"]}], "label_config": CONFIG})
        assert predicted.status_code == 200
        assert predicted.json()["results"][0]["result"][0]["value"]["choices"]
        started = time.monotonic()
        rejected = requests.post(f"{backend.url}/webhook", json=webhook, timeout=5)
        assert time.monotonic() - started < 1.0
        assert rejected.status_code == 503
        assert "training queue unavailable" in rejected.json()["error"]
        health = requests.get(f"{backend.url}/health", timeout=5)
        assert health.status_code == 200
        assert health.json()["queue"]["available"] is False

        server.start()
        again = requests.post(f"{backend.url}/webhook", json=webhook, timeout=5)
        assert again.status_code == 200, again.text
        assert again.json()["status"] == "coalesced"
        assert again.json()["job_id"] == job_id
        assert Queue(QUEUE_NAME, connection=redis).job_ids == [job_id]
        assert requests.get(f"{backend.url}/health", timeout=5).json()["queue"]["available"] is True
    finally:
        backend.stop()
        server.stop()


# -- 5. the start-up warning for a server reachable from other machines ------------------


@pytest.mark.parametrize(
    "host, basic_auth, warned",
    [
        ("0.0.0.0", False, True),
        ("0.0.0.0", True, False),
        ("127.0.0.1", False, False),
        ("::1", False, False),
        ("localhost", False, False),
    ],
)
def test_open_address_warning(host, basic_auth, warned, tmp_path, monkeypatch, caplog):
    """``serve`` warns when it listens beyond loopback without basic auth, and only then.

    gunicorn's ``run`` is replaced by a no-op: a real server on 0.0.0.0 would be reachable
    from the network during the test. Everything before it (the check and the log) is real.
    """
    from backend import server
    from thumbnail_ml.settings import Settings

    monkeypatch.setattr(server.GunicornServer, "run", lambda self: None)
    credentials = {"basic_auth_user": "annotator", "basic_auth_pass": "fault-test-password"} if basic_auth else {}
    settings = Settings(host=host, port=free_port(), model_dir=tmp_path / "models", log_level="INFO", **credentials)
    root_level = logging.getLogger().level
    caplog.set_level(logging.WARNING, logger="backend.server")
    try:
        server.serve(settings)
    finally:
        logging.getLogger().setLevel(root_level)
    warnings = [record.getMessage() for record in caplog.records
                if record.name == "backend.server" and record.levelno == logging.WARNING]
    if warned:
        assert len(warnings) == 1
        assert f"listening on {host} without BASIC_AUTH_USER/BASIC_AUTH_PASS" in warnings[0]
    else:
        assert warnings == []
