"""The versioned model store: the only channel from training to serving.

Layout under ``MODEL_DIR``::

    lineages/<lineage>/versions/<version>/   model.keras, model.tflite, manifest.json
    lineages/<lineage>/CURRENT               the current version id, one line
    lineages/<lineage>/history.jsonl         every change of CURRENT (publish, rollback)
    staging/                                 versions being written; never read by serving

A lineage is ``project-<id>`` for a Label Studio project, or ``default`` for models trained
offline, which serve every project without a lineage of its own.

Publishing is atomic: the version is written completely under ``staging/``, moved into
``versions/`` with one rename, and only then is ``CURRENT`` replaced with ``os.replace``. A
crash at any point leaves the previous current version in place, and a reader never sees a
half-written version directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from model.manifest import MANIFEST_FILE, Manifest

logger = logging.getLogger(__name__)

DEFAULT_LINEAGE = "default"
_LINEAGE_PATTERN = re.compile(r"^(default|project-[1-9][0-9]*)$")
_VERSION_PATTERN = re.compile(r"^(?P<lineage>default|project-[1-9][0-9]*)-v(?P<number>[1-9][0-9]*)-(?P<digest>[0-9a-f]{8})$")
# Staging directories older than this are left over from crashed jobs and are removed.
STAGING_MAX_AGE_S = 6 * 3600


class StoreError(Exception):
    """A model store operation that cannot be done; the message names the version or lineage."""


class VersionNotFound(StoreError):
    """The requested version does not exist in the store."""


class StoreWriteError(StoreError, OSError):
    """Writing to the store failed (disk full, read-only); the message names MODEL_DIR and the cause."""


def lineage_for_project(project_id: int | str | None) -> str:
    """Return the lineage name of a Label Studio project id, or the default lineage for None."""
    if project_id is None:
        return DEFAULT_LINEAGE
    text = str(project_id).strip()
    # Label Studio sends "<id>.<creation time>" in /setup and /predict.
    text = text.split(".", 1)[0]
    if not text.isdigit() or int(text) < 1:
        raise StoreError(f"invalid Label Studio project id {project_id!r}: expected a positive integer")
    return f"project-{int(text)}"


def check_lineage(lineage: str) -> str:
    if not _LINEAGE_PATTERN.match(lineage):
        raise StoreError(f"invalid lineage {lineage!r}: expected 'default' or 'project-<id>'")
    return lineage


def parse_version(version: str) -> tuple[str, int]:
    """Split a version id into its lineage and sequence number."""
    match = _VERSION_PATTERN.match(version or "")
    if not match:
        raise VersionNotFound(
            f"invalid model version {version!r}: expected '<lineage>-v<n>-<8 hex digits>', "
            "as listed by 'thumbnail-ml models list'"
        )
    return match["lineage"], int(match["number"])


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ModelStore:
    """Model versions on disk, grouped in lineages, each lineage with a current pointer."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    # -- paths -----------------------------------------------------------------------------

    def lineage_dir(self, lineage: str) -> Path:
        return self.root / "lineages" / check_lineage(lineage)

    def version_dir(self, version: str) -> Path:
        lineage, _ = parse_version(version)
        return self.lineage_dir(lineage) / "versions" / version

    # -- reading ---------------------------------------------------------------------------

    def lineages(self) -> list[str]:
        base = self.root / "lineages"
        if not base.is_dir():
            return []
        return sorted(entry.name for entry in base.iterdir() if _LINEAGE_PATTERN.match(entry.name))

    def current_version(self, lineage: str) -> str | None:
        """Return the lineage's current version id, or None if nothing was published."""
        try:
            text = (self.lineage_dir(lineage) / "CURRENT").read_text("utf-8").strip()
        except FileNotFoundError:
            return None
        return text or None

    def pointer_state(self, lineage: str) -> tuple[int, int] | None:
        """Return a cheap fingerprint (inode, mtime) of CURRENT: it changes on every publish."""
        try:
            stat = os.stat(self.lineage_dir(lineage) / "CURRENT")
        except FileNotFoundError:
            return None
        return (stat.st_ino, stat.st_mtime_ns)

    def resolve(self, lineage: str) -> str | None:
        """Return the version that serves ``lineage``: its own current one, else the default's."""
        return self.current_version(lineage) or self.current_version(DEFAULT_LINEAGE)

    def manifest(self, version: str) -> Manifest:
        """Read a version's manifest.

        Raises:
            VersionNotFound: no such version.
        """
        directory = self.version_dir(version)
        try:
            return Manifest.read(directory)
        except FileNotFoundError as error:
            raise VersionNotFound(
                f"model version {version!r} not found in {self.root}: run 'thumbnail-ml models list'"
            ) from error

    def versions(self, lineage: str) -> list[Manifest]:
        """Return the lineage's published versions, oldest first."""
        base = self.lineage_dir(lineage) / "versions"
        if not base.is_dir():
            return []
        manifests = []
        for entry in base.iterdir():
            if _VERSION_PATTERN.match(entry.name) and (entry / MANIFEST_FILE).is_file():
                manifests.append(Manifest.read(entry))
        return sorted(manifests, key=lambda m: parse_version(m.version)[1])

    def history(self, lineage: str) -> list[dict]:
        path = self.lineage_dir(lineage) / "history.jsonl"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]

    # -- writing ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, lineage: str) -> Iterator[None]:
        """Hold the lineage's lock: publishes and rollbacks of one lineage run one at a time."""
        directory = self.lineage_dir(lineage)
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / ".lock", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def create_staging_dir(self) -> Path:
        """Create an empty directory to write a new version into before ``publish``."""
        staging = self.root / "staging"
        staging.mkdir(parents=True, exist_ok=True)
        self._remove_stale_staging(staging)
        return Path(tempfile.mkdtemp(prefix="version-", dir=staging))

    def _remove_stale_staging(self, staging: Path) -> None:
        cutoff = time.time() - STAGING_MAX_AGE_S
        for entry in staging.iterdir():
            try:
                if entry.stat().st_mtime < cutoff:
                    shutil.rmtree(entry, ignore_errors=True)
                    logger.info("removed stale staging directory %s", entry)
            except FileNotFoundError:
                continue

    def publish(
        self, lineage: str, staging_dir: Path, manifest: Manifest, make_current: bool = True
    ) -> Manifest:
        """Move a fully written version from ``staging_dir`` into the lineage.

        Fills in ``version``, ``lineage``, ``created_at`` and ``files`` of the manifest, writes
        it, renames the directory into place and, when ``make_current`` is true, points
        CURRENT at it.

        Returns:
            The manifest as stored.
        """
        staging_dir = Path(staging_dir)
        try:
            with self._locked(lineage):
                return self._publish_locked(lineage, staging_dir, manifest, make_current)
        except StoreWriteError:
            raise
        except OSError as error:
            raise self.write_error(lineage, error) from error

    def write_error(self, lineage: str, error: OSError) -> StoreWriteError:
        """Describe a failed write of a new version (disk full, read-only) with MODEL_DIR and the cause.

        The raw OSError of a ``write()`` call names neither the directory nor the way out.
        """
        where = f" ({error.filename})" if error.filename else ""
        return StoreWriteError(
            f"cannot write a new version of {lineage} to MODEL_DIR {self.root}: {error.strerror or error}{where}. "
            f"The lineage still serves {self.current_version(lineage) or 'no version'}; free space or make "
            f"{self.root} writable, then train again"
        )

    def _publish_locked(self, lineage: str, staging_dir: Path, manifest: Manifest, make_current: bool) -> Manifest:
        files = {}
        for path in sorted(staging_dir.iterdir()):
            if path.is_file() and path.name != MANIFEST_FILE:
                with open(path, "rb") as handle:
                    os.fsync(handle.fileno())
                files[path.name] = _sha256(path)
        if "model.tflite" not in files:
            raise StoreError(f"cannot publish {staging_dir}: it has no model.tflite serving export")

        existing = [parse_version(m.version)[1] for m in self.versions(lineage)]
        number = max(existing, default=0) + 1
        manifest.lineage = lineage
        manifest.files = files
        manifest.created_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        # The digest covers the weights and everything that changes predictions, so the
        # same id always means the same behaviour.
        identity = json.dumps(
            {"files": files, "classes": manifest.classes, "thresholds": manifest.thresholds,
             "input": manifest.input, "crop": manifest.crop},
            sort_keys=True,
        )
        digest = hashlib.sha256(identity.encode()).hexdigest()[:8]
        manifest.version = f"{lineage}-v{number}-{digest}"

        manifest_path = staging_dir / MANIFEST_FILE
        with open(manifest_path, "w", encoding="utf-8") as handle:
            handle.write(manifest.to_json())
            handle.flush()
            os.fsync(handle.fileno())
        _fsync_dir(staging_dir)

        versions_dir = self.lineage_dir(lineage) / "versions"
        versions_dir.mkdir(parents=True, exist_ok=True)
        target = versions_dir / manifest.version
        os.rename(staging_dir, target)
        try:
            _fsync_dir(versions_dir)
            logger.info("stored model version %s (parent %s)", manifest.version, manifest.parent)
            if make_current:
                self._set_current(lineage, manifest.version, action="publish")
        except OSError:
            # CURRENT still names the previous version: move the new one back out of
            # versions/, so a failed publish leaves no version behind. NOTE: where this rename
            # fails too (a disk remounted read-only), the complete version stays, not current.
            with contextlib.suppress(OSError):
                os.rename(target, staging_dir)
            raise
        return manifest

    def rollback(self, version: str) -> str | None:
        """Point the version's lineage back at ``version``; returns the version it replaced."""
        lineage, _ = parse_version(version)
        self.manifest(version)  # raises VersionNotFound
        with self._locked(lineage):
            previous = self.current_version(lineage)
            self._set_current(lineage, version, action="rollback")
        return previous

    def _set_current(self, lineage: str, version: str, action: str) -> None:
        directory = self.lineage_dir(lineage)
        previous = self.current_version(lineage)
        temporary = directory / f".CURRENT.{os.getpid()}.tmp"
        try:
            with open(temporary, "w", encoding="utf-8") as handle:
                handle.write(version + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, directory / "CURRENT")
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        logger.info("lineage %s now serves %s (%s, was %s)", lineage, version, action, previous)
        # CURRENT is switched, so from here on an error must not fail the publish: the caller
        # would report a failure while the new version is served.
        entry = {
            "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "action": action,
            "version": version,
            "previous": previous,
        }
        try:
            _fsync_dir(directory)
            with open(directory / "history.jsonl", "a", encoding="utf-8") as handle:
                handle.write(json.dumps(entry) + "\n")
        except OSError as error:
            logger.error("lineage %s serves %s, but its history.jsonl was not updated: %s", lineage, version, error)

    def load_predictor(self, version: str, num_threads: int = 1):
        """Load a version for serving with the LiteRT runtime (no TensorFlow)."""
        from model.runtime import Predictor

        return Predictor(self.version_dir(version), self.manifest(version), num_threads=num_threads)
