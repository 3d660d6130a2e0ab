"""``data_manifest.yaml``: the corpora, validated on load.

Each dataset names a ``root`` (a path, relative to the manifest's folder, or an environment
variable such as ``${BAUM1_ROOT}``), a ``clips`` glob under the root, a ``labels`` CSV with the
columns ``clip_id,label,speaker`` (optional ``transcript,valence,arousal,partition``), the
``label_set``, the ``protocol`` and the source facts (``sr``, ``fps``, ``speakers``). The labels CSV
defines the clips: a row whose file is missing becomes a clip with status ``missing_file``; a file
with no row is not part of the dataset.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import glob
import hashlib
import json
import os
import re

import yaml

PROTOCOLS = ("loso", "logso", "kfold", "fixed")
REQUIRED_COLUMNS = ("clip_id", "label", "speaker")
OPTIONAL_COLUMNS = ("transcript", "valence", "arousal", "partition")
_CLIP_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ManifestError(ValueError):
    """The manifest or a labels CSV breaks a rule; the message names the dataset and field."""


@dataclasses.dataclass(frozen=True)
class Clip:
    id: str
    path: str | None  # absolute path, None when no file matches
    label: str
    speaker: str
    extra: tuple = ()  # sorted (column, value) pairs of the optional columns

    def identity(self) -> dict:
        """What makes this clip's source unique (hashed into the Decode stage): its content
        (sha256), not its mtime, so that a teammate's copy of the corpus has the same hash chain
        and finds the shards built from it in a shared remote (README "Sharing shards")."""
        if self.path is None:
            return {"id": self.id, "file": None}
        st = os.stat(self.path)
        return {"id": self.id, "file": os.path.basename(self.path), "size": st.st_size,
                "sha256": file_sha256(self.path, st.st_size, st.st_mtime_ns, st.st_ino)}


def _hash_cache_path() -> str:
    """``$AV_STORE_HASH_CACHE`` (empty: no cache file), else ``~/.cache/av-emotion-store/sha256.jsonl``."""
    if "AV_STORE_HASH_CACHE" in os.environ:
        return os.environ["AV_STORE_HASH_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "av-emotion-store", "sha256.jsonl")


@functools.lru_cache(maxsize=1)
def _known_hashes(path: str) -> dict:
    known = {}
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                    known[row["key"]] = row["sha256"]
                except (ValueError, KeyError, TypeError):
                    continue  # a torn or foreign line: that file is hashed again
    except OSError:
        pass
    return known


@functools.lru_cache(maxsize=100_000)
def file_sha256(path: str, size: int, mtime_ns: int, inode: int = 0) -> str:
    """sha256 of a file's content. Hashing a corpus takes seconds per GB, so the result is kept
    per process and in a small cache file (``_hash_cache_path``; one JSON line per file, appended)
    keyed by (real path, size, mtime, inode), the facts ``make`` and ``rsync`` trust too: a file
    rewritten in place with the same size and mtime would keep its old hash."""
    key = f"{os.path.realpath(path)}|{size}|{mtime_ns}|{inode}"
    cache = _hash_cache_path()
    if cache and key in _known_hashes(cache):
        return _known_hashes(cache)[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    if cache:
        try:  # one short line per write, appended: concurrent builds cannot tear each other's lines
            os.makedirs(os.path.dirname(cache) or ".", exist_ok=True)
            with open(cache, "a", encoding="utf-8") as f:
                f.write(json.dumps({"key": key, "sha256": h.hexdigest()}) + "\n")
        except OSError:
            pass  # a read-only home: hash again next time
    return h.hexdigest()


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: one object per loaded manifest
class Dataset:
    name: str
    root: str
    clips: str
    labels: str
    label_set: tuple
    protocol: dict
    sr: int | None
    fps: float | None
    speakers: int | None
    manifest: str
    video_fps: float | None = None  # frame rate to use instead of the video stream's own

    @property
    def root_dir(self) -> str:
        root = os.path.expandvars(self.root)
        missing = re.findall(r"\$\{?(\w+)", root)
        if missing:
            raise ManifestError(f"{self.manifest}: dataset {self.name!r}: field 'root': environment "
                                f"variable {missing[0]} is not set (export {missing[0]}=/path/to/{self.name})")
        root = os.path.join(os.path.dirname(os.path.abspath(self.manifest)), root)
        if not os.path.isdir(root):
            raise ManifestError(f"{self.manifest}: dataset {self.name!r}: field 'root': no such folder {root}")
        return os.path.normpath(root)

    def list_clips(self) -> list[Clip]:
        return list(_list_clips(self))


def inside(path: str, root: str) -> bool:
    """Whether ``path`` (symbolic links resolved) lies inside the folder ``root``."""
    real, base = os.path.realpath(path), os.path.realpath(root)
    return os.path.commonpath([real, base]) == base


def _fail(manifest, name, field, rule, got) -> None:
    raise ManifestError(f"{manifest}: dataset {name!r}: field {field!r}: {rule}, got {got!r}")


def _check_dataset(manifest: str, name: str, d) -> Dataset:
    if not isinstance(d, dict):
        _fail(manifest, name, "(entry)", "must be a mapping of fields", d)
    known = {f.name for f in dataclasses.fields(Dataset)} | {"description", "citation", "notes"}
    for key in d:
        if key not in known - {"name", "manifest"}:
            _fail(manifest, name, key, f"is not a known field ({', '.join(sorted(known - {'name', 'manifest'}))})", key)
    for field in ("root", "clips", "labels"):
        if not isinstance(d.get(field), str) or not d[field].strip():
            _fail(manifest, name, field, "is required and must be a non-empty string", d.get(field))
    for field in ("clips", "labels"):
        if os.path.isabs(d[field]) or ".." in d[field].replace("\\", "/").split("/"):
            _fail(manifest, name, field, "must be a path inside the root (no '..', not absolute)", d[field])
    labels = d.get("label_set")
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        _fail(manifest, name, "label_set", "must be a non-empty list of label names", labels)
    if len(set(labels)) != len(labels):
        _fail(manifest, name, "label_set", "must not repeat a label", labels)
    protocol = d.get("protocol")
    if isinstance(protocol, str):
        protocol = {"name": protocol}
    if not isinstance(protocol, dict) or protocol.get("name") not in PROTOCOLS:
        _fail(manifest, name, "protocol", f"must name one of {', '.join(PROTOCOLS)}", d.get("protocol"))
    if protocol["name"] == "logso" and not (isinstance(protocol.get("groups"), int) and protocol["groups"] >= 2):
        _fail(manifest, name, "protocol.groups", "LOGSO needs an integer number of speaker groups >= 2",
              protocol.get("groups"))
    if protocol["name"] == "kfold":
        if not (isinstance(protocol.get("folds"), int) and protocol["folds"] >= 2):
            _fail(manifest, name, "protocol.folds", "k-fold needs an integer number of folds >= 2", protocol.get("folds"))
        split = protocol.get("split", [8, 1, 1])
        if not (isinstance(split, list) and len(split) == 3 and all(isinstance(x, (int, float)) and x > 0 for x in split)):
            _fail(manifest, name, "protocol.split", "must be three positive numbers train:validation:test", split)
    for field, kind in (("sr", int), ("fps", (int, float)), ("speakers", int), ("video_fps", (int, float))):
        value = d.get(field)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool) or value <= 0):
            _fail(manifest, name, field, "must be a positive number when given", value)
    return Dataset(name=name, root=d["root"], clips=d["clips"], labels=d["labels"], label_set=tuple(labels),
                   protocol=protocol, sr=d.get("sr"), fps=d.get("fps"), speakers=d.get("speakers"),
                   manifest=manifest, video_fps=d.get("video_fps"))


@functools.lru_cache(maxsize=8)
def _load(path: str, mtime_ns: int) -> dict[str, Dataset]:
    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except yaml.YAMLError as err:
        raise ManifestError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("datasets"), dict) or not doc["datasets"]:
        raise ManifestError(f"{path}: must be a mapping with a non-empty 'datasets:' mapping")
    out = {}
    for name, entry in doc["datasets"].items():
        if not isinstance(name, str) or not _CLIP_ID.match(name):
            raise ManifestError(f"{path}: dataset name {name!r} must be letters, digits, '.', '_' or '-'")
        out[name] = _check_dataset(path, name, entry)
    return out


def load_manifest(path: str | os.PathLike) -> dict[str, Dataset]:
    """Read and validate a manifest; raises ``ManifestError`` naming the dataset and field."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(path):
        raise ManifestError(f"manifest not found: {path} (set [paths] manifest in workflows.cfg "
                            f"or pass --manifest PATH)")
    return _load(path, os.stat(path).st_mtime_ns)


