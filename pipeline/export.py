"""``avstore export``: a portable copy of one feature set (issue 23 item 5).

A training host often has torch and h5py but neither the pipeline's decoders nor hdf5plugin,
whose Blosc filter compresses the store's numeric datasets. ``export`` writes every shard of one
build again, dataset by dataset, with another codec (``gzip``, the default, and ``lzf`` are
h5py's own filters: any h5py reads them), keeping the layout: the same groups, dtypes, shapes,
chunks, fletcher32 checksums, ``crc32`` of the strings and attributes. Each exported dataset is
read back and compared with its source before the copy is published, and the copy gets a build
record of its own (same key and configuration; the new sha256 and sizes; an ``export`` entry with
the codec, the source key, the source sha256 and what was left out) and a ``stage.json`` per shard
folder, so ``avstore verify --store OUT`` and ``models.train --store OUT`` accept it; each copied
shard also says what it is in its root attribute ``export`` (JSON: codec, source key, excluded)::

    avstore export --dataset demo [--build KEY] --codec gzip --out DIR [--exclude video/crop ...]

``--exclude`` drops datasets (or groups) a model does not read, e.g. ``video/crop`` to ship only
the 72 px crops, or ``audio`` (the waveform); ``clips``, ``windows`` and the ``offsets`` of a group
that stays are kept. The codecs, measured on the demo build (README "Portable copies"): gzip
gives the smallest files and reads ~3× slower than Blosc; lzf reads nearly as fast as Blosc.
"""
from __future__ import annotations

import datetime
import json
import os
import time

import numpy as np

from features.store import CHUNK_BYTES, _Checked, _create, _driver, _filter, _h5py, _open, _read
from pipeline.catalog import builder, file_facts, find_record, record_problems, records, verify

CODECS = ("gzip", "lzf", "none", "blosc-zstd")
#: HDF5 filter ids: what each codec puts in a dataset's pipeline (besides HDF5's shuffle, 2, with
#: gzip and lzf on items wider than a byte, and fletcher32, 3)
FILTER_IDS = {"gzip": 1, "lzf": 32000, "none": None, "blosc-zstd": 32001}
KEPT = ("clips", "windows")  # groups every reader needs (and every group's offsets)


class ExportError(Exception):
    """The export cannot be made (a damaged source, a bad argument) or a copy differs from its source."""


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def pick(store: str, dataset: str | None, build: str | None) -> tuple[str, str, dict]:
    """(dataset, key, record) of the feature set ``build`` (a key or unique prefix), else the newest."""
    if build:
        return find_record(store, build, dataset)
    if dataset is None:
        raise ExportError("name the feature set: --dataset D (its newest build) or --build KEY")
    recs = {k: r for k, r in records(store, dataset).items() if "error" not in r}
    if not recs:
        raise ExportError(f"no build record of dataset {dataset!r} under {store}")
    key = max(recs, key=lambda k: recs[k].get("created") or "")
    return dataset, key, recs[key]


def _excluded(name: str, exclude) -> bool:
    return any(name == e or name.startswith(e + "/") for e in exclude)


def check_exclude(exclude, names: set[str]) -> list[str]:
    """The ``--exclude`` names, normalised; a name of no dataset or group of the build (``names``),
    or one that every reader needs (``KEPT``, ``<group>/offsets``), is an ``ExportError``."""
    out = []
    for e in exclude:
        e = e.strip("/")
        if e.split("/")[0] in KEPT or e.endswith("/offsets"):
            raise ExportError(f"--exclude {e}: every reader needs {', '.join(KEPT)} and the offsets of each group")
        if not any(_excluded(n, [e]) for n in names):
            some = sorted(n for n in names if n.split("/")[0] not in KEPT and not n.endswith("/offsets"))
            raise ExportError(f"--exclude {e}: the build has no such dataset or group; it has {', '.join(some)}")
        out.append(e)
    return sorted(set(out))


def _names(path: str) -> set[str]:
    with _open(path) as f:
        found = set()
        f.visit(found.add)
    return found


