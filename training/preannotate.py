"""Pre-annotate a whole Label Studio project, and list its most uncertain unlabelled tasks.

``preannotate`` reads the project's tasks page by page and skips every task that already has
a prediction of the model version in use. It fetches and decodes images in a thread pool
while the previous batch runs through the model, and writes the predictions in chunks with
``projects.import_predictions``. A task is skipped exactly when Label Studio already stores a
prediction of this version for it. So a rerun after a crash finishes the rest without
duplicates, and loses at most the chunk that was not written yet. A run stopped by Ctrl-C
or by an error of the task listing writes its finished predictions before it stops.

Each prediction is built as the server's ``/predict`` builds it. Control names and choice
values come from the project's labeling config, and model classes that the config does not
offer are dropped. Each prediction carries the score and the model version.

Reading and writing sit behind two small interfaces, so the same pipeline runs without
Label Studio, for benchmarks and tests:

* a :class:`TaskSource`: :class:`LabelStudioTaskSource`, or :class:`ListTaskSource` for task
  dicts in memory (for example ``/data/local-files/?d=...`` URLs read from
  ``LOCAL_FILES_DOCUMENT_ROOT``);
* a :class:`PredictionSink`: :class:`LabelStudioPredictionSink`, or
  :class:`JsonlPredictionSink` for a JSON Lines file.

The same run is an RQ job (:func:`preannotate_job`) on the ``preannotate`` queue.
:func:`next_uncertain` lists the unlabelled tasks whose predictions of the current version
have the lowest scores, which are the tasks to label first.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import numpy as np
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError
from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, get_current_job
from rq.job import Job

from backend.images import FetchError, ImageFetcher
from backend.protocol import TaskInput, choices_result, task_input
from model.decision import Decision
from model.decode import ImageDecodeError
from model.label_config import LabelConfig, LabelConfigError, default_label_config_xml, parse_label_config
from model.preprocess import preprocess_bytes
from model.store import ModelStore, StoreError, lineage_for_project
from thumbnail_ml.settings import Settings, configure_logging
from training.label_studio import ATTEMPTS, BACKOFF_S, PAGE_SIZE, REQUEST_TIMEOUT_S, PullError, _retrying
from training.locks import LOCK_TTL_S, heartbeat_lock
from training.queue import EnqueueResult, claim_pending_slot, compare_and_delete

logger = logging.getLogger(__name__)

PREANNOTATE_QUEUE = "preannotate"
JOB_FUNCTION = "training.preannotate.preannotate_job"
KEY_PREFIX = "thumbnail-ml:preannotate"

BATCH_SIZE = 32
# Label Studio 1.23.2 recounts the counters of every task in the project after each
# import_predictions request (its legacy import path), so fewer, larger requests cost the
# server less. A crash loses at most one chunk of predictions, which a rerun predicts again.
WRITE_CHUNK_SIZE = 200
# Images fetched and decoded ahead of the batch being predicted, in batches: enough to keep
# the fetch threads busy during inference, and at most 4 x 32 decoded images in memory.
PREFETCH_BATCHES = 4

JOB_TIMEOUT_S = 6 * 3600
RESULT_TTL_S = 7 * 24 * 3600
FAILURE_TTL_S = 30 * 24 * 3600
PROGRESS_SAVE_INTERVAL_S = 1.0
LOGGED_FAILURES_PER_REASON = 20

UNLABELLED_FILTER_ITEM = {
    "filter": "filter:tasks:total_annotations", "operator": "equal", "value": 0, "type": "Number",
}

ProgressCallback = Callable[[dict], None]


class PreannotateError(RuntimeError):
    """A pre-annotation run that cannot start or continue. The message names the cause and the fix."""


# -- summaries ------------------------------------------------------------------------------


@dataclass
class PreannotateSummary:
    """Counts of one run.

    Attributes:
        project: Label Studio project id, or None for a run over a task list.
        model_version: the version that predicted.
        listed: tasks read from the source.
        expected: tasks the source reported when the run started, or None if unknown.
        predicted: tasks predicted in this run.
        skipped: tasks that already had a prediction of ``model_version``.
        failed: failure reason -> ids of the tasks that got no prediction for it.
        failure_examples: failure reason -> the message of its first occurrence.
        written: predictions the sink reported as created.
        gaps: chunks where the sink created another number of predictions than it was sent.
        stopped_at_limit: whether ``limit`` ended the run before the last task.
        dropped_classes: model classes that the labeling config does not offer.
        project_model_version: the project's "use predictions of" version before and after
            the run, or None when no project was updated.
        seconds: wall time of the run.
    """

    project: int | None
    model_version: str
    listed: int = 0
    expected: int | None = None
    predicted: int = 0
    skipped: int = 0
    failed: dict[str, list[int | None]] = field(default_factory=dict)
    failure_examples: dict[str, str] = field(default_factory=dict)
    written: int = 0
    gaps: list[dict] = field(default_factory=list)
    stopped_at_limit: bool = False
    dropped_classes: list[str] = field(default_factory=list)
    project_model_version: dict | None = None
    seconds: float = 0.0

    @property
    def failed_count(self) -> int:
        return sum(len(ids) for ids in self.failed.values())

    def add_failure(self, task_id: int | None, reason: str, message: str) -> None:
        self.failed.setdefault(reason, []).append(task_id)
        self.failure_examples.setdefault(reason, message)

    def to_dict(self) -> dict:
        values = asdict(self)
        values["failed_count"] = self.failed_count
        values["seconds"] = round(self.seconds, 2)
        return values


@dataclass(frozen=True)
class WriteOutcome:
    """Result of writing one chunk.

    Attributes:
        created: predictions stored.
        rejected: task id -> reason, for predictions the sink rejected one by one (for
            example because the task was deleted after it was listed).
    """

    created: int
    rejected: dict[int, str] = field(default_factory=dict)


# -- task sources ---------------------------------------------------------------------------


class TaskSource(Protocol):
    """Tasks to pre-annotate, as Label Studio task dicts (``id``, ``data``, ``predictions``)."""

    expected: int | None
    """Tasks the source reported when listing started, or None before the first page."""

    def label_config(self) -> str:
        """Return the labeling config XML that names the controls and choice values."""

    def pages(self) -> Iterator[list[dict]]:
        """Yield the tasks in pages, each task once, in ascending id order."""


class ListTaskSource:
    """Task dicts held in memory, for benchmarks and tests without Label Studio."""

    def __init__(self, tasks: Sequence[dict], label_config: str | None = None, *,
                 only_unlabeled: bool = False, page_size: int = PAGE_SIZE) -> None:
        selected = [task for task in tasks if not only_unlabeled or not task.get("total_annotations")]
        self._tasks = sorted(selected, key=lambda task: task.get("id") or 0)
        self._label_config = label_config or default_label_config_xml()
        self._page_size = page_size
        self.expected: int | None = len(self._tasks)

    def label_config(self) -> str:
        return self._label_config

    def pages(self) -> Iterator[list[dict]]:
        for start in range(0, len(self._tasks), self._page_size):
            yield self._tasks[start:start + self._page_size]


class LabelStudioTaskSource:
    """A project's tasks, read through label-studio-sdk with retries.

    Pages are requested by id (``id > last id seen``, ascending) rather than by page number,
    so tasks that gain an annotation or are deleted during the run do not shift later pages
    and make the run miss tasks.
    """

    def __init__(self, client: LabelStudio, project_id: int, *, only_unlabeled: bool = False,
                 page_size: int = PAGE_SIZE, attempts: int = ATTEMPTS, backoff: float = BACKOFF_S) -> None:
        self._client = client
        self.project_id = project_id
        self.only_unlabeled = only_unlabeled
        self._page_size = page_size
        self._attempts = attempts
        self._backoff = backoff
        self.expected: int | None = None

    def label_config(self) -> str:
        project = _call_label_studio(
            f"reading project {self.project_id}", lambda: self._client.projects.get(id=self.project_id),
            self._attempts, self._backoff,
            not_found=f"project {self.project_id} not found in Label Studio: check --project and LABEL_STUDIO_URL",
        )
        return project.label_config or ""

    def _query(self, after_id: int) -> str:
        items: list[dict] = [
            {"filter": "filter:tasks:id", "operator": "greater", "value": after_id, "type": "Number"},
        ]
        if self.only_unlabeled:
            items.append(UNLABELLED_FILTER_ITEM)
        return json.dumps({"filters": {"conjunction": "and", "items": items}, "ordering": ["tasks:id"]})

    def pages(self) -> Iterator[list[dict]]:
        after_id = 0
        number = 0
        while True:
            number += 1
            query = self._query(after_id)

            # resolve_uri=False keeps the URLs as stored (s3:// and the like), which the
            # fetcher resolves exactly as it does for /predict.
            def request(query: str = query):
                return self._client.tasks.list(project=self.project_id, fields="all", query=query, page=1,
                                               page_size=self._page_size, resolve_uri=False)

            page = _call_label_studio(
                f"reading page {number} of project {self.project_id}'s tasks", request,
                self._attempts, self._backoff,
                not_found=f"project {self.project_id} not found in Label Studio: check --project and LABEL_STUDIO_URL",
            )
            if self.expected is None:
                self.expected = int(page.response.total or 0)
            tasks = [_task_dict(task) for task in page.items or []]
            if not tasks:
                return
            yield tasks
            after_id = max(task["id"] for task in tasks)
            if len(tasks) < self._page_size:
                return


def _task_dict(task: Any) -> dict:
    values = task.model_dump() if hasattr(task, "model_dump") else dict(task)
    values["predictions"] = [
        prediction if isinstance(prediction, dict) else dict(prediction)
        for prediction in values.get("predictions") or []
    ]
    return values


# -- prediction sinks -----------------------------------------------------------------------


class PredictionSink(Protocol):
    """Destination of predictions, each a ``{"task", "result", "score", "model_version"}`` dict."""

    def written_task_ids(self, version: str) -> set[int]:
        """Return the tasks that already have a prediction of ``version`` the source cannot see."""

    def write(self, predictions: list[dict]) -> WriteOutcome:
        """Store one chunk, all or nothing, and return how many predictions were created.

        Raises:
            PreannotateError: the chunk could not be stored, and none of it is stored.
        """


class JsonlPredictionSink:
    """Predictions appended to a JSON Lines file, one per line, synced to disk per chunk."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def written_task_ids(self, version: str) -> set[int]:
        if not self.path.exists():
            return set()
        found: set[int] = set()
        with open(self.path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    # A crash during a write leaves at most one torn last line.
                    logger.warning("%s line %d is not valid JSON, because a write was interrupted, so it is "
                                   "ignored", self.path, number)
                    continue
                if record.get("model_version") == version and isinstance(record.get("task"), int):
                    found.add(record["task"])
        return found

    def write(self, predictions: list[dict]) -> WriteOutcome:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = "".join(json.dumps(prediction, separators=(",", ":")) + "\n" for prediction in predictions)
        with open(self.path, "a+b") as handle:
            # Start on a new line if an interrupted write left a partial one.
            if handle.tell() > 0:
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":
                    lines = "\n" + lines
            handle.write(lines.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
        return WriteOutcome(created=len(predictions))


class LabelStudioPredictionSink:
    """Predictions imported into a project with ``projects.import_predictions``.

    The SDK's own retries are turned off for the import: a request whose reply was lost may
    have been stored, and sending it again would duplicate it. After such a failure the sink
    reads which tasks of the chunk now have a prediction of the version, and resends only the
    others.
    """

    def __init__(self, client: LabelStudio, project_id: int, *, attempts: int = ATTEMPTS,
                 backoff: float = BACKOFF_S) -> None:
        self._client = client
        self.project_id = project_id
        self._attempts = attempts
        self._backoff = backoff

    def written_task_ids(self, version: str) -> set[int]:
        # The task listing carries each task's predictions, so nothing is hidden from it.
        return set()

    def write(self, predictions: list[dict]) -> WriteOutcome:
        pending = list(predictions)
        created = 0
        for attempt in range(1, self._attempts + 1):
            try:
                response = self._client.projects.import_predictions(
                    id=self.project_id, request=pending, request_options={"max_retries": 0},
                )
                return WriteOutcome(created=created + int(response.created or 0))
            except (httpx.TransportError, ApiError) as error:
                status = getattr(error, "status_code", None)
                if status == 400:
                    # Label Studio 1.23.2 rejects the whole request when one task id is not in
                    # the project (deleted since it was listed), so each is sent on its own.
                    return self._write_one_by_one(pending, created, error)
                retryable = status is None or status >= 500 or status == 429
                detail = f"HTTP {status}" if status else type(error).__name__
                if not retryable or attempt == self._attempts:
                    raise PreannotateError(
                        f"writing {len(pending)} predictions to project {self.project_id} failed after "
                        f"{attempt} attempt(s) ({detail}{_error_body(error)}). Predictions written "
                        "before are kept, and a rerun continues from there"
                    ) from error
                delay = self._backoff * 2 ** (attempt - 1)
                logger.warning("writing %d predictions to project %s failed (%s), checking and retrying in %.1f s "
                               "(attempt %d of %d)", len(pending), self.project_id, detail, delay, attempt,
                               self._attempts)
                time.sleep(delay)
            stored = self._tasks_with_prediction(pending)
            created += len(stored)
            pending = [prediction for prediction in pending if prediction["task"] not in stored]
            if not pending:
                return WriteOutcome(created=created)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _write_one_by_one(self, predictions: list[dict], created: int, error: Exception) -> WriteOutcome:
        if len(predictions) == 1:
            task_id = predictions[0]["task"]
            reason = f"Label Studio rejected the prediction (HTTP 400{_error_body(error)})"
            logger.warning("project %s task %s: %s", self.project_id, task_id, reason)
            return WriteOutcome(created=created, rejected={task_id: reason})
        rejected: dict[int, str] = {}
        for prediction in predictions:
            outcome = self.write([prediction])
            created += outcome.created
            rejected.update(outcome.rejected)
        return WriteOutcome(created=created, rejected=rejected)

    def _tasks_with_prediction(self, predictions: list[dict]) -> set[int]:
        """Return the tasks of ``predictions`` that have a prediction of the same version."""
        stored: set[int] = set()
        for prediction in predictions:
            task_id = prediction["task"]
            found = _call_label_studio(
                f"reading the predictions of task {task_id}",
                lambda task_id=task_id: self._client.predictions.list(task=task_id),
                self._attempts, self._backoff,
            )
            if any(item.model_version == prediction["model_version"] for item in found):
                stored.add(task_id)
        return stored


def _error_body(error: Exception) -> str:
    body = getattr(error, "body", None)
    if not body:
        return ""
    text = body if isinstance(body, str) else json.dumps(body, default=str)
    return f": {text[:300]}"


def _call_label_studio(description: str, call: Callable[[], Any], attempts: int, backoff: float,
                       not_found: str | None = None) -> Any:
    """Run ``call`` with ``_retrying`` and turn its failures into :class:`PreannotateError`."""
    try:
        return _retrying(description, call, attempts, backoff)
    except PullError as error:
        status = getattr(error.__cause__, "status_code", None)
        if status == 404 and not_found:
            raise PreannotateError(not_found) from error
        if status in (401, 403):
            raise PreannotateError(
                f"{description} failed: Label Studio rejected LABEL_STUDIO_API_KEY (HTTP {status}). Use a "
                "personal access token of a user who can open the project"
            ) from error
        raise PreannotateError(f"{error}. Check that Label Studio is running at LABEL_STUDIO_URL") from error


# -- the pipeline ---------------------------------------------------------------------------


def _has_prediction_of(task: dict, version: str) -> bool:
    return any(isinstance(prediction, dict) and prediction.get("model_version") == version
               for prediction in task.get("predictions") or [])


def build_prediction(config: LabelConfig, decision: Decision, version: str, task_id: int) -> dict:
    """Build one task's prediction for ``import_predictions``, as ``/predict`` builds its result."""
    choices = decision.choices
    # A single-choice config gets the most probable choice, as backend.app._predict_tasks does.
    if not config.multiple and len(choices) > 1:
        choices = [max(choices, key=lambda name: decision.probabilities[name])]
    return {"task": task_id, **choices_result(config, choices, decision.score, version)}


class _ProgressTracker:
    """Turn the run's counters into progress events: done, total, rate and time left."""

    def __init__(self, summary: PreannotateSummary, source: TaskSource, limit: int | None,
                 callback: ProgressCallback | None) -> None:
        self._summary = summary
        self._source = source
        self._limit = limit
        self._callback = callback
        self._started = time.monotonic()

    def report(self, stage: str = "predicting") -> None:
        if self._callback is None:
            return
        summary = self._summary
        attempted = summary.predicted + summary.failed_count
        done = attempted + summary.skipped
        expected = self._source.expected
        total = max(expected, done) if expected is not None else None
        remaining = None if total is None else total - done
        if remaining is not None and self._limit is not None:
            remaining = min(remaining, self._limit - attempted)
        if stage == "done":
            total, remaining = done, 0
        elapsed = time.monotonic() - self._started
        # The rate counts predicted tasks only: skipping a task costs nearly nothing.
        rate = attempted / elapsed if elapsed > 0 else 0.0
        eta = remaining / rate if remaining is not None and rate > 0 else None
        self._callback({
            "stage": stage, "done": done, "total": total, "rate": round(rate, 2),
            "eta": round(eta, 1) if eta is not None else None,
            "predicted": summary.predicted, "skipped": summary.skipped, "failed": summary.failed_count,
            "written": summary.written,
        })


class PreannotationRun:
    """One pass of the pipeline over a task source. :meth:`run` fills :attr:`summary`."""

    def __init__(self, source: TaskSource, sink: PredictionSink, predictor, config: LabelConfig,
                 fetcher: ImageFetcher, *, project_id: int | None = None, limit: int | None = None,
                 batch_size: int = BATCH_SIZE, chunk_size: int = WRITE_CHUNK_SIZE, fetch_workers: int = 8,
                 progress: ProgressCallback | None = None) -> None:
        if limit is not None and limit < 1:
            raise PreannotateError(f"invalid limit {limit}: expected at least 1 task, or no limit")
        self.source = source
        self.sink = sink
        self.predictor = predictor
        self.config = config
        self.fetcher = fetcher
        self.version: str = predictor.version
        self.limit = limit
        self.batch_size = max(1, batch_size)
        self.chunk_size = max(1, chunk_size)
        self.fetch_workers = max(1, fetch_workers)
        self.summary = PreannotateSummary(project=project_id, model_version=self.version)
        self.allowed = set(config.choices) & set(predictor.classes)
        self.summary.dropped_classes = [name for name in predictor.classes if name not in config.choices]
        self._pending: list[dict] = []
        self._sink_failed = False
        self._tracker = _ProgressTracker(self.summary, source, limit, progress)

    def run(self) -> PreannotateSummary:
        """Predict every task that has no prediction of the version yet, and write the predictions.

        Raises:
            PreannotateError: the labeling config offers none of the model's classes, or the
                source or sink failed. What was written before stays written.
        """
        if not self.allowed:
            raise PreannotateError(
                f"the labeling config offers none of model {self.version}'s classes "
                f"({', '.join(self.predictor.classes)}). Its choices are {', '.join(self.config.choices)}"
            )
        started = time.monotonic()
        try:
            self._predict_all()
            self._flush()
        except BaseException:
            self._flush_before_stopping()
            raise
        finally:
            self.summary.seconds = time.monotonic() - started
            self.summary.expected = self.source.expected
        self._tracker.report("done")
        return self.summary

    def _flush_before_stopping(self) -> None:
        """Write the finished predictions when the run stops early, unless writing is what failed.

        A write cut short by a second Ctrl-C is harmless: the next run skips whatever it stored.
        """
        if not self._pending or self._sink_failed:
            return
        count = len(self._pending)
        try:
            self._flush()
        except BaseException as error:  # noqa: BLE001 - the original exception is re-raised by the caller
            logger.warning("project %s: %d finished predictions were not written before stopping (%s), so a "
                           "rerun predicts them again", self.summary.project, count, type(error).__name__)
        else:
            logger.info("project %s: wrote %d finished predictions before stopping", self.summary.project, count)

    def _candidates(self) -> Iterator[TaskInput]:
        """Yield the listed tasks that need a prediction, up to the limit, and count the others."""
        already = self.sink.written_task_ids(self.version)
        seen: set[int] = set()
        attempted = 0
        for page in self.source.pages():
            for task in page:
                self.summary.listed += 1
                item = task_input(task, self.config)
                if item.task_id is not None:
                    if item.task_id in seen:
                        continue
                    seen.add(item.task_id)
                    if item.task_id in already or _has_prediction_of(task, self.version):
                        self.summary.skipped += 1
                        continue
                if self.limit is not None and attempted >= self.limit:
                    self.summary.stopped_at_limit = True
                    return
                attempted += 1
                if item.error or item.task_id is None:
                    self._fail(item.task_id, "invalid_task", item.error or "task has no integer id")
                    continue
                yield item
            self._tracker.report()

    def _load(self, item: TaskInput) -> np.ndarray | FetchError | ImageDecodeError:
        """Fetch and decode one image in a fetch thread, and return the pixels or the error."""
        try:
            data = self.fetcher.fetch(item.image_url, item.task_id)
            return preprocess_bytes(data, self.predictor.spec, self.predictor.crop, name=f"task {item.task_id}")
        except (FetchError, ImageDecodeError) as error:
            return error
        except Exception:
            # A bug must not stop the other tasks, but it must be visible.
            logger.exception("unexpected error while loading the image of task %s", item.task_id)
            return FetchError("internal_error", f"unexpected error while loading the image of task {item.task_id}. "
                                                "The log contains the traceback", task_id=item.task_id)

    def _predict_all(self) -> None:
        window: deque[tuple[TaskInput, Future]] = deque()
        window_size = self.batch_size * PREFETCH_BATCHES
        candidates = self._candidates()
        exhausted = False
        pool = ThreadPoolExecutor(max_workers=self.fetch_workers, thread_name_prefix="preannotate-fetch")
        try:
            while True:
                while not exhausted and len(window) < window_size:
                    item = next(candidates, None)
                    if item is None:
                        exhausted = True
                    else:
                        window.append((item, pool.submit(self._load, item)))
                if not window:
                    break
                batch = [window.popleft() for _ in range(min(self.batch_size, len(window)))]
                self._predict_batch(batch)
                if len(self._pending) >= self.chunk_size:
                    self._flush()
                self._tracker.report()
        finally:
            # On an error or Ctrl-C, queued fetches are dropped, and running ones end within their timeout.
            pool.shutdown(wait=True, cancel_futures=True)

    def _predict_batch(self, batch: list[tuple[TaskInput, Future]]) -> None:
        loaded: list[TaskInput] = []
        pixels: list[np.ndarray] = []
        for item, future in batch:
            outcome = future.result()
            if isinstance(outcome, (FetchError, ImageDecodeError)):
                self._fail(item.task_id, outcome.reason, str(outcome))
            else:
                loaded.append(item)
                pixels.append(outcome)
        if not loaded:
            return
        probabilities = self.predictor.predict_pixels(np.stack(pixels))
        for item, decision in zip(loaded, self.predictor.decide(probabilities, self.allowed)):
            self._pending.append(build_prediction(self.config, decision, self.version, item.task_id))
            self.summary.predicted += 1

    def _flush(self) -> None:
        if not self._pending:
            return
        chunk, self._pending = self._pending, []
        try:
            outcome = self.sink.write(chunk)
        except BaseException:
            self._sink_failed = True
            raise
        self.summary.written += outcome.created
        for task_id, reason in outcome.rejected.items():
            self._fail(task_id, "rejected", reason)
        expected = len(chunk) - len(outcome.rejected)
        if outcome.created != expected:
            task_ids = [prediction["task"] for prediction in chunk if prediction["task"] not in outcome.rejected]
            self.summary.gaps.append({"sent": expected, "created": outcome.created, "task_ids": task_ids})
            # Label Studio 1.23.2 drops predictions it finds invalid without an error, and its
            # reply only counts them, so the whole chunk is named.
            logger.warning(
                "project %s: sent %d predictions of %s, but %d were created, among tasks %s. Label Studio's log "
                "names the invalid ones, and a rerun retries the tasks that still have none",
                self.summary.project, expected, self.version, outcome.created, _id_ranges(task_ids),
            )

    def _fail(self, task_id: int | None, reason: str, message: str) -> None:
        self.summary.add_failure(task_id, reason, message)
        # The summary lists every failed task, so the log keeps only the first few of each reason.
        count = len(self.summary.failed[reason])
        if count <= LOGGED_FAILURES_PER_REASON:
            logger.warning("task %s: no prediction (%s): %s", task_id, reason, message)
        if count == LOGGED_FAILURES_PER_REASON:
            logger.warning("%d tasks failed with reason %s, so further ones are logged at DEBUG level only",
                           count, reason)
        elif count > LOGGED_FAILURES_PER_REASON:
            logger.debug("task %s: no prediction (%s): %s", task_id, reason, message)


def _id_ranges(task_ids: Iterable[int]) -> str:
    """Return ids as compact ranges for logs, for example ``3-7, 9``."""
    ordered = sorted(set(task_ids))
    parts: list[str] = []
    start = previous = None
    for task_id in ordered + [None]:
        if start is not None and (task_id is None or task_id != previous + 1):
            parts.append(str(start) if start == previous else f"{start}-{previous}")
            start = None
        if task_id is not None:
            if start is None:
                start = task_id
            previous = task_id
    return ", ".join(parts)


# -- the run as a function ------------------------------------------------------------------


def make_label_studio_client(settings: Settings) -> LabelStudio:
    """Build an SDK client, or raise :class:`PreannotateError` naming the missing settings."""
    missing = [name for name, value in (("LABEL_STUDIO_URL", settings.label_studio_url),
                                        ("LABEL_STUDIO_API_KEY", settings.label_studio_api_key)) if not value]
    if missing:
        raise PreannotateError(
            f"{' and '.join(missing)} must be set to read the project's tasks and write predictions: set "
            "LABEL_STUDIO_URL to Label Studio's address and LABEL_STUDIO_API_KEY to a personal access token"
        )
    return LabelStudio(base_url=settings.label_studio_url, api_key=settings.label_studio_api_key,
                       timeout=REQUEST_TIMEOUT_S)


def resolve_model_version(store: ModelStore, project_id: int | None, version: str | None = None) -> str:
    """Return ``version`` after checking it exists, or the version that serves the project's lineage.

    Raises:
        PreannotateError: no such version, or no model is trained yet.
    """
    try:
        if version:
            store.manifest(version)
            return version
        lineage = lineage_for_project(project_id)
    except StoreError as error:
        raise PreannotateError(str(error)) from error
    resolved = store.resolve(lineage)
    if resolved is None:
        raise PreannotateError(
            f"no model is trained yet in {store.root} (lineage {lineage}, nor the default lineage): train one "
            "with 'thumbnail-ml train', or let the worker train on the project's annotations, or set MODEL_DIR "
            "to a store that has one"
        )
    return resolved


def preannotate(
    settings: Settings,
    project_id: int | None,
    *,
    version: str | None = None,
    only_unlabeled: bool = False,
    limit: int | None = None,
    progress: ProgressCallback | None = None,
    writer: PredictionSink | None = None,
    source: TaskSource | None = None,
    client: LabelStudio | None = None,
    select_version: bool | None = None,
    batch_size: int = BATCH_SIZE,
    chunk_size: int = WRITE_CHUNK_SIZE,
) -> PreannotateSummary:
    """Pre-annotate every task of a project that has no prediction of the model version yet.

    Args:
        settings: model store, Label Studio credentials, fetch limits and threads.
        project_id: Label Studio project id, which selects the default version's lineage. May
            be None with a ``source`` and a ``writer``, and then the default lineage is used.
        version: model version to predict with (default: the one serving the project).
        only_unlabeled: only tasks without annotations. Applies to the Label Studio source
            built here, not to a ``source`` passed in.
        limit: predict at most this many tasks in this run. A rerun continues.
        progress: called with ``done``, ``total``, ``rate`` (tasks predicted per second)
            and ``eta`` (seconds, an estimate) after every page and batch.
        writer: where predictions go (default: ``import_predictions`` into the project).
        source: where tasks come from (default: the project's tasks in Label Studio).
        client: SDK client (default: one built from the settings when needed).
        select_version: whether to make the project use predictions of this version in
            the labeling interface and the Data Manager's score column afterwards. None
            selects it unless the project uses a connected ML backend's live predictions.
        batch_size: images per inference batch.
        chunk_size: predictions per write.

    Raises:
        PreannotateError: a setting or input is missing or invalid, Label Studio failed,
            or writing failed. Failures of single tasks are reported in the summary instead.
    """
    if limit is not None and limit < 1:
        raise PreannotateError(f"invalid limit {limit}: expected at least 1 task, or no limit")
    store = ModelStore(settings.model_dir)
    version = resolve_model_version(store, project_id, version)
    if source is None or writer is None:
        if project_id is None:
            raise PreannotateError("a project id is needed to read tasks from or write predictions to Label Studio")
        client = client or make_label_studio_client(settings)
    if source is None:
        source = LabelStudioTaskSource(client, project_id, only_unlabeled=only_unlabeled)
    if writer is None:
        writer = LabelStudioPredictionSink(client, project_id)

    try:
        config = parse_label_config(source.label_config())
    except LabelConfigError as error:
        raise PreannotateError(f"project {project_id}'s labeling config cannot be predicted: {error}") from error

    predictor = store.load_predictor(version, num_threads=settings.threads)
    fetcher = ImageFetcher(settings)
    run = PreannotationRun(
        source, writer, predictor, config, fetcher, project_id=project_id, limit=limit, batch_size=batch_size,
        chunk_size=chunk_size, fetch_workers=settings.fetch_concurrency, progress=progress,
    )
    if run.summary.dropped_classes:
        logger.warning("project %s: model classes %s are not in the labeling config and are not predicted",
                       project_id, ", ".join(run.summary.dropped_classes))
    outcome = "failed"
    try:
        run.run()
        outcome = "limit reached" if run.summary.stopped_at_limit else "done"
    except KeyboardInterrupt:
        outcome = "interrupted"
        raise
    finally:
        fetcher.close()
        summary = run.summary
        logger.info(
            "preannotate project %s with %s: %s, %d listed, %d predicted, %d skipped, %d failed, %d written, "
            "%d gaps, %.1f s", project_id, version, outcome, summary.listed, summary.predicted, summary.skipped,
            summary.failed_count, summary.written, len(summary.gaps), summary.seconds,
        )

    if isinstance(writer, LabelStudioPredictionSink) and client is not None and project_id is not None:
        summary.project_model_version = _select_project_version(client, project_id, version, summary,
                                                                select_version)
    return summary


def _select_project_version(client: LabelStudio, project_id: int, version: str, summary: PreannotateSummary,
                            select_version: bool | None) -> dict:
    """Point the project's "use predictions of" setting at ``version`` when asked or safe.

    Label Studio 1.23.2 shows stored predictions in the labeling interface, and averages
    them in the Data Manager's prediction score column, only for the version named by the
    project's ``model_version``. A new project has it empty, and importing predictions does
    not set it, so without this step the predictions stay invisible there.
    """
    project = _call_label_studio(f"reading project {project_id}", lambda: client.projects.get(id=project_id),
                                 ATTEMPTS, BACKOFF_S)
    before = project.model_version or ""
    state = {"before": before, "after": before, "selected": False}
    if before == version or select_version is False:
        return state
    if select_version is None and before:
        backends = _call_label_studio(f"listing project {project_id}'s ML backends",
                                      lambda: client.ml.list(project=project_id), ATTEMPTS, BACKOFF_S)
        if any(backend.title == before for backend in backends):
            state["note"] = (f"the project shows live predictions of ML backend {before!r}, so its Data Manager score "
                             f"column ignores predictions of {version}. Select {version} in Settings > Model, or "
                             "rerun with --select-version")
            return state
    if summary.written == 0 and summary.skipped == 0:
        state["note"] = f"no prediction of {version} is stored, so the project cannot use it yet"
        return state
    _call_label_studio(f"updating project {project_id}'s model version",
                       lambda: client.projects.update(id=project_id, model_version=version), ATTEMPTS, BACKOFF_S)
    logger.info("project %s now uses predictions of %s (was %r)", project_id, version, before)
    state.update(after=version, selected=True)
    return state


# -- the uncertainty queue ------------------------------------------------------------------


@dataclass(frozen=True)
class UncertainTask:
    """An unlabelled task and the score of its latest prediction of the version, or None."""

    task_id: int
    score: float | None
    link: str | None
    prediction_id: int | None = None


@dataclass
class UncertaintyQueue:
    """The tasks to label first: lowest scores first, then tasks without a prediction, by id.

    Attributes:
        project: Label Studio project id, or None.
        model_version: the version whose predictions were ranked.
        tasks: at most ``count`` tasks.
        unlabelled: unlabelled tasks listed.
        without_prediction: unlabelled tasks that have no prediction of the version.
    """

    project: int | None
    model_version: str
    tasks: list[UncertainTask]
    unlabelled: int
    without_prediction: int

    def to_dict(self) -> dict:
        return asdict(self)


def _latest_prediction(task: dict, version: str) -> dict | None:
    found = [prediction for prediction in task.get("predictions") or []
             if isinstance(prediction, dict) and prediction.get("model_version") == version]
    if not found:
        return None
    return max(found, key=lambda prediction: (str(prediction.get("created_at") or ""), prediction.get("id") or 0))


RankedTask = tuple[int, float | None, int | None]


def rank_uncertain(tasks: Iterable[dict], version: str, count: int) -> tuple[list[RankedTask], int, int]:
    """Pick the ``count`` unlabelled tasks with the lowest scores of ``version``.

    Tasks without a scored prediction of the version follow the scored ones, by id. Ties
    in score are broken by task id. Memory stays proportional to ``count``.

    Returns:
        ``(task id, score or None, prediction id or None)`` in queue order, the number of
        unlabelled tasks seen, and how many of them had no scored prediction.
    """
    if count < 1:
        return [], 0, 0
    # A max-heap of (-score, -task id) keeps the ``count`` lowest (score, task id) pairs.
    scored: list[tuple[float, int, int | None]] = []
    unscored: list[int] = []
    seen: set[int] = set()
    unlabelled = 0
    without = 0
    for task in tasks:
        if task.get("total_annotations") or not isinstance(task.get("id"), int) or task["id"] in seen:
            continue
        seen.add(task["id"])
        unlabelled += 1
        prediction = _latest_prediction(task, version)
        score = prediction.get("score") if prediction else None
        if not isinstance(score, (int, float)) or math.isnan(score):
            without += 1
            if len(unscored) < count:
                unscored.append(task["id"])
            continue
        entry = (-float(score), -int(task["id"]), prediction.get("id"))
        if len(scored) < count:
            heapq.heappush(scored, entry)
        elif entry > scored[0]:
            heapq.heapreplace(scored, entry)
    ranked: list[RankedTask] = [
        (-negative_id, -negative_score, prediction_id)
        for negative_score, negative_id, prediction_id in sorted(scored, reverse=True)
    ]
    ranked.extend((task_id, None, None) for task_id in sorted(unscored))
    return ranked[:count], unlabelled, without


def task_link(label_studio_url: str | None, project_id: int | None, task_id: int) -> str | None:
    """Return the Data Manager link that opens ``task_id``, or None without a URL or project."""
    if not label_studio_url or project_id is None:
        return None
    return f"{label_studio_url.rstrip('/')}/projects/{project_id}/data?task={task_id}"


def next_uncertain(settings: Settings, project_id: int, count: int, *, version: str | None = None,
                   source: TaskSource | None = None, client: LabelStudio | None = None) -> UncertaintyQueue:
    """Return the ``count`` most uncertain unlabelled tasks of a project (``total_annotations == 0``).

    Tasks are ranked by the score of their latest prediction of the version, lowest first.
    Tasks without such a prediction come after them, by id, and are not predicted here:
    listing stays read-only and fast, and ``thumbnail-ml preannotate --only-unlabeled``
    gives them scores.

    Raises:
        PreannotateError: no model is trained, the settings lack Label Studio credentials,
            or the project cannot be read.
    """
    if count < 1:
        raise PreannotateError(f"invalid count {count}: expected at least 1 task")
    store = ModelStore(settings.model_dir)
    version = resolve_model_version(store, project_id, version)
    if source is None:
        source = LabelStudioTaskSource(client or make_label_studio_client(settings), project_id, only_unlabeled=True)
    tasks = (task for page in source.pages() for task in page)
    ranked, unlabelled, without = rank_uncertain(tasks, version, count)
    queue = [UncertainTask(task_id, score, task_link(settings.label_studio_url, project_id, task_id), prediction_id)
             for task_id, score, prediction_id in ranked]
    logger.info("next for project %s with %s: %d of %d unlabelled tasks listed, %d without a prediction",
                project_id, version, len(queue), unlabelled, without)
    return UncertaintyQueue(project_id, version, queue, unlabelled, without)


# -- the RQ job -----------------------------------------------------------------------------


def running_key(project_id: int) -> str:
    return f"{KEY_PREFIX}:running:{project_id}"


def pending_key(project_id: int, request: dict) -> str:
    digest = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()[:16]
    return f"{KEY_PREFIX}:pending:{project_id}:{digest}"


class ProjectBusy(PreannotateError):
    """Another pre-annotation of the same project holds the running lock."""


def preannotation_lock(redis: Redis, project_id: int, owner: str, wait_s: float):
    """Hold the project's pre-annotation lock, refreshed by a heartbeat, for the block's duration.

    Two runs of one project at the same time would both see a task without a prediction, and
    both would write one. The lock makes them take turns.

    Raises:
        ProjectBusy: another run kept the lock for ``wait_s`` seconds.
    """
    def busy(holder: str | None) -> Exception:
        return ProjectBusy(f"project {project_id} is being pre-annotated by {holder}. Wait for it to finish "
                           f"(a run killed without cleanup frees the project within {LOCK_TTL_S} s)")

    return heartbeat_lock(redis, running_key(project_id), owner, wait_s, busy)


def _job_reporter(job: Job | None) -> ProgressCallback:
    """Return a callback that stores progress in ``job.meta["progress"]``.

    Saves are at least ``PROGRESS_SAVE_INTERVAL_S`` apart, except the final ``done`` event.
    """
    last_saved = 0.0

    def report(event: dict) -> None:
        nonlocal last_saved
        if job is None:
            return
        now = time.monotonic()
        if event.get("stage") != "done" and now - last_saved < PROGRESS_SAVE_INTERVAL_S:
            return
        last_saved = now
        job.meta["progress"] = {**event, "at": time.time()}
        try:
            job.save_meta()
        except RedisError as error:
            logger.warning("job %s: cannot save progress: %s", job.id, error)

    return report


def preannotate_job(project_id: int, version: str | None = None, only_unlabeled: bool = False,
                    limit: int | None = None) -> dict:
    """Pre-annotate a project as an RQ job and return the summary as a dict."""
    settings = Settings.from_env()
    configure_logging(settings.log_level)
    job = get_current_job()
    job_id = job.id if job else "local"
    redis = job.connection if job else Redis.from_url(settings.redis_url)
    report = _job_reporter(job)
    report({"stage": "waiting for lock"})
    timeout = job.timeout if job and job.timeout and job.timeout > 0 else JOB_TIMEOUT_S
    with preannotation_lock(redis, project_id, f"job {job_id}", wait_s=float(timeout)):
        # From here on, an identical request makes a new job, which will see this job's predictions.
        if job is not None and job.meta.get("pending_key"):
            compare_and_delete(redis, job.meta["pending_key"], job_id)
        summary = preannotate(settings, project_id, version=version, only_unlabeled=only_unlabeled, limit=limit,
                              progress=report)
    return {"status": "done", **summary.to_dict()}


def enqueue_preannotation(redis: Redis, project_id: int, *, version: str | None = None,
                          only_unlabeled: bool = False, limit: int | None = None, reason: str = "requested",
                          job_timeout: int = JOB_TIMEOUT_S) -> EnqueueResult:
    """Queue a pre-annotation job, unless an identical one is still waiting to start.

    Args:
        redis: connection to the queue's Redis.
        project_id: Label Studio project id.
        version: model version, or None to use the one serving the project when the job runs.
        only_unlabeled: only tasks without annotations.
        limit: predict at most this many tasks.
        reason: why it was queued, kept in the job's metadata.
        job_timeout: seconds a job may run, including its wait for the project's lock.

    Raises:
        redis.exceptions.RedisError: Redis is unreachable, and nothing was queued.
    """
    request = {"project": project_id, "version": version, "only_unlabeled": only_unlabeled, "limit": limit}
    key = pending_key(project_id, request)
    job_id, existing_id = claim_pending_slot(redis, key, f"preannotate-project-{project_id}-{os.urandom(8).hex()}")
    if existing_id is not None:
        logger.info("project %s: pre-annotation request (%s) joined waiting job %s", project_id, reason, existing_id)
        return EnqueueResult(existing_id, coalesced=True)

    try:
        Queue(PREANNOTATE_QUEUE, connection=redis).enqueue(
            JOB_FUNCTION, project_id, version, only_unlabeled, limit,
            job_id=job_id, job_timeout=job_timeout, result_ttl=RESULT_TTL_S, failure_ttl=FAILURE_TTL_S,
            description=f"pre-annotate project {project_id}",
            meta={"project": project_id, "reason": reason, "request": request, "pending_key": key,
                  "progress": {"stage": "queued"}},
        )
    except Exception:
        compare_and_delete(redis, key, job_id)
        raise
    logger.info("project %s: %s queued pre-annotation job %s (version %s)", project_id, reason, job_id,
                version or "serving at run time")
    return EnqueueResult(job_id, coalesced=False)


def enqueue_after_publish(redis: Redis, project_id: int, version: str, *, enabled: bool,
                          job_timeout: int = JOB_TIMEOUT_S) -> str | None:
    """Queue pre-annotation of the project's unlabelled tasks with a newly published version.

    The training job calls this after a publish, and ``enabled`` is the setting that turns it
    on. A Redis failure is logged and swallowed, because the publish has already happened.

    Returns:
        The job id, or None when disabled or Redis failed.
    """
    if not enabled:
        return None
    try:
        queued = enqueue_preannotation(redis, project_id, version=version, only_unlabeled=True,
                                       reason=f"published {version}", job_timeout=job_timeout)
    except RedisError as error:
        logger.error("project %s: published %s, but pre-annotation was not queued (%s: %s). Run "
                     "'thumbnail-ml preannotate --project %s --only-unlabeled'", project_id, version,
                     type(error).__name__, error, project_id)
        return None
    return queued.job_id
