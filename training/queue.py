"""The training queue: at most one running and one pending training job per project.

Label Studio sends a webhook for every saved annotation, often many per minute. Each event
only needs *a* training run that starts after it, because a run pulls everything labelled
when it starts. So an event enqueues a job only when the project has no pending job yet;
otherwise it is coalesced into the pending one. A job stops being pending when it starts
(before it pulls), so an event that arrives during a run makes exactly one new pending job.
A burst of 100 events therefore costs at most two trainings, and no annotation is left out.

Job ids are random (``train-project-<id>-<hex>``), never derived from event ids or times,
so they cannot collide.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from redis import Redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Dependency, Job, JobStatus

logger = logging.getLogger(__name__)

QUEUE_NAME = "training"
JOB_FUNCTION = "training.jobs.train_project"
KEY_PREFIX = "thumbnail-ml:training"
# A pending marker outlives any realistic wait in the queue; it is cleared when its job starts.
PENDING_TTL_S = 24 * 3600
RESULT_TTL_S = 7 * 24 * 3600
FAILURE_TTL_S = 30 * 24 * 3600
_ENDED = {JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED}

# Delete KEYS[1] only while it still names ARGV[1], so a job never clears another job's marker.
_COMPARE_AND_DELETE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


def pending_key(project_id: int) -> str:
    return f"{KEY_PREFIX}:pending:{project_id}"


def running_key(project_id: int) -> str:
    return f"{KEY_PREFIX}:running:{project_id}"


def new_job_id(project_id: int) -> str:
    return f"train-project-{project_id}-{uuid.uuid4().hex[:16]}"


def compare_and_delete(redis: Redis, key: str, value: str) -> bool:
    """Delete ``key`` if its value is still ``value``; returns whether it did."""
    return bool(redis.eval(_COMPARE_AND_DELETE, 1, key, value))


@dataclass(frozen=True)
class EnqueueResult:
    """The job an event was assigned to, and whether it joined an existing pending job."""

    job_id: str
    coalesced: bool


def _job_status(redis: Redis, job_id: str) -> JobStatus | None:
    try:
        return Job.fetch(job_id, connection=redis).get_status()
    except NoSuchJobError:
        return None


def claim_pending_slot(redis: Redis, key: str, job_id: str) -> tuple[str, str | None]:
    """Claim the pending marker ``key`` for ``job_id``, unless a live job already holds it.

    Returns:
        ``(job_id, None)`` when the caller must enqueue ``job_id``, or ``(job_id, existing)``
        when the event joins the waiting job ``existing``.
    """
    for _ in range(3):
        if redis.set(key, job_id, nx=True, ex=PENDING_TTL_S):
            return job_id, None
        existing = redis.get(key)
        existing_id = existing.decode() if isinstance(existing, bytes) else existing
        if existing_id is None:
            continue
        status = _job_status(redis, existing_id)
        if status is not None and status not in _ENDED:
            return job_id, existing_id
        # The marker names a job that is gone or ended without starting (deleted, or
        # failed before it could clear its marker): replace it.
        compare_and_delete(redis, key, existing_id)
    raise RuntimeError(f"could not claim the pending job marker {key}")


def enqueue_training(redis: Redis, project_id: int, reason: str, job_timeout: int) -> EnqueueResult:
    """Make sure a training job for ``project_id`` will start after this call.

    Args:
        redis: connection to the queue's Redis.
        project_id: Label Studio project id.
        reason: what triggered it (the webhook action), kept in the job's metadata.
        job_timeout: seconds a job may run before RQ stops it.

    Raises:
        redis.exceptions.RedisError: Redis is unreachable; nothing was enqueued.
    """
    key = pending_key(project_id)
    job_id, existing_id = claim_pending_slot(redis, key, new_job_id(project_id))
    if existing_id is not None:
        logger.info("project %s: %s coalesced into pending job %s", project_id, reason, existing_id)
        return EnqueueResult(existing_id, coalesced=True)

    running = redis.get(running_key(project_id))
    running_id = running.decode() if isinstance(running, bytes) else running
    depends_on = Dependency(jobs=[running_id], allow_failure=True) if running_id else None
    try:
        Queue(QUEUE_NAME, connection=redis).enqueue(
            JOB_FUNCTION, project_id,
            job_id=job_id, job_timeout=job_timeout, result_ttl=RESULT_TTL_S, failure_ttl=FAILURE_TTL_S,
            depends_on=depends_on, description=f"train project {project_id}",
            meta={"project": project_id, "reason": reason, "progress": {"stage": "queued"}},
        )
    except Exception:
        compare_and_delete(redis, key, job_id)
        raise
    logger.info("project %s: %s enqueued training job %s%s", project_id, reason, job_id,
                f" after {running_id}" if running_id else "")
    return EnqueueResult(job_id, coalesced=False)


def queue_state(redis: Redis) -> dict:
    """Summarise the queue for /health and ``thumbnail-ml jobs``: counts and per-project jobs."""
    from rq import Worker

    queue = Queue(QUEUE_NAME, connection=redis)
    projects: dict[str, dict] = {}
    for key in redis.scan_iter(f"{KEY_PREFIX}:*"):
        name = key.decode() if isinstance(key, bytes) else key
        kind, project = name.rsplit(":", 2)[-2:]
        value = redis.get(name)
        projects.setdefault(project, {})[kind] = value.decode() if isinstance(value, bytes) else value
    return {
        "queued": queue.count,
        "deferred": queue.deferred_job_registry.count,
        "started": queue.started_job_registry.count,
        "failed": queue.failed_job_registry.count,
        "finished": queue.finished_job_registry.count,
        "workers": Worker.count(queue=queue),
        "projects": projects,
    }
