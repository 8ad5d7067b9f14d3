"""Exporting through the SDK, without a server: prediction keys, read-back and snapshot handling.

The round trip against a real Label Studio is in tests/e2e/test_export_e2e.py. Here a small
fake client replaces label-studio-sdk's ``projects`` and ``projects.exports`` calls.
"""

from __future__ import annotations

import csv
import io
import json
from types import SimpleNamespace

import pytest

from model.label_config import default_label_config_xml, parse_label_config
from training.export import (
    PREDICTION_KEYS, ExportSummary, ProjectExportError, _csv_text, add_prediction_keys, export_project,
    latest_predictions,
)
from training.exports import read_export

CONFIG = parse_label_config(default_label_config_xml())


def _region(choices: list[str], name: str = "choice") -> list[dict]:
    return [{"from_name": name, "to_name": "image", "type": "choices", "value": {"choices": choices}}]


def _prediction(prediction_id: int, choices: list[str], updated_at: str, version: str, score: float | None = 0.5):
    return {"id": prediction_id, "result": _region(choices), "score": score, "model_version": version,
            "created_at": updated_at, "updated_at": updated_at}


def _json_min_rows() -> list[dict]:
    """JSON-MIN rows as Label Studio 1.23.2 writes them: two annotations of task 1, none of task 3."""
    common = {"annotator": 1, "lead_time": 1.0, "created_at": "2026-01-01T00:00:00Z"}
    return [
        {"image": "/data/upload/1/a-x.jpg", "id": 1, "choice": {"choices": ["Face", "Text"]}, "annotation_id": 11,
         "updated_at": "2026-01-02T00:00:00Z", **common},
        {"image": "/data/upload/1/a-x.jpg", "id": 1, "choice": "Weapons", "annotation_id": 10,
         "updated_at": "2026-01-01T00:00:00Z", **common},
        {"image": "/data/upload/1/b-y.jpg", "id": 2, "annotation_id": 12, "updated_at": "2026-01-01T00:00:00Z",
         **common},
        {"image": "/data/upload/1/c-z.jpg", "id": 3, "annotator": None, "annotation_id": None, "created_at": None,
         "updated_at": None, "lead_time": None},
    ]


def _csv_cell(value) -> str:
    """Return a value as Label Studio writes it in a CSV cell: a JSON object for several choices, else text."""
    if value is None:
        return ""
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def test_latest_prediction_by_update_time():
    tasks = [
        {"id": 1, "predictions": [_prediction(5, ["Face", "Text"], "2026-01-02T00:00:00Z", "v2", 0.8),
                                  _prediction(4, ["Face"], "2026-01-01T00:00:00Z", "v1")]},
        {"id": 2, "predictions": []},
        {"id": 3, "predictions": [{**_prediction(6, ["Text"], "2026-01-01T00:00:00Z", "v1"),
                                   "result": _region(["Text"]) + _region(["Other"], name="other_control")}]},
    ]
    latest = latest_predictions(tasks, "choice")
    assert latest == {
        1: {"prediction": ["Face", "Text"], "prediction_score": 0.8, "prediction_model_version": "v2"},
        3: {"prediction": ["Text"], "prediction_score": 0.5, "prediction_model_version": "v1"},
    }
    assert latest_predictions(tasks[2:], None)[3]["prediction"] == ["Text", "Other"]


def test_latest_prediction_ties_broken_by_id():
    same_time = "2026-01-01T00:00:00Z"
    tasks = [{"id": 1, "predictions": [_prediction(8, ["Text"], same_time, "later"),
                                       _prediction(7, ["Face"], same_time, "earlier")]}]
    assert latest_predictions(tasks, "choice")[1]["prediction_model_version"] == "later"


def test_latest_predictions_rejects_ids():
    with pytest.raises(ProjectExportError, match="lists task 1's predictions as ids only"):
        latest_predictions([{"id": 1, "predictions": [4, 9]}], "choice")


def test_prediction_keys_json_min():
    rows = _json_min_rows()
    latest = {1: {"prediction": ["Face"], "prediction_score": 0.7, "prediction_model_version": "v1"}}
    assert add_prediction_keys(rows, latest, "json-min") == 1
    assert [row["prediction"] for row in rows] == [["Face"], ["Face"], None, None]
    assert rows[0]["prediction_score"] == 0.7
    assert rows[2]["prediction_model_version"] is None


def test_prediction_keys_csv_cells():
    rows = [{key: _csv_cell(value) for key, value in row.items()} for row in _json_min_rows()]
    latest = {2: {"prediction": [], "prediction_score": None, "prediction_model_version": "v1"},
              3: {"prediction": ["None"], "prediction_score": 0.25, "prediction_model_version": "v2"}}
    assert add_prediction_keys(rows, latest, "csv") == 2
    assert (rows[0]["prediction"], rows[0]["prediction_score"], rows[0]["prediction_model_version"]) == ("", "", "")
    assert (rows[2]["prediction"], rows[2]["prediction_score"]) == ("[]", "")
    assert (rows[3]["prediction"], rows[3]["prediction_score"]) == ('["None"]', "0.25")


def test_prediction_key_collision():
    rows = [{"id": 1, "image": "/x.jpg", "prediction": "from task data"}]
    with pytest.raises(ProjectExportError, match="task 1 already has a 'prediction' field"):
        add_prediction_keys(rows, {}, "json-min")


