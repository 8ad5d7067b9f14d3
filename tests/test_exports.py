"""Reading Label Studio exports: JSON, JSON-MIN and CSV quirks, and pairing by file name."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from model.label_config import default_label_config_xml, parse_label_config
from training.dataset import ImageIndex, candidate_names, is_validation
from training.exports import ExportError, read_export
from tests.support import EXPORT_10K, REPO_ROOT

CONFIG = parse_label_config(default_label_config_xml())


def _annotation(annotation_id, choices, updated_at, cancelled=False):
    result = [] if choices is None else [
        {"from_name": "choice", "to_name": "image", "type": "choices", "value": {"choices": choices}}
    ]
    return {"id": annotation_id, "result": result, "was_cancelled": cancelled, "updated_at": updated_at}


def test_real_10k_export_report():
    tasks, report = read_export(EXPORT_10K, CONFIG, "None")
    assert report.rows == 10_000
    assert report.tasks == 9_999
    assert report.used == 9_999
    assert report.superseded_annotations == 1
    assert report.no_annotation == 0
    by_id = {task.task_id: task for task in tasks}
    # Task 9480 has two annotations; the later one (updated 16:55) has three choices.
    assert by_id[9480].labels == ["Anime/Cartoon", "Face", "Text"]
    # 487 rows have no choice field but an annotation: they mean "None".
    assert report.empty_annotations == 487
    assert sum(task.labels == ["None"] for task in tasks) == 487


def test_real_10k_label_distribution():
    tasks, _ = read_export(EXPORT_10K, CONFIG, "None")
    text_share = sum("Text" in task.labels for task in tasks) / len(tasks)
    assert text_share == pytest.approx(0.707, abs=0.002)


def test_json_export_latest_non_cancelled(tmp_path):
    export = [
        {"id": 1, "data": {"image": "/data/upload/3/0a1b2c3d-cat.jpg"}, "annotations": [
            _annotation(10, ["Face"], "2026-01-01T10:00:00Z"),
            _annotation(11, ["Text", "Face"], "2026-01-02T10:00:00Z"),
            _annotation(12, ["Weapons"], "2026-01-03T10:00:00Z", cancelled=True),
        ]},
        {"id": 2, "data": {"image": "/data/upload/3/dog.jpg"}, "annotations": [
            _annotation(13, None, "2026-01-01T10:00:00Z"),
        ]},
        {"id": 3, "data": {"image": "x.jpg"}, "annotations": [
            _annotation(14, ["Face"], "2026-01-01T10:00:00Z", cancelled=True),
        ]},
        {"id": 4, "data": {"image": "y.jpg"}, "annotations": []},
        {"id": 5, "data": {"image": "z.jpg"}, "annotations": [_annotation(15, ["Face", "Cat"], "2026-01-01T10:00:00Z")]},
    ]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(export))
    tasks, report = read_export(path, CONFIG, "None")
    by_id = {task.task_id: task for task in tasks}
    assert by_id[1].labels == ["Face", "Text"]
    assert by_id[1].annotation_id == 11
    assert by_id[2].labels == ["None"]
    assert 3 not in by_id
    assert 4 not in by_id
    assert by_id[5].labels == ["Face"]
    assert report.cancelled == 2
    assert report.only_cancelled == 1
    assert report.no_annotation == 1
    assert report.superseded_annotations == 1
    assert report.unknown_labels == {"Cat": 1}


def test_json_min_quirks(tmp_path):
    rows = [
        {"image": "/data/local-files/?d=a/1.jpg", "id": 1, "choice": "Weapons", "annotation_id": 1, "annotator": 1,
         "updated_at": "2026-01-01"},
        {"image": "/data/local-files/?d=a/2.jpg", "id": 2, "choice": {"choices": ["Minecraft", "Text"]},
         "annotation_id": 2, "annotator": 1, "updated_at": "2026-01-01"},
        {"image": "/data/local-files/?d=a/3.jpg", "id": 3, "choice": {"choices": []}, "annotation_id": 3,
         "annotator": 1, "updated_at": "2026-01-01"},
        {"image": "/data/local-files/?d=a/4.jpg", "id": 4, "annotation_id": 4, "annotator": 1, "updated_at": "2026-01-01"},
        {"image": "/data/local-files/?d=a/5.jpg", "id": 5, "annotation_id": None, "annotator": None, "created_at": None},
    ]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(rows))
    tasks, report = read_export(path, CONFIG, "None")
    labels = {task.task_id: task.labels for task in tasks}
    assert labels == {1: ["Weapons"], 2: ["Minecraft", "Text"], 3: ["None"], 4: ["None"]}
    assert report.no_annotation == 1


def test_csv_export(tmp_path):
    path = tmp_path / "export.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "id", "choice", "annotator", "annotation_id", "created_at", "updated_at", "lead_time"])
        writer.writerow(["/data/upload/1/ab12cd34-x.jpg", 1, "Weapons", 1, 10, "t", "t", 1.0])
        writer.writerow(["/data/upload/1/y.jpg", 2, '{"choices":["Minecraft","Text"]}', 1, 11, "t", "t", 1.0])
        writer.writerow(["/data/upload/1/z.jpg", 3, "", 1, 12, "t", "t", 1.0])
        writer.writerow(["/data/upload/1/w.jpg", 4, "", "", "", "", "", ""])
    tasks, report = read_export(path, CONFIG, "None")
    labels = {task.task_id: task.labels for task in tasks}
    assert labels == {1: ["Weapons"], 2: ["Minecraft", "Text"], 3: ["None"]}
    assert report.no_annotation == 1


def test_not_an_export(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("just some text\n")
    with pytest.raises(ExportError, match="no 'id' column"):
        read_export(path, CONFIG, "None")
    with pytest.raises(ExportError, match="not found"):
        read_export(tmp_path / "missing.json", CONFIG, "None")


@pytest.mark.parametrize(
    "url, names",
    [
        ("/data/upload/12/dc6db937-1V4yCv9viO0.jpg", ["dc6db937-1V4yCv9viO0.jpg", "1V4yCv9viO0.jpg"]),
        ("/data/local-files/?d=thumbnails/TeCYeM46Fb8.jpg", ["TeCYeM46Fb8.jpg"]),
        ("/data/local-files?d=my%20folder/a%20b.jpg", ["a b.jpg"]),
        ("https://i.ytimg.com/vi/dQw4w9WgXcQ/hqdefault.jpg", ["hqdefault.jpg", "dQw4w9WgXcQ.jpg"]),
        ("images/clip.png", ["clip.png"]),
        ("http://example.org/img/photo.webp?size=large", ["photo.webp"]),
    ],
)
def test_candidate_names(url, names):
    assert candidate_names(url) == names


def test_image_index_ambiguous_names_never_match(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "same.jpg").write_bytes(b"1")
    (tmp_path / "b" / "same.jpg").write_bytes(b"2")
    (tmp_path / "b" / "unique.jpg").write_bytes(b"3")
    index = ImageIndex(tmp_path)
    assert index.find("/data/upload/1/same.jpg") == (None, "ambiguous")
    assert index.find("/data/upload/1/unique.jpg") == (tmp_path / "b" / "unique.jpg", "found")
    assert index.find("/data/upload/1/other.jpg") == (None, "missing")


def test_validation_split_is_stable_and_about_a_fifth():
    flags = [is_validation(task_id) for task_id in range(1, 5001)]
    assert 0.18 < sum(flags) / len(flags) < 0.22
    assert flags == [is_validation(task_id) for task_id in range(1, 5001)]


def test_train_refuses_10k_export_without_images(tmp_path):
    """The real export's images are not available: the report states it and training stops."""
    images = tmp_path / "images"
    images.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "thumbnail_ml", "train", "--export", str(EXPORT_10K), "--images", str(images)],
        capture_output=True, text=True, cwd=REPO_ROOT, env={"MODEL_DIR": str(tmp_path / "models"), "PATH": ""},
    )
    assert result.returncode == 1
    assert '"image_missing": 9999' in result.stderr
    assert "nothing to train on: 9,999 annotated tasks" in result.stderr
    assert "9,999 of their images were not found" in result.stderr
    assert not (tmp_path / "models").exists()
