"""Write docs/benchmarks.md from the results that the benchmark scripts saved in bench/results/.

    .venv/bin/python bench/write_benchmarks.py

A row whose script has not run yet shows "not run" in place of a figure.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS_DIR, machine  # noqa: E402

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
SCRIPTS = {
    "predict_latency": "bench/predict_latency.py",
    "preannotate_throughput": "bench/preannotate_throughput.py",
    "training_speed": "bench/training_speed.py",
    "learning_loop": "bench/learning_loop.py",
    "concurrent_predict": "bench/concurrent_predict.py",
    "components": "bench/components.py",
}


def load(name: str) -> dict | None:
    path = RESULTS_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def verdict(passed: bool) -> str:
    return "met" if passed else "**missed**"


def p1_rows(latency: dict | None) -> list[str]:
    if latency is None:
        return ["| P1 | /predict latency, 1 task, local 480x360 JPEG | p50 <= 10 ms, p99 <= 40 ms, >= 8x the naive server | not run | |"]
    naive = latency["naive"]
    passed = latency["p50_ms"] <= 10 and latency["p99_ms"] <= 40 and latency["p50_speedup"] >= 8
    return [
        f"| P1 | /predict latency, 1 task, local 480x360 JPEG, {latency['requests']:,} sequential requests "
        f"| p50 <= 10 ms, p99 <= 40 ms, >= 8x the naive server "
        f"| p50 {latency['p50_ms']} ms, p99 {latency['p99_ms']} ms; naive server p50 {naive['p50_ms']} ms, "
        f"p99 {naive['p99_ms']} ms: **{latency['p50_speedup']}x** at p50, {latency['p99_speedup']}x at p99 "
        f"| {verdict(passed)} |"
    ]


def p2_row(throughput: dict | None) -> str:
    target = ">= 300 tasks/s"
    if throughput is None:
        return f"| P2 | pre-annotation throughput, local 480x360 JPEGs | {target} | not run | |"
    return (f"| P2 | pre-annotation throughput, {throughput['tasks']:,} local 480x360 JPEGs to a JSONL file "
            f"| {target} | **{throughput['tasks_per_second']} tasks/s** "
            f"| {verdict(throughput['tasks_per_second'] >= 300)} |")


def p3_row(speed: dict | None) -> str:
    target = ">= 5x faster per epoch at >= the same macro-AP"
    if speed is None:
        return f"| P3 | training epoch time and macro-AP vs the original network | {target} | not run | |"
    passed = speed["epoch_speedup"] >= 5 and speed["default_macro_ap"] >= speed["original_macro_ap"]
    return (f"| P3 | epoch time and validation macro-AP, {speed['default']} vs {speed['original']} "
            f"| {target} | {speed['default_median_epoch_s']} s vs {speed['original_median_epoch_s']} s per epoch: "
            f"**{speed['epoch_speedup']}x**; macro-AP {speed['default_macro_ap']} vs {speed['original_macro_ap']} "
            f"| {verdict(passed)} |")


def p4_rows(loop: dict | None) -> list[str]:
    target = "<= 60 s"
    if loop is None:
        return [f"| P4 | last annotation to new version served | {target} | not run | |"]
    cold = loop["cold_last_annotation_to_served_s"]
    rows = [f"| P4 | cold: {loop['tasks'] - 1} annotations, first version of the project trained from scratch "
            f"| {target} | **{cold} s** | {verdict(cold <= 60)} |"]
    warm = loop["warm_last_annotation_to_served_s"]
    if warm is None:
        outcome = loop["warm_outcome"]
        rows.append(f"| P4 | warm: one more annotation on a served project | {target} | job ended after "
                    f"{loop['warm_last_annotation_to_job_end_s']} s, not published: {outcome.get('reason')} | |")
    else:
        rows.append(f"| P4 | warm: one more annotation on a served project, warm start | {target} "
                    f"| **{warm} s** | {verdict(warm <= 60)} |")
    return rows


def p5_row(latency: dict | None) -> str:
    target = "<= 250 MB, <= 2 s"
    if latency is None:
        return f"| P5 | one serving process: memory after 1,000 requests, start-up | {target} | not run | |"
    rss, startup = latency["rss_mb_largest_process"], latency["startup_to_first_prediction_s"]
    return (f"| P5 | one serving process: resident memory after {latency['requests']:,} requests, "
            f"start to first answer | {target} | **{rss} MB**, **{startup} s** "
            f"| {verdict(rss <= 250 and startup <= 2)} |")


def p6_row(load: dict | None) -> str:
    target = "no errors"
    if load is None:
        return f"| P6 | 32 concurrent clients on /predict for 60 s | {target} | not run | |"
    errors = load["errors"]
    return (f"| P6 | {load['clients']} concurrent clients on /predict for {load['duration_s']} s "
            f"| {target}; report throughput and p99 | {load['requests']:,} requests, {errors} errors, "
            f"**{load['requests_per_second']} requests/s**, p50 {load['p50_ms']} ms, p99 {load['p99_ms']} ms "
            f"| {verdict(errors == 0)} |")


def components_section(components: dict | None) -> list[str]:
    """Render the per-step timings of bench/components.py as two tables."""
    if components is None:
        return ["bench/components.py has not run yet."]
    lines = [f"One thread, best of three passes over {components['images']} real 480x360 thumbnails:", "",
             "| preprocessing step | ms per image |", "|---|---:|"]
    lines += [f"| {step} | {ms} |" for step, ms in components["preprocessing_ms"].items()]
    lines += ["", "LiteRT forward pass at the default input size, one thread:", "",
              "| network | parameters | batch of 1, ms per image | batch of 32, ms per image |", "|---|---:|---:|---:|"]
    for name, row in components["litert_forward"].items():
        lines.append(f"| {name} | {row['parameters']:,} | {row['batch 1, ms per image']} "
                     f"| {row['batch 32, ms per image']} |")
    return lines


def render() -> str:
    results = {name: load(name) for name in SCRIPTS}
    hardware = machine()
    lines = [
        "# Benchmarks",
        "",
        "`make bench` runs each script below and then `bench/write_benchmarks.py`, which writes this",
        "page from `bench/results/*.json`. Every baseline runs in the same script run as the figure",
        "it is compared with, on the same machine, so the ratios hold even where the absolute times",
        "move with the load from other processes.",
        "",
        f"Hardware: {hardware['cpus']} x {hardware['cpu']}, {hardware['memory_gib']} GiB; Python "
        f"{hardware['python']}, TensorFlow {hardware['tensorflow']}, LiteRT {hardware['litert']}, "
        f"OpenCV {hardware['opencv']}.",
        "",
        "| id | what | target | measured | |",
        "|---|---|---|---|---|",
        *p1_rows(results["predict_latency"]),
        p2_row(results["preannotate_throughput"]),
        p3_row(results["training_speed"]),
        *p4_rows(results["learning_loop"]),
        p5_row(results["predict_latency"]),
        p6_row(results["concurrent_predict"]),
        "",
        "## Where the time goes",
        "",
        *components_section(results["components"]),
        "",
        "## Commands and conditions",
        "",
        "| script | command | measured at (UTC) | load average at start, end |",
        "|---|---|---|---|",
    ]
    for name, script in SCRIPTS.items():
        result = results[name]
        if result is None:
            lines.append(f"| {script} | not run | | |")
            continue
        load_start = result["machine"]["load_average_1m_start"]
        load_end = result["machine"]["load_average_1m_end"]
        lines.append(f"| {script} | `{result['command']}` | {result['measured_at']} | {load_start}, {load_end} |")
    lines += ["", "A load average above the number of cores means other processes shared the CPUs during",
              "that run: its absolute times are pessimistic.", ""]
    notes = Path(__file__).resolve().parent / "benchmarks_notes.md"
    if notes.is_file():
        lines += [notes.read_text().rstrip(), ""]
    return "\n".join(lines)


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    DOC.write_text(render())
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
