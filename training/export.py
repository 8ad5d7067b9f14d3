"""Export a Label Studio project to a file through label-studio-sdk's snapshot API.

An export is a snapshot on the Label Studio side: ``projects.exports.create`` builds it,
``projects.exports.get`` reports its status until it is ``completed``, and
``projects.exports.download`` returns it in the requested format. The snapshot is deleted
after the download, so repeated exports do not fill Label Studio's export storage.

What Label Studio 1.23.2 puts in each format (observed on a real server and read in
label-studio-sdk's converter, which Label Studio uses for JSON-MIN and CSV):

* JSON contains the full task objects with every annotation, cancelled ones included. It lists
  predictions only as ids unless the snapshot is created with ``predictions.only_id`` false.
* JSON-MIN and CSV contain one row per non-cancelled annotation, and no predictions. A task
  whose only annotations are cancelled has no row.
* ``only_with_annotations`` keeps every task that has an annotation, even a cancelled one.

With ``with_predictions``, JSON keeps Label Studio's own prediction objects (result, score,
model_version). JSON-MIN and CSV get three extra keys per row, taken from the task's latest
prediction: ``prediction`` (a JSON list of the chosen classes), ``prediction_score`` and
``prediction_model_version``. ``training.exports.read_export`` ignores these keys.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO
from xml.etree import ElementTree

import httpx
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError

from model.label_config import LabelConfigError, parse_label_config
from thumbnail_ml.files import atomic_file
from training.label_studio import PullError, _retrying

logger = logging.getLogger(__name__)

# Command-line format name -> Label Studio's export type.
EXPORT_TYPES = {"json": "JSON", "json-min": "JSON_MIN", "csv": "CSV"}
PREDICTION_KEYS = ("prediction", "prediction_score", "prediction_model_version")
DEFAULT_TIMEOUT_S = 600.0
FIRST_POLL_INTERVAL_S = 0.5
MAX_POLL_INTERVAL_S = 5.0
DOWNLOAD_CHUNK_BYTES = 1 << 20


class ProjectExportError(RuntimeError):
    """An export that could not be made; the message names the project and what to do."""


@dataclass(frozen=True)
class ExportSummary:
    """Counts and location of one written export.

    Attributes:
        project_id: the Label Studio project.
        export_format: ``json``, ``json-min`` or ``csv``.
        path: the file written.
        tasks: distinct tasks in the file.
        annotations: annotations in the file (JSON also counts cancelled ones).
        predictions: predictions in the file (JSON), or tasks given prediction keys (JSON-MIN
            and CSV); None when predictions were not requested.
        all_tasks: whether tasks without annotations were included.
    """

    project_id: int
    export_format: str
    path: Path
    tasks: int
    annotations: int
    predictions: int | None
    all_tasks: bool

    def describe(self) -> str:
        """Return the one-line summary printed by ``thumbnail-ml export``."""
        scope = "all tasks" if self.all_tasks else "annotated tasks only"
        predictions = "predictions not included" if self.predictions is None else f"{self.predictions} predictions"
        return (
            f"exported project {self.project_id} as {EXPORT_TYPES[self.export_format]} ({scope}): "
            f"{self.tasks} tasks, {self.annotations} annotations, {predictions} -> {self.path}"
        )


def export_project(
    client: LabelStudio,
    project_id: int,
    path: str | Path,
    export_format: str = "json",
    with_predictions: bool = False,
    all_tasks: bool = False,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> ExportSummary:
    """Export a project through a snapshot and write it to ``path`` atomically.

    Args:
        client: an SDK client (see ``training.label_studio.make_client``).
        project_id: the Label Studio project id.
        path: the output file; its directory must exist. An existing file is replaced only
            once the whole export has been written.
        export_format: ``json``, ``json-min`` or ``csv``.
        with_predictions: include predictions with their scores and model versions.
        all_tasks: include tasks without annotations (by default only annotated tasks).
        timeout_s: seconds to wait for Label Studio to build and send the export.

    Raises:
        ProjectExportError: the project does not exist, the export failed or timed out, or
            Label Studio stayed unreachable.
    """
    if export_format not in EXPORT_TYPES:
        raise ProjectExportError(
            f"invalid export format {export_format!r}: use one of {', '.join(EXPORT_TYPES)}"
        )
    path = Path(path)
    if path.is_dir():
        raise ProjectExportError(f"output {path} is a directory: give a file name, for example {path}/export.json")
    if not path.parent.is_dir():
        raise ProjectExportError(f"output directory {path.parent} does not exist: create it first")

    label_config = _project_label_config(client, project_id)
    choices_name = None
    if with_predictions and export_format != "json":
        _check_prediction_keys_free(label_config, project_id)
        choices_name = _choices_name(label_config, project_id)
    snapshot_id = _create_snapshot(client, project_id, with_predictions, all_tasks, timeout_s)
    try:
        _wait_until_completed(client, project_id, snapshot_id, timeout_s)
        with atomic_file(path) as handle:
            if export_format == "json":
                _download(client, project_id, snapshot_id, None, handle, timeout_s)
                handle.seek(0)
                tasks = json.load(handle)
                if not isinstance(tasks, list):
                    raise ProjectExportError(
                        f"Label Studio sent a JSON export of project {project_id} that is not a list of tasks"
                    )
                counts = _count_json(tasks, with_predictions)
            else:
                counts = _write_flat_export(client, project_id, snapshot_id, export_format, handle,
                                            with_predictions, choices_name, timeout_s)
    finally:
        _delete_snapshot(client, project_id, snapshot_id)

    summary = ExportSummary(project_id, export_format, path, *counts, all_tasks=all_tasks)
    if summary.tasks == 0:
        hint = "" if all_tasks else " (only annotated tasks are exported unless --all-tasks is given)"
        logger.warning("project %d export contains no task%s", project_id, hint)
    logger.info("%s", summary.describe())
    return summary


# -- talking to Label Studio -----------------------------------------------------------------


def _status_of(error: PullError) -> int | None:
    return getattr(error.__cause__, "status_code", None)


def _project_label_config(client: LabelStudio, project_id: int) -> str:
    """Return the project's labeling config XML; raises ProjectExportError when the project is not found."""
    try:
        project = _retrying(f"reading project {project_id}", lambda: client.projects.get(id=project_id))
    except PullError as error:
        if _status_of(error) == 404:
            raise ProjectExportError(
                f"project {project_id} not found in Label Studio: check --project (the id is the number "
                "in the project's URL, /projects/<id>/) and that the API key's user can see it"
            ) from error
        raise ProjectExportError(f"cannot export project {project_id}: {error}") from error
    return project.label_config or ""


