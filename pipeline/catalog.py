"""The catalog of a store: datasets, feature sets, shards, sha256 (the ``avstore`` command line is ``pipeline.cli``).

A *feature set* is one build of a dataset: the shards that ``BuildShards`` joined under one
configuration, recorded in ``store/<dataset>/builds/<key>.json`` (``key`` = digest of the shards'
hash-chain digests, so the same configuration on the same clips gives the same key on every
machine). ``BuildShards`` writes into that record, besides the summary, what the catalog needs
(``build_facts``): the sha256 and size of every shard, the configuration of every stage, the
stage digests and code versions, who built it (``user@host``, from the environment; never a
credential) and when. ``verify`` recomputes the sha256 of every recorded shard and of every
stage output (against the sha256 its ``stage.json`` records), and names shards that no build
record names and datasets whose build records are missing (issue 19 item 4).

::

    avstore catalog [--dataset demo] [--json]      # datasets, feature sets, shards, sizes, clips, builder
    avstore verify  [--dataset demo]               # exit 1 and the file's name when a byte changed
    avstore diff KEY_A KEY_B                       # the configuration difference of two feature sets
    avstore push --dataset demo [--build KEY] [--remote URL]
    avstore pull --dataset demo [--build KEY] [--remote URL]
    avstore export --dataset demo [--build KEY] --codec gzip --out DIR [--exclude video/crop ...]
                                                   # a copy any h5py reads, no hdf5plugin (pipeline.export)
    avstore report --dataset demo [--build KEY] --out DIR   # DIR/index.html: plots, worst clips (pipeline.report)
    avstore gc [--dataset demo] [--keep-builds KEY...|--keep-newest N] [--drop-intermediates] [--dry-run]
                                                   # remove what no kept build references (pipeline.gc)

Records are JSON; nothing here (or in ``pipeline.remote``) is ever unpickled.
"""
from __future__ import annotations

import datetime
import getpass
import glob
import json
import os
import platform

from pipeline.files import file_facts, file_problem

RECORD_FORMAT = 1


def builder() -> str:
    """``user@host`` from the environment (the login name, not a credential)."""
    return f"{getpass.getuser()}@{platform.node()}"


