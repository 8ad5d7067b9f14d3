"""Whole-project pre-annotation against a real Label Studio 1.23.2, and the uncertainty queue.

Each test builds its own project of real thumbnails served by local-files storage, so the
pipeline downloads every image from Label Studio with the personal access token, as in use.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from redis import Redis
from rq import SimpleWorker
from rq.job import Job

from model.label_config import default_label_config_xml
from tests.support import REPO_ROOT, THUMBNAIL_IMAGES
from tests.test_preannotate import delete_preannotate_keys
from thumbnail_ml.settings import Settings
from training.preannotate import (
    PREANNOTATE_QUEUE,
    LabelStudioPredictionSink,
    PreannotateError,
    WriteOutcome,
    enqueue_preannotation,
    next_uncertain,
    preannotate,
)

from .label_studio import create_sdk_client

# Other suites flush databases 14 and 15, so this one uses 12 and deletes only its own keys.
E2E_REDIS_URL = "redis://127.0.0.1:6379/12"
TASKS = 12
IMAGE_FOLDERS = (
    "basile-bron__Thumbnail-clickbait-detection",
    "Cengineer00__thumbnail-scorer",
    "chaejin98330__AIP2023Spring_Team6",
)
UNLABELLED_QUERY = {"filters": {"conjunction": "and", "items": [
    {"filter": "filter:tasks:total_annotations", "operator": "equal", "value": 0, "type": "Number"}]}}
# The Data Manager ordering key that sorts by the prediction score, ascending (Label Studio 1.23.2).
SCORE_ORDERING = "tasks:predictions_score"


def _create_project(client, document_root: Path, name: str) -> tuple[int, list[int]]:
    """Create a project of TASKS real thumbnails imported from local-files storage."""
    project = client.projects.create(title=f"preannotate {name}", label_config=default_label_config_xml())
    folder = document_root / f"preannotate-{name}"
    folder.mkdir()
    per_folder = -(-TASKS // len(IMAGE_FOLDERS))
    images = [path for source in IMAGE_FOLDERS
              for path in sorted((THUMBNAIL_IMAGES / source).glob("*.jpg"))[:per_folder]]
    for path in images[:TASKS]:
        shutil.copy(path, folder / path.name)
    storage = client.import_storage.local.create(project=project.id, path=str(folder), use_blob_urls=True,
                                                 title="thumbnails on disk")
    client.import_storage.local.sync(id=storage.id)
    task_ids = sorted(task.id for task in client.tasks.list(project=project.id))
    assert len(task_ids) == TASKS
    return project.id, task_ids


def _versions_by_task(client, project_id: int) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    for prediction in client.predictions.list(project=project_id):
        found.setdefault(prediction.task, []).append(prediction.model_version)
    return found


@pytest.fixture(scope="module")
def settings(trained_model, label_studio, tmp_path_factory) -> Settings:
    return Settings(model_dir=trained_model.store.root, label_studio_url=label_studio.base_url,
                    label_studio_api_key=label_studio.pat, image_cache_dir=tmp_path_factory.mktemp("cache"),
                    redis_url=E2E_REDIS_URL, threads=1, fetch_concurrency=4)


class FailingSink(LabelStudioPredictionSink):
    """The real sink, which raises on its ``fail_at``-th write as a crash would."""

    def __init__(self, client, project_id: int, fail_at: int) -> None:
        super().__init__(client, project_id)
        self.fail_at = fail_at
        self.writes = 0

    def write(self, predictions: list[dict]) -> WriteOutcome:
        self.writes += 1
        if self.writes == self.fail_at:
            raise PreannotateError("injected failure after the first chunk")
        return super().write(predictions)


def test_preannotate_whole_project(settings, trained_model, label_studio, label_studio_document_root):
    client = create_sdk_client(label_studio)
    project_id, task_ids = _create_project(client, label_studio_document_root, "whole")

    summary = preannotate(settings, project_id, client=client)
    assert summary.model_version == trained_model.version
    assert (summary.listed, summary.predicted, summary.skipped, summary.written) == (TASKS, TASKS, 0, TASKS)
    assert summary.failed == {}
    assert summary.gaps == []
    assert summary.project_model_version["selected"]
    assert client.projects.get(id=project_id).model_version == trained_model.version

    predictions = client.predictions.list(project=project_id)
    assert sorted(prediction.task for prediction in predictions) == task_ids
    for prediction in predictions:
        assert prediction.model_version == trained_model.version
        assert prediction.score is not None and 0.0 <= prediction.score <= 1.0
        for region in prediction.result:
            assert (region["from_name"], region["to_name"], region["type"]) == ("choice", "image", "choices")

    again = preannotate(settings, project_id, client=client)
    assert (again.listed, again.skipped, again.predicted, again.written) == (TASKS, TASKS, 0, 0)
    assert len(client.predictions.list(project=project_id)) == TASKS


def test_interrupted_run_resumes(settings, trained_model, label_studio, label_studio_document_root):
    client = create_sdk_client(label_studio)
    project_id, task_ids = _create_project(client, label_studio_document_root, "resume")

    limited = preannotate(settings, project_id, client=client, limit=5)
    assert (limited.predicted, limited.written, limited.stopped_at_limit) == (5, 5, True)

    with pytest.raises(PreannotateError, match="injected failure"):
        preannotate(settings, project_id, client=client, writer=FailingSink(client, project_id, fail_at=2),
                    batch_size=3, chunk_size=3)
    assert sum(len(versions) for versions in _versions_by_task(client, project_id).values()) == 8

    rest = preannotate(settings, project_id, client=client)
    assert (rest.skipped, rest.predicted, rest.written) == (8, TASKS - 8, TASKS - 8)
    assert _versions_by_task(client, project_id) == {task_id: [trained_model.version] for task_id in task_ids}


def test_uncertainty_order_matches_data_manager(settings, trained_model, label_studio, label_studio_document_root):
    client = create_sdk_client(label_studio)
    project_id, task_ids = _create_project(client, label_studio_document_root, "queue")

    unselected = preannotate(settings, project_id, client=client, select_version=False)
    assert unselected.project_model_version["after"] == ""
    # Label Studio 1.23.2 averages only predictions of the project's selected version into the
    # score, and a new project selects none, so the Data Manager cannot sort by it yet.
    unsorted = client.tasks.list(project=project_id, fields="all", query=json.dumps({"ordering": [SCORE_ORDERING]}))
    assert [task.predictions_score for task in unsorted] == [None] * TASKS

    env = {key: value for key, value in os.environ.items() if not key.startswith("LABEL_STUDIO_")}
    env.update(MODEL_DIR=str(settings.model_dir), LABEL_STUDIO_URL=label_studio.base_url,
               LABEL_STUDIO_API_KEY=label_studio.pat, IMAGE_CACHE_DIR=str(settings.image_cache_dir),
               REDIS_URL=E2E_REDIS_URL)
    command = subprocess.run([sys.executable, "-m", "thumbnail_ml", "preannotate", "--project", str(project_id)],
                             capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=300)
    assert command.returncode == 0, command.stderr
    summary = json.loads(command.stdout)
    assert (summary["skipped"], summary["predicted"]) == (TASKS, 0)
    assert summary["project_model_version"]["after"] == trained_model.version
    assert label_studio.pat not in command.stderr

    region = [{"from_name": "choice", "to_name": "image", "type": "choices", "value": {"choices": ["Text"]}}]
    labelled = task_ids[:2]
    for task_id in labelled:
        client.annotations.create(task_id, result=region)

    query = json.dumps({**UNLABELLED_QUERY, "ordering": [SCORE_ORDERING]})
    data_manager = [(task.id, task.predictions_score)
                    for task in client.tasks.list(project=project_id, fields="all", query=query)]
    assert len(data_manager) == TASKS - len(labelled)
    scores = [score for _, score in data_manager]
    assert None not in scores
    assert len(set(scores)) > 1
    assert scores == sorted(scores)

    queue = next_uncertain(settings, project_id, TASKS, client=client)
    assert queue.without_prediction == 0
    assert queue.unlabelled == TASKS - len(labelled)
    assert not set(labelled) & {task.task_id for task in queue.tasks}
    # Label Studio leaves the order of equal scores open, so both lists are compared by (score, id).
    assert sorted((round(score, 6), task_id) for task_id, score in data_manager) == \
        [(round(task.score, 6), task.task_id) for task in queue.tasks]
    assert queue.tasks[0].link == f"{label_studio.base_url}/projects/{project_id}/data?task={queue.tasks[0].task_id}"

    listed = subprocess.run([sys.executable, "-m", "thumbnail_ml", "next", "--project", str(project_id), "--count",
                             "3", "--json"], capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=120)
    assert listed.returncode == 0, listed.stderr
    listed_ids = [task["task_id"] for task in json.loads(listed.stdout)["tasks"]]
    assert listed_ids == [task.task_id for task in queue.tasks[:3]]


def test_preannotate_job_on_queue(settings, trained_model, label_studio, label_studio_document_root, monkeypatch):
    client = create_sdk_client(label_studio)
    project_id, task_ids = _create_project(client, label_studio_document_root, "job")
    redis = Redis.from_url(E2E_REDIS_URL)
    delete_preannotate_keys(redis)
    for name, value in {"MODEL_DIR": str(settings.model_dir), "LABEL_STUDIO_URL": label_studio.base_url,
                        "LABEL_STUDIO_API_KEY": label_studio.pat, "IMAGE_CACHE_DIR": str(settings.image_cache_dir),
                        "REDIS_URL": E2E_REDIS_URL}.items():
        monkeypatch.setenv(name, value)
    try:
        queued = enqueue_preannotation(redis, project_id)
        SimpleWorker([PREANNOTATE_QUEUE], connection=redis, name=f"preannotate-e2e-{os.getpid()}").work(burst=True)
        job = Job.fetch(queued.job_id, connection=redis)
        assert job.get_status() == "finished", job.latest_result().exc_string if job.latest_result() else None
        result = job.return_value()
        assert (result["predicted"], result["written"], result["failed_count"]) == (TASKS, TASKS, 0)
        progress = job.meta["progress"]
        assert progress["stage"] == "done"
        assert progress["done"] == progress["total"] == TASKS
        assert progress["rate"] > 0
        assert progress["eta"] == 0
        assert _versions_by_task(client, project_id) == {task_id: [trained_model.version] for task_id in task_ids}
    finally:
        delete_preannotate_keys(redis)