def _check_prediction_keys_free(label_config: str, project_id: int) -> None:
    """Raise ProjectExportError when a control of the config is named like a prediction key.

    JSON-MIN and CSV name a column after each control, and a row whose annotation left that
    control empty has no such key, so the check cannot wait for the rows.
    """
    try:
        root = ElementTree.fromstring(label_config)
    except ElementTree.ParseError:
        return
    controls = {tag.get("name") for tag in root.iter() if tag.get("toName") is not None}
    clashing = sorted(controls & set(PREDICTION_KEYS))
    if clashing:
        raise ProjectExportError(
            f"project {project_id}'s labeling config has a control named {clashing[0]!r}, which the prediction "
            "columns would overwrite: export as JSON, which keeps predictions in their own list"
        )


def _choices_name(label_config: str, project_id: int) -> str | None:
    """Return the Choices name of an Image + Choices config, or None for any other config."""
    try:
        return parse_label_config(label_config).choices_name
    except LabelConfigError as error:
        # Predictions are then read from every choices region, whatever its control name.
        logger.warning("project %d's labeling config is not an Image + Choices config (%s); "
                       "prediction columns use every choices region", project_id, error)
        return None


def _create_snapshot(client: LabelStudio, project_id: int, with_predictions: bool, all_tasks: bool,
                     timeout_s: float) -> int:
    title = f"thumbnail-ml export {datetime.now(timezone.utc).isoformat(timespec='seconds')}"
    options: dict = {"title": title}
    if not all_tasks:
        options["task_filter_options"] = {"only_with_annotations": True}
    if with_predictions:
        options["serialization_options"] = {"predictions": {"only_id": False}}
    # Creating is not retried: a retry after a lost reply would leave a second snapshot behind.
    # Without a Redis queue, Label Studio builds the snapshot inside this request, hence the timeout.
    try:
        snapshot = client.projects.exports.create(project_id, request_options={"timeout": timeout_s}, **options)
    except ApiError as error:
        raise ProjectExportError(
            f"Label Studio rejected the export of project {project_id}: HTTP {error.status_code} {error.body!r}"
        ) from error
    except httpx.TransportError as error:
        raise ProjectExportError(
            f"creating the export of project {project_id} failed ({type(error).__name__}: {error}); "
            "check that Label Studio is running at LABEL_STUDIO_URL"
        ) from error
    if snapshot.id is None:
        raise ProjectExportError(f"Label Studio returned no snapshot id for the export of project {project_id}")
    logger.info("created export snapshot %d of project %d (status %s)", snapshot.id, project_id, snapshot.status)
    return int(snapshot.id)


