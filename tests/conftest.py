"""Fixtures shared by the whole suite: one real model, trained once per session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from model.store import DEFAULT_LINEAGE, ModelStore
from tests.support import REPO_ROOT, THUMBNAIL_IMAGES, write_json_min_export

# Enough epochs for the network to beat the prior baseline on the real thumbnails, few
# enough to keep the session fixture under a minute on two cores.
TEST_EPOCHS = 10


@dataclass
class TrainedModel:
    """A model store holding one version trained on the real labelled thumbnails."""

    store: ModelStore
    version: str
    export: Path
    outcome: dict


def run_cli(*args: str, model_dir: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run ``thumbnail-ml`` as a user would, with ``MODEL_DIR`` pointing at a test store."""
    env = {**os.environ, "MODEL_DIR": str(model_dir), "LOG_LEVEL": "INFO"}
    return subprocess.run(
        [sys.executable, "-m", "thumbnail_ml", *args],
        capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=timeout,
    )


@pytest.fixture(scope="session")
def labels_export(tmp_path_factory) -> Path:
    """The labelled real thumbnails as a Label Studio JSON-MIN export."""
    path = tmp_path_factory.mktemp("export") / "thumbnails.json-min.json"
    write_json_min_export(path)
    return path


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory, labels_export) -> TrainedModel:
    """Train one real model through the CLI and publish it to a fresh store."""
    model_dir = tmp_path_factory.mktemp("models")
    result = run_cli(
        "train", "--export", str(labels_export), "--images", str(THUMBNAIL_IMAGES),
        "--epochs", str(TEST_EPOCHS), "--patience", str(TEST_EPOCHS), model_dir=model_dir,
    )
    assert result.returncode == 0, f"training failed:\n{result.stderr[-4000:]}"
    outcome = json.loads(result.stdout)
    store = ModelStore(model_dir)
    assert store.current_version(DEFAULT_LINEAGE) == outcome["version"]
    return TrainedModel(store=store, version=outcome["version"], export=labels_export, outcome=outcome)
