"""``thumbnail-ml export`` against a real Label Studio: every format reads back with the annotated labels.

The project contains real thumbnails with annotations made through the SDK, covering the cases
``read_export`` must get right: several choices, one choice, two annotations on one task, a
skipped (cancelled) annotation next to a real one, a task with only a skipped annotation, an
empty choices list, an empty result, and a task without annotations. Predictions are imported
for most tasks, two of them for one task.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from model.label_config import default_label_config_xml, parse_label_config
from tests.support import REPO_ROOT, THUMBNAIL_IMAGES
from training.exports import read_export

from .label_studio import import_files

CONFIG = parse_label_config(default_label_config_xml())
FORMATS = ("json", "json-min", "csv")
CLI_TIMEOUT_S = 180


def _region(choices: list[str]) -> list[dict]:
    return [{"from_name": "choice", "to_name": "image", "type": "choices", "value": {"choices": choices}}]


def run_export(label_studio, *args: str) -> subprocess.CompletedProcess:
    """Run ``thumbnail-ml export`` as a user would, with the server's URL and personal access token."""
    env = {**os.environ, "LABEL_STUDIO_URL": label_studio.base_url, "LABEL_STUDIO_API_KEY": label_studio.pat,
           "LOG_LEVEL": "WARNING"}
    return subprocess.run([sys.executable, "-m", "thumbnail_ml", "export", *args], capture_output=True, text=True,
                          cwd=REPO_ROOT, env=env, timeout=CLI_TIMEOUT_S)


@pytest.fixture(scope="module")
def project(label_studio_client):
    """A project of eight real thumbnails with annotations and predictions made through the SDK."""
    client = label_studio_client
    images = sorted(THUMBNAIL_IMAGES.glob("*/*.jpg"))[:8]
    assert len(images) == 8, f"found {len(images)} thumbnails under {THUMBNAIL_IMAGES}, the test needs 8"
    created = client.projects.create(title="export round trip", label_config=default_label_config_xml())
    names = ["several", "single", "two", "skipped_after", "only_skipped", "empty_choices", "empty_result",
             "unannotated"]
    tasks = dict(zip(names, import_files(client, created.id, images)))

    client.annotations.create(tasks["several"], result=_region(["Text", "Face"]))
    client.annotations.create(tasks["single"], result=_region(["Minecraft"]))
    client.annotations.create(tasks["two"], result=_region(["Weapons"]))
    client.annotations.create(tasks["two"], result=_region(["Violence", "Text"]))
    client.annotations.create(tasks["skipped_after"], result=_region(["Anime/Cartoon"]))
    skipped = client.annotations.create(tasks["skipped_after"], result=[], was_cancelled=True)
    only_skipped = client.annotations.create(tasks["only_skipped"], result=[], was_cancelled=True)
    client.annotations.create(tasks["empty_choices"], result=_region([]))
    client.annotations.create(tasks["empty_result"], result=[])
    assert skipped.was_cancelled and only_skipped.was_cancelled, "Label Studio did not store was_cancelled=True"

    # Two separate imports, so the second prediction of "several" is the later one.
    first = client.projects.import_predictions(created.id, request=[
        {"task": tasks["several"], "result": _region(["Face"]), "score": 0.4, "model_version": "model-v1"},
        {"task": tasks["single"], "result": _region(["Minecraft", "Text"]), "score": 0.55, "model_version": "model-v1"},
        {"task": tasks["two"], "result": _region(["Violence"]), "score": 0.3, "model_version": "model-v1"},
        {"task": tasks["unannotated"], "result": _region(["None"]), "score": 0.9, "model_version": "model-v1"},
    ])
    second = client.projects.import_predictions(created.id, request=[
        {"task": tasks["several"], "result": _region(["Face", "Text"]), "score": 0.8, "model_version": "model-v2"},
    ])
    assert (first.created, second.created) == (4, 1)

    expected = {
        tasks["several"]: ["Face", "Text"],
        tasks["single"]: ["Minecraft"],
        tasks["two"]: ["Violence", "Text"],
        tasks["skipped_after"]: ["Anime/Cartoon"],
        tasks["empty_choices"]: ["None"],
        tasks["empty_result"]: ["None"],
    }
    return {"id": created.id, "tasks": tasks, "expected": expected}


def _task_ids(path: Path, export_format: str) -> set[int]:
    if export_format == "csv":
        with open(path, encoding="utf-8", newline="") as handle:
            return {int(row["id"]) for row in csv.DictReader(handle)}
    return {int(row["id"]) for row in json.loads(path.read_text("utf-8"))}


def _flat_rows(path: Path, export_format: str) -> list[dict]:
    if export_format == "csv":
        with open(path, encoding="utf-8", newline="") as handle:
            return list(csv.DictReader(handle))
    return json.loads(path.read_text("utf-8"))