@pytest.mark.parametrize("export_format", ["json-min", "csv"])
def test_flat_export_with_prediction_keys_reads_back(tmp_path, export_format):
    rows = _json_min_rows()
    latest = {1: {"prediction": ["Minecraft"], "prediction_score": 0.9, "prediction_model_version": "v3"}}
    if export_format == "csv":
        rows = [{key: _csv_cell(value) for key, value in row.items()} for row in rows]
    add_prediction_keys(rows, latest, export_format)
    path = tmp_path / f"export.{export_format}"
    text = _csv_text(list(_json_min_rows()[0]), rows) if export_format == "csv" else json.dumps(rows)
    path.write_text(text, encoding="utf-8")

    tasks, report = read_export(path, CONFIG, "None")
    assert {task.task_id: task.labels for task in tasks} == {1: ["Face", "Text"], 2: ["None"]}
    assert report.no_annotation == 1
    assert report.unknown_labels == {}


def test_csv_text_puts_prediction_columns_last():
    columns = ["annotation_id", "choice", "id", "image"]
    rows = [{"id": "1", "image": "/x.jpg", "choice": "Face", "annotation_id": "3"}]
    add_prediction_keys(rows, {}, "csv")
    header = next(csv.reader(io.StringIO(_csv_text(columns, rows))))
    assert header == [*columns, *PREDICTION_KEYS]


def test_csv_text_keeps_header_without_rows(tmp_path):
    path = tmp_path / "export.csv"
    path.write_text(_csv_text(["annotation_id", "annotator", "id"], []), encoding="utf-8")
    assert path.read_text("utf-8") == "annotation_id,annotator,id," + ",".join(PREDICTION_KEYS) + "\n"
    tasks, report = read_export(path, CONFIG, "None")
    assert tasks == []
    assert report.tasks == 0


def test_summary_line(tmp_path):
    summary = ExportSummary(4, "json-min", tmp_path / "out.json", tasks=6, annotations=7, predictions=None,
                            all_tasks=False)
    assert summary.describe() == (
        f"exported project 4 as JSON_MIN (annotated tasks only): 6 tasks, 7 annotations, "
        f"predictions not included -> {tmp_path / 'out.json'}"
    )


# -- snapshot handling with a fake client ----------------------------------------------------


class FakeExports:
    """Fake ``client.projects.exports`` whose snapshots all report ``status``."""

    def __init__(self, status: str, content: bytes = b"[]"):
        self.status = status
        self.content = content
        self.created: list[dict] = []
        self.deleted: list[int] = []

    def create(self, project_id, request_options=None, **options):
        self.created.append(options)
        return SimpleNamespace(id=len(self.created), status="created")

    def get(self, project_id, snapshot_id):
        return SimpleNamespace(id=snapshot_id, status=self.status, converted_formats=[])

    def download(self, project_id, snapshot_id, export_type=None, request_options=None):
        yield self.content

    def delete(self, project_id, snapshot_id):
        self.deleted.append(snapshot_id)


def _fake_client(exports: FakeExports):
    project = SimpleNamespace(label_config=default_label_config_xml())
    return SimpleNamespace(projects=SimpleNamespace(get=lambda id: project, exports=exports))


@pytest.mark.parametrize(("status", "message"), [
    ("failed", "Label Studio failed to build export 1 of project 7"),
    ("in_progress", r"export 1 of project 7 did not complete within 0.2 s \(status 'in_progress'\)"),
])
def test_snapshot_not_completed(tmp_path, status, message):
    exports = FakeExports(status)
    out = tmp_path / "export.json"
    with pytest.raises(ProjectExportError, match=message):
        export_project(_fake_client(exports), 7, out, timeout_s=0.2)
    assert exports.deleted == [1]
    assert list(tmp_path.iterdir()) == []


def test_snapshot_options(tmp_path):
    exports = FakeExports("completed")
    client = _fake_client(exports)
    export_project(client, 7, tmp_path / "a.json")
    export_project(client, 7, tmp_path / "b.json", with_predictions=True, all_tasks=True)
    assert exports.created[0]["task_filter_options"] == {"only_with_annotations": True}
    assert "serialization_options" not in exports.created[0]
    assert "task_filter_options" not in exports.created[1]
    assert exports.created[1]["serialization_options"] == {"predictions": {"only_id": False}}
    assert exports.deleted == [1, 2]


def test_existing_file_kept_on_failure(tmp_path):
    out = tmp_path / "export.json"
    out.write_text("previous export", encoding="utf-8")
    with pytest.raises(ProjectExportError, match="not a list of tasks"):
        export_project(_fake_client(FakeExports("completed", content=b'{"detail": "x"}')), 7, out)
    assert out.read_text("utf-8") == "previous export"
    assert [path.name for path in tmp_path.iterdir()] == ["export.json"]


def test_control_named_like_prediction_key(tmp_path):
    exports = FakeExports("completed")
    client = _fake_client(exports)
    client.projects.get = lambda id: SimpleNamespace(label_config=(
        '<View><Image name="image" value="$image"/>'
        '<Choices name="prediction" toName="image"><Choice value="Face"/></Choices></View>'))
    with pytest.raises(ProjectExportError, match="has a control named 'prediction'"):
        export_project(client, 7, tmp_path / "out.json", export_format="csv", with_predictions=True)
    assert exports.created == []


def test_invalid_output_paths(tmp_path):
    client = _fake_client(FakeExports("completed"))
    with pytest.raises(ProjectExportError, match="is a directory"):
        export_project(client, 7, tmp_path)
    with pytest.raises(ProjectExportError, match="does not exist: create it first"):
        export_project(client, 7, tmp_path / "missing" / "out.json")
    with pytest.raises(ProjectExportError, match="invalid export format 'xml'"):
        export_project(client, 7, tmp_path / "out.xml", export_format="xml")
