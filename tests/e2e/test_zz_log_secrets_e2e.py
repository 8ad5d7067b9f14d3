"""No secret in any log of the end-to-end session.

This module's name sorts last in ``tests/e2e``, so pytest runs it after every other e2e
module of the session. It first runs one more round of its own, so the check never reads an
empty session. In that round our server runs with a personal access token, basic auth and
DEBUG logging, connected to the real Label Studio. It predicts an uploaded image, which
exchanges the PAT for access tokens, and a worker pulls the project. Then the test reads
every log registered in ``LogSecrets`` (see ``conftest.py``): Label Studio's, and every
backend's and worker's.
"""

from __future__ import annotations

import re
import secrets
import shutil

import requests
from redis import Redis

from model.label_config import default_label_config_xml
from tests.servers import start_backend, start_worker
from tests.support import THUMBNAIL_IMAGES

from .label_studio import create_sdk_client, import_files

SECRETS_REDIS_URL = "redis://127.0.0.1:6379/12"
# A JSON Web Token: the PAT and every access token Label Studio issues for it have this form,
# so a logged access token is caught without knowing its value.
JWT_PATTERN = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")
REGION = [{"from_name": "choice", "to_name": "image", "type": "choices", "value": {"choices": ["Text"]}}]


def _round_with_every_credential(trained_model, label_studio, log_secrets, tmp_path) -> None:
    """Use the PAT, its access tokens, the legacy token and a basic-auth password once each."""
    password = secrets.token_urlsafe(18)
    log_secrets.add_secret(password, "the backend's BASIC_AUTH_PASS")
    redis = Redis.from_url(SECRETS_REDIS_URL)
    redis.flushdb()
    env = {"MODEL_DIR": str(trained_model.store.root), "LABEL_STUDIO_URL": label_studio.base_url,
           "LABEL_STUDIO_API_KEY": label_studio.pat, "BASIC_AUTH_USER": "label-studio",
           "BASIC_AUTH_PASS": password, "REDIS_URL": SECRETS_REDIS_URL,
           "IMAGE_CACHE_DIR": str(tmp_path / "cache"), "LOG_LEVEL": "DEBUG"}
    backend = start_backend(env, tmp_path / "backend.log")
    try:
        client = create_sdk_client(label_studio)
        project = client.projects.create(title="secrets in logs", label_config=default_label_config_xml())
        images = sorted(THUMBNAIL_IMAGES.rglob("*.jpg"))[:2]
        copies = []
        for index, path in enumerate(images):
            copy = tmp_path / f"secret-round-{index}.jpg"
            shutil.copy(path, copy)
            copies.append(copy)
        task_ids = import_files(client, project.id, copies)
        connection = client.ml.create(project=project.id, url=backend.url, title="thumbnail-ml", is_interactive=True,
                                      auth_method="BASIC_AUTH", basic_auth_user="label-studio",
                                      basic_auth_pass=password)
        assert connection.state == "CO"

        # Label Studio calls /predict with basic auth; our server fetches the upload with an
        # access token exchanged for the PAT.
        client.actions.create(id="retrieve_tasks_predictions", project=project.id,
                              selected_items={"all": False, "included": task_ids})
        predictions = list(client.predictions.list(project=project.id))
        assert len(predictions) == len(task_ids)

        # /setup as Label Studio sends it, with the legacy token as the access token.
        auth = ("label-studio", password)
        setup = requests.post(f"{backend.url}/setup", auth=auth, timeout=10, json={
            "project": f"{project.id}.0", "schema": default_label_config_xml(),
            "hostname": label_studio.base_url, "access_token": label_studio.legacy_token})
        assert setup.status_code == 200, setup.text

        client.annotations.create(id=task_ids[0], result=REGION)
        webhook = requests.post(f"{backend.url}/webhook", auth=auth, timeout=10,
                                json={"action": "START_TRAINING", "project": {"id": project.id}})
        assert webhook.status_code == 200, webhook.text
        worker = start_worker(env, tmp_path / "worker.log", "--burst")
        try:
            assert worker.process.wait(timeout=300) == 0, worker.log()[-3000:]
        finally:
            worker.stop()
        assert "skipped" in worker.log()
    finally:
        backend.stop()
        redis.flushdb()


def test_no_secret_in_session_logs(trained_model, label_studio, log_secrets, tmp_path):
    """Every log of the session is free of the PAT, access tokens, legacy tokens and passwords.

    Nothing secret is written: a user may attach these logs to a bug report as they are.
    """
    _round_with_every_credential(trained_model, label_studio, log_secrets, tmp_path)
    logs = [path for path in log_secrets.logs() if path.exists()]
    assert any(path.name == "label-studio.log" for path in logs)
    assert len(logs) >= 3

    leaks = []
    for path in logs:
        text = path.read_text(errors="replace")
        for value, description in log_secrets.secrets().items():
            if value in text:
                leaks.append(f"{path}: contains {description}")
        for match in JWT_PATTERN.finditer(text):
            leaks.append(f"{path}: contains a JSON Web Token starting {match.group()[:12]}...")
    assert leaks == []
