"""How many windows span a pause, and how many of their 16 video frames come from the silence.

    python scripts/count_pause_frames.py SHARD.h5 [SHARD.h5 ...]

A window's voiced time is the union of its audio frames' 25 ms spans (``features.align.window_spans``,
the frame grid read from the shard's ``config``); a stored video frame (``windows/video_frames``)
whose timestamp lies outside it is "from the silence" (AVEF §1, §2.1: the facial frames of weight-0
intervals are discarded). Counts are over the 16 slots, repeats included. Before issue 18 the
demo gave 67 of 132 windows across a pause, 49 of the 58 of them with video taking 1-8 frames from
the silence; with the voiced-span rule no window takes any.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from features.align import frames_in_spans, window_spans  # noqa: E402
from features.store import ShardReader  # noqa: E402


def count(path: str) -> dict:
    """Per shard: windows, across a pause, with video, and the silent slots of each window."""
    s = ShardReader(path)
    w = s.windows
    grid = {k: s.attrs["config"]["logmel"][k] for k in ("frame_ms", "hop_ms")}
    out = {"windows": len(w["clip"]), "pause": 0, "pause_video": 0, "silent_slots": []}
    for k in range(len(w["clip"])):
        gap = not w["contiguous"][k]
        out["pause"] += gap
        if not w["video_ok"][k]:
            continue
        out["pause_video"] += gap
        times = s.video(int(w["clip"][k]), "time")
        voiced = frames_in_spans(times, window_spans(w["frames"][k][None], **grid)[0])
        out["silent_slots"].append(int((~np.isin(w["video_frames"][k], voiced)).sum()))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("shards", nargs="+")
    args = ap.parse_args(argv)
    total = collections.Counter()
    slots = []
    for p in args.shards:
        c = count(p)
        total.update({k: c[k] for k in ("windows", "pause", "pause_video")})
        slots += c["silent_slots"]
    slots = np.array(slots, dtype=int)
    took = slots[slots > 0]
    print(f"{total['windows']} windows, {total['pause']} span a pause, {total['pause_video']} of these with video; "
          f"{len(slots)} windows with video, {len(took)} take frames from the silence"
          + (f" ({took.min()}-{took.max()} of their 16)" if len(took) else ""))
    if len(took):
        print("  silent frames per window:", dict(sorted(collections.Counter(took.tolist()).items())))


if __name__ == "__main__":
    main()
