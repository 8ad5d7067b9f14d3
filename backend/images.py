"""Fetch task images from Label Studio, its cloud storages, mounted directories or the web.

The HTTP server and the training worker share one fetcher. It accepts the image URL forms
that Label Studio 1.23 puts in task data:

* ``/data/upload/<project>/<file>`` and ``/data/local-files/?d=<path>``, relative to the
  Label Studio host or as full URLs on it. They are read from disk when Label Studio's
  directories are mounted here, and downloaded with Label Studio credentials otherwise.
* ``s3://``, ``gs://`` and ``azure-blob://`` URIs, resolved through Label Studio's presign
  endpoint for the task.
* Plain ``http(s)://`` URLs on other hosts. They are downloaded without credentials, and
  only from public addresses unless the host is in ``ALLOWED_IMAGE_HOSTS``.

Every download has a time and size limit. Successful downloads go to an on-disk cache that
several processes may share.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.cookiejar
import ipaddress
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, unquote, urljoin, urlsplit, urlunsplit

import httpx
import jwt
import requests
import urllib3
from label_studio_sdk.core.api_error import ApiError
from label_studio_sdk.core.client_wrapper import SyncClientWrapper
from label_studio_sdk.tokens.client_ext import TokensClientExt
from requests.adapters import HTTPAdapter

from backend.image_cache import ImageCache
from thumbnail_ml.settings import Settings

logger = logging.getLogger(__name__)

FetchReason = Literal[
    "invalid_url",
    "blocked",
    "not_found",
    "unauthorized",
    "forbidden",
    "http_error",
    "timeout",
    "connection_failed",
    "too_large",
    "empty",
    "bad_content_type",
    "no_credentials",
    "too_many_redirects",
    "internal_error",
]

CLOUD_SCHEMES = ("s3", "gs", "azure-blob")
HTTP_SCHEMES = ("http", "https")
DEFAULT_PORTS = {"http": 80, "https": 443}
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5

# Label Studio 1.23.2 routes /tasks/<id>/resolve/ and /tasks/<id>/presign/ to the same view.
# Its io_storages/urls.py keeps /presign/ "for backwards compatibility", so older releases have it too.
PRESIGN_PATH = "/tasks/{task_id}/presign/"
UPLOAD_PREFIX = "/data/upload/"
LOCAL_FILES_PATHS = ("/data/local-files/", "/data/local-files")
TOKEN_REFRESH_PATH = "/api/token/refresh/"

# Label Studio 1.23.2 issues access tokens for 300 s. Renewing 30 s early keeps one from
# expiring while a request is in flight.
TOKEN_REFRESH_MARGIN_S = 30.0

# A download must finish within connect + 4 x read timeout, so a server that sends a byte
# just before each read timeout cannot hold a thread forever.
DEADLINE_READ_TIMEOUTS = 4
READ_CHUNK_BYTES = 64 * 1024
BYTES_PER_MB = 1024 * 1024

# Label Studio returns login pages and API errors with these types; a correctly served image does not.
REJECTED_CONTENT_TYPES = frozenset({"text/html", "application/xhtml+xml", "application/json"})

# Percent-encoded dot, slash and backslash. Label Studio 1.23.2 builds local-files URLs with
# urllib.parse.quote and upload URLs with Django's filepath_to_uri, which turns backslashes
# into slashes. Neither encodes dots or slashes, so these codes only appear in attempts to
# hide a "../" from the path checks. A backslash in a file name (quoted as %5C) is rejected
# as well, because Windows treats it as a separator.
ENCODED_PATH_CHARACTERS = ("%2e", "%2f", "%5c")



class FetchError(Exception):
    """Failure to fetch one image.

    ``str(error)`` names the image URL, without credentials or presigned query strings,
    and states what to do next.

    Attributes:
        reason: Machine-readable cause, one of :data:`FetchReason`.
        url: The image URL as shown in messages and logs.
        task_id: Label Studio task id, or None.
        status: HTTP status of the response that failed, or None.
    """

    def __init__(
        self,
        reason: FetchReason,
        message: str,
        *,
        url: str | None = None,
        task_id: int | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.url = url
        self.task_id = task_id
        self.status = status


@dataclass(frozen=True)
class _Target:
    """Source and fetch route of one image URL.

    Attributes:
        display: The URL as shown in messages and logs.
        cache_key: SHA-256 hex digest of the normalised URL.
        http_url: First URL to request, or None when only the disk can serve the image.
        label_studio: Whether ``http_url`` is on the Label Studio host, so it gets credentials.
        disk_path: Resolved path inside a mounted Label Studio directory, or None.
        disk_setting: Name of the setting that gave ``disk_path``, for messages.
        kind: ``"upload"``, ``"local-files"``, ``"cloud"``, ``"web"``, or ``"other"`` for
            other paths on the Label Studio host; it selects hints in messages.
    """

    display: str
    cache_key: str
    http_url: str | None
    label_studio: bool
    disk_path: Path | None = None
    disk_setting: str | None = None
    kind: str = "web"


class ImageFetcher:
    """Fetch task images by URL, with Label Studio credentials, limits and a disk cache.

    One instance is safe to use from several threads. Call :meth:`close` when done.
    """

    def __init__(self, settings: Settings) -> None:
        """Create a fetcher; nothing is contacted until the first fetch.

        Args:
            settings: Label Studio URL and API key, mounted directories, cache, limits
                and timeouts.

        Raises:
            ValueError: ``settings.label_studio_url`` is not an http(s) URL with a host.
        """
        self._settings = settings
        self._max_bytes = int(settings.max_image_mb * BYTES_PER_MB)
        self._connect_timeout = settings.fetch_connect_timeout
        self._read_timeout = settings.fetch_read_timeout
        self._deadline_s = self._connect_timeout + DEADLINE_READ_TIMEOUTS * self._read_timeout
        self._allowed_hosts = frozenset(host.strip().lower() for host in settings.allowed_image_hosts)
        self._settings_base = _normalise_base_url(settings.label_studio_url)
        self._cache = ImageCache(Path(settings.image_cache_dir), settings.image_cache_max_mb * BYTES_PER_MB)
        self._session = self._create_session()

        self._credentials_lock = threading.Lock()
        self._setup_base: str | None = None
        self._setup_token: str | None = None
        self._auth: _LabelStudioAuth | None = None
        self._token_http_client: httpx.Client | None = None
        self._warned_key_to_setup_host = False

    def _create_session(self) -> requests.Session:
        session = requests.Session()

        # Without proxy variables and .netrc, no credentials reach an image host by accident,
        # and the address check below applies to the host that is actually contacted.
        session.trust_env = False
        session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
        session.headers["Accept-Encoding"] = "identity"

        # Each serving thread may run a fetch_many of fetch_concurrency downloads at once.
        pool_size = max(1, self._settings.fetch_concurrency) * max(1, self._settings.threads)
        adapter = HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size, max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session

    def __enter__(self) -> ImageFetcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP connection pools."""
        self._session.close()
        with self._credentials_lock:
            if self._token_http_client is not None:
                self._token_http_client.close()
                self._token_http_client = None
            self._auth = None

    def set_label_studio_credentials(self, hostname: str | None, access_token: str | None) -> None:
        """Store the Label Studio host and token from a ``/setup`` request.

        They are used only where the settings have no ``LABEL_STUDIO_URL`` or
        ``LABEL_STUDIO_API_KEY``. The hostname also marks full URLs on that host as
        Label Studio URLs, which are then requested from ``LABEL_STUDIO_URL`` if it is set.

        Args:
            hostname: Label Studio's base URL, e.g. ``http://localhost:8080``.
            access_token: The token Label Studio sent; 1.23 always sends the user's legacy token.
        """
        base = None
        if hostname:
            try:
                base = _normalise_base_url(hostname)
            except ValueError:
                logger.warning(
                    "Ignoring hostname %r from /setup: expected an http(s) URL such as "
                    "http://localhost:8080", hostname,
                )
        token = access_token.strip() if access_token and access_token.strip() else None
        with self._credentials_lock:
            if base != self._setup_base:
                logger.info("Label Studio host from /setup: %s", base)
            self._setup_base = base
            self._setup_token = token

    # Public fetching API.

    def fetch(self, url: str, task_id: int | None = None) -> bytes:
        """Return the bytes of one image.

        Args:
            url: Image URL from the task data.
            task_id: Label Studio task id. Required for ``s3://``, ``gs://`` and
                ``azure-blob://`` URIs, and used in log lines.

        Raises:
            FetchError: The image could not be fetched; ``reason`` gives the cause.
        """
        try:
            return self._fetch(url, task_id)
        except FetchError as error:
            error.task_id = task_id
            logger.warning("Image fetch failed for task %s (reason %s): %s", task_id, error.reason, error)
            raise

    def fetch_many(self, requests: list[tuple[int | None, str]]) -> list[bytes | FetchError]:
        """Fetch several images in parallel, with at most ``fetch_concurrency`` at a time.

        Args:
            requests: ``(task_id, url)`` pairs.

        Returns:
            One entry per request, in input order: the image bytes, or the
            :class:`FetchError` for that image. No exception is raised for a single image.
        """
        if not requests:
            return []
        workers = min(max(1, self._settings.fetch_concurrency), len(requests))
        if workers == 1:
            return [self._fetch_or_error(task_id, url) for task_id, url in requests]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="image-fetch") as pool:
            return list(pool.map(lambda item: self._fetch_or_error(*item), requests))

    def _fetch_or_error(self, task_id: int | None, url: str) -> bytes | FetchError:
        try:
            return self.fetch(url, task_id)
        except FetchError as error:
            return error
        except Exception:
            # A bug must not fail the other images of the batch, but it must be visible.
            logger.exception("Unexpected error while fetching the image of task %s", task_id)
            return FetchError(
                "internal_error",
                f"unexpected error while fetching the image of task {task_id}; the server log "
                "has the traceback",
                url=_display_url(url) if isinstance(url, str) else None,
                task_id=task_id,
            )

    def _fetch(self, url: str, task_id: int | None) -> bytes:
        target = self._resolve_target(url, task_id)

        if target.disk_path is not None:
            data = self._read_from_disk(target)
            if data is not None:
                return data

        if target.http_url is None:
            raise FetchError(
                "not_found",
                f"{target.display} was not found at {target.disk_path} ({target.disk_setting}), "
                "and LABEL_STUDIO_URL is not set, so it cannot be downloaded from Label Studio "
                f"instead. Check {target.disk_setting}, or set LABEL_STUDIO_URL.",
                url=target.display,
            )

        cached = self._cache.get(target.cache_key)
        if cached is not None:
            logger.debug("Image cache hit for task %s: %s", task_id, target.display)
            return cached

        data = self._download(target)
        self._cache.put(target.cache_key, data)
        return data

    # URL forms.

    def _label_studio_base(self) -> str | None:
        """Return the Label Studio base URL: ``LABEL_STUDIO_URL``, else the /setup hostname."""
        if self._settings_base:
            return self._settings_base
        with self._credentials_lock:
            return self._setup_base

    def _label_studio_origins(self) -> set[tuple[str, str, int]]:
        with self._credentials_lock:
            bases = [self._settings_base, self._setup_base]
        return {_origin(base) for base in bases if base}

    def _resolve_target(self, url: str, task_id: int | None) -> _Target:
        """Classify ``url`` and work out where to fetch it from.

        Raises:
            FetchError: The URL is malformed, of an unsupported form, or escapes a mounted
                directory, or Label Studio's host is needed but unknown.
        """
        if not isinstance(url, str) or not url.strip():
            raise FetchError("invalid_url", f"invalid image URL {url!r}: expected a non-empty string")
        url = url.strip()
        display = _display_url(url)
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise FetchError(
                "invalid_url", f"invalid image URL {display!r}: it cannot be parsed", url=display
            ) from None
        scheme = parts.scheme.lower()

        if scheme in CLOUD_SCHEMES:
            return self._cloud_target(url, parts.netloc, task_id)

        if not scheme and not parts.netloc and parts.path.startswith("/"):
            return self._label_studio_target(parts.path, parts.query, display)

        if scheme in HTTP_SCHEMES and parts.hostname:
            origin = (scheme, parts.hostname.lower(), port or DEFAULT_PORTS[scheme])
            if origin in self._label_studio_origins():
                display = _display_url(url, keep_query=True)
                return self._label_studio_target(parts.path or "/", parts.query, display)
            return _Target(
                display=display,
                cache_key=_cache_key("web", _normalise_web_url(url)),
                http_url=_without_userinfo(url),
                label_studio=False,
            )

        raise FetchError(
            "invalid_url",
            f"unsupported image URL {display!r}: use http(s)://, a Label Studio path such as "
            "/data/upload/... or /data/local-files/?d=..., or an s3://, gs:// or azure-blob:// URI",
            url=display,
        )

    def _cloud_target(self, uri: str, bucket: str, task_id: int | None) -> _Target:
        if not bucket:
            raise FetchError(
                "invalid_url", f"invalid cloud storage URI {uri!r}: it has no bucket", url=uri
            )
        if not isinstance(task_id, int) or isinstance(task_id, bool) or task_id < 0:
            raise FetchError(
                "invalid_url",
                f"{uri} can only be fetched through Label Studio's presign endpoint for its task, "
                f"but the task id is {task_id!r}. Pass the task id with the URL.",
                url=uri,
            )
        base = self._label_studio_base()
        if base is None:
            raise FetchError(
                "no_credentials",
                f"{uri} must be fetched through Label Studio, but its URL is unknown. Set "
                "LABEL_STUDIO_URL, or connect the backend in Label Studio so that /setup sends it.",
                url=uri,
            )
        # Label Studio decodes fileuri with urlsafe base64 and builds its own links the same way.
        encoded = base64.urlsafe_b64encode(uri.encode()).decode()
        # The base URL keeps a URL prefix, under which Label Studio serves all of its routes.
        presign_url = f"{base}{PRESIGN_PATH.format(task_id=task_id)}?fileuri={encoded}"
        return _Target(
            display=uri,
            cache_key=_cache_key("cloud", f"{uri}|task={task_id}"),
            http_url=presign_url,
            label_studio=True,
            kind="cloud",
        )

    def _label_studio_target(self, path: str, query: str, display: str) -> _Target:
        """Build the target of a path on the Label Studio host, checking the mounted-directory forms."""
        base = self._label_studio_base()
        relative = path
        if base:
            # Behind a URL prefix, Label Studio puts the prefix in front of /data/.
            prefix = urlsplit(base).path.rstrip("/")
            if prefix and path.startswith(prefix + "/"):
                relative = path[len(prefix):]

        kind = "other"
        disk_path = None
        disk_setting = None
        if relative in LOCAL_FILES_PATHS:
            kind = "local-files"
            document_root = self._settings.document_root
            rel_path = _local_files_parameter(query, display)
            _check_relative_path(rel_path, display)
            if document_root is not None:
                disk_path = _path_inside(Path(document_root), rel_path, display)
                disk_setting = "LOCAL_FILES_DOCUMENT_ROOT"
        elif relative.startswith(UPLOAD_PREFIX):
            kind = "upload"
            rel_path = _upload_relative_path(relative[len(UPLOAD_PREFIX):], display)
            _check_relative_path(rel_path, display)
            data_dir = self._settings.label_studio_data_dir
            if data_dir is not None:
                disk_path = _path_inside(Path(data_dir) / "media" / "upload", rel_path, display)
                disk_setting = "LABEL_STUDIO_BASE_DATA_DIR"

        if base is None:
            if disk_path is not None:
                return _Target(
                    display=display, cache_key="", http_url=None, label_studio=True,
                    disk_path=disk_path, disk_setting=disk_setting, kind=kind,
                )
            raise FetchError(
                "no_credentials",
                f"{display} is a path on the Label Studio host, but its URL is unknown. Set "
                "LABEL_STUDIO_URL (for example http://localhost:8080), or connect the backend in "
                "Label Studio so that /setup sends it.",
                url=display,
            )

        path_and_query = path + (f"?{query}" if query else "")
        return _Target(
            display=display,
            cache_key=_cache_key("label-studio", f"{_origin_url(base)}{path_and_query}"),
            http_url=f"{_origin_url(base)}{path_and_query}",
            label_studio=True,
            disk_path=disk_path,
            disk_setting=disk_setting,
            kind=kind,
        )

    # Disk.

    def _read_from_disk(self, target: _Target) -> bytes | None:
        """Return the file's bytes, or None when it is not on disk."""
        path = target.disk_path
        assert path is not None
        try:
            size = path.stat().st_size
            if not path.is_file():
                return None
            if size > self._max_bytes:
                raise FetchError(
                    "too_large",
                    f"{target.display} ({path}) is {size} bytes, over the limit of {self._max_bytes} "
                    "bytes. Raise MAX_IMAGE_MB to accept it.",
                    url=target.display,
                )
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except PermissionError:
            raise FetchError(
                "forbidden",
                f"{target.display} cannot be read from {path}: permission denied. Give this "
                "process read access to the mounted directory.",
                url=target.display,
            ) from None
        except OSError as exc:
            raise FetchError(
                "not_found",
                f"{target.display} could not be read from {path}: {exc.strerror or exc}",
                url=target.display,
            ) from None
        if not data:
            raise FetchError("empty", f"{target.display} ({path}) is an empty file", url=target.display)
        return data

    # HTTP.

    def _download(self, target: _Target) -> bytes:
        """Download ``target``, following redirects one hop at a time.

        Credentials go only to the Label Studio host, and only while the chain of redirects
        stays on it. Every other host is checked before it is contacted.
        """
        assert target.http_url is not None
        deadline = time.monotonic() + self._deadline_s
        url = target.http_url
        on_label_studio = target.label_studio
        visited: set[str] = set()
        auth = self._label_studio_auth(target.display) if on_label_studio else None

        for _hop in range(MAX_REDIRECTS + 1):
            visited.add(url)
            if on_label_studio:
                assert auth is not None
                response = self._send_to_label_studio(url, auth, target, deadline)
            else:
                self._check_host_allowed(url, target)
                response = self._send(url, {}, target, deadline)

            with contextlib.closing(response):
                location = response.headers.get("Location")
                if response.status_code in REDIRECT_STATUSES and location:
                    next_url = urljoin(url, location)
                    next_scheme = urlsplit(next_url).scheme.lower()
                    if next_scheme not in HTTP_SCHEMES:
                        raise FetchError(
                            "blocked",
                            f"{target.display} redirected to a URL with the scheme {next_scheme!r}, "
                            "which was not followed; only http and https redirects are",
                            url=target.display,
                        )
                    if next_url in visited:
                        raise FetchError(
                            "too_many_redirects",
                            f"{target.display} redirects in a loop (back to "
                            f"{_display_url(next_url, keep_query=False)}); fix the server's "
                            "redirects or use the final image URL",
                            url=target.display,
                        )
                    on_label_studio = on_label_studio and _origin(next_url) == _origin(url)
                    url = next_url
                    continue

                self._check_status(response, target, url, on_label_studio, auth)
                return self._read_body(response, target, deadline)

        raise FetchError(
            "too_many_redirects",
            f"{target.display} redirected more than {MAX_REDIRECTS} times; use the final image URL",
            url=target.display,
        )

    def _send_to_label_studio(
        self, url: str, auth: _LabelStudioAuth, target: _Target, deadline: float
    ) -> requests.Response:
        """Send an authenticated GET, renewing a rejected access token once."""
        header = auth.authorization(target.display)
        response = self._send(url, {"Authorization": header}, target, deadline)
        if response.status_code == 401 and auth.is_personal_access_token:
            response.close()
            auth.invalidate(header)
            header = auth.authorization(target.display)
            response = self._send(url, {"Authorization": header}, target, deadline)
        return response

    def _send(
        self, url: str, headers: dict[str, str], target: _Target, deadline: float
    ) -> requests.Response:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise self._deadline_error(target)
        # NOTE: the download deadline is checked only while the body is read. A server that sends
        # its status line and headers a byte at a time is limited by the read timeout per byte alone.
        timeout = (min(self._connect_timeout, remaining), min(self._read_timeout, remaining))
        logged_url = _display_url(url, keep_query=False)
        try:
            return self._session.get(url, headers=headers, stream=True, allow_redirects=False, timeout=timeout)
        except requests.ConnectTimeout:
            raise FetchError(
                "timeout",
                f"connecting to {logged_url} for {target.display} timed out after {timeout[0]:g} s; "
                "check that the host is up, or raise FETCH_CONNECT_TIMEOUT",
                url=target.display,
            ) from None
        except requests.Timeout:
            raise FetchError(
                "timeout",
                f"{logged_url} sent no response for {target.display} within {timeout[1]:g} s; check the "
                "server, or raise FETCH_READ_TIMEOUT",
                url=target.display,
            ) from None
        except requests.ConnectionError as exc:
            raise FetchError(
                "connection_failed",
                f"connecting to {logged_url} for {target.display} failed ({_describe_os_error(exc)}); "
                "check the URL and that the host is reachable from this backend",
                url=target.display,
            ) from None
        except requests.RequestException as exc:
            raise FetchError(
                "invalid_url",
                f"{logged_url} cannot be requested for {target.display} ({type(exc).__name__}); check the URL",
                url=target.display,
            ) from None

    def _check_host_allowed(self, url: str, target: _Target) -> None:
        """Raise unless ``url`` is on Label Studio, an allowed host, or only public addresses.

        Raises:
            FetchError: ``blocked`` for a private, loopback, link-local or reserved address.
        """
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        scheme = parts.scheme.lower()
        port = parts.port or DEFAULT_PORTS.get(scheme, 0)
        if (scheme, host, port) in self._label_studio_origins():
            return
        if host in self._allowed_hosts or f"{host}:{port}" in self._allowed_hosts:
            return

        # NOTE: requests resolves the name again when it connects, so a DNS server that changes
        # its answer in between (DNS rebinding) can still lead to a private address.
        try:
            addresses = _resolve_addresses(host, port)
        except OSError as exc:
            raise FetchError(
                "connection_failed",
                f"the host {host!r} of {target.display} could not be resolved "
                f"({_describe_os_error(exc)}); check the URL and this backend's DNS",
                url=target.display,
            ) from None
        blocked = [address for address in addresses if not _is_public_address(address)]
        if not addresses or blocked:
            hint = ""
            if target.kind == "cloud":
                hint = " If this is your storage server (for example MinIO), add it to ALLOWED_IMAGE_HOSTS."
            elif urlsplit(target.display).path.startswith("/data/"):
                hint = (
                    " If this is your Label Studio, set LABEL_STUDIO_URL to "
                    f"{_origin_url(url)} so that its URLs are recognised."
                )
            raise FetchError(
                "blocked",
                f"{_display_url(url, keep_query=False)} (for {target.display}) resolves to "
                f"{', '.join(blocked) or 'no address'}, which is not a public address, so it was "
                f"not contacted. Add {host!r} to ALLOWED_IMAGE_HOSTS to allow it.{hint}",
                url=target.display,
            )

    def _check_status(
        self,
        response: requests.Response,
        target: _Target,
        url: str,
        on_label_studio: bool,
        auth: _LabelStudioAuth | None,
    ) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        where = f"Label Studio at {_origin_url(url)}" if on_label_studio else _display_url(url, keep_query=False)

        if status == 401:
            if on_label_studio and auth is not None:
                message = (
                    f"authentication failed for {target.display}: {where} rejected "
                    f"{auth.description} (HTTP 401). "
                )
                if auth.is_personal_access_token:
                    message += (
                        "A fresh access token was also rejected; check that the token was "
                        "created on this Label Studio and that its user still exists."
                    )
                else:
                    message += (
                        "Label Studio 1.23 turns legacy tokens off by default: set "
                        "LABEL_STUDIO_API_KEY to a personal access token, or enable legacy tokens "
                        "in the organization's API token settings."
                    )
            else:
                message = (
                    f"{where} requires authentication for {target.display} (HTTP 401), and this "
                    "backend sends credentials only to Label Studio. Make the image public, or "
                    "import it into Label Studio."
                )
            raise FetchError("unauthorized", message, url=target.display, status=status)

        if status == 403:
            if on_label_studio:
                hint = "check that the API key's user is a member of the task's project"
            else:
                hint = "the URL may have expired or the object may be private"
            raise FetchError(
                "forbidden", f"{where} denied access to {target.display} (HTTP 403); {hint}",
                url=target.display, status=status,
            )

        if status == 404:
            if target.kind == "cloud":
                hint = (
                    "Label Studio found no cloud storage of the task's project that covers this "
                    "URI, or the task does not exist"
                )
            elif target.kind == "local-files" and on_label_studio:
                hint = (
                    "the file is missing, or no local storage of the project covers its directory "
                    "(Label Studio serves local files only inside a connected local storage)"
                )
            else:
                hint = "check that the file still exists"
            raise FetchError(
                "not_found", f"{where} returned HTTP 404 for {target.display}; {hint}",
                url=target.display, status=status,
            )

        reason_phrase = f" {response.reason}" if response.reason else ""
        raise FetchError(
            "http_error",
            f"{where} returned HTTP {status}{reason_phrase} for {target.display}; try again later, "
            "or check that server's log",
            url=target.display,
            status=status,
        )

    def _read_body(self, response: requests.Response, target: _Target, deadline: float) -> bytes:
        """Read the body while enforcing the size limit and the download deadline."""
        declared = _content_length(response)
        if declared == 0:
            raise FetchError("empty", f"{target.display} returned an empty body", url=target.display)
        if declared is not None and declared > self._max_bytes:
            raise FetchError(
                "too_large",
                f"{target.display} is {declared} bytes (Content-Length), over the limit of "
                f"{self._max_bytes} bytes. Raise MAX_IMAGE_MB to accept it.",
                url=target.display,
            )

        content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type in REJECTED_CONTENT_TYPES or content_type.endswith("+json"):
            raise FetchError(
                "bad_content_type",
                f"{target.display} returned {content_type} instead of an image; the URL probably "
                "leads to a login or error page",
                url=target.display,
            )

        chunks: list[bytes] = []
        total = 0
        while True:
            if time.monotonic() > deadline:
                raise self._deadline_error(target)
            try:
                # read1 returns after one socket read, so the deadline is checked even when
                # a server sends a few bytes at a time.
                chunk = response.raw.read1(READ_CHUNK_BYTES, decode_content=True)
            except urllib3.exceptions.ReadTimeoutError:
                raise FetchError(
                    "timeout",
                    f"{target.display} stopped sending data for {self._read_timeout:g} s; check the "
                    "server, or raise FETCH_READ_TIMEOUT",
                    url=target.display,
                ) from None
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise FetchError(
                    "connection_failed",
                    f"the download of {target.display} broke off ({type(exc).__name__}); try again",
                    url=target.display,
                ) from None
            if not chunk:
                break
            total += len(chunk)
            if total > self._max_bytes:
                raise FetchError(
                    "too_large",
                    f"{target.display} is over the limit of {self._max_bytes} bytes; the download "
                    "was stopped. Raise MAX_IMAGE_MB to accept it.",
                    url=target.display,
                )
            chunks.append(chunk)

        if total == 0:
            raise FetchError("empty", f"{target.display} returned an empty body", url=target.display)
        return b"".join(chunks)

    def _deadline_error(self, target: _Target) -> FetchError:
        return FetchError(
            "timeout",
            f"the download of {target.display} did not finish within {self._deadline_s:g} s "
            f"(FETCH_CONNECT_TIMEOUT + {DEADLINE_READ_TIMEOUTS} x FETCH_READ_TIMEOUT); check the "
            "server, or raise FETCH_READ_TIMEOUT",
            url=target.display,
        )

    # Label Studio credentials.

    def _label_studio_auth(self, display: str) -> _LabelStudioAuth:
        """Return the authenticator for the current Label Studio host and key.

        Raises:
            FetchError: ``no_credentials`` when no key is known, ``unauthorized`` when the
                SDK rejects the key (an expired personal access token).
        """
        base = self._label_studio_base()
        assert base is not None
        with self._credentials_lock:
            if self._settings.label_studio_api_key:
                api_key, source = self._settings.label_studio_api_key.strip(), "LABEL_STUDIO_API_KEY"
            elif self._setup_token:
                api_key, source = self._setup_token, "the /setup request"
            else:
                raise FetchError(
                    "no_credentials",
                    f"{display} must be downloaded from Label Studio at {base}, but no API key is "
                    "known. Set LABEL_STUDIO_API_KEY to a personal access token (Label Studio: "
                    "Account & Settings > Personal Access Token).",
                    url=display,
                )
            if source == "LABEL_STUDIO_API_KEY" and not self._settings_base and not self._warned_key_to_setup_host:
                # Anyone who can reach /setup chooses that host, so the key should not depend on it.
                logger.warning(
                    "LABEL_STUDIO_API_KEY is sent to %s, the host named in the last /setup request, "
                    "because LABEL_STUDIO_URL is not set. Set LABEL_STUDIO_URL so that the key only "
                    "goes to a host you chose.", base,
                )
                self._warned_key_to_setup_host = True
            if self._auth is None or not self._auth.matches(base, api_key):
                if self._token_http_client is None:
                    self._token_http_client = httpx.Client(
                        timeout=httpx.Timeout(self._read_timeout, connect=self._connect_timeout),
                        follow_redirects=False,
                        trust_env=False,
                    )
                self._auth = _LabelStudioAuth(base, api_key, source, self._token_http_client)
            return self._auth


