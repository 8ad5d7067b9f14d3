"""Keep the current model version of each lineage loaded, and switch when a new one is published.

Serving processes never train: they watch the model store's CURRENT pointers. A pointer is
re-read at most every ``check_interval`` seconds, so a request costs one dictionary lookup.
A new version is loaded once. Versions that no lineage serves any more are released, so
memory does not grow across switches.
"""

from __future__ import annotations

import logging
import threading
import time

from model.runtime import Predictor
from model.store import DEFAULT_LINEAGE, ModelStore, StoreError

logger = logging.getLogger(__name__)

# How often a serving process re-reads a lineage's CURRENT pointer, in seconds.
POINTER_CHECK_INTERVAL_S = 2.0


class ModelRegistry:
    """The predictors a serving process uses, one per served version, loaded on first use."""

    def __init__(self, store: ModelStore, threads: int = 1, check_interval: float = POINTER_CHECK_INTERVAL_S,
                 on_load=None):
        self.store = store
        self.threads = threads
        self.check_interval = check_interval
        self._on_load = on_load
        self._resolved: dict[str, tuple[str | None, float]] = {}
        self._predictors: dict[str, Predictor] = {}
        self._lock = threading.Lock()
        self._load_locks: dict[str, threading.Lock] = {}
        self.load_errors: dict[str, str] = {}

    def version_for(self, lineage: str) -> str | None:
        """Return the version that serves ``lineage`` (its own, else the default lineage's), or None."""
        now = time.monotonic()
        cached = self._resolved.get(lineage)
        if cached is not None and now - cached[1] < self.check_interval:
            return cached[0]
        try:
            version = self.store.resolve(lineage)
        except (OSError, StoreError) as error:
            logger.error("cannot read the model store pointer of %s: %s", lineage, error)
            version = cached[0] if cached else None
        with self._lock:
            previous = self._resolved.get(lineage, (None, 0.0))[0]
            self._resolved[lineage] = (version, now)
        if previous is not None and version != previous:
            logger.info("lineage %s switched from %s to %s", lineage, previous, version)
            self._release_unused()
        return version

    def predictor_for(self, lineage: str) -> Predictor | None:
        """Return the loaded predictor serving ``lineage``, loading it once if needed."""
        version = self.version_for(lineage)
        if version is None:
            return None
        predictor = self._predictors.get(version)
        if predictor is not None:
            return predictor
        with self._lock:
            load_lock = self._load_locks.setdefault(version, threading.Lock())
        with load_lock:
            predictor = self._predictors.get(version)
            if predictor is None:
                started = time.monotonic()
                try:
                    predictor = self.store.load_predictor(version, num_threads=self.threads)
                except (OSError, ValueError, StoreError) as error:
                    self.load_errors[version] = str(error)
                    logger.error("cannot load model version %s: %s", version, error)
                    raise
                with self._lock:
                    self._predictors[version] = predictor
                    self.load_errors.pop(version, None)
                logger.info("loaded model version %s in %.3f s", version, time.monotonic() - started)
                if self._on_load:
                    self._on_load(version)
        return predictor

    def _release_unused(self) -> None:
        with self._lock:
            served = {version for version, _ in self._resolved.values() if version}
            for version in list(self._predictors):
                if version not in served:
                    del self._predictors[version]
                    self._load_locks.pop(version, None)
                    logger.info("released model version %s", version)

    def loaded_versions(self) -> dict[str, str | None]:
        """Return lineage -> version for every lineage this process has served."""
        lineages = set(self._resolved) | {DEFAULT_LINEAGE}
        return {lineage: self.version_for(lineage) for lineage in sorted(lineages)}

    def loaded_count(self) -> int:
        return len(self._predictors)
