"""Helpers of the sharing / concurrency / fault tests (issue 6): a two-clip corpus and builds."""
import getpass
import glob
import json
import os
import platform
import shutil
import subprocess
import sys

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
