"""The catalog of a store: datasets, feature sets, shards, sha256, and the ``avstore`` command.

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

import argparse
import datetime
import getpass
import glob
import hashlib
import json
import os
import platform
import sys

RECORD_FORMAT = 1


def sha256_file(path: str, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(block), b""):
            h.update(chunk)
    return h.hexdigest()


def file_facts(path: str) -> dict:
    """What a record holds of a file: sha256, size and (this machine's) mtime in ns."""
    st = os.stat(path)
    return {"sha256": sha256_file(path), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def file_problem(path: str, meta: dict, *, trust_stat: bool = False) -> str | None:
    """What is wrong with ``path`` against its record ``meta`` (``file_facts``), or None.

    Missing, another size, or another sha256 (a flipped byte, a replaced file). With
    ``trust_stat`` a file whose size and mtime (ns) are the recorded ones is taken as unchanged
    without reading it, as make and rsync do (issue 19 item 4: a rerun with nothing to do stays
    within 5 s for 1,500 clips); any write changes the mtime and brings the sha256 back in."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "missing"
    if st.st_size != meta.get("bytes"):
        return f"size {st.st_size} bytes, recorded {meta.get('bytes')}"
    if trust_stat and st.st_mtime_ns == meta.get("mtime_ns"):
        return None
    got = sha256_file(path)
    return None if got == meta.get("sha256") else f"sha256 {got} does not match the recorded {meta.get('sha256')}"


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
    from pipeline.base import atomic_path

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
        raise SystemExit(f"avstore: {len(hits)} feature sets match {ref!r} in {store} "
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


def _config(section: str, name: str, default: str) -> str:
    import pipeline  # noqa: F401  (loads workflows.cfg)
    import luigi.configuration

    return luigi.configuration.get_config().get(section, name, default)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="avstore", description="catalog, verify and share the shards of a store")
    parser.add_argument("--store", help="the store folder (default: [paths] store of workflows.cfg)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("catalog", help="datasets, feature sets, shards, sizes, clips, builder, time")
    p.add_argument("--dataset")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p = sub.add_parser("verify", help="check every shard's sha256 against its build record and every "
                                      "stage output's against its stage.json")
    p.add_argument("--dataset")
    p = sub.add_parser("diff", help="the configuration difference between two feature sets")
    p.add_argument("a", help="feature set key (or a unique prefix)")
    p.add_argument("b")
    p.add_argument("--dataset")
    for name in ("push", "pull"):
        p = sub.add_parser(name, help=f"{name} feature sets {'to' if name == 'push' else 'from'} the remote")
        p.add_argument("--dataset", required=True)
        p.add_argument("--build", help="one feature set key (default: all)")
        p.add_argument("--remote", help="URL: a folder, file://..., s3://bucket/prefix (default: [remote] url)")
    p = sub.add_parser("export", help="a verified copy of a feature set with other HDF5 filters (gzip: any h5py "
                                      "reads it without hdf5plugin), for a training host")
    p.add_argument("--dataset")
    p.add_argument("--build", help="feature set key or a unique prefix (default: the dataset's newest)")
    p.add_argument("--codec", choices=("gzip", "lzf", "none", "blosc-zstd"), default="gzip")
    p.add_argument("--out", required=True, help="the store folder to write the copy into")
    p.add_argument("--exclude", nargs="+", action="extend", default=[], metavar="DATASET",
                   help="datasets or groups to leave out, e.g. video/crop (keep only the 72 px crops)")
    p = sub.add_parser("report", help="a static HTML page (plots, worst clips, contact sheets) of a feature set")
    p.add_argument("--dataset")
    p.add_argument("--build", help="feature set key or a unique prefix (default: the dataset's newest)")
    p.add_argument("--out", required=True, help="the folder to write index.html and its PNG files into")
    p.add_argument("--sheets", type=int, default=8, help="contact sheets of the N worst clips (default 8)")
    p = sub.add_parser("gc", help="remove the builds not kept and every file no kept build references "
                                  "(docs/gc.md); refuses while a build of the dataset runs")
    p.add_argument("--dataset", help="one dataset (default: every dataset of the store)")
    keep = p.add_mutually_exclusive_group()
    keep.add_argument("--keep-builds", nargs="+", metavar="KEY", help="the builds to keep (keys or unique prefixes)")
    keep.add_argument("--keep-newest", type=int, metavar="N", help="keep the N newest builds of each dataset")
    p.add_argument("--drop-intermediates", action="store_true",
                   help="also remove the stage outputs of kept builds whose shards verify (a rebuild of them "
                        "runs nothing; another configuration recomputes them)")
    p.add_argument("--dry-run", action="store_true", help="print what would be removed; remove nothing")
    from pipeline import corpora

    corpora.add_parser(sub)  # avstore import CORPUS SOURCE_DIR (issue 20 item 1; needs no store)
    args = parser.parse_args(argv)
    if args.command == "import":
        return corpora.main(args)
    store = args.store or _config("paths", "store", "store")
    if args.command == "gc":
        from pipeline.gc import main as gc_main

        return gc_main(store, args)
    if args.command == "export":
        from pipeline.export import ExportError, export

        try:
            n = export(store, args.out, dataset=args.dataset, build=args.build, codec=args.codec, exclude=args.exclude)
        except ExportError as err:
            print(f"avstore export: {err}", file=sys.stderr)
            return 1
        print(f"export: {n['dataset']}/{n['key']}: {n['files']} shard(s), {_size(n['bytes_in'])} -> "
              f"{_size(n['bytes_out'])} {args.codec} in {n['seconds']:.1f} s, verified; "
              f"train with: python -m models.train --store {args.out} --dataset {n['dataset']} ...")
        return 0
    if args.command == "report":
        from pipeline.report import ReportError, report

        try:
            n = report(store, args.out, dataset=args.dataset, build=args.build, sheets=args.sheets,
                       manifest=_config("paths", "manifest", "data_manifest.yaml"))
        except ReportError as err:
            print(f"avstore report: {err}", file=sys.stderr)
            return 1
        print(f"report: {n['dataset']}/{n['key']}: {n['clips']} clips ({n['failed']} failed), {n['images']} "
              f"images, {n['sheets']} contact sheet(s): open {n['index']}")
        return 0

    if args.command == "catalog":
        cat = catalog(store, args.dataset)
        print(json.dumps(cat, indent=1) if args.json else format_catalog(cat))
        return 0
    if args.command == "verify":
        problems = verify(store, args.dataset)
        names = [args.dataset] if args.dataset else datasets(store)
        n = sum(len(r.get("files", {})) for ds in names for r in records(store, ds).values())
        m = sum(len(stage_outputs(store, ds)) for ds in names)
        for rel, why in problems:
            print(f"FAILED {rel}: {why}")
        print(f"verify: {n} recorded shards, {m} stage outputs, {len(problems)} problem(s)")
        return 1 if problems else 0
    if args.command == "diff":
        (da, ka, ra), (db, kb, rb) = find_record(store, args.a, args.dataset), find_record(store, args.b, args.dataset)
        rows = config_diff(ra, rb)
        print(f"--- {da}/{ka}\n+++ {db}/{kb}")
        for k, va, vb in rows:
            print(f"  {k}: {json.dumps(va)} -> {json.dumps(vb)}")
        if not rows:
            print("  (same configuration)")
        return 0
    from pipeline import remote

    url = args.remote or _config("remote", "url", "")
    if not url:
        raise SystemExit("avstore: no remote: pass --remote URL or set [remote] url in workflows.cfg")
    try:
        r = remote.Remote(url)
        if args.command == "push":
            n = remote.push(store, r, args.dataset, args.build)
        else:
            n = remote.pull(store, r, args.dataset, args.build)
    except remote.RemoteError as err:
        print(f"avstore {args.command}: {err}", file=sys.stderr)
        return 1
    print(f"{args.command}: {n['files']} file(s) {n['bytes']} bytes, {n['skipped']} already there, "
          f"{n['builds']} feature set(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
