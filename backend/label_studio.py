"""Whether Label Studio is reachable, checked in the background for ``/health``.

Label Studio gives ``/health`` one second, so the check never runs inside a request: a
daemon thread refreshes a cached status, and ``/health`` reads the cache.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import requests

logger = logging.getLogger(__name__)

# Seconds between two reachability checks, and the timeout of one check.
CHECK_INTERVAL_S = 30.0
CHECK_TIMEOUT_S = 3.0


class LabelStudioStatus:
    """Cached result of the last reachability check of Label Studio."""

    def __init__(self, url_source: Callable[[], str | None], credentials_check: Callable[[], bool | None] | None = None,
                 interval: float = CHECK_INTERVAL_S):
        self._url_source = url_source
        self._credentials_check = credentials_check
        self._interval = interval
        self._state: dict = {"configured": False, "reachable": None, "credentials_valid": None, "checked_at": None}
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()

    def snapshot(self) -> dict:
        """Return the last known status and start the background checker on first use."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="label-studio-check", daemon=True)
                self._thread.start()
            return dict(self._state)

    def refresh_soon(self) -> None:
        """Ask for a new check now, for example after /setup handed over credentials."""
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._check()
            self._wake.wait(self._interval)
            self._wake.clear()

    def _check(self) -> None:
        url = self._url_source()
        state = {"configured": bool(url), "reachable": None, "credentials_valid": None,
                 "checked_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if url:
            try:
                response = requests.get(f"{url}/health", timeout=CHECK_TIMEOUT_S)
                state["reachable"] = response.ok
                if not response.ok:
                    state["error"] = f"GET {url}/health returned HTTP {response.status_code}"
            except requests.RequestException as error:
                state["reachable"] = False
                state["error"] = f"cannot reach {url}: {type(error).__name__}"
            if state["reachable"] and self._credentials_check is not None:
                try:
                    state["credentials_valid"] = self._credentials_check()
                except Exception as error:  # noqa: BLE001 - a failed check must not stop the checker
                    state["credentials_valid"] = False
                    state["error"] = f"credential check failed: {type(error).__name__}"
        if state.get("error"):
            logger.warning("Label Studio check: %s", state["error"])
        with self._lock:
            self._state = state
