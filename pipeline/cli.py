"""``avstore``: the command line of the store (catalog, verify, diff, push, pull, export, report,
gc, import). Each sub-command is a function of its own module (``pipeline.catalog``,
``pipeline.remote``, ``pipeline.export``, ``pipeline.report``, ``pipeline.gc``,
``pipeline.corpora``); this module only parses the arguments and dispatches, and nothing imports
it, so the modules it calls never import each other back.
"""
from __future__ import annotations

import argparse
import json
import sys

from pipeline.catalog import (_size, catalog, config_diff, datasets, find_record, format_catalog, records,
                              stage_outputs, verify)


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
        try:
            (da, ka, ra), (db, kb, rb) = find_record(store, args.a, args.dataset), find_record(store, args.b, args.dataset)
        except LookupError as err:   # none or several feature sets match a prefix
            print(err, file=sys.stderr)
            return 1
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
