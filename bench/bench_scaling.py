"""Throughput against worker processes on one machine: ``python bench/bench_scaling.py [--workers 1,2,4]
[--audio-clips 64] [--video-clips 16]``.

For each worker count N: a fresh build of the audio chain (``--video false``, the ``bench/corpus.py``
corpus of hard links to the demo clips) and of the visual chain (``bench_visual.py``'s BAUM-format
854×480 encodes, no embedding stages), each with ``--workers N`` and batches sized so every worker
has work (the same batches for every N, at least 4 per worker at the largest N). Prints clips/s per N, the speed-up against N = 1 and the
speed-up per worker (target ≥ 0.8 up to the cores). The figures of one run are ratios side by side,
so a slow machine or a slow day shows as a slow N = 1 too. Default worker counts: 1, 2, 4, ... up
to the cores. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_audio_chain import build  # noqa: E402
from bench_visual import NO_EMBEDDINGS, make_corpus  # noqa: E402
from corpus import replicate  # noqa: E402


def counts(cores: int) -> list[int]:
    out, n = [], 1
    while n < cores:
        out.append(n)
        n *= 2
    return out + [cores]


def scale(manifest: str, n_clips: int, workers: list[int], work: str, extra: tuple, pin: bool = True) -> dict:
    rows = {}
    batch = max(1, math.ceil(n_clips / (4 * max(workers))))   # the same batches for every N: >= 4 per worker
    for n in workers:
        # pinned: N workers on N cores (``taskset``), so that one worker's library threads (Praat's pitch,
        # the decoders) do not borrow the cores the other workers would use
        cmd = (["taskset", "-c", f"0-{min(n, os.cpu_count() or 1) - 1}"] if pin else []) + [shutil.which("luigi") or "luigi"]
        r = build(cmd, manifest, os.path.join(work, f"store-{n}"), batch_size=batch,
                  workers=n, extra=extra)
        rows[n] = {"wall_s": r["wall_s"], "cpu_s": r["cpu_s"], "cores_busy": round(r["cpu_s"] / r["wall_s"], 2),
                   "clips_per_s": round(r["clips_ok"] / r["wall_s"], 2), "batch_size": batch}
    first = rows[workers[0]]
    base = first["clips_per_s"] / workers[0]
    cores = os.cpu_count() or 1
    for n, r in rows.items():
        r["speedup"] = round(r["clips_per_s"] / first["clips_per_s"] * workers[0], 2)
        r["speedup_per_worker"] = round(r["clips_per_s"] / (base * n), 2)
        # a worker whose libraries run threads of their own (Praat's pitch, the decoders) keeps more than
        # one core busy: N workers can then give at most cores / (its cores busy) times one worker's rate
        ceiling = min(n / workers[0], cores / first["cores_busy"]) if first["cores_busy"] > 0 else n
        r["speedup_ceiling"] = round(ceiling, 2)
        r["speedup_of_ceiling"] = round(r["speedup"] / ceiling, 2)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workers", help="comma-separated worker counts (default: 1, 2, 4, ... the cores)")
    p.add_argument("--audio-clips", type=int, default=64)
    p.add_argument("--video-clips", type=int, default=16)
    p.add_argument("--no-pin", action="store_true", help="let every N use all the cores (default: N workers on N cores)")
    args = p.parse_args()
    if not args.no_pin and shutil.which("taskset") is None:   # util-linux; not on macOS
        p.error("pinning N workers to N cores needs `taskset` (util-linux); install it or pass --no-pin")
    cores = os.cpu_count() or 1
    workers = [int(w) for w in args.workers.split(",")] if args.workers else counts(cores)
    out = {"date": datetime.date.today().isoformat(), "machine": f"{platform.node()}, {cores} cores",
           "command": "python bench/bench_scaling.py " + " ".join(sys.argv[1:]), "workers": workers, "pinned": not args.no_pin}
    with tempfile.TemporaryDirectory() as work:
        manifest, _ = replicate(os.path.join(work, "audio"), args.audio_clips)
        out["audio"] = scale(manifest, args.audio_clips, workers, os.path.join(work, "a"), ("--video", "false"), not args.no_pin)
        manifest, _, _ = make_corpus(os.path.join(work, "video"), args.video_clips)
        out["visual"] = scale(manifest, args.video_clips, workers, os.path.join(work, "v"), NO_EMBEDDINGS, not args.no_pin)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
