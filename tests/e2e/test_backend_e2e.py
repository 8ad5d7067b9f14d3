"""Pre-annotation inside a real Label Studio 1.23.2, with both token kinds.

Label Studio connects to our server as an ML backend, runs "Retrieve predictions", and the
predictions it stores are checked through its API.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import urlparse

import pytest
import requests

from model.label_config import default_label_config_xml
from tests.servers import start_backend
from tests.support import THUMBNAIL_IMAGES

from .label_studio import create_sdk_client, import_files

# Real thumbnails of several sizes: letterboxed 480x360, 1280x720, 320x180, 640x480.
UPLOADED = [
    "basile-bron__Thumbnail-clickbait-detection/0.0_-qggDCWJYjk.jpg",
    "Cengineer00__thumbnail-scorer/2shHryscTng.jpg",
    "chaejin98330__AIP2023Spring_Team6/medium_1fKbJ6kRUtM.jpg",
]
LOCAL_FILES = [
    "mosunset__youtube_watch_thumbnails/sddefault.jpg",
    "basile-bron__Thumbnail-clickbait-detection/0.0_0CHGntdzrmg.jpg",
    "Cengineer00__thumbnail-scorer/8QhAa6NbBTM.jpg",
]


def _create_project(client, document_root: Path, name: str) -> tuple[int, list[int]]:
    """Create a project with the default config, with tasks by upload and by local-files storage."""
    project = client.projects.create(title=f"thumbnails {name}", label_config=default_label_config_xml())
    task_ids = import_files(client, project.id, [THUMBNAIL_IMAGES / relative for relative in UPLOADED])

    folder = document_root / f"thumbs-{name}"
    folder.mkdir()
    for relative in LOCAL_FILES:
        shutil.copy(THUMBNAIL_IMAGES / relative, folder / Path(relative).name)
    storage = client.import_storage.local.create(project=project.id, path=str(folder), use_blob_urls=True,
                                                 title="thumbnails on disk")
    client.import_storage.local.sync(id=storage.id)
    all_tasks = list(client.tasks.list(project=project.id, fields="all"))
    assert len(all_tasks) == len(UPLOADED) + len(LOCAL_FILES)
    assert {t.id for t in all_tasks} >= set(task_ids)
    # Label Studio writes relative URLs, or absolute ones when LABEL_STUDIO_HOST is set.
    paths = [urlparse(t.data["image"]).path for t in all_tasks]
    assert sum(path.startswith("/data/upload/") for path in paths) == len(UPLOADED), paths
    assert sum(path.startswith("/data/local-files") for path in paths) == len(LOCAL_FILES), paths
    return project.id, [t.id for t in all_tasks]


def _retrieve_predictions(client, project_id: int) -> None:
    client.actions.create(id="retrieve_tasks_predictions", project=project_id,
                          selected_items={"all": True, "excluded": []})


def _predictions_by_task(client, project_id: int) -> dict[int, list]:
    by_task: dict[int, list] = {}
    for prediction in client.predictions.list(project=project_id):
        by_task.setdefault(prediction.task, []).append(prediction)
    return by_task


def _check_round(client, project_id: int, task_ids: list[int], version: str) -> None:
    _retrieve_predictions(client, project_id)
    predictions = _predictions_by_task(client, project_id)
    assert set(predictions) == set(task_ids)
    for task_id, found in predictions.items():
        assert len(found) == 1, f"task {task_id} has {len(found)} predictions"
        prediction = found[0]
        assert prediction.model_version == version
        assert prediction.score is not None and 0.0 <= prediction.score <= 1.0
        region = prediction.result[0]
        assert (region["from_name"], region["to_name"], region["type"]) == ("choice", "image", "choices")
        assert region["value"]["choices"]

    # A second run must not add any prediction: the version equals the one /setup returned.
    _retrieve_predictions(client, project_id)
    again = _predictions_by_task(client, project_id)
    assert {task_id: len(found) for task_id, found in again.items()} == {task_id: 1 for task_id in task_ids}


@pytest.fixture(scope="module")
def pat_backend(trained_model, label_studio, tmp_path_factory):
    """Our server with a personal access token, against the shared server (legacy tokens off)."""
    server = start_backend(
        {"MODEL_DIR": str(trained_model.store.root), "LABEL_STUDIO_URL": label_studio.base_url,
         "LABEL_STUDIO_API_KEY": label_studio.pat,
         "IMAGE_CACHE_DIR": str(tmp_path_factory.mktemp("cache-pat"))},
        tmp_path_factory.mktemp("backend-pat") / "backend.log",
    )
    yield server
    server.stop()


def test_predictions_with_personal_access_token(trained_model, label_studio, label_studio_document_root,
                                                pat_backend):
    client = create_sdk_client(label_studio)
    project_id, task_ids = _create_project(client, label_studio_document_root, "pat")
    backend = client.ml.create(project=project_id, url=pat_backend.url, title="thumbnail-ml",
                               is_interactive=True, auto_update=True)
    assert backend.state == "CO"
    setup = requests.post(f"{pat_backend.url}/setup", json={"project": f"{project_id}.0",
                                                            "schema": default_label_config_xml()}, timeout=5)
    assert setup.json()["model_version"] == trained_model.version
    _check_round(client, project_id, task_ids, trained_model.version)
    assert label_studio.pat not in pat_backend.log()


def test_predictions_with_legacy_token(trained_model, label_studio_legacy, tmp_path_factory):
    """The backend has no credentials of its own: it uses the legacy token /setup hands over."""
    server = start_backend(
        {"MODEL_DIR": str(trained_model.store.root), "LABEL_STUDIO_URL": "", "LABEL_STUDIO_API_KEY": "",
         "IMAGE_CACHE_DIR": str(tmp_path_factory.mktemp("cache-legacy"))},
        tmp_path_factory.mktemp("backend-legacy") / "backend.log",
    )
    try:
        client = create_sdk_client(label_studio_legacy, api_key=label_studio_legacy.legacy_token)
        project_id, task_ids = _create_project(client, label_studio_legacy.document_root, "legacy")
        backend = client.ml.create(project=project_id, url=server.url, title="thumbnail-ml",
                                   is_interactive=True, auto_update=True)
        assert backend.state == "CO"
        _check_round(client, project_id, task_ids, trained_model.version)
        assert label_studio_legacy.legacy_token not in server.log()
    finally:
        server.stop()