def _block(ds) -> int:
    """Rows per read: whole chunks, about 64 MiB."""
    rows = ds.chunks[0] if ds.chunks else max(1, len(ds))
    row_bytes = max(1, ds.dtype.itemsize * int(np.prod(ds.shape[1:], dtype=np.int64)))
    return rows * max(1, (256 * CHUNK_BYTES) // (rows * row_bytes))


def _copy_dataset(ds, group, name: str, codec: str, path: str):
    if ds.dtype.kind in "OS":  # strings: _read checks their crc32; the attribute is copied below
        new = _create(group, name, _read(ds), {}, checksums=False)
    elif ds.chunks is None:  # empty or contiguous: as it is
        new = group.create_dataset(name, data=_read(ds))
    else:
        new = group.create_dataset(name, shape=ds.shape, dtype=ds.dtype, chunks=ds.chunks, fletcher32=ds.fletcher32,
                                   **_filter(None if codec == "none" else codec, ds.dtype.itemsize))
        src, step = _Checked(ds, path), _block(ds)
        for start in range(0, ds.shape[0], step):
            new[start:start + step] = src[start:start + step]
    for k, v in ds.attrs.items():
        new.attrs[k] = v
    return new


def copy_shard(src: str, dst: str, *, codec: str, exclude=(), note: dict | None = None) -> None:
    """Write shard ``src`` to ``dst`` with ``codec`` on every chunked numeric dataset, without the
    ``exclude``d datasets; ``note`` goes into the root attribute ``export`` (JSON)."""
    h5py = _h5py()
    with _open(src) as f:
        nbytes = sum(obj.nbytes for obj in _objects(f) if isinstance(obj, h5py.Dataset))
        with h5py.File(dst, "w", libver=("earliest", "v110"), **_driver(nbytes)) as out:
            for k, v in f.attrs.items():
                out.attrs[k] = v
            if note is not None:
                out.attrs["export"] = json.dumps(note, sort_keys=True)
            for obj in _objects(f):
                name = obj.name.lstrip("/")
                if _excluded(name, exclude):
                    continue
                if isinstance(obj, h5py.Dataset):
                    parent, _, leaf = name.rpartition("/")
                    _copy_dataset(obj, out.require_group(parent or "/"), leaf, codec, src)
                else:
                    g = out.require_group(name)
                    for k, v in obj.attrs.items():
                        g.attrs[k] = v


def _objects(f) -> list:
    found = []
    f.visititems(lambda name, obj: found.append(obj))
    return found


def compare(src: str, dst: str, *, codec: str, exclude=()) -> list[str]:
    """The differences between shard ``src`` and its export ``dst``: names, dtypes, shapes,
    chunks, values, attributes (all but the root's ``export``), and numeric datasets whose
    filters are not ``codec`` (+ shuffle, + fletcher32 as in the source); [] when it is a copy."""
    h5py = _h5py()
    diffs = []
    with _open(src) as a, _open(dst) as b:
        want, got = ({o.name for o in _objects(x) if not _excluded(o.name.lstrip("/"), exclude)} for x in (a, b))
        diffs += [f"{n}: only in the source" for n in sorted(want - got)]
        diffs += [f"{n}: not in the source" for n in sorted(got - want)]
        for name in ["/", *sorted(want & got)]:
            x, y = a[name], b[name]
            ka, kb = (set(o.attrs) - ({"export"} if name == "/" else set()) for o in (x, y))
            diffs += [f"{name}: attribute {k} only in one file" for k in sorted(ka ^ kb)]
            diffs += [f"{name}: attribute {k} differs" for k in sorted(ka & kb)
                      if not np.array_equal(x.attrs[k], y.attrs[k])]
            if isinstance(x, h5py.Dataset):
                diffs += _dataset_diffs(x, y, codec, src, dst)
    return diffs


def _dataset_diffs(x, y, codec: str, src: str, dst: str) -> list[str]:
    if (x.dtype, x.shape, x.chunks) != (y.dtype, y.shape, y.chunks):
        return [f"{x.name}: dtype/shape/chunks {x.dtype} {x.shape} {x.chunks} -> {y.dtype} {y.shape} {y.chunks}"]
    if x.dtype.kind in "OS" or x.chunks is None:
        return [] if np.array_equal(_read(x), _read(y), equal_nan=x.dtype.kind == "f") else [f"{x.name}: values differ"]
    plist = y.id.get_create_plist()
    filters = {plist.get_filter(i)[0] for i in range(plist.get_nfilters())}
    shuffle = 2 if codec in ("gzip", "lzf") and x.dtype.itemsize > 1 else None  # Blosc shuffles inside
    expect = {FILTER_IDS[codec], shuffle} - {None}
    if filters != expect | ({3} if x.fletcher32 else set()):
        return [f"{x.name}: HDF5 filters {sorted(filters)}, expected {sorted(expect)} (+3 fletcher32 as in the source)"]
    a, b, step = _Checked(x, src), _Checked(y, dst), _block(x)
    for start in range(0, x.shape[0], step):
        if not np.array_equal(a[start:start + step], b[start:start + step], equal_nan=x.dtype.kind == "f"):
            return [f"{x.name}: values differ from row {start}"]
    return []


def _write_json(path: str, doc: dict) -> None:
    from pipeline.base import atomic_path

    with atomic_path(path, replace=True) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, sort_keys=True, default=str)


