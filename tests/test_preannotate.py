"""Whole-project pre-annotation without Label Studio: task lists, a JSON Lines sink, images on disk.

The pipeline runs with the real trained model against real thumbnails read from a local
document root, as ``/data/local-files/?d=...`` URLs. Predictions are compared with what the
server's ``/predict`` returns for the same tasks.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from label_studio_sdk.core.api_error import ApiError
from redis import Redis
from rq import Queue
from rq.job import Job

from backend.app import create_app
from model.label_config import default_label_config_xml
from model.runtime import Predictor
from tests.support import REPO_ROOT, THUMBNAIL_IMAGES
from thumbnail_ml.settings import Settings
from training.preannotate import (
    JOB_FUNCTION,
    PREANNOTATE_QUEUE,
    JsonlPredictionSink,
    LabelStudioPredictionSink,
    ListTaskSource,
    PreannotateError,
    ProjectBusy,
    WriteOutcome,
    enqueue_after_publish,
    enqueue_preannotation,
    next_uncertain,
    preannotate,
    preannotation_lock,
    rank_uncertain,
)

# Other suites flush databases 14 and 15, so these tests use 11 and delete only their own keys.
TEST_REDIS_URL = os.environ.get("TEST_PREANNOTATE_REDIS_URL", "redis://127.0.0.1:6379/11")
CONFIG = default_label_config_xml()
IMAGE_FOLDERS = ("basile-bron__Thumbnail-clickbait-detection", "Cengineer00__thumbnail-scorer")
GOOD_IMAGES = 10


@pytest.fixture(scope="module")
def document_root(tmp_path_factory) -> Path:
    """A local-files document root with copies of real thumbnails and a corrupt file."""
    root = tmp_path_factory.mktemp("document-root")
    folder = root / "thumbs"
    folder.mkdir()
    sources = []
    for name in IMAGE_FOLDERS:
        sources.extend(sorted((THUMBNAIL_IMAGES / name).glob("*.jpg"))[:GOOD_IMAGES // 2])
    for source in sources:
        shutil.copy(source, folder / source.name)
    (folder / "corrupt.jpg").write_bytes(b"this is not an image, only text with a .jpg name\n" * 4)
    return root


def _image_names(document_root: Path) -> list[str]:
    return sorted(path.name for path in (document_root / "thumbs").glob("*.jpg") if path.name != "corrupt.jpg")


def _tasks(document_root: Path, first_id: int = 1) -> list[dict]:
    return [{"id": first_id + index, "data": {"image": f"/data/local-files/?d=thumbs/{name}"}, "predictions": []}
            for index, name in enumerate(_image_names(document_root))]


def _settings(tmp_path: Path, trained_model, document_root: Path, **changes) -> Settings:
    values = dict(model_dir=trained_model.store.root, document_root=document_root,
                  image_cache_dir=tmp_path / "cache", image_cache_max_mb=0, redis_url=TEST_REDIS_URL,
                  fetch_concurrency=4, threads=1)
    values.update(changes)
    return Settings(**values)


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class FailingSink(JsonlPredictionSink):
    """A JSON Lines sink that raises on its ``fail_at``-th write, as a crash would."""

    def __init__(self, path: Path, fail_at: int) -> None:
        super().__init__(path)
        self.fail_at = fail_at
        self.writes = 0

    def write(self, predictions: list[dict]) -> WriteOutcome:
        self.writes += 1
        if self.writes == self.fail_at:
            raise PreannotateError("injected failure: Label Studio went away")
        return super().write(predictions)


# -- the pipeline ---------------------------------------------------------------------------


def test_predictions_match_server(tmp_path, trained_model, document_root):
    settings = _settings(tmp_path, trained_model, document_root)
    tasks = _tasks(document_root)
    sink = JsonlPredictionSink(tmp_path / "predictions.jsonl")
    summary = preannotate(settings, 7, source=ListTaskSource(tasks, CONFIG), writer=sink)

    assert summary.model_version == trained_model.version
    assert (summary.listed, summary.predicted, summary.skipped, summary.written) == (10, 10, 0, 10)
    assert summary.failed == {}
    assert summary.gaps == []

    written = {record["task"]: record for record in _read_jsonl(sink.path)}
    assert sorted(written) == [task["id"] for task in tasks]
    app = create_app(settings)
    with app.test_client() as client:
        response = client.post("/predict", json={"tasks": tasks, "project": "7.1", "label_config": CONFIG})
    server_results = response.get_json()["results"]
    for task, expected in zip(tasks, server_results):
        record = dict(written[task["id"]])
        assert record.pop("task") == task["id"]
        assert record == expected
        assert 0.0 <= record["score"] <= 1.0


def test_predicts_in_batches(tmp_path, trained_model, document_root, monkeypatch):
    sizes: list[int] = []
    original = Predictor.predict_pixels

    def recording(self, pixels):
        sizes.append(pixels.shape[0])
        return original(self, pixels)

    monkeypatch.setattr(Predictor, "predict_pixels", recording)
    settings = _settings(tmp_path, trained_model, document_root)
    summary = preannotate(settings, 7, source=ListTaskSource(_tasks(document_root), CONFIG),
                          writer=JsonlPredictionSink(tmp_path / "p.jsonl"), batch_size=4, chunk_size=3)
    assert sizes == [4, 4, 2]
    assert summary.written == 10
    assert len(_read_jsonl(tmp_path / "p.jsonl")) == 10


def test_project_config_names_and_subset(tmp_path, trained_model, document_root):
    config = ('<View><Image name="thumb" value="$url"/><Choices name="tags" toName="thumb" choice="single">'
              '<Choice value="Face"/><Choice value="Text"/><Choice value="Kitten"/></Choices></View>')
    tasks = [{"id": task["id"], "data": {"url": task["data"]["image"]}} for task in _tasks(document_root)]
    settings = _settings(tmp_path, trained_model, document_root)
    sink = JsonlPredictionSink(tmp_path / "p.jsonl")
    summary = preannotate(settings, 7, source=ListTaskSource(tasks, config), writer=sink)

    assert "Weapons" in summary.dropped_classes
    assert "Face" not in summary.dropped_classes
    records = _read_jsonl(sink.path)
    assert len(records) == 10
    for record in records:
        for region in record["result"]:
            assert (region["from_name"], region["to_name"], region["type"]) == ("tags", "thumb", "choices")
            assert len(region["value"]["choices"]) == 1
            assert set(region["value"]["choices"]) <= {"Face", "Text"}
    app = create_app(settings)
    with app.test_client() as client:
        response = client.post("/predict", json={"tasks": tasks, "project": "7.1", "label_config": config})
    assert [record["result"] for record in records] == [result["result"] for result in response.get_json()["results"]]


def test_bad_images_reported_with_reason(tmp_path, trained_model, document_root):
    tasks = _tasks(document_root)
    tasks.insert(3, {"id": 100, "data": {"image": "/data/local-files/?d=thumbs/corrupt.jpg"}})
    tasks.insert(6, {"id": 101, "data": {"image": "/data/local-files/?d=thumbs/missing.jpg"}})
    tasks.append({"id": 102, "data": {"picture": "/data/local-files/?d=thumbs/x.jpg"}})
    settings = _settings(tmp_path, trained_model, document_root)
    sink = JsonlPredictionSink(tmp_path / "p.jsonl")
    summary = preannotate(settings, 7, source=ListTaskSource(tasks, CONFIG), writer=sink, batch_size=4)

    assert summary.predicted == 10
    assert summary.written == 10
    assert summary.failed == {"unsupported_format": [100], "not_found": [101], "invalid_task": [102]}
    assert "missing.jpg" in summary.failure_examples["not_found"]
    assert "'image'" in summary.failure_examples["invalid_task"]
    assert summary.to_dict()["failed_count"] == 3
    assert {record["task"] for record in _read_jsonl(sink.path)} == set(range(1, 11))


def test_resume_after_sink_failure(tmp_path, trained_model, document_root):
    settings = _settings(tmp_path, trained_model, document_root)
    tasks = _tasks(document_root)
    path = tmp_path / "p.jsonl"
    with pytest.raises(PreannotateError, match="injected failure"):
        preannotate(settings, 7, source=ListTaskSource(tasks, CONFIG), writer=FailingSink(path, fail_at=2),
                    batch_size=3, chunk_size=3)
    assert [record["task"] for record in _read_jsonl(path)] == [1, 2, 3]

    summary = preannotate(settings, 7, source=ListTaskSource(tasks, CONFIG), writer=JsonlPredictionSink(path),
                          batch_size=3, chunk_size=3)
    assert summary.skipped == 3
    assert summary.predicted == 7
    task_ids = [record["task"] for record in _read_jsonl(path)]
    assert sorted(task_ids) == list(range(1, 11))
    assert len(task_ids) == len(set(task_ids))

    again = preannotate(settings, 7, source=ListTaskSource(tasks, CONFIG), writer=JsonlPredictionSink(path))
    assert (again.skipped, again.predicted, again.written) == (10, 0, 0)
    assert len(_read_jsonl(path)) == 10


def test_interrupt_writes_finished_predictions(tmp_path, trained_model, document_root):
    settings = _settings(tmp_path, trained_model, document_root)
    tasks = _tasks(document_root)
    path = tmp_path / "p.jsonl"

    def interrupt_after_first_batch(event: dict) -> None:
        if event["predicted"] >= 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        preannotate(settings, 7, source=ListTaskSource(tasks, CONFIG), writer=JsonlPredictionSink(path),
                    progress=interrupt_after_first_batch, batch_size=4)
    assert [record["task"] for record in _read_jsonl(path)] == [1, 2, 3, 4]

    rest = preannotate(settings, 7, source=ListTaskSource(tasks, CONFIG), writer=JsonlPredictionSink(path))
    assert (rest.skipped, rest.predicted) == (4, 6)
    assert sorted(record["task"] for record in _read_jsonl(path)) == list(range(1, 11))


def test_limit_then_rerun_completes(tmp_path, trained_model, document_root):
    settings = _settings(tmp_path, trained_model, document_root)
    tasks = _tasks(document_root)
    path = tmp_path / "p.jsonl"
    first = preannotate(settings, 7, source=ListTaskSource(tasks, CONFIG), writer=JsonlPredictionSink(path), limit=4)
    assert first.predicted == 4
    assert first.stopped_at_limit
    rest = preannotate(settings, 7, source=ListTaskSource(tasks, CONFIG), writer=JsonlPredictionSink(path))
    assert (rest.skipped, rest.predicted, rest.stopped_at_limit) == (4, 6, False)
    assert sorted(record["task"] for record in _read_jsonl(path)) == list(range(1, 11))


def test_tasks_with_version_skipped(tmp_path, trained_model, document_root):
    tasks = _tasks(document_root)
    tasks[0]["predictions"] = [{"model_version": trained_model.version, "score": 0.4}]
    tasks[1]["predictions"] = [{"model_version": "default-v99-00000000", "score": 0.4}]
    tasks[2]["total_annotations"] = 1
    settings = _settings(tmp_path, trained_model, document_root)
    sink = JsonlPredictionSink(tmp_path / "p.jsonl")
    summary = preannotate(settings, 7, source=ListTaskSource(tasks, CONFIG, only_unlabeled=True), writer=sink)
    assert summary.listed == 9
    assert summary.skipped == 1
    assert summary.predicted == 8
    assert 1 not in {record["task"] for record in _read_jsonl(sink.path)}


def test_progress_reports_done_total_rate_eta(tmp_path, trained_model, document_root):
    events: list[dict] = []
    settings = _settings(tmp_path, trained_model, document_root)
    preannotate(settings, 7, source=ListTaskSource(_tasks(document_root), CONFIG),
                writer=JsonlPredictionSink(tmp_path / "p.jsonl"), progress=events.append, batch_size=4)
    assert events
    for event in events:
        assert {"done", "total", "rate", "eta"} <= set(event)
        assert event["done"] <= event["total"] == 10
    assert events[-1]["stage"] == "done"
    assert events[-1]["done"] == 10
    assert events[-1]["rate"] > 0


def test_torn_jsonl_line_ignored(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"task": 1, "model_version": "v", "result": []}\n{"task": 2, "model_ver', encoding="utf-8")
    sink = JsonlPredictionSink(path)
    assert sink.written_task_ids("v") == {1}
    sink.write([{"task": 3, "model_version": "v", "result": []}])
    assert sink.written_task_ids("v") == {1, 3}
    assert path.read_text(encoding="utf-8").splitlines()[-1] == '{"task":3,"model_version":"v","result":[]}'


def test_unknown_version_and_bad_limit(tmp_path, trained_model, document_root):
    settings = _settings(tmp_path, trained_model, document_root)
    source = ListTaskSource(_tasks(document_root), CONFIG)
    with pytest.raises(PreannotateError, match="default-v99-00000000"):
        preannotate(settings, 7, version="default-v99-00000000", source=source,
                    writer=JsonlPredictionSink(tmp_path / "p.jsonl"))
    with pytest.raises(PreannotateError, match="invalid limit 0"):
        preannotate(settings, 7, limit=0, source=source, writer=JsonlPredictionSink(tmp_path / "p.jsonl"))


def test_no_model_error(tmp_path, document_root):
    settings = Settings(model_dir=tmp_path / "empty-store", document_root=document_root)
    with pytest.raises(PreannotateError, match="no model is trained yet"):
        preannotate(settings, 7, source=ListTaskSource([], CONFIG), writer=JsonlPredictionSink(tmp_path / "p.jsonl"))


def test_missing_label_studio_settings(tmp_path, trained_model, document_root):
    settings = _settings(tmp_path, trained_model, document_root)
    with pytest.raises(PreannotateError, match="LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY must be set"):
        preannotate(settings, 7)
    with pytest.raises(PreannotateError, match="LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY must be set"):
        next_uncertain(settings, 7, 5)


# -- the uncertainty queue ------------------------------------------------------------------


def _prediction(version: str, score: float | None, prediction_id: int, created_at: str = "2026-01-01T00:00:00Z"):
    return {"id": prediction_id, "model_version": version, "score": score, "created_at": created_at}


UNCERTAINTY_TASKS = [
    {"id": 1, "total_annotations": 0, "predictions": [_prediction("v2", 0.50, 11)]},
    {"id": 2, "total_annotations": 0, "predictions": [_prediction("v2", 0.05, 12)]},
    # Labelled: never listed, however uncertain.
    {"id": 3, "total_annotations": 1, "predictions": [_prediction("v2", 0.01, 13)]},
    # Only an older version's prediction: listed after the scored tasks.
    {"id": 4, "total_annotations": 0, "predictions": [_prediction("v1", 0.02, 14)]},
    # The latest prediction of the version counts.
    {"id": 5, "total_annotations": 0, "predictions": [
        _prediction("v2", 0.01, 15, "2026-01-01T00:00:00Z"), _prediction("v2", 0.30, 25, "2026-02-01T00:00:00Z")]},
    {"id": 6, "total_annotations": 0, "predictions": []},
    {"id": 7, "total_annotations": 0, "predictions": [_prediction("v2", 0.05, 17)]},
    {"id": 8, "total_annotations": 0, "predictions": [_prediction("v2", 0.90, 18)]},
]


def test_rank_uncertain_order():
    ranked, unlabelled, without = rank_uncertain(UNCERTAINTY_TASKS, "v2", 10)
    assert ranked == [(2, 0.05, 12), (7, 0.05, 17), (5, 0.30, 25), (1, 0.50, 11), (8, 0.90, 18),
                      (4, None, None), (6, None, None)]
    assert (unlabelled, without) == (7, 2)


@pytest.mark.parametrize("count, expected", [(1, [2]), (3, [2, 7, 5]), (6, [2, 7, 5, 1, 8, 4])])
def test_rank_uncertain_count(count, expected):
    ranked, _, _ = rank_uncertain(UNCERTAINTY_TASKS, "v2", count)
    assert [task_id for task_id, _, _ in ranked] == expected


def test_next_uncertain_links(tmp_path, trained_model):
    version = trained_model.version
    tasks = [{"id": task["id"], "total_annotations": task["total_annotations"],
              "predictions": [dict(p, model_version=version if p["model_version"] == "v2" else "old")
                              for p in task["predictions"]]} for task in UNCERTAINTY_TASKS]
    settings = Settings(model_dir=trained_model.store.root, label_studio_url="http://127.0.0.1:8080")
    queue = next_uncertain(settings, 7, 3, source=ListTaskSource(tasks, CONFIG, only_unlabeled=True))
    assert queue.model_version == version
    assert [(task.task_id, task.score) for task in queue.tasks] == [(2, 0.05), (7, 0.05), (5, 0.30)]
    assert queue.tasks[0].link == "http://127.0.0.1:8080/projects/7/data?task=2"
    assert (queue.unlabelled, queue.without_prediction) == (7, 2)


# -- the Label Studio sink, with a stand-in client ------------------------------------------


class _Prediction:
    def __init__(self, model_version: str) -> None:
        self.model_version = model_version


class _Response:
    def __init__(self, created: int) -> None:
        self.created = created


class FakeClient:
    """Stands in for ``LabelStudio``: stores imported predictions, and fails on request."""

    def __init__(self, failures: list[str] | None = None, missing_tasks: set[int] = frozenset()) -> None:
        self.stored: dict[int, list[str]] = {}
        self.failures = list(failures or [])
        self.missing_tasks = set(missing_tasks)
        self.import_calls: list[list[int]] = []
        self.projects = self
        self.predictions = self

    def import_predictions(self, id: int, request: list[dict], request_options: dict) -> _Response:
        assert request_options == {"max_retries": 0}
        self.import_calls.append([item["task"] for item in request])
        if any(item["task"] in self.missing_tasks for item in request):
            raise ApiError(status_code=400, body={"detail": "task ID not found in project"})
        failure = self.failures.pop(0) if self.failures else None
        if failure == "before":
            raise httpx.ConnectError("connection refused")
        for item in request:
            self.stored.setdefault(item["task"], []).append(item["model_version"])
        if failure == "after":
            # The server stored the chunk, but the reply was lost.
            raise httpx.ReadTimeout("timed out")
        return _Response(len(request))

    def list(self, task: int) -> list[_Prediction]:
        return [_Prediction(version) for version in self.stored.get(task, [])]


def _chunk(task_ids) -> list[dict]:
    return [{"task": task_id, "result": [], "score": 0.5, "model_version": "v"} for task_id in task_ids]


def test_sink_lost_reply_no_duplicates():
    client = FakeClient(failures=["after"])
    outcome = LabelStudioPredictionSink(client, 7, backoff=0).write(_chunk([1, 2, 3]))
    assert outcome == WriteOutcome(created=3)
    assert client.stored == {1: ["v"], 2: ["v"], 3: ["v"]}
    assert client.import_calls == [[1, 2, 3]]


def test_sink_retries_refused_connection():
    client = FakeClient(failures=["before", "before"])
    outcome = LabelStudioPredictionSink(client, 7, backoff=0).write(_chunk([1, 2]))
    assert outcome.created == 2
    assert client.import_calls == [[1, 2], [1, 2], [1, 2]]
    assert client.stored == {1: ["v"], 2: ["v"]}


def test_sink_gives_up_after_attempts():
    client = FakeClient(failures=["before"] * 5)
    with pytest.raises(PreannotateError, match="failed after 3 attempt"):
        LabelStudioPredictionSink(client, 7, attempts=3, backoff=0).write(_chunk([1]))


def test_sink_deleted_task_rejected_alone():
    client = FakeClient(missing_tasks={2})
    outcome = LabelStudioPredictionSink(client, 7, backoff=0).write(_chunk([1, 2, 3]))
    assert outcome.created == 2
    assert list(outcome.rejected) == [2]
    assert "HTTP 400" in outcome.rejected[2]
    assert client.stored == {1: ["v"], 3: ["v"]}


# -- the queue ------------------------------------------------------------------------------


def delete_preannotate_keys(redis: Redis) -> None:
    """Delete the pre-annotation queue, its jobs, registries, workers and locks, and nothing else."""
    for pattern in ("thumbnail-ml:preannotate:*", "rq:*preannotate*"):
        for key in redis.scan_iter(pattern):
            redis.delete(key)
    redis.srem("rq:queues", f"rq:queue:{PREANNOTATE_QUEUE}")
    for member in redis.smembers("rq:workers"):
        if b"preannotate" in member:
            redis.srem("rq:workers", member)


@pytest.fixture
def redis():
    connection = Redis.from_url(TEST_REDIS_URL)
    delete_preannotate_keys(connection)
    yield connection
    delete_preannotate_keys(connection)


def test_enqueue_creates_job(redis):
    queued = enqueue_preannotation(redis, 7, version="project-7-v2-0123abcd", only_unlabeled=True, limit=50)
    assert not queued.coalesced
    queue = Queue(PREANNOTATE_QUEUE, connection=redis)
    assert queue.job_ids == [queued.job_id]
    job = Job.fetch(queued.job_id, connection=redis)
    assert job.func_name == JOB_FUNCTION
    assert job.args == (7, "project-7-v2-0123abcd", True, 50)
    assert job.meta["project"] == 7
    assert job.meta["progress"] == {"stage": "queued"}


def test_identical_requests_coalesce(redis):
    first = enqueue_preannotation(redis, 7)
    second = enqueue_preannotation(redis, 7)
    other = enqueue_preannotation(redis, 7, only_unlabeled=True)
    assert second.job_id == first.job_id
    assert second.coalesced
    assert other.job_id != first.job_id
    assert Queue(PREANNOTATE_QUEUE, connection=redis).count == 2


def test_enqueue_after_publish(redis):
    assert enqueue_after_publish(redis, 7, "project-7-v3-0123abcd", enabled=False) is None
    job_id = enqueue_after_publish(redis, 7, "project-7-v3-0123abcd", enabled=True)
    job = Job.fetch(job_id, connection=redis)
    assert job.args == (7, "project-7-v3-0123abcd", True, None)
    assert job.meta["reason"] == "published project-7-v3-0123abcd"


def test_enqueue_after_publish_redis_down():
    unreachable = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    assert enqueue_after_publish(unreachable, 7, "project-7-v3-0123abcd", enabled=True) is None


def test_lock_excludes_second_run(redis):
    with preannotation_lock(redis, 7, "first run", wait_s=0):
        with pytest.raises(ProjectBusy, match="first run"):
            with preannotation_lock(redis, 7, "second run", wait_s=0):
                pass
    with preannotation_lock(redis, 7, "third run", wait_s=0):
        pass


# -- the commands ---------------------------------------------------------------------------


def _run_command(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {key: value for key, value in os.environ.items() if not key.startswith("LABEL_STUDIO_")}
    return subprocess.run([sys.executable, "-m", "thumbnail_ml", *args], capture_output=True, text=True,
                          cwd=REPO_ROOT, env={**clean, "REDIS_URL": TEST_REDIS_URL, **env}, timeout=120)


def test_commands_need_label_studio_settings(trained_model):
    env = {"MODEL_DIR": str(trained_model.store.root)}
    for command in (["preannotate", "--project", "7"], ["next", "--project", "7"]):
        result = _run_command(*command, env=env)
        assert result.returncode == 1, result.stderr
        assert "LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY must be set" in result.stderr
        assert "Traceback" not in result.stderr


def test_command_without_model(tmp_path):
    result = _run_command("preannotate", "--project", "7", env={"MODEL_DIR": str(tmp_path / "store")})
    assert result.returncode == 1
    assert "no model is trained yet" in result.stderr


def test_command_enqueue_prints_job_id(redis, trained_model):
    result = _run_command("preannotate", "--project", "7", "--only-unlabeled", "--enqueue",
                          env={"MODEL_DIR": str(trained_model.store.root)})
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()
    assert Job.fetch(job_id, connection=redis).args == (7, None, True, None)


def test_next_table_shows_small_scores():
    """Scores below 0.001 keep their digits, so the order of the listed tasks stays visible."""
    from thumbnail_ml.commands.preannotate import format_uncertain_rows
    from training.preannotate import UncertainTask

    rows = format_uncertain_rows([UncertainTask(4, 4.9e-05, "http://ls/projects/1/data?task=4"),
                                  UncertainTask(9, 0.00099, None), UncertainTask(12, None, None)])
    assert rows[0].split() == ["task", "score", "link"]
    assert rows[1].split() == ["4", "4.9e-05", "http://ls/projects/1/data?task=4"]
    assert rows[2].split() == ["9", "0.00099", "-"]
    assert rows[3].split() == ["12", "-", "-"]
