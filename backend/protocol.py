"""Label Studio's ML backend protocol: reading ``/predict`` requests and building results.

A ``/predict`` reply must contain exactly one result per task, in task order, each carrying the
``model_version`` that ``/setup`` returned. Label Studio skips a task only when it already has
a prediction of that version, so any other version makes every "Retrieve predictions" add a
duplicate.
"""

from __future__ import annotations

from dataclasses import dataclass

from model.label_config import LabelConfig

# The model_version reported while no model is trained: Label Studio rejects null versions.
NO_MODEL_VERSION = "no-model"


class ProtocolError(ValueError):
    """A request that does not follow the protocol; the reply is HTTP 400 with this message."""


@dataclass
class TaskInput:
    """One task of a ``/predict`` request: its id and image URL, or why it cannot be predicted."""

    task_id: int | None
    image_url: str | None
    error: str | None = None


def read_tasks(payload: object) -> list:
    """Return the ``tasks`` list of a ``/predict`` body.

    Raises:
        ProtocolError: the body is not an object with a ``tasks`` list.
    """
    if not isinstance(payload, dict):
        raise ProtocolError("request body must be a JSON object with a 'tasks' list")
    tasks = payload.get("tasks")
    if tasks is None:
        raise ProtocolError("request body has no 'tasks' list")
    if not isinstance(tasks, list):
        raise ProtocolError(f"'tasks' must be a list of task objects, got {type(tasks).__name__}")
    return tasks


def task_input(task: object, config: LabelConfig) -> TaskInput:
    """Extract the task id and image URL of one task, or the reason it has none."""
    if not isinstance(task, dict):
        return TaskInput(None, None, f"task is a {type(task).__name__}, not an object")
    raw_id = task.get("id")
    task_id = raw_id if isinstance(raw_id, int) and not isinstance(raw_id, bool) else None
    data = task.get("data")
    if not isinstance(data, dict):
        return TaskInput(task_id, None, "task has no 'data' object")
    url = data.get(config.image_key)
    if url is None:
        keys = ", ".join(sorted(map(str, data))) or "none"
        return TaskInput(task_id, None,
                         f"task data has no '{config.image_key}' key (the config's Image value); keys: {keys}")
    if not isinstance(url, str) or not url.strip():
        return TaskInput(task_id, None, f"task data '{config.image_key}' must be a non-empty URL string")
    return TaskInput(task_id, url.strip())


def choices_result(config: LabelConfig, choices: list[str], score: float | None, version: str) -> dict:
    """Build one task's result: a single choices region, or an empty result when nothing applies."""
    if not config.multiple and len(choices) > 1:
        choices = choices[:1]
    regions = []
    if choices:
        regions.append({
            "from_name": config.choices_name,
            "to_name": config.image_name,
            "type": "choices",
            "value": {"choices": choices},
        })
    result: dict = {"result": regions, "model_version": version}
    if score is not None:
        result["score"] = score
    return result


def empty_result(version: str) -> dict:
    """Build the result of a task that could not be predicted."""
    return {"result": [], "model_version": version}
