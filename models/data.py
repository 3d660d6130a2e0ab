"""``ShardDataset``: batches for the trainers, read from the shards only (``features.store.ShardReader``).

Two modes; batch keys (torch conventions: channels first, float32; face crops uint8):

- ``"window"``: one item is one 655 ms window (AVEF §2.2: every audio/visual segment carries its
  clip's label): ``logmel`` (B, 3, 64, 64); ``crop`` / ``crop_small`` (B, 3, 16, H, W) uint8
  (the models divide by 255 on the device, ``models.layers.as_images``: a quarter of the bytes of
  float32 through the loader's processes and the bus, issue 23 item 2);
  ``pca`` (B, 16, 20); ``vggish_window`` (B, 128); ``descriptor`` / ``vggface`` (B, 16, D);
  ``label`` (B,) long; ``clip`` (B,) long; ``video_ok`` (B,) bool.
- ``"clip"``: one item is one clip; each per-window feature gets a time axis T (the clip's windows),
  e.g. ``logmel`` (B, T, 3, 64, 64), ``pca`` (B, T, 16, 20), padded by :func:`collate` with
  ``mask`` (B, T) True on real windows and ``unit`` (B, T) the prosodic unit of each window (-1 on
  padding; segment models average the windows of a unit). Clip-level sequences: ``vggish``
  (B, T2, 128) + ``vggish_mask``; ``glove`` (B, 100, 300) + ``glove_length`` (B,) + ``glove_oov``
  (B, 100); ``waveform`` (B, N) + ``waveform_length`` (B,); ``label`` (B,); ``valence``,
  ``arousal`` (B,) float when the corpus has them. With time-continuous labels in the shards
  (``/labels_t``, issue 18 item 3) also the per-window targets ``valence_t``, ``arousal_t``
  (B, T) float (``features.labels``: each window's mean over its voiced span) and
  ``target_mask`` (B, T), True on real windows that have a target (a window outside the labelled
  time has none; padded targets are 0). A clip without clip-level ``valence``/``arousal`` columns
  then takes the mean of its windows' targets as its clip value.
  Each window also carries ``unit_kind`` (B, T) long, the kind of its unit (0 silence, 1 verbal,
  2 non-verbal, ``features.prosody``; -1 on padding). With per-unit segment labels in the shards
  (``/unit_labels``, issue 18 item 7, manifest ``segment_labels``) also, per *segment* (the
  clip's units that own a window, in unit order: the order of ``models.layers.unit_assignment``),
  ``segment_label``, ``segment_label_audio``, ``segment_label_visual`` (B, S) long (class index
  of the audio-visual / audio-only / visual-only label through ``label_map``) and ``sound_type``
  (B, S) long (index in ``features.labels.SOUND_TYPES``); -1 where not annotated and on padding.
- ``"segment"``: clip mode in which *every* prosodic unit is a segment (Hsu & Wu §III-A, silences
  included): a unit that owns no window (windows lie over voiced frames only, so every silence,
  and a unit shorter than a window) gets windows computed on read from its own frames:
  ``unit_windows`` (the log-mel rows of the frames whose centre lies in the unit, 64 at a time at
  AVEF's hop of 34, the last one ending at the unit's last frame; a unit of fewer than 64 frames
  has them repeated cyclically to 64), and, for the visual features, the ``frames_per_window``
  (16) video frames of the unit's time with a face (``features.align.align_windows``, AVEF's
  rule), ``video_ok`` False when it has none. These windows are placed among the clip's others in
  unit order. Only per-window features ``logmel``, ``crop``, ``crop_small``, ``pca``,
  ``descriptor``, ``vggface`` (no ``vggish_window``) and clip-level ones are read in this mode.

Masks are honoured: clips whose ``status`` is not ``ok`` are never items; a window whose video is
unusable (``windows/video_ok`` = 0, or a NaN PCA row) gets ``video_ok`` False, its visual features
are zeros (never NaN), and in window mode it is left out when a visual feature is requested
(``drop_no_video``, AVEF §4.3.1: the cross-modal denoising removes such segments).

The HDF5 files are opened lazily in the process that reads (``ShardReader`` reopens after a fork), so a
dataset can go to DataLoader workers as is.
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
import re
from dataclasses import dataclass, replace

import numpy as np

from features import registry
from features.errors import ParameterError, ShardError
from features.store import ShardReader, read_attrs

# name -> (how a trainer reads it: "window" | "clip", the HDF5 dataset whose presence means the feature
# is in the shard, how to enable it): from ``features.registry``, where each feature is declared once
FEATURES = {name: (f.read, f.dataset, f.enable) for name, f in registry.trainer_features().items()}
VISUAL = tuple(name for name, f in registry.trainer_features().items() if f.visual)
MODES = ("window", "clip", "segment")
#: per-segment batch keys (clip / segment mode, from /unit_labels): (B, S) long, -1 = none
SEGMENT_KEYS = {"segment_label": "label", "segment_label_audio": "audio_label",
                "segment_label_visual": "visual_label", "sound_type": "sound_type"}
SEGMENT_FEATURES = tuple(name for name, f in registry.trainer_features().items() if f.read == "window" and f.per_frame)
NORMALISED = tuple(name for name, f in registry.trainer_features().items() if f.normalise)
#: clip features with one fixed-size row per clip (stacked, not padded, in clip mode)
CLIP_ROWS = tuple(name for name, f in registry.trainer_features().items() if f.read == "clip" and f.rows == "clip")
WINDOW_FRAMES, WINDOW_HOP = 64, 34  # AVEF §2.1.1 (features.segments)


def unit_windows(n: int, *, window: int = WINDOW_FRAMES, hop: int = WINDOW_HOP) -> np.ndarray:
    """Frame positions (0..n-1) of the windows of a unit of ``n`` frames that owns no window
    (segment mode): windows of ``window`` frames every ``hop``, the last one ending at frame n-1;
    with n < ``window`` one window of the n frames repeated cyclically. (k, window) int64."""
    if n <= 0:
        return np.zeros((0, window), np.int64)
    if n < window:
        return np.resize(np.arange(n), window)[None]
    starts = list(range(0, n - window + 1, hop))
    if starts[-1] != n - window:
        starts.append(n - window)
    return np.asarray(starts)[:, None] + np.arange(window)[None]


class ShardRefused(ShardError):
    """A shard the trainer refuses (issue 19 item 5): it belongs to another build, dataset or
    configuration, or it cannot be read (truncated, a failed HDF5 filter or checksum). The message
    names the file and what to do; ``models.train`` prints it (``features.errors.ShardError``).

    torch re-raises a DataLoader worker's error as ``type(err)(text)``, the text being "Caught
    ShardRefused in DataLoader worker N. Original Traceback ...: <message>": built from that text
    alone, the error keeps <message> and the file it starts with."""

    def __init__(self, path: str, message: str | None = None, *, dataset: str | None = None):
        if message is None:   # torch's re-raise of a worker's error
            message = path.rstrip().rsplit(f"{type(self).__name__}: ", 1)[-1]
            path = message.split(": ", 1)[0]
        super().__init__(path, message, dataset=dataset)


_SHARD_NAME = re.compile(r"shards/[0-9a-f]+/shard-\d+\.h5")


def _rebuild(dataset: str, store: str | None = None) -> str:
    where = f" --store {store}" if store else ""
    return f"luigi --module pipeline BuildShards --dataset {dataset}{where}"


def _dataset_of(path: str) -> str:
    """The dataset folder of ``store/<dataset>/shards/<digest>/shard-NNNN.h5``."""
    return os.path.basename(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(path)))))


def unreadable(path: str, err: BaseException) -> str:
    """The message for a shard that HDF5 cannot read (issue 19 item 5)."""
    ds = _dataset_of(path)
    return (f"{path}: cannot be read (truncated or corrupt): {err}; run avstore verify --dataset {ds} "
            f"and rebuild with: {_rebuild(ds)}")


@contextlib.contextmanager
def reading(path: str):
    """Errors of the store while reading shard ``path`` (an HDF5 ``OSError``, the store's
    ``CorruptShard``/``UnsafeShard``) become a ``ShardRefused`` naming the file, which also
    crosses from a DataLoader worker as itself."""
    try:
        yield
    except ShardRefused:
        raise
    except ShardError as err:
        raise ShardRefused(err.path, str(err), dataset=err.dataset) from err
    except OSError as err:
        raise ShardRefused(path, unreadable(path, err)) from err


def _read_attrs(path: str) -> dict:
    with reading(path):
        return read_attrs(path)


def _flat(d, prefix: str = "") -> dict:
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v, sort_keys=True, default=str)
    return out


def config_diff(a: dict, b: dict, *, limit: int = 3) -> str:
    """The first ``limit`` configuration fields that differ: ``segment.hop_frames: 34 -> 30``."""
    fa, fb = _flat(a), _flat(b)
    keys = sorted(k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k))
    shown = [f"{k}: {fa.get(k, '-')} -> {fb.get(k, '-')}" for k in keys[:limit]]
    return ", ".join(shown) + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def _load_record(path: str, dataset: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        if not isinstance(record, dict) or not isinstance(record.get("shards"), list):
            raise ValueError("it has no list 'shards'")
    except (OSError, ValueError) as err:
        raise ParameterError(f"build record {path} cannot be read: {err}; pick another with --build "
                             f"or rebuild with: {_rebuild(dataset)}") from err
    if record.get("dataset") not in (None, dataset):
        raise ParameterError(f"build record {path} is of dataset {record['dataset']!r}, not {dataset!r}; "
                             f"remove it and rebuild with: {_rebuild(dataset)}")
    return record


def _owner(base: str, digest, *, other_than: str = "") -> str:
    """The build record (key) under ``base/builds``, other than ``other_than``, that lists a shard
    of folder ``digest``."""
    for path in sorted(glob.glob(os.path.join(base, "builds", "*.json"))):
        if os.path.basename(path)[:-5] == other_than:
            continue
        try:
            with open(path, encoding="utf-8") as f:
                named = json.load(f).get("shards", [])
        except (OSError, ValueError, AttributeError):
            continue
        if any(f"/shards/{digest}/" in "/" + str(p).replace("\\", "/") for p in named):
            return os.path.basename(path)[:-5]
    return f"of chain digest {digest} (no build record lists it)"


def check_shard(path: str, *, dataset: str, base: str, record: dict | None = None, key: str = "") -> dict:
    """That shard ``path`` belongs to build ``key`` (its ``record``) of ``dataset`` (issue 19 item 5):
    its root attributes name the dataset, the chain digest of its folder and the record's
    configuration, and its size is the record's. Raises ``ShardRefused`` naming the file, else
    returns the attributes. A file HDF5 cannot open is "cannot be read (truncated or corrupt)"."""
    attrs = _read_attrs(path)
    folder = os.path.basename(os.path.dirname(path))
    build = f"build {key}" if key else f"the shards under {base}"
    fix = f"remove it (or pick its build with --build) and rebuild with: {_rebuild(dataset, os.path.dirname(base))}"
    if attrs.get("dataset") != dataset:
        raise ShardRefused(path, f"{path}: belongs to dataset {attrs.get('dataset')!r}, not {dataset!r} "
                                 f"({build}); {fix}")
    if attrs.get("digest") != folder:
        owner = _owner(base, attrs.get("digest"), other_than=key)
        raise ShardRefused(path, f"{path}: belongs to build {owner} / dataset {dataset}, not {build}: it was "
                                 f"copied into folder shards/{folder}; {fix}")
    if record is None:
        return attrs
    if "config" in record and _flat(record["config"]) != _flat(attrs.get("config")):
        owner = _owner(base, folder, other_than=key)
        raise ShardRefused(path, f"{path}: belongs to build {owner} / dataset {dataset}, not build {key} "
                                 f"(configuration {config_diff(record['config'], attrs.get('config'))}); {fix}")
    files = record.get("files")
    if files is not None:
        rel = "/".join([dataset, "shards", folder, os.path.basename(path)])
        if rel not in files:
            raise ShardRefused(path, f"{path}: build record {key} lists it under 'shards' but not under 'files' "
                                     f"(sha256, size): the record was edited; {fix}")
        size, want = os.path.getsize(path), files[rel].get("bytes")
        if want is not None and size != want:
            raise ShardRefused(path, f"{path}: {size} bytes, but build record {key} says {want}: changed, "
                                     f"truncated or replaced since the build; run avstore verify --dataset "
                                     f"{dataset} and rebuild with: {_rebuild(dataset, os.path.dirname(base))}")
    return attrs


def find_shards(store: str | os.PathLike, dataset: str, *, build: str | None = None) -> list[str]:
    """The shard files of one build of ``dataset`` under ``store``, each checked to belong to it.

    The build record ``store/<dataset>/builds/<digest>.json`` (written by ``BuildShards``) names the
    shards of one configuration; ``build`` picks a record (its digest or path), else the newest.
    Without records, every ``store/<dataset>/shards/*/shard-*.h5``, which must then share one
    configuration. Every shard is checked (``check_shard``, issue 19 item 5): a shard of another
    build, dataset or configuration, one whose size is not the record's, or one that HDF5 cannot
    open raises ``ShardRefused`` naming the file.
    """
    base = os.path.join(os.fspath(store), dataset)
    records = sorted(glob.glob(os.path.join(base, "builds", "*.json")), key=os.path.getmtime)
    if build:
        records = [r for r in records if build in (r, os.path.splitext(os.path.basename(r))[0])]
        if not records:
            raise ParameterError(f"no build record {build!r} under {base}/builds")
    if records:
        return _recorded_shards(records[-1], dataset, base)
    paths = sorted(glob.glob(os.path.join(base, "shards", "*", "shard-*.h5")))
    if not paths:
        raise ParameterError(f"no shards of dataset {dataset!r} under {store}; build them with: "
                             f"luigi --module pipeline BuildShards --dataset {dataset} --store {store}")
    first = check_shard(paths[0], dataset=dataset, base=base)
    for p in paths[1:]:
        attrs = check_shard(p, dataset=dataset, base=base)
        if _flat(attrs.get("config")) != _flat(first.get("config")):
            raise ShardRefused(p, f"{p}: belongs to another configuration than {paths[0]} "
                                  f"({config_diff(first.get('config'), attrs.get('config'))}), and no build "
                                  f"record under {base}/builds says which to use; remove the other build's "
                                  f"shards or rebuild with: {_rebuild(dataset, os.fspath(store))} (it writes "
                                  f"the record)")
    return paths


def _recorded_shards(record_path: str, dataset: str, base: str) -> list[str]:
    """The shards that build record ``record_path`` lists, re-rooted under ``base`` and checked."""
    record = _load_record(record_path, dataset)
    key = os.path.basename(record_path)[:-5]
    # the record holds the paths as the build saw them: re-root them under this store
    rels = ["/".join(str(p).replace("\\", "/").split("/")[-3:]) for p in record["shards"]]
    bad = [r for r in rels if not _SHARD_NAME.fullmatch(r)]
    if bad:
        raise ParameterError(f"build record {record_path} names shards that are not shards/<digest>/shard-NNNN.h5: "
                             f"{bad[:3]}; rebuild with: {_rebuild(dataset)}")
    paths = [os.path.join(base, *r.split("/")) for r in rels]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise ParameterError(f"build record {record_path} names shards that are missing: {missing[:3]}; "
                             f"rebuild with: {_rebuild(dataset)}")
    for p in paths:
        check_shard(p, dataset=dataset, base=base, record=record, key=key)
    return paths


def has_feature(shard: ShardReader, name: str) -> bool:
    """Whether ``shard`` holds feature ``name`` (``ShardReader.has`` when the reader has it)."""
    if name not in FEATURES:
        raise ParameterError(f"unknown feature {name!r}; known: {', '.join(FEATURES)}")
    return bool(shard.has(name))


@dataclass
class ClipTable:
    """One row per clip over all shards; the row index is the global clip index (``batch["clip"]``)."""

    paths: list
    shard: np.ndarray      # (n,) int: index into ``paths``
    index: np.ndarray      # (n,) int: the clip's index inside its shard
    id: np.ndarray
    status: np.ndarray
    label: np.ndarray
    speaker: np.ndarray
    partition: np.ndarray  # "" when the corpus has none
    valence: np.ndarray    # float, NaN when absent
    arousal: np.ndarray
    n_windows: np.ndarray
    manifest: dict         # the dataset's manifest entry as the build saw it (label_set, protocol)
    continuous_t: bool = False  # every shard holds time-continuous labels (/labels_t)

    def __len__(self) -> int:
        return len(self.id)

    @property
    def usable(self) -> np.ndarray:
        """Clips with status ``ok`` and at least one window."""
        return (self.status == "ok") & (self.n_windows > 0)


def label_subset(table: ClipTable, labels) -> ClipTable:
    """``table`` with only the clips labelled one of ``labels`` usable (the others get status
    ``excluded_label``) and ``labels`` as its label set: e.g. AVEF's six basic emotions (BAUM-1s,
    AVEF §3) out of BAUM-1's seven, ``--labels anger,disgust,fear,happiness,sadness,surprise``."""
    labels = list(dict.fromkeys(labels))
    known = list(table.manifest.get("label_set") or sorted(set(table.label)))
    unknown = [x for x in labels if x not in known]
    if unknown or not labels:
        raise ParameterError(f"--labels {','.join(labels)}: {unknown or 'no label'} not in the dataset's label set "
                             f"{known}")
    status = np.where(np.isin(table.label, labels), table.status, "excluded_label").astype(object)
    return replace(table, status=status, manifest={**table.manifest, "label_set": labels})


def _floats(values) -> np.ndarray:
    out = np.full(len(values), np.nan)
    for i, v in enumerate(values):
        try:
            out[i] = float(v)
        except (TypeError, ValueError):
            pass
    return out


def clip_table(paths: list[str]) -> ClipTable:
    """The clips of the shards ``paths`` (``find_shards``); a shard that cannot be read raises
    ``ShardRefused`` naming it."""
    cols = {k: [] for k in ("shard", "index", "id", "status", "label", "speaker", "partition",
                            "valence", "arousal", "n_windows")}
    manifest, continuous_t = {}, bool(paths)
    for k, p in enumerate(paths):
        s = ShardReader(p)
        with reading(p):
            c = s.clips
            off = s.array("windows/offsets")
            manifest = manifest or s.attrs.get("manifest", {})
            window_means = _clip_means_t(s) if s.has_labels_t else None
            continuous_t &= window_means is not None
            s.close()
        n = len(c["id"])
        cols["shard"] += [k] * n
        cols["index"] += list(range(n))
        for key in ("id", "status", "label", "speaker"):
            cols[key] += list(c[key])
        cols["partition"] += list(c.get("partition", [""] * n))
        for j, key in enumerate(("valence", "arousal")):
            values = _floats(c.get(key, [None] * n))
            if window_means is not None:   # no clip value: the mean of its windows' targets
                values = np.where(np.isfinite(values), values, window_means[:, j])
            cols[key] += list(values)
        cols["n_windows"] += list(np.diff(off))
    arr = {k: np.asarray(v, dtype=object if k in ("id", "status", "label", "speaker", "partition") else None)
           for k, v in cols.items()}
    for k in ("shard", "index", "n_windows"):
        arr[k] = arr[k].astype(np.int64)
    return ClipTable(paths=list(paths), manifest=manifest, continuous_t=continuous_t, **arr)


def _clip_means_t(s: ShardReader) -> np.ndarray:
    """(n_clips, 2) the mean (valence, arousal) target of each clip's windows (NaN: none)."""
    w = s.windows
    targets = s.window_labels(np.arange(len(w["clip"])))
    out = np.full((len(s.clips["id"]), 2), np.nan)
    for c in range(len(out)):
        rows = targets[w["clip"] == c]
        rows = rows[np.isfinite(rows).all(1)]
        if len(rows):
            out[c] = rows.mean(0)
    return out


class ShardDataset:
    """Items from the shards for the clips ``rows`` of ``table`` (a torch map-style dataset).

    Parameters
    ----------
    table : ClipTable (``clip_table(find_shards(store, dataset))``)
    rows : the global clip indices to use (a fold's train/val/test part); clips that are not
        ``ok`` or have no window are skipped.
    features : feature names (``FEATURES``); a name missing from the shards raises a
        ``ParameterError`` naming it and how to enable it.
    mode : "window", "clip" or "segment" (clip mode with a segment for every prosodic unit; see
        the module docstring)
    label_map : {label name: class index}; clips whose label is not in it are skipped.
        Default: the manifest's ``label_set`` order. A corpus with the label set ``[continuous]``
        gives ``label`` -1 and the ``valence``/``arousal`` values.
    norm : {feature: (mean, std)} arrays broadcasting against one item's feature (``fit_norm``)
    pca_basis : a ``features.landmarks.fit_pca`` basis: ``pca`` is then recomputed from the stored
        49-point shapes (refit on a training fold) instead of read.
    drop_no_video : in window mode, leave out windows whose video is unusable (default: when a
        visual feature is requested).
    """

    def __init__(self, table: ClipTable, rows, *, features, mode: str = "window", label_map=None,
                 norm=None, pca_basis=None, drop_no_video=None):
        if mode not in MODES:
            raise ParameterError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if mode == "segment":
            odd = [f for f in features if FEATURES.get(f, ("clip",))[0] == "window" and f not in SEGMENT_FEATURES]
            if odd:
                raise ParameterError(f"mode 'segment' computes windows for units without one from the log-mel "
                                     f"frames and the video only; it cannot give {odd}")
        self.table, self.mode, self.features = table, mode, tuple(features)
        self.shards = [ShardReader(p) for p in table.paths]
        for name in self.features:
            if name not in FEATURES:
                raise ParameterError(f"unknown feature {name!r}; known: {', '.join(FEATURES)}")
            if mode == "window" and FEATURES[name][0] == "clip":
                raise ParameterError(f"feature {name!r} is per clip; use mode='clip'")
            for s in self.shards:
                with reading(s.path):
                    found = has_feature(s, name)
                if not found:
                    raise ParameterError(f"feature {name!r} is not in shard {s.path}: {FEATURES[name][2]}")
        if "pca" in self.features and pca_basis is None:
            for s in self.shards:
                with reading(s.path):
                    fitted = len(s.array("pca/components"))
                if not fitted:
                    raise ParameterError(f"shard {s.path} has no landmark PCA basis (too few frames with a "
                                         f"face to fit one): pass pca_basis (models.protocols.fit_pca_basis) "
                                         f"or leave out the feature 'pca'")
        label_set = list(table.manifest.get("label_set", sorted(set(table.label))))
        self.continuous = label_set == ["continuous"]
        self.label_map = dict(label_map) if label_map is not None else {l: i for i, l in enumerate(label_set)}
        self.norm = {k: tuple(np.asarray(a, np.float32) for a in v) for k, v in (norm or {}).items()}
        self.pca_basis = pca_basis
        visual = [f for f in self.features if f in VISUAL]
        self.drop_no_video = bool(visual) if drop_no_video is None else drop_no_video
        rows = np.asarray(sorted(set(int(r) for r in rows)), dtype=np.int64)
        keep = table.usable[rows] if len(rows) else np.zeros(0, bool)
        if not self.continuous:
            keep &= np.array([table.label[r] in self.label_map for r in rows], bool)
        self.clips = rows[keep]
        self.items = self._index()

    # -- index -------------------------------------------------------------------------------
    def _index(self) -> list:
        t = self.table
        if self.mode != "window":
            return list(self.clips)
        items = []
        for r in self.clips:
            s = self.shards[t.shard[r]]
            with reading(s.path):
                w = s.windows
            idx = np.flatnonzero(w["clip"] == t.index[r])
            if self.drop_no_video:
                idx = idx[w["video_ok"][idx].astype(bool)]
            items += [(int(r), int(i)) for i in idx]
        return items

    def __len__(self) -> int:
        return len(self.items)

    @property
    def labels(self) -> np.ndarray:
        """The class index of every item (window or clip)."""
        rows = [it[0] for it in self.items] if self.mode == "window" else self.items
        return np.array([self._label(r) for r in rows], dtype=np.int64)

    def _label(self, r: int) -> int:
        return -1 if self.continuous else self.label_map[self.table.label[r]]

    # -- reading -------------------------------------------------------------------------------
    def _pca(self, s: ShardReader, i: int) -> np.ndarray:
        if self.pca_basis is None:
            return s.window_pca(i)
        from features.landmarks import pca_whiten

        idx = s.windows["video_frames"][i]
        if idx[0] < 0:
            return np.zeros((len(idx), len(self.pca_basis["components"])), np.float32)
        uniq, inv = np.unique(idx, return_inverse=True)
        shapes = s.video(int(s.windows["clip"][i]), "shape49", rows=uniq)[inv]
        return pca_whiten(shapes, **{k: self.pca_basis[k] for k in ("mean", "components", "explained_variance")})

    def _window(self, s: ShardReader, i: int, logmel=None) -> dict:
        """One window's features, channels first, float32; visual zeros where the video is unusable."""
        out = {}
        ok = bool(s.windows["video_ok"][i])
        for name in self.features:
            if name == "logmel":
                x = s.window(i) if logmel is None else logmel
                out[name] = np.ascontiguousarray(x.transpose(2, 0, 1))  # (3, n_mels, n_frames)
            elif name in ("crop", "crop_small"):
                v = s.window_video(i, small=name == "crop_small")        # (16, H, W, 3) uint8
                out[name] = np.ascontiguousarray(v.transpose(3, 0, 1, 2))   # uint8: / 255 on the device
            elif name == "pca":
                x = self._pca(s, i)
                if not np.all(np.isfinite(x)):
                    ok, x = False, np.zeros_like(x)
                out[name] = x.astype(np.float32)
            elif FEATURES[name][0] == "window":   # any other declared one (features.registry): a row or frames
                out[name] = np.asarray(s.window_feature(name, i), np.float32)
        for name in self.features:
            if name in self.norm and name in out:   # (a clip-level feature is normalised in _clip_level)
                mean, std = self.norm[name]
                out[name] = (out[name] - mean) / std
            if name in VISUAL and not ok:   # after normalising: unusable video stays exactly zero
                out[name] = np.zeros_like(out[name])
        out["video_ok"] = ok
        return out

    def _clip_level(self, s: ShardReader, c: int) -> dict:
        out = {}
        for name in self.features:
            if name == "vggish":
                out[name] = np.asarray(s.vggish(c), np.float32)
                if name in self.norm:
                    mean, std = self.norm[name]
                    out[name] = (out[name] - mean) / std
            elif name == "glove":
                g = s.glove(c)
                out["glove"], out["glove_length"] = np.asarray(g["vectors"], np.float32), int(g["length"])
                out["glove_oov"] = np.asarray(g["oov"], bool)
            elif name == "waveform":
                out[name] = np.asarray(s.waveform(c), np.float32)
            elif FEATURES[name][0] == "clip":   # any other declared clip feature (features.registry)
                got = s.clip_feature(name, c)
                out[name] = np.asarray(got["value"], np.float32)
                if "length" in got:
                    out[f"{name}_length"] = got["length"]
                if name in self.norm:
                    mean, std = self.norm[name]
                    out[name] = (out[name] - mean) / std
        return out

    def __getitem__(self, k: int) -> dict:
        return self.__getitems__([k])[0]

    def __getitems__(self, ks) -> list[dict]:
        """Many items at once; in window mode the Δ/ΔΔ of a shard's windows are computed together."""
        t = self.table
        if self.mode == "window":
            items = [self.items[k] for k in ks]
            images = [None] * len(items)
            if "logmel" in self.features:
                by_shard = {}
                for j, (r, i) in enumerate(items):
                    by_shard.setdefault(int(t.shard[r]), []).append(j)
                for sh, js in by_shard.items():
                    with reading(self.shards[sh].path):
                        batch = self.shards[sh].window_batch([items[j][1] for j in js])
                    for j, x in zip(js, batch):
                        images[j] = x
            out = []
            for (r, i), img in zip(items, images):
                with reading(self.shards[t.shard[r]].path):
                    d = self._window(self.shards[t.shard[r]], i, img)
                d.update(self._targets(r))
                out.append(d)
            return out
        out = []
        for k in ks:
            r = self.items[k]
            s = self.shards[t.shard[r]]
            with reading(s.path):
                out.append(self._clip_item(s, r))
        return out

    def _clip_item(self, s: ShardReader, r: int) -> dict:
        """One clip-mode item: the clip's windows stacked, its clip-level features and targets."""
        t = self.table
        w = s.windows
        idx = np.flatnonzero(w["clip"] == t.index[r])
        per = [self._window(s, int(i)) for i in idx] if any(FEATURES[f][0] == "window" for f in self.features) else []
        d = {name: np.stack([p[name] for p in per]) for name in self.features if FEATURES[name][0] == "window"}
        d["video_ok"] = np.array([p["video_ok"] for p in per], bool) if per else np.ones(len(idx), bool)
        d["unit"] = w["unit"][idx].astype(np.int64)
        if t.continuous_t:   # per-window targets of the time-continuous labels (issue 18 item 3)
            targets = s.window_labels(idx).astype(np.float32)
            d["valence_t"], d["arousal_t"] = targets[:, 0], targets[:, 1]
        c = int(t.index[r])
        units = s.units(c)
        if self.mode == "segment":   # a segment for every unit (issue 18 item 7): windows for the others
            d = self._unit_windows(s, c, units, d)
        kinds = np.asarray(units["kind"], np.int64)
        d["unit_kind"] = kinds[d["unit"]] if len(kinds) else np.full(len(d["unit"]), -1, np.int64)
        if s.has_unit_labels:   # per-segment labels: the clip's units that own a window, in unit order
            present = np.unique(d["unit"])
            labels = s.unit_labels(c)
            for key, column in SEGMENT_KEYS.items():
                if column not in labels:
                    continue
                names = labels[column][present]
                if column == "sound_type":
                    from features.labels import SOUND_TYPES
                    lookup = {n: i for i, n in enumerate(SOUND_TYPES)}
                else:
                    lookup = self.label_map
                d[key] = np.array([lookup.get(n, -1) for n in names], np.int64)
        d.update(self._clip_level(s, c))
        d.update(self._targets(r))
        return d

    def _unit_windows(self, s: ShardReader, c: int, units: dict, d: dict) -> dict:
        """Segment mode: add windows computed on read for the units of clip ``c`` that own none
        (module docstring), then order all windows by unit (stable: time order)."""
        from features.align import align_windows
        from features.audio import window_image

        n_units = len(units["kind"])
        missing = np.setdiff1d(np.arange(n_units), d["unit"])
        if not len(missing):
            return d
        frame_ms, hop_ms = s.frame_grid()
        logmel = s.logmel(c)
        centre = (np.arange(len(logmel)) * hop_ms + frame_ms / 2.0) / 1000.0
        config = s.attrs.get("config") or {}
        n_video = int((config.get("align") or {}).get("frames_per_window", 16))
        visual = [f for f in self.features if f in VISUAL]
        video = None
        if visual and str(s.clips.get("video_status", ["ok"] * (c + 1))[c]) == "ok":
            video = (np.asarray(s.video(c, "time"), np.float64), np.asarray(s.video(c, "found"), bool))
        new = {k: [] for k in d if k not in ("unit",)}
        new_units = []
        for u in missing:
            own = np.flatnonzero((centre >= units["t_begin"][u]) & (centre < units["t_end"][u]))
            if not len(own):   # shorter than a hop: the frame nearest its middle
                mid = 0.5 * (units["t_begin"][u] + units["t_end"][u])
                own = np.array([int(np.clip(np.argmin(np.abs(centre - mid)), 0, len(logmel) - 1))])
            for pos in unit_windows(len(own)):
                frames = own[pos]
                item = {}
                if "logmel" in self.features:
                    item["logmel"] = np.ascontiguousarray(window_image(np.asarray(logmel[frames])).transpose(2, 0, 1))
                span = [[frames.min() * hop_ms / 1000.0, (frames.max() * hop_ms + frame_ms) / 1000.0]]
                rows, ok = np.full(n_video, -1), False
                if video is not None:
                    picked, oks, _ = align_windows(*video, spans=[np.asarray(span)], n=n_video)
                    rows, ok = picked[0], bool(oks[0])
                for name in visual:
                    item[name] = self._video_rows(s, c, name, rows if ok else None, n_video)
                for name in self.features:
                    if name in item and name in self.norm:
                        mean, std = self.norm[name]
                        item[name] = (item[name] - mean) / std
                    if name in VISUAL and not ok:
                        item[name] = np.zeros_like(item[name])
                item["video_ok"] = ok
                for k in new:
                    new[k].append(item[k] if k in item else np.float32(np.nan))   # valence_t / arousal_t: none
                new_units.append(u)
        out = {k: np.concatenate([d[k], np.stack(new[k]).astype(d[k].dtype)]) for k in new}
        out["unit"] = np.concatenate([d["unit"], np.asarray(new_units, np.int64)])
        order = np.argsort(out["unit"], kind="stable")
        return {k: v[order] for k, v in out.items()}

    def _video_rows(self, s: ShardReader, c: int, name: str, rows, n: int) -> np.ndarray:
        """The visual feature ``name`` of the clip's video frames ``rows`` (n,) (zeros when ``None``),
        as ``_window`` gives it for a window: crops (3, n, H, W) uint8, else (n, D)."""
        key = "pca" if name == "pca" and self.pca_basis is None else ("shape49" if name == "pca" else name)
        if rows is None:   # no usable frame: zeros of the feature's shape
            shape, dtype = s.row_shape(f"video/{key}")
            x = np.zeros((n, *shape), dtype)
        else:
            uniq, inv = np.unique(np.asarray(rows, np.int64), return_inverse=True)
            x = np.asarray(s.video(c, key, rows=uniq))[inv]
        if name == "pca" and self.pca_basis is not None:
            from features.landmarks import pca_whiten

            x = pca_whiten(x, **{k: self.pca_basis[k] for k in ("mean", "components", "explained_variance")})
        if name in ("crop", "crop_small"):
            return np.ascontiguousarray(x.transpose(3, 0, 1, 2))
        x = np.asarray(x, np.float32)
        return np.where(np.isfinite(x), x, 0).astype(np.float32)

    def _targets(self, r: int) -> dict:
        d = {"label": self._label(r), "clip": int(r)}
        if self.continuous or np.isfinite(self.table.valence[r]):
            d["valence"], d["arousal"] = float(self.table.valence[r]), float(self.table.arousal[r])
        return d


def _pad(arrays, length=None):
    """Stack arrays of shape (T_i, ...) into (B, T, ...) zero-padded; returns (stacked, mask)."""
    T = max(len(a) for a in arrays) if length is None else length
    out = np.zeros((len(arrays), T, *arrays[0].shape[1:]), arrays[0].dtype)
    mask = np.zeros((len(arrays), T), bool)
    for b, a in enumerate(arrays):
        out[b, :len(a)] = a
        mask[b, :len(a)] = True
    return out, mask


def collate(items: list[dict]) -> dict:
    """Stack items into tensors; clip mode pads the time axes and returns the masks (see the module docstring)."""
    import torch

    batch = {}
    clip_mode = "unit" in items[0]
    for key in items[0]:
        values = [it[key] for it in items]
        if key in ("label", "clip") or key.endswith("_length") and key[:-7] in FEATURES:
            batch[key] = torch.as_tensor(np.asarray(values, np.int64))
        elif key in ("valence", "arousal"):
            batch[key] = torch.as_tensor(np.asarray(values, np.float32))
        elif key == "video_ok" and not clip_mode:
            batch[key] = torch.as_tensor(np.asarray(values, bool))
        elif key in ("vggish", "waveform"):
            x, m = _pad(values)
            batch[key] = torch.from_numpy(x)
            if key == "vggish":
                batch["vggish_mask"] = torch.from_numpy(m)
            else:
                batch["waveform_length"] = torch.as_tensor([len(v) for v in values])
        elif key in CLIP_ROWS or key == "glove_oov":   # one fixed-size row per clip (GloVe's, BERT's tokens)
            batch[key] = torch.from_numpy(np.stack(values))
        elif key in FEATURES and FEATURES[key][0] == "clip":   # another clip-level sequence: padded + mask
            x, m = _pad(values)
            batch[key], batch[f"{key}_mask"] = torch.from_numpy(x), torch.from_numpy(m)
        elif key in SEGMENT_KEYS:   # per segment (B, S), -1 on padding
            x, m = _pad(values)
            x[~m] = -1
            batch[key] = torch.from_numpy(x)
        elif key in ("valence_t", "arousal_t"):   # NaN (no target) and padding: 0, out of target_mask
            x, m = _pad(values)
            ok = m & np.isfinite(x)
            batch[key] = torch.from_numpy(np.where(ok, x, 0).astype(np.float32))
            batch["target_mask"] = torch.from_numpy(ok & batch["target_mask"].numpy() if "target_mask" in batch else ok)
        elif clip_mode:  # per-window features, unit, video_ok: pad the time axis
            x, m = _pad(values)
            if key in ("unit", "unit_kind"):
                x[~m] = -1
            batch[key] = torch.from_numpy(x)
            batch["mask"] = torch.from_numpy(m)
        else:
            batch[key] = torch.from_numpy(np.stack(values))
    return batch


def loader(dataset: ShardDataset, *, batch_size: int, shuffle: bool = False, num_workers: int = 0,
           seed: int = 0, device: str = "cpu"):
    """A DataLoader with :func:`collate`, pinned memory when ``device`` is cuda, seeded shuffling.

    A shuffled (training) loader drops a last batch of one item: BatchNorm cannot normalise a
    batch of one in training mode (SincNet's A-DCNN, Priyasad §2.1), and the item is in another
    batch at the next epoch's shuffle. With worker processes, the batches cross to this process
    several at a time in one buffer (``models.stream.PackedLoader``: the same batches, in the same
    order)."""
    import torch
    from torch.utils.data import DataLoader

    g = torch.Generator().manual_seed(seed)
    drop_last = shuffle and len(dataset) > 1 and len(dataset) % batch_size == 1
    if num_workers > 0:
        from models.stream import PackedLoader

        return PackedLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, collate=collate,
                            generator=g, drop_last=drop_last, pin_memory=str(device).startswith("cuda"))
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      collate_fn=collate, pin_memory=str(device).startswith("cuda"), generator=g,
                      persistent_workers=num_workers > 0, drop_last=drop_last)


def fit_norm(dataset: ShardDataset, *, features=NORMALISED, max_items: int = 2000, seed: int = 0) -> dict:
    """Per-feature mean and std over (a seeded sample of) ``dataset``'s items: call it on the
    training part only. ``logmel`` gets one value per (channel, mel band), vectors one per
    dimension; images (crops) and text are left as they are. Windows without video are left out
    of the visual statistics."""
    rng = np.random.default_rng(seed)
    ks = np.arange(len(dataset))
    if len(ks) > max_items:
        ks = np.sort(rng.choice(ks, max_items, replace=False))
    items = dataset.__getitems__(list(ks))
    stats = {}
    for name in dataset.features:
        if name not in features or name not in items[0]:
            continue
        if dataset.mode != "window" and FEATURES[name][0] == "window":
            x = np.concatenate([it[name][it["video_ok"]] if name in VISUAL else it[name] for it in items])
        elif name in VISUAL:
            x = np.stack([it[name] for it in items if it["video_ok"]] or [items[0][name]])
        else:
            ragged = FEATURES[name][0] == "clip" and name not in CLIP_ROWS   # per-patch rows (VGGish): pooled
            x = np.concatenate([it[name] for it in items]) if ragged else np.stack([it[name] for it in items])
        if name == "logmel":   # x: (n, 3, n_mels, n_frames): statistics per channel and band
            axes = (0, 3)
        else:                  # (n, ..., dim): per dimension
            axes = tuple(range(x.ndim - 1))
        mean = x.mean(axis=axes, keepdims=True)[0]
        std = x.std(axis=axes, keepdims=True)[0]
        stats[name] = (mean.astype(np.float32), np.maximum(std, 1e-5).astype(np.float32))
    return stats
