"""``data_manifest.yaml``: the corpora, validated on load.

Each dataset names a ``root`` (a path, relative to the manifest's folder, or an environment
variable such as ``${BAUM1_ROOT}``), a ``clips`` glob under the root, a ``labels`` CSV with the
columns ``clip_id,label,speaker`` (optional ``transcript,valence,arousal,partition``), the
``label_set``, the ``protocol`` and the source facts (``sr``, ``fps``, ``speakers``). The labels CSV
defines the clips: a row whose file is missing becomes a clip with status ``missing_file``; a file
with no row is not part of the dataset.

Optional ``continuous_labels`` (issue 18 item 3, Lucas §3: RECOLA is annotated every 40 ms): a CSV
under the root with the columns ``clip_id,time,valence,arousal``, one row per clip and time point,
``time`` in seconds from the start of the clip (any step, not necessarily regular), the rows of a
clip in increasing time, at least two per clip; every ``clip_id`` must be a clip of the labels CSV
(a clip with no row has no series). ``Dataset.continuous_series`` reads it (cached by mtime);
``features.labels`` says how a series becomes each window's target.

Optional ``segment_labels`` (issue 18 item 7, Hsu & Wu §II: "each segment in the BAUM-1 database
needs to be re-labeled for each modality (Audio or Visual)", and the sound types "laugh, breath,
shout, silence and verbal"): a CSV under the root with the columns ``clip_id,t_begin,t_end`` and at
least one of ``label`` (the audio-visual label of the segment), ``audio_label`` (audio only),
``visual_label`` (visual only), ``sound_type``; one row per annotated segment, ``t_begin`` <
``t_end`` in seconds from the start of the clip, a clip's rows in increasing time and not
overlapping. Labels are names of the ``label_set``, sound types one of ``SOUND_TYPES``; an empty
cell means "not annotated". Segments are given by time, not by unit index: an index would silently
point at another unit after a rebuild with other Prosody parameters, while times keep their
meaning (annotators mark times; a list of the store's units to annotate comes from ``/units``).
Each prosodic unit of the shard takes the row that overlaps it most, when that overlap covers at
least half the unit (``features.labels.unit_rows``); other units have no segment label (``""``).

Both files come from people, so they are bounded (DESIGN "Trust", issue 19 items 8 and 10): the
manifest's size, nesting and alias expansion, the labels CSV's size and fields; every error is one
``ManifestError`` line naming the file, the line and the field, quoting values cut by ``shown``.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import glob
import hashlib
import io
import json
import os
import re
import reprlib

import numpy as np
import yaml

from features.hashing import sha256_file
from features.labels import SEGMENT_LABEL_COLUMNS, SOUND_TYPES

PROTOCOLS = ("loso", "logso", "kfold", "fixed")
REQUIRED_COLUMNS = ("clip_id", "label", "speaker")
OPTIONAL_COLUMNS = ("transcript", "valence", "arousal", "partition")
_CLIP_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # whole string (fullmatch): no trailing newline
_DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # a folder name in the store
MAX_MANIFEST_BYTES = 256 << 10  # a manifest is a few kB; bounded inputs (DESIGN "Trust")
MAX_LABELS_BYTES = 64 << 20  # a labels CSV of 100,000 clips is a few MB
MAX_YAML_NODES = 10_000  # YAML nodes once aliases are expanded (the repository's manifest: ~200)
MAX_YAML_DEPTH = 20  # nesting levels (a manifest needs 5)
MAX_SHOWN = 200  # characters of a value quoted in an error
MAX_PATH = 4096  # characters of the root, clips and labels fields (PATH_MAX)
CONTINUOUS_COLUMNS = ("clip_id", "time", "valence", "arousal")
SEGMENT_COLUMNS = ("clip_id", "t_begin", "t_end")
#: Hsu & Wu §II, in this order (the sound-type CNN's classes, ``models.aclstm``)


class ManifestError(ValueError):
    """The manifest or a labels CSV breaks a rule; the message (one line) names the file, the line
    where known, the dataset and the field."""


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 3, 10, 10, MAX_SHOWN, MAX_SHOWN


def shown(value) -> str:
    """``repr(value)`` cut to about ``MAX_SHOWN`` characters, for error messages (issue 19 item 8:
    the error of a 600-byte YAML anchor bomb printed 2.15 GB). Bounded work whatever the value:
    long strings are cut before ``repr``, nested containers by ``reprlib``."""
    if isinstance(value, str) and len(value) > MAX_SHOWN:
        return f"{value[:MAX_SHOWN]!r}... ({len(value):,} characters)"
    return _cut(_REPR.repr(value))


def _cut(text: str) -> str:
    """A message part from elsewhere (PyYAML, csv) cut like ``shown``."""
    return text if len(text) <= MAX_SHOWN else f"{text[:MAX_SHOWN]}... ({len(text):,} characters)"


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
        and finds the shards built from it in a shared remote (docs/sharing.md)."""
        if self.path is None:
            return {"id": self.id, "file": None}
        st = os.stat(self.path)
        same = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)  # hard links are one file: hashed once
        sha = _INODE_SHA256.get(same)
        if sha is None:
            sha = _INODE_SHA256[same] = file_sha256(self.path, st.st_size, st.st_mtime_ns, st.st_ino)
        return {"id": self.id, "file": os.path.basename(self.path), "size": st.st_size, "sha256": sha}


