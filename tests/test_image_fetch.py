"""The image fetcher against real HTTP servers on 127.0.0.1 that play Label Studio and image hosts.

Each server is a ``ThreadingHTTPServer`` started by a fixture. The fake Label Studio checks
``Bearer`` access tokens and ``Token`` legacy keys, issues access JWTs at
``/api/token/refresh/`` and redirects ``/tasks/<id>/presign/`` to a fake storage server,
which rejects any request that carries an ``Authorization`` header. Timeouts in these
settings are short, so the slow-server cases take about 3 s in total.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import logging
import multiprocessing
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import jwt
import pytest

import backend.image_cache as image_cache
import backend.images as images
from backend.images import FetchError, ImageFetcher
from thumbnail_ml.settings import Settings

JWT_SECRET = "test-signing-secret-of-the-fake-label-studio"
LEGACY_TOKEN = "legacy-token-0123456789abcdef"
PRESIGN_SIGNATURE = "SIGNATURE-0f1e2d3c4b5a"
CLOUD_KEY = "Dog (8).jpg"
CLOUD_URI = f"s3://bucket/{CLOUD_KEY}"
KIB = 1024


def payload(name: str, size: int = 2 * KIB) -> bytes:
    """Return ``size`` deterministic bytes for ``name``, starting with a JPEG marker."""
    seed = hashlib.sha256(name.encode()).digest()
    return (b"\xff\xd8\xff" + seed * (size // len(seed) + 1))[:size]


def make_jwt(token_type: str, lifetime_s: float, secret: str = JWT_SECRET) -> str:
    claims = {"token_type": token_type, "exp": int(time.time() + lifetime_s), "jti": uuid.uuid4().hex}
    return jwt.encode(claims, secret, algorithm="HS256")


PAT = make_jwt("refresh", 365 * 24 * 3600)

# label-studio-sdk 2.1.2 parses the refresh response with pydantic's deprecated parse_obj.
pytestmark = pytest.mark.filterwarnings("ignore:The `parse_obj` method is deprecated:DeprecationWarning")


# Test servers.


class Handler(http.server.BaseHTTPRequestHandler):
    """Send each request to the ``app`` of its server."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name.
        pass

    def do_GET(self) -> None:
        self.server.app.record(self)
        self.server.app.get(self)

    def do_POST(self) -> None:
        self.server.app.record(self)
        self.server.app.post(self)

    def reply(
        self,
        status: int,
        body: bytes = b"",
        content_type: str | None = "application/octet-stream",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def reply_json(self, status: int, data: dict, headers: dict[str, str] | None = None) -> None:
        self.reply(status, json.dumps(data).encode(), "application/json", headers)


@dataclass
class App:
    """Base for the fake servers: records every request's path and Authorization header."""

    base_url: str = ""
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, handler: Handler) -> None:
        with self.lock:
            self.requests.append((handler.command, handler.path, handler.headers.get("Authorization")))

    def paths(self) -> list[str]:
        return [path for _, path, _ in self.requests]

    def get(self, handler: Handler) -> None:
        handler.reply(404, b"", None)

    def post(self, handler: Handler) -> None:
        handler.reply(405, b"", None)


@dataclass
class FakeLabelStudio(App):
    """Label Studio's auth, /data/ files and presign endpoint, as 1.23.2 behaves."""

    legacy_enabled: bool = True
    url_prefix: str = ""
    access_lifetime_s: float = 300.0
    access_max_uses: int | None = None
    storage_url: str = ""
    uploads: dict[str, bytes] = field(default_factory=dict)
    local_files: dict[str, bytes] = field(default_factory=dict)
    access_uses: dict[str, int] = field(default_factory=dict)
    refresh_count: int = 0
    unauthorized_count: int = 0
    presign_requests: list[tuple[int, str]] = field(default_factory=list)

    def post(self, handler: Handler) -> None:
        if urlsplit(handler.path).path != f"{self.url_prefix}/api/token/refresh/":
            return handler.reply(404, b"", None)
        body = json.loads(handler.rfile.read(int(handler.headers.get("Content-Length", "0"))))
        with self.lock:
            self.refresh_count += 1
        if body.get("refresh") != PAT:
            return handler.reply_json(401, {"detail": "Token is invalid or expired", "code": "token_not_valid"})
        access = make_jwt("access", self.access_lifetime_s)
        with self.lock:
            self.access_uses[access] = 0
        handler.reply_json(200, {"access": access})

    def authorized(self, handler: Handler) -> bool:
        header = handler.headers.get("Authorization", "")
        with self.lock:
            if header.startswith("Token "):
                return self.legacy_enabled and header[len("Token "):] == LEGACY_TOKEN
            token = header[len("Bearer "):] if header.startswith("Bearer ") else ""
            if token not in self.access_uses:
                return False
            if self.access_max_uses is not None and self.access_uses[token] >= self.access_max_uses:
                return False
            self.access_uses[token] += 1
            return True

    def get(self, handler: Handler) -> None:
        parts = urlsplit(handler.path.removeprefix(self.url_prefix))
        if not self.authorized(handler):
            with self.lock:
                self.unauthorized_count += 1
            detail = {"detail": "Authentication credentials were not provided."}
            return handler.reply_json(401, detail, {"WWW-Authenticate": "Token"})

        if parts.path.startswith("/tasks/") and parts.path.endswith("/presign/"):
            task_id = int(parts.path.split("/")[2])
            fileuri = base64.urlsafe_b64decode(parse_qs(parts.query)["fileuri"][0]).decode()
            with self.lock:
                self.presign_requests.append((task_id, fileuri))
            key = fileuri.split("/", 3)[3]
            location = f"{self.storage_url}/bucket/{quote(key)}?X-Amz-Signature={PRESIGN_SIGNATURE}"
            return handler.reply(303, b"", None, {"Location": location})
        if parts.path in ("/data/local-files/", "/data/local-files"):
            data = self.local_files.get(parse_qs(parts.query)["d"][0])
        else:
            data = self.uploads.get(unquote(parts.path))
        if data is None:
            return handler.reply_json(404, {"detail": "Not found."})
        handler.reply(200, data, "image/jpeg")


