"""Incremental reruns: ``python bench/bench_rerun.py [--clips N] [--out DIR]``.

A corpus of N (default 1,500, BAUM-1's size) replicated demo clips; with the ``luigi`` CLI
(``--workers 2``, default batch size 64; audio-only shards, ``--video false``, unless ``--video``:
the visual chain of 1,500 clips alone takes ~20 min here, see ``bench_visual.py``):

1. the full build (wall time including start-up);
2. (a) a no-op rerun, wall time including start-up (target <= 5 s);
3. (b) a rerun with ``--Segment-hop-frames 30`` (only Segment and Shard run again), as a fraction of
   the full build's wall time (target <= 20 %).

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

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_audio_chain import build  # noqa: E402
from corpus import DATASET, replicate  # noqa: E402

TARGET_NOOP_S = 5.0
TARGET_HOP_FRACTION = 0.20


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
