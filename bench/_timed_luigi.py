"""``luigi`` with per-task timing: ``python bench/_timed_luigi.py LUIGI_ARGS...`` (benchmark helper).

The same code path as the ``luigi`` console script (``luigi.cmdline.luigi_run``), plus Luigi event
handlers that append one JSON line per task start / end to the file named by ``BENCH_TASK_LOG``
(handlers registered here are inherited by the forked task processes of ``--workers N``).
"""
from __future__ import annotations

import json
import os
import sys
import time

import luigi
import luigi.cmdline

T0 = time.time()
LOG = os.environ.get("BENCH_TASK_LOG")


def _log(kind: str, task) -> None:
    if LOG:
        line = json.dumps({"event": kind, "family": task.task_family, "batch": getattr(task, "batch", None),
                           "t": time.time() - T0, "pid": os.getpid()})
        with open(LOG, "a") as f:
            f.write(line + "\n")


@luigi.Task.event_handler(luigi.Event.START)
def _start(task):
    _log("start", task)


@luigi.Task.event_handler(luigi.Event.SUCCESS)
def _success(task):
    _log("end", task)


def summarize(path: str) -> dict:
    """Per task family: number of tasks, summed and largest run seconds; first start, last end."""
    starts, fams, first, last = {}, {}, None, None
    with open(path) as f:
        for line in f:
            e = json.loads(line)
            key = (e["family"], e["batch"])
            if e["event"] == "start":
                starts[key] = e["t"]
                first = e["t"] if first is None else min(first, e["t"])
            elif key in starts:
                d = e["t"] - starts[key]
                n, s, m = fams.get(e["family"], (0, 0.0, 0.0))
                fams[e["family"]] = (n + 1, s + d, max(m, d))
                last = e["t"] if last is None else max(last, e["t"])
    return {"first_task_start_s": round(first or 0.0, 3), "last_task_end_s": round(last or 0.0, 3),
            "tasks": {k: {"n": n, "sum_s": round(s, 3), "max_s": round(m, 3)} for k, (n, s, m) in fams.items()},
            "task_seconds_total": round(sum(s for _, s, _ in fams.values()), 3)}


if __name__ == "__main__":
    luigi.cmdline.luigi_run(sys.argv[1:])