class _LabelStudioAuth:
    """The ``Authorization`` header for one Label Studio host and API key.

    A personal access token (a JWT) is exchanged at ``/api/token/refresh/`` by
    label-studio-sdk for a short-lived access token, sent as ``Bearer``. The access token
    is renewed ``TOKEN_REFRESH_MARGIN_S`` before its ``exp`` and after a 401. Any other
    key is a legacy token, sent as ``Token <key>``.
    """

    def __init__(self, base_url: str, api_key: str, source: str, http_client: httpx.Client) -> None:
        self.base_url = base_url
        self._api_key = api_key
        self._source = source
        self._lock = threading.Lock()
        self._access_token: str | None = None
        self._access_expires_at: float | None = None
        self._tokens: TokensClientExt | None = None
        self._rejection: str | None = None

        # The same test as the SDK's: a key that decodes as a JWT is a personal access token.
        self.is_personal_access_token = _looks_like_jwt(api_key)
        try:
            self._tokens = _sdk_token_client(base_url, api_key, http_client)
        except ApiError as exc:
            # The SDK rejects an expired JWT, or one without an expiry, while it is constructed.
            detail = exc.body.get("detail") if isinstance(exc.body, dict) else None
            self._rejection = str(detail or "the token has expired or has no expiry date")

    @property
    def kind(self) -> str:
        return "personal access token" if self.is_personal_access_token else "legacy token"

    @property
    def description(self) -> str:
        """The token's kind and source, for messages; never the token itself."""
        return f"the {self.kind} from {self._source}"

    def matches(self, base_url: str, api_key: str) -> bool:
        return self.base_url == base_url and self._api_key == api_key

    def authorization(self, display: str) -> str:
        """Return the ``Authorization`` header value, exchanging the token when needed.

        Raises:
            FetchError: The exchange failed.
        """
        if self._tokens is None:
            raise FetchError(
                "unauthorized",
                f"authentication failed for {display}: label-studio-sdk rejected {self.description} "
                f"before sending it ({self._rejection}). Create a new personal access token in "
                "Label Studio (Account & Settings) and set LABEL_STUDIO_API_KEY to it.",
                url=display,
            )
        if not self.is_personal_access_token:
            return f"Token {self._api_key}"
        with self._lock:
            expires_at = self._access_expires_at
            if self._access_token is None or (
                expires_at is not None and expires_at - TOKEN_REFRESH_MARGIN_S <= _now()
            ):
                self._refresh(display)
            return f"Bearer {self._access_token}"

    def invalidate(self, header: str) -> None:
        """Forget the access token sent in ``header``, unless another thread renewed it already."""
        with self._lock:
            if self._access_token is not None and header == f"Bearer {self._access_token}":
                self._access_token = None

    def _refresh(self, display: str) -> None:
        assert self._tokens is not None
        endpoint = f"{self.base_url}{TOKEN_REFRESH_PATH}"
        try:
            access = self._tokens.refresh().access
        except ApiError as exc:
            if exc.status_code in (400, 401, 403):
                raise FetchError(
                    "unauthorized",
                    f"authentication failed for {display}: Label Studio at {self.base_url} "
                    f"rejected {self.description} when exchanging it at {TOKEN_REFRESH_PATH} "
                    f"(HTTP {exc.status_code}). Create a new personal access token in Label Studio "
                    "(Account & Settings) and set LABEL_STUDIO_API_KEY to it.",
                    url=display,
                    status=exc.status_code,
                ) from None
            raise FetchError(
                "http_error",
                f"exchanging {self.description} at {endpoint} for {display} failed with HTTP "
                f"{exc.status_code}; check that {self.base_url} is Label Studio 1.23 or newer",
                url=display,
                status=exc.status_code,
            ) from None
        except httpx.TimeoutException:
            raise FetchError(
                "timeout",
                f"exchanging {self.description} at {endpoint} for {display} timed out; check that "
                "Label Studio is up",
                url=display,
            ) from None
        except httpx.HTTPError as exc:
            raise FetchError(
                "connection_failed",
                f"exchanging {self.description} at {endpoint} for {display} failed "
                f"({type(exc).__name__}); check LABEL_STUDIO_URL",
                url=display,
            ) from None
        except ValueError:
            raise FetchError(
                "http_error",
                f"{endpoint} returned a response that is not JSON while exchanging "
                f"{self.description} for {display}; check that LABEL_STUDIO_URL points at Label Studio",
                url=display,
            ) from None

        self._access_token = access
        self._access_expires_at = _jwt_expiry(access)
        logger.debug("Exchanged %s for an access token at %s", self.description, endpoint)


