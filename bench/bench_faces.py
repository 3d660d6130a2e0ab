"""Faces per frame, ours against MediaPipe FaceMesh, same files, same run (issue 21 item 1).

``python bench/bench_faces.py [--reps 3] [--clips DIR_OR_FILES ...] [--venv .bench-venv] [--out DIR]``

Three implementations run on the same clips, each in a fresh process, interleaved ``--reps`` times
(the order rotates each round), so a busy machine slows all three alike:

* ``ours``: ``features.face.faces_of_clip``, what the ``Faces`` stage computes per clip with its
  defaults: decode (PyAV, RGB), HOG detection every 10th frame with regions around the face and the
  whole frame every 30th, tracking by normalised cross-correlation, dlib's 68-point shape predictor
  on every frame with a face, the key-point box and the 173×173 and 72×72 crops, the 49-point shape.
  The HDF5 write of the stage is not included (MediaPipe writes nothing); ``bench_visual.py`` times
  the whole build.
* ``reference``: the same chain as it was before issue 21 (``reference_faces_of_clip`` below: a
  frozen copy of the previous decoding, the rest shared); ``ours / reference`` is the speed-up
  measured side by side, and the bench checks that both give the same bytes (``identical``).
* ``mediapipe``: MediaPipe FaceMesh (legacy ``solutions.face_mesh``, ``static_image_mode=False``:
  video mode, tracking between frames; 468 points, one face), frames decoded with OpenCV
  (``cv2.VideoCapture``, BGR → RGB), and the same two crops from its key points (eye corners 33/133
  and 362/263, nose tip 1, mouth 13/14/61/291) with the same warp.

MediaPipe 0.10.21 is the last release whose wheel ships the FaceMesh models, and it needs numpy < 2,
so it runs in a virtual environment of its own (``--venv``, default ``.bench-venv`` in the checkout,
git-ignored), created on first use with ``python -m venv`` and ``pip install mediapipe==0.10.21
"numpy<2" opencv-python-headless``. It is a bench dependency only, never a runtime one.

Clips: the eight BAUM-1-format encodes of ``bench_visual.py`` (854×480, 30 fps, H.264 crf 23; the
carphone talking head scaled to 586×480 and pillarboxed, face ~170-200 px), made in a temporary
folder unless ``--clips`` names files or a folder of .mp4 files.

Per implementation (median over the rounds): ``loop_cpu_ms_per_frame`` (CPU seconds of the
process, all threads, over the clips, per frame: decode to crops), ``process_cpu_ms_per_frame``
(the same plus interpreter start-up, imports and model loading), wall time, frames, frames with a
face. Ratios ``ours / mediapipe`` and ``ours / reference`` of both. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MEDIAPIPE_PINS = ("mediapipe==0.10.21", "numpy<2", "opencv-python-headless")
IMPLS = ("ours", "reference", "mediapipe")


# ---- the children ---------------------------------------------------------------------------

def _process_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def reference_faces_of_clip(path, *, fps, detect, predictor):
    """``faces_of_clip`` as it was before issue 21: every frame converted to RGB by its own swscale
    context (``frame.to_ndarray(format="rgb24")``); the rest of the chain is the shared code."""
    from unittest import mock

    from features.face import faces_of_clip

    # features.video imports the reformatter when it opens a clip: patched, each frame gets its own
    with mock.patch("av.video.reformatter.VideoReformatter", _PerFrame):
        return faces_of_clip(path, fps=fps, detect=detect, predictor=predictor, gray=False)


class _PerFrame:
    """The previous conversion: ``frame.to_ndarray(format="rgb24")``, a new swscale context per frame."""

    def reformat(self, frame, format=None):
        return _Plain(frame.to_ndarray(format=format))


class _Plain:
    def __init__(self, array):
        self.array = array

    def to_ndarray(self):
        return self.array


def run_ours(paths: list[str], *, reference: bool) -> dict:
    """Child: our chain (or the reference) on ``paths``; a digest of every output array."""
    cpu0 = time.process_time()
    import numpy as np

    from features.face import face_models, faces_of_clip

    detect, predictor = face_models("hog", 1)
    start_cpu = time.process_time() - cpu0
    digest, frames, found = hashlib.sha256(), 0, 0
    t0, c0 = time.perf_counter(), time.process_time()
    for p in paths:
        if reference:
            info, arrays = reference_faces_of_clip(p, fps=None, detect=detect, predictor=predictor)
        else:
            info, arrays = faces_of_clip(p, fps=None, detect=detect, predictor=predictor)
        frames += len(arrays["found"])
        found += int(arrays["found"].sum())
        for name in sorted(arrays):
            digest.update(np.ascontiguousarray(arrays[name]).tobytes())
    loop_cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    return {"frames": frames, "faces_found": found, "loop_cpu_s": loop_cpu, "loop_wall_s": wall,
            "start_cpu_s": start_cpu, "process_cpu_s": _process_cpu(), "digest": digest.hexdigest()}


# MediaPipe FaceMesh (468 points) indices of AVEF's four key points
MP_RIGHT_EYE, MP_LEFT_EYE, MP_NOSE_TIP, MP_MOUTH = (33, 133), (362, 263), 1, (13, 14, 61, 291)


def run_mediapipe(paths: list[str]) -> dict:
    """Child (in the bench venv: numpy < 2, mediapipe 0.10.21): FaceMesh in video mode + crops."""
    cpu0 = time.process_time()
    import cv2
    import mediapipe as mp
    import numpy as np

    mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=False, max_num_faces=1, refine_landmarks=False,
                                           min_detection_confidence=0.5, min_tracking_confidence=0.5)
    start_cpu = time.process_time() - cpu0

    def crop(frame, box, size):  # features.face.crop's warp, written out (no project imports here)
        x0, y0, x1, y1 = box
        sx, sy = (x1 - x0) / size, (y1 - y0) / size
        m = np.array([[sx, 0, x0 + 0.5 * sx - 0.5], [0, sy, y0 + 0.5 * sy - 0.5]])
        return cv2.warpAffine(frame, m, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))

    frames = found = 0
    t0, c0 = time.perf_counter(), time.process_time()
    for p in paths:
        cap = cv2.VideoCapture(p)
        n = 0
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            n += 1
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            result = mesh.process(rgb)
            if not result.multi_face_landmarks:
                continue
            found += 1
            h, w = rgb.shape[:2]
            pts = np.array([(q.x * w, q.y * h) for q in result.multi_face_landmarks[0].landmark])
            keys = np.stack([pts[list(MP_RIGHT_EYE)].mean(0), pts[list(MP_LEFT_EYE)].mean(0), pts[MP_NOSE_TIP],
                             pts[list(MP_MOUTH)].mean(0)])
            lo, hi = keys.min(0), keys.max(0)
            centre, half = (lo + hi) / 2, (hi - lo).max() * 2.8 / 2
            box = (*(centre - half), *(centre + half))
            crop(rgb, box, 173)
            crop(rgb, box, 72)
        cap.release()
        frames += n
    loop_cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    mesh.close()
    return {"frames": frames, "faces_found": found, "loop_cpu_s": loop_cpu, "loop_wall_s": wall,
            "start_cpu_s": start_cpu, "process_cpu_s": _process_cpu(),
            "mediapipe": mp.__version__, "numpy": np.__version__}


# ---- the parent -----------------------------------------------------------------------------

def ensure_venv(venv: str) -> str:
    """The venv's python, with mediapipe importable; created (no system site packages) if needed."""
    py = os.path.join(venv, "bin", "python")
    if os.path.exists(py) and subprocess.run([py, "-c", "import mediapipe, cv2"], capture_output=True).returncode == 0:
        return py
    print(f"bench_faces: creating {venv} ({' '.join(MEDIAPIPE_PINS)})", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    subprocess.run([py, "-m", "pip", "install", "-q", *MEDIAPIPE_PINS], check=True)
    return py


def clip_paths(clips: list[str] | None, work: str) -> list[str]:
    if clips:
        out = []
        for c in clips:
            out += sorted(glob.glob(os.path.join(c, "*.mp4"))) if os.path.isdir(c) else [c]
        return [os.path.abspath(p) for p in out]
    sys.path.insert(0, HERE)
    from bench_visual import make_corpus

    return make_corpus(os.path.join(work, "corpus"), 8)[2]


def child(python: str, impl: str, paths: list[str]) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])),
               GLOG_minloglevel="2", TF_CPP_MIN_LOG_LEVEL="2")
    t = time.perf_counter()
    p = subprocess.run([python, os.path.abspath(__file__), "--_child", impl, *paths], cwd=ROOT, env=env,
                       capture_output=True, text=True)
    if p.returncode:
        raise RuntimeError(f"{impl} child failed:\n{p.stderr[-3000:]}")
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out["process_wall_s"] = time.perf_counter() - t
    return out


