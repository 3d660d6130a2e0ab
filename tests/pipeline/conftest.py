import contextlib
import os
import shutil
import socket
import subprocess
import time
import urllib.request

import numpy as np

from tests.conftest import DEMO, RAN, ROOT, build  # noqa: F401  (build and the fixtures live in tests/conftest.py)


def make_corpus(root, *, good, bad=True):
    """A corpus of `good` demo clips and, with `bad`, one of each kind of bad input."""
    import csv

    clips = root / "clips"
    clips.mkdir(parents=True)
    rows = [r for r in csv.DictReader(open(os.path.join(DEMO, "labels.csv"))) if r["clip_id"] in good]
    for r in rows:
        src = next(f for f in os.listdir(os.path.join(DEMO, "clips")) if os.path.splitext(f)[0] == r["clip_id"])
        shutil.copy(os.path.join(DEMO, "clips", src), clips / src)
    if bad:
        for name in ("bad_silent.mp4", "bad_noaudio.mp4", "bad_truncated.mp4"):
            shutil.copy(os.path.join(DEMO, "clips", name), clips / name)
        (clips / "bad_zero.mp4").write_bytes(b"")
        (clips / "bad_corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(50_000))
        subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", os.path.join(DEMO, "clips", "s1_anger_01.mp4"),
                        "-ss", "0.45", "-t", "0.4", "-ac", "1", "-ar", "16000", str(clips / "bad_short.wav")],
                       check=True)
        for cid in ("bad_silent", "bad_noaudio", "bad_truncated", "bad_zero", "bad_corrupt", "bad_short",
                    "bad_missing"):
            rows.append({"clip_id": cid, "label": "anger", "speaker": "s9", "transcript": ""})
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["clip_id", "label", "speaker", "transcript"])
        w.writeheader()
        w.writerows(rows)
    manifest = root / "manifest.yaml"
    manifest.write_text(f"""datasets:
  mini:
    root: {root}
    clips: clips/*
    labels: labels.csv
    label_set: [anger, happiness, sadness]
    protocol: loso
""")
    return manifest


@contextlib.contextmanager
def running_luigid(workdir):
    """A ``luigid`` on a free loopback port, ready to take work; yields the port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.makedirs(workdir, exist_ok=True)
    server = subprocess.Popen(["luigid", "--address", "127.0.0.1", "--port", str(port), "--logdir", str(workdir),
                               "--state-path", os.path.join(workdir, "state")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/task_list", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        yield port
    finally:
        server.terminate()
        server.wait(timeout=10)
