"""The ML backend's HTTP contract, with the real trained model, real Redis and real HTTP image servers."""

from __future__ import annotations

import base64
import shutil
import time

import pytest
from redis import Redis

from backend.app import create_app
from model.label_config import default_label_config_xml
from model.manifest import Manifest
from model.store import ModelStore
from tests.http_fixtures import Route, RoutedServer
from tests.support import THUMBNAIL_IMAGES
from tests.test_queue import TEST_REDIS_URL
from thumbnail_ml.settings import Settings

CONFIG = default_label_config_xml()
LEGACY_TOKEN = "legacy-token-for-tests"
JPEG = (THUMBNAIL_IMAGES / "basile-bron__Thumbnail-clickbait-detection/0.0_-qggDCWJYjk.jpg").read_bytes()


@pytest.fixture
def label_studio_files():
    """A stand-in for Label Studio's file serving: one upload, a 403 and an empty HTML response."""
    server = RoutedServer()
    server.routes["/data/upload/1/ab12cd34-good.jpg"] = Route(200, JPEG, {"Content-Type": "image/jpeg"})
    server.routes["/data/local-files/?d=private/forbidden.jpg"] = Route(403, b"")
    server.routes["/data/local-files/?d=thumbs/empty.jpg"] = Route(200, b"", {"Content-Type": "text/html"})
    yield server
    server.close()


@pytest.fixture
def store(trained_model, tmp_path) -> ModelStore:
    """A private copy of the trained model's store, so tests may publish and roll back."""
    shutil.copytree(trained_model.store.root, tmp_path / "models")
    return ModelStore(tmp_path / "models")


def _settings(tmp_path, store: ModelStore, **changes) -> Settings:
    values = dict(model_dir=store.root, image_cache_dir=tmp_path / "cache", redis_url=TEST_REDIS_URL,
                  fetch_connect_timeout=1.0, fetch_read_timeout=2.0)
    values.update(changes)
    return Settings(**values)


@pytest.fixture
def client(tmp_path, store, label_studio_files):
    settings = _settings(tmp_path, store, label_studio_url=label_studio_files.url, label_studio_api_key=LEGACY_TOKEN)
    app = create_app(settings)
    with app.test_client() as test_client:
        yield test_client


def _task(task_id: int, url: str) -> dict:
    return {"id": task_id, "data": {"image": url}}


def _predict(client, tasks, project="1.1796413751", config=CONFIG):
    return client.post("/predict", json={"tasks": tasks, "project": project, "label_config": config, "params": {}})


def test_health_reports_served_version(client, trained_model):
    body = client.get("/health").get_json()
    assert body["status"] == "UP"
    assert body["model_trained"] is True
    assert body["model_versions"]["default"] == trained_model.version
    assert client.get("/").status_code == 200


def test_health_without_model(tmp_path, label_studio_files):
    app = create_app(_settings(tmp_path, ModelStore(tmp_path / "empty")))
    body = app.test_client().get("/health").get_json()
    assert body["model_trained"] is False
    assert "no model is trained yet" in body["message"]


def test_setup_returns_stable_version(client, trained_model):
    payload = {"project": "1.1796413751", "schema": CONFIG, "hostname": "http://localhost:8080", "access_token": "x"}
    versions = {client.post("/setup", json=payload).get_json()["model_version"] for _ in range(3)}
    assert versions == {trained_model.version}


@pytest.mark.parametrize(
    "schema, message",
    [
        ('<View><Image name="i" value="$image"/></View>', "no <Choices>"),
        ('<View><Image name="i" value="$image"/><Choices name="c" toName="i"><Choice value="Cat"/></Choices></View>',
         "none of the config's choices"),
    ],
)
def test_setup_rejects_unservable_config(client, schema, message):
    response = client.post("/setup", json={"project": "1.17", "schema": schema})
    assert response.status_code == 422
    assert message in response.get_json()["error"]


def test_predict_mixed_tasks_in_order(client, trained_model):
    """An image that works, one served as 403 with an empty body, one 200 text/html with no bytes."""
    tasks = [
        _task(1, "/data/upload/1/ab12cd34-good.jpg"),
        _task(2, "/data/local-files/?d=private/forbidden.jpg"),
        _task(3, "/data/local-files/?d=thumbs/empty.jpg"),
    ]
    response = _predict(client, tasks)
    assert response.status_code == 200
    results = response.get_json()["results"]
    assert len(results) == 3
    first = results[0]
    assert first["model_version"] == trained_model.version
    assert first["result"][0]["from_name"] == "choice"
    assert first["result"][0]["to_name"] == "image"
    assert first["result"][0]["type"] == "choices"
    assert first["result"][0]["value"]["choices"]
    assert 0.0 <= first["score"] <= 1.0
    assert results[1] == {"result": [], "model_version": trained_model.version}
    assert results[2] == {"result": [], "model_version": trained_model.version}


def test_predict_sends_legacy_token_to_label_studio(client, label_studio_files):
    _predict(client, [_task(1, "/data/upload/1/ab12cd34-good.jpg")])
    headers = [headers for path, headers in label_studio_files.requests if path.startswith("/data/upload/")]
    assert headers[0]["Authorization"] == f"Token {LEGACY_TOKEN}"


