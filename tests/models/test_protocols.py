import numpy as np
import pytest

from features.errors import ParameterError
from features.landmarks import fit_pca
from features.store import ShardReader
from models.data import ClipTable, clip_table, find_shards
from models.protocols import dataset_protocol, fit_pca_basis, make_folds


def fake_table(n_speakers=10, per=4, partition=None):
    n = n_speakers * per
    spk = np.array([f"sp{i // per:02d}" for i in range(n)], dtype=object)
    return ClipTable(paths=[], shard=np.zeros(n, int), index=np.arange(n), id=np.array([f"c{i}" for i in range(n)], object),
                     status=np.array(["ok"] * (n - 1) + ["decode_error"], object),
                     label=np.array(["a", "b"] * (n // 2), object), speaker=spk,
                     partition=np.array(partition if partition is not None else [""] * n, object),
                     valence=np.full(n, np.nan), arousal=np.full(n, np.nan), n_windows=np.ones(n, int),
                     manifest={"label_set": ["a", "b"], "protocol": {"name": "loso"}})


def disjoint(t, f):
    s = {p: set(t.speaker[getattr(f, p)]) for p in ("train", "val", "test")}
    return not (s["train"] & s["val"] or s["train"] & s["test"] or s["val"] & s["test"])


def test_loso_tests_every_speaker_once_speaker_disjoint():
    t = fake_table()
    folds = make_folds(t, "loso", seed=3)
    tested = [sp for f in folds for sp in set(t.speaker[f.test])]
    assert sorted(tested) == sorted(set(t.speaker))
    for f in folds:
        assert disjoint(t, f) and len(set(t.speaker[f.test])) == 1
        parts = np.concatenate([f.train, f.val, f.test])
        assert len(parts) == len(set(parts)) == t.usable.sum()  # every usable clip, once
        assert t.usable[parts].all()


@pytest.mark.parametrize("protocol", ["loso", {"name": "logso", "groups": 3}])
def test_no_validation_part_trains_on_every_other_speaker(protocol):
    """AVEF keeps its last epoch (Table 3) and needs no validation part: with val_fraction 0 a LOSO
    fold trains on all the other speakers (§4.2), not on all but the held-out validation ones."""
    t = fake_table()
    for f in make_folds(t, protocol, seed=0, val_fraction=0.0):
        assert not len(f.val)
        assert set(t.speaker[f.train]) == set(t.speaker[t.usable]) - set(t.speaker[f.test])


def test_seeded():
    t = fake_table()
    a, b, c = (make_folds(t, {"name": "logso", "groups": 3}, seed=s) for s in (0, 0, 1))
    assert all(np.array_equal(x.test, y.test) and np.array_equal(x.val, y.val) for x, y in zip(a, b))
    assert any(not np.array_equal(x.test, y.test) for x, y in zip(a, c))


def test_logso_groups():
    t = fake_table()
    folds = make_folds(t, {"name": "logso", "groups": 3}, seed=0)
    assert len(folds) == 3
    groups = [set(t.speaker[f.test]) for f in folds]
    assert sorted(len(g) for g in groups) == [3, 3, 4]
    assert set.union(*groups) == set(t.speaker) and all(disjoint(t, f) for f in folds)


def test_kfold_8_1_1():
    t = fake_table()
    folds = make_folds(t, {"name": "kfold", "folds": 10, "split": [8, 1, 1]}, seed=0)
    assert len(folds) == 10
    for f in folds:
        s = [len(set(t.speaker[getattr(f, p)])) for p in ("train", "val", "test")]
        assert s == [8, 1, 1] and disjoint(t, f)
    assert sorted(sp for f in folds for sp in set(t.speaker[f.test])) == sorted(set(t.speaker))
    assert sorted(sp for f in folds for sp in set(t.speaker[f.val])) == sorted(set(t.speaker))
    with pytest.raises(ParameterError, match="at least 10 speakers"):
        make_folds(fake_table(5), {"name": "kfold", "folds": 10})


def test_fixed_partitions():
    part = ["train"] * 24 + ["devel"] * 16   # speakers 0-5 train, 6-9 devel
    t = fake_table(partition=part)
    (f,) = make_folds(t, "fixed", seed=0)
    assert set(t.partition[f.test]) == {"devel"} and set(t.partition[f.train]) == {"train"}
    assert set(t.partition[f.val]) == {"train"} and disjoint(t, f)  # validation carved from train speakers
    with pytest.raises(ParameterError, match="partition"):
        make_folds(fake_table(), "fixed")


def test_demo_protocol_from_the_shards_and_pca_refit(demo_store):
    t = clip_table(find_shards(demo_store, "demo"))
    assert dataset_protocol(t) == {"name": "loso"}
    assert dataset_protocol(t, "logso") == {"name": "logso", "groups": 3}
    folds = make_folds(t, "loso")
    assert sorted(sp for f in folds for sp in set(t.speaker[f.test])) == ["s1", "s2", "s3"]
    f = folds[0]
    basis = fit_pca_basis(t, f.train)
    X = np.concatenate([ShardReader(t.paths[t.shard[r]]).video(int(t.index[r]), "shape49") for r in f.train])
    ref = fit_pca(X, n_components=20)        # the training clips' frames only
    np.testing.assert_allclose(basis["mean"], ref["mean"])
    np.testing.assert_allclose(np.abs(basis["components"]), np.abs(ref["components"]), atol=1e-8)
    stored = ShardReader(t.paths[0]).group("pca")   # fitted on every clip: not the fold's basis
    assert not np.allclose(basis["explained_variance"], stored["explained_variance"])
