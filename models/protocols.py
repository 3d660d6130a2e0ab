"""Evaluation protocols: speaker-independent, seeded splits of a dataset's clips into folds.

- ``loso``: leave one speaker out (AVEF §4.2, for corpora with few speakers, e.g. RML): every
  speaker is the test part of exactly one fold.
- ``logso``: leave one speaker group out (AVEF §4.2 for eNTERFACE'05 and BAUM-1s; train:test about
  7:3 with 3 groups): the speakers are shuffled with the seed and dealt into ``groups`` groups.
- ``kfold``: ``folds`` folds with a ``split`` train:validation:test of 8:1:1 (Priyasad §4,
  10-fold on IEMOCAP), over speakers: the speakers are shuffled with the seed and dealt into
  ``folds`` groups; fold k tests on group k and validates on the next ones.
- ``fixed``: the corpus's own ``partition`` column (train / devel|dev|val|validation / test;
  Lucas §3 for RECOLA); with no test partition the development partition is the test part.

Every fold has a validation part for early stopping. When the protocol does not name one, it is
carved from the training speakers (a seeded ``val_fraction`` of them, at least one), so the
validation, training and test speakers are always disjoint. Only clips with status ``ok`` and at
least one window take part. Normalisation statistics (``models.data.fit_norm``) and the landmark
PCA (:func:`fit_pca_basis`) are fitted on the training part of a fold only.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from features.errors import ParameterError

logger = logging.getLogger("models.protocols")
VAL_NAMES = ("devel", "dev", "val", "validation", "development")


@dataclass
class Fold:
    name: str
    train: np.ndarray  # global clip indices (rows of the ClipTable)
    val: np.ndarray
    test: np.ndarray

    def speakers(self, table, part: str) -> set:
        return set(table.speaker[getattr(self, part)])


def _rows(table, speakers) -> np.ndarray:
    speakers = set(speakers)
    return np.flatnonzero(table.usable & np.array([s in speakers for s in table.speaker], bool))


def _carve_val(speakers: list, *, rng, val_fraction: float) -> tuple[list, list]:
    """Split training speakers into (train, val): a seeded ``val_fraction`` of them (≥ 1); none
    when ``val_fraction`` is 0 (a model trained for a fixed number of epochs, AVEF Table 3)."""
    if val_fraction <= 0:
        return sorted(speakers), []
    if len(speakers) < 2:
        raise ParameterError(f"a validation part needs at least 2 training speakers, got {speakers}")
    n_val = min(len(speakers) - 1, max(1, int(round(val_fraction * len(speakers)))))
    order = list(rng.permutation(sorted(speakers)))
    return sorted(order[n_val:]), sorted(order[:n_val])


def _check(table, fold: Fold, *, strict: bool = True, need_val: bool = True) -> Fold:
    parts = {p: fold.speakers(table, p) for p in ("train", "val", "test")}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        common = parts[a] & parts[b]
        if common:
            msg = f"fold {fold.name}: speakers {sorted(common)} are in both the {a} and the {b} part"
            if strict:
                raise ParameterError(msg)
            logger.warning("%s (the corpus's own partitions)", msg)
    for p in ("train", "val", "test") if need_val else ("train", "test"):
        if not len(getattr(fold, p)):
            raise ParameterError(f"fold {fold.name}: the {p} part has no usable clip")
    return fold


def make_folds(table, protocol, *, seed: int = 0, val_fraction: float = 0.1) -> list[Fold]:
    """The folds of ``protocol`` (a manifest protocol: a name or a dict with ``name`` and its
    fields ``groups`` / ``folds`` / ``split``) over the usable clips of ``table``."""
    if isinstance(protocol, str):
        protocol = {"name": protocol}
    name = protocol.get("name")
    rng = np.random.default_rng(seed)
    speakers = sorted(set(table.speaker[table.usable]))
    folds = []
    if name == "loso":
        if len(speakers) < 3:
            raise ParameterError(f"LOSO needs at least 3 speakers (test, train, validation), got {speakers}")
        for s in speakers:
            train, val = _carve_val([x for x in speakers if x != s], rng=rng, val_fraction=val_fraction)
            folds.append(Fold(f"loso-{s}", _rows(table, train), _rows(table, val), _rows(table, [s])))
    elif name == "logso":
        n = int(protocol.get("groups", 3))
        if len(speakers) < n + 1:
            raise ParameterError(f"LOGSO with {n} groups needs more than {n} speakers, got {len(speakers)}")
        groups = np.array_split(rng.permutation(speakers), n)
        for k, g in enumerate(groups):
            rest = [x for x in speakers if x not in set(g)]
            train, val = _carve_val(rest, rng=rng, val_fraction=val_fraction)
            folds.append(Fold(f"logso-{k}", _rows(table, train), _rows(table, val), _rows(table, list(g))))
    elif name == "kfold":
        k = int(protocol.get("folds", 10))
        split = [float(x) for x in protocol.get("split", [8, 1, 1])]
        if len(speakers) < k:
            raise ParameterError(f"speaker-independent k-fold with {k} folds needs at least {k} speakers, "
                                 f"got {len(speakers)}; use fewer folds or protocol loso/logso")
        n_test = max(1, int(round(k * split[2] / sum(split))))
        n_val = max(1, int(round(k * split[1] / sum(split))))
        if n_test + n_val >= k:
            raise ParameterError(f"k-fold split {split} with {k} folds leaves no training group")
        groups = np.array_split(rng.permutation(speakers), k)
        for f in range(k):
            pick = lambda a, b: [s for j in range(a, b) for s in groups[(f + j) % k]]  # noqa: E731
            test, val, train = pick(0, n_test), pick(n_test, n_test + n_val), pick(n_test + n_val, k)
            folds.append(Fold(f"kfold-{f}", _rows(table, train), _rows(table, val), _rows(table, test)))
    elif name == "fixed":
        part = np.array([str(p).strip().lower() for p in table.partition], dtype=object)
        if not any(part[table.usable]):
            raise ParameterError("protocol 'fixed' needs a 'partition' column in the labels CSV "
                                 "(train / devel / test); the shards have none")
        ok = table.usable
        train = np.flatnonzero(ok & (part == "train"))
        val = np.flatnonzero(ok & np.isin(part, VAL_NAMES))
        test = np.flatnonzero(ok & (part == "test"))
        if not len(test):  # e.g. RECOLA: train and devel only; devel is the test part
            test, val = val, np.zeros(0, np.int64)
        if not len(val):
            tr, va = _carve_val(sorted(set(table.speaker[train])), rng=rng, val_fraction=val_fraction)
            train, val = _rows(table, tr), _rows(table, va)
            train, val = train[part[train] == "train"], val[part[val] == "train"]
        return [_check(table, Fold("fixed", train, val, test), strict=False, need_val=val_fraction > 0)]
    else:
        raise ParameterError(f"unknown protocol {name!r}; use loso, logso, kfold or fixed")
    return [_check(table, f, need_val=val_fraction > 0 or name == "kfold") for f in folds]


def fit_pca_basis(table, rows, *, n_components: int = 20) -> dict:
    """Refit the landmark PCA whitening (Chao §3.1) on the stored 49-point shapes of the clips
    ``rows`` (a fold's training part), frames with a face only. Pass the result to
    ``ShardDataset(pca_basis=...)``."""
    from features.landmarks import fit_pca
    from features.store import ShardReader

    X = []
    for r in rows:
        s = ShardReader(table.paths[table.shard[r]])
        if not s.contains("video/shape49"):
            raise ParameterError(f"shard {s.path} has no video/shape49: build it with the visual chain")
        x = s.video(int(table.index[r]), "shape49")
        X.append(x[np.all(np.isfinite(x), axis=1)])
    X = np.concatenate(X) if X else np.zeros((0, 98), np.float32)
    return fit_pca(X, n_components=n_components)


def dataset_protocol(table, name: str | None = None) -> dict:
    """The protocol to use: ``name`` (with the manifest's fields when it names the same protocol),
    else the manifest's own (``pipeline.manifest`` ``protocol`` field, as stored in the shards)."""
    mine = dict(table.manifest.get("protocol") or {"name": "loso"})
    if name is None or name == mine.get("name"):
        return mine
    defaults = {"logso": {"groups": 3}, "kfold": {"folds": 10, "split": [8, 1, 1]}}
    return {"name": name, **defaults.get(name, {})}


def n_folds(table, protocol, **kw) -> int:
    return len(make_folds(table, protocol, **kw))


__all__ = ["Fold", "make_folds", "fit_pca_basis", "dataset_protocol"]
