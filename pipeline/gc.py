"""``avstore gc``: remove what no kept feature set references (issue 20 item 3; docs/gc.md).

A feature set exists through its build record ``store/<dataset>/builds/<key>.json``. gc keeps the
builds chosen (``--keep-builds KEY...`` or ``--keep-newest N``; every build by default) and
removes, under ``store/<dataset>/`` only:

1. the records of the other builds (first: once its record is gone, a build is gone whole);
2. every shard and stage output (``<stage>/<16 hex digest>/*.h5``; the folder's ``stage.json``
   and the folder once no output is left in it) that no kept record names: its ``files`` (the
   shards) and ``stage_outputs`` (every stage output the shards were assembled from, upstream
   stages included; written by ``BuildShards``, outside every digest);
3. the temporary files of dead processes of this machine;
4. with ``drop_intermediates``, the stage outputs of the kept builds whose shards are all here and
   match their recorded sha256 (a shard is self-contained): those records get
   ``"intermediates_dropped"``. A rebuild of such a build runs nothing (``Shard.complete`` does
   not look for inputs that are not here); another configuration recomputes them.

A kept record without ``stage_outputs`` (written before gc existed) keeps every stage output of
its dataset, one without ``files`` every shard too; gc says so. An unreadable record, a live
temporary file (a process of this machine writing; or any process of another machine) or a
running build make gc refuse the dataset: it takes the dataset's build lock
(``pipeline.files.hold_build_lock``) exclusively, without waiting, and holds it while it works.
"""
from __future__ import annotations

import datetime
import fcntl
import json
import os
import re
import socket
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field

from pipeline.files import TMP_MARK, _pid_alive, atomic_path
from pipeline.catalog import _size, datasets, record_problems, records

SHARDS = "shards"  # Shard.STAGE: the folder of the shards, the only stage outputs a build record lists in "files"
DIGEST = re.compile(r"[0-9a-f]{16}")


class GCError(Exception):
    """Why gc leaves a dataset alone (one line)."""


@dataclass
class Plan:
    """What gc removes from one dataset (paths relative to the store, in removal order)."""

    dataset: str
    keep: list[str]
    drop: list[str]
    remove: list[tuple[str, int]] = field(default_factory=list)  # (path, bytes)
    folders: list[str] = field(default_factory=list)  # emptied by the removal: removed after it
    mark: list[str] = field(default_factory=list)  # kept builds whose intermediates go
    notes: list[str] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(n for _, n in self.remove)


@contextmanager
def exclusive(store: str, dataset: str):
    """The dataset's build lock, exclusively and without waiting: a build of this machine holds
    it shared from scheduling to its end (``BuildShards.complete``)."""
    folder = os.path.join(store, dataset)
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise GCError(f"a build of {dataset} is running on this machine (it holds the lock on {folder}); "
                          f"run gc when it has finished") from None
        except OSError as err:
            raise GCError(f"cannot lock {folder} ({err}): without the lock gc cannot tell that no build "
                          f"is running, so it removes nothing") from None
        yield
    finally:
        os.close(fd)


def temp_owner(name: str) -> tuple[str, int] | None:
    """(host, pid) of a temporary file name ``.<name>.tmp-<host>-<pid>-<random>``; None for
    other names. An unparsable owner is ("?", 0): taken for alive."""
    if not name.startswith(".") or TMP_MARK not in name:
        return None
    owner = name.rsplit(TMP_MARK, 1)[1].rsplit("-", 2)
    return (owner[0], int(owner[1])) if len(owner) == 3 and owner[1].isdigit() else ("?", 0)


def _newest_first(store: str, dataset: str, recs: dict) -> list[str]:
    def when(key):  # "created" has whole seconds; the record's mtime orders builds of one second
        try:
            mtime = os.stat(os.path.join(store, dataset, "builds", f"{key}.json")).st_mtime_ns
        except OSError:
            mtime = 0
        return str(recs[key].get("created") or ""), mtime, key
    return sorted(recs, key=when, reverse=True)


def choose(store: str, dataset: str, recs: dict, keep_builds=None, keep_newest=None) -> set[str]:
    if keep_builds:
        keep = set()
        for ref in keep_builds:
            hits = [k for k in recs if k.startswith(ref)]
            if len(hits) != 1:
                raise GCError(f"{len(hits)} builds of {dataset} match {ref!r} (see `avstore catalog --dataset "
                              f"{dataset}`; give more digits)")
            keep.add(hits[0])
        return keep
    if keep_newest is not None:
        return set(_newest_first(store, dataset, recs)[:keep_newest])
    return set(recs)


