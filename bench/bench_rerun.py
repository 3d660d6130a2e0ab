"""Incremental reruns: ``python bench/bench_rerun.py [--clips N] [--out DIR]``.

A corpus of N (default 1,500, BAUM-1's size) replicated demo clips; with the ``luigi`` CLI
(``--workers 2``, default batch size 64; audio-only shards, ``--video false``, unless ``--video``:
the visual chain of 1,500 clips alone takes ~20 min here, see ``bench_visual.py``):

1. the full build (wall time including start-up);
2. (a) a no-op rerun, wall time including start-up (target <= 5 s);
3. (b) a rerun with ``--Segment-hop-frames 30`` (only Segment and Shard run again), as a fraction of
   the full build's wall time (target <= 20 %);
4. (c) issue 19: what the no-op rerun's checks cost on this store: ``BuildShards.complete()``'s
   check of every recorded shard by size + mtime (what a rerun does) beside a full sha256 of every
   shard (what ``avstore verify`` does), and the sweep of dead processes' temporary files over the
   whole store (``base.sweep_stale_temps``, once per build);
5. (d) issue 19 item 4: a rerun after one shard was truncated (that Shard task and BuildShards run).

Reports task counts (scheduled / ran / already complete) and shard counts. Prints one JSON object.
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

from bench_audio_chain import build  # noqa: E402
from corpus import DATASET, replicate  # noqa: E402

TARGET_NOOP_S = 5.0
TARGET_HOP_FRACTION = 0.20


def check_costs(store: str) -> dict:
    """Seconds of the no-op rerun's checks (issue 19 items 4 and 9) on ``store``."""
    sys.path.insert(0, os.path.dirname(HERE))
    from pipeline.base import sweep_stale_temps
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
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--out", help="work folder (kept); default a temporary folder, removed")
    ap.add_argument("--video", action="store_true",
                    help="build the visual chain too (default: audio-only shards, --video false)")
    args = ap.parse_args()

    work = os.path.abspath(args.out) if args.out else tempfile.mkdtemp(prefix="bench_rerun_")
    os.makedirs(work, exist_ok=True)
    try:
        manifest, audio_s = replicate(os.path.join(work, "corpus"), args.clips)
        store = os.path.join(work, "store")
        luigi_bin = [shutil.which("luigi") or "luigi"]
        video = () if args.video else ("--video", "false")
        run = (lambda *extra: build(luigi_bin, manifest, store, batch_size=args.batch_size, extra=(*video, *extra)))
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
        builds = {}
        for path in glob.glob(os.path.join(store, DATASET, "builds", "*.json")):
            with open(path) as f:
                shards = json.load(f)["shards"]
            builds[os.path.basename(path)] = {"shards": len(shards),
                                              "shard_dirs": len({os.path.dirname(s) for s in shards})}
        frac = hop["wall_s"] / full["wall_s"]
        out = {"benchmark": "rerun", "clips": args.clips, "audio_s": round(audio_s, 3), "workers": 2, "video": args.video,
               "batch_size": args.batch_size, "full_build": {**full, "rtf": round(audio_s / full["wall_s"], 1)},
               "noop_rerun": noop, "hop30_rerun": {**hop, "fraction_of_full": round(frac, 4)},
               "noop_checks": costs, "rerun_after_one_truncated_shard": repair,
               "store": {"shard_files": len(shard_files),
                         "shard_dirs": len({os.path.dirname(s) for s in shard_files}),
                         "stage_dirs": {s: len(glob.glob(os.path.join(store, DATASET, s, "*")))
                                        for s in ("decode", "vad", "prosody", "logmel", "segment", "shards")},
                         "builds": builds},
               "targets": {"noop_rerun_s": TARGET_NOOP_S, "hop30_fraction": TARGET_HOP_FRACTION},
               "met": {"noop_rerun": noop["wall_s"] <= TARGET_NOOP_S, "hop30_rerun": frac <= TARGET_HOP_FRACTION},
               "work_dir": work if args.out else None}
        print(json.dumps(out, indent=1))
    finally:
        if not args.out:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
