"""Helpers of the sharing / concurrency / fault tests (issue 6): a two-clip corpus and builds;
hand-made folder remotes (issue 19 item 6)."""
import contextlib
import getpass
import glob
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys

import h5py
import luigi.configuration
import numpy as np

from tests.conftest import ROOT, cli_env
from tests.pipeline.conftest import make_corpus

CLIPS = ("s1_anger_01", "s2_sadness_01")


def corpus(where, clips=CLIPS):
    """A corpus of demo clips (copied: new mtimes, as a teammate's copy has); its manifest path."""
    return make_corpus(where, good=list(clips), bad=False)


RUNNER = ("import os, sys, luigi, pipeline\n"
          "log = sys.argv[1]\n"
          "@luigi.Task.event_handler(luigi.Event.START)\n"
          "def _started(task):\n"
          "    if log:\n"
          "        with open(log, 'a') as f: f.write(f'{os.getpid()} {task.task_family} {task.task_id}\\n')\n"
          "sys.exit(0 if luigi.run(sys.argv[2:]) else 1)\n")


def luigi_argv(manifest, store, *extra):
    return ["BuildShards", "--dataset", "mini", "--manifest", str(manifest), "--store", str(store),
            "--batch-size", "1", *extra]


def run_luigi(manifest, store, *extra, log=None, timeout=300):
    """BuildShards in a subprocess (``luigi --module pipeline``); with ``log``, every task that
    starts is appended to that file as "<pid> <family> <task id>"."""
    env = cli_env()
    return subprocess.run([sys.executable, "-c", RUNNER, str(log or ""), *luigi_argv(manifest, store, *extra)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def popen_luigi(manifest, store, *extra, log=None):
    env = cli_env()
    return subprocess.Popen([sys.executable, "-c", RUNNER, str(log or ""), *luigi_argv(manifest, store, *extra)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def shard_paths(store, dataset="mini"):
    return sorted(glob.glob(os.path.join(store, dataset, "shards", "*", "shard-*.h5")))


def record(store, dataset="mini"):
    (path,) = glob.glob(os.path.join(store, dataset, "builds", "*.json"))
    with open(path) as f:
        return path, json.load(f)


def all_files(store):
    """Every file under the store, relative, with '/'."""
    return sorted(os.path.relpath(os.path.join(d, f), store).replace(os.sep, "/")
                  for d, _, files in os.walk(store) for f in files)


def me():
    return f"{getpass.getuser()}@{platform.node()}"


def copy_store(src, dst):
    shutil.copytree(src, dst)
    return dst


# -- hand-made remotes (issue 19 item 6) ------------------------------------------------------------
DIGEST = "0123456789abcdef"
REL = f"mini/shards/{DIGEST}/shard-0000.h5"


def fake_shard(path, *, dataset="mini", digest=DIGEST, extra=None):
    """A small HDF5 file with a shard's JSON root attributes; ``extra(f)`` may add to it."""
    with h5py.File(path, "w") as f:
        f.attrs["format_version"] = 1
        f.attrs["dataset"], f.attrs["digest"] = json.dumps(dataset), json.dumps(digest)
        f["clips/x"] = np.arange(16, dtype=np.int32)
        if extra is not None:
            extra(f)
    return path


def folder_remote(root, files, *, claims=None, key=DIGEST, dataset="mini"):
    """A folder remote at ``root`` holding ``files`` ({rel: bytes}), each with its ``.sha256``
    record, and one build record ``<dataset>/builds/<key>.json`` naming them all. ``claims``
    ({rel: n}) makes both records claim ``n`` bytes instead of the true size. Returns ``root``."""
    records = {}
    for rel, data in files.items():
        path = os.path.join(root, *rel.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        records[rel] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": (claims or {}).get(rel, len(data))}
        with open(path + ".sha256", "w") as f:
            json.dump(records[rel], f)
    os.makedirs(os.path.join(root, dataset, "builds"), exist_ok=True)
    with open(os.path.join(root, dataset, "builds", f"{key}.json"), "w") as f:
        json.dump({"files": records}, f)
    return str(root)


@contextlib.contextmanager
def config(section, **values):
    """Set ``[section] key = value`` in luigi's configuration for the ``with`` block."""
    cfg = luigi.configuration.get_config()
    saved = {k: cfg.get(section, k, None) for k in values}
    for k, v in values.items():
        cfg.set(section, k, str(v))
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                cfg.remove_option(section, k)
            else:
                cfg.set(section, k, v)
