"""The active-learning loop with the real Label Studio, real Redis, our server and a real worker.

Annotations for the labelled thumbnails are submitted through the SDK. Label Studio delivers
the webhooks to our server, which queues training. The worker trains and publishes a version
of the project's lineage, and the server then reports and predicts with it.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest
import requests
from redis import Redis
from rq import Queue
from rq.job import Job

from model.label_config import default_label_config_xml
from model.store import ModelStore
from tests.servers import start_backend, start_worker
from tests.support import THUMBNAILS, labelled_thumbnails
from training.jobs_report import recent_jobs
from training.queue import QUEUE_NAME

from .label_studio import create_sdk_client

E2E_REDIS_URL = "redis://127.0.0.1:6379/14"
# Few epochs keep the test short; the model starts from the trained default version.
E2E_EPOCHS = "4"
JOB_WAIT_S = 600


def _region(choices: list[str]) -> list[dict]:
    return [{"from_name": "choice", "to_name": "image", "type": "choices", "value": {"choices": choices}}]


def _wait_for_new_jobs(redis: Redis, before: set[str], minimum: int = 1, timeout: float = JOB_WAIT_S) -> list[dict]:
    """Wait until at least ``minimum`` jobs not in ``before`` exist and all of them have ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = [job for job in recent_jobs(redis, limit=200) if job["id"] not in before]
        if len(new) >= minimum and all(job["status"] in ("finished", "failed") for job in new):
            return new
        time.sleep(1)
    raise AssertionError(f"jobs did not end within {timeout} s: {recent_jobs(redis, limit=20)}")


@pytest.fixture(scope="module")
def loop(trained_model, label_studio, label_studio_document_root, tmp_path_factory):
    """A project of the labelled thumbnails, our server, and a model store seeded with the default model."""
    redis = Redis.from_url(E2E_REDIS_URL)
    redis.flushdb()
    model_dir = tmp_path_factory.mktemp("loop") / "models"
    shutil.copytree(trained_model.store.root, model_dir)
    env = {"MODEL_DIR": str(model_dir), "REDIS_URL": E2E_REDIS_URL, "LABEL_STUDIO_URL": label_studio.base_url,
           "LABEL_STUDIO_API_KEY": label_studio.pat, "TRAIN_EPOCHS": E2E_EPOCHS,
           "IMAGE_CACHE_DIR": str(tmp_path_factory.mktemp("loop-cache")), "LOG_LEVEL": "INFO"}
    logs = tmp_path_factory.mktemp("loop-logs")
    backend = start_backend(env, logs / "backend.log")
    state: dict = {}
    try:
        state = _loop_project(backend, env, logs, label_studio, label_studio_document_root, redis, model_dir)
        yield state
    finally:
        if "worker" in state:
            state["worker"].stop()
        backend.stop()
        redis.flushdb()


def _loop_project(backend, env, logs, label_studio, label_studio_document_root, redis, model_dir) -> dict:
    """Create the project of labelled thumbnails and connect the backend; returns the shared state."""
    client = create_sdk_client(label_studio)
    project = client.projects.create(title="active learning", label_config=default_label_config_xml())
    folder = label_studio_document_root / "loop"
    folder.mkdir()
    labels = labelled_thumbnails()
    for relative in labels:
        shutil.copy(THUMBNAILS / relative, folder / Path(relative).name)
    storage = client.import_storage.local.create(project=project.id, path=str(folder), use_blob_urls=True)
    client.import_storage.local.sync(id=storage.id)
    connection = client.ml.create(project=project.id, url=backend.url, title="thumbnail-ml", is_interactive=True,
                                  auto_update=True)
    assert connection.state == "CO"

    return {"redis": redis, "env": env, "logs": logs, "backend": backend, "client": client, "project": project.id,
           "labels": {Path(relative).name: choices for relative, choices in labels.items()},
           "store": ModelStore(model_dir)}


def test_annotations_train_and_publish(loop, trained_model, label_studio):
    client, project_id, redis = loop["client"], loop["project"], loop["redis"]
    tasks = list(client.tasks.list(project=project_id, fields="all"))
    assert len(tasks) == len(loop["labels"])

    # Submit every annotation before the worker starts: the events coalesce into one pending job.
    annotation_ids = {}
    for task in tasks:
        name = Path(task.data["image"].split("?d=")[-1]).name
        annotation = client.annotations.create(id=task.id, result=_region(loop["labels"][name]))
        annotation_ids[task.id] = annotation.id
    last_submitted = time.monotonic()
    assert Queue(QUEUE_NAME, connection=redis).count == 1
    loop["annotation_ids"] = annotation_ids

    worker = start_worker(loop["env"], loop["logs"] / "worker.log")
    loop["worker"] = worker
    jobs = _wait_for_new_jobs(redis, set())
    finished = [job for job in jobs if job["status"] == "finished"]
    assert finished, f"training failed: {jobs}\n{worker.log()[-3000:]}"
    result = finished[0]["result"]
    assert result["status"] == "published", result
    assert result["labelled"] == len(tasks)
    version = result["version"]
    assert version.startswith(f"project-{project_id}-v1-")
    assert result["parent"] == trained_model.version

    # The server switches to the new version within a few seconds, without a restart.
    backend_url = loop["backend"].url
    deadline = time.monotonic() + 10
    served = None
    while time.monotonic() < deadline:
        served = requests.post(f"{backend_url}/setup", json={"project": f"{project_id}.0",
                                                             "schema": default_label_config_xml()}).json()
        if served["model_version"] == version:
            break
        time.sleep(0.5)
    assert served["model_version"] == version
    print(f"last annotation to new version served: {time.monotonic() - last_submitted:.1f} s")

    client.actions.create(id="retrieve_tasks_predictions", project=project_id,
                          selected_items={"all": False, "included": [task.id for task in tasks[:5]]})
    predictions = list(client.predictions.list(project=project_id))
    assert len(predictions) == 5
    assert {prediction.model_version for prediction in predictions} == {version}
    assert label_studio.pat not in worker.log()
    assert label_studio.pat not in loop["backend"].log()


