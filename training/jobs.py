"""The training job that the RQ worker runs for a project.

The job runs in a process spawned for it (see ``training.worker``), so TensorFlow is imported
fresh in every job and never in a process that forks afterwards. Its steps:

1. take the project's running lock (another worker may be training the same project) and
   clear the pending marker, so that events from now on make a new pending job;
2. pull every annotated task and the labeling config through label-studio-sdk;
3. stop as "skipped" below the minimum number of labelled tasks;
4. fetch the images through the same fetcher and cache as the server;
5. train from the project's current version (or the default lineage's) and publish through
   the model store if the result is good enough;
6. with ``PREANNOTATE_AFTER_TRAINING`` on, queue pre-annotation of the unlabelled tasks with
   the new version.

Progress goes into the job's metadata after every stage and epoch; the return value is the
job's result. An exception fails the job (RQ keeps it in the failed registry with the cause)
and leaves the current version untouched.
"""

from __future__ import annotations

import logging
import time

from redis import Redis
from rq import get_current_job

from backend.images import ImageFetcher
from model.label_config import parse_label_config
from model.letterbox import CropSettings
from model.preprocess import InputSpec
from model.store import ModelStore, lineage_for_project
from thumbnail_ml.settings import Settings, configure_logging
from training.exports import labelled_tasks_from_rows
from training.label_studio import make_client, pull_project
from training.locks import heartbeat_lock
from training.queue import compare_and_delete, pending_key, running_key

logger = logging.getLogger(__name__)

class LockTimeout(RuntimeError):
    """Another job of the same project kept the running lock for too long."""


def project_lock(redis: Redis, project_id: int, job_id: str, wait_s: float):
    """Hold the project's running lock, refreshed by a heartbeat thread, for the block's duration."""
    def busy(holder: str | None) -> Exception:
        return LockTimeout(f"project {project_id} is being trained by job {holder}; gave up after {wait_s:.0f} s")

    return heartbeat_lock(redis, running_key(project_id), job_id, wait_s, busy)


def _reporter(job):
    """Return a callback that stores progress in the RQ job's metadata."""
    def report(event: dict) -> None:
        if job is None:
            return
        job.meta["progress"] = {**event, "at": time.time()}
        try:
            job.save_meta()
        except Exception as error:  # noqa: BLE001 - progress is informative; training goes on
            logger.warning("job %s: cannot save progress: %s", job.id, error)
    return report


def train_project(project_id: int) -> dict:
    """Train the project's model on everything labelled so far; the RQ job function."""
    settings = Settings.from_env()
    configure_logging(settings.log_level)
    job = get_current_job()
    job_id = job.id if job else "local"
    redis = job.connection if job else Redis.from_url(settings.redis_url)
    report = _reporter(job)

    report({"stage": "waiting for lock"})
    with project_lock(redis, project_id, job_id, wait_s=settings.training_job_timeout):
        # From here on, a new event makes a new pending job, which will see this job's data too.
        compare_and_delete(redis, pending_key(project_id), job_id)
        result = _train(settings, project_id, job_id, report)
    if result.get("status") == "published":
        from training.preannotate import enqueue_after_publish

        result["preannotation_job"] = enqueue_after_publish(
            redis, project_id, result["version"], enabled=settings.preannotate_after_training
        )
    return result


def _train(settings: Settings, project_id: int, job_id: str, report) -> dict:
    from model.network import DEFAULT_ARCHITECTURE
    from training.dataset import build_dataset_from_downloads
    from training.trainer import TrainingError, TrainingOptions, train_version

    started = time.monotonic()
    report({"stage": "pulling"})
    snapshot = pull_project(make_client(settings), project_id, base_url=settings.label_studio_url)
    config = parse_label_config(snapshot.label_config)
    tasks, export_report = labelled_tasks_from_rows(
        snapshot.tasks, config, settings.exclusive_choice, source=f"project {project_id}"
    )
    counts = export_report.to_dict()
    logger.info("job %s: project %s has %d labelled tasks (%s)", job_id, project_id, len(tasks), counts)
    if len(tasks) < settings.min_labelled_tasks:
        result = {"status": "skipped", "project": project_id, "labelled": len(tasks),
                  "minimum": settings.min_labelled_tasks,
                  "reason": f"{len(tasks)} labelled tasks, fewer than the {settings.min_labelled_tasks} needed"}
        logger.info("job %s: skipped: %s", job_id, result["reason"])
        report({"stage": "skipped", "labelled": len(tasks)})
        return result

    store = ModelStore(settings.model_dir)
    lineage = lineage_for_project(project_id)
    own_current = store.current_version(lineage)
    parent = store.resolve(lineage)
    # A warm start keeps the parent's network and preprocessing, so the weights fit the input.
    architecture = DEFAULT_ARCHITECTURE
    if parent is not None:
        manifest = store.manifest(parent)
        spec, crop = InputSpec.from_dict(manifest.input), CropSettings.from_dict(manifest.crop)
        architecture = manifest.architecture
    else:
        spec, crop = InputSpec(), CropSettings()

    report({"stage": "fetching images", "tasks": len(tasks)})
    fetcher = ImageFetcher(settings)
    try:
        downloads = fetcher.fetch_many([(task.task_id, task.image_url) for task in tasks])
    finally:
        fetcher.close()
    dataset = build_dataset_from_downloads(tasks, downloads, list(config.choices), spec, crop, threads=settings.threads)
    if dataset.dropped:
        logger.warning("job %s: dropped tasks: %s; examples %s", job_id, dict(dataset.dropped), dataset.examples)

    options = TrainingOptions(architecture=architecture, epochs=settings.train_epochs)
    try:
        outcome = train_version(
            dataset, store, lineage, settings.exclusive_choice, options, parent=parent,
            source={"project": project_id, "job": job_id, "labelled_tasks": len(tasks)},
            progress=report, compare_with_parent=own_current is not None,
        )
    except TrainingError as error:
        # The validation split is chosen by task id, so a project just past MIN_LABELLED_TASKS
        # can still have too few validation examples: that waits for more labels, like a
        # project below the minimum, and is not a failure.
        result = {"status": "skipped", "project": project_id, "labelled": len(tasks),
                  "reason": f"{error}; label more tasks"}
        logger.info("job %s: skipped: %s", job_id, result["reason"])
        report({"stage": "skipped", "labelled": len(tasks)})
        return result
    result = {
        "status": "published" if outcome.published else "not published",
        "project": project_id,
        **outcome.to_dict(),
        "labelled": len(tasks),
        "latest_annotation_at": max((task.updated_at or "" for task in tasks), default=None),
        "dropped": {**counts["dropped"], **dict(dataset.dropped)},
        "unknown_labels": counts["unknown_labels"],
        "seconds": round(time.monotonic() - started, 1),
    }
    report({"stage": "done", "status": result["status"], "version": result.get("version")})
    logger.info("job %s: project %s %s (%s) in %.1f s", job_id, project_id, result["status"],
                outcome.reason, result["seconds"])
    return result
