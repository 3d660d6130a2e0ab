"""Peak memory of the audio stages on one long clip: ``python bench/bench_long_audio.py [--minutes 120]``.

Writes one long 8 kHz mono 16-bit wav (``--signal silent``, the case of issue 19 item 11, or
``noise``: white noise at −20 dBFS, which Prosody has to analyse with Praat instead of passing it
over as silence), makes a one-clip dataset of it and runs the stages Decode, VAD, Prosody and
LogMel (``pipeline/audio.py``) one after another, each in a fresh child process
(``luigi.build([...], local_scheduler=True)``, one worker, as a build's task process runs it),
after a "Baseline" child that only imports and warms up what every step loads (``_warm_up``).
Each step's peak resident set size is the child's ``ru_maxrss`` from ``os.wait4``: the largest
of that process and of the processes it waited for (Decode's decoder process included);
"MB/h" is (peak − baseline) per hour of audio (telling only for long clips: each step has fixed
working buffers of a few tens of MB).

``--before REV`` runs the same steps a second time with the code of the git revision ``REV``
(``git archive`` into a temporary folder) for a side-by-side table. Prints a table and one JSON
object (``--json`` only the JSON).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import wave

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
STEPS = ("Decode", "VAD", "Prosody", "LogMel")  # run after "Baseline"

STEP_CODE = """
import sys, luigi, pipeline
if sys.argv[1] == "Baseline":  # what every step holds before its work: the imports and warm-up
    from pipeline.base import _warm_up
    _warm_up()
    sys.exit(0)
task = getattr(pipeline, sys.argv[1])(dataset="long", batch=0, manifest=sys.argv[2], store=sys.argv[3])
ok = luigi.build([task], local_scheduler=True, workers=1, log_level="WARNING")
sys.exit(0 if ok and task.complete() else 1)
"""


def write_wav(path: str, *, minutes: float, sr: int, signal: str, seed: int = 0) -> float:
    """A mono 16-bit wav written a minute at a time (this process stays small); its seconds."""
    rng = np.random.default_rng(seed)
    n = int(round(minutes * 60 * sr))
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        for start in range(0, n, 60 * sr):
            k = min(60 * sr, n - start)
            block = np.zeros(k, np.int16) if signal == "silent" else \
                np.clip(rng.normal(0.0, 0.1 * 32767, k), -32767, 32767).astype(np.int16)
            w.writeframes(block.astype("<i2").tobytes())
    return n / sr


def make_dataset(folder: str, wav_name: str) -> str:
    with open(os.path.join(folder, "labels.csv"), "w") as f:
        f.write(f"clip_id,label,speaker\n{os.path.splitext(wav_name)[0]},neutral,s1\n")
    manifest = os.path.join(folder, "manifest.yaml")
    with open(manifest, "w") as f:
        f.write(f"datasets:\n  long:\n    root: {folder}\n    clips: clips/*\n    labels: labels.csv\n"
                f"    label_set: [neutral]\n    protocol: loso\n")
    return manifest


def run_step(code_root: str, step: str, manifest: str, store: str) -> dict:
    """One stage in a fresh child process; its peak RSS (with its own children) and wall time."""
    env = {**os.environ, "PYTHONPATH": code_root, "AV_STORE_HASH_CACHE": ""}
    env.pop("LUIGI_CONFIG_PATH", None)
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", STEP_CODE, step, manifest, store], cwd=code_root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        sys.stderr.write(out.decode(errors="replace")[-4000:])
        raise SystemExit(f"{step} failed (exit {proc.returncode}) with the code in {code_root}")
    return {"peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "wall_s": round(wall, 2)}


def run_all(code_root: str, manifest: str, store: str, steps, hours: float) -> dict:
    """Baseline, then each step; ``per_hour`` is (peak − baseline) / hours of audio."""
    out = {"Baseline": run_step(code_root, "Baseline", manifest, store)}
    for step in steps:
        r = run_step(code_root, step, manifest, store)
        r["peak_rss_mb_per_hour"] = round((r["peak_rss_mb"] - out["Baseline"]["peak_rss_mb"]) / hours, 1)
        out[step] = r
    return out


def checkout(rev: str, dest: str) -> str:
    """The tracked files of ``rev`` in ``dest`` (no work tree of the repository is touched)."""
    os.makedirs(dest)
    archive = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True)
    return dest


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=120.0, help="length of the clip (default 120)")
    ap.add_argument("--sr", type=int, default=8000, help="sample rate of the wav (default 8000)")
    ap.add_argument("--signal", choices=("silent", "noise"), default="silent")
    ap.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated, in order (default {','.join(STEPS)})")
    ap.add_argument("--before", metavar="REV", help="also run the steps with the code of this git revision")
    ap.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (default: a temporary folder)")
    ap.add_argument("--json", action="store_true", help="print only the JSON object")
    args = ap.parse_args(argv)
    steps = [s for s in args.steps.split(",") if s]
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        ap.error(f"unknown steps {unknown}; choose from {STEPS}")

    work = args.keep or tempfile.mkdtemp(prefix="bench_long_audio-")
    try:
        os.makedirs(os.path.join(work, "clips"), exist_ok=True)
        name = f"long_{args.signal}_{args.minutes:g}min_{args.sr}.wav"
        wav = os.path.join(work, "clips", name)
        if not os.path.exists(wav):
            write_wav(wav, minutes=args.minutes, sr=args.sr, signal=args.signal)
        manifest = make_dataset(work, name)
        hours = args.minutes / 60
        result = {"minutes": args.minutes, "sr": args.sr, "signal": args.signal,
                  "wav_mb": round(os.path.getsize(wav) / 2 ** 20, 1), "after": {}}
        runs = [("after", ROOT)]
        if args.before:
            runs.insert(0, ("before", checkout(args.before, os.path.join(work, "before-code"))))
            result["before_rev"] = args.before
        for label, code_root in runs:
            store = os.path.join(work, f"store-{label}")
            shutil.rmtree(store, ignore_errors=True)
            result[label] = run_all(code_root, manifest, store, steps, hours)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    if not args.json:
        labels = [k for k in ("before", "after") if k in result]
        print(f"{args.minutes:g} min {args.signal} {args.sr} Hz wav ({result['wav_mb']} MB), peak RSS per step:")
        print(f"{'step':<9}" + "".join(f"{k + ' MB':>12}{k + ' MB/h':>14}{k + ' s':>10}" for k in labels))
        for step in ["Baseline", *steps]:
            print(f"{step:<9}" + "".join(f"{result[k][step]['peak_rss_mb']:>12.0f}"
                                         f"{result[k][step].get('peak_rss_mb_per_hour', 0):>14.0f}"
                                         f"{result[k][step]['wall_s']:>10.1f}" for k in labels))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
