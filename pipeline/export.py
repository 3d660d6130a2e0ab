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
that stays are kept. The codecs, measured on the demo build (docs/training.md, "Portable copies"): gzip
gives the smallest files and reads ~3× slower than Blosc; lzf reads nearly as fast as Blosc.
"""
from __future__ import annotations

import datetime
import json
import os
import time

from features.errors import ParameterError
from features.store import check_exclude, compare, copy_shard, dataset_names
from pipeline.catalog import builder, find_record, record_problems, records, verify
from pipeline.files import file_facts

CODECS = ("gzip", "lzf", "none", "blosc-zstd")


class ExportError(Exception):
    """The export cannot be made (a damaged source, a bad argument) or a copy differs from its source."""


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def pick(store: str, dataset: str | None, build: str | None) -> tuple[str, str, dict]:
    """(dataset, key, record) of the feature set ``build`` (a key or unique prefix), else the newest."""
    if build:
        try:
            return find_record(store, build, dataset)
        except LookupError as err:   # none or several match
            raise ExportError(str(err).removeprefix("avstore: ")) from None
    if dataset is None:
        raise ExportError("name the feature set: --dataset D (its newest build) or --build KEY")
    recs = {k: r for k, r in records(store, dataset).items() if "error" not in r}
    if not recs:
        raise ExportError(f"no build record of dataset {dataset!r} under {store}")
    key = max(recs, key=lambda k: recs[k].get("created") or "")
    return dataset, key, recs[key]


def _write_json(path: str, doc: dict) -> None:
    from pipeline.files import atomic_path

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
    from pipeline.files import atomic_path

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
    try:
        exclude = check_exclude(exclude, set().union(*(dataset_names(os.path.join(store, r)) for r in rels)))
    except ParameterError as err:
        raise ExportError(str(err)) from None
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
