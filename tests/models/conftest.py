"""The demo shards with every feature a model reads (``full_store``), and a continuous-label copy
(``va_store``) for the regression path; every model test runs on one torch thread, and
``fit_steps`` trains a model a few steps on one batch.

Both start from a copy (hard links) of the session's ``demo_store`` (tests/conftest.py) and build on it: the
hash chain finds decoding, VAD, prosody, log-mel, segments, faces, landmarks, the descriptor and
the waveform where they are, so only the stages that change run (VGGish + GloVe + Shard for
``full_store``; Shard alone for ``va_store``, whose labels CSV differs). That costs seconds where a
second demo build would cost minutes, and ``demo_store`` keeps the default feature set the
pipeline tests check.
"""
import csv
import os
import shutil

import luigi
import numpy as np
import pytest
import torch

from features import text, vggish
from tests.conftest import DEMO, ROOT, build, write_glove


def link_tree(src, dst):
    """A copy of store ``src`` whose files are hard links (a build never rewrites a file in place:
    stages write a temporary file and rename it), falling back to copies across file systems."""
    def link(a, b):
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)
    shutil.copytree(src, dst, copy_function=link)


def fresh_build(*args, **kw):
    """A build as a new process sees it (luigi's cached task instances and hash chains dropped)."""
    luigi.task_register.Register.clear_instance_cache()
    try:
        return build(*args, **kw)
    finally:
        luigi.task_register.Register.clear_instance_cache()


@pytest.fixture(scope="session")
def emb_weights(tmp_path_factory):
    """VGGish weights in the published format (torchvggish state_dict, random) and a GloVe text
    file (300-d, random) holding every token of the demo transcripts."""
    d = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    torch.save({k: torch.randn_like(v) * 0.02 for k, v in vggish.VGGish().state_dict().items()}, d / "vggish.pth")
    with open(os.path.join(DEMO, "labels.csv"), newline="") as f:
        words = sorted({w for r in csv.DictReader(f) for w in text.tokenize(r["transcript"])})
    write_glove(d / "glove.txt", words)
    return d


def emb_args(w):
    return ["--VGGish-weights", str(w / "vggish.pth"), "--GloVe-path", str(w / "glove.txt")]


@pytest.fixture(scope="session")
def full_store(demo_store, emb_weights, tmp_path_factory):
    """The demo store plus VGGish (clip and window) and GloVe: logmel, crop, crop_small, pca,
    descriptor, waveform, vggish, vggish_window, glove."""
    store = tmp_path_factory.mktemp("full") / "store"
    link_tree(demo_store, store)
    ran = fresh_build(store, *emb_args(emb_weights), manifest=os.path.join(ROOT, "data_manifest.yaml"))
    assert set(ran) <= {"VGGish", "GloVe", "Shard", "BuildShards"}, ran   # the rest was reused
    return store


