"""Records that every benchmark saves next to its figures: the machine, the load on it and the command."""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from importlib import metadata
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# The 1-minute load average when the benchmark script started (it imports this module first).
LOAD_AT_START = os.getloadavg()[0]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine() -> dict:
    """Describe the hardware and software that a figure was measured on."""
    return {
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "python": platform.python_version(),
        "tensorflow": _version("tensorflow-cpu") or _version("tensorflow"),
        "litert": _version("ai-edge-litert"),
        "opencv": _version("opencv-python-headless"),
        # These machines are shared: a figure measured under load from other processes is
        # pessimistic, and the 1-minute load averages at the start and the end show it.
        "load_average_1m_start": round(LOAD_AT_START, 2),
        "load_average_1m_end": round(os.getloadavg()[0], 2),
    }


def save_result(name: str, result: dict) -> Path:
    """Write ``result`` with the machine, the time and the command to bench/results/NAME.json."""
    record = {
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": ".venv/bin/python " + shlex.join([os.path.relpath(sys.argv[0], RESULTS_DIR.parent.parent),
                                                       *sys.argv[1:]]),
        "machine": machine(),
        **result,
    }
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(record, indent=2))
    return path