def _sdk_token_client(base_url: str, api_key: str, http_client: httpx.Client) -> TokensClientExt:
    """Create label-studio-sdk's token client for ``api_key``.

    ``TokensClientExt.refresh`` is the SDK's own ``/api/token/refresh/`` exchange, the one
    ``LabelStudio`` uses for every API call; this fetcher reuses it rather than repeating it.

    Raises:
        label_studio_sdk.core.api_error.ApiError: ``api_key`` is a JWT that has expired or
            has no expiry.
    """
    # NOTE: label-studio-sdk 2.1.2 does not export these two classes from its package root,
    # and LabelStudio keeps its token client in a private attribute. Building them directly
    # avoids the private attribute, but an SDK upgrade may still move them.

    # The SDK joins "api/token/refresh/" to the base URL, so a trailing slash keeps a URL prefix.
    sdk_base_url = base_url.rstrip("/") + "/"
    wrapper = SyncClientWrapper(api_key=api_key, base_url=sdk_base_url, httpx_client=http_client, max_retries=0)
    return TokensClientExt(base_url=sdk_base_url, api_key=api_key, client_wrapper=wrapper)


def _now() -> float:
    """Return the wall-clock time that JWT ``exp`` claims are compared with."""
    return time.time()


def _resolve_addresses(host: str, port: int) -> list[str]:
    """Return the IP addresses that ``host`` resolves to, as the connection will see them.

    Raises:
        OSError: The name cannot be resolved.
    """
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def _is_public_address(address: str) -> bool:
    """Return whether ``address`` is globally routable (not private, loopback, link-local or reserved)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _looks_like_jwt(token: str) -> bool:
    """Return whether ``token`` decodes as a JWT (three base64url parts), ignoring its signature."""
    try:
        jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        return False
    return True


def _jwt_expiry(token: str) -> float | None:
    """Return the ``exp`` claim of a JWT as a Unix time, or None if it has none."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        return None
    expiry = claims.get("exp")
    return float(expiry) if isinstance(expiry, int | float) else None


