"""Issue 18 item 7 (Hsu & Wu §II, §III-A): a segment per prosodic unit, silences included, and
per-segment / per-modality labels and sound types from the manifest's ``segment_labels`` file,
stored per unit (``/unit_labels``) and read in clip / segment mode."""
import numpy as np
import pytest
import torch

from features.audio import window_image
from features.store import ShardReader
from models import aclstm as A
from models.data import SEGMENT_KEYS, ShardDataset, clip_table, collate, find_shards, unit_windows
from models.layers import unit_assignment

SILENCE, VERBAL = 0, 1


def test_unit_windows_cover_a_unit_at_avefs_hop_and_repeat_a_short_one():
    assert unit_windows(0).shape == (0, 64)
    short = unit_windows(10)
    assert short.shape == (1, 64) and short[0, :12].tolist() == list(range(10)) + [0, 1]
    assert unit_windows(64).tolist() == [list(range(64))]
    long = unit_windows(100)   # 0, 34, and the last one ending at frame 99
    assert long[:, 0].tolist() == [0, 34, 36] and long[-1, -1] == 99


def _dataset(store, mode, features=("logmel", "crop_small")):
    table = clip_table(find_shards(store, "demo"))
    return table, ShardDataset(table, np.arange(len(table)), features=features, mode=mode)


def test_segment_labels_are_stored_per_unit_and_only_the_shard_stage_reruns(seg_store):
    store, _, units = seg_store
    seen = set()
    for path in find_shards(store, "demo"):
        s = ShardReader(path)
        assert s.has_unit_labels
        for c, cid in enumerate(s.clips["id"]):
            lab = s.unit_labels(c)
            n = len(s.units(c)["kind"])
            assert all(len(v) == n for v in lab.values()), cid
            if cid == "s1_anger_01":
                kind = units[cid][2]
                assert lab["label"].tolist() == ["happiness"] * n and lab["visual_label"].tolist() == ["anger"] * n
                assert lab["audio_label"].tolist() == ["sadness"] + [""] * (n - 1)
                assert lab["sound_type"].tolist() == [{0: "silence", 1: "verbal", 2: "laugh"}[int(k)] for k in kind]
                seen.add(cid)
            elif cid == "s2_happiness_01":
                assert lab["label"].tolist() == ["", "sadness"] + [""] * (n - 2)
                assert set(lab["sound_type"]) == {""}
                seen.add(cid)
            else:
                assert all(set(v) <= {""} for v in lab.values()), cid   # (a failed clip has no unit)
    assert seen == {"s1_anger_01", "s2_happiness_01"}


def test_clip_mode_gives_the_segment_labels_of_the_units_that_own_windows(seg_store):
    store, _, units = seg_store
    table, ds = _dataset(store, "clip", ("logmel",))
    k = [list(table.id[ds.items]).index(c) for c in ("s1_anger_01", "s2_happiness_01")]
    items = [ds[i] for i in k]
    batch = collate(items)
    _, seg_mask = unit_assignment(batch["unit"], batch["mask"])
    for key in SEGMENT_KEYS:
        assert batch[key].shape == seg_mask.shape and (batch[key][~seg_mask] == -1).all(), key
    hap, sad, ang = (ds.label_map[n] for n in ("happiness", "sadness", "anger"))
    present = np.unique(items[0]["unit"])
    kinds = units["s1_anger_01"][2][present]
    S0 = len(present)
    assert batch["segment_label"][0, :S0].tolist() == [hap] * S0
    assert batch["segment_label_visual"][0, :S0].tolist() == [ang] * S0
    assert batch["sound_type"][0, :S0].tolist() == [A.SOUND_TYPES.index({0: "silence", 1: "verbal", 2: "laugh"}[int(x)])
                                                  for x in kinds]
    assert batch["segment_label_audio"][0, :S0].tolist() == [sad if u == 0 else -1 for u in present]
    present = np.unique(items[1]["unit"])
    assert batch["segment_label"][1, :len(present)].tolist() == [sad if u == 1 else -1 for u in present]
    assert (batch["unit_kind"][batch["mask"]] >= 0).all() and (batch["unit_kind"][~batch["mask"]] == -1).all()
    # the windows lie over voiced frames: in clip mode no silence unit is a segment
    assert not any((it["unit_kind"] == SILENCE).any() for it in items)


def test_segment_mode_gives_every_unit_a_segment_silences_from_their_own_frames(seg_store):
    store, _, units = seg_store
    table, ds = _dataset(store, "segment")
    _, clip = _dataset(store, "clip")
    silences = 0
    for k in range(len(ds)):
        r = ds.items[k]
        item, voiced = ds[k], clip[k]
        t0, t1, kind = units[str(table.id[r])]
        assert np.unique(item["unit"]).tolist() == list(range(len(kind))), table.id[r]   # a segment per unit
        assert (np.diff(item["unit"]) >= 0).all() and (item["unit_kind"] == kind[item["unit"]]).all()
        extra = ~np.isin(item["unit"], voiced["unit"])
        assert extra.sum() == len(item["unit"]) - len(voiced["unit"])   # the clip's windows are all still there
        s = ds.shards[table.shard[r]]
        c = int(table.index[r])
        logmel = s.logmel(c)
        hop, frame = 0.010, 0.025
        centre = np.arange(len(logmel)) * hop + frame / 2
        vt, found = s.video(c, "time"), s.video(c, "found").astype(bool)
        for j in np.flatnonzero(extra):
            u = item["unit"][j]
            silences += kind[u] == SILENCE
            own = np.flatnonzero((centre >= t0[u]) & (centre < t1[u]))
            images = [window_image(np.asarray(logmel[own[p]])).transpose(2, 0, 1) for p in unit_windows(len(own))]
            assert any(np.allclose(item["logmel"][j], im, atol=1e-5) for im in images)
            if item["video_ok"][j]:   # its 16 face frames lie in its own time span
                crops = item["crop_small"][j]
                inside = np.flatnonzero((vt >= t0[u] - 0.03) & (vt < t1[u] + 0.03) & found)
                ref = s.video(c, "crop_small", rows=inside).transpose(3, 0, 1, 2)
                for f in range(crops.shape[1]):
                    assert any(np.array_equal(crops[:, f], ref[:, g]) for g in range(ref.shape[1]))
            else:
                assert not item["crop_small"][j].any()
    assert silences > 0   # the demo has silences; today they are segments


def test_the_aclstm_sees_silence_segments_with_the_silence_sound_type(seg_store):
    store, _, _ = seg_store
    _, ds = _dataset(store, "segment")
    batch = collate([ds[k] for k in range(4)])
    torch.manual_seed(0)
    model = A.ACLSTM(A.ACLSTMConfig(n_classes=3, emotion_filters=6, sound_filters=5, visual_hidden=7, hidden=9,
                                    vgg_cfg=(4, "M", 4, "M", 4, "M", 4, "M"), pretrain_epochs=1, ntn_epochs=1))
    seg = model.segment_features(batch)
    kinds = model.segment_kinds(batch, seg)
    y = model.sound_targets(batch, seg)
    assert (kinds == SILENCE).any() and (y[kinds == SILENCE] == A.SOUND_TYPES.index("silence")).all()
    out = model(batch)
    assert out["segment_logits"].shape[:2] == seg["seg_mask"].shape
    hist = model.pretrain([batch], "cpu")
    assert np.isfinite(hist["unimodal"]).all() and not any(p.requires_grad for p in model.sound_cnn.parameters())
