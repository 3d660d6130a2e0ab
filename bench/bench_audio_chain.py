"""Real-time factor of the audio chain: ``python bench/bench_audio_chain.py [--clips N] [--out DIR]``.

Builds a corpus of N (default 600) replicated 48 kHz stereo demo clips with the ``luigi`` CLI in a
subprocess (``--workers 2 --batch-size 64 --video false --Shard-embeddings []``: the audio chain of
issue 2 and the shards; not the visual chain, which ``bench_visual.py`` measures, nor the embedding
stages), wall time including start-up; RTF = seconds of audio / wall seconds (target >= 200).

Diagnostics (``--no-diagnose`` skips them): the same build again into a fresh store through
``bench/_timed_luigi.py`` (the same ``luigi_run`` with task start/end events) and with the Waveform
stage (SincNet input, on by default) added, to say where the time goes and what that stage costs;
and the per-clip seconds of each features function in one process (cold = first call in a fresh
process, with its lazy imports; warm = median after). ``cpu_s`` is the build's user + system CPU
time: ``cpu_s / wall_s`` near 2 means both cores were busy.
Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from corpus import DATASET, good_clips, replicate  # noqa: E402

TARGET_RTF = 200.0
# the audio chain of issue 2: Decode, VAD, Prosody, LogMel, Segment, Shard (no visual chain, no embedding
# stages); the diagnostic build adds the Waveform stage (SincNet input, on by default) to say what it costs
AUDIO_ONLY = ("--video", "false", "--Shard-embeddings", "[]")
WITH_WAVEFORM = ("--video", "false", "--Shard-embeddings", '["waveform"]')
SUMMARY = re.compile(r"BuildShards (\S+): (\d+) clips ok, (\d+) failed, (\d+) windows, (\d+) shards")


def build(cmd_head: list[str], manifest: str, store: str, *, batch_size: int | None, workers: int = 2,
          env: dict | None = None, extra: tuple = ()) -> dict:
    """Run BuildShards in a subprocess; wall seconds (start-up included), summary line and task counts.
    ``batch_size`` None: the automatic size (no ``--batch-size``)."""
    size = ("--batch-size", str(batch_size)) if batch_size else ()
    cmd = [*cmd_head, "--module", "pipeline", "BuildShards", "--dataset", DATASET, "--manifest", manifest,
           "--store", store, "--local-scheduler", "--workers", str(workers), *size, *extra]
    t, c = time.perf_counter(), os.times()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT, **(env or {})})
    wall, c1 = time.perf_counter() - t, os.times()
    cpu = (c1.children_user - c.children_user) + (c1.children_system - c.children_system)
    m = SUMMARY.search(p.stdout + p.stderr)
    if p.returncode != 0 or not m:
        sys.stderr.write(p.stdout[-3000:] + p.stderr[-3000:])
        raise SystemExit(f"build failed (exit {p.returncode}): {' '.join(cmd)}")
    return {"wall_s": round(wall, 3), "cpu_s": round(cpu, 2), "clips_ok": int(m.group(2)), "failed": int(m.group(3)),
            "windows": int(m.group(4)), "shards": int(m.group(5)),
            **luigi_counts(p.stdout + p.stderr)}


def luigi_counts(log: str) -> dict:
    """Task counts from Luigi's execution summary."""
    out = {}
    for key, pat in (("tasks_scheduled", r"Scheduled (\d+) tasks"), ("tasks_ran", r"(\d+) ran successfully"),
                     ("tasks_already_complete", r"(\d+) complete ones were encountered"),
                     ("tasks_failed", r"(\d+) failed:")):
        m = re.search(pat, log)
        out[key] = int(m.group(1)) if m else 0
    return out


def timed_build(manifest: str, store: str, log: str, *, batch_size: int, audio_s: float, env: dict,
                extra: tuple = ()) -> dict:
    r = build([sys.executable, os.path.join(HERE, "_timed_luigi.py")], manifest, store, batch_size=batch_size,
              env={"BENCH_TASK_LOG": log, **env}, extra=extra)
    from _timed_luigi import summarize

    return {"wall_s": r["wall_s"], "cpu_s": r["cpu_s"], "rtf": round(audio_s / r["wall_s"], 1), "flags": " ".join(extra),
            **summarize(log)}