def build_facts(store: str, shard_paths: list[str]) -> dict:
    """What a build record holds besides the summary: every shard's sha256, size and mtime (keyed
    by its path relative to the store), the configuration of the first shard (all shards of a
    build share it), the builder and the time."""
    from features.store import read_attrs

    files = {os.path.relpath(path, store).replace(os.sep, "/"): file_facts(path) for path in shard_paths}
    attrs = read_attrs(shard_paths[0]) if shard_paths else {}
    return {"record_format": RECORD_FORMAT, "dataset": attrs.get("dataset"), "files": files,
            "config": attrs.get("config", {}), "stages": attrs.get("stages", {}),
            "code_versions": {**attrs.get("code_versions", {}),
                              "shards": attrs.get("chain", {}).get("code_version")},
            "builder": builder(),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def record_problems(store: str, record: dict, *, trust_stat: bool = False) -> list[tuple[str, str]]:
    """[(shard, problem)] of one build record's shards (``file_problem``)."""
    return [(rel, why) for rel, meta in sorted(record.get("files", {}).items())
            if (why := file_problem(os.path.join(store, rel), meta, trust_stat=trust_stat))]


# -- reading the store ------------------------------------------------------------------------------
def datasets(store: str) -> list[str]:
    return sorted(d for d in os.listdir(store) if os.path.isdir(os.path.join(store, d, "builds"))
                  or os.path.isdir(os.path.join(store, d, "shards"))) if os.path.isdir(store) else []


def records(store: str, dataset: str) -> dict[str, dict]:
    """{key: build record} of one dataset (records that are not valid JSON are reported, not read)."""
    out = {}
    for path in sorted(glob.glob(os.path.join(store, dataset, "builds", "*.json"))):
        key = os.path.basename(path)[:-5]
        try:
            with open(path, encoding="utf-8") as f:
                out[key] = json.load(f)
        except (OSError, ValueError) as err:
            out[key] = {"error": f"unreadable build record {path}: {err}"}
    return out


def shard_files(store: str, dataset: str) -> list[str]:
    """Every shard of a dataset on disk (relative to the store); temporary files never match."""
    found = glob.glob(os.path.join(store, dataset, "shards", "*", "shard-*.h5"))
    return sorted(os.path.relpath(p, store).replace(os.sep, "/") for p in found)


def catalog(store: str, dataset: str | None = None) -> dict:
    """{dataset: {"feature_sets": [...], "unrecorded_shards": [...]}} (JSON-able)."""
    out = {}
    for ds in [dataset] if dataset else datasets(store):
        sets, recorded = [], set()
        for key, rec in records(store, ds).items():
            files = rec.get("files", {})
            recorded.update(files)
            sets.append({"key": key, "created": rec.get("created"), "builder": rec.get("builder"),
                         "clips_ok": rec.get("clips_ok"), "clips_failed": rec.get("clips_failed", {}),
                         "windows": rec.get("windows"), "bytes": sum(f["bytes"] for f in files.values()),
                         "shards": [{"path": rel, **meta, "present": os.path.isfile(os.path.join(store, rel))}
                                    for rel, meta in sorted(files.items())],
                         "export": rec.get("export"), "error": rec.get("error")})
        sets.sort(key=lambda s: s.get("created") or "")
        out[ds] = {"feature_sets": sets,
                   "unrecorded_shards": [p for p in shard_files(store, ds) if p not in recorded]}
    return out


def stage_outputs(store: str, dataset: str) -> dict[str, dict | None]:
    """{output: its record in stage.json, or None} for every stage output of a dataset on disk
    (``<stage>/<digest>/*.h5``, shards included; paths relative to the store)."""
    out = {}
    for folder in sorted(glob.glob(os.path.join(store, dataset, "*", "[0-9a-f]*"))):
        try:
            with open(os.path.join(folder, "stage.json"), encoding="utf-8") as f:
                files = json.load(f).get("files", {})
        except (OSError, ValueError, AttributeError):
            files = {}
        for path in sorted(glob.glob(os.path.join(folder, "*.h5"))):
            meta = files.get(os.path.basename(path))
            out[os.path.relpath(path, store).replace(os.sep, "/")] = meta if isinstance(meta, dict) else None
    return out


def verify(store: str, dataset: str | None = None) -> list[tuple[str, str]]:
    """[(file, problem)] (issue 19 item 4): every shard a build record names (sha256 or size
    differs, or the file is gone), every stage output against the sha256 in its ``stage.json``
    (or none recorded), shards that no build record names, and a dataset with shards but no
    build record."""
    problems = []
    for ds in [dataset] if dataset else datasets(store):
        recorded = {}  # shard -> the sha256 a build record gives it
        for key, rec in records(store, ds).items():
            if "error" in rec:
                problems.append((f"{ds}/builds/{key}.json", rec["error"]))
                continue
            if "files" not in rec:
                problems.append((f"{ds}/builds/{key}.json", "no sha256 recorded (built before the "
                                 "catalog existed): rebuild or delete the record"))
            recorded.update({rel: meta.get("sha256") for rel, meta in rec.get("files", {}).items()})
            problems += record_problems(store, rec)
        on_disk = shard_files(store, ds)
        if on_disk and not recorded:
            problems.append((f"{ds}/builds", f"no build record for the {len(on_disk)} shard(s) of {ds}: "
                             f"run BuildShards --dataset {ds} to record them"))
        else:
            problems += [(rel, "no build record names this shard (an unfinished build?): run BuildShards "
                          "to record it, or delete it") for rel in on_disk if rel not in recorded]
        for rel, meta in stage_outputs(store, ds).items():
            if meta is not None and recorded.get(rel) == meta.get("sha256"):
                continue  # a shard whose bytes the build record's check has just read
            why = ("no sha256 recorded for it in stage.json: rerun the build to compute it again" if meta is None
                   else file_problem(os.path.join(store, rel), meta))
            if why and not any(rel == p for p, _ in problems):
                problems.append((rel, why))
    return problems


def refresh_records(store: str, dataset: str, files: dict, *, keep: str) -> list[str]:
    """Give the other build records of ``dataset`` that name one of ``files`` ({shard: facts})
    its new facts: a shard rebuilt after damage (issue 19 item 4) lies at the same hash-chain
    path and holds the same data, with new bytes (its ``created`` time). Returns the keys."""
    from pipeline.files import atomic_path

    changed = []
    for key, rec in records(store, dataset).items():
        stale = {rel: meta for rel, meta in files.items()
                 if key != keep and rel in rec.get("files", {}) and rec["files"][rel].get("sha256") != meta["sha256"]}
        if stale:
            rec["files"].update(stale)
            with atomic_path(os.path.join(store, dataset, "builds", f"{key}.json"), replace=True) as tmp, \
                    open(tmp, "w") as f:
                json.dump(rec, f, indent=1)
            changed.append(key)
    return changed


def find_record(store: str, ref: str, dataset: str | None = None) -> tuple[str, str, dict]:
    """(dataset, key, record) of a feature set named by its key or a unique prefix of it."""
    hits = [(ds, key, rec) for ds in ([dataset] if dataset else datasets(store))
            for key, rec in records(store, ds).items() if key.startswith(ref)]
    if len(hits) != 1:
        raise LookupError(f"avstore: {len(hits)} feature sets match {ref!r} in {store} "
                          f"(see `avstore catalog`; give more digits or --dataset)")
    return hits[0]


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_diff(a: dict, b: dict) -> list[tuple[str, object, object]]:
    """[(setting, value in a, value in b)] where two build records differ in configuration,
    stage digests or code versions (``<missing>`` where one lacks the setting)."""
    fa, fb = ({**flatten(r.get("config", {}), "config."), **flatten(r.get("code_versions", {}), "code_version."),
               **flatten(r.get("stages", {}), "digest.")} for r in (a, b))
    return [(k, fa.get(k, "<missing>"), fb.get(k, "<missing>")) for k in sorted(set(fa) | set(fb))
            if fa.get(k, "<missing>") != fb.get(k, "<missing>")]


VOLATILE_ATTRS = ("created", "builder")  # when and by whom: the only attributes two builds may differ in


def same_data(a: str, b: str, ignore_attrs=VOLATILE_ATTRS) -> list[str]:
    """The differences between two HDF5 files (datasets: names, dtypes, values; attributes of
    every object except ``ignore_attrs``); [] when they hold the same data."""
    import h5py
    import numpy as np

    from features.store import open_file

    diffs = []
    with open_file(a) as fa, open_file(b) as fb:
        def visit(name, ga, gb):
            keys_a = {k for k in ga.attrs if k not in ignore_attrs}
            keys_b = {k for k in gb.attrs if k not in ignore_attrs}
            diffs.extend(f"{name}: attribute {k} only in one file" for k in sorted(keys_a ^ keys_b))
            diffs.extend(f"{name}: attribute {k} differs" for k in sorted(keys_a & keys_b)
                         if not np.array_equal(ga.attrs[k], gb.attrs[k]))
            if isinstance(ga, h5py.Dataset):
                if ga.dtype != gb.dtype or ga.shape != gb.shape or not np.array_equal(ga[()], gb[()], equal_nan=ga.dtype.kind == "f"):
                    diffs.append(f"{name}: data differs")
                return
            diffs.extend(f"{name}/{k}: only in one file" for k in sorted(set(ga) ^ set(gb)))
            for k in sorted(set(ga) & set(gb)):
                if isinstance(ga[k], h5py.Dataset) != isinstance(gb[k], h5py.Dataset):
                    diffs.append(f"{name}/{k}: a group in one file, a dataset in the other")
                else:
                    visit(f"{name.rstrip('/')}/{k}", ga[k], gb[k])
        visit("/", fa, fb)
    return diffs


# -- the command ------------------------------------------------------------------------------------
def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def format_catalog(cat: dict) -> str:
    lines = []
    for ds, entry in cat.items():
        lines.append(f"{ds}: {len(entry['feature_sets'])} feature set(s)")
        for s in entry["feature_sets"]:
            if s["error"]:
                lines.append(f"  {s['key']}  {s['error']}")
                continue
            failed = sum(s["clips_failed"].values())
            lines.append(f"  {s['key']}  {s['created']}  {s['builder']}  {len(s['shards'])} shards "
                         f"{_size(s['bytes'])}  {s['clips_ok']} clips ok, {failed} failed, {s['windows']} windows"
                         + (f"  (export: {ex['codec']}{''.join(', without ' + e for e in ex['excluded'])})"
                            if (ex := s.get("export")) else ""))
            for k, v in s["clips_failed"].items():
                lines.append(f"      failed {k}: {v}")
            for sh in s["shards"]:
                lines.append(f"    {sh['path']}  {_size(sh['bytes'])}  sha256 {sh['sha256'][:16]}"
                             + ("" if sh["present"] else "  (not here: avstore pull)"))
        for p in entry["unrecorded_shards"]:
            lines.append(f"  (no build record) {p}")
    return "\n".join(lines) if lines else "(empty store)"
