"""The model store: version ids, atomic publication, crashes, rollback and lineages.

These tests write placeholder model files: they check the store's file handling, which does
not read the files' content. Training and serving real models is covered in test_training.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

from model.manifest import Manifest
from model.store import (
    DEFAULT_LINEAGE, ModelStore, StoreError, VersionNotFound, lineage_for_project, parse_version,
)
from tests.support import REPO_ROOT


def _manifest(**changes) -> Manifest:
    values = dict(
        version="", lineage="", parent=None, created_at="", architecture="shallownet3",
        classes=["Face", "Text", "None"], exclusive_class="None",
        input={"height": 126, "width": 224, "channels": 3, "colour": "rgb"}, crop={},
        thresholds={"Face": 0.5, "Text": 0.4, "None": 0.5}, metrics={"macro_ap": 0.5, "prior_macro_ap": 0.3},
        counts={"train": 10, "validation": 5},
    )
    values.update(changes)
    return Manifest(**values)


def _publish(store: ModelStore, lineage: str = DEFAULT_LINEAGE, payload: bytes = b"weights", **changes) -> Manifest:
    staging = store.create_staging_dir()
    (staging / "model.tflite").write_bytes(payload)
    (staging / "model.keras").write_bytes(payload + b"-keras")
    return store.publish(lineage, staging, _manifest(**changes))


def test_publish_sets_current_and_version_id(tmp_path):
    store = ModelStore(tmp_path)
    manifest = _publish(store)
    assert store.current_version(DEFAULT_LINEAGE) == manifest.version
    assert parse_version(manifest.version) == (DEFAULT_LINEAGE, 1)
    stored = store.manifest(manifest.version)
    assert stored.files.keys() == {"model.tflite", "model.keras"}
    assert stored.created_at.endswith("+00:00")
    assert not any((tmp_path / "staging").iterdir())


def test_version_ids_follow_content(tmp_path):
    first = _publish(ModelStore(tmp_path / "a"), payload=b"same")
    second = _publish(ModelStore(tmp_path / "b"), payload=b"same")
    third = _publish(ModelStore(tmp_path / "c"), payload=b"other")
    assert first.version == second.version
    assert first.version != third.version


def test_versions_numbered_per_lineage(tmp_path):
    store = ModelStore(tmp_path)
    _publish(store, payload=b"1")
    second = _publish(store, payload=b"2")
    project = _publish(store, lineage="project-7", payload=b"3")
    assert parse_version(second.version)[1] == 2
    assert project.version.startswith("project-7-v1-")
    assert [m.version for m in store.versions(DEFAULT_LINEAGE)][-1] == second.version


def test_crash_before_rename_keeps_current(tmp_path, monkeypatch):
    """A failure while the version is being moved into place leaves CURRENT untouched."""
    store = ModelStore(tmp_path)
    first = _publish(store, payload=b"1")

    def failing_rename(source, target):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "rename", failing_rename)
    with pytest.raises(OSError):
        _publish(store, payload=b"2")
    monkeypatch.undo()
    assert store.current_version(DEFAULT_LINEAGE) == first.version
    assert [m.version for m in store.versions(DEFAULT_LINEAGE)] == [first.version]


def test_killed_publisher_leaves_no_partial_version(tmp_path):
    """A process killed with SIGKILL while writing a version leaves only a staging directory."""
    store = ModelStore(tmp_path)
    first = _publish(store, payload=b"1")
    script = (
        "import os, signal, sys\n"
        "from model.store import ModelStore\n"
        f"store = ModelStore({str(tmp_path)!r})\n"
        "staging = store.create_staging_dir()\n"
        "(staging / 'model.tflite').write_bytes(b'half')\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT)
    assert result.returncode == -9
    assert store.current_version(DEFAULT_LINEAGE) == first.version
    assert len(store.versions(DEFAULT_LINEAGE)) == 1
    # The next publish works and does not pick up the leftover.
    second = _publish(store, payload=b"2")
    assert store.current_version(DEFAULT_LINEAGE) == second.version


# Where a publishing process dies: right after the version directory moved into versions/,
# and right before CURRENT is replaced (its temporary file already written).
KILL_POINTS = {
    "after_rename": (
        "real = os.rename\n"
        "def rename(source, target):\n"
        "    real(source, target)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "store_module.os.rename = rename\n"
    ),
    "before_current_replace": (
        "def replace(source, target):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "store_module.os.replace = replace\n"
    ),
}


@pytest.mark.parametrize("kill_point", sorted(KILL_POINTS))
def test_killed_during_publish_keeps_current(tmp_path, kill_point):
    """SIGKILL inside ``publish`` leaves CURRENT on the old version, and a retried publish works.

    What can remain is a complete version that is not current (killed after the rename),
    never a partial one: every file matches the checksum in its manifest.
    """
    store = ModelStore(tmp_path)
    first = _publish(store, payload=b"1")
    script = (
        "import os, signal\n"
        "import model.store as store_module\n"
        "from tests.test_store import _publish\n"
        + KILL_POINTS[kill_point]
        + f"_publish(store_module.ModelStore({str(tmp_path)!r}), payload=b'2')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT)

    assert result.returncode == -9
    assert store.current_version(DEFAULT_LINEAGE) == first.version
    for manifest in store.versions(DEFAULT_LINEAGE):
        version_dir = store.version_dir(manifest.version)
        for name, digest in manifest.files.items():
            assert hashlib.sha256((version_dir / name).read_bytes()).hexdigest() == digest, (manifest.version, name)
    retried = _publish(store, payload=b"3")
    assert store.current_version(DEFAULT_LINEAGE) == retried.version


def test_publish_without_serving_export_rejected(tmp_path):
    store = ModelStore(tmp_path)
    staging = store.create_staging_dir()
    (staging / "model.keras").write_bytes(b"x")
    with pytest.raises(StoreError, match="no model.tflite"):
        store.publish(DEFAULT_LINEAGE, staging, _manifest())
    assert store.current_version(DEFAULT_LINEAGE) is None


def test_rollback_and_history(tmp_path):
    store = ModelStore(tmp_path)
    first = _publish(store, payload=b"1")
    second = _publish(store, payload=b"2")
    assert store.rollback(first.version) == second.version
    assert store.current_version(DEFAULT_LINEAGE) == first.version
    actions = [(entry["action"], entry["version"]) for entry in store.history(DEFAULT_LINEAGE)]
    assert actions == [("publish", first.version), ("publish", second.version), ("rollback", first.version)]


def test_rollback_unknown_version(tmp_path):
    store = ModelStore(tmp_path)
    with pytest.raises(VersionNotFound, match="not found"):
        store.rollback("default-v9-0123abcd")
    with pytest.raises(VersionNotFound, match="invalid model version"):
        store.rollback("latest")


def test_project_falls_back_to_default_lineage(tmp_path):
    store = ModelStore(tmp_path)
    default = _publish(store, payload=b"1")
    assert store.resolve("project-3") == default.version
    own = _publish(store, lineage="project-3", payload=b"2")
    assert store.resolve("project-3") == own.version
    assert store.resolve("project-4") == default.version


@pytest.mark.parametrize("project, lineage", [(None, "default"), (5, "project-5"), ("12.1796413751", "project-12")])
def test_lineage_for_project(project, lineage):
    assert lineage_for_project(project) == lineage


@pytest.mark.parametrize("project", ["abc", "0", "-3", ""])
def test_lineage_for_invalid_project(project):
    with pytest.raises(StoreError, match="invalid Label Studio project id"):
        lineage_for_project(project)


def test_pointer_state_changes_on_publish(tmp_path):
    store = ModelStore(tmp_path)
    assert store.pointer_state(DEFAULT_LINEAGE) is None
    _publish(store, payload=b"1")
    before = store.pointer_state(DEFAULT_LINEAGE)
    _publish(store, payload=b"2")
    assert store.pointer_state(DEFAULT_LINEAGE) != before


def test_models_cli_list_show_rollback(tmp_path):
    store = ModelStore(tmp_path)
    first = _publish(store, payload=b"1")
    second = _publish(store, payload=b"2")
    env = {**os.environ, "MODEL_DIR": str(tmp_path)}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "thumbnail_ml", *args], capture_output=True, text=True,
                              cwd=REPO_ROOT, env=env)

    listing = cli("models", "list")
    assert listing.returncode == 0
    current_rows = [line for line in listing.stdout.splitlines() if line.startswith(second.version)]
    assert "*" in current_rows[0]
    shown = cli("models", "show", first.version, "--json")
    assert json.loads(shown.stdout)["version"] == first.version
    rolled = cli("models", "rollback", first.version)
    assert rolled.returncode == 0
    assert f"now serves {first.version} (was {second.version})" in rolled.stdout
    missing = cli("models", "rollback", "default-v9-0123abcd")
    assert missing.returncode == 1
    assert "not found" in missing.stderr


def test_missing_model_names_project_lineages(tmp_path):
    """Asking for the default lineage of a store that only has a project's model names that project."""
    store = ModelStore(tmp_path)
    _publish(store, lineage="project-3")
    result = subprocess.run([sys.executable, "-m", "thumbnail_ml", "report"], cwd=REPO_ROOT, capture_output=True,
                            text=True, env={**os.environ, "MODEL_DIR": str(tmp_path)})
    assert result.returncode != 0
    assert "no model is trained yet" in result.stderr
    assert "project-3" in result.stderr
    assert "--project 3" in result.stderr