def _normalise_base_url(url: str | None) -> str | None:
    """Return an http(s) base URL without a trailing slash, or None for an empty value.

    Raises:
        ValueError: ``url`` is not an http(s) URL with a host.
    """
    if url is None or not url.strip():
        return None
    base = url.strip().rstrip("/")
    parts = urlsplit(base)
    if parts.scheme.lower() not in HTTP_SCHEMES or not parts.hostname:
        raise ValueError(f"not an http(s) URL with a host: {url!r}")
    return base


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or DEFAULT_PORTS.get(scheme, 0)


def _origin_url(url: str) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return f"{parts.scheme.lower()}://{netloc}"


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def _display_url(url: str, keep_query: bool | None = None) -> str:
    """Return ``url`` for messages: no user info, no fragment, and no query on other hosts.

    A query string stays only for relative Label Studio paths (``?d=...`` names the file),
    unless ``keep_query`` overrides this, because elsewhere it may contain a presigned signature.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if keep_query is None:
        keep_query = not parts.scheme and not parts.netloc
    if parts.scheme.lower() in CLOUD_SCHEMES:
        return url
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = parts.query
    if query and not keep_query:
        query = "..."
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def _normalise_web_url(url: str) -> str:
    """Return ``url`` with a lower-case scheme and host, no default port, user info or fragment."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    if parts.port and parts.port != DEFAULT_PORTS.get(scheme):
        host = f"{host}:{parts.port}"
    return urlunsplit((scheme, host, parts.path or "/", parts.query, ""))


