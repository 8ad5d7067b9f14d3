"""Read Label Studio exports (JSON, JSON-MIN, CSV) into one labelled example per task.

What real exports contain, and how each case is handled:

* JSON: full task objects with an ``annotations`` list; each annotation's ``result`` contains a
  ``choices`` region whose ``from_name`` is the config's Choices name.
* JSON-MIN: one row per annotation with the task's data keys at the top level. The Choices
  field is a plain string for one choice, ``{"choices": [...]}`` for several, and
  ``{"choices": []}`` or missing for none. A missing field also occurs on tasks without any
  annotation, and then ``annotation_id`` is null.
* CSV: the JSON-MIN columns, with the several-choices case JSON-encoded in the cell.

A task with several annotations uses the latest non-cancelled one (by ``updated_at``).
Cancelled (skipped) annotations are never used. An annotation with no choice means the
exclusive class (None). Labels that are not choices of the config are dropped and counted.
Everything dropped is counted in the ``ExportReport``.
"""

from __future__ import annotations

import csv
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from model.label_config import LabelConfig

logger = logging.getLogger(__name__)


class ExportError(ValueError):
    """An export file that cannot be read; the message names the file and the problem."""


@dataclass
class LabeledTask:
    """One task with the labels of its chosen annotation.

    Attributes:
        task_id: Label Studio task id.
        image_url: the task's image reference as exported (URL or path).
        labels: the chosen annotation's choices that are in the config, in config order.
        annotation_id: id of the chosen annotation (None when the export lacks it).
        updated_at: the chosen annotation's update time as exported.
    """

    task_id: int
    image_url: str
    labels: list[str]
    annotation_id: int | None = None
    updated_at: str | None = None


@dataclass
class ExportReport:
    """Counts of the rows and tasks that reading an export used and dropped."""

    rows: int = 0
    tasks: int = 0
    used: int = 0
    no_annotation: int = 0
    only_cancelled: int = 0
    cancelled: int = 0
    superseded_annotations: int = 0
    no_image_url: int = 0
    unknown_labels: Counter = field(default_factory=Counter)
    empty_annotations: int = 0

    def to_dict(self) -> dict:
        return {
            "rows": self.rows,
            "tasks": self.tasks,
            "used": self.used,
            "dropped": {
                "no_annotation": self.no_annotation,
                "only_cancelled_annotations": self.only_cancelled,
                "superseded_annotations": self.superseded_annotations,
                "no_image_url": self.no_image_url,
            },
            "cancelled_annotations": self.cancelled,
            "unknown_labels": dict(self.unknown_labels),
            "empty_annotations_as_exclusive_class": self.empty_annotations,
        }


@dataclass
class _Candidate:
    annotation_id: int | None
    updated_at: str
    choices: list[str]


def detect_format(path: Path) -> str:
    """Guess ``json``, ``json-min`` or ``csv`` from the file's content."""
    with open(path, "rb") as handle:
        head = handle.read(65536).lstrip()
    if not head:
        raise ExportError(f"export {path} is empty")
    if head[:1] != b"[" and head[:1] != b"{":
        return "csv"
    return "json"  # JSON and JSON-MIN are distinguished per row, see read_export.


def read_export(path: str | Path, config: LabelConfig, exclusive_class: str | None) -> tuple[list[LabeledTask], ExportReport]:
    """Read a Label Studio export file and return one labelled example per annotated task.

    Args:
        path: the export file (JSON, JSON-MIN or CSV; the format is detected).
        config: the labeling config: its Choices name and values, and the image data key.
        exclusive_class: the label an annotation without choices stands for, or None.

    Raises:
        ExportError: the file does not exist or is not an export.
    """
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"export file {path} not found")
    export_format = detect_format(path)
    if export_format == "csv":
        rows = _read_csv(path)
    else:
        try:
            with open(path, encoding="utf-8") as handle:
                rows = json.load(handle)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ExportError(f"export {path} is not valid JSON ({error})") from error
        if isinstance(rows, dict):
            rows = [rows]
        if not isinstance(rows, list):
            raise ExportError(f"export {path} must contain a list of tasks, got {type(rows).__name__}")

    tasks, report = labelled_tasks_from_rows(rows, config, exclusive_class, source=str(path))
    logger.info("read export %s: %s", path, json.dumps(report.to_dict()))
    return tasks, report


