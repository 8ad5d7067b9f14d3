"""Bad input through /predict and /setup: each bad task gets a clear reason, the others are served.

Every image case sends three tasks: a good image, the bad case, and the good image again.
The reply must contain three results in order: choices, an empty result, choices; and the log
must name the bad task's id and the reason. Request and config cases check the HTTP status and error message.
Images are served by a real HTTP server on 127.0.0.1 that plays Label Studio.
"""

from __future__ import annotations

import io
import logging
import shutil

import numpy as np
import pytest
from PIL import Image

from backend.app import create_app
from model.label_config import default_label_config_xml
from model.store import ModelStore
from tests.http_fixtures import Route, RoutedServer
from tests.images import encode, gradient_rgb, png_with_declared_size
from tests.support import THUMBNAIL_IMAGES
from tests.test_queue import TEST_REDIS_URL
from thumbnail_ml.settings import Settings

CONFIG = default_label_config_xml()
TOKEN = "legacy-token-bad-input"
GOOD = (THUMBNAIL_IMAGES / "basile-bron__Thumbnail-clickbait-detection/0.0_-qggDCWJYjk.jpg").read_bytes()
JPEG = {"Content-Type": "image/jpeg"}


def _animated_gif() -> bytes:
    frames = [Image.fromarray(np.full((90, 160, 3), value, np.uint8)) for value in (40, 200)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100)
    return buffer.getvalue()


def _sixteen_bit_png() -> bytes:
    return encode(Image.fromarray(np.linspace(0, 65535, 160 * 90, dtype=np.uint16).reshape(90, 160)), "PNG")