def test_predict_invalid_tasks_answered_in_place(client, trained_model):
    tasks = [
        "not an object",
        {"id": 5},
        {"id": 6, "data": {"picture": "/data/upload/1/ab12cd34-good.jpg"}},
        _task(7, "/data/upload/1/ab12cd34-good.jpg"),
        {"id": 8, "data": {"image": 42}},
    ]
    results = _predict(client, tasks).get_json()["results"]
    assert [bool(result["result"]) for result in results] == [False, False, False, True, False]
    assert all(result["model_version"] == trained_model.version for result in results)


def test_predict_other_names_and_subset(client):
    config = ('<View><Image name="thumb" value="$url"/><Choices name="tags" toName="thumb" choice="multiple">'
              '<Choice value="Face"/><Choice value="Text"/><Choice value="Kitten"/></Choices></View>')
    response = _predict(client, [{"id": 1, "data": {"url": "/data/upload/1/ab12cd34-good.jpg"}}], config=config)
    result = response.get_json()["results"][0]
    for region in result["result"]:
        assert (region["from_name"], region["to_name"]) == ("tags", "thumb")
        assert set(region["value"]["choices"]) <= {"Face", "Text"}


@pytest.mark.parametrize(
    "body, message",
    [
        (b"{not json", "JSON object"),
        (b'{"project": "1.1"}', "no 'tasks' list"),
        (b'{"tasks": {"id": 1}}', "must be a list"),
        (b'[1, 2]', "JSON object"),
    ],
)
def test_predict_malformed_requests(client, body, message):
    response = client.post("/predict", data=body, content_type="application/json")
    assert response.status_code == 400
    assert message in response.get_json()["error"]
    assert "Traceback" not in response.get_data(as_text=True)


def test_predict_without_model_returns_no_results(tmp_path, label_studio_files):
    """Without a model, /predict returns no results, so Label Studio stores no empty predictions."""
    app = create_app(_settings(tmp_path, ModelStore(tmp_path / "empty"), label_studio_url=label_studio_files.url))
    response = _predict(app.test_client(), [_task(1, "/data/upload/1/ab12cd34-good.jpg"), _task(2, "x")])
    assert response.status_code == 200
    assert response.get_json() == {"results": [], "model_version": "no-model"}


def test_new_version_served_without_restart(client, store, trained_model):
    """Publishing a version switches /setup and /predict within a few seconds."""
    source = store.version_dir(trained_model.version)
    staging = store.create_staging_dir()
    for name in ("model.keras", "model.tflite"):
        shutil.copy(source / name, staging / name)
    manifest = Manifest.read(source)
    manifest.thresholds = {name: min(0.99, value + 0.01) for name, value in manifest.thresholds.items()}
    manifest.parent = trained_model.version
    new = store.publish("default", staging, manifest).version
    assert new != trained_model.version

    deadline = time.monotonic() + 10
    version = None
    while time.monotonic() < deadline:
        version = client.post("/setup", json={"project": "1.17", "schema": CONFIG}).get_json()["model_version"]
        if version == new:
            break
        time.sleep(0.25)
    assert version == new
    results = _predict(client, [_task(1, "/data/upload/1/ab12cd34-good.jpg")]).get_json()["results"]
    assert results[0]["model_version"] == new
    assert client.get("/versions").get_json()["versions"][0] == new


def test_webhook_unknown_action_ignored(client):
    response = client.post("/webhook", json={"action": "FOO"})
    assert response.status_code == 200
    assert response.get_json()["status"] == "ignored"


def test_webhook_enqueues_training(client):
    redis = Redis.from_url(TEST_REDIS_URL)
    redis.flushdb()
    payload = {"action": "ANNOTATION_CREATED", "project": {"id": 9, "token": "secret-project-token"},
               "annotation": {"id": 1}}
    started = time.perf_counter()
    first = client.post("/webhook", json=payload)
    assert time.perf_counter() - started < 1.0
    second = client.post("/webhook", json=payload)
    assert first.get_json()["status"] == "queued"
    assert second.get_json()["status"] == "coalesced"
    assert first.get_json()["job_id"] == second.get_json()["job_id"]
    redis.flushdb()


def test_webhook_redis_down_is_503(tmp_path, store):
    app = create_app(_settings(tmp_path, store, redis_url="redis://127.0.0.1:1/0"))
    started = time.perf_counter()
    response = app.test_client().post("/webhook", json={"action": "START_TRAINING", "project": {"id": 3}})
    assert time.perf_counter() - started < 1.0
    assert response.status_code == 503
    assert "training queue unavailable" in response.get_json()["error"]


def test_versions_and_metrics(client, trained_model):
    assert trained_model.version in client.get("/versions").get_json()["versions"]
    _predict(client, [_task(1, "/data/upload/1/ab12cd34-good.jpg"), _task(2, "/data/local-files/?d=private/forbidden.jpg")])
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'thumbnail_ml_requests_total{endpoint="/predict",status="200"} 1.0' in metrics
    assert "thumbnail_ml_prediction_errors_total" in metrics
    assert "thumbnail_ml_request_seconds_bucket" in metrics


def test_basic_auth_required_when_configured(tmp_path, store):
    app = create_app(_settings(tmp_path, store, basic_auth_user="annotator", basic_auth_pass="s3cret"))
    test_client = app.test_client()
    assert test_client.get("/health").status_code == 401
    good = base64.b64encode(b"annotator:s3cret").decode()
    bad = base64.b64encode(b"annotator:wrong").decode()
    assert test_client.get("/health", headers={"Authorization": f"Basic {good}"}).status_code == 200
    assert test_client.get("/health", headers={"Authorization": f"Basic {bad}"}).status_code == 401