def stage_times(paths: list[str]) -> dict:
    """Per-clip seconds of each features function, in this (fresh) process."""
    import numpy as np

    from features import audio, prosody, segments, vad

    def segment(y_vad, S, units):
        w = segments.frame_weights(y_vad, n_frames=len(S))
        frames, weight = segments.place_windows(weights=w, window_frames=64, hop_frames=34, keep_silent=False)
        segments.window_units(frames, units=units)
        if len(frames):
            audio.window_image(S[frames])
        return frames

    names = ("read_audio", "mixdown+resample", "preemphasis", "vad", "prosody", "logmel", "segment+image")
    runs = {k: [] for k in names}
    seconds = []
    for rep in range(4):
        for p in paths:
            t = [time.perf_counter()]
            x, sr = audio.read_audio(p); t.append(time.perf_counter())
            y = audio.resample(audio.mixdown(x), orig_sr=sr, sr=16000); t.append(time.perf_counter())
            y = audio.preemphasis(y, coef=0.97); t.append(time.perf_counter())
            v = vad.vad_weights(y=y, sr=16000); t.append(time.perf_counter())
            u = prosody.prosodic_units(y=y, sr=16000); t.append(time.perf_counter())
            S = audio.logmel(y=y, sr=16000); t.append(time.perf_counter())
            segment(v, S, u); t.append(time.perf_counter())
            for k, a, b in zip(names, t, t[1:]):
                runs[k].append(b - a)
            if rep == 0:
                seconds.append(x.shape[1] / sr)
    cold = {k: round(v[0], 4) for k, v in runs.items()}
    warm = {k: round(statistics.median(v[len(paths):]), 4) for k, v in runs.items()}
    per_clip = sum(warm.values())
    mean_s = float(np.mean(seconds))
    return {"clips": len(paths), "mean_clip_audio_s": round(mean_s, 3),
            "cold_first_clip_s": cold, "cold_first_clip_total_s": round(sum(cold.values()), 3),
            "warm_per_clip_s": warm, "warm_per_clip_total_s": round(per_clip, 4),
            "warm_rtf_one_core": round(mean_s / per_clip, 1),
            "rtf_bound_two_cores_no_overhead": round(2 * mean_s / per_clip, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", type=int, default=600)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--out", help="work folder (kept); default a temporary folder, removed")
    ap.add_argument("--no-diagnose", action="store_true", help="only the CLI build")
    ap.add_argument("--_stages", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._stages:  # child: per-stage timings in a fresh process
        print(json.dumps(stage_times([g["path"] for g in good_clips()][:5])))
        return

    work = os.path.abspath(args.out) if args.out else tempfile.mkdtemp(prefix="bench_audio_chain_")
    os.makedirs(work, exist_ok=True)
    try:
        manifest, audio_s = replicate(os.path.join(work, "corpus"), args.clips)
        from pipeline.base import n_batches

        batches = n_batches(args.clips, args.batch_size)
        if batches < 2:
            raise SystemExit(f"{args.clips} clips at batch size {args.batch_size} give {batches} batches; need >= 2")
        luigi_bin = shutil.which("luigi") or "luigi"
        cli = build([luigi_bin], manifest, os.path.join(work, "store"), batch_size=args.batch_size, extra=AUDIO_ONLY)
        rtf = audio_s / cli["wall_s"]
        out = {"benchmark": "audio_chain", "clips": args.clips, "audio_s": round(audio_s, 3),
               "workers": 2, "batch_size": args.batch_size, "batches": batches,
               "cli": {**cli, "command": f"luigi --module pipeline BuildShards --dataset {DATASET} --manifest M "
                                         f"--store S --local-scheduler --workers 2 --batch-size {args.batch_size} {' '.join(AUDIO_ONLY)}"},
               "rtf": round(rtf, 1), "target_rtf": TARGET_RTF, "target_met": rtf >= TARGET_RTF}
        if not args.no_diagnose:
            out["task_breakdown"] = timed_build(manifest, os.path.join(work, "store_timed"),
                                                os.path.join(work, "tasks.jsonl"), batch_size=args.batch_size,
                                                audio_s=audio_s, env={}, extra=WITH_WAVEFORM)
            p = subprocess.run([sys.executable, os.path.abspath(__file__), "--_stages"], cwd=ROOT,
                               capture_output=True, text=True, check=True)
            out["stages_in_process"] = json.loads(p.stdout.strip().splitlines()[-1])
        out["work_dir"] = work if args.out else None
        print(json.dumps(out, indent=1))
    finally:
        if not args.out:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
