"""Time from the last annotation to the new version being served, through the real stack.

Starts a real Label Studio 1.23.2 (installed into .cache/label-studio-venv on first use), our
server and one worker against the local Redis (database 13), with an empty model store.
Creates a project of the labelled thumbnails, submits every annotation through the SDK,
starts the worker, and measures until ``/setup`` returns the new version (round 1, trained
from scratch). Then updates 50 annotations and measures again (round 2, warm start). Prints
the times and the validation macro-AP of each version.

    .venv/bin/python bench/learning_loop.py [--epochs 40]
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

from model.label_config import default_label_config_xml  # noqa: E402
from model.store import ModelStore  # noqa: E402
from tests.e2e.label_studio import create_sdk_client, ensure_label_studio_installed, launch_label_studio  # noqa: E402
from tests.servers import start_backend, start_worker  # noqa: E402
from tests.support import THUMBNAILS, labelled_thumbnails  # noqa: E402
from training.jobs_report import recent_jobs  # noqa: E402

REDIS_URL = "redis://127.0.0.1:6379/13"


def region(choices: list[str]) -> list[dict]:
    return [{"from_name": "choice", "to_name": "image", "type": "choices", "value": {"choices": choices}}]


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
        annotations = {}
        for task in tasks:
            name = Path(task.data["image"].split("?d=")[-1]).name
            annotations[task.id] = client.annotations.create(id=task.id, result=region(labels[name])).id
        worker = start_worker(env, scratch / "worker.log")
        started = time.monotonic()
        first = wait_for_version(backend.url, project.id, None)
        first_s = time.monotonic() - started

        # Round 2: 50 annotations are saved again with their own labels, as annotators do when
        # they review. Whether the new version is published depends on its validation macro-AP,
        # so this round measures until the job ends and reports its outcome.
        before = {job["id"] for job in recent_jobs(redis, limit=200)}
        for task in tasks[:50]:
            name = Path(task.data["image"].split("?d=")[-1]).name
            client.annotations.update(id=annotations[task.id], result=region(labels[name]))
        started = time.monotonic()
        outcome = wait_for_job_end(redis, before)
        second_s = time.monotonic() - started
        second = outcome.get("version")

        store = ModelStore(scratch / "models")
        versions = []
        for manifest in store.versions(f"project-{project.id}"):
            versions.append({"version": manifest.version, "parent": manifest.parent,
                             "macro_ap": manifest.metrics["macro_ap"], "prior_macro_ap": manifest.metrics["prior_macro_ap"],
                             "epochs_run": manifest.training["epochs_run"], "train": manifest.counts["train"],
                             "validation": manifest.counts["validation"]})
        if second:
            wait_for_version(backend.url, project.id, first)
            second_served_s = round(time.monotonic() - started, 1)
        else:
            second_served_s = None
        return {"tasks": len(tasks), "epochs": epochs,
                "round1_version": first,
                "round1_last_annotation_to_served_s": round(first_s, 1),
                "round2_last_update_to_job_end_s": round(second_s, 1),
                "round2_outcome": {key: outcome.get(key) for key in ("status", "reason", "version", "macro_ap",
                                                                      "parent_macro_ap")},
                "round2_last_update_to_served_s": second_served_s,
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
    results = Path(__file__).resolve().parent / "results"
    results.mkdir(exist_ok=True)
    (results / "learning_loop.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