def plan(store: str, dataset: str, *, keep_builds=None, keep_newest=None, drop_intermediates=False) -> Plan:
    """What gc would remove from ``dataset`` (call under ``exclusive``); reads every kept shard
    with ``drop_intermediates``. Raises ``GCError``."""
    recs = records(store, dataset)
    for key, rec in recs.items():
        if not isinstance(rec, dict) or "error" in rec:
            why = rec.get("error") if isinstance(rec, dict) else "not a JSON object"
            raise GCError(f"{dataset}/builds/{key}.json: {why}; restore or delete it, then run gc again")
    if not recs:
        raise GCError(f"no build record in {dataset}/builds: gc would remove every file of {dataset}; run its "
                      f"BuildShards command to record the shards (or delete {dataset} yourself)")
    keep = choose(store, dataset, recs, keep_builds, keep_newest)
    p = Plan(dataset, sorted(keep), sorted(set(recs) - keep))
    shards, stages, all_shards, all_stages = set(), set(), False, False
    for key in p.keep:
        rec = recs[key]
        if not isinstance(rec.get("files"), dict):
            all_shards = all_stages = True
            p.notes.append(f"build {key}: its record lists no shards (written before the catalog): every shard "
                           f"and stage output of {dataset} is kept")
            continue
        shards |= _paths(rec["files"])
        if not isinstance(rec.get("stage_outputs"), list):
            all_stages = True
            p.notes.append(f"build {key}: its record does not list its stage outputs (written before avstore gc): "
                           f"every stage output of {dataset} is kept; run that build's BuildShards command once "
                           f"(it runs no task, it adds the list), then gc again")
            continue
        stages |= _paths(rec["stage_outputs"])
    droppable = set()
    if drop_intermediates and all_stages:
        p.notes.append("--drop-intermediates: no stage output is dropped (see above)")
    elif drop_intermediates:
        needed = set()
        for key in p.keep:
            problems = record_problems(store, recs[key])  # every byte of every shard
            if problems:
                rel, why = problems[0]
                p.notes.append(f"build {key}: its stage outputs are kept: {rel}: {why} (rebuild it, then gc again)")
                needed |= _paths(recs[key]["stage_outputs"])
            else:
                droppable |= _paths(recs[key]["stage_outputs"])
        droppable -= needed
        stages -= droppable
    p.remove = [(f"{dataset}/builds/{key}.json", _bytes(store, f"{dataset}/builds/{key}.json")) for key in p.drop]
    later, dropped = [], set()
    ref_folders = {rel.rsplit("/", 1)[0] for rel in shards | stages}
    for rel_folder, names in _folders(store, dataset):
        outputs = [n for n in names if n.endswith(".h5") and not n.startswith(".")]
        is_shard = rel_folder.startswith(f"{dataset}/{SHARDS}/")
        kept, refs = (all_shards, shards) if is_shard else (all_stages, stages)
        go = [] if kept else [n for n in outputs if f"{rel_folder}/{n}" not in refs]
        dropped |= {f"{rel_folder}/{n}" for n in go} & droppable
        stale = [n for n in names if temp_owner(n)]
        if not kept and len(go) == len(outputs) and rel_folder not in ref_folders:
            go += [n for n in names if n == "stage.json"]  # the folder's record goes with its last output
            if set(names) <= set(go) | set(stale):
                p.folders.append(rel_folder)
        (p.remove if is_shard else later).extend((f"{rel_folder}/{n}", _bytes(store, f"{rel_folder}/{n}")) for n in go)
        later += [(f"{rel_folder}/{n}", _bytes(store, f"{rel_folder}/{n}")) for n in stale]
    p.remove += later
    p.remove += [(rel, _bytes(store, rel)) for rel in _stale_elsewhere(store, dataset)]
    p.mark = [key for key in p.keep if dropped & _paths(recs[key].get("stage_outputs") or ())]
    return p


def _paths(items) -> set[str]:
    """The paths a record names (its JSON may come from another machine: anything else is ignored;
    a path only ever keeps a file, gc removes what it finds on disk)."""
    return {item for item in items if isinstance(item, str)}


def _bytes(store: str, rel: str) -> int:
    try:
        return os.stat(os.path.join(store, rel)).st_size
    except FileNotFoundError:
        return 0


def _live_check(rel: str) -> None:
    host, pid = temp_owner(os.path.basename(rel))
    if host != socket.gethostname():
        raise GCError(f"{rel} is a temporary file of {host}: if no build of this dataset runs there, delete it and "
                      f"run gc again")
    if _pid_alive(pid):
        raise GCError(f"{rel} is being written by process {pid} of this machine; run gc when it has finished")


def _folders(store: str, dataset: str):
    """(folder relative to the store, its entries) of every ``<stage>/<digest>`` folder, sorted;
    a temporary file of a live process (or of another machine) raises ``GCError``."""
    root = os.path.join(store, dataset)
    for stage in sorted(os.listdir(root)):
        if stage == "builds" or not _real_dir(os.path.join(root, stage)):
            continue
        for name in sorted(os.listdir(os.path.join(root, stage))):
            folder = os.path.join(root, stage, name)
            if DIGEST.fullmatch(name) and _real_dir(folder):
                names = sorted(n for n in os.listdir(folder) if not os.path.islink(os.path.join(folder, n)))
                for n in names:
                    if temp_owner(n):
                        _live_check(f"{dataset}/{stage}/{name}/{n}")
                yield f"{dataset}/{stage}/{name}", names


