"""Incremental reruns: ``python bench/bench_rerun.py [--clips N] [--batch-size N] [--out DIR]``.

A corpus of N (default 1,500, BAUM-1's size) replicated demo clips (hard links); with the ``luigi``
CLI (``--workers 2``; the automatic batch size of ``BuildShards`` unless ``--batch-size``: 64 up to
8,192 clips, then at most 128 batches, docs/scale.md; audio-only shards, ``--video false``, unless
``--video``: the visual chain of 1,500 clips alone takes ~20 min here, see ``bench_visual.py``).
Each build runs through ``bench/_timed_luigi.py`` (the ``luigi`` CLI's code path plus task events):
``first_task_start_s`` is the seconds from start-up to the first task's start, i.e. imports, manifest
parsing, hashing and Luigi's scheduling. The corpus's sha256 cache is a fresh file in the work folder
(``AV_STORE_HASH_CACHE``), so the full build hashes its sources as a first build would.

1. the full build (wall time including start-up);
2. (a) a no-op rerun, wall time including start-up (target <= 5 s up to 8,192 clips, <= 30 s at 100,000);
3. (b) a rerun with ``--Segment-hop-frames 30`` (only Segment and Shard run again), as a fraction of
   the full build's wall time (target <= 20 %);
4. (c) issue 19: what the no-op rerun's checks cost on this store: ``BuildShards.complete()``'s
   check of every recorded shard by size + mtime (what a rerun does) beside a full sha256 of every
   shard (what ``avstore verify`` does), and the sweep of dead processes' temporary files over the
   whole store (``pipeline.files.sweep_stale_temps``, once per build);
5. (d) issue 19 item 4: a rerun after one shard was truncated (that Shard task and BuildShards run).

Reports task counts (scheduled / ran / already complete) and shard counts, the batch size the build
used (``batch_size_used`` of its record), and Luigi's own cost for a graph of as many tasks (no-op
tasks, same chain shape, local scheduler: ``luigi_own_cost``). Prints one JSON object.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_audio_chain import build as audio_chain_build  # noqa: E402
from corpus import DATASET, replicate  # noqa: E402

TARGET_NOOP_S = 5.0
TARGET_NOOP_S_LARGE = 30.0  # issue 21 item 2: scheduling + no-op rerun of 100,000 clips
LARGE = 8192  # clips above which the automatic batch size grows (docs/scale.md)
TARGET_HOP_FRACTION = 0.20


def build(manifest: str, store: str, *, batch_size: int | None, log: str, env: dict, extra: tuple = ()) -> dict:
    """BuildShards through ``_timed_luigi.py`` (``bench_audio_chain.build``): wall seconds, summary
    counts, Luigi's task counts and the seconds to the first task's start."""
    from _timed_luigi import summarize

    if os.path.exists(log):
        os.remove(log)
    r = audio_chain_build([sys.executable, os.path.join(HERE, "_timed_luigi.py")], manifest, store,
                          batch_size=batch_size, env={"BENCH_TASK_LOG": log, **env}, extra=extra)
    timed = summarize(log) if os.path.exists(log) else {}
    return {**r, "first_task_start_s": timed.get("first_task_start_s")}


def luigi_own_cost(n_tasks: int, stages: int = 7) -> dict:
    """Luigi alone (local scheduler, one process): ``n_tasks`` no-op tasks in chains of ``stages``
    under one wrapper, the shape of a build; seconds to schedule (``Worker.add``), to schedule and
    run, and ``complete()`` calls per task."""
    import logging

    import luigi
    import luigi.scheduler
    import luigi.worker

    logging.getLogger("luigi-interface").setLevel(logging.WARNING)
    done, calls = set(), [0]

    class _Stage(luigi.Task):
        batch, level = luigi.IntParameter(), luigi.IntParameter()

        def requires(self):
            return [_Stage(batch=self.batch, level=self.level - 1)] if self.level else []

        def complete(self):
            calls[0] += 1
            return (self.batch, self.level) in done

        def run(self):
            done.add((self.batch, self.level))

    class _Top(luigi.WrapperTask):
        n = luigi.IntParameter()

        def requires(self):
            return [_Stage(batch=k, level=stages - 1) for k in range(self.n)]

    n = max(1, round((n_tasks - 1) / stages))
    t = time.perf_counter()
    with luigi.worker.Worker(scheduler=luigi.scheduler.Scheduler(), worker_processes=1) as w:
        w.add(_Top(n=n))
        t_add = time.perf_counter() - t
        w.run()
    t_all, tasks = time.perf_counter() - t, n * stages + 1
    return {"tasks": tasks, "schedule_s": round(t_add, 3), "schedule_and_run_s": round(t_all, 3),
            "ms_per_task": round(1e3 * t_all / tasks, 3), "complete_calls_per_task": round(calls[0] / tasks, 2)}


def check_costs(store: str) -> dict:
    """Seconds of the no-op rerun's checks (issue 19 items 4 and 9) on ``store``."""
    sys.path.insert(0, os.path.dirname(HERE))
    from pipeline.files import sweep_stale_temps
    from pipeline.catalog import record_problems, records

    recs = [r for r in records(store, DATASET).values() if "files" in r]
    out = {"recorded_shards": sum(len(r["files"]) for r in recs),
           "recorded_bytes": sum(m["bytes"] for r in recs for m in r["files"].values()),
           "files_in_store": sum(len(fs) for _, _, fs in os.walk(store))}
    for name, trust in (("shard_check_size_mtime_s", True), ("shard_check_sha256_s", False)):
        t = time.perf_counter()
        assert not any(record_problems(store, r, trust_stat=trust) for r in recs)
        out[name] = round(time.perf_counter() - t, 4)
    t = time.perf_counter()
    sweep_stale_temps(store)
    out["sweep_s"] = round(time.perf_counter() - t, 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", type=int, default=1500)
    ap.add_argument("--batch-size", type=int, default=None,
                    help="clips per batch (default: BuildShards' automatic size, docs/scale.md)")
    ap.add_argument("--out", help="work folder (kept); default a temporary folder, removed")
    ap.add_argument("--video", action="store_true",
                    help="build the visual chain too (default: audio-only shards, --video false)")
    ap.add_argument("--embeddings", help='the [Shard] embeddings list as JSON, e.g. \'[]\' (default: the pipeline\'s); '
                                         '[] leaves the waveform out: at 100,000 clips it alone takes ~30 GB')
    args = ap.parse_args()

    work = os.path.abspath(args.out) if args.out else tempfile.mkdtemp(prefix="bench_rerun_")
    os.makedirs(work, exist_ok=True)
    try:
        manifest, audio_s = replicate(os.path.join(work, "corpus"), args.clips)
        store = os.path.join(work, "store")
        video = (() if args.video else ("--video", "false")) + (
            ("--Shard-embeddings", args.embeddings) if args.embeddings is not None else ())
        env = {"AV_STORE_HASH_CACHE": os.path.join(work, "sha256.jsonl")}
        run = (lambda *extra: build(manifest, store, batch_size=args.batch_size, log=os.path.join(work, "tasks.jsonl"),
                                    env=env, extra=(*video, *extra)))
        full = run()
        noop = run()
        hop = run("--Segment-hop-frames", "30")
        costs = check_costs(store)
        from pipeline.catalog import records  # noqa: E402  (check_costs put the checkout on the path)

        victim = os.path.join(store, next(sorted(r["files"])[0] for r in records(store, DATASET).values()
                                          if r["config"]["segment"]["hop_frames"] == 34))
        with open(victim, "r+b") as f:
            f.truncate(os.path.getsize(victim) // 2)
        repair = run()
        shard_files = glob.glob(os.path.join(store, DATASET, "shards", "*", "shard-*.h5"))
        builds, used = {}, set()
        for path in glob.glob(os.path.join(store, DATASET, "builds", "*.json")):
            with open(path) as f:
                record = json.load(f)
            shards = record["shards"]
            used.add(record.get("batch_size_used"))
            builds[os.path.basename(path)] = {"shards": len(shards),
                                              "shard_dirs": len({os.path.dirname(s) for s in shards})}
        frac = hop["wall_s"] / full["wall_s"]
        target_noop = TARGET_NOOP_S if args.clips <= LARGE else TARGET_NOOP_S_LARGE
        out = {"benchmark": "rerun", "clips": args.clips, "audio_s": round(audio_s, 3), "workers": 2, "video": args.video,
               "embeddings": args.embeddings,
               "batch_size": args.batch_size, "batch_size_used": sorted(used, key=str),
               "full_build": {**full, "rtf": round(audio_s / full["wall_s"], 1)},
               "noop_rerun": noop, "hop30_rerun": {**hop, "fraction_of_full": round(frac, 4)},
               "noop_checks": costs, "rerun_after_one_truncated_shard": repair,
               "luigi_own_cost": luigi_own_cost(full["tasks_scheduled"]),
               "store": {"shard_files": len(shard_files),
                         "shard_dirs": len({os.path.dirname(s) for s in shard_files}),
                         "stage_dirs": {s: len(glob.glob(os.path.join(store, DATASET, s, "*")))
                                        for s in ("decode", "vad", "prosody", "logmel", "segment", "shards")},
                         "builds": builds},
               "targets": {"noop_rerun_s": target_noop, "hop30_fraction": TARGET_HOP_FRACTION},
               "met": {"noop_rerun": noop["wall_s"] <= target_noop, "hop30_rerun": frac <= TARGET_HOP_FRACTION},
               "machine": f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}",
               "work_dir": work if args.out else None}
        print(json.dumps(out, indent=1))
    finally:
        if not args.out:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
