"""Pull labelled tasks and the labeling config of a project through label-studio-sdk.

Label Studio 1.23's ``only_annotated=True`` does not filter the task list, so the pull filters
on tasks whose ``total_annotations`` is above zero with a Data Manager query. Every page is
fetched with a timeout and retried with backoff, and the pull fails unless it got as many
distinct tasks as Label Studio reported: a model is never trained on a silently truncated set.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass

import httpx
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError

from thumbnail_ml.settings import Settings

logger = logging.getLogger(__name__)

PAGE_SIZE = 100
REQUEST_TIMEOUT_S = 30.0
ATTEMPTS = 5
BACKOFF_S = 1.0
ANNOTATED_FILTER = json.dumps({
    "filters": {"conjunction": "and", "items": [
        {"filter": "filter:tasks:total_annotations", "operator": "greater", "value": 0, "type": "Number"},
    ]},
    "ordering": ["tasks:id"],
})


class PullError(RuntimeError):
    """The annotations could not be pulled completely; the message names what failed."""


@dataclass
class ProjectSnapshot:
    """A project's labeling config and every task that has at least one annotation."""

    project_id: int
    label_config: str
    tasks: list[dict]


def make_client(settings: Settings) -> LabelStudio:
    """Build an SDK client from the settings; a personal access token is exchanged by the SDK."""
    if not settings.label_studio_url or not settings.label_studio_api_key:
        raise PullError(
            "LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY must be set for the worker to pull annotations "
            "(a personal access token from Account & Settings, or a legacy token)"
        )
    return LabelStudio(base_url=settings.label_studio_url, api_key=settings.label_studio_api_key,
                       timeout=REQUEST_TIMEOUT_S)


def _retrying(description: str, call, attempts: int = ATTEMPTS, backoff: float = BACKOFF_S,
              base_url: str | None = None):
    """Run ``call`` and retry network errors and 5xx responses with exponential backoff.

    ``base_url``, when given, is the Label Studio address that the final error names.
    """
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except (httpx.TransportError, ApiError) as error:
            status = getattr(error, "status_code", None)
            retryable = status is None or status >= 500 or status == 429
            # A transport error's text names the failure, for example "[Errno 111] Connection refused".
            detail = f"HTTP {status}" if status else f"{type(error).__name__}: {error}"
            if not retryable or attempt == attempts:
                where = f" (Label Studio at {base_url})" if base_url else ""
                raise PullError(f"{description} failed after {attempt} attempt(s): {detail}{where}") from error
            delay = backoff * 2 ** (attempt - 1)
            logger.warning("%s failed (%s), retrying in %.1f s (attempt %d of %d)", description,
                           detail, delay, attempt, attempts)
            time.sleep(delay)
    raise AssertionError("unreachable")


def pull_project(client: LabelStudio, project_id: int, page_size: int = PAGE_SIZE,
                 attempts: int = ATTEMPTS, backoff: float = BACKOFF_S, base_url: str | None = None) -> ProjectSnapshot:
    """Fetch the project's labeling config and all its annotated tasks, every page.

    ``base_url`` is the Label Studio address that error messages name.

    Raises:
        PullError: Label Studio stayed unreachable, refused the credentials, or returned fewer
            tasks than it reported.
    """
    project = _retrying(f"reading project {project_id}", lambda: client.projects.get(id=project_id),
                        attempts, backoff, base_url)

    def page(number: int):
        return client.tasks.list(project=project_id, fields="all", query=ANNOTATED_FILTER, page=number,
                                 page_size=page_size)

    first = _retrying(f"reading page 1 of project {project_id}'s tasks", lambda: page(1), attempts, backoff,
                      base_url)
    total = int(first.response.total)
    tasks: dict[int, dict] = {}
    for task in first.items or []:
        tasks[task.id] = _as_dict(task)
    pages = max(1, math.ceil(total / page_size))
    for number in range(2, pages + 1):
        result = _retrying(f"reading page {number} of {pages} of project {project_id}'s tasks",
                           lambda number=number: page(number), attempts, backoff, base_url)
        for task in result.items or []:
            tasks[task.id] = _as_dict(task)
    if len(tasks) < total:
        raise PullError(
            f"incomplete pull of project {project_id}: got {len(tasks)} of {total} annotated tasks; "
            "nothing was trained (the job can be retried)"
        )
    logger.info("pulled %d annotated tasks of project %d in %d page(s)", len(tasks), project_id, pages)
    return ProjectSnapshot(project_id, project.label_config, [tasks[key] for key in sorted(tasks)])


def _as_dict(task) -> dict:
    values = task.model_dump() if hasattr(task, "model_dump") else dict(task)
    annotations = []
    for annotation in values.get("annotations") or []:
        annotations.append(annotation if isinstance(annotation, dict) else dict(annotation))
    values["annotations"] = annotations
    return values
