"""Benchmark corpora: the demo's good clips replicated under new ids, with labels.csv and a manifest.

>>> manifest, seconds = replicate("/tmp/b", 120)      # dataset "bench", clips r0000_s1_anger_01.mp4, ...

The copies are hard links (a copy when linking fails), so a 1,500-clip corpus costs no disk.
Hard links share size and mtime with the demo file; the clip ids differ, so every clip is its own
clip for the pipeline (the hash chain uses id, file name, size and mtime).

``python bench/corpus.py DIR N`` builds one and prints a JSON line.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "tests", "data", "demo")
DATASET = "bench"


def probe(path: str) -> dict:
    """Sample rate, channels and duration (s) of the first audio stream (PyAV, no decoding)."""
    import av

    with av.open(path) as c:
        if not c.streams.audio:
            return {"sr": 0, "channels": 0, "duration_s": 0.0}
        s = c.streams.audio[0]
        if s.duration is not None and s.time_base is not None:
            dur = float(s.duration * s.time_base)
        else:
            dur = (c.duration or 0) / 1e6
        return {"sr": int(s.rate or 0), "channels": int(s.channels), "duration_s": dur}


def good_clips(*, only_48k_stereo: bool = True) -> list[dict]:
    """The demo's good .mp4 clips: rows of labels.csv (not bad_*) with their path and probe."""
    files = {os.path.splitext(f)[0]: os.path.join(DEMO, "clips", f)
             for f in os.listdir(os.path.join(DEMO, "clips")) if f.endswith(".mp4")}
    with open(os.path.join(DEMO, "labels.csv"), newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if not r["clip_id"].startswith("bad_") and r["clip_id"] in files]
    out = []
    for r in sorted(rows, key=lambda r: r["clip_id"]):
        info = probe(files[r["clip_id"]])
        if only_48k_stereo and (info["sr"] != 48000 or info["channels"] != 2):
            continue
        out.append({**r, "path": files[r["clip_id"]], **info})
    if not out:
        raise RuntimeError(f"no good clips in {DEMO}")
    return out


def _link(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def replicate(dst_dir: str | os.PathLike, n_clips: int, *, only_48k_stereo: bool = True,
              verbose: bool = False) -> tuple[str, float]:
    """Build a corpus of ``n_clips`` clips in ``dst_dir``; returns (manifest path, total audio seconds).

    Clip k is demo clip ``k % n_good`` under the id ``r{k:04d}_{demo id}``; labels.csv keeps the
    demo's label, speaker and transcript. The manifest names one dataset, ``bench``, with an
    absolute root.
    """
    dst_dir = os.path.abspath(os.fspath(dst_dir))
    clips_dir = os.path.join(dst_dir, "clips")
    os.makedirs(clips_dir, exist_ok=True)
    good = good_clips(only_48k_stereo=only_48k_stereo)
    rows, seconds = [], 0.0
    for k in range(n_clips):
        g = good[k % len(good)]
        cid = f"r{k:04d}_{g['clip_id']}"
        dst = os.path.join(clips_dir, cid + ".mp4")
        if not os.path.exists(dst):
            _link(g["path"], dst)
        rows.append({"clip_id": cid, "label": g["label"], "speaker": g["speaker"], "transcript": g["transcript"]})
        seconds += g["duration_s"]
    with open(os.path.join(dst_dir, "labels.csv"), "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["clip_id", "label", "speaker", "transcript"])
        w.writeheader()
        w.writerows(rows)
    labels = sorted({g["label"] for g in good})
    manifest = os.path.join(dst_dir, "manifest.yaml")
    with open(manifest, "w", encoding="utf-8") as f:
        f.write(f"""datasets:
  {DATASET}:
    description: {n_clips} replicated demo clips (bench/corpus.py)
    root: {json.dumps(dst_dir)}
    clips: clips/*
    labels: labels.csv
    label_set: [{", ".join(labels)}]
    protocol: loso
    sr: 48000
    fps: 30
    speakers: {len({g['speaker'] for g in good})}
""")
    if verbose:
        print(f"corpus {dst_dir}: {n_clips} clips from {len(good)} demo clips, {seconds:.1f} s of audio",
              file=sys.stderr)
    return manifest, seconds


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python bench/corpus.py DIR N_CLIPS")
    m, s = replicate(sys.argv[1], int(sys.argv[2]), verbose=True)
    print(json.dumps({"manifest": m, "clips": int(sys.argv[2]), "audio_seconds": round(s, 3)}))
