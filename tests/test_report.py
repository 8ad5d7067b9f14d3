"""The model report: files written at training time, their numbers, the HTML page and the CLI.

Synthetic labels and probabilities stand in for a validation split: the report only reads
arrays and manifests. The CLI test runs on the session's really trained model, which was
published without a report directory, so it covers the manifest-only fallback.
"""

from __future__ import annotations

import json
import shutil
import struct

import numpy as np
import pytest

from model.manifest import Manifest
from model.metrics import average_precision, evaluate
from model.report import (
    CONFUSION_FILE, PLOT_FILES, PR_CURVES_FILE, REPORT_DIR, REPORT_FILE, TRAINING_CURVE_FILE, format_text,
    load_report, precision_recall_curve, render_html, write_report,
)
from model.store import DEFAULT_LINEAGE, ModelStore
from tests.conftest import run_cli

CLASSES = ["Adult content", "Weapons", "Violence", "Minecraft", "Anime/Cartoon", "Face", "Money/Riches",
           "Focus Shape", "Text", "None"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DATA_URI = "data:image/png;base64,"


def _validation(seed: int = 0, images: int = 80) -> tuple[np.ndarray, np.ndarray]:
    """Labels with no positive for Adult content, and probabilities that rank positives higher."""
    rng = np.random.default_rng(seed)
    labels = rng.random((images, len(CLASSES))) < np.linspace(0.05, 0.7, len(CLASSES))
    labels[:, 0] = False
    # Minecraft is made hard (noise only) so that the ratings differ between classes.
    signal = np.where(np.arange(len(CLASSES)) == 3, 0.0, 0.45)
    probabilities = np.clip(labels * signal + rng.random(labels.shape) * 0.6, 0.0, 1.0)
    return labels, probabilities


def _manifest(labels: np.ndarray, probabilities: np.ndarray, history: list[dict] | None = None,
              parent: str | None = None, thresholds: dict | None = None) -> Manifest:
    thresholds = thresholds or {name: 0.3 + 0.04 * index for index, name in enumerate(CLASSES)}
    metrics = evaluate(labels, probabilities, CLASSES, np.array([thresholds[name] for name in CLASSES]))
    if history is None:
        history = [{"epoch": epoch, "epochs": 6, "loss": round(1.0 / epoch, 4),
                    "val_macro_ap": round(0.4 + 0.05 * epoch, 4), "best_val_macro_ap": 0.0, "seconds": 1.0}
                   for epoch in range(1, 7)]
    return Manifest(
        version="", lineage=DEFAULT_LINEAGE, parent=parent, created_at="", architecture="shallownet3",
        classes=list(CLASSES), exclusive_class="None",
        input={"height": 126, "width": 224, "channels": 3, "colour": "rgb"}, crop={},
        thresholds=thresholds, counts={"train": 320, "validation": int(labels.shape[0])}, metrics=metrics,
        training={"history": history, "epochs_run": len(history), "best_epoch": len(history),
                  "parent_macro_ap": 0.5 if parent else None},
    )


def _parent_manifest() -> Manifest:
    labels, probabilities = _validation(seed=1)
    manifest = _manifest(labels, probabilities)
    # The parent knew a class that the new version dropped.
    manifest.metrics["classes"].append({**manifest.metrics["classes"][1], "name": "Gore"})
    manifest.version = "default-v1-0a1b2c3d"
    manifest.created_at = "2026-01-01T00:00:00+00:00"
    return manifest


def _png_size(content: bytes) -> tuple[int, int]:
    # The IHDR chunk follows the 8-byte signature: length, type, then width and height.
    return struct.unpack(">II", content[16:24])


def _publish(store: ModelStore, manifest: Manifest, labels=None, probabilities=None, parent=None) -> Manifest:
    """Publish a version with a placeholder model file, with a report when labels are given."""
    staging = store.create_staging_dir()
    (staging / "model.tflite").write_bytes(b"placeholder serving model " + manifest.to_json().encode())
    if labels is not None:
        write_report(staging, manifest, labels, probabilities, parent)
    return store.publish(manifest.lineage, staging, manifest)


# -- write_report ----------------------------------------------------------------------------


def test_write_report_files(tmp_path):
    labels, probabilities = _validation()
    written = write_report(tmp_path, _manifest(labels, probabilities), labels, probabilities, _parent_manifest())

    assert written == [PR_CURVES_FILE, CONFUSION_FILE, TRAINING_CURVE_FILE, REPORT_FILE]
    assert sorted(path.name for path in (tmp_path / REPORT_DIR).iterdir()) == sorted(written)
    for name in PLOT_FILES:
        content = (tmp_path / REPORT_DIR / name).read_bytes()
        assert content[:8] == PNG_SIGNATURE, name
        assert len(content) > 10_000, f"{name} is only {len(content)} bytes"
        assert len(content) < 400_000, f"{name} is {len(content)} bytes, expected a small file at dpi 100"
        width, height = _png_size(content)
        assert 400 <= width <= 1600, (name, width)
        assert 200 <= height <= 1200, (name, height)


def test_report_json_matches_evaluate(tmp_path):
    labels, probabilities = _validation()
    manifest = _manifest(labels, probabilities)
    write_report(tmp_path, manifest, labels, probabilities, None)
    report = json.loads((tmp_path / REPORT_DIR / REPORT_FILE).read_text("utf-8"))

    thresholds = np.array([manifest.thresholds[name] for name in CLASSES])
    expected = evaluate(labels, probabilities, CLASSES, thresholds)
    assert report["macro_ap"] == expected["macro_ap"]
    assert report["prior_macro_ap"] == expected["prior_macro_ap"]
    assert report["validation_count"] == labels.shape[0]
    assert [row["name"] for row in report["classes"]] == CLASSES
    for row, reference in zip(report["classes"], expected["classes"]):
        for key, value in reference.items():
            assert row[key] == value, (row["name"], key)
        assert row["tp"] + row["fn"] == row["support"]
        assert row["tp"] + row["fp"] + row["fn"] + row["tn"] == labels.shape[0]
        predicted = int(np.sum(probabilities[:, CLASSES.index(row["name"])] >= manifest.thresholds[row["name"]]))
        assert row["tp"] + row["fp"] == predicted


def test_report_parent_comparison(tmp_path):
    labels, probabilities = _validation()
    manifest = _manifest(labels, probabilities, parent="default-v1-0a1b2c3d")
    parent = _parent_manifest()
    write_report(tmp_path, manifest, labels, probabilities, parent)
    comparison = json.loads((tmp_path / REPORT_DIR / REPORT_FILE).read_text("utf-8"))["parent_comparison"]

    assert comparison["version"] == parent.version
    assert comparison["parent_macro_ap"] == parent.metrics["macro_ap"]
    assert comparison["macro_ap_change"] == round(manifest.metrics["macro_ap"] - parent.metrics["macro_ap"], 4)
    assert comparison["same_split_parent_macro_ap"] == 0.5
    assert comparison["classes_only_in_parent"] == ["Gore"]
    parent_ap = {row["name"]: row["average_precision"] for row in parent.metrics["classes"]}
    for row in comparison["classes"]:
        if row["average_precision"] is None:
            assert row["change"] is None
            assert row["trend"] == "n/a"
        else:
            assert row["change"] == round(row["average_precision"] - parent_ap[row["name"]], 4)
            assert row["trend"] in ("better", "worse", "unchanged")


def test_report_without_parent(tmp_path):
    labels, probabilities = _validation()
    write_report(tmp_path, _manifest(labels, probabilities), labels, probabilities, None)
    report = json.loads((tmp_path / REPORT_DIR / REPORT_FILE).read_text("utf-8"))
    assert report["parent_comparison"] is None
    assert report["parent"] is None


def test_class_without_positive_is_na(tmp_path):
    labels, probabilities = _validation()
    write_report(tmp_path, _manifest(labels, probabilities), labels, probabilities, None)
    adult = json.loads((tmp_path / REPORT_DIR / REPORT_FILE).read_text("utf-8"))["classes"][0]
    assert adult["name"] == "Adult content"
    assert adult["support"] == 0
    assert adult["average_precision"] is None
    assert adult["rating"] == "n/a"


@pytest.mark.parametrize("history", [[], [{"epoch": 1, "loss": 0.7, "val_macro_ap": 0.41}]], ids=["none", "one"])
def test_report_short_history(tmp_path, history):
    labels, probabilities = _validation()
    write_report(tmp_path, _manifest(labels, probabilities, history=history), labels, probabilities, None)
    content = (tmp_path / REPORT_DIR / TRAINING_CURVE_FILE).read_bytes()
    assert content[:8] == PNG_SIGNATURE
    # An empty history draws only a line of text, about 4 KB.
    assert len(content) > 2_000


def test_write_report_rejects_wrong_shape(tmp_path):
    labels, probabilities = _validation()
    manifest = _manifest(labels, probabilities)
    with pytest.raises(ValueError, match=r"labels have shape \(80, 9\), expected \(images, 10\)"):
        write_report(tmp_path, manifest, labels[:, 1:], probabilities[:, 1:], None)
    with pytest.raises(ValueError, match="probabilities have shape"):
        write_report(tmp_path, manifest, labels, probabilities[:10], None)
    with pytest.raises(ValueError, match="no validation images"):
        write_report(tmp_path, manifest, labels[:0], probabilities[:0], None)


def test_precision_recall_curve_area_is_ap():
    labels, probabilities = _validation()
    for column in range(1, len(CLASSES)):
        recall, precision = precision_recall_curve(labels[:, column], probabilities[:, column])
        # A step drawn with where="pre" draws precision[i] over (recall[i-1], recall[i]].
        area = float(np.sum(np.diff(recall) * precision[1:]))
        assert area == pytest.approx(average_precision(labels[:, column], probabilities[:, column]))
    assert precision_recall_curve(labels[:, 0], probabilities[:, 0]) is None


# -- reading back: text and HTML -------------------------------------------------------------


@pytest.fixture
def store_with_report(tmp_path) -> tuple[ModelStore, Manifest, Manifest]:
    """A store with a parent version (no report) and a child version published with a report."""
    store = ModelStore(tmp_path / "models")
    parent_labels, parent_probabilities = _validation(seed=1)
    parent = _publish(store, _manifest(parent_labels, parent_probabilities))
    labels, probabilities = _validation()
    child = _publish(store, _manifest(labels, probabilities, parent=parent.version), labels, probabilities, parent)
    return store, parent, child


def test_published_version_keeps_report(store_with_report):
    store, _, child = store_with_report
    report_dir = store.version_dir(child.version) / REPORT_DIR
    assert sorted(path.name for path in report_dir.iterdir()) == sorted([*PLOT_FILES, REPORT_FILE])
    # The report is not part of the version's identity: only top-level files are hashed.
    assert set(child.files) == {"model.tflite"}


def test_render_html_embeds_three_plots(store_with_report):
    store, parent, child = store_with_report
    page = render_html(store, child.version)

    assert page.count(DATA_URI) == 3
    for name in CLASSES:
        assert name in page
    assert child.version in page
    assert f"Compared with parent {parent.version}" in page
    assert "n/a" in page
    assert "Good at:" in page or "Fair at:" in page
    assert "Weak at:" in page
    # Self-contained: no external stylesheet, script or image.
    assert "http://" not in page
    assert "https://" not in page
    assert "<script" not in page


def test_render_html_sorts_by_ap(store_with_report):
    store, _, child = store_with_report
    page = render_html(store, child.version)
    table = page[page.index("<h2>Per class, best first</h2>"):]
    rows = sorted(child.metrics["classes"], key=lambda row: -(row["average_precision"] or -1.0))
    positions = [table.index(f"<td class=name>{row['name']}</td>") for row in rows]
    assert positions == sorted(positions)


def test_render_html_manifest_only(store_with_report):
    store, parent, _ = store_with_report
    page = render_html(store, parent.version)

    assert page.count(DATA_URI) == 1, "only the training curve can be drawn from a manifest"
    assert "no report directory" in page
    assert page.count('class="missing">Missing:') == 2
    for name in CLASSES:
        assert name in page


def test_format_text_lists_classes_and_parent(store_with_report):
    store, parent, child = store_with_report
    text = format_text(load_report(store, child.version))
    lines = text.splitlines()
    assert lines[0] == f"model version  {child.version} (current version of lineage default)"
    assert f"compared with parent {parent.version}: macro-AP" in text
    for name in CLASSES:
        assert any(line.startswith(name) for line in lines), name
    adult = next(line for line in lines if line.startswith("Adult content"))
    assert "n/a" in adult


# -- the command -----------------------------------------------------------------------------


def test_report_cli_html_on_trained_model(trained_model, tmp_path):
    """A version published by the trainer carries its report: the page has all three plots."""
    version_dir = trained_model.store.version_dir(trained_model.version)
    assert (version_dir / "report" / "report.json").is_file()
    out = tmp_path / "report.html"
    result = run_cli("report", "--html", str(out), model_dir=trained_model.store.root, timeout=120)
    assert result.returncode == 0, result.stderr

    manifest = trained_model.store.manifest(trained_model.version)
    assert result.stdout.startswith(f"model version  {trained_model.version} (current version")
    for name in manifest.classes:
        assert name in result.stdout
    assert "no report directory" not in result.stdout
    page = out.read_text("utf-8")
    assert page.count(DATA_URI) == 3
    for name in manifest.classes:
        assert name in page
    assert f"wrote the report page of {trained_model.version} to {out}" in result.stderr
    assert [path.name for path in tmp_path.iterdir()] == [out.name], "a temporary file was left beside the page"


def test_report_cli_without_report_directory(trained_model, tmp_path):
    """Older versions have no report directory: the page is built from the manifest alone."""
    store_copy = tmp_path / "models"
    shutil.copytree(trained_model.store.root, store_copy)
    shutil.rmtree(ModelStore(store_copy).version_dir(trained_model.version) / "report")
    out = tmp_path / "report.html"
    result = run_cli("report", "--html", str(out), model_dir=store_copy, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "no report directory" in result.stdout
    assert out.read_text("utf-8").count(DATA_URI) == 1


def test_report_cli_errors(tmp_path):
    empty = run_cli("report", model_dir=tmp_path / "empty", timeout=120)
    assert empty.returncode == 1
    assert "no model is trained yet" in empty.stderr

    unknown = run_cli("report", "--version", "default-v9-00000000", model_dir=tmp_path / "empty", timeout=120)
    assert unknown.returncode == 1
    assert "model version 'default-v9-00000000' not found" in unknown.stderr
