"""Application settings, read once from the environment at start-up and passed where needed.

Nothing reads the environment at import time: tests, the CLI and the server each build a
``Settings`` with ``Settings.from_env`` (or directly) and hand it on.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_DIR = REPO_ROOT / "data" / "models"
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
        label_config: path of the labeling config used for offline training, or None for the
            shipped default (``LABEL_CONFIG``).
        threads: threads for image decoding and inference (``THREADS``).
    """

    model_dir: Path = DEFAULT_MODEL_DIR
    log_level: str = "INFO"
    exclusive_choice: str = "None"
    label_config: Path | None = None
    threads: int = 2

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
        label_config = env.get("LABEL_CONFIG") or None
        return cls(
            model_dir=Path(env.get("MODEL_DIR") or DEFAULT_MODEL_DIR).expanduser(),
            log_level=log_level,
            exclusive_choice=env.get("NONE_CHOICE", "None"),
            label_config=Path(label_config).expanduser() if label_config else None,
            threads=_positive_int(env, "THREADS", 2),
        )


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"invalid {name} {raw!r}: expected a positive integer") from None
    if value < 1:
        raise SettingsError(f"invalid {name} {raw!r}: expected a positive integer")
    return value


def configure_logging(level: str) -> None:
    """Send log records to stderr with timestamps, unless the application configured logging already."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(level)