def get_dataset(path: str | os.PathLike, name: str) -> Dataset:
    datasets = load_manifest(path)
    if name not in datasets:
        raise ManifestError(f"{path}: no dataset {name!r}; the manifest has {', '.join(sorted(datasets))}")
    return datasets[name]


@functools.lru_cache(maxsize=8)
def _list_clips_cached(ds: Dataset, labels_mtime: int, root: str) -> tuple[Clip, ...]:
    files = {}
    for p in glob.glob(os.path.join(root, ds.clips), recursive=True):
        if os.path.isfile(p):
            if not inside(p, root):  # a symbolic link out of the corpus
                raise ManifestError(f"{ds.manifest}: dataset {ds.name!r}: field 'clips': {p} leads to "
                                    f"{os.path.realpath(p)}, outside the root {root}; copy the file "
                                    f"into the root or make the root a folder that holds it")
            files.setdefault(os.path.splitext(os.path.basename(p))[0], os.path.abspath(p))
    labels_path = os.path.join(root, ds.labels)
    where = f"{ds.manifest}: dataset {ds.name!r}: field 'labels' ({labels_path})"
    if not inside(labels_path, root):
        raise ManifestError(f"{where}: leads to {os.path.realpath(labels_path)}, outside the root {root}")
    with open(labels_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ManifestError(f"{where}: missing column(s) {', '.join(missing)}; "
                                f"need {','.join(REQUIRED_COLUMNS)}")
        clips, seen = [], set()
        for line, row in enumerate(reader, start=2):
            cid = (row["clip_id"] or "").strip()
            if not _CLIP_ID.match(cid):
                raise ManifestError(f"{where}: line {line}: clip_id {cid!r} must be letters, digits, "
                                    f"'.', '_' or '-' (no path separators)")
            if cid in seen:
                raise ManifestError(f"{where}: line {line}: clip_id {cid!r} appears twice")
            seen.add(cid)
            label = (row["label"] or "").strip()
            if label not in ds.label_set:
                raise ManifestError(f"{where}: line {line}: label {label!r} is not in label_set "
                                    f"{list(ds.label_set)}")
            extra = tuple(sorted((c, row[c]) for c in OPTIONAL_COLUMNS if row.get(c) not in (None, "")))
            clips.append(Clip(cid, files.get(cid), label, (row["speaker"] or "").strip(), extra))
    return tuple(sorted(clips, key=lambda c: c.id))


def _list_clips(ds: Dataset) -> tuple[Clip, ...]:
    root = ds.root_dir
    labels_path = os.path.join(root, ds.labels)
    if not os.path.isfile(labels_path):
        raise ManifestError(f"{ds.manifest}: dataset {ds.name!r}: field 'labels': no such file {labels_path}")
    return _list_clips_cached(ds, os.stat(labels_path).st_mtime_ns, root)
