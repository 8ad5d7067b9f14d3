"""``thumbnail-ml worker``: an RQ worker on the training queue that never forks TensorFlow.

TensorFlow misbehaves in a process forked after it was imported (its thread pools do not
survive a fork). RQ's default worker forks a work horse per job; ``SpawnWorker`` starts the
work horse with ``posix_spawn`` instead, a fresh interpreter that imports TensorFlow itself.
The worker process only talks to Redis and never imports TensorFlow.
"""

from __future__ import annotations

import logging
import os
import socket

from redis import Redis
from rq import Queue
from rq.worker import SpawnWorker

from thumbnail_ml.settings import Settings
from training.preannotate import PREANNOTATE_QUEUE
from training.queue import QUEUE_NAME

logger = logging.getLogger(__name__)


def run_worker(settings: Settings, burst: bool = False, name: str | None = None) -> bool:
    """Process training jobs until stopped (or, with ``burst``, until the queue is empty)."""
    redis = Redis.from_url(settings.redis_url)
    redis.ping()
    # Training comes first: RQ takes jobs from the queues in this order.
    queues = [Queue(QUEUE_NAME, connection=redis), Queue(PREANNOTATE_QUEUE, connection=redis)]
    worker = SpawnWorker(queues, connection=redis, name=name or f"thumbnail-ml-{socket.gethostname()}-{os.getpid()}")
    logger.info("worker %s listening on queues %r and %r at %s", worker.name, QUEUE_NAME, PREANNOTATE_QUEUE,
                _safe_url(settings.redis_url))
    return worker.work(burst=burst, logging_level=settings.log_level, with_scheduler=False)


def _safe_url(url: str) -> str:
    """Return the Redis URL without a password, for logs."""
    if "@" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