@pytest.mark.parametrize("all_tasks", [False, True], ids=["annotated", "all-tasks"])
@pytest.mark.parametrize("with_predictions", [False, True], ids=["plain", "predictions"])
@pytest.mark.parametrize("export_format", FORMATS)
def test_export_reads_back_labels(label_studio, label_studio_client, project, tmp_path, export_format,
                                  with_predictions, all_tasks):
    out = tmp_path / f"export.{export_format}"
    args = ["--project", str(project["id"]), "--format", export_format, str(out)]
    if with_predictions:
        args.insert(0, "--with-predictions")
    if all_tasks:
        args.insert(0, "--all-tasks")
    result = run_export(label_studio, *args)
    assert result.returncode == 0, result.stderr
    summary = result.stderr.strip().splitlines()[-1]
    assert summary.startswith(f"exported project {project['id']} as ")
    assert summary.endswith(f"-> {out}")
    assert [p.name for p in tmp_path.iterdir()] == [out.name], "a temporary file was left beside the export"

    tasks, report = read_export(out, CONFIG, "None")
    assert {task.task_id: task.labels for task in tasks} == project["expected"]
    assert report.no_annotation == (1 if all_tasks else 0)

    ids = project["tasks"]
    written = _task_ids(out, export_format)
    assert set(project["expected"]) <= written
    assert (ids["unannotated"] in written) == all_tasks
    # Label Studio's JSON-MIN and CSV converter leaves out tasks whose only annotation is cancelled.
    assert (ids["only_skipped"] in written) == (export_format == "json")
    assert label_studio_client.projects.exports.list(project["id"]) == [], "the export snapshot was not deleted"


@pytest.mark.parametrize("with_predictions", [False, True], ids=["plain", "predictions"])
def test_json_export_predictions(label_studio, project, tmp_path, with_predictions):
    out = tmp_path / "export.json"
    args = ["--project", str(project["id"]), str(out)] + (["--with-predictions"] if with_predictions else [])
    result = run_export(label_studio, *args)
    assert result.returncode == 0, result.stderr

    by_id = {task["id"]: task for task in json.loads(out.read_text("utf-8"))}
    several = by_id[project["tasks"]["several"]]["predictions"]
    assert len(several) == 2
    if not with_predictions:
        # Label Studio's snapshot lists predictions by id unless asked for the objects.
        assert all(isinstance(prediction, int) for prediction in several)
        assert "predictions not included" in result.stderr
        return
    assert {(p["model_version"], p["score"]) for p in several} == {("model-v1", 0.4), ("model-v2", 0.8)}
    assert by_id[project["tasks"]["single"]]["predictions"][0]["result"] == _region(["Minecraft", "Text"])
    assert by_id[project["tasks"]["empty_result"]]["predictions"] == []
    assert "4 predictions" in result.stderr


@pytest.mark.parametrize("export_format", ["json-min", "csv"])
def test_flat_export_prediction_columns(label_studio, project, tmp_path, export_format):
    out = tmp_path / f"export.{export_format}"
    result = run_export(label_studio, "--with-predictions", "--all-tasks", "--project", str(project["id"]),
                        "--format", export_format, str(out))
    assert result.returncode == 0, result.stderr

    rows = _flat_rows(out, export_format)
    by_task: dict[int, list[dict]] = {}
    for row in rows:
        by_task.setdefault(int(row["id"]), []).append(row)
    ids = project["tasks"]
    several = by_task[ids["several"]][0]
    two = by_task[ids["two"]]
    without = by_task[ids["empty_result"]][0]
    if export_format == "csv":
        assert json.loads(several["prediction"]) == ["Face", "Text"]
        assert float(several["prediction_score"]) == 0.8
        assert (without["prediction"], without["prediction_score"], without["prediction_model_version"]) == ("", "", "")
    else:
        assert several["prediction"] == ["Face", "Text"]
        assert several["prediction_score"] == 0.8
        assert (without["prediction"], without["prediction_score"], without["prediction_model_version"]) == (None,) * 3
    assert several["prediction_model_version"] == "model-v2"
    # A task with two annotations has two rows, each with the task's prediction.
    assert len(two) == 2
    assert all(row["prediction_model_version"] == "model-v1" for row in two)
    assert by_task[ids["unannotated"]][0]["prediction_model_version"] == "model-v1"
    assert "exported project" in result.stderr
    assert " 4 predictions " in result.stderr.replace(",", " ")


def test_export_unknown_project(label_studio, tmp_path):
    out = tmp_path / "export.json"
    result = run_export(label_studio, "--project", "999999", str(out))
    assert result.returncode == 1
    assert "project 999999 not found" in result.stderr
    assert not out.exists()


def test_export_missing_output_directory(label_studio, project, tmp_path):
    out = tmp_path / "missing" / "export.json"
    result = run_export(label_studio, "--project", str(project["id"]), str(out))
    assert result.returncode == 1
    assert f"output directory {out.parent} does not exist" in result.stderr