def _wait_until_completed(client: LabelStudio, project_id: int, snapshot_id: int, timeout_s: float) -> None:
    """Poll the snapshot's status with growing intervals until it is completed."""
    deadline = time.monotonic() + timeout_s
    interval = FIRST_POLL_INTERVAL_S
    while True:
        try:
            snapshot = _retrying(f"reading the status of export {snapshot_id} of project {project_id}",
                                 lambda: client.projects.exports.get(project_id, snapshot_id))
        except PullError as error:
            raise ProjectExportError(str(error)) from error
        if snapshot.status == "completed":
            return
        if snapshot.status == "failed":
            raise ProjectExportError(
                f"Label Studio failed to build export {snapshot_id} of project {project_id}: "
                "its server log gives the reason"
            )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ProjectExportError(
                f"export {snapshot_id} of project {project_id} did not complete within {timeout_s:g} s "
                f"(status {snapshot.status!r}): raise --timeout, or check Label Studio's export queue"
            )
        time.sleep(min(interval, remaining))
        interval = min(interval * 2, MAX_POLL_INTERVAL_S)


def _download(client: LabelStudio, project_id: int, snapshot_id: int, export_type: str | None,
              handle: IO[bytes], timeout_s: float) -> None:
    """Stream the snapshot in ``export_type`` (None: the JSON snapshot itself) into ``handle``."""
    description = f"downloading export {snapshot_id} of project {project_id} as {export_type or 'JSON'}"

    def attempt() -> None:
        # A retry starts the file over, so a broken transfer never leaves a partial prefix.
        handle.seek(0)
        handle.truncate()
        chunks = client.projects.exports.download(
            project_id, snapshot_id, export_type=export_type,
            request_options={"timeout": timeout_s, "chunk_size": DOWNLOAD_CHUNK_BYTES},
        )
        for chunk in chunks:
            handle.write(chunk)

    try:
        _retrying(description, attempt)
    except PullError as error:
        if _status_of(error) == 404 and export_type is not None:
            # NOTE: Label Studio builds other formats on download unless its asynchronous
            # conversion feature flag is on; then the format must be converted first. Only the
            # synchronous path was run against Label Studio 1.23.2.
            _convert(client, project_id, snapshot_id, export_type, timeout_s)
            try:
                _retrying(description, attempt)
            except PullError as retry_error:
                raise ProjectExportError(str(retry_error)) from retry_error
            return
        raise ProjectExportError(str(error)) from error


