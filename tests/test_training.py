"""Real training on the labelled thumbnails, the serving export, and the CLI around them."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from model.label_config import default_label_config_xml, parse_label_config
from model.letterbox import CropSettings
from model.preprocess import InputSpec
from training.dataset import ImageIndex, build_dataset
from training.exports import read_export
from tests.conftest import run_cli
from tests.support import THUMBNAIL_IMAGES

pytestmark = pytest.mark.slow

CLASSES = list(parse_label_config(default_label_config_xml()).choices)


def _validation_pixels(trained_model):
    manifest = trained_model.store.manifest(trained_model.version)
    config = parse_label_config(default_label_config_xml())
    tasks, _ = read_export(trained_model.export, config, "None")
    dataset = build_dataset(tasks, ImageIndex(THUMBNAIL_IMAGES), CLASSES, InputSpec.from_dict(manifest.input),
                            CropSettings.from_dict(manifest.crop))
    return dataset.split()[1]


def test_trained_version_beats_prior(trained_model):
    manifest = trained_model.store.manifest(trained_model.version)
    assert manifest.classes == CLASSES
    assert manifest.exclusive_class == "None"
    assert manifest.metrics["macro_ap"] > manifest.metrics["prior_macro_ap"]
    assert manifest.counts["train"] + manifest.counts["validation"] == 684
    assert set(manifest.thresholds) == set(CLASSES)
    assert all(0.0 < t < 1.0 for t in manifest.thresholds.values())
    assert manifest.files.keys() == {"model.keras", "model.tflite"}
    assert len(manifest.training["history"]) == manifest.training["epochs_run"]


def test_litert_export_matches_keras(trained_model):
    """The serving export reproduces the Keras model to within 1e-5 on real thumbnails."""
    import keras

    validation = _validation_pixels(trained_model)
    directory = trained_model.store.version_dir(trained_model.version)
    model = keras.models.load_model(directory / "model.keras", compile=False)
    expected = model.predict(validation.pixels.astype(np.float32), verbose=0)
    predictor = trained_model.store.load_predictor(trained_model.version)
    actual = predictor.predict_pixels(validation.pixels)
    assert actual.shape == (len(validation), len(CLASSES))
    assert np.max(np.abs(expected - actual)) <= 1e-5


def test_batched_and_single_predictions_agree(trained_model):
    validation = _validation_pixels(trained_model)
    predictor = trained_model.store.load_predictor(trained_model.version)
    batch = predictor.predict_pixels(validation.pixels[:8])
    singles = np.concatenate([predictor.predict_pixels(validation.pixels[i : i + 1]) for i in range(8)])
    assert np.max(np.abs(batch - singles)) <= 1e-5


def test_cli_predict_folder_with_a_bad_file(trained_model, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    sources = sorted(THUMBNAIL_IMAGES.rglob("*.jpg"))[:6]
    for path in sources:
        shutil.copy(path, folder / path.name)
    (folder / "broken.jpg").write_bytes(b"<html>not an image</html>")
    result = run_cli("predict", str(folder), model_dir=trained_model.store.root)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 7
    broken = [r for r in records if r["image"].endswith("broken.jpg")]
    assert broken[0]["error"] == "unsupported_format"
    good = [r for r in records if "choices" in r]
    assert len(good) == 6
    for record in good:
        assert record["model_version"] == trained_model.version
        assert list(record["probabilities"]) == CLASSES
        assert 0.0 <= record["score"] <= 1.0
        assert record["choices"], "every image gets at least one choice (None when nothing else)"
        assert "None" not in record["choices"] or record["choices"] == ["None"]


def test_cli_evaluate_matches_manifest(trained_model):
    """Evaluating the validation split reproduces the metrics stored at training time."""
    result = run_cli("evaluate", "--export", str(trained_model.export), "--images", str(THUMBNAIL_IMAGES),
                     "--validation-only", model_dir=trained_model.store.root)
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    manifest = trained_model.store.manifest(trained_model.version)
    assert metrics["model_version"] == trained_model.version
    assert metrics["count"] == manifest.counts["validation"]
    assert metrics["macro_ap"] == pytest.approx(manifest.metrics["macro_ap"], abs=1e-4)
    assert "macro-AP" in result.stderr


def test_warm_start_continues_from_current(trained_model, tmp_path):
    """A second run starts from the current version and is judged against it on the same split."""
    from model.store import ModelStore
    from training.trainer import TrainingOptions, train_version

    store = ModelStore(tmp_path / "models")
    shutil.copytree(trained_model.store.root, store.root)
    manifest = store.manifest(trained_model.version)
    config = parse_label_config(default_label_config_xml())
    tasks, _ = read_export(trained_model.export, config, "None")
    dataset = build_dataset(tasks[:300], ImageIndex(THUMBNAIL_IMAGES), CLASSES, InputSpec.from_dict(manifest.input),
                            CropSettings.from_dict(manifest.crop))
    outcome = train_version(dataset, store, "default", "None", TrainingOptions(epochs=2, patience=2),
                            parent=trained_model.version)
    assert outcome.manifest.parent == trained_model.version
    assert outcome.manifest.training["start"] == f"warm start from {trained_model.version}"
    assert outcome.parent_macro_ap is not None
    current = store.current_version("default")
    if outcome.published:
        assert current == outcome.manifest.version
        assert outcome.manifest.metrics["macro_ap"] >= outcome.parent_macro_ap - TrainingOptions().tolerance
    else:
        assert current == trained_model.version
        assert "worse than the parent" in outcome.reason


def test_predict_without_model_says_how_to_train(tmp_path):
    result = run_cli("predict", str(THUMBNAIL_IMAGES), model_dir=tmp_path / "empty")
    assert result.returncode == 1
    assert "no model is trained yet" in result.stderr
    assert "thumbnail-ml train" in result.stderr