@dataclass
class FakeStorage(App):
    """A bucket served at presigned URLs; any Authorization header is an error."""

    objects: dict[str, bytes] = field(default_factory=dict)

    def get(self, handler: Handler) -> None:
        if handler.headers.get("Authorization"):
            return handler.reply(400, b"Authorization header sent to the storage host", "text/plain")
        parts = urlsplit(handler.path)
        key = unquote(parts.path).removeprefix("/bucket/")
        if parse_qs(parts.query).get("X-Amz-Signature") != [PRESIGN_SIGNATURE] or key not in self.objects:
            return handler.reply(403, b"", None)
        handler.reply(200, self.objects[key], "image/jpeg")


@dataclass
class ImageHost(App):
    """An image host outside Label Studio with well-behaved and misbehaving endpoints."""

    in_flight: int = 0
    max_in_flight: int = 0

    # Fixed responses: path -> (status, body, Content-Type, extra headers).
    STATIC_ROUTES = {
        "/img.jpg": (200, payload("img"), "image/jpeg", {}),
        "/no-type": (200, payload("no-type"), None, {}),
        "/html": (200, b"<html><body>Log in</body></html>", "text/html; charset=utf-8", {}),
        "/html-empty": (200, b"", "text/html", {}),
        "/json": (200, b'{"detail": "Not an image"}', "application/json", {}),
        "/empty": (200, b"", "image/jpeg", {}),
        "/loop-a": (302, b"", None, {"Location": "/loop-b"}),
        "/loop-b": (302, b"", None, {"Location": "/loop-a"}),
        "/big": (200, payload("big", 200 * KIB), "image/jpeg", {}),
    }

    def get(self, handler: Handler) -> None:
        parts = urlsplit(handler.path)
        path = parts.path
        query = parse_qs(parts.query)
        if path in self.STATIC_ROUTES:
            status, body, content_type, headers = self.STATIC_ROUTES[path]
            return handler.reply(status, body, content_type, headers)

        if path == "/blob":
            size = int(query["size"][0])
            return handler.reply(200, payload(query["name"][0], size), "application/octet-stream")
        if path.startswith("/status/"):
            return handler.reply(int(path.rsplit("/", 1)[1]), b"", None)
        if path.startswith("/chain/"):
            remaining = int(path.rsplit("/", 1)[1])
            if remaining == 0:
                return handler.reply(200, payload("chain"), "image/jpeg")
            return handler.reply(302, b"", None, {"Location": f"/chain/{remaining - 1}"})
        if path == "/redirect":
            return handler.reply(302, b"", None, {"Location": query["to"][0]})

        if path == "/big-stream":
            return self.stream_without_length(handler, payload("big", 200 * KIB))
        if path == "/trickle":
            return self.trickle(handler)
        if path == "/slow":
            return self.slow(handler, query["name"][0])
        handler.reply(404, b"", None)

    def stream_without_length(self, handler: Handler, body: bytes) -> None:
        # Without Content-Length the body ends when the connection closes.
        handler.close_connection = True
        handler.send_response(200)
        handler.send_header("Content-Type", "image/jpeg")
        handler.send_header("Connection", "close")
        handler.end_headers()
        try:
            for start in range(0, len(body), 8 * KIB):
                handler.wfile.write(body[start:start + 8 * KIB])
        except OSError:
            pass

    def trickle(self, handler: Handler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "image/jpeg")
        handler.send_header("Content-Length", "1000")
        handler.end_headers()
        try:
            for _ in range(1000):
                handler.wfile.write(b"x")
                handler.wfile.flush()
                time.sleep(0.2)
        except OSError:
            pass

    def slow(self, handler: Handler, name: str) -> None:
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        time.sleep(0.15)
        with self.lock:
            self.in_flight -= 1
        handler.reply(200, payload(name), "image/jpeg")


