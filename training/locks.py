"""A Redis lock that a heartbeat keeps alive, for "one job per project at a time".

The lock expires ``LOCK_TTL_S`` after the last heartbeat, so a process killed by the kernel
(no ``finally`` runs) blocks the project for at most that long.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from redis import Redis
from redis.exceptions import RedisError

from training.queue import compare_and_delete

logger = logging.getLogger(__name__)

LOCK_TTL_S = 60
HEARTBEAT_S = 15
LOCK_WAIT_POLL_S = 2.0


@contextmanager
def heartbeat_lock(redis: Redis, key: str, owner: str, wait_s: float,
                   busy: Callable[[str | None], Exception]) -> Iterator[None]:
    """Hold ``key`` for the block's duration, waiting up to ``wait_s`` seconds for it.

    Args:
        redis: the connection.
        key: the lock's Redis key.
        owner: the value stored in the key, naming the holder in messages.
        wait_s: how long to wait for another holder to release it.
        busy: builds the exception raised after ``wait_s``, given the current holder.
    """
    deadline = time.monotonic() + wait_s
    while not redis.set(key, owner, nx=True, ex=LOCK_TTL_S):
        if time.monotonic() >= deadline:
            holder = redis.get(key)
            raise busy(holder.decode() if isinstance(holder, bytes) else holder)
        time.sleep(LOCK_WAIT_POLL_S)

    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(HEARTBEAT_S):
            try:
                redis.expire(key, LOCK_TTL_S)
            except RedisError as error:
                logger.warning("lock %s: heartbeat failed (%s), retrying", key, error)

    beat = threading.Thread(target=heartbeat, name=f"lock-heartbeat-{key}", daemon=True)
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join(timeout=5)
        try:
            compare_and_delete(redis, key, owner)
        except RedisError as error:
            logger.warning("lock %s not released (%s), so it expires in %d s", key, error, LOCK_TTL_S)