def test_burst_of_updates_trains_at_most_twice(loop):
    """50 annotation updates within seconds cost at most two trainings, and the last saw all 50."""
    client, redis = loop["client"], loop["redis"]
    assert "annotation_ids" in loop, "runs after test_annotations_train_and_publish"
    before = {job["id"] for job in recent_jobs(redis, limit=100)}
    updated = list(loop["annotation_ids"].items())[:50]
    latest = ""
    for task_id, annotation_id in updated:
        annotation = client.annotations.update(id=annotation_id, result=_region(["Text", "Face"]))
        latest = max(latest, str(annotation.updated_at))
    new_jobs = _wait_for_new_jobs(redis, before)
    assert 1 <= len(new_jobs) <= 2, new_jobs
    last = max(new_jobs, key=lambda job: job["enqueued_at"])
    assert last["status"] == "finished", last
    assert last["result"]["latest_annotation_at"] >= latest.replace(" ", "T")[:19]
    # Both trainings ran in the same worker process, one after the other.
    assert loop["worker"].process.poll() is None
    loop["worker"].stop()


def _post_webhook(loop, action: str, project_id: int) -> str:
    response = requests.post(f"{loop['backend'].url}/webhook", json={"action": action, "project": {"id": project_id}},
                             timeout=5)
    assert response.status_code == 200, response.text
    return response.json()["job_id"]


def _wait_for_stage(redis: Redis, job_id: str, stage: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        progress = Job.fetch(job_id, connection=redis).meta.get("progress") or {}
        if progress.get("stage") == stage:
            return
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} never reached stage {stage!r}")


def test_killed_worker_keeps_current_version(loop):
    """SIGKILL during training leaves no new version and CURRENT unchanged; a new event trains again."""
    redis, store, project_id = loop["redis"], loop["store"], loop["project"]
    lineage = f"project-{project_id}"
    current = store.current_version(lineage)
    versions = [manifest.version for manifest in store.versions(lineage)]
    before = {job["id"] for job in recent_jobs(redis, limit=100)}

    worker = start_worker(loop["env"], loop["logs"] / "worker-killed.log")
    job_id = _post_webhook(loop, "START_TRAINING", project_id)
    _wait_for_stage(redis, job_id, "training")
    os.killpg(worker.process.pid, signal.SIGKILL)
    worker.process.wait(timeout=10)

    assert store.current_version(lineage) == current
    assert [manifest.version for manifest in store.versions(lineage)] == versions

    # The next event trains on everything once the dead job's lock has expired.
    replacement = start_worker(loop["env"], loop["logs"] / "worker-after-kill.log")
    loop["worker"] = replacement
    retry_id = _post_webhook(loop, "START_TRAINING", project_id)
    assert retry_id != job_id
    jobs = _wait_for_new_jobs(redis, before | {job_id})
    retried = next(job for job in jobs if job["id"] == retry_id)
    assert retried["status"] == "finished", retried
    assert retried["result"]["labelled"] == len(loop["labels"])


def test_small_project_skipped(loop, label_studio_document_root):
    """Below MIN_LABELLED_TASKS the job ends as skipped with the count, and nothing is published."""
    client, redis, store = loop["client"], loop["redis"], loop["store"]
    project = client.projects.create(title="too small", label_config=default_label_config_xml())
    folder = label_studio_document_root / "small"
    folder.mkdir()
    for relative in list(loop["labels"])[:3]:
        shutil.copy(next(THUMBNAILS.rglob(relative)), folder / relative)
    storage = client.import_storage.local.create(project=project.id, path=str(folder), use_blob_urls=True)
    client.import_storage.local.sync(id=storage.id)
    client.ml.create(project=project.id, url=loop["backend"].url, title="thumbnail-ml", is_interactive=True)
    before = {job["id"] for job in recent_jobs(redis, limit=100)}
    for task in client.tasks.list(project=project.id, fields="all"):
        client.annotations.create(id=task.id, result=_region(["Text"]))
    new = _wait_for_new_jobs(redis, before)
    assert all(job["status"] == "finished" for job in new), new
    result = new[0]["result"]
    assert result["status"] == "skipped"
    assert result["labelled"] <= 3
    assert result["minimum"] == 20
    assert store.current_version(f"project-{project.id}") is None


def test_failed_job_recorded_with_cause(loop):
    """A job for a project Label Studio does not have fails with the cause in the failed registry."""
    redis = loop["redis"]
    job_id = _post_webhook(loop, "START_TRAINING", 999999)
    deadline = time.monotonic() + 120
    job = None
    while time.monotonic() < deadline:
        job = next((job for job in recent_jobs(redis, limit=100) if job["id"] == job_id), None)
        if job and job["status"] == "failed":
            break
        time.sleep(0.5)
    assert job and job["status"] == "failed", job
    assert "reading project 999999 failed" in job["error"]
    assert "HTTP 404" in job["error"]

    health = requests.get(f"{loop['backend'].url}/health", timeout=5).json()
    assert health["queue"]["available"] is True
    assert health["queue"]["failed"] >= 1
    loop["worker"].stop()