def _real_dir(path: str) -> bool:
    """A folder, not a link to one: gc never follows a link out of the store."""
    return os.path.isdir(path) and not os.path.islink(path)


def _stale_elsewhere(store: str, dataset: str) -> list[str]:
    """Temporary files outside the ``<stage>/<digest>`` folders (records being written, ...):
    those of dead processes go; a live one raises ``GCError``."""
    out, root = [], os.path.join(store, dataset)
    for folder, dirs, names in os.walk(root):
        rel_folder = os.path.relpath(folder, store).replace(os.sep, "/")
        parts = rel_folder.split("/")
        if len(parts) == 3 and parts[1] != "builds" and DIGEST.fullmatch(parts[2]):
            dirs[:] = []
            continue  # looked at by _folders
        for n in sorted(names):
            if temp_owner(n):
                _live_check(f"{rel_folder}/{n}")
                out.append(f"{rel_folder}/{n}")
    return sorted(out)


def execute(store: str, p: Plan) -> None:
    """Remove what ``p`` lists: the dropped builds' records first, then the marks in the kept
    records, then the files, then the folders left empty."""
    n_records = len(p.drop)
    for rel, _ in p.remove[:n_records]:
        _unlink(store, rel)
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    for key in p.mark:  # JSON only: a record is no hashed input (the key is a digest of the shards' digests)
        path = os.path.join(store, p.dataset, "builds", f"{key}.json")
        with open(path, encoding="utf-8") as f:
            rec = json.load(f)
        rec["intermediates_dropped"] = {"at": now, "by": "avstore gc --drop-intermediates"}
        with atomic_path(path, replace=True) as tmp, open(tmp, "w") as f:
            json.dump(rec, f, indent=1)
    for rel, _ in p.remove[n_records:]:
        _unlink(store, rel)
    for rel in p.folders:
        for folder in (os.path.join(store, rel), os.path.dirname(os.path.join(store, rel))):
            try:
                os.rmdir(folder)  # only when empty (the stage folder too, once its last digest went)
            except OSError:
                break


def _unlink(store: str, rel: str) -> None:
    try:
        os.remove(os.path.join(store, rel))
    except FileNotFoundError:
        pass


def gc(store: str, dataset: str, *, dry_run: bool = False, **how) -> Plan:
    """Plan and (unless ``dry_run``) remove, holding the dataset's build lock. Raises ``GCError``."""
    with exclusive(store, dataset):
        p = plan(store, dataset, **how)
        if not dry_run:
            execute(store, p)
    return p


def format_plan(p: Plan, *, dry_run: bool) -> str:
    drop = f", removing {len(p.drop)} ({', '.join(p.drop)})" if p.drop else ""
    lines = [f"gc {p.dataset}: keeping {len(p.keep)} build(s) ({', '.join(p.keep) or 'none'}){drop}"]
    lines += [f"  note: {n}" for n in p.notes]
    lines += [f"  {rel}  {n:,} bytes" for rel, n in p.remove]
    size = f"{len(p.remove)} file(s), {p.bytes:,} bytes ({_size(p.bytes)})"
    done = f"would remove {size}; dry run: nothing was removed" if dry_run else f"removed {size} freed"
    if p.mark:
        done += f"; the stage outputs of {', '.join(p.mark)} {'would go' if dry_run else 'went'} (their shards stay)"
    lines.append(f"gc {p.dataset}: {done}")
    return "\n".join(lines)


def main(store: str, args) -> int:
    """``avstore gc`` (arguments parsed by ``pipeline.cli.main``)."""
    def fail(msg):
        print(f"avstore gc: {msg}", file=sys.stderr)
        return 1

    if args.keep_newest is not None and args.keep_newest < 1:
        return fail(f"--keep-newest must be at least 1 (to remove every build, delete {store}/<dataset>)")
    if args.keep_builds and not args.dataset:
        return fail("--keep-builds needs --dataset")
    if args.dataset and not os.path.isdir(os.path.join(store, args.dataset)):
        return fail(f"no dataset {args.dataset!r} in {store}")
    rc = 0
    for ds in [args.dataset] if args.dataset else datasets(store):
        try:
            p = gc(store, ds, dry_run=args.dry_run, keep_builds=args.keep_builds, keep_newest=args.keep_newest,
                   drop_intermediates=args.drop_intermediates)
        except (GCError, OSError) as err:
            rc = fail(f"{ds}: {err}")
            continue
        print(format_plan(p, dry_run=args.dry_run), flush=True)
    return rc
