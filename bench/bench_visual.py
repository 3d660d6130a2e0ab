"""Real-time factor of the visual chain: ``python bench/bench_visual.py [--clips N] [--out DIR]``.

The corpus imitates BAUM-1's files: 854×480 at 30 fps H.264 (libx264, crf 23, yuv420p) with 48 kHz
stereo AAC. Eight distinct encodes are made with ffmpeg from eight demo clips spread over the three
speakers (3.1-4.5 s each): the 176×144 carphone video is scaled, keeping its aspect, to 586×480
(bicubic) and padded with black bars to 854×480 (pillarbox: the whole frame is kept, the face is
~170 px wide as in a close-up), 29.97 → 30 fps; the audio is re-encoded as AAC 48 kHz stereo.
The N (default 56) clip ids are hard links to those eight files (``bench/corpus.py``'s ``_link``).

Measured:

* ``cli``: ``luigi --module pipeline BuildShards ... --local-scheduler --workers 2 --batch-size 16
  --Shard-embeddings '[]'`` in a subprocess (the whole CPU path: audio chain, decode, detect/track,
  landmarks, crops, PCA, alignment, shards; not the embedding stages, see bench_embeddings.py);
  wall time with start-up; RTF = seconds of video / wall seconds (target >= 10).
* ``task_breakdown`` (``--no-diagnose`` skips it): the same build into a fresh store through
  ``bench/_timed_luigi.py`` (task start / end events), so the ``Faces`` task time is separate.
* ``stages_in_process``: ms per video frame of each step of the ``Faces`` task, in a fresh process
  on three of the encodes with the task's defaults (cold = first clip, warm = median of the rest),
  and detect/track once more with every re-detection over the whole frame (``full_every=None``),
  interleaved, so ``detect_track_speedup_from_regions`` is a ratio measured side by side.
* ``faces_speedup_vs_reference`` (in ``stages_in_process``): CPU time per frame of the Faces
  per-clip chain (``features.face.faces_of_clip``) against the chain before issue 21
  (``bench_faces.reference_faces_of_clip``), interleaved in the same process: a slow day slows both.
* ``storage``: bytes per hour of video in the shards: ``video/crop``, ``video/crop_small`` (HDF5
  storage size, as written), the whole shard files, and the whole store (every
  stage's outputs, e.g. the ``Faces`` batch files, which hold the crops as well).

Prints one JSON object.
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from bench_audio_chain import build, timed_build  # noqa: E402
from corpus import DATASET, _link, good_clips  # noqa: E402

TARGET_RTF = 10.0
# the chain of the visual issue (decode, detect/track, crop, landmarks, PCA, alignment) and the audio
# chain; the embedding stages (dlib descriptor ~0.1 s per face here) are bench_embeddings.py's
NO_EMBEDDINGS = ("--Shard-embeddings", "[]")
WIDTH, HEIGHT, FPS = 854, 480, 30
N_ENCODES = 8
# scale keeping the aspect (176×144 → 586×480), pillarbox to 854×480, square pixels
VIDEO_FILTER = f"scale=-2:{HEIGHT}:flags=bicubic,pad={WIDTH}:{HEIGHT}:(ow-iw)/2:0,setsar=1"


def video_duration(path: str) -> tuple[float, int]:
    """(seconds, frames) of the first video stream, from the container (PyAV, no decoding)."""
    import av

    with av.open(path) as c:
        s = c.streams.video[0]
        return float(s.duration * s.time_base), int(s.frames)


def encode(src: str, dst: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", src, "-vf", VIDEO_FILTER, "-r", str(FPS),
                    "-c:v", "libx264", "-preset", "medium", "-crf", "23", "-pix_fmt", "yuv420p",
                    "-c:a", "aac", "-b:a", "128k", "-ar", "48000", "-ac", "2", "-movflags", "+faststart", dst],
                   check=True, capture_output=True)


def make_corpus(dst_dir: str, n_clips: int) -> tuple[str, float, list[str]]:
    """N clips in BAUM-1's format; returns (manifest, seconds of video, paths of the distinct encodes)."""
    enc_dir, clips_dir = os.path.join(dst_dir, "encodes"), os.path.join(dst_dir, "clips")
    os.makedirs(enc_dir, exist_ok=True)
    os.makedirs(clips_dir, exist_ok=True)
    good = good_clips()
    n = min(N_ENCODES, len(good))  # evenly spread over the sorted ids: all speakers and labels
    sources = [good[round(i * (len(good) - 1) / max(n - 1, 1))] for i in range(n)]
    encodes = []
    for g in sources:
        path = os.path.join(enc_dir, g["clip_id"] + ".mp4")
        encode(g["path"], path)
        encodes.append({**g, "path": path, "video_s": video_duration(path)[0]})
    rows, seconds = [], 0.0
    for k in range(n_clips):
        e = encodes[k % len(encodes)]
        cid = f"v{k:04d}_{e['clip_id']}"
        _link(e["path"], os.path.join(clips_dir, cid + ".mp4"))
        rows.append({"clip_id": cid, "label": e["label"], "speaker": e["speaker"], "transcript": e["transcript"]})
        seconds += e["video_s"]
    with open(os.path.join(dst_dir, "labels.csv"), "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["clip_id", "label", "speaker", "transcript"])
        w.writeheader()
        w.writerows(rows)
    manifest = os.path.join(dst_dir, "manifest.yaml")
    with open(manifest, "w", encoding="utf-8") as f:
        f.write(f"""datasets:
  {DATASET}:
    description: {n_clips} clips in BAUM-1's format from {len(encodes)} encodes (bench/bench_visual.py)
    root: {json.dumps(dst_dir)}
    clips: clips/*
    labels: labels.csv
    label_set: [{", ".join(sorted({e["label"] for e in good}))}]
    protocol: loso
    sr: 48000
    fps: {FPS}
    speakers: {len({e["speaker"] for e in encodes})}
""")
    return manifest, seconds, [e["path"] for e in encodes]


def stage_times(paths: list[str]) -> dict:
    """ms per frame of each step of the Faces task (its defaults), in this (fresh) process."""
    import numpy as np

    from features import face, landmarks, video

    t0 = time.perf_counter()
    detect = face.make_detector("hog", upsample=1)
    predictor = landmarks.load_predictor(68)
    load_s = time.perf_counter() - t0
    names = ("decode", "detect_track", "landmarks", "crops")
    runs, found = [], []
    for rep in range(2):
        for p in paths:
            t = [time.perf_counter()]
            frames, times, info = video.read_video(p, as_list=True); t.append(time.perf_counter())  # as Faces does
            boxes, ok, _ = face.track_faces(frames, detector=detect, detect_every=10, full_every=30,
                                            scale=min(1.0, 320 / frames[0].shape[1]), max_gap=5)
            t.append(time.perf_counter())
            lm = landmarks.landmarks68_batch(frames, boxes, ok, predictor=predictor); t.append(time.perf_counter())
            for k in np.flatnonzero(ok):
                box = face.keypoint_box(lm[k], margin=0.9)
                face.crop(frames[k], box, size=173)
                face.crop(frames[k], box, size=72)
            t.append(time.perf_counter())
            whole = time.perf_counter()  # the same with every re-detection over the whole frame
            face.track_faces(frames, detector=detect, detect_every=10, full_every=None,
                             scale=min(1.0, 320 / frames[0].shape[1]), max_gap=5)
            whole = time.perf_counter() - whole
            runs.append({k: 1000 * (b - a) / len(frames) for k, a, b in zip(names, t, t[1:])})
            runs[-1]["detect_track_whole_frame"] = 1000 * whole / len(frames)
            if rep == 0:
                found.append(float(ok.mean()))
    # the Faces chain against the reference (the chain before issue 21, bench_faces.py), interleaved in
    # this process, so the speed-up is a ratio measured side by side, not against another day's run
    from bench_faces import reference_faces_of_clip
    from features.face import faces_of_clip

    cpu = {"current": [], "reference": []}
    for rep in range(2):
        for kind in ("current", "reference") if rep % 2 == 0 else ("reference", "current"):
            run = faces_of_clip if kind == "current" else reference_faces_of_clip
            c0, n = time.process_time(), 0
            for p in paths:
                n += len(run(p, fps=None, detect=detect, predictor=predictor)[1]["found"])
            cpu[kind].append(1000 * (time.process_time() - c0) / n)
    cold = {k: round(runs[0][k], 2) for k in names}
    warm = {k: round(statistics.median(r[k] for r in runs[1:]), 2) for k in names}
    total = sum(warm.values())
    whole = statistics.median(r["detect_track_whole_frame"] for r in runs[1:])
    return {"clips": len(paths), "frame_size": f"{frames[0].shape[1]}x{frames[0].shape[0]}",
            "detector_and_predictor_load_s": round(load_s, 3),
            "cold_first_clip_ms_per_frame": cold, "warm_ms_per_frame": warm,
            "warm_total_ms_per_frame": round(total, 2),
            "warm_share": {k: round(v / total, 3) for k, v in warm.items()},
            "detect_track_whole_frame_ms_per_frame": round(whole, 2),
            "detect_track_speedup_from_regions": round(whole / warm["detect_track"], 2),
            "faces_path_rtf_one_core": round(1000 / FPS / total, 2),
            "faces_of_clip_cpu_ms_per_frame": {k: round(min(v), 3) for k, v in cpu.items()},
            "faces_speedup_vs_reference": round(min(cpu["reference"]) / min(cpu["current"]), 3),
            "face_found_fraction": round(float(np.mean(found)), 3)}


def storage(store: str, video_s: float) -> dict:
    """Bytes per hour of video in the shards (HDF5 storage sizes, i.e. after compression)."""
    from features.store import open_file

    paths = sorted(glob.glob(os.path.join(store, DATASET, "shards", "*", "shard-*.h5")))
    sizes = {"video/crop": 0, "video/crop_small": 0}
    raw = dict.fromkeys(sizes, 0)
    frames = found = 0
    for p in paths:
        with open_file(p) as f:
            for key in sizes:
                sizes[key] += f[key].id.get_storage_size()
                raw[key] += f[key].size * f[key].dtype.itemsize
            frames += len(f["video/found"])
            found += int(f["video/found"][()].sum())
    shard_bytes = sum(os.path.getsize(p) for p in paths)
    store_bytes = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(os.path.join(store, DATASET))
                      for f in files)  # every stage's outputs: the Faces outputs hold the crops too
    hours = video_s / 3600
    return {"shards": len(paths), "video_frames": frames, "frames_with_face": found,
            "bytes_per_hour": {"video/crop": round(sizes["video/crop"] / hours),
                               "video/crop_small": round(sizes["video/crop_small"] / hours),
                               "shard_files": round(shard_bytes / hours), "whole_store": round(store_bytes / hours)},
            "gb_per_hour": {"video/crop": round(sizes["video/crop"] / hours / 1e9, 2),
                            "video/crop_small": round(sizes["video/crop_small"] / hours / 1e9, 3),
                            "shard_files": round(shard_bytes / hours / 1e9, 2),
                            "whole_store": round(store_bytes / hours / 1e9, 2)},
            "compression_ratio": {k: round(raw[k] / max(sizes[k], 1), 2) for k in sizes}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", type=int, default=56, help="clip ids (>= 50 for the reported figure)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", help="work folder (kept); default a temporary folder, removed")
    ap.add_argument("--no-diagnose", action="store_true", help="skip the timed second build")
    ap.add_argument("--_stages", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._stages:  # child: per-stage timings in a fresh process
        print(json.dumps(stage_times(args._stages)))
        return

    work = os.path.abspath(args.out) if args.out else tempfile.mkdtemp(prefix="bench_visual_")
    os.makedirs(work, exist_ok=True)
    try:
        t = time.perf_counter()
        manifest, video_s, encodes = make_corpus(os.path.join(work, "corpus"), args.clips)
        corpus_s = time.perf_counter() - t
        from pipeline.base import n_batches

        batches = n_batches(args.clips, args.batch_size)
        luigi_bin = shutil.which("luigi") or "luigi"
        store = os.path.join(work, "store")
        cli = build([luigi_bin], manifest, store, batch_size=args.batch_size, extra=NO_EMBEDDINGS)
        rtf = video_s / cli["wall_s"]
        out = {"benchmark": "visual_chain", "clips": args.clips, "distinct_encodes": len(encodes),
               "format": f"{WIDTH}x{HEIGHT} {FPS} fps H.264 crf 23 + AAC 48 kHz stereo "
                         "(176x144 scaled to 586x480, pillarboxed)",
               "video_s": round(video_s, 3), "corpus_encode_s": round(corpus_s, 2),
               "workers": 2, "batch_size": args.batch_size, "batches": batches,
               "cli": {**cli, "command": f"luigi --module pipeline BuildShards --dataset {DATASET} --manifest M "
                                         f"--store S --local-scheduler --workers 2 --batch-size {args.batch_size} "
                                         f"--Shard-embeddings '[]'"},
               "rtf": round(rtf, 2), "target_rtf": TARGET_RTF, "target_met": rtf >= TARGET_RTF}
        if not args.no_diagnose:
            tb = timed_build(manifest, os.path.join(work, "store_timed"), os.path.join(work, "tasks.jsonl"),
                             batch_size=args.batch_size, audio_s=video_s, env={}, extra=NO_EMBEDDINGS)
            faces = tb["tasks"].get("Faces", {})
            tb["faces_task_s"] = faces.get("sum_s")
            tb["faces_share_of_task_time"] = round(faces.get("sum_s", 0) / max(tb["task_seconds_total"], 1e-9), 3)
            tb["faces_rtf_one_core"] = round(video_s / faces["sum_s"], 2) if faces.get("sum_s") else None
            out["task_breakdown"] = tb
        p = subprocess.run([sys.executable, os.path.abspath(__file__), "--_stages", *encodes[:3]], cwd=ROOT,
                           capture_output=True, text=True, check=True)
        out["stages_in_process"] = json.loads(p.stdout.strip().splitlines()[-1])
        out["storage"] = storage(store, video_s)
        out["work_dir"] = work if args.out else None
        print(json.dumps(out, indent=1))
    finally:
        if not args.out:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
