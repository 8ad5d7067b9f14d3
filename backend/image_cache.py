"""On-disk cache of downloaded images, shared by the server's and the worker's processes."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

CACHE_SUFFIX = ".img"
CACHE_TEMP_PREFIX = ".tmp-"
CACHE_LOCK_NAME = ".lock"
CACHE_SIZE_NAME = ".size"
# Eviction frees space down to 90 % of the bound, so a full cache is not rescanned on every write.
CACHE_LOW_WATERMARK = 0.9
# Temporary files of writers that crashed are removed by the next eviction after an hour.
CACHE_STALE_TEMP_S = 3600


class ImageCache:
    """Image bytes on disk, keyed by the SHA-256 of a normalised URL, with an LRU size bound.

    Several processes may share the directory. A write goes to a temporary file in the same
    directory and is renamed into place, so readers never see a partial file. A counter file
    tracks the total size. An exclusive ``flock`` on a lock file serialises the renames, the
    counter updates and the eviction of the least recently used files, ordered by mtime,
    which a cache hit renews.
    """

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._failures = 0

    def path_for(self, key: str) -> Path:
        return self.directory / f"{key}{CACHE_SUFFIX}"

    def get(self, key: str) -> bytes | None:
        """Return the cached bytes for ``key`` and mark them recently used, or None."""
        if self.max_bytes <= 0 or not key:
            return None
        path = self.path_for(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._report_failure("read", path, exc)
            return None
        if not data:
            return None
        now = time.time_ns()
        # Another process may evict the file between the read and this update, which is harmless.
        with contextlib.suppress(OSError):
            os.utime(path, ns=(now, now))
        return data

    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` unless caching is off or it exceeds the bound; failures are only logged."""
        if self.max_bytes <= 0 or not key or not data or len(data) > self.max_bytes:
            return
        path = self.path_for(key)
        temp_name = None
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            temp_name = self._write_temporary(data)

            # Renaming under the lock keeps the size counter in step with the files. No scan can
            # see the file before it is counted, and a replaced file of the same key is subtracted.
            with self._locked():
                try:
                    replaced = path.stat().st_size
                except FileNotFoundError:
                    replaced = 0
                os.replace(temp_name, path)
                temp_name = None
                self._account(len(data) - replaced)
        except OSError as exc:
            self._report_failure("write", path, exc)
        finally:
            if temp_name is not None:
                with contextlib.suppress(OSError):
                    os.unlink(temp_name)

    def _write_temporary(self, data: bytes) -> str:
        """Write ``data`` to a new temporary file in the cache directory and return its path."""
        fd, temp_name = tempfile.mkstemp(dir=self.directory, prefix=CACHE_TEMP_PREFIX, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                # Without fsync, a power loss after the rename could leave an empty or torn file.
                os.fsync(handle.fileno())
            # Nanosecond mtimes keep the LRU order exact; file system timestamps are coarser.
            now = time.time_ns()
            os.utime(temp_name, ns=(now, now))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp_name)
            raise
        return temp_name

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # Each call opens its own file description, so the flock also excludes other threads.
        with open(self.directory / CACHE_LOCK_NAME, "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            yield

    def _account(self, added: int) -> None:
        """Add ``added`` bytes to the shared size counter and evict if over the bound; needs the lock."""
        counter = self.directory / CACHE_SIZE_NAME
        try:
            total = int(counter.read_text(encoding="ascii"))
        except (FileNotFoundError, ValueError):
            total = None

        # A missing or unreadable counter is rebuilt from a scan, which includes the new file.
        total = sum(size for _, _, size, _ in self._scan()) if total is None else total + added
        if total > self.max_bytes:
            total = self._evict(self._scan(), int(self.max_bytes * CACHE_LOW_WATERMARK))

        # Write and rename, so a crash cannot leave a truncated number behind.
        temp_counter = self.directory / f"{CACHE_SIZE_NAME}.tmp"
        temp_counter.write_text(str(total), encoding="ascii")
        os.replace(temp_counter, counter)

    def _scan(self) -> list[tuple[int, str, int, Path]]:
        """Return ``(mtime_ns, name, size, path)`` of the cached files; delete stale temporary files."""
        entries: list[tuple[int, str, int, Path]] = []
        now = time.time()
        with os.scandir(self.directory) as iterator:
            for entry in iterator:
                try:
                    stat = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if entry.name.endswith(CACHE_SUFFIX):
                    entries.append((stat.st_mtime_ns, entry.name, stat.st_size, Path(entry.path)))
                elif entry.name.startswith(CACHE_TEMP_PREFIX) and now - stat.st_mtime > CACHE_STALE_TEMP_S:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
        return entries

    def _evict(self, entries: list[tuple[int, str, int, Path]], target_bytes: int) -> int:
        """Delete least recently used files until at most ``target_bytes`` remain; return the total."""
        total = sum(size for _, _, size, _ in entries)
        if total <= target_bytes:
            return total
        evicted = 0
        for _, _, size, path in sorted(entries):
            if total <= target_bytes:
                break
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            total -= size
            evicted += 1
        logger.debug("Image cache evicted %d files; %d bytes remain in %s", evicted, total, self.directory)
        return total

    def _report_failure(self, action: str, path: Path, exc: OSError) -> None:
        # Only the first failure is a warning, so a read-only cache directory cannot flood the log.
        self._failures += 1
        level = logging.WARNING if self._failures == 1 else logging.DEBUG
        logger.log(
            level,
            "Image cache %s failed for %s (%s); fetching continues without the cache. "
            "Check IMAGE_CACHE_DIR. Failures so far: %d",
            action, path, exc.strerror or exc, self._failures,
        )


# Helpers without state.