@pytest.fixture(scope="session")
def va_store(full_store, emb_weights, tmp_path_factory):
    """``full_store`` rebuilt with the demo clips labelled ``continuous`` and given valence/arousal
    in [-1, 1] (a RECOLA-like corpus, ``label_set: [continuous]``): anger = low valence, high
    arousal; happiness = high valence, high arousal; sadness = low valence, low arousal (the
    circumplex quadrants), plus a small per-clip offset."""
    base = tmp_path_factory.mktemp("va")
    corpus = base / "corpus"
    shutil.copytree(os.path.join(DEMO, "clips"), corpus / "clips")   # copy2: same content sha256
    quadrant = {"anger": (-0.6, 0.6), "happiness": (0.6, 0.5), "sadness": (-0.5, -0.6)}
    with open(os.path.join(DEMO, "labels.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    rng = np.random.default_rng(0)
    with open(corpus / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["clip_id", "label", "speaker", "transcript", "valence", "arousal"])
        w.writeheader()
        for r in rows:
            v, a = quadrant[r["label"]] + rng.uniform(-0.1, 0.1, 2)
            w.writerow({**r, "label": "continuous", "valence": f"{v:.3f}", "arousal": f"{a:.3f}"})
    manifest = base / "manifest.yaml"
    manifest.write_text(f"datasets:\n  demo:\n    root: {corpus}\n    clips: clips/*\n    labels: labels.csv\n"
                        f"    label_set: [continuous]\n    protocol: loso\n")
    store = base / "store"
    link_tree(full_store, store)
    ran = fresh_build(store, *emb_args(emb_weights), manifest=manifest)
    assert set(ran) <= {"Shard", "BuildShards"}, ran
    return store


def continuous_series(clip_id: str, label: str) -> dict:
    """The time-continuous labels of ``vat_store`` for one demo clip, every 40 ms (RECOLA's step):
    sines of period 1.3 s around the clip's circumplex quadrant, a phase per clip. s2_anger_01's
    series stops at 1.0 s (its later windows have no target); s3_sadness_02 has none."""
    if clip_id == "s3_sadness_02":
        return {}
    centre = {"anger": (-0.5, 0.5), "happiness": (0.5, 0.4), "sadness": (-0.4, -0.5)}.get(label, (0.0, 0.0))
    phase = (sum(map(ord, clip_id)) % 17) / 17 * 2 * np.pi
    t = np.round(np.arange(0, 1.0001 if clip_id == "s2_anger_01" else 8.0, 0.04), 2)
    return {"time": t, "valence": centre[0] + 0.3 * np.sin(2 * np.pi * t / 1.3 + phase),
            "arousal": centre[1] + 0.3 * np.cos(2 * np.pi * t / 1.3 + phase)}


@pytest.fixture(scope="session")
def vat_store(va_store, emb_weights, tmp_path_factory):
    """``va_store`` rebuilt with time-continuous labels (issue 18 item 3): the manifest names
    ``continuous_labels: labels_t.csv`` (``continuous_series``), and the labels CSV has no clip-level
    valence/arousal. Only the Shard stage runs. Returns (store, manifest path)."""
    base = tmp_path_factory.mktemp("vat")
    corpus = base / "corpus"
    shutil.copytree(os.path.join(DEMO, "clips"), corpus / "clips")
    with open(os.path.join(DEMO, "labels.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    with open(corpus / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["clip_id", "label", "speaker", "transcript"])
        w.writeheader()
        w.writerows({**r, "label": "continuous"} for r in rows)
    with open(corpus / "labels_t.csv", "w", newline="") as f:
        f.write("clip_id,time,valence,arousal\n")
        for r in rows:
            s = continuous_series(r["clip_id"], r["label"])
            for t, v, a in zip(*(s.get(k, ()) for k in ("time", "valence", "arousal"))):
                f.write(f"{r['clip_id']},{t:.2f},{v:.4f},{a:.4f}\n")
    manifest = base / "manifest.yaml"
    manifest.write_text(f"datasets:\n  demo:\n    root: {corpus}\n    clips: clips/*\n    labels: labels.csv\n"
                        f"    continuous_labels: labels_t.csv\n    label_set: [continuous]\n    protocol: loso\n")
    store = base / "store"
    link_tree(va_store, store)
    ran = fresh_build(store, *emb_args(emb_weights), manifest=manifest)
    assert set(ran) <= {"Shard", "BuildShards"}, ran
    return store, manifest


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: thread start-up costs more than it saves on a shared CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def fit_steps(model, batch, steps, lr):
    """``steps`` Adam steps on one batch; the loss before each step."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = model.loss(model(batch), batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def demo_units(store) -> dict:
    """{clip id: (t_begin, t_end, kind) arrays} of the demo clips in ``store``'s shards."""
    from features.store import ShardReader
    from models.data import find_shards

    out = {}
    for path in find_shards(store, "demo"):
        s = ShardReader(path)
        for c, cid in enumerate(s.clips["id"]):
            u = s.units(c)
            out[str(cid)] = (np.asarray(u["t_begin"]), np.asarray(u["t_end"]), np.asarray(u["kind"]))
        s.close()
    return out


@pytest.fixture(scope="session")
def seg_store(demo_store, tmp_path_factory):
    """``demo_store`` rebuilt with per-segment labels (issue 18 item 7): the manifest names
    ``segment_labels: seg.csv``. s1_anger_01 has one row per prosodic unit (its exact span): the
    audio-visual label happiness, audio sadness on the first unit only, visual anger, sound type
    silence / verbal / laugh by the unit's kind; s2_happiness_01 has one row covering its second
    unit only (sound type empty). Only the Shard stage runs. Returns (store, manifest, units of
    the demo clips)."""
    units = demo_units(demo_store)
    base = tmp_path_factory.mktemp("seg")
    corpus = base / "corpus"
    shutil.copytree(os.path.join(DEMO, "clips"), corpus / "clips")
    shutil.copy2(os.path.join(DEMO, "labels.csv"), corpus / "labels.csv")
    sound = {0: "silence", 1: "verbal", 2: "laugh"}
    with open(corpus / "seg.csv", "w", newline="") as f:
        f.write("clip_id,t_begin,t_end,label,audio_label,visual_label,sound_type\n")
        t0, t1, kind = units["s1_anger_01"]
        for j in range(len(t0)):
            f.write(f"s1_anger_01,{t0[j]:.6f},{t1[j]:.6f},happiness,{'sadness' if j == 0 else ''},anger,"
                    f"{sound[int(kind[j])]}\n")
        t0, t1, _ = units["s2_happiness_01"]
        f.write(f"s2_happiness_01,{t0[1]:.6f},{t1[1]:.6f},sadness,sadness,,\n")
    manifest = base / "manifest.yaml"
    manifest.write_text(f"datasets:\n  demo:\n    root: {corpus}\n    clips: clips/*\n    labels: labels.csv\n"
                        f"    segment_labels: seg.csv\n    label_set: [anger, happiness, sadness]\n"
                        f"    protocol: loso\n    sr: 48000\n    fps: 30\n    speakers: 3\n")
    store = base / "store"
    link_tree(demo_store, store)
    ran = fresh_build(store, manifest=manifest)
    assert set(ran) <= {"Shard", "BuildShards"}, ran
    return store, manifest, units
