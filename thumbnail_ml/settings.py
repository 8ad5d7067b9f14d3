"""Application settings, read once from the environment at start-up and passed where needed.

Nothing reads the environment at import time: tests, the CLI, the server and the worker each
build a ``Settings`` with ``Settings.from_env`` (or directly) and hand it on. Names follow the
Label Studio ML backend conventions where one exists (``LABEL_STUDIO_URL``,
``LABEL_STUDIO_API_KEY``, ``MODEL_DIR``, ``BASIC_AUTH_USER``, ``LOG_LEVEL``, ``WORKERS``,
``THREADS``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping
from urllib.parse import urlparse

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_DIR = REPO_ROOT / "data" / "models"
DEFAULT_CACHE_DIR = REPO_ROOT / "data" / "image-cache"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class SettingsError(ValueError):
    """An invalid setting; the message names the variable, its value and what is expected."""


@dataclass(frozen=True)
class Settings:
    """Settings of the whole application.

    Attributes:
        model_dir: root of the model store (``MODEL_DIR``).
        log_level: logging level name (``LOG_LEVEL``).
        exclusive_choice: the choice emitted only when nothing else applies (``NONE_CHOICE``).
        label_config: labeling config file for offline training, or None for the shipped
            default (``LABEL_CONFIG``).
        threads: threads per serving process, also used for image decoding (``THREADS``).
        workers: serving processes under gunicorn (``WORKERS``).
        host: address the server listens on (``HOST``).
        port: port the server listens on (``PORT``).
        basic_auth_user: user name every endpoint requires, or None (``BASIC_AUTH_USER``).
        basic_auth_pass: its password (``BASIC_AUTH_PASS``).
        label_studio_url: base URL of Label Studio, for images and the API (``LABEL_STUDIO_URL``).
        label_studio_api_key: a personal access token or a legacy token (``LABEL_STUDIO_API_KEY``).
        document_root: Label Studio's local-files document root when it is mounted here, so
            ``/data/local-files/?d=...`` is read from disk (``LOCAL_FILES_DOCUMENT_ROOT``).
        label_studio_data_dir: Label Studio's data directory when mounted here, so
            ``/data/upload/...`` is read from disk (``LABEL_STUDIO_BASE_DATA_DIR``).
        image_cache_dir: on-disk cache of fetched images (``IMAGE_CACHE_DIR``).
        image_cache_max_mb: size bound of that cache in MiB (``IMAGE_CACHE_MAX_MB``).
        max_image_mb: largest image download accepted, in MiB (``MAX_IMAGE_MB``).
        fetch_connect_timeout: seconds to wait for a connection (``FETCH_CONNECT_TIMEOUT``).
        fetch_read_timeout: seconds to wait between bytes of a download (``FETCH_READ_TIMEOUT``).
        fetch_concurrency: parallel image downloads per request (``FETCH_CONCURRENCY``).
        allowed_image_hosts: hosts whose plain URLs may resolve to private or loopback
            addresses (``ALLOWED_IMAGE_HOSTS``, comma-separated).
        redis_url: the Redis that stores the training queue (``REDIS_URL``).
        min_labelled_tasks: labelled tasks a project needs before its first training
            (``MIN_LABELLED_TASKS``).
        training_job_timeout: seconds a training job may run (``TRAINING_JOB_TIMEOUT``).
        train_epochs: the maximum number of epochs of a training job (``TRAIN_EPOCHS``).
        preannotate_after_training: queue pre-annotation of the project's unlabelled tasks
            after each published version (``PREANNOTATE_AFTER_TRAINING``: true or false).
    """

    model_dir: Path = DEFAULT_MODEL_DIR
    log_level: str = "INFO"
    exclusive_choice: str = "None"
    label_config: Path | None = None
    threads: int = 2
    workers: int = 1
    host: str = "127.0.0.1"
    port: int = 9090
    basic_auth_user: str | None = None
    basic_auth_pass: str | None = field(default=None, repr=False)
    label_studio_url: str | None = None
    label_studio_api_key: str | None = field(default=None, repr=False)
    document_root: Path | None = None
    label_studio_data_dir: Path | None = None
    image_cache_dir: Path = DEFAULT_CACHE_DIR
    image_cache_max_mb: int = 512
    max_image_mb: float = 20.0
    fetch_connect_timeout: float = 3.05
    fetch_read_timeout: float = 15.0
    fetch_concurrency: int = 8
    allowed_image_hosts: tuple[str, ...] = ()
    redis_url: str = "redis://127.0.0.1:6379/0"
    min_labelled_tasks: int = 20
    training_job_timeout: int = 3600
    train_epochs: int = 60
    preannotate_after_training: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        """Build settings from environment variables, validating each.

        Raises:
            SettingsError: a variable has an invalid value.
        """
        env = os.environ if environ is None else environ
        log_level = env.get("LOG_LEVEL", "INFO").strip().upper()
        if log_level not in LOG_LEVELS:
            raise SettingsError(f"invalid LOG_LEVEL {env.get('LOG_LEVEL')!r}: use one of {', '.join(LOG_LEVELS)}")
        user = env.get("BASIC_AUTH_USER") or None
        password = env.get("BASIC_AUTH_PASS") or None
        if bool(user) != bool(password):
            raise SettingsError("BASIC_AUTH_USER and BASIC_AUTH_PASS must be set together, or neither")
        document_root = env.get("LOCAL_FILES_DOCUMENT_ROOT") or env.get("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT")
        if (env.get("LABEL_STUDIO_API_KEY") or "").strip() and not (env.get("LABEL_STUDIO_URL") or "").strip():
            # Without a fixed URL the key would go to whatever host a /setup request names.
            raise SettingsError(
                "LABEL_STUDIO_API_KEY is set but LABEL_STUDIO_URL is not: set LABEL_STUDIO_URL to the address "
                "of your Label Studio (for example http://localhost:8080) so the key is only sent there"
            )
        return cls(
            model_dir=_path(env.get("MODEL_DIR")) or DEFAULT_MODEL_DIR,
            log_level=log_level,
            exclusive_choice=env.get("NONE_CHOICE", "None"),
            label_config=_path(env.get("LABEL_CONFIG")),
            threads=_number(env, "THREADS", 2, int, minimum=1),
            workers=_number(env, "WORKERS", 1, int, minimum=1),
            host=env.get("HOST", "127.0.0.1").strip() or "127.0.0.1",
            port=_number(env, "PORT", 9090, int, minimum=1, maximum=65535),
            basic_auth_user=user,
            basic_auth_pass=password,
            label_studio_url=_label_studio_url(env.get("LABEL_STUDIO_URL")),
            label_studio_api_key=(env.get("LABEL_STUDIO_API_KEY") or "").strip() or None,
            document_root=_path(document_root),
            label_studio_data_dir=_path(env.get("LABEL_STUDIO_BASE_DATA_DIR")),
            image_cache_dir=_path(env.get("IMAGE_CACHE_DIR")) or DEFAULT_CACHE_DIR,
            image_cache_max_mb=_number(env, "IMAGE_CACHE_MAX_MB", 512, int, minimum=0),
            max_image_mb=_number(env, "MAX_IMAGE_MB", 20.0, float, minimum=0.01),
            fetch_connect_timeout=_number(env, "FETCH_CONNECT_TIMEOUT", 3.05, float, minimum=0.01),
            fetch_read_timeout=_number(env, "FETCH_READ_TIMEOUT", 15.0, float, minimum=0.01),
            fetch_concurrency=_number(env, "FETCH_CONCURRENCY", 8, int, minimum=1),
            redis_url=_redis_url(env.get("REDIS_URL")),
            min_labelled_tasks=_number(env, "MIN_LABELLED_TASKS", 20, int, minimum=1),
            training_job_timeout=_number(env, "TRAINING_JOB_TIMEOUT", 3600, int, minimum=60),
            train_epochs=_number(env, "TRAIN_EPOCHS", 60, int, minimum=1),
            preannotate_after_training=_flag(env, "PREANNOTATE_AFTER_TRAINING", False),
            allowed_image_hosts=tuple(
                host.strip().lower() for host in env.get("ALLOWED_IMAGE_HOSTS", "").split(",") if host.strip()
            ),
        )


def _path(raw: str | None) -> Path | None:
    return Path(raw).expanduser() if raw and raw.strip() else None


def _number(env: Mapping[str, str], name: str, default, kind, minimum=None, maximum=None):
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    expected = "an integer" if kind is int else "a number"
    try:
        value = kind(raw)
    except ValueError:
        raise SettingsError(f"invalid {name} {raw!r}: expected {expected}") from None
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        bounds = f"at least {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise SettingsError(f"invalid {name} {raw!r}: expected {expected} {bounds}")
    return value


def _label_studio_url(raw: str | None) -> str | None:
    if raw is None or not raw.strip():
        return None
    url = raw.strip().rstrip("/")
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise SettingsError(
            f"invalid LABEL_STUDIO_URL {raw!r}: expected an http(s) URL with a host, "
            "for example http://localhost:8080"
        )
    return url


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"invalid {name} {raw!r}: expected true or false")


def _redis_url(raw: str | None) -> str:
    if raw is None or not raw.strip():
        return "redis://127.0.0.1:6379/0"
    url = raw.strip()
    if urlparse(url).scheme not in ("redis", "rediss", "unix"):
        raise SettingsError(f"invalid REDIS_URL {raw!r}: expected redis://HOST:PORT/DB, rediss:// or unix://")
    return url


def configure_logging(level: str) -> None:
    """Send log records to stderr with timestamps, unless the application configured logging already."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(level)
    # httpx (under label-studio-sdk) logs every request at INFO, which would drown the
    # application's one line per request or job.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLevelName(level)))