def _convert(client: LabelStudio, project_id: int, snapshot_id: int, export_type: str, timeout_s: float) -> None:
    """Ask Label Studio to convert the snapshot to ``export_type`` and wait until it is done."""
    logger.info("converting export %d of project %d to %s", snapshot_id, project_id, export_type)
    try:
        client.projects.exports.convert(project_id, snapshot_id, export_type=export_type)
    except ApiError as error:
        raise ProjectExportError(
            f"Label Studio cannot convert export {snapshot_id} of project {project_id} to {export_type}: "
            f"HTTP {error.status_code} {error.body!r}"
        ) from error
    deadline = time.monotonic() + timeout_s
    interval = FIRST_POLL_INTERVAL_S
    while time.monotonic() < deadline:
        try:
            snapshot = _retrying(f"reading the conversion status of export {snapshot_id} of project {project_id}",
                                 lambda: client.projects.exports.get(project_id, snapshot_id))
        except PullError as error:
            raise ProjectExportError(str(error)) from error
        statuses = [f.status for f in snapshot.converted_formats or [] if f.export_type == export_type]
        if "completed" in statuses:
            return
        if "failed" in statuses:
            raise ProjectExportError(
                f"Label Studio failed to convert export {snapshot_id} of project {project_id} to {export_type}"
            )
        time.sleep(interval)
        interval = min(interval * 2, MAX_POLL_INTERVAL_S)
    raise ProjectExportError(
        f"converting export {snapshot_id} of project {project_id} to {export_type} did not complete "
        f"within {timeout_s:g} s: raise --timeout"
    )


def _delete_snapshot(client: LabelStudio, project_id: int, snapshot_id: int) -> None:
    try:
        client.projects.exports.delete(project_id, snapshot_id)
    except (ApiError, httpx.TransportError) as error:
        # The file is written either way; a leftover snapshot is only clutter.
        logger.warning("could not delete export snapshot %d of project %d (%s: %s); delete it in the "
                       "project's export dialog", snapshot_id, project_id, type(error).__name__, error)


# -- writing files ---------------------------------------------------------------------------


def _write_flat_export(client: LabelStudio, project_id: int, snapshot_id: int, export_format: str,
                       handle: IO[bytes], with_predictions: bool, choices_name: str | None,
                       timeout_s: float) -> tuple[int, int, int | None]:
    """Write a JSON-MIN or CSV export into ``handle``, with prediction keys when requested."""
    export_type = EXPORT_TYPES[export_format]
    if not with_predictions:
        _download(client, project_id, snapshot_id, export_type, handle, timeout_s)
        handle.seek(0)
        _, rows = _parse_flat(handle.read(), export_format)
        return (*_count_flat(rows), None)

    # Predictions exist only in the JSON snapshot, so it is downloaded too and joined by task id.
    with tempfile.TemporaryFile() as snapshot_json:
        _download(client, project_id, snapshot_id, None, snapshot_json, timeout_s)
        snapshot_json.seek(0)
        latest = latest_predictions(json.load(snapshot_json), choices_name)
    flat = io.BytesIO()
    _download(client, project_id, snapshot_id, export_type, flat, timeout_s)
    columns, rows = _parse_flat(flat.getvalue(), export_format)
    predicted = add_prediction_keys(rows, latest, export_format)
    if export_format == "csv":
        text = _csv_text(columns, rows)
    else:
        text = json.dumps(rows, indent=2, ensure_ascii=False)
    handle.write(text.encode("utf-8"))
    return (*_count_flat(rows), predicted)


def _parse_flat(content: bytes, export_format: str) -> tuple[list[str], list[dict]]:
    """Return the CSV header (empty for JSON-MIN) and the rows of a JSON-MIN or CSV export."""
    text = content.decode("utf-8")
    if export_format == "csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        rows = list(reader)
        return list(reader.fieldnames or []), rows
    rows = json.loads(text)
    if not isinstance(rows, list):
        raise ProjectExportError(f"Label Studio sent a JSON-MIN export that is not a list but a {type(rows).__name__}")
    return [], rows