# (case id, what the server sends for the image, expected reason; None means it is predicted)
IMAGE_CASES = [
    ("corrupt-jpeg", Route(200, b"\xff\xd8\xff\xe0" + b"\x13" * 400, JPEG), "corrupt"),
    ("truncated-jpeg", Route(200, GOOD[: len(GOOD) // 2], JPEG), "truncated"),
    ("empty-body", Route(200, b"", JPEG), "empty"),
    ("jpeg-markers-only", Route(200, b"\xff\xd8\xff\xd9", JPEG), "corrupt"),
    ("webp-named-jpg", Route(200, encode(gradient_rgb(), "WEBP"), JPEG), None),
    ("png-named-jpg", Route(200, encode(gradient_rgb(), "PNG"), JPEG), None),
    ("html-as-image-jpeg", Route(200, b"<!DOCTYPE html><html><body>login</body></html>", JPEG), "unsupported_format"),
    ("html-content-type", Route(200, b"<html></html>", {"Content-Type": "text/html"}), "bad_content_type"),
    ("json-error-body", Route(200, b'{"detail": "nope"}', {"Content-Type": "application/json"}), "bad_content_type"),
    ("one-pixel", Route(200, encode(Image.new("RGB", (1, 1)), "PNG"), JPEG), "too_small"),
    ("decompression-bomb", Route(200, png_with_declared_size(20000, 20000), JPEG), "too_large"),
    ("all-black", Route(200, encode(Image.new("RGB", (480, 360)), "JPEG"), JPEG), None),
    ("grayscale", Route(200, encode(Image.new("L", (320, 180), 90), "JPEG"), JPEG), None),
    ("cmyk", Route(200, encode(Image.new("CMYK", (320, 180), (0, 120, 255, 0)), "JPEG"), JPEG), None),
    ("sixteen-bit-png", Route(200, _sixteen_bit_png(), JPEG), None),
    ("alpha-png", Route(200, encode(Image.new("RGBA", (320, 180), (255, 0, 0, 128)), "PNG"), JPEG), None),
    ("animated-gif", Route(200, _animated_gif(), JPEG), None),
    ("unauthorized", Route(401, b'{"detail": "Authentication credentials were not provided."}'), "unauthorized"),
    ("forbidden-empty", Route(403, b""), "forbidden"),
    ("not-found", Route(404, b""), "not_found"),
    ("server-error", Route(500, b"Internal Server Error"), "http_error"),
    ("redirect-loop", Route(302, b"", {"Location": "/data/upload/1/redirect-loop.jpg"}), "too_many_redirects"),
    ("never-answers", Route(hang_s=5.0), "timeout"),
    ("trickles-bytes", Route(200, GOOD[:4000], JPEG, trickle_s=0.05), "timeout"),
    ("over-size-limit", Route(200, GOOD + b"\x00" * (2 * 1024 * 1024), JPEG), "too_large"),
]


@pytest.fixture(scope="module")
def served(trained_model, tmp_path_factory):
    """A private copy of the trained store, a Label Studio stand-in, and the app."""
    root = tmp_path_factory.mktemp("bad-input")
    shutil.copytree(trained_model.store.root, root / "models")
    server = RoutedServer()
    server.routes["/data/upload/1/good.jpg"] = Route(200, GOOD, JPEG)
    for case_id, route, _ in IMAGE_CASES:
        server.routes[f"/data/upload/1/{case_id}.jpg"] = route
    settings = Settings(model_dir=ModelStore(root / "models").root, image_cache_dir=root / "cache",
                        redis_url=TEST_REDIS_URL, label_studio_url=server.url, label_studio_api_key=TOKEN,
                        fetch_connect_timeout=0.5, fetch_read_timeout=0.5, max_image_mb=1.0)
    app = create_app(settings)
    yield app.test_client()
    server.close()


def _task(task_id: int, name: str) -> dict:
    return {"id": task_id, "data": {"image": f"/data/upload/1/{name}.jpg"}}


def _predict(client, tasks, config=CONFIG):
    return client.post("/predict", json={"tasks": tasks, "project": "1.1796413751", "label_config": config})


@pytest.mark.parametrize("case_id, route, reason", IMAGE_CASES, ids=[case[0] for case in IMAGE_CASES])
def test_bad_image_answered_alone(served, caplog, case_id, route, reason):
    caplog.set_level(logging.WARNING, logger="backend.app")
    response = _predict(served, [_task(101, "good"), _task(102, case_id), _task(103, "good")])
    assert response.status_code == 200
    results = response.get_json()["results"]
    assert len(results) == 3
    assert results[0]["result"] and results[2]["result"]
    if reason is None:
        assert results[1]["result"], f"{case_id} should be predicted"
        assert 0.0 <= results[1]["score"] <= 1.0
        return
    assert results[1]["result"] == []
    logged = [record.getMessage() for record in caplog.records
              if record.name == "backend.app" and "task 102" in record.getMessage()]
    assert logged, f"no log line names task 102 for {case_id}"
    assert f"({reason})" in logged[0]
    assert TOKEN not in caplog.text


# (case id, task object, expected reason in the log)
TASK_CASES = [
    ("task-not-an-object", "just a string", "invalid_task"),
    ("task-without-data", {"id": 102}, "invalid_task"),
    ("data-not-an-object", {"id": 102, "data": ["x"]}, "invalid_task"),
    ("other-data-key", {"id": 102, "data": {"picture": "/data/upload/1/good.jpg"}}, "invalid_task"),
    ("url-not-a-string", {"id": 102, "data": {"image": 7}}, "invalid_task"),
    ("file-scheme", {"id": 102, "data": {"image": "file:///etc/passwd"}}, "invalid_url"),
    ("private-address", {"id": 102, "data": {"image": "http://10.0.0.1/a.jpg"}}, "blocked"),
]


@pytest.mark.parametrize("case_id, task, reason", TASK_CASES, ids=[case[0] for case in TASK_CASES])
def test_bad_task_answered_alone(served, caplog, case_id, task, reason):
    caplog.set_level(logging.WARNING, logger="backend.app")
    results = _predict(served, [_task(101, "good"), task, _task(103, "good")]).get_json()["results"]
    assert [bool(result["result"]) for result in results] == [True, False, True]
    messages = [record.getMessage() for record in caplog.records if f"({reason})" in record.getMessage()]
    assert messages, f"expected a log line with ({reason}) for {case_id}: {caplog.text}"


# (case id, raw body, expected status, text in the error)
REQUEST_CASES = [
    ("malformed-json", b'{"tasks": [', 400, "JSON object"),
    ("not-an-object", b'["tasks"]', 400, "JSON object"),
    ("missing-tasks", b'{"project": "1.1"}', 400, "no 'tasks' list"),
    ("tasks-wrong-type", b'{"tasks": "all"}', 400, "must be a list"),
    ("config-not-xml", b'{"tasks": [], "label_config": "<View"}', 400, "not valid XML"),
    ("config-without-choices", b'{"tasks": [], "label_config": "<View><Image name=\\"i\\" value=\\"$image\\"/></View>"}',
     400, "no <Choices>"),
]


@pytest.mark.parametrize("case_id, body, status, text", REQUEST_CASES, ids=[case[0] for case in REQUEST_CASES])
def test_bad_request_rejected_clearly(served, case_id, body, status, text):
    response = served.post("/predict", data=body, content_type="application/json")
    assert response.status_code == status
    assert text in response.get_json()["error"]
    assert "Traceback" not in response.get_data(as_text=True)


SETUP_CASES = [
    ("no-choices", '<View><Image name="i" value="$image"/></View>', "no <Choices>"),
    ("two-images", '<View><Image name="a" value="$a"/><Image name="b" value="$b"/>'
                   '<Choices name="c" toName="a"><Choice value="Face"/></Choices></View>', "exactly one <Image>"),
    ("choices-bound-to-nothing", '<View><Image name="i" value="$image"/><Choices name="c" toName="missing">'
                                 '<Choice value="Face"/></Choices></View>', "toName='i'"),
    ("no-common-choice", '<View><Image name="i" value="$image"/><Choices name="c" toName="i">'
                         '<Choice value="Kitten"/></Choices></View>', "none of the config's choices"),
]


@pytest.mark.parametrize("case_id, schema, text", SETUP_CASES, ids=[case[0] for case in SETUP_CASES])
def test_unservable_config_rejected_at_setup(served, case_id, schema, text):
    response = served.post("/setup", json={"project": "1.17", "schema": schema})
    assert response.status_code == 422
    assert text in response.get_json()["error"]


def test_config_changed_since_training(served):
    """A project that renamed its control and dropped classes still gets valid choices."""
    config = ('<View><Image name="thumb" value="$url"/><Choices name="tags" toName="thumb" choice="multiple">'
              '<Choice value="Text"/><Choice value="Face"/></Choices></View>')
    results = _predict(served, [{"id": 1, "data": {"url": "/data/upload/1/good.jpg"}}], config=config)
    result = results.get_json()["results"][0]
    for region in result["result"]:
        assert (region["from_name"], region["to_name"]) == ("tags", "thumb")
        assert set(region["value"]["choices"]) <= {"Text", "Face"}
    assert "score" in result


def test_config_without_common_classes_answers_every_task(served, caplog):
    caplog.set_level(logging.WARNING, logger="backend.app")
    config = '<View><Image name="i" value="$image"/><Choices name="c" toName="i"><Choice value="Kitten"/></Choices></View>'
    results = _predict(served, [_task(1, "good"), _task(2, "good")], config=config).get_json()["results"]
    assert [result["result"] for result in results] == [[], []]
    assert "(no_common_classes)" in caplog.text