def _cache_key(kind: str, normalised: str) -> str:
    return hashlib.sha256(f"{kind}|{normalised}".encode()).hexdigest()


def _reject_encoded_separators(raw: str, display: str) -> None:
    lowered = raw.lower()
    if any(code in lowered for code in ENCODED_PATH_CHARACTERS):
        raise FetchError(
            "blocked",
            f"{display} contains a percent-encoded dot, slash or backslash, which Label Studio "
            "never produces; it was rejected as an attempt to leave the storage directory",
            url=display,
        )


def _local_files_parameter(query: str, display: str) -> str:
    """Return the decoded ``d`` parameter of a local-files URL.

    Raises:
        FetchError: ``invalid_url`` without exactly one ``d``, ``blocked`` for encoded separators.
    """
    _reject_encoded_separators(query, display)
    values = parse_qs(query, keep_blank_values=True).get("d", [])
    if len(values) != 1 or not values[0]:
        raise FetchError(
            "invalid_url",
            f"invalid local-files URL {display!r}: expected one d=<path relative to the document "
            "root>, as in /data/local-files/?d=images/cat.jpg",
            url=display,
        )
    return values[0]


def _upload_relative_path(raw: str, display: str) -> str:
    _reject_encoded_separators(raw, display)
    relative = unquote(raw)
    if not relative:
        raise FetchError(
            "invalid_url",
            f"invalid upload URL {display!r}: expected /data/upload/<project>/<file>",
            url=display,
        )
    return relative


