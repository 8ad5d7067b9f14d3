"""Read training jobs back from Redis for ``/health`` and ``thumbnail-ml jobs``."""

from __future__ import annotations

from redis import Redis
from rq import Queue
from rq.job import Job

from training.queue import QUEUE_NAME


def describe_job(job: Job) -> dict:
    """Summarise one job: status, project, progress, and its result or error."""
    status = job.get_status(refresh=False)
    summary: dict = {
        "id": job.id,
        "status": str(status.value if hasattr(status, "value") else status),
        "project": job.meta.get("project"),
        "reason": job.meta.get("reason"),
        "progress": job.meta.get("progress"),
        "enqueued_at": job.enqueued_at.isoformat(timespec="seconds") if job.enqueued_at else None,
        "ended_at": job.ended_at.isoformat(timespec="seconds") if job.ended_at else None,
    }
    result = job.return_value(refresh=False) if status == "finished" else None
    if isinstance(result, dict):
        summary["result"] = result
        summary["result_summary"] = (
            f"{result.get('status')}: {result.get('version') or result.get('reason')}"
        )
    if status == "failed":
        info = job.latest_result()
        text = (info.exc_string if info is not None else None) or ""
        summary["error"] = text.strip().splitlines()[-1] if text.strip() else "failed"
    return summary


def recent_jobs(redis: Redis, limit: int = 20, queues: tuple[str, ...] = (QUEUE_NAME,)) -> list[dict]:
    """Return the most recent jobs of every state on ``queues`` (training by default), newest first."""
    ids: set[str] = set()
    for name in queues:
        queue = Queue(name, connection=redis)
        ids.update(queue.get_job_ids(0, limit))
        # Registries are sorted by time, and only the newest ``limit`` of each can be among the
        # newest ``limit`` overall. This keeps /health fast when thousands of jobs are kept.
        for registry in (queue.started_job_registry, queue.deferred_job_registry, queue.finished_job_registry,
                         queue.failed_job_registry):
            ids.update(registry.get_job_ids(0, limit - 1, desc=True))
    jobs = [job for job in Job.fetch_many(list(ids), connection=redis) if job is not None]
    jobs.sort(key=lambda job: job.enqueued_at or job.created_at, reverse=True)
    return [describe_job(job) for job in jobs[:limit]]