def labelled_tasks_from_rows(
    rows: list, config: LabelConfig, exclusive_class: str | None, source: str = "tasks"
) -> tuple[list[LabeledTask], ExportReport]:
    """Turn export rows or API task objects into one labelled example per annotated task.

    ``rows`` may mix full task objects (with ``annotations``, as in JSON exports and the tasks
    API) and JSON-MIN rows; see the module docstring for how each case is handled.

    Raises:
        ExportError: a row is not a task object with an id.
    """
    report = ExportReport(rows=len(rows))
    candidates: dict[int, list[_Candidate]] = {}
    cancelled_per_task: Counter = Counter()
    urls: dict[int, str | None] = {}
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict) or "id" not in row:
            raise ExportError(f"{source}: row {number} is not a task object with an 'id'")
        task_id = _as_int(row["id"], f"{source}: row {number} has an invalid task id {row['id']!r}")
        cancelled_before = report.cancelled
        if "annotations" in row or "data" in row:
            url, found = _full_task(row, config, report)
        else:
            url, found = _min_row(row, config, report)
        cancelled_per_task[task_id] += report.cancelled - cancelled_before
        urls.setdefault(task_id, url)
        candidates.setdefault(task_id, []).extend(found)

    tasks = []
    for task_id, found in candidates.items():
        report.tasks += 1
        if not found:
            if cancelled_per_task[task_id]:
                report.only_cancelled += 1
            else:
                report.no_annotation += 1
            continue
        report.superseded_annotations += len(found) - 1
        chosen = max(found, key=lambda c: (c.updated_at or "", c.annotation_id or 0))
        url = urls.get(task_id)
        if not url:
            report.no_image_url += 1
            continue
        labels = [choice for choice in config.choices if choice in chosen.choices]
        for choice in chosen.choices:
            if choice not in config.choices:
                report.unknown_labels[choice] += 1
        if not chosen.choices:
            report.empty_annotations += 1
            if exclusive_class in config.choices:
                labels = [exclusive_class]
        tasks.append(LabeledTask(task_id, url, labels, chosen.annotation_id, chosen.updated_at))
    report.used = len(tasks)
    return tasks, report


def _as_int(value, message: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ExportError(message) from None


def _full_task(row: dict, config: LabelConfig, report: ExportReport) -> tuple[str | None, list[_Candidate]]:
    data = row.get("data") or {}
    url = data.get(config.image_key) if isinstance(data, dict) else None
    found = []
    for annotation in row.get("annotations") or []:
        if annotation.get("was_cancelled"):
            report.cancelled += 1
            continue
        choices: list[str] = []
        for region in annotation.get("result") or []:
            if region.get("type") == "choices" and region.get("from_name") == config.choices_name:
                choices.extend((region.get("value") or {}).get("choices") or [])
        found.append(
            _Candidate(annotation.get("id"), annotation.get("updated_at") or annotation.get("created_at") or "", choices)
        )
    return url, found


def _min_row(row: dict, config: LabelConfig, report: ExportReport) -> tuple[str | None, list[_Candidate]]:
    url = row.get(config.image_key)
    # Rows of tasks without annotations carry annotation_id null (and no choice field).
    if row.get("annotation_id") is None and row.get("annotator") is None:
        return url, []
    if row.get("was_cancelled"):
        report.cancelled += 1
        return url, []
    value = row.get(config.choices_name)
    if isinstance(value, str):
        value = _parse_cell(value)
    if value is None or value == "":
        choices = []
    elif isinstance(value, str):
        choices = [value]
    elif isinstance(value, dict):
        choices = list(value.get("choices") or [])
    elif isinstance(value, list):
        choices = [str(v) for v in value]
    else:
        choices = []
    annotation_id = row.get("annotation_id")
    return url, [_Candidate(annotation_id if isinstance(annotation_id, int) else None,
                            str(row.get("updated_at") or row.get("created_at") or ""), choices)]


def _parse_cell(text: str):
    """Decode a CSV or JSON-MIN cell: a JSON object for several choices, else the plain choice."""
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            return json.loads(stripped)
        except json.JSONDecodeError:
            return stripped
    return stripped


def _read_csv(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or "id" not in reader.fieldnames:
            raise ExportError(f"export {path} is neither JSON nor a Label Studio CSV export (no 'id' column)")
        rows = []
        for row in reader:
            cleaned: dict = {}
            for key, value in row.items():
                if key in ("annotation_id", "annotator") and value == "":
                    cleaned[key] = None
                elif key == "annotation_id" and value and value.isdigit():
                    cleaned[key] = int(value)
                else:
                    cleaned[key] = value
            rows.append(cleaned)
    return rows