def summarise(runs: list[dict]) -> dict:
    n = runs[0]["frames"]
    med = lambda k: statistics.median(r[k] for r in runs)  # noqa: E731
    return {"frames": n, "faces_found": runs[0]["faces_found"],
            "loop_cpu_ms_per_frame": round(1000 * med("loop_cpu_s") / n, 3),
            "process_cpu_ms_per_frame": round(1000 * med("process_cpu_s") / n, 3),
            "start_cpu_s": round(med("start_cpu_s"), 3), "loop_wall_s": round(med("loop_wall_s"), 3),
            "process_wall_s": round(med("process_wall_s"), 3),
            "loop_cpu_ms_per_frame_each_round": [round(1000 * r["loop_cpu_s"] / n, 3) for r in runs]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=3, help="rounds (each runs the three implementations)")
    ap.add_argument("--clips", nargs="+", help=".mp4 files or folders (default: bench_visual's 8 encodes)")
    ap.add_argument("--venv", default=os.path.join(ROOT, ".bench-venv"), help="the MediaPipe venv")
    ap.add_argument("--out", help="work folder (kept); default a temporary folder, removed")
    ap.add_argument("--_child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        impl, paths = args._child[0], args._child[1:]
        out = run_mediapipe(paths) if impl == "mediapipe" else run_ours(paths, reference=impl == "reference")
        print(json.dumps(out))
        return

    work = os.path.abspath(args.out) if args.out else tempfile.mkdtemp(prefix="bench_faces_")
    os.makedirs(work, exist_ok=True)
    try:
        mp_python = ensure_venv(os.path.abspath(args.venv))
        paths = clip_paths(args.clips, work)
        pythons = {"ours": sys.executable, "reference": sys.executable, "mediapipe": mp_python}
        runs = {k: [] for k in IMPLS}
        for rep in range(args.reps):
            for impl in IMPLS[rep % 3:] + IMPLS[:rep % 3]:
                runs[impl].append(child(pythons[impl], impl, paths))
        res = {k: summarise(v) for k, v in runs.items()}
        ratio = lambda a, b, k: round(res[a][k] / res[b][k], 3)  # noqa: E731
        out = {"benchmark": "faces_per_frame", "date": time.strftime("%Y-%m-%d"), "cores": os.cpu_count(),
               "clips": len(paths), "reps": args.reps,
               "command": "python bench/bench_faces.py " + " ".join(sys.argv[1:]),
               **res,
               "ours_over_mediapipe": {"loop_cpu": ratio("ours", "mediapipe", "loop_cpu_ms_per_frame"),
                                       "process_cpu": ratio("ours", "mediapipe", "process_cpu_ms_per_frame")},
               "ours_over_reference": {"loop_cpu": ratio("ours", "reference", "loop_cpu_ms_per_frame"),
                                       "process_cpu": ratio("ours", "reference", "process_cpu_ms_per_frame")},
               "identical_to_reference": all(r["digest"] == runs["reference"][0]["digest"]
                                             for r in runs["ours"] + runs["reference"]),
               "versions": {k: runs["mediapipe"][0][k] for k in ("mediapipe", "numpy")},
               "work_dir": work if args.out else None}
        print(json.dumps(out, indent=1))
    finally:
        if not args.out:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