def _check_relative_path(relative: str, display: str) -> None:
    """Raise ``blocked`` for an absolute path, a ``..`` part, a backslash or a NUL byte."""
    parts = relative.split("/")
    if relative.startswith("/") or "\\" in relative or "\x00" in relative or ".." in parts:
        raise FetchError(
            "blocked",
            f"{display} names the path {relative!r}, which is absolute or contains '..' or a "
            "backslash; only paths inside the storage directory are allowed",
            url=display,
        )


def _path_inside(root: Path, relative: str, display: str) -> Path:
    """Return ``root / relative`` resolved, after checking that it stays inside ``root``.

    ``relative`` must have passed :func:`_check_relative_path`.

    Raises:
        FetchError: ``blocked`` for a symbolic link that leads out of ``root``.
    """
    resolved_root = root.resolve()
    resolved = (resolved_root / relative).resolve()
    if not resolved.is_relative_to(resolved_root):
        raise FetchError(
            "blocked",
            f"{display} leads out of {resolved_root} (through a symbolic link), so it was not read",
            url=display,
        )
    return resolved


def _content_length(response: requests.Response) -> int | None:
    try:
        length = int(response.headers.get("Content-Length", ""))
    except ValueError:
        return None
    return length if length >= 0 else None


def _describe_os_error(exc: BaseException) -> str:
    """Return the operating system's words for the error under ``exc``, or its class name.

    The text of requests' exceptions repeats the URL, including presigned query strings,
    so only the innermost ``OSError`` message is used.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.strerror:
            return current.strerror
        reason = getattr(current, "reason", None)
        if isinstance(reason, BaseException):
            current = reason
        elif current.__cause__ is not None:
            current = current.__cause__
        elif current.args and isinstance(current.args[0], BaseException):
            current = current.args[0]
        else:
            current = current.__context__
    return type(exc).__name__
