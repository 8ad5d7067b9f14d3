"""A small HTTP load generator for tests and benchmarks: client threads posting JSON for a while.

``run_load`` keeps ``clients`` threads posting as fast as the server responds, for a fixed
duration, and returns the latencies, status counts and failed checks. ``run_burst`` sends a
fixed list of payloads spread evenly over a time window. Both use one ``requests.Session``
per thread, so connections are reused as Label Studio's own client does.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import requests

# Returns the reason a response is wrong, or None when it is right.
ResponseCheck = Callable[[dict, requests.Response], "str | None"]
MAX_KEPT_FAILURES = 20


@dataclass
class LoadResult:
    """What a load run measured.

    Attributes:
        duration_s: wall-clock seconds from the first request to the last response.
        latencies_s: seconds per request, in completion order.
        statuses: count per HTTP status code, or per exception class name when no response came.
        failed_checks: how many responses the check rejected.
        failure_examples: the first rejection messages, at most ``MAX_KEPT_FAILURES``.
    """

    duration_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    failed_checks: int = 0
    failure_examples: list[str] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return len(self.latencies_s)

    def percentile(self, percent: float) -> float:
        """Return the latency below which ``percent`` % of requests fall (nearest rank), in seconds."""
        if not self.latencies_s:
            return math.nan
        ordered = sorted(self.latencies_s)
        rank = max(1, math.ceil(percent / 100 * len(ordered)))
        return ordered[rank - 1]

    def server_errors(self) -> int:
        """Return the number of 5xx responses plus requests that got no response at all."""
        return sum(count for status, count in self.statuses.items() if not isinstance(status, int) or status >= 500)

    def summary(self) -> str:
        rate = self.requests / self.duration_s if self.duration_s else math.nan
        return (
            f"{self.requests} requests in {self.duration_s:.1f} s ({rate:.1f}/s), "
            f"p50 {self.percentile(50) * 1000:.0f} ms, p95 {self.percentile(95) * 1000:.0f} ms, "
            f"p99 {self.percentile(99) * 1000:.0f} ms, max {max(self.latencies_s, default=math.nan) * 1000:.0f} ms, "
            f"statuses {dict(self.statuses)}, failed checks {self.failed_checks}"
        )


class _Recorder:
    """Collects the measurements of all client threads under one lock."""

    def __init__(self, check: ResponseCheck | None) -> None:
        self.result = LoadResult()
        self.check = check
        self.lock = threading.Lock()

    def post(self, session: requests.Session, url: str, payload: dict, timeout_s: float) -> None:
        started = time.perf_counter()
        failure = None
        try:
            response = session.post(url, json=payload, timeout=timeout_s)
            status: int | str = response.status_code
            if self.check is not None:
                failure = self.check(payload, response)
        except requests.RequestException as error:
            status = type(error).__name__
        elapsed = time.perf_counter() - started
        with self.lock:
            self.result.latencies_s.append(elapsed)
            self.result.statuses[status] += 1
            if failure is not None:
                self.result.failed_checks += 1
                if len(self.result.failure_examples) < MAX_KEPT_FAILURES:
                    self.result.failure_examples.append(failure)


def run_load(url: str, make_payload: Callable[[int, int], dict], clients: int, duration_s: float,
             check: ResponseCheck | None = None, timeout_s: float = 30.0) -> LoadResult:
    """Post ``make_payload(client, number)`` to ``url`` from ``clients`` threads for ``duration_s`` seconds.

    Each thread sends its next request as soon as the previous response arrives. Requests
    still in flight at the end are waited for (up to ``timeout_s``) and counted.
    """
    recorder = _Recorder(check)
    deadline = time.monotonic() + duration_s

    def client(index: int) -> None:
        with requests.Session() as session:
            number = 0
            while time.monotonic() < deadline:
                recorder.post(session, url, make_payload(index, number), timeout_s)
                number += 1

    return _run_clients(recorder, client, clients, "load-client")


def run_burst(url: str, payloads: list[dict], within_s: float, clients: int,
              check: ResponseCheck | None = None, timeout_s: float = 30.0) -> LoadResult:
    """Send ``payloads`` to ``url`` spread evenly over ``within_s`` seconds, from ``clients`` threads.

    Payload ``i`` is sent at ``i * within_s / len(payloads)`` seconds after the start, or as
    soon as its thread is free when the server is slower than that.
    """
    recorder = _Recorder(check)
    interval = within_s / max(1, len(payloads))
    started_at = time.monotonic()

    def client(index: int) -> None:
        with requests.Session() as session:
            for number in range(index, len(payloads), clients):
                delay = started_at + number * interval - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                recorder.post(session, url, payloads[number], timeout_s)

    return _run_clients(recorder, client, clients, "burst-client")


def _run_clients(recorder: _Recorder, client: Callable[[int], None], clients: int, name: str) -> LoadResult:
    """Run ``client(index)`` in ``clients`` threads, wait for all, and return the timed result."""
    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(index,), name=f"{name}-{index}") for index in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    recorder.result.duration_s = time.perf_counter() - started
    return recorder.result
