"""Time-continuous labels end to end (issue 18 item 3, Lucas §3): the manifest's
``continuous_labels`` file in the shards (``/labels_t``), mapped to each window, DLSTM regressing
per window, CCC per sequence averaged and pooled, ``--repeats``. Built on ``vat_store``
(tests/models/conftest.py): the demo shards with only the Shard stage rebuilt."""
import csv
import json
import os
import shutil

import numpy as np
import pytest
import torch

from features.align import window_spans
from features.labels import window_means
from features.store import ShardReader
from models import metrics
from models.data import ShardDataset, clip_table, collate, find_shards
from models.dlstm import DLSTM, DLSTMConfig
from tests.models.conftest import emb_args, fresh_build, link_tree
from tests.models.test_train_all import DLSTM as TINY, train


def _csv(manifest):
    root = os.path.dirname(manifest)
    with open(os.path.join(root, "corpus", "labels.csv"), newline="") as f:
        labels = {r["clip_id"]: r for r in csv.DictReader(f)}
    with open(os.path.join(root, "corpus", "labels_t.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    return labels, rows


def test_the_shards_hold_each_clips_series_as_the_file_gives_it(vat_store):
    store, manifest = vat_store
    _, rows = _csv(manifest)
    paths = find_shards(store, "demo")
    seen = set()
    for p in paths:
        s = ShardReader(p)
        assert s.has_labels_t
        for c, cid in enumerate(s.clips["id"]):
            lab = s.labels_t(c)
            mine = [r for r in rows if r["clip_id"] == cid]
            assert np.allclose(lab["time"], [float(r["time"]) for r in mine])
            assert np.allclose(lab["valence"], [float(r["valence"]) for r in mine], atol=1e-6)
            assert np.allclose(lab["arousal"], [float(r["arousal"]) for r in mine], atol=1e-6)
            if mine:
                seen.add(cid)
    assert seen == {r["clip_id"] for r in rows} and "s3_sadness_02" not in seen
    s = ShardReader(paths[0])
    c = next(c for c in range(len(s.clips["id"])) if len(s.labels_t(c)["time"]) > 100)
    lab = s.labels_t(c)
    grid, values = s.labels_on_grid(c, 0.04, how="interp")   # the file's own 40 ms grid: its values
    assert np.allclose(grid, lab["time"][:-1]) and np.allclose(values[:, 0], lab["valence"][:-1], atol=1e-6)
    grid, values = s.labels_on_grid(c, 0.08)                 # 80 ms cells: the mean of the cell's trapezoids
    v = lab["valence"].astype(float)
    by_hand = (v[0:-2:2] + 2 * v[1:-1:2] + v[2::2]) / 4       # cell k: ½(v2k + v2k+1)/2 + ½(v2k+1 + v2k+2)/2
    assert len(grid) >= len(by_hand) > 90 and np.allclose(values[:len(by_hand), 0], by_hand, atol=1e-6)


def test_each_windows_target_is_the_mean_of_the_series_over_its_voiced_span(vat_store):
    """``valence_t``/``arousal_t`` of a clip-mode item = ``window_means`` of the clip's series over
    the stored ``/windows/frames``, and, for a few windows, the dense midpoint rule over the union
    of the frames' [10k, 10k + 25) ms spans; windows past s2_anger_01's 1.0 s have none."""
    store, _ = vat_store
    table = clip_table(find_shards(store, "demo"))
    assert table.continuous_t
    ds = ShardDataset(table, np.flatnonzero(table.usable), features=["vggish_window"], mode="clip")
    checked_dense, masked = 0, 0
    for k in range(len(ds)):
        item = ds[k]
        r = ds.items[k]
        s = ds.shards[table.shard[r]]
        c = int(table.index[r])
        frames = s.windows["frames"][s.windows["clip"] == c]
        lab = s.labels_t(c)
        got = np.c_[item["valence_t"], item["arousal_t"]]
        if not len(lab["time"]):
            assert np.isnan(got).all() and np.isnan(table.valence[r])
            continue
        want = window_means(lab["time"], np.c_[lab["valence"], lab["arousal"]], frames)
        assert np.allclose(got, want, atol=1e-6, equal_nan=True)
        masked += int(np.isnan(got[:, 0]).sum())
        if table.id[r] == "s2_anger_01":
            ends = np.array([sp[0, 0] for sp in window_spans(frames)])
            assert np.isnan(got[ends >= 1.0, 0]).all() and np.isfinite(got[ends < 0.95, 0]).all()
        assert np.isclose(table.valence[r], np.nanmean(got[:, 0]))   # clip value: mean of its windows' targets
        for i in range(0, len(frames), 3):
            spans = window_spans(frames[i:i + 1])[0]
            dense = np.concatenate([np.arange(a, b, 1e-4) + 5e-5 for a, b in spans])
            dense = dense[dense <= lab["time"][-1]]
            if len(dense) > 100:
                assert np.isclose(got[i, 0], np.interp(dense, lab["time"], lab["valence"]).mean(), atol=1e-3)
                checked_dense += 1
    assert checked_dense > 20 and masked > 0
    batch = collate([ds[0], ds[1], ds[2]])
    assert batch["valence_t"].shape == batch["mask"].shape == batch["target_mask"].shape
    assert not (batch["target_mask"] & ~batch["mask"]).any() and torch.isfinite(batch["valence_t"]).all()


def test_the_dlstm_loss_is_the_mse_over_the_steps_with_a_target(vat_store):
    store, _ = vat_store
    table = clip_table(find_shards(store, "demo"))
    ds = ShardDataset(table, np.flatnonzero(table.usable), features=["vggish_window", "crop_small"], mode="clip")
    batch = collate([ds[k] for k in range(4)])
    model = DLSTM(DLSTMConfig(audio_hidden=4, video_hidden=4, early_hidden=4, video_cnn=("M", 4, "M")))
    model.eval()
    with torch.no_grad():
        out = model(batch)
        m = batch["target_mask"]
        target = torch.stack([batch["valence_t"], batch["arousal_t"]], -1)
        want = ((out["steps"] - target) ** 2)[m].mean()
        assert torch.isclose(model.loss(out, batch), want)
        batch["valence_t"][~m] = 99.0   # a step without a target does not count
        assert torch.isclose(model.loss(out, batch), want)


def test_dlstm_regresses_per_window_and_reports_both_cccs(vat_store, tmp_path):
    """One LOSO fold, tiny widths: CCC_* is the per-sequence mean (Lucas §3), CCC_*_pooled over
    all windows, CCC_*_clip over the clip means; recomputed here from the model's predictions."""
    from models.data import loader
    from models.train import checkpoint_dataset, load_checkpoint, predict

    store, _ = vat_store
    res = train(store, "dlstm", TINY, tmp_path)
    r = res["folds"][0]
    for k in ("valence", "arousal"):
        assert {f"CCC_{k}", f"CCC_{k}_pooled", f"CCC_{k}_clip"} <= set(r)
        assert -1 <= r[f"CCC_{k}_pooled"] <= 1 and (np.isnan(r[f"CCC_{k}"]) or -1 <= r[f"CCC_{k}"] <= 1)
    table = clip_table(find_shards(store, "demo"))
    test = np.flatnonzero((table.speaker == "s1") & table.usable)
    assert r["steps"] > 0 and r["sequences"] + r["sequences_skipped"] == len(test) == 6
    assert {"CCC_valence", "CCC_valence_pooled"} <= set(res["summary"])
    model, ckpt = load_checkpoint(tmp_path / "dlstm" / "demo" / "loso" / r["fold"] / "checkpoint.pt")

    p = predict(model, None, loader(checkpoint_dataset(ckpt, table, test), batch_size=4), "cpu")
    assert len(p["clip_t"]) == r["steps"] and p["pred_t"].shape == (r["steps"], 2)
    for j, k in enumerate(("valence", "arousal")):
        per = [metrics.ccc(p["pred_t"][p["clip_t"] == c, j], p[f"{k}_t"][p["clip_t"] == c])
               for c in np.unique(p["clip_t"])]
        assert np.isclose(r[f"CCC_{k}"], np.nanmean(per), atol=1e-5)
        assert np.isclose(r[f"CCC_{k}_pooled"], metrics.ccc(p["pred_t"][:, j], p[f"{k}_t"]), atol=1e-5)


def test_repeats_give_mean_and_std_over_the_runs(vat_store, tmp_path):
    store, _ = vat_store
    res = train(store, "dlstm", TINY, tmp_path, "--repeats", "2", "--epochs", "1")
    assert [r["seed"] for r in res["folds"]] == [0, 1] and res["repeats"] == 2
    proto = tmp_path / "dlstm" / "demo" / "loso"
    for seed in (0, 1):
        assert (proto / "loso-s1" / f"seed-{seed}" / "results.json").is_file()
    runs = [json.load(open(proto / "loso-s1" / f"seed-{s}" / "results.json")) for s in (0, 1)]
    summary = json.load(open(proto / "summary.json"))
    assert summary["repeats"] == 2 and summary["runs"] == 2 and summary["seeds"] == [0, 1]
    for key in ("CCC_valence", "CCC_valence_pooled", "CCC_arousal", "CCC_arousal_pooled"):
        vals = [x[key] for x in runs]
        if np.isfinite(vals).all():
            assert np.isclose(summary["summary"][key]["mean"], np.mean(vals))
            assert np.isclose(summary["summary"][key]["std"], np.std(vals)) and summary["summary"][key]["folds"] == 2
    table_md = open(proto / "table.md").read()
    assert "2 repetitions (seeds 0..1)" in table_md and "| metric | mean ± std | runs |" in table_md
    assert "CCC_valence_pooled" in table_md


def test_a_changed_labels_file_rebuilds_the_shard_stage_only(vat_store, emb_weights, tmp_path):
    """The series join the Shard's hash chain: one changed value re-runs Shard (and the build
    record), nothing upstream; the new shards hold the new value."""
    store, manifest = vat_store
    copy = tmp_path / "store"
    link_tree(store, copy)
    corpus = os.path.join(os.path.dirname(manifest), "corpus")
    text = open(os.path.join(corpus, "labels_t.csv")).read()
    changed = tmp_path / "manifest.yaml"
    new_corpus = tmp_path / "corpus"
    shutil.copytree(os.path.join(corpus, "clips"), new_corpus / "clips")   # same content: same Decode chain
    open(new_corpus / "labels.csv", "w").write(open(os.path.join(corpus, "labels.csv")).read())
    first = text.splitlines()[1].split(",")
    row = ",".join(first[:2] + ["0.9876", first[3]])
    open(new_corpus / "labels_t.csv", "w").write(text.replace(",".join(first), row, 1))
    changed.write_text(open(manifest).read().replace(corpus, str(new_corpus)))
    ran = fresh_build(copy, *emb_args(emb_weights), manifest=changed)
    assert set(ran) == {"Shard", "BuildShards"} and ran.count("Shard") == 1, ran
    values = []
    for p in find_shards(copy, "demo"):
        s = ShardReader(p)
        c = list(s.clips["id"]).index(first[0]) if first[0] in list(s.clips["id"]) else None
        if c is not None:
            values.append(float(s.labels_t(c)["valence"][0]))
    assert values == [pytest.approx(0.9876)]