class QuietServer(http.server.ThreadingHTTPServer):
    """A threading server that ignores clients closing their connection early."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # The fetcher closes connections on purpose (too large, timed out); that is no error here.
        pass


@pytest.fixture
def serve() -> Iterator[Callable[[App], App]]:
    """Start a server for an app on an ephemeral port; all are shut down after the test."""
    servers: list[QuietServer] = []

    def start(app: App) -> App:
        server = QuietServer(("127.0.0.1", 0), Handler)
        server.app = app  # type: ignore[attr-defined]
        app.base_url = f"http://127.0.0.1:{server.server_address[1]}"
        # A short poll interval keeps shutdown() quick; the default 0.5 s adds up over 100 tests.
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        servers.append(server)
        return app

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def storage(serve) -> FakeStorage:
    return serve(FakeStorage(objects={CLOUD_KEY: payload("dog"), "denied.jpg": b""}))


@pytest.fixture
def fake_label_studio(serve, storage) -> FakeLabelStudio:
    app = FakeLabelStudio(
        storage_url=storage.base_url,
        uploads={f"/data/upload/1/{name}.jpg": payload(name) for name in ("x", "y", "z", "u", "v", "w")},
        local_files={"imgs/remote.jpg": payload("remote")},
    )
    return serve(app)


@pytest.fixture
def image_host(serve) -> ImageHost:
    return serve(ImageHost())


@pytest.fixture
def make_fetcher(tmp_path) -> Iterator[Callable[..., ImageFetcher]]:
    """Build fetchers from short-timeout settings; each is closed after the test."""
    fetchers: list[ImageFetcher] = []

    def make(**overrides: Any) -> ImageFetcher:
        values: dict[str, Any] = dict(
            image_cache_dir=tmp_path / "cache",
            image_cache_max_mb=0,
            max_image_mb=100 * KIB / (1024 * 1024),
            fetch_connect_timeout=0.5,
            fetch_read_timeout=0.5,
            fetch_concurrency=4,
        )
        values.update(overrides)
        fetcher = ImageFetcher(Settings(**values))
        fetchers.append(fetcher)
        return fetcher

    yield make
    for fetcher in fetchers:
        fetcher.close()


def fetch_error(fetcher: ImageFetcher, url: str, task_id: int | None = None) -> FetchError:
    with pytest.raises(FetchError) as caught:
        fetcher.fetch(url, task_id)
    return caught.value


def cache_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.img")) if directory.exists() else []


# Label Studio authentication.


def test_pat_exchanged_and_sent_as_bearer(make_fetcher, fake_label_studio):
    fetcher = make_fetcher(label_studio_url=fake_label_studio.base_url, label_studio_api_key=PAT)
    assert fetcher.fetch("/data/upload/1/x.jpg", 1) == payload("x")
    assert fake_label_studio.refresh_count == 1
    header = fake_label_studio.requests[-1][2]
    assert header is not None and header.startswith("Bearer ")
    assert header != f"Bearer {PAT}"


def test_legacy_token_sent_as_token(make_fetcher, fake_label_studio):
    fetcher = make_fetcher(label_studio_url=fake_label_studio.base_url, label_studio_api_key=LEGACY_TOKEN)
    assert fetcher.fetch("/data/upload/1/x.jpg", 1) == payload("x")
    assert fake_label_studio.requests[-1][2] == f"Token {LEGACY_TOKEN}"
    assert fake_label_studio.refresh_count == 0


def test_pat_renewed_once_after_401(make_fetcher, fake_label_studio):
    fake_label_studio.access_max_uses = 2
    fetcher = make_fetcher(label_studio_url=fake_label_studio.base_url, label_studio_api_key=PAT)
    for name in ("x", "y", "z"):
        assert fetcher.fetch(f"/data/upload/1/{name}.jpg", 1) == payload(name)
    assert fake_label_studio.refresh_count == 2
    assert fake_label_studio.unauthorized_count == 1


def test_pat_renewed_before_expiry(make_fetcher, fake_label_studio, monkeypatch):
    fetcher = make_fetcher(label_studio_url=fake_label_studio.base_url, label_studio_api_key=PAT)
    assert fetcher.fetch("/data/upload/1/x.jpg", 1) == payload("x")

    # 290 s later the 300 s access token is inside the renewal margin but not yet expired.
    real_time = time.time
    monkeypatch.setattr(images, "_now", lambda: real_time() + 290)
    assert fetcher.fetch("/data/upload/1/y.jpg", 1) == payload("y")
    assert fake_label_studio.refresh_count == 2
    assert fake_label_studio.unauthorized_count == 0


def test_parallel_fetches_share_one_exchange(make_fetcher, fake_label_studio):
    fetcher = make_fetcher(label_studio_url=fake_label_studio.base_url, label_studio_api_key=PAT)
    names = ["x", "y", "z", "u", "v", "w"]
    results = fetcher.fetch_many([(1, f"/data/upload/1/{name}.jpg") for name in names])
    assert results == [payload(name) for name in names]
    assert fake_label_studio.refresh_count == 1


@pytest.mark.parametrize(
    ("api_key", "kind"),
    [
        (make_jwt("refresh", 3600, secret="signing-secret-of-another-label-studio"), "personal access token"),
        ("wrong-legacy-token-123456", "legacy token"),
    ],
    ids=["pat", "legacy"],
)
def test_wrong_token_names_kind_not_value(make_fetcher, fake_label_studio, caplog, api_key, kind):
    caplog.set_level(logging.DEBUG)
    fetcher = make_fetcher(label_studio_url=fake_label_studio.base_url, label_studio_api_key=api_key)
    error = fetch_error(fetcher, "/data/upload/1/x.jpg", 1)
    assert error.reason == "unauthorized"
    assert "authentication failed" in str(error)
    assert kind in str(error)
    assert "LABEL_STUDIO_API_KEY" in str(error)
    assert api_key not in str(error)
    assert api_key not in caplog.text
    assert "/data/upload/1/x.jpg" in caplog.text


def test_legacy_token_disabled_suggests_pat(make_fetcher, fake_label_studio):
    fake_label_studio.legacy_enabled = False
    fetcher = make_fetcher(label_studio_url=fake_label_studio.base_url, label_studio_api_key=LEGACY_TOKEN)
    error = fetch_error(fetcher, "/data/upload/1/x.jpg", 1)
    assert error.reason == "unauthorized"
    assert error.status == 401
    assert "legacy token" in str(error)
    assert "personal access token" in str(error)


def test_expired_pat_rejected_without_request(make_fetcher, fake_label_studio):
    expired = make_jwt("refresh", -60)
    fetcher = make_fetcher(label_studio_url=fake_label_studio.base_url, label_studio_api_key=expired)
    error = fetch_error(fetcher, "/data/upload/1/x.jpg", 1)
    assert error.reason == "unauthorized"
    assert "expired" in str(error)
    assert expired not in str(error)
    assert fake_label_studio.requests == []


def test_tokens_never_logged(make_fetcher, fake_label_studio, caplog):
    caplog.set_level(logging.DEBUG)
    fake_label_studio.access_max_uses = 1
    fetcher = make_fetcher(label_studio_url=fake_label_studio.base_url, label_studio_api_key=PAT)
    fetcher.fetch("/data/upload/1/x.jpg", 1)
    fetcher.fetch("/data/upload/1/y.jpg", 1)
    fetch_error(fetcher, "/data/upload/1/missing.jpg", 1)
    assert PAT not in caplog.text
    for access in fake_label_studio.access_uses:
        assert access not in caplog.text


def test_setup_credentials_used_without_settings(make_fetcher, fake_label_studio):
    fetcher = make_fetcher()
    fetcher.set_label_studio_credentials(fake_label_studio.base_url, LEGACY_TOKEN)
    assert fetcher.fetch("/data/upload/1/x.jpg", 1) == payload("x")
    assert fake_label_studio.requests[-1][2] == f"Token {LEGACY_TOKEN}"


def test_settings_credentials_override_setup(make_fetcher, fake_label_studio):
    fetcher = make_fetcher(label_studio_url=fake_label_studio.base_url, label_studio_api_key=PAT)
    fetcher.set_label_studio_credentials("http://localhost:1", "setup-token-123456")
    assert fetcher.fetch("/data/upload/1/x.jpg", 1) == payload("x")
    assert fake_label_studio.requests[-1][2].startswith("Bearer ")


def test_no_label_studio_url_says_what_to_set(make_fetcher):
    error = fetch_error(make_fetcher(), "/data/upload/1/x.jpg", 1)
    assert error.reason == "no_credentials"
    assert "LABEL_STUDIO_URL" in str(error)
    assert "/data/upload/1/x.jpg" in str(error)


def test_no_api_key_says_what_to_set(make_fetcher, fake_label_studio):
    error = fetch_error(make_fetcher(label_studio_url=fake_label_studio.base_url), "/data/upload/1/x.jpg", 1)
    assert error.reason == "no_credentials"
    assert "LABEL_STUDIO_API_KEY" in str(error)
    assert fake_label_studio.requests == []


def test_full_url_on_label_studio_host(make_fetcher, fake_label_studio):
    fetcher = make_fetcher(label_studio_url=fake_label_studio.base_url, label_studio_api_key=LEGACY_TOKEN)
    assert fetcher.fetch(f"{fake_label_studio.base_url}/data/upload/1/x.jpg", 1) == payload("x")
    assert fake_label_studio.requests[-1][2] == f"Token {LEGACY_TOKEN}"


def test_setup_hostname_alias_uses_settings_url(make_fetcher, fake_label_studio):
    # Label Studio's own name for itself (LABEL_STUDIO_HOST) may differ from the URL this
    # backend reaches it at; full URLs on that name go to LABEL_STUDIO_URL.
    fetcher = make_fetcher(label_studio_url=fake_label_studio.base_url, label_studio_api_key=LEGACY_TOKEN)
    fetcher.set_label_studio_credentials("http://ls.example.test:8080", None)
    url = "http://ls.example.test:8080/data/local-files/?d=imgs/remote.jpg"
    assert fetcher.fetch(url, 1) == payload("remote")
    assert fake_label_studio.paths() == ["/data/local-files/?d=imgs/remote.jpg"]


def test_label_studio_under_url_prefix(make_fetcher, fake_label_studio, mounted):
    # With LABEL_STUDIO_HOST=http://host/ls, Label Studio serves every route under /ls.
    fake_label_studio.url_prefix = "/ls"
    fetcher = make_fetcher(
        label_studio_url=f"{fake_label_studio.base_url}/ls/",
        label_studio_api_key=PAT,
        allowed_image_hosts=("127.0.0.1",),
    )
    assert fetcher.fetch("/ls/data/upload/1/x.jpg", 1) == payload("x")
    assert fetcher.fetch(CLOUD_URI, 7) == payload("dog")
    assert [path.split("?")[0] for path in fake_label_studio.paths()] == [
        "/ls/api/token/refresh/", "/ls/data/upload/1/x.jpg", "/ls/tasks/7/presign/",
    ]

    from_disk = make_fetcher(
        label_studio_url=f"{fake_label_studio.base_url}/ls", label_studio_data_dir=mounted["data_dir"]
    )
    assert from_disk.fetch("/ls/data/upload/1/x.jpg", 1) == payload("x-local")


def test_label_studio_404_for_local_files_explains_storage(make_fetcher, fake_label_studio):
    fetcher = make_fetcher(label_studio_url=fake_label_studio.base_url, label_studio_api_key=LEGACY_TOKEN)
    error = fetch_error(fetcher, "/data/local-files/?d=imgs/none.jpg", 3)
    assert error.reason == "not_found"
    assert error.status == 404
    assert "local storage" in str(error)


# Cloud storage through the presign endpoint.


def test_s3_uri_fetched_through_presign(make_fetcher, fake_label_studio, storage):
    fetcher = make_fetcher(
        label_studio_url=fake_label_studio.base_url,
        label_studio_api_key=PAT,
        allowed_image_hosts=(f"127.0.0.1:{urlsplit(storage.base_url).port}",),
        image_cache_max_mb=1,
    )
    assert fetcher.fetch(CLOUD_URI, 7) == payload("dog")
    assert fake_label_studio.presign_requests == [(7, CLOUD_URI)]
    presign_path = fake_label_studio.paths()[-1]
    assert presign_path.startswith("/tasks/7/presign/?fileuri=")
    assert storage.requests == [("GET", f"/bucket/{quote(CLOUD_KEY)}?X-Amz-Signature={PRESIGN_SIGNATURE}", None)]

    assert fetcher.fetch(CLOUD_URI, 7) == payload("dog")
    assert len(fake_label_studio.presign_requests) == 1
    assert len(storage.requests) == 1


def test_storage_on_private_host_needs_allow_list(make_fetcher, fake_label_studio, storage, caplog):
    fetcher = make_fetcher(label_studio_url=fake_label_studio.base_url, label_studio_api_key=PAT)
    error = fetch_error(fetcher, CLOUD_URI, 7)
    assert error.reason == "blocked"
    assert "ALLOWED_IMAGE_HOSTS" in str(error)
    assert PRESIGN_SIGNATURE not in str(error)
    assert PRESIGN_SIGNATURE not in caplog.text
    assert storage.requests == []


def test_storage_error_hides_presigned_query(make_fetcher, fake_label_studio, storage, caplog):
    fetcher = make_fetcher(
        label_studio_url=fake_label_studio.base_url,
        label_studio_api_key=LEGACY_TOKEN,
        allowed_image_hosts=("127.0.0.1",),
    )
    error = fetch_error(fetcher, "s3://bucket/missing.jpg", 7)
    assert error.reason == "forbidden"
    assert "s3://bucket/missing.jpg" in str(error)
    assert PRESIGN_SIGNATURE not in str(error)
    assert PRESIGN_SIGNATURE not in caplog.text
    assert storage.requests[-1][2] is None


def test_cloud_uri_requires_task_id(make_fetcher, fake_label_studio):
    fetcher = make_fetcher(label_studio_url=fake_label_studio.base_url, label_studio_api_key=PAT)
    error = fetch_error(fetcher, CLOUD_URI, None)
    assert error.reason == "invalid_url"
    assert "task id" in str(error)
    assert fake_label_studio.requests == []


# Reading from mounted Label Studio directories.


@pytest.fixture
def mounted(tmp_path) -> dict[str, Path]:
    """A document root and a data directory as Label Studio lays them out, plus files outside."""
    document_root = tmp_path / "document-root"
    data_dir = tmp_path / "label-studio-data"
    (document_root / "imgs").mkdir(parents=True)
    (data_dir / "media" / "upload" / "1").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()

    (document_root / "imgs" / "a.jpg").write_bytes(payload("a"))
    (document_root / "imgs" / "Dog (8).jpg").write_bytes(payload("dog-local"))
    (document_root / "imgs" / "inside-link.jpg").symlink_to(document_root / "imgs" / "a.jpg")
    (document_root / "imgs" / "outside-link.jpg").symlink_to(outside / "secret.jpg")
    (data_dir / "media" / "upload" / "1" / "x.jpg").write_bytes(payload("x-local"))
    (data_dir / "media" / "upload" / "escape").symlink_to(outside)
    (outside / "secret.jpg").write_bytes(b"secret")
    return {"document_root": document_root, "data_dir": data_dir, "outside": outside}


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("/data/local-files/?d=imgs/a.jpg", "a"),
        ("/data/local-files?d=imgs/a.jpg", "a"),
        ("/data/local-files/?d=imgs/Dog%20%288%29.jpg", "dog-local"),
        ("/data/local-files/?d=imgs/inside-link.jpg", "a"),
        ("/data/upload/1/x.jpg", "x-local"),
    ],
)
def test_mounted_files_read_from_disk(make_fetcher, mounted, url, name):
    fetcher = make_fetcher(document_root=mounted["document_root"], label_studio_data_dir=mounted["data_dir"])
    assert fetcher.fetch(url, 1) == payload(name)


def test_mounted_full_url_skips_http(make_fetcher, mounted, fake_label_studio):
    fetcher = make_fetcher(
        label_studio_url=fake_label_studio.base_url,
        label_studio_api_key=PAT,
        document_root=mounted["document_root"],
    )
    assert fetcher.fetch(f"{fake_label_studio.base_url}/data/local-files/?d=imgs/a.jpg", 1) == payload("a")
    assert fake_label_studio.requests == []


@pytest.mark.parametrize(
    "url",
    [
        "/data/local-files/?d=../outside/secret.jpg",
        "/data/local-files/?d=imgs/../../outside/secret.jpg",
        "/data/local-files/?d=/etc/passwd",
        "/data/local-files/?d=%2e%2e%2foutside%2fsecret.jpg",
        "/data/local-files/?d=imgs%2f..%2f..%2foutside%2fsecret.jpg",
        "/data/local-files/?d=%2E%2E/outside/secret.jpg",
        "/data/local-files/?d=imgs\\..\\..\\outside\\secret.jpg",
        "/data/local-files/?d=imgs/outside-link.jpg",
        "/data/upload/1/../../../../outside/secret.jpg",
        "/data/upload/%2e%2e/%2e%2e/%2e%2e/outside/secret.jpg",
        "/data/upload/1/..%2f..%2fsecret.jpg",
        "/data/upload/escape/secret.jpg",
    ],
)
def test_traversal_blocked(make_fetcher, mounted, fake_label_studio, url):
    fetcher = make_fetcher(
        label_studio_url=fake_label_studio.base_url,
        label_studio_api_key=LEGACY_TOKEN,
        document_root=mounted["document_root"],
        label_studio_data_dir=mounted["data_dir"],
    )
    error = fetch_error(fetcher, url, 1)
    assert error.reason == "blocked"
    assert fake_label_studio.requests == []


def test_absolute_path_to_secret_blocked(make_fetcher, mounted):
    fetcher = make_fetcher(document_root=mounted["document_root"])
    error = fetch_error(fetcher, f"/data/local-files/?d={mounted['outside'] / 'secret.jpg'}", 1)
    assert error.reason == "blocked"


def test_missing_on_disk_falls_back_to_http(make_fetcher, mounted, fake_label_studio):
    fetcher = make_fetcher(
        label_studio_url=fake_label_studio.base_url,
        label_studio_api_key=LEGACY_TOKEN,
        document_root=mounted["document_root"],
    )
    assert fetcher.fetch("/data/local-files/?d=imgs/remote.jpg", 1) == payload("remote")
    assert fake_label_studio.paths() == ["/data/local-files/?d=imgs/remote.jpg"]


def test_missing_on_disk_without_url_not_found(make_fetcher, mounted):
    fetcher = make_fetcher(document_root=mounted["document_root"])
    error = fetch_error(fetcher, "/data/local-files/?d=imgs/remote.jpg", 1)
    assert error.reason == "not_found"
    assert "LOCAL_FILES_DOCUMENT_ROOT" in str(error)
    assert "LABEL_STUDIO_URL" in str(error)


# Plain URLs on other hosts.


def test_private_address_blocked(make_fetcher, fake_label_studio, image_host):
    fetcher = make_fetcher(label_studio_url=fake_label_studio.base_url, label_studio_api_key=PAT)
    error = fetch_error(fetcher, f"{image_host.base_url}/img.jpg", 5)
    assert error.reason == "blocked"
    assert "127.0.0.1" in str(error)
    assert "ALLOWED_IMAGE_HOSTS" in str(error)
    assert image_host.requests == []


def test_allow_list_admits_private_host(make_fetcher, fake_label_studio, image_host):
    fetcher = make_fetcher(
        label_studio_url=fake_label_studio.base_url,
        label_studio_api_key=LEGACY_TOKEN,
        allowed_image_hosts=("127.0.0.1",),
    )
    assert fetcher.fetch(f"{image_host.base_url}/img.jpg", 5) == payload("img")
    assert image_host.requests[-1][2] is None


def test_user_info_never_sent(make_fetcher, image_host):
    fetcher = make_fetcher(allowed_image_hosts=("127.0.0.1",))
    url = image_host.base_url.replace("http://", "http://user:password@") + "/img.jpg"
    assert fetcher.fetch(url, 5) == payload("img")
    assert image_host.requests[-1][2] is None


def test_resolver_decides_public_address(make_fetcher, image_host, monkeypatch):
    looked_up: list[str] = []

    def resolve(host: str, port: int) -> list[str]:
        looked_up.append(host)
        return ["10.1.2.3"] if host == "images.example.test" else ["93.184.216.34"]

    monkeypatch.setattr(images, "_resolve_addresses", resolve)
    fetcher = make_fetcher()
    error = fetch_error(fetcher, "http://images.example.test/cat.jpg", 5)
    assert error.reason == "blocked"
    assert "10.1.2.3" in str(error)
    assert fetcher.fetch(f"{image_host.base_url}/img.jpg", 5) == payload("img")
    assert looked_up == ["images.example.test", "127.0.0.1"]


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.216.34", True),
        ("2606:4700::1111", True),
        ("127.0.0.1", False),
        ("10.0.0.1", False),
        ("172.16.5.4", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("::1", False),
        ("fc00::1", False),
        ("fe80::1%eth0", False),
        ("::ffff:127.0.0.1", False),
    ],
)
def test_public_address_classification(address, public):
    assert images._is_public_address(address) is public


def test_redirect_to_private_host_rechecked(make_fetcher, image_host, storage):
    fetcher = make_fetcher(allowed_image_hosts=(f"127.0.0.1:{urlsplit(image_host.base_url).port}",))
    target = f"{storage.base_url}/bucket/{quote(CLOUD_KEY)}?X-Amz-Signature={PRESIGN_SIGNATURE}"
    error = fetch_error(fetcher, f"{image_host.base_url}/redirect?to={quote(target)}", 5)
    assert error.reason == "blocked"
    assert storage.requests == []


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://127.0.0.1/image.jpg",
        "data:image/png;base64,iVBORw0KGgo=",
        "javascript:alert(1)",
        "//127.0.0.1/image.jpg",
        "image.jpg",
        "",
        "http://[::1/broken",
    ],
)
def test_unsupported_urls_rejected(make_fetcher, url):
    error = fetch_error(make_fetcher(allowed_image_hosts=("127.0.0.1",)), url, 1)
    assert error.reason == "invalid_url"


def test_redirect_to_file_scheme_blocked(make_fetcher, image_host):
    fetcher = make_fetcher(allowed_image_hosts=("127.0.0.1",))
    error = fetch_error(fetcher, f"{image_host.base_url}/redirect?to=file:///etc/passwd", 5)
    assert error.reason == "blocked"


# Status codes, content checks and limits.


@pytest.mark.parametrize(
    ("path", "reason", "status"),
    [
        ("/status/401", "unauthorized", 401),
        ("/status/403", "forbidden", 403),
        ("/status/404", "not_found", 404),
        ("/status/500", "http_error", 500),
        ("/status/302", "http_error", 302),
        ("/html", "bad_content_type", None),
        ("/json", "bad_content_type", None),
        ("/html-empty", "empty", None),
        ("/empty", "empty", None),
        ("/loop-a", "too_many_redirects", None),
        ("/chain/6", "too_many_redirects", None),
        ("/big", "too_large", None),
        ("/big-stream", "too_large", None),
    ],
)
def test_bad_responses_mapped(make_fetcher, image_host, path, reason, status):
    fetcher = make_fetcher(allowed_image_hosts=("127.0.0.1",))
    error = fetch_error(fetcher, f"{image_host.base_url}{path}", 9)
    assert error.reason == reason
    assert error.status == status
    assert path in str(error)
    if status is not None and status >= 500:
        assert str(status) in str(error)


def test_redirect_loop_worded_as_loop(make_fetcher, image_host):
    fetcher = make_fetcher(allowed_image_hosts=("127.0.0.1",))
    error = fetch_error(fetcher, f"{image_host.base_url}/loop-a", 9)
    assert "loop" in str(error)


@pytest.mark.parametrize(("path", "name"), [("/no-type", "no-type"), ("/chain/5", "chain")])
def test_untyped_and_redirected_images_accepted(make_fetcher, image_host, path, name):
    fetcher = make_fetcher(allowed_image_hosts=("127.0.0.1",))
    assert fetcher.fetch(f"{image_host.base_url}{path}", 9) == payload(name)


def test_octet_stream_accepted(make_fetcher, image_host):
    fetcher = make_fetcher(allowed_image_hosts=("127.0.0.1",))
    url = f"{image_host.base_url}/blob?name=octet&size=3000"
    assert fetcher.fetch(url, 9) == payload("octet", 3000)


def test_trickling_server_stopped_at_deadline(make_fetcher, image_host):
    fetcher = make_fetcher(allowed_image_hosts=("127.0.0.1",), fetch_connect_timeout=0.2, fetch_read_timeout=0.4)
    started = time.monotonic()
    error = fetch_error(fetcher, f"{image_host.base_url}/trickle", 9)
    elapsed = time.monotonic() - started
    assert error.reason == "timeout"
    # The deadline is 0.2 + 4 x 0.4 = 1.8 s; one more read timeout may pass before it is checked.
    assert 1.7 < elapsed < 2.6


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A socket that accepts connections (through the listen backlog) and never responds."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


def test_silent_server_times_out(make_fetcher, silent_server):
    fetcher = make_fetcher(allowed_image_hosts=("127.0.0.1",))
    started = time.monotonic()
    error = fetch_error(fetcher, f"{silent_server}/img.jpg", 9)
    assert error.reason == "timeout"
    assert "FETCH_READ_TIMEOUT" in str(error)
    assert time.monotonic() - started < 1.5


def test_refused_connection_reported(make_fetcher):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    error = fetch_error(make_fetcher(allowed_image_hosts=("127.0.0.1",)), f"http://127.0.0.1:{port}/x.jpg", 9)
    assert error.reason == "connection_failed"
    assert "refused" in str(error).lower()


# The on-disk cache.


def test_cache_hit_makes_no_request(make_fetcher, image_host, tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="backend.images")
    fetcher = make_fetcher(allowed_image_hosts=("127.0.0.1",), image_cache_max_mb=1)
    url = f"{image_host.base_url}/img.jpg"
    assert fetcher.fetch(url, 3) == payload("img")
    assert fetcher.fetch(url, 3) == payload("img")
    assert len(image_host.requests) == 1
    assert len(cache_files(tmp_path / "cache")) == 1
    assert "cache hit for task 3" in caplog.text


def test_cache_disabled_at_zero(make_fetcher, image_host, tmp_path):
    fetcher = make_fetcher(allowed_image_hosts=("127.0.0.1",), image_cache_max_mb=0)
    url = f"{image_host.base_url}/img.jpg"
    fetcher.fetch(url, 3)
    fetcher.fetch(url, 3)
    assert len(image_host.requests) == 2
    assert cache_files(tmp_path / "cache") == []


def test_cache_keys_include_label_studio_host(make_fetcher, fake_label_studio, serve, tmp_path):
    other = serve(FakeLabelStudio(uploads={"/data/upload/1/x.jpg": payload("other-x")}))
    first = make_fetcher(
        label_studio_url=fake_label_studio.base_url, label_studio_api_key=LEGACY_TOKEN, image_cache_max_mb=1
    )
    second = make_fetcher(label_studio_url=other.base_url, label_studio_api_key=LEGACY_TOKEN, image_cache_max_mb=1)
    assert first.fetch("/data/upload/1/x.jpg", 1) == payload("x")
    assert second.fetch("/data/upload/1/x.jpg", 1) == payload("other-x")
    assert len(cache_files(tmp_path / "cache")) == 2


def test_failed_fetch_not_cached(make_fetcher, image_host, tmp_path):
    fetcher = make_fetcher(allowed_image_hosts=("127.0.0.1",), image_cache_max_mb=1)
    fetch_error(fetcher, f"{image_host.base_url}/status/500", 3)
    fetch_error(fetcher, f"{image_host.base_url}/status/500", 3)
    assert len(image_host.requests) == 2
    assert cache_files(tmp_path / "cache") == []


def test_cache_evicts_least_recently_used(make_fetcher, image_host, tmp_path):
    bound = 1024 * 1024
    fetcher = make_fetcher(allowed_image_hosts=("127.0.0.1",), image_cache_max_mb=1, max_image_mb=1)

    def url(name: str) -> str:
        return f"{image_host.base_url}/blob?name={name}&size={300 * KIB}"

    for name in ("b0", "b1", "b2"):
        fetcher.fetch(url(name), 1)
    fetcher.fetch(url("b0"), 1)
    assert len(image_host.requests) == 3

    # A fourth 300 KiB image exceeds 1 MiB, so b1, the least recently used, goes.
    fetcher.fetch(url("b3"), 1)
    assert sum(path.stat().st_size for path in cache_files(tmp_path / "cache")) <= bound
    fetcher.fetch(url("b0"), 1)
    assert len(image_host.requests) == 4
    fetcher.fetch(url("b1"), 1)
    assert len(image_host.requests) == 5

    for name in ("b4", "b5", "b6"):
        fetcher.fetch(url(name), 1)
        assert sum(path.stat().st_size for path in cache_files(tmp_path / "cache")) <= bound


def test_cache_write_failure_leaves_no_file(make_fetcher, image_host, tmp_path, monkeypatch, caplog):
    def fail_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(image_cache.os, "fsync", fail_fsync)
    fetcher = make_fetcher(allowed_image_hosts=("127.0.0.1",), image_cache_max_mb=1)
    url = f"{image_host.base_url}/img.jpg"
    assert fetcher.fetch(url, 3) == payload("img")
    assert fetcher.fetch(url, 3) == payload("img")
    assert len(image_host.requests) == 2
    assert cache_files(tmp_path / "cache") == []
    assert list((tmp_path / "cache").glob(".tmp-*")) == []
    warnings = [record for record in caplog.records if "Image cache write failed" in record.getMessage()]
    assert len(warnings) == 1


def _put_then_die_before_rename(directory: str, key: str, data: bytes) -> None:
    image_cache.os.replace = lambda *args: os._exit(3)
    image_cache.ImageCache(Path(directory), 1024 * 1024).put(key, data)


def test_crash_mid_write_leaves_no_cache_file(make_fetcher, image_host, tmp_path):
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    url = f"{image_host.base_url}/img.jpg"
    key = images._cache_key("web", images._normalise_web_url(url))
    writer = multiprocessing.get_context("fork").Process(
        target=_put_then_die_before_rename, args=(str(cache_dir), key, payload("img"))
    )
    writer.start()
    writer.join(timeout=30)
    assert writer.exitcode == 3
    assert len(list(cache_dir.glob(".tmp-*"))) == 1
    assert cache_files(cache_dir) == []

    fetcher = make_fetcher(allowed_image_hosts=("127.0.0.1",), image_cache_max_mb=1)
    assert fetcher.fetch(url, 3) == payload("img")
    assert len(image_host.requests) == 1
    assert (cache_dir / f"{key}.img").read_bytes() == payload("img")


def test_stale_temp_files_removed_on_eviction(tmp_path):
    stale = tmp_path / ".tmp-crashed.part"
    stale.write_bytes(b"partial")
    old = time.time() - 2 * image_cache.CACHE_STALE_TEMP_S
    os.utime(stale, (old, old))
    fresh = tmp_path / ".tmp-in-progress.part"
    fresh.write_bytes(b"partial")
    cache = image_cache.ImageCache(tmp_path, 1024 * 1024)
    for index in range(4):
        cache.put(f"{index:064x}", payload(str(index), 300 * KIB))
    assert not stale.exists()
    assert fresh.exists()


def _fill_cache(directory: str, worker: int, count: int) -> None:
    cache = image_cache.ImageCache(Path(directory), 1024 * 1024)
    for index in range(count):
        name = f"{worker}-{index}"
        cache.put(hashlib.sha256(name.encode()).hexdigest(), payload(name, 100 * KIB))


def test_cache_shared_by_processes(tmp_path):
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_fill_cache, args=(str(tmp_path), worker, 15)) for worker in range(4)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=30)
        assert process.exitcode == 0

    expected = {
        hashlib.sha256(f"{worker}-{index}".encode()).hexdigest(): payload(f"{worker}-{index}", 100 * KIB)
        for worker in range(4)
        for index in range(15)
    }
    files = cache_files(tmp_path)
    assert files
    for path in files:
        assert path.read_bytes() == expected[path.stem]
    total = sum(path.stat().st_size for path in files)
    assert total <= 1024 * 1024
    assert int((tmp_path / ".size").read_text()) == total
    assert not list(tmp_path.glob(".tmp-*"))


# Batches and logging.


def test_fetch_many_keeps_order_and_errors(make_fetcher, image_host):
    fetcher = make_fetcher(allowed_image_hosts=("127.0.0.1",))
    results = fetcher.fetch_many(
        [
            (1, f"{image_host.base_url}/img.jpg"),
            (2, f"{image_host.base_url}/status/404"),
            (3, "file:///etc/passwd"),
            (4, f"{image_host.base_url}/blob?name=four&size=999"),
        ]
    )
    assert results[0] == payload("img")
    assert isinstance(results[1], FetchError) and results[1].reason == "not_found"
    assert isinstance(results[2], FetchError) and results[2].reason == "invalid_url"
    assert results[2].task_id == 3
    assert results[3] == payload("four", 999)


def test_fetch_many_bounds_concurrency(make_fetcher, image_host):
    fetcher = make_fetcher(allowed_image_hosts=("127.0.0.1",), fetch_concurrency=2)
    items = [(index, f"{image_host.base_url}/slow?name=s{index}") for index in range(6)]
    assert fetcher.fetch_many(items) == [payload(f"s{index}") for index in range(6)]
    assert image_host.max_in_flight == 2


def test_fetch_many_empty(make_fetcher):
    assert make_fetcher().fetch_many([]) == []


def test_failure_logged_once_with_task_and_reason(make_fetcher, image_host, caplog):
    caplog.set_level(logging.INFO, logger="backend.images")
    fetcher = make_fetcher(allowed_image_hosts=("127.0.0.1",))
    fetch_error(fetcher, f"{image_host.base_url}/status/404?X-Amz-Signature={PRESIGN_SIGNATURE}", 42)
    records = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert len(records) == 1
    message = records[0].getMessage()
    assert "task 42" in message
    assert "not_found" in message
    assert "/status/404" in message
    assert PRESIGN_SIGNATURE not in message
