import os
import shutil
import subprocess

import luigi
import numpy as np
import pytest

import pipeline  # noqa: F401  (loads workflows.cfg, registers the tasks)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "tests", "data", "demo")


def cli_env(environ=None):
    """The environment for a ``luigi --module pipeline`` subprocess: this checkout first on the
    path, whichever checkout pip's editable install points at."""
    env = dict(os.environ if environ is None else environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    return env


@pytest.fixture(scope="session")
def speech_16k(tmp_path_factory):
    """Real synthetic speech (espeak-ng) at 16 kHz with 0.5 s of silence before and after."""
    import librosa

    path = tmp_path_factory.mktemp("speech") / "speech.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(path),
                    "The quick brown fox, jumps over the lazy dog. And then it runs away."],
                   check=True, capture_output=True)
    y, _ = librosa.load(path, sr=16000)
    pad = np.zeros(8000, np.float32)
    return np.concatenate([pad, y, pad])


def write_glove(path, words, *, dim=300, seed=0):
    """A GloVe file in the published text format ("word v1 ... vD" per line), random vectors."""
    vecs = np.random.default_rng(seed).normal(size=(len(words), dim))
    with open(path, "w") as f:
        for w, v in zip(words, vecs):
            f.write(w + " " + " ".join(f"{x:.5f}" for x in v) + "\n")
    return path


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
