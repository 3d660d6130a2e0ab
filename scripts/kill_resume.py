"""Kill a build with SIGKILL at random points, resume it, and compare with an uninterrupted build.

    python scripts/kill_resume.py --kills 10 [--clips s1_anger_01,s2_sadness_01,s3_happiness_01] [--seed 0]

1. builds a small corpus (demo clips) uninterrupted into ``reference/``;
2. starts the same build into ``killed/`` and sends SIGKILL to its process group after a random
   delay in [0.5 s, S + 2 (T - S) / kills] (T = the reference build's time, S = the time of a run
   with nothing to do: start-up and scheduling), so that the kills fall in start-up, scheduling,
   in the middle of tasks and of their writes, and ``--kills`` of them happen before the build
   can finish; after every kill it checks
   that each file a reader would take for an output (``shard-*.h5``, ``batch-*.h5``, ``pca.h5``,
   build records) opens whole;
3. resumes the build to the end and compares: the same files, HDF5 data and attributes identical
   except ``created`` / ``builder`` (``pipeline.catalog.same_data``), stage.json identical, build
   records identical except time and builder, ``avstore verify`` clean, and no temporary file
   left (hidden ``.*.tmp-*`` or luigi's ``*-luigi-tmp-*``).

Prints JSON; exit status 1 when anything differs.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from pipeline.catalog import same_data, verify  # noqa: E402
from tests.pipeline.conftest import make_corpus  # noqa: E402

OUTPUT_NAMES = (".h5", ".json")


def start(manifest, store):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.Popen(["luigi", "--module", "pipeline", "BuildShards", "--dataset", "mini", "--manifest",
                             str(manifest), "--store", str(store), "--batch-size", "1", "--local-scheduler",
                             "--no-lock", "--workers", "1"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def files(store):
    return sorted(os.path.relpath(os.path.join(d, f), store) for d, _, fs in os.walk(store) for f in fs)


def is_temp(rel):
    name = os.path.basename(rel)
    return name.startswith(".") or "luigi-tmp" in name or ".tmp-" in name


def readable(store):
    """Files a reader would take for outputs that do not open whole."""
    from features.store import open_file

    bad = []
    for rel in files(store):
        if is_temp(rel):
            continue
        path = os.path.join(store, rel)
        try:
            if rel.endswith(".h5"):
                with open_file(path) as f:
                    f.visit(lambda name: None)
                    for key in f.attrs:
                        f.attrs[key]
            elif rel.endswith(".json"):
                with open(path) as f:
                    json.load(f)
        except Exception as err:
            bad.append(f"{rel}: {type(err).__name__}: {err}")
    return bad


def compare(ref, got):
    diffs = []
    a, b = [f for f in files(ref) if not is_temp(f)], [f for f in files(got) if not is_temp(f)]
    diffs += [f"only in reference: {f}" for f in sorted(set(a) - set(b))]
    diffs += [f"only in resumed: {f}" for f in sorted(set(b) - set(a))]
    for rel in sorted(set(a) & set(b)):
        pa, pb = os.path.join(ref, rel), os.path.join(got, rel)
        if rel.endswith(".h5"):
            diffs += [f"{rel}: {d}" for d in same_data(pa, pb)]
        elif rel.endswith(".json"):
            ja, jb = (json.load(open(p)) for p in (pa, pb))
            for j in (ja, jb):
                for key in ("created", "builder"):
                    j.pop(key, None)
                if "files" in j:  # shard bytes differ by their 'created' attribute: sha256 are each build's own
                    j["files"] = sorted(j["files"])
                if "shards" in j:
                    j["shards"] = [os.path.relpath(p, ref if j is ja else got) for p in j["shards"]]
            if ja != jb:
                diffs.append(f"{rel}: JSON differs")
    return diffs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--clips", default="s1_anger_01,s2_sadness_01,s3_happiness_01")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", help="default: a temporary folder")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    work = args.workdir or tempfile.mkdtemp(prefix="kill_resume-")
    manifest = make_corpus(__import__("pathlib").Path(work) / "corpus", good=args.clips.split(","), bad=False)
    ref, got = os.path.join(work, "reference"), os.path.join(work, "killed")

    t0 = time.time()
    assert start(manifest, ref).wait() == 0, "the reference build failed"
    t_build = time.time() - t0
    t0 = time.time()
    assert start(manifest, ref).wait() == 0
    t_start = time.time() - t0
    kills, unreadable, temps_seen = [], [], 0
    for _ in range(args.kills):
        p = start(manifest, got)
        delay = rng.uniform(0.5, t_start + 2 * max(t_build - t_start, 1.0) / args.kills)
        try:
            p.wait(timeout=delay)
            kills.append({"at_s": round(delay, 2), "killed": False})  # finished before the kill
            break
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            kills.append({"at_s": round(delay, 2), "killed": True})
        temps_seen += sum(is_temp(f) for f in files(got)) if os.path.isdir(got) else 0
        unreadable += readable(got) if os.path.isdir(got) else []
    rc = start(manifest, got).wait()
    diffs = compare(ref, got) + [f"unreadable after a kill: {u}" for u in unreadable]
    temps_left = [f for f in files(got) if is_temp(f)]
    problems = verify(got, "mini")
    result = {"kills": sum(k["killed"] for k in kills), "kill_times_s": [k["at_s"] for k in kills],
              "reference_build_s": round(t_build, 1),
              "noop_run_s": round(t_start, 1), "resume_rc": rc, "temporary_files_seen_after_kills": temps_seen,
              "temporary_files_left": temps_left, "differences": diffs, "verify_problems": problems,
              "files_compared": len([f for f in files(ref) if not is_temp(f)]), "workdir": work}
    result["ok"] = rc == 0 and not diffs and not temps_left and not problems and result["kills"] >= args.kills
    print(json.dumps(result, indent=1))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