_INODE_SHA256: dict = {}  # (device, inode, size, mtime_ns) -> sha256, this process (docs/scale.md)


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
    sha = sha256_file(path)
    if cache:
        try:  # one short line per write, appended: concurrent builds cannot tear each other's lines
            os.makedirs(os.path.dirname(cache) or ".", exist_ok=True)
            with open(cache, "a", encoding="utf-8") as f:
                f.write(json.dumps({"key": key, "sha256": sha}) + "\n")
        except OSError:
            pass  # a read-only home: hash again next time
    return sha


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
    continuous_labels: str | None = None  # CSV clip_id,time,valence,arousal under the root (issue 18 item 3)
    segment_labels: str | None = None  # CSV clip_id,t_begin,t_end,label,... under the root (issue 18 item 7)

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

    def clip_tuple(self) -> tuple[Clip, ...]:
        """The clips sorted by id, as the cached (shared, immutable) tuple: no copy. While the
        labels CSV is unchanged, every call returns the same object."""
        return _list_clips(self)

    def continuous_series(self) -> dict[str, tuple] | None:
        """``{clip id: (time (n,) float64 s, valence (n,) float32, arousal (n,) float32)}`` from the
        ``continuous_labels`` file, validated (one ``ManifestError`` naming the file, the line and
        the column); ``None`` when the dataset names no such file."""
        return self._label_file("continuous_labels", _continuous_cached)

    def segment_rows(self) -> dict[str, tuple] | None:
        """``{clip id: (spans (n, 2) float64 s, {column: (n,) str})}`` from the ``segment_labels``
        file (the label columns it has), validated (one ``ManifestError`` naming the file, the line
        and the column); ``None`` when the dataset names no such file."""
        return self._label_file("segment_labels", _segments_cached)

    def _label_file(self, field: str, read):
        """``read(self, mtime, root, clip ids)`` of the per-clip labels file named by ``field``
        (cached by its mtime), or ``None`` when the dataset names none."""
        if getattr(self, field) is None:
            return None
        root = self.root_dir
        path = os.path.join(root, getattr(self, field))
        if not os.path.isfile(path):
            raise ManifestError(f"{self.manifest}: dataset {self.name!r}: field {field!r}: no such file {path}")
        return read(self, os.stat(path).st_mtime_ns, root, tuple(c.id for c in self.list_clips()))

    def segment_digest(self, ids) -> str:
        """16 hex digits of the sha256 of the segment rows of the clips ``ids``."""
        rows = self.segment_rows() or {}
        h = hashlib.sha256()
        for cid in ids:
            h.update(f"{cid}\0".encode())
            if cid in rows:
                spans, cols = rows[cid]
                h.update(np.ascontiguousarray(spans).tobytes())
                h.update(json.dumps({k: list(v) for k, v in sorted(cols.items())}).encode())
            h.update(b"\1")
        return h.hexdigest()[:16]

    def series_digest(self, ids) -> str:
        """16 hex digits of the sha256 of the series of the clips ``ids`` (for a stage's hash
        chain: a changed value of one of them changes it)."""
        series = self.continuous_series() or {}
        h = hashlib.sha256()
        for cid in ids:
            h.update(f"{cid}\0".encode())
            for a in series.get(cid, ()):
                h.update(np.ascontiguousarray(a).tobytes())
            h.update(b"\1")
        return h.hexdigest()[:16]


