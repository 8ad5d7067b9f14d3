"""Time from the last annotation to the new version being served, through the real stack.

Starts a real Label Studio 1.23.2 (installed into .cache/label-studio-venv on first use), our
server and one worker against the local Redis (database 13), with an empty model store.
Creates a project of the labelled thumbnails and measures two rounds:

- cold: every task but one is annotated through the SDK, then the worker starts; the time
  runs from the worker's start (the last annotation's job waiting for it) until ``/setup``
  returns the project's first version, trained from scratch;
- warm: with that version served, the last task is annotated (one submit, one webhook); the
  time runs from the submit until ``/setup`` returns the version trained on it, warm-started
  from the first. Whether it is published depends on its validation macro-AP against the
  first version's, so the job's outcome is reported too.

    .venv/bin/python bench/learning_loop.py [--epochs 60]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests  # noqa: E402
from redis import Redis  # noqa: E402

from bench.common import save_result  # noqa: E402
from model.label_config import default_label_config_xml  # noqa: E402
from model.store import ModelStore  # noqa: E402
from tests.e2e.label_studio import create_sdk_client, ensure_label_studio_installed, launch_label_studio  # noqa: E402
from tests.servers import start_backend, start_worker  # noqa: E402
from tests.support import THUMBNAILS, labelled_thumbnails  # noqa: E402
from training.jobs_report import recent_jobs  # noqa: E402

REDIS_URL = "redis://127.0.0.1:6379/13"


def region(choices: list[str]) -> list[dict]:
    return [{"from_name": "choice", "to_name": "image", "type": "choices", "value": {"choices": choices}}]


def task_image_name(task) -> str:
    return Path(task.data["image"].split("?d=")[-1]).name


def wait_for_version(backend_url: str, project_id: int, previous: str | None, timeout: float = 1800) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        version = requests.post(f"{backend_url}/setup", json={"project": f"{project_id}.0",
                                                              "schema": default_label_config_xml()}, timeout=5).json()
        if version["model_version"] not in (previous, "no-model"):
            return version["model_version"]
        time.sleep(0.25)
    raise TimeoutError("no new version was served")


def wait_for_job_end(redis: Redis, before: set[str], timeout: float = 1800) -> dict:
    """Wait until the training jobs queued after ``before`` have ended; return the last one's result."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = [job for job in recent_jobs(redis, limit=200) if job["id"] not in before]
        if new and all(job["status"] in ("finished", "failed") for job in new):
            last = max(new, key=lambda job: job["enqueued_at"] or "")
            return last.get("result") or {"status": last["status"], "reason": last.get("error")}
        time.sleep(0.5)
    raise TimeoutError("the training job did not end")


def run(epochs: int) -> dict:
    redis = Redis.from_url(REDIS_URL)
    redis.flushdb()
    scratch = Path(tempfile.mkdtemp(prefix="learning-loop-"))
    document_root = scratch / "files"
    document_root.mkdir()
    label_studio = launch_label_studio(ensure_label_studio_installed(), data_dir=scratch / "ls-data",
                                       document_root=document_root)
    instance = label_studio.instance
    env = {"MODEL_DIR": str(scratch / "models"), "REDIS_URL": REDIS_URL, "LABEL_STUDIO_URL": instance.base_url,
           "LABEL_STUDIO_API_KEY": instance.pat, "TRAIN_EPOCHS": str(epochs),
           "IMAGE_CACHE_DIR": str(scratch / "cache"), "LOG_LEVEL": "WARNING"}
    backend = start_backend(env, scratch / "backend.log")
    worker = None
    try:
        client = create_sdk_client(instance)
        project = client.projects.create(title="learning loop", label_config=default_label_config_xml())
        folder = document_root / "thumbs"
        folder.mkdir()
        labels = {}
        for relative, choices in labelled_thumbnails().items():
            shutil.copy(THUMBNAILS / relative, folder / Path(relative).name)
            labels[Path(relative).name] = choices
        storage = client.import_storage.local.create(project=project.id, path=str(folder), use_blob_urls=True)
        client.import_storage.local.sync(id=storage.id)
        client.ml.create(project=project.id, url=backend.url, title="thumbnail-ml", is_interactive=True)

        tasks = list(client.tasks.list(project=project.id, fields="all"))
        *annotated, last = tasks
        for task in annotated:
            client.annotations.create(id=task.id, result=region(labels[task_image_name(task)]))
        worker = start_worker(env, scratch / "worker.log")
        started = time.monotonic()
        first = wait_for_version(backend.url, project.id, None)
        cold_s = time.monotonic() - started

        before = {job["id"] for job in recent_jobs(redis, limit=200)}
        started = time.monotonic()
        client.annotations.create(id=last.id, result=region(labels[task_image_name(last)]))
        outcome = wait_for_job_end(redis, before)
        job_end_s = time.monotonic() - started
        second = outcome.get("version") if outcome.get("status") == "published" else None
        if second:
            wait_for_version(backend.url, project.id, first)
        warm_served_s = time.monotonic() - started if second else None

        store = ModelStore(scratch / "models")
        versions = []
        for manifest in store.versions(f"project-{project.id}"):
            versions.append({"version": manifest.version, "parent": manifest.parent,
                             "macro_ap": manifest.metrics["macro_ap"], "prior_macro_ap": manifest.metrics["prior_macro_ap"],
                             "epochs_run": manifest.training["epochs_run"], "train": manifest.counts["train"],
                             "validation": manifest.counts["validation"]})
        return {"tasks": len(tasks), "epochs": epochs,
                "cold_version": first,
                "cold_last_annotation_to_served_s": round(cold_s, 1),
                "warm_outcome": {key: outcome.get(key) for key in ("status", "reason", "version", "macro_ap",
                                                                    "parent_macro_ap")},
                "warm_last_annotation_to_job_end_s": round(job_end_s, 1),
                "warm_last_annotation_to_served_s": round(warm_served_s, 1) if warm_served_s else None,
                "versions": versions}
    finally:
        if worker:
            worker.stop()
        backend.stop()
        label_studio.stop()
        redis.flushdb()
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60, help="TRAIN_EPOCHS of the worker (default: 60, as in production)")
    args = parser.parse_args()
    result = run(args.epochs)
    save_result("learning_loop", result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
