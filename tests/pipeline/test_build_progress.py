"""Issue 20 item 4: a local build prints one progress line per finished batch (Shard task):
batches done / to run, clips, clips/s and an ETA."""
import glob
import os
import re
import subprocess

import luigi
import pytest

from tests.conftest import ROOT, cli_env
from tests.pipeline.conftest import build, make_corpus

CLIPS = ["s1_anger_01", "s1_anger_02", "s2_anger_02"]  # one clip in each of the three batches
LINE = re.compile(r"^progress: (\d+)/(\d+) batches, (\d+) clips, (\d+\.\d) clips/s, ETA (\d+:\d\d:\d\d|\?)$")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("progress") / "corpus", good=CLIPS, bad=False)


def local_build(store, manifest):
    luigi.task_register.Register.clear_instance_cache()
    return build(store, "--batch-size", "1", "--video", "false", dataset="mini", manifest=manifest)


def progress(text):
    lines = [line for line in text.splitlines() if line.startswith("progress:")]
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), lines
    return [(int(m[1]), int(m[2]), int(m[3]), float(m[4]), m[5]) for m in parsed]


def check(rows, total, clips):
    assert [r[0] for r in rows] == list(range(1, total + 1))  # one line per batch, counts rise to the total
    assert all(r[1] == total for r in rows)
    assert [r[2] for r in rows] == sorted(r[2] for r in rows) and rows[-1][2] == clips
    assert all(r[3] > 0 for r in rows) and rows[-1][4] == "0:00:00"


def test_a_local_build_prints_one_line_per_batch(manifest, tmp_path, capsys):
    store = tmp_path / "store"
    ran = local_build(store, manifest)
    assert ran.count("Shard") == 3
    check(progress(capsys.readouterr().err), total=3, clips=3)
    assert local_build(store, manifest) == []  # nothing to run: no progress line
    assert progress(capsys.readouterr().err) == []
    os.remove(sorted(glob.glob(os.path.join(store, "mini", "shards", "*", "shard-*.h5")))[1])
    assert local_build(store, manifest).count("Shard") == 1  # only the batches that run count
    check(progress(capsys.readouterr().err), total=1, clips=1)


def test_the_luigi_command_with_two_workers_counts_across_its_processes(manifest, tmp_path):
    """With --workers 2 the Shard tasks run in forked processes: the counts are shared."""
    r = subprocess.run(["luigi", "--module", "pipeline", "BuildShards", "--dataset", "mini",
                        "--manifest", str(manifest), "--store", str(tmp_path / "store"), "--batch-size", "1",
                        "--video", "false", "--local-scheduler", "--no-lock", "--workers", "2"],
                       cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    check(progress(r.stderr), total=3, clips=3)