def inside(path: str, root: str) -> bool:
    """Whether ``path`` (symbolic links resolved) lies inside the folder ``root``."""
    real, base = os.path.realpath(path), os.path.realpath(root)
    return os.path.commonpath([real, base]) == base


def _fail(manifest, name, field, rule, got, line=None) -> None:
    at = f" line {line}:" if line else ""
    raise ManifestError(f"{manifest}:{at} dataset {shown(name)}: field {shown(field)}: {rule}, got {shown(got)}")


def _check_dataset(manifest: str, name: str, d, lines: dict | None = None) -> Dataset:
    """Validate one dataset entry; ``lines`` maps its field names (``None``: the entry) to their
    line in the manifest, which the errors name (issue 19 item 10)."""
    lines = lines or {}

    def fail(field, rule, got):
        _fail(manifest, name, field, rule, got, lines.get(str(field).split(".")[0], lines.get(None)))

    if not isinstance(d, dict):
        fail("(entry)", "must be a mapping of fields", d)
    known = {f.name for f in dataclasses.fields(Dataset)} | {"description", "citation", "notes"}
    for key in d:
        if key not in known - {"name", "manifest"}:
            fail(key, f"is not a known field ({', '.join(sorted(known - {'name', 'manifest'}))})", key)
    for field in ("root", "clips", "labels"):
        if not isinstance(d.get(field), str) or not d[field].strip() or len(d[field]) > MAX_PATH:
            fail(field, f"is required and must be a non-empty string of at most {MAX_PATH:,} characters",
                 d.get(field))
    for field in ("continuous_labels", "segment_labels"):
        if d.get(field) is not None and (not isinstance(d[field], str) or not d[field].strip() or
                                         len(d[field]) > MAX_PATH):
            fail(field, f"must be a non-empty string of at most {MAX_PATH:,} characters when given", d[field])
    for field in ("clips", "labels", "continuous_labels", "segment_labels"):
        if d.get(field) is None:
            continue
        if os.path.isabs(d[field]) or ".." in d[field].replace("\\", "/").split("/"):
            fail(field, "must be a path inside the root (no '..', not absolute)", d[field])
    labels = d.get("label_set")
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        fail("label_set", "must be a non-empty list of label names", labels)
    if len(set(labels)) != len(labels):
        fail("label_set", "must not repeat a label", labels)
    protocol = d.get("protocol")
    if isinstance(protocol, str):
        protocol = {"name": protocol}
    if not isinstance(protocol, dict) or protocol.get("name") not in PROTOCOLS:
        fail("protocol", f"must name one of {', '.join(PROTOCOLS)}", d.get("protocol"))
    if protocol["name"] == "logso" and not (isinstance(protocol.get("groups"), int) and protocol["groups"] >= 2):
        fail("protocol.groups", "LOGSO needs an integer number of speaker groups >= 2",
              protocol.get("groups"))
    if protocol["name"] == "kfold":
        if not (isinstance(protocol.get("folds"), int) and protocol["folds"] >= 2):
            fail("protocol.folds", "k-fold needs an integer number of folds >= 2", protocol.get("folds"))
        split = protocol.get("split", [8, 1, 1])
        if not (isinstance(split, list) and len(split) == 3 and all(isinstance(x, (int, float)) and x > 0 for x in split)):
            fail("protocol.split", "must be three positive numbers train:validation:test", split)
    for field, kind in (("sr", int), ("fps", (int, float)), ("speakers", int), ("video_fps", (int, float))):
        value = d.get(field)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool) or value <= 0):
            fail(field, "must be a positive number when given", value)
    return Dataset(name=name, root=d["root"], clips=d["clips"], labels=d["labels"], label_set=tuple(labels),
                   protocol=protocol, sr=d.get("sr"), fps=d.get("fps"), speakers=d.get("speakers"),
                   manifest=manifest, video_fps=d.get("video_fps"), continuous_labels=d.get("continuous_labels"),
                   segment_labels=d.get("segment_labels"))


