"""Coalescing of training jobs on the real Redis (database 15, flushed around each test)."""

from __future__ import annotations

import os

import pytest
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from rq import Queue
from rq.job import Job

from training.queue import QUEUE_NAME, enqueue_training, pending_key, queue_state, running_key

TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture
def redis():
    connection = Redis.from_url(TEST_REDIS_URL)
    connection.flushdb()
    yield connection
    connection.flushdb()


def test_first_event_enqueues_job(redis):
    result = enqueue_training(redis, 3, "ANNOTATION_CREATED", job_timeout=600)
    assert not result.coalesced
    assert result.job_id.startswith("train-project-3-")
    queue = Queue(QUEUE_NAME, connection=redis)
    assert queue.job_ids == [result.job_id]
    job = Job.fetch(result.job_id, connection=redis)
    assert job.func_name == "training.jobs.train_project"
    assert job.args == (3,)
    assert job.timeout == 600
    assert job.meta["reason"] == "ANNOTATION_CREATED"


def test_burst_of_events_makes_one_pending_job(redis):
    results = [enqueue_training(redis, 3, "ANNOTATION_UPDATED", job_timeout=600) for _ in range(100)]
    assert len({result.job_id for result in results}) == 1
    assert sum(not result.coalesced for result in results) == 1
    assert Queue(QUEUE_NAME, connection=redis).count == 1


def test_event_during_run_makes_one_dependent_job(redis):
    """While a job runs (pending marker cleared, running lock held), events make one more job."""
    first = enqueue_training(redis, 3, "ANNOTATION_CREATED", job_timeout=600)
    # What a job does when it starts: take the running lock, then clear its pending marker.
    redis.set(running_key(3), first.job_id)
    redis.delete(pending_key(3))
    during = [enqueue_training(redis, 3, "ANNOTATION_UPDATED", job_timeout=600) for _ in range(50)]
    assert len({result.job_id for result in during}) == 1
    second = Job.fetch(during[0].job_id, connection=redis)
    assert second.id != first.job_id
    assert second._dependency_ids == [first.job_id]


def test_projects_are_independent(redis):
    first = enqueue_training(redis, 1, "ANNOTATION_CREATED", job_timeout=600)
    second = enqueue_training(redis, 2, "ANNOTATION_CREATED", job_timeout=600)
    assert not first.coalesced
    assert not second.coalesced
    assert Queue(QUEUE_NAME, connection=redis).count == 2


def test_stale_pending_marker_replaced(redis):
    """A marker naming a job that no longer exists must not block training forever."""
    redis.set(pending_key(4), "train-project-4-gone")
    result = enqueue_training(redis, 4, "START_TRAINING", job_timeout=600)
    assert not result.coalesced
    assert result.job_id != "train-project-4-gone"


def test_job_ids_never_collide(redis):
    ids = set()
    for _ in range(200):
        result = enqueue_training(redis, 5, "ANNOTATION_CREATED", job_timeout=600)
        ids.add(result.job_id)
        redis.delete(pending_key(5))
    assert len(ids) == 200


def test_redis_down_raises():
    unreachable = Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    with pytest.raises(RedisConnectionError):
        enqueue_training(unreachable, 3, "ANNOTATION_CREATED", job_timeout=600)


def test_queue_state_lists_projects(redis):
    enqueue_training(redis, 8, "ANNOTATION_CREATED", job_timeout=600)
    state = queue_state(redis)
    assert state["queued"] == 1
    assert "pending" in state["projects"]["8"]