def _stage_json(src: str, dst: str, facts: dict, note: dict) -> None:
    """The copy's ``stage.json``: the source's (its chain) with the copy's sha256 and size."""
    def load(path):
        try:
            with open(os.path.join(os.path.dirname(path), "stage.json"), encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    doc = load(src) or {"stage": "shards", "digest": os.path.basename(os.path.dirname(src))}
    doc["files"] = {**load(dst).get("files", {}), os.path.basename(dst): facts}  # other shards exported here
    doc["export"] = note
    _write_json(os.path.join(os.path.dirname(dst), "stage.json"), doc)


def export(store: str, out: str, *, dataset: str | None = None, build: str | None = None, codec: str = "gzip",
           exclude=(), log=print) -> dict:
    """Export one feature set of ``store`` to the store ``out`` (module docstring); returns
    {"dataset", "key", "files", "bytes_in", "bytes_out", "seconds"}."""
    from pipeline.base import atomic_path

    if codec not in CODECS:
        raise ExportError(f"--codec {codec}: one of {', '.join(CODECS)}")
    if os.path.realpath(store) == os.path.realpath(out):
        raise ExportError(f"--out {out} is the store itself: export to another folder")
    dataset, key, rec = pick(store, dataset, build)
    if not isinstance(rec.get("files"), dict) or not rec["files"]:
        raise ExportError(f"build record {dataset}/{key} names no shards with sha256 (built before the catalog): "
                          f"rebuild it first")
    damaged = record_problems(store, rec)
    if damaged:
        raise ExportError("the source is damaged, nothing exported: " + "; ".join(f"{r}: {w}" for r, w in damaged)
                          + f" (avstore verify --dataset {dataset}, then rebuild)")
    rels = sorted(rec["files"])
    exclude = check_exclude(exclude, set().union(*(_names(os.path.join(store, r)) for r in rels)))
    note = {"codec": codec, "from": key, "excluded": exclude}
    t0, files, bytes_in = time.perf_counter(), {}, 0
    for rel in rels:
        src, dst, t = os.path.join(store, rel), os.path.join(out, rel), time.perf_counter()
        with atomic_path(dst, replace=True) as tmp:
            copy_shard(src, tmp, codec=codec, exclude=exclude, note=note)
            diffs = compare(src, tmp, codec=codec, exclude=exclude)
            if diffs:
                raise ExportError(f"the copy of {src} differs from it and was not kept: {'; '.join(diffs[:5])}")
        files[rel] = file_facts(dst)
        _stage_json(src, dst, files[rel], note)
        bytes_in += rec["files"][rel]["bytes"]
        log(f"export: {rel}  {rec['files'][rel]['bytes'] / 1e6:.1f} MB -> {files[rel]['bytes'] / 1e6:.1f} MB "
            f"{codec}, {time.perf_counter() - t:.1f} s")
    record = {**rec, "files": files, "shards": [os.path.abspath(os.path.join(out, r)) for r in rels],
              "export": {**note, "source_sha256": {r: rec["files"][r]["sha256"] for r in rels},
                         "builder": builder(), "created": _now()}}
    _write_json(os.path.join(out, dataset, "builds", f"{key}.json"), record)
    problems = verify(out, dataset)
    if problems:
        raise ExportError(f"avstore verify --store {out} fails: " + "; ".join(f"{r}: {w}" for r, w in problems[:5]))
    return {"dataset": dataset, "key": key, "files": len(files), "bytes_in": bytes_in,
            "bytes_out": sum(f["bytes"] for f in files.values()), "seconds": time.perf_counter() - t0}