class _Refused(yaml.MarkedYAMLError):
    """YAML that ``_BoundedLoader`` refuses; ``problem_mark`` says where."""


class _BoundedLoader(yaml.SafeLoader):
    """``SafeLoader`` that refuses, while composing, what ``safe_load`` would take too far (issue
    19 items 8 and 10): more than ``MAX_YAML_NODES`` nodes once aliases are expanded (a 600-byte
    "billion laughs" manifest took 98 s and 13.8 GB), an alias inside its own anchor, nesting
    deeper than ``MAX_YAML_DEPTH`` (a ``RecursionError``) and a key given twice in one mapping
    (the last one won, silently). Each node's expanded size is computed once from its children's,
    so refusing a bomb costs the few nodes it is written with."""

    def __init__(self, stream):
        super().__init__(stream)
        self.expanded = {}  # id(node) -> nodes it stands for, aliases expanded
        self.nodes = 0  # nodes of the document so far, aliases expanded
        self.depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        if self.depth >= MAX_YAML_DEPTH:
            raise _Refused(problem=f"nested deeper than {MAX_YAML_DEPTH} levels", problem_mark=event.start_mark)
        self.depth += 1
        node = super().compose_node(parent, index)
        self.depth -= 1
        if isinstance(event, yaml.AliasEvent):
            if id(node) not in self.expanded:
                raise _Refused(problem=f"alias *{shown(event.anchor)[1:-1]} is used inside its own anchor",
                               problem_mark=event.start_mark)
            self.nodes += self.expanded[id(node)]
        else:
            children = node.value if isinstance(node, yaml.SequenceNode) else (
                [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else [])
            self.expanded[id(node)] = 1 + sum(self.expanded[id(n)] for n in children)
            self.nodes += 1
        if self.nodes > MAX_YAML_NODES:
            raise _Refused(problem=f"refused: more than {MAX_YAML_NODES:,} YAML nodes once aliases are expanded "
                                   f"(an anchor bomb?); write the values out", problem_mark=event.start_mark)
        return node

    def compose_mapping_node(self, anchor):
        node = super().compose_mapping_node(anchor)
        first = {}
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                if (key.tag, key.value) in first:
                    raise _Refused(problem=f"key {shown(key.value)} appears twice in one mapping (first on line "
                                           f"{first[key.tag, key.value] + 1}); keep one", problem_mark=key.start_mark)
                first[key.tag, key.value] = key.start_mark.line
        return node


def _decode(data: bytes, where: str) -> str:
    """UTF-8 text (a byte-order mark is dropped); a byte that is not UTF-8 is an error naming its
    line (issue 19 item 10: a bare ``UnicodeDecodeError``)."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ManifestError(f"{where}: line {line}: byte 0x{data[err.start]:02x} is not UTF-8; "
                            f"save the file as UTF-8") from None


def _read_bounded(path: str, limit: int, where: str) -> str:
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ManifestError(f"{where}: larger than {limit:,} bytes; is it the right file?")
    return _decode(data, where)


def _parse_yaml(path: str, text: str):
    """The document and its root node (for line numbers), through ``_BoundedLoader``; every YAML
    error becomes a one-line ``ManifestError`` naming the file and line."""
    try:
        loader = _BoundedLoader(text)  # checks that every character may appear in YAML
        try:
            node = loader.get_single_node()
            return (loader.construct_document(node) if node is not None else None), node
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        what = err.problem if isinstance(err, _Refused) else \
            "not valid YAML: " + _cut("; ".join(x for x in (err.context, err.problem) if x))
        at = f" line {mark.line + 1}, column {mark.column + 1}:" if mark else ""
        raise ManifestError(f"{path}:{at} {what}") from None
    except yaml.reader.ReaderError as err:
        line = text.count("\n", 0, err.position) + 1
        raise ManifestError(f"{path}: line {line}: not valid YAML: character {shown(chr(err.character))} "
                            f"is not allowed") from None
    except yaml.YAMLError as err:
        raise ManifestError(f"{path}: not valid YAML: {_cut(str(err))}") from None


def _lines(node) -> dict:
    """``{dataset: {field or None: line}}`` from the manifest's root node."""
    def pairs(node):
        scalar_keys = node.value if isinstance(node, yaml.MappingNode) else []
        return [(k, v) for k, v in scalar_keys if isinstance(k, yaml.ScalarNode)]

    out = {}
    for key, value in pairs(node):
        if key.value == "datasets":
            for name, entry in pairs(value):
                out[name.value] = {None: name.start_mark.line + 1,
                                   **{f.value: f.start_mark.line + 1 for f, _ in pairs(entry)}}
    return out


@functools.lru_cache(maxsize=8)
def _load(path: str, mtime_ns: int) -> dict[str, Dataset]:
    doc, node = _parse_yaml(path, _read_bounded(path, MAX_MANIFEST_BYTES, path))
    if not isinstance(doc, dict) or not isinstance(doc.get("datasets"), dict) or not doc["datasets"]:
        raise ManifestError(f"{path}: must be a mapping with a non-empty 'datasets:' mapping")
    lines, out = _lines(node), {}
    for name, entry in doc["datasets"].items():
        where = lines.get(str(name), {})
        if not isinstance(name, str) or not _DATASET_NAME.fullmatch(name):
            raise ManifestError(f"{path}: line {where.get(None, '?')}: dataset name {shown(name)} must be 1 to 64 "
                                f"letters, digits, '.', '_' or '-', starting with a letter or digit")
        out[name] = _check_dataset(path, name, entry, where)
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
        raise ManifestError(f"{path}: no dataset {shown(name)}; the manifest has {_cut(', '.join(sorted(datasets)))}")
    return datasets[name]


def _clip_files(ds: Dataset, root: str) -> dict[str, list[str]]:
    """The files the ``clips`` glob matches, by clip id (file name without its extension)."""
    files, dirs = {}, {}
    for p in glob.glob(os.path.join(root, ds.clips), recursive=True):
        if os.path.isfile(p):
            folder = os.path.dirname(p)
            if folder not in dirs:  # one realpath per folder, not per file (docs/scale.md: 100,000 clips)
                dirs[folder] = inside(folder, root)
            if not (dirs[folder] and not os.path.islink(p)) and not inside(p, root):  # a link out of the corpus
                raise ManifestError(f"{ds.manifest}: dataset {ds.name!r}: field 'clips': {p} leads to "
                                    f"{os.path.realpath(p)}, outside the root {root}; copy the file "
                                    f"into the root or make the root a folder that holds it")
            files.setdefault(os.path.splitext(os.path.basename(p))[0], []).append(os.path.abspath(p))
    return files


def _label_rows(labels_path: str, where: str, required: tuple = REQUIRED_COLUMNS):
    """``(line, row)`` of the labels CSV, read as UTF-8 with or without a byte-order mark (issue 19
    item 10: a BOM made ``clip_id`` "missing"); a byte that is not UTF-8, a field over the csv
    module's limit (131,072 characters) or a file over ``MAX_LABELS_BYTES`` is an error naming the
    line. ``line`` is where the row starts."""
    reader = csv.DictReader(io.StringIO(_read_bounded(labels_path, MAX_LABELS_BYTES, where), newline=""))
    line = 1
    try:
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise ManifestError(f"{where}: line 1: missing column(s) {', '.join(missing)}; need "
                                f"{','.join(required)}, the header is {shown(reader.fieldnames)}")
        line = reader.line_num + 1
        for row in reader:
            yield line, row
            line = reader.line_num + 1
    except csv.Error as err:
        raise ManifestError(f"{where}: line {line}: not a valid CSV row: {_cut(str(err))} "
                            f"(a quote left open?)") from None


@functools.lru_cache(maxsize=8)
def _list_clips_cached(ds: Dataset, labels_mtime: int, root: str) -> tuple[Clip, ...]:
    files = _clip_files(ds, root)
    labels_path = os.path.join(root, ds.labels)
    where = f"{ds.manifest}: dataset {ds.name!r}: field 'labels' ({labels_path})"
    if not inside(labels_path, root):
        raise ManifestError(f"{where}: leads to {os.path.realpath(labels_path)}, outside the root {root}")
    clips, seen = [], set()
    for line, row in _label_rows(labels_path, where):
        cid = (row["clip_id"] or "").strip()
        if not _CLIP_ID.fullmatch(cid):
            raise ManifestError(f"{where}: line {line}: clip_id {shown(cid)} must be letters, digits, "
                                f"'.', '_' or '-' (no path separators)")
        if cid in seen:
            raise ManifestError(f"{where}: line {line}: clip_id {shown(cid)} appears twice")
        seen.add(cid)
        label = (row["label"] or "").strip()
        if label not in ds.label_set:
            raise ManifestError(f"{where}: line {line}: label {shown(label)} is not in label_set "
                                f"{shown(list(ds.label_set))}")
        paths = files.get(cid, [None])
        if len(paths) > 1:  # issue 19 item 10: which one was used depended on the file system
            raise ManifestError(f"{ds.manifest}: dataset {ds.name!r}: field 'clips': clip {cid!r} (labels line "
                                f"{line}) has {len(paths)} files: {' and '.join(sorted(paths)[:2])}; keep one, or "
                                f"narrow the glob (e.g. clips/*.mp4)")
        extra = tuple(sorted((c, row[c]) for c in OPTIONAL_COLUMNS if row.get(c) not in (None, "")))
        clips.append(Clip(cid, paths[0], label, (row["speaker"] or "").strip(), extra))
    return tuple(sorted(clips, key=lambda c: c.id))


def _list_clips(ds: Dataset) -> tuple[Clip, ...]:
    root = ds.root_dir
    labels_path = os.path.join(root, ds.labels)
    if not os.path.isfile(labels_path):
        raise ManifestError(f"{ds.manifest}: dataset {ds.name!r}: field 'labels': no such file {labels_path}")
    return _list_clips_cached(ds, os.stat(labels_path).st_mtime_ns, root)


def _number(row: dict, column: str, where: str, line: int, *, low: float | None = None) -> float:
    text = (row.get(column) or "").strip()
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not np.isfinite(value) or (low is not None and value < low):
        rule = f"a finite number >= {low:g}" if low is not None else "a finite number"
        raise ManifestError(f"{where}: line {line}: column {column!r}: must be {rule}, got {shown(text)}")
    return value


def _clip_rows(ds: Dataset, field: str, root: str, clip_ids: tuple, required: tuple):
    """``(where, rows)`` of a per-clip labels file named by the dataset's ``field``: the file inside
    the root, every row's ``clip_id`` a clip of the labels CSV; ``rows`` yields (line, clip_id, row)."""
    path = os.path.join(root, getattr(ds, field))
    where = f"{ds.manifest}: dataset {ds.name!r}: field {field!r} ({path})"
    if not inside(path, root):
        raise ManifestError(f"{where}: leads to {os.path.realpath(path)}, outside the root {root}")
    known = set(clip_ids)

    def rows():
        for line, row in _label_rows(path, where, required):
            cid = (row["clip_id"] or "").strip()
            if cid not in known:
                what = "is not a clip of the labels CSV" if _CLIP_ID.fullmatch(cid) else \
                    "must be letters, digits, '.', '_' or '-' (no path separators)"
                raise ManifestError(f"{where}: line {line}: column 'clip_id': {shown(cid)} {what} ({ds.labels})")
            yield line, cid, row
    return where, rows()


@functools.lru_cache(maxsize=4)
def _continuous_cached(ds: Dataset, mtime: int, root: str, clip_ids: tuple) -> dict[str, tuple]:
    """The ``continuous_labels`` file read and checked (module docstring); errors name the line."""
    where, lines = _clip_rows(ds, "continuous_labels", root, clip_ids, CONTINUOUS_COLUMNS)
    rows: dict[str, list] = {}
    first: dict[str, int] = {}
    for line, cid, row in lines:
        t = _number(row, "time", where, line, low=0.0)
        if cid in rows and t <= rows[cid][-1][0]:
            raise ManifestError(f"{where}: line {line}: column 'time': {t:g} s is not after the previous time "
                                f"{rows[cid][-1][0]:g} s of clip {cid!r}; give a clip's rows in increasing time, "
                                f"each time once")
        rows.setdefault(cid, []).append((t, _number(row, "valence", where, line),
                                         _number(row, "arousal", where, line)))
        first.setdefault(cid, line)
    out = {}
    for cid, values in rows.items():
        if len(values) < 2:
            raise ManifestError(f"{where}: line {first[cid]}: column 'time': clip {cid!r} has one time point; "
                                f"a time-continuous series needs at least two")
        a = np.asarray(values, dtype=np.float64)
        out[cid] = (a[:, 0], a[:, 1].astype(np.float32), a[:, 2].astype(np.float32))
    return out


@functools.lru_cache(maxsize=4)
def _segments_cached(ds: Dataset, mtime: int, root: str, clip_ids: tuple) -> dict[str, tuple]:
    """The ``segment_labels`` file read and checked (module docstring); errors name the line and column."""
    where, lines = _clip_rows(ds, "segment_labels", root, clip_ids, SEGMENT_COLUMNS)
    rows: dict[str, list] = {}
    columns = None
    for line, cid, row in lines:
        if columns is None:
            columns = [c for c in SEGMENT_LABEL_COLUMNS if c in row]
            if not columns:
                raise ManifestError(f"{where}: line 1: no label column; give at least one of "
                                    f"{', '.join(SEGMENT_LABEL_COLUMNS)}, the header is {shown(list(row))}")
        t0 = _number(row, "t_begin", where, line, low=0.0)
        t1 = _number(row, "t_end", where, line, low=0.0)
        if t1 <= t0:
            raise ManifestError(f"{where}: line {line}: column 't_end': {t1:g} s must be after t_begin {t0:g} s")
        if cid in rows and t0 < rows[cid][-1][1] - 1e-6:
            raise ManifestError(f"{where}: line {line}: column 't_begin': {t0:g} s is before the end "
                                f"{rows[cid][-1][1]:g} s of the previous segment of clip {cid!r}; give a "
                                f"clip's segments in increasing time, not overlapping")
        values = []
        for c in columns:
            v = (row.get(c) or "").strip()
            allowed = SOUND_TYPES if c == "sound_type" else ds.label_set
            if v and v not in allowed:
                raise ManifestError(f"{where}: line {line}: column {c!r}: {shown(v)} is not one of "
                                    f"{shown(list(allowed))} (leave it empty when not annotated)")
            values.append(v)
        rows.setdefault(cid, []).append((t0, t1, values))
    out = {}
    for cid, values in rows.items():
        spans = np.asarray([(a, b) for a, b, _ in values], dtype=np.float64)
        out[cid] = (spans, {c: np.asarray([v[2][j] for v in values], dtype=object) for j, c in enumerate(columns)})
    return out
