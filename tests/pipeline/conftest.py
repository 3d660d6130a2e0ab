import os
import shutil
import subprocess

import luigi
import numpy as np
import pytest

import pipeline  # noqa: F401  (loads workflows.cfg, registers the tasks)
from tests.conftest import DEMO, ROOT

RAN: list[str] = []


@luigi.Task.event_handler(luigi.Event.SUCCESS)
def _record(task):
    RAN.append(task.task_family)


def build(store, *args, dataset="demo", manifest=None):
    """Run BuildShards in this process; returns the families of the tasks that ran."""
    RAN.clear()
    argv = ["BuildShards", "--dataset", dataset, "--store", str(store), "--batch-size", "8",
            "--local-scheduler", "--no-lock", "--workers", "1", *args]
    if manifest:
        argv += ["--manifest", str(manifest)]
    assert luigi.run(argv), f"luigi.run({argv}) failed"
    return sorted(RAN)


@pytest.fixture(scope="session")
def demo_store(tmp_path_factory):
    """The demo corpus built once (3 batches of ≤ 8 clips); copy it before changing it."""
    store = tmp_path_factory.mktemp("store")
    build(store, manifest=os.path.join(ROOT, "data_manifest.yaml"))
    return store


@pytest.fixture
def store_copy(demo_store, tmp_path):
    dst = tmp_path / "store"
    shutil.copytree(demo_store, dst)
    return dst


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