def _csv_text(columns: list[str], rows: list[dict]) -> str:
    """Write rows as CSV with Label Studio's header, in its order, then the prediction columns.

    Label Studio quotes every text cell, and this writer quotes only where needed. Both read
    back as the same strings.
    """
    header = [column for column in columns if column not in PREDICTION_KEYS] + list(PREDICTION_KEYS)
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


# -- predictions and counts ------------------------------------------------------------------


def latest_predictions(tasks: list[dict], choices_name: str | None) -> dict[int, dict]:
    """Return task id -> the task's latest prediction as ``prediction`` keys, from JSON task objects.

    The latest prediction is the one with the greatest ``updated_at`` (``created_at`` if
    absent), then the greatest id. Its choices are read from the regions of type ``choices``
    whose ``from_name`` is ``choices_name`` (any name when it is None).

    Raises:
        ProjectExportError: the snapshot lists predictions as ids only.
    """
    latest: dict[int, dict] = {}
    for task in tasks:
        candidates = task.get("predictions") or []
        if any(not isinstance(prediction, dict) for prediction in candidates):
            raise ProjectExportError(
                f"the export lists task {task.get('id')}'s predictions as ids only: the snapshot was "
                "created without serialization_options predictions.only_id = false"
            )
        if not candidates:
            continue
        chosen = max(candidates, key=lambda p: (str(p.get("updated_at") or p.get("created_at") or ""), p.get("id") or 0))
        choices: list[str] = []
        for region in chosen.get("result") or []:
            if region.get("type") != "choices":
                continue
            if choices_name is not None and region.get("from_name") != choices_name:
                continue
            choices.extend((region.get("value") or {}).get("choices") or [])
        latest[int(task["id"])] = {
            "prediction": choices,
            "prediction_score": chosen.get("score"),
            "prediction_model_version": chosen.get("model_version"),
        }
    return latest


def add_prediction_keys(rows: list[dict], latest: dict[int, dict], export_format: str) -> int:
    """Add the prediction keys to each JSON-MIN or CSV row in place; returns how many tasks got a prediction.

    JSON-MIN gets the choices as a list and null for tasks without a prediction. CSV cells
    hold the choices as a JSON list, and are empty for tasks without a prediction.

    Raises:
        ProjectExportError: a row already has one of the keys, from task data or a control name.
    """
    predicted: set[int] = set()
    for row in rows:
        clashing = [key for key in PREDICTION_KEYS if key in row]
        if clashing:
            raise ProjectExportError(
                f"task {row.get('id')} already has a {clashing[0]!r} field (task data or a control name), which the "
                "prediction columns would overwrite: export as JSON, which keeps predictions in their own list"
            )
        task_id = int(row["id"])
        values = latest.get(task_id)
        if values is not None:
            predicted.add(task_id)
        if export_format == "csv":
            if values is None:
                row.update({key: "" for key in PREDICTION_KEYS})
            else:
                score = values["prediction_score"]
                row.update({
                    "prediction": json.dumps(values["prediction"], ensure_ascii=False),
                    "prediction_score": "" if score is None else repr(float(score)),
                    "prediction_model_version": values["prediction_model_version"] or "",
                })
        else:
            row.update(values if values is not None else {key: None for key in PREDICTION_KEYS})
    return len(predicted)


def _count_json(tasks: list[dict], with_predictions: bool) -> tuple[int, int, int | None]:
    annotations = sum(len(task.get("annotations") or []) for task in tasks)
    predictions = sum(len(task.get("predictions") or []) for task in tasks) if with_predictions else None
    return len(tasks), annotations, predictions


def _count_flat(rows: list[dict]) -> tuple[int, int]:
    tasks = {str(row.get("id")) for row in rows}
    annotations = {str(row["annotation_id"]) for row in rows if row.get("annotation_id") not in (None, "")}
    return len(tasks), len(annotations)
