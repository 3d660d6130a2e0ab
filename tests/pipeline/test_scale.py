"""Large manifests (issue 21 item 2, docs/scale.md): the automatic batch size keeps today's batches
for small corpora, caps the task count for large ones, and ``--batch-size`` wins."""
import csv
import json
import os
import time

import pytest

from pipeline.base import DEFAULT_BATCH_SIZE, MAX_BATCHES, auto_batch_size, batches_of, n_batches
from pipeline.manifest import get_dataset
from pipeline.shards import BuildShards, Shard
from tests.conftest import ROOT

DEMO_SHARD = "demo/shards/6fe1743fb32f0486/shard-0000.h5"  # README's demo command (scripts/setup.sh)


@pytest.mark.parametrize("n_clips, size", [
    (0, 64), (1, 64), (21, 64), (1_457, 64), (8_192, 64),  # up to 64 * 128 clips: today's batches
    (8_193, 65), (10_000, 79), (100_000, 782), (1_000_000, 7_813),
])
def test_auto_batch_size(n_clips, size):
    assert auto_batch_size(n_clips) == size
    assert n_batches(n_clips, size) <= MAX_BATCHES
    assert n_batches(n_clips, size) == n_batches(n_clips, DEFAULT_BATCH_SIZE) or n_clips > 64 * MAX_BATCHES


@pytest.mark.parametrize("kw", [{"batch_size": 0}, {"max_batches": 0}])
def test_auto_batch_size_refuses_nonpositive(kw):
    with pytest.raises(ValueError, match="must be >= 1"):
        auto_batch_size(100, **kw)


def test_demo_keeps_its_batches_and_digest(tmp_path):
    manifest = os.path.join(ROOT, "data_manifest.yaml")
    auto = BuildShards(dataset="demo", manifest=manifest, store=str(tmp_path))
    fixed = BuildShards(dataset="demo", manifest=manifest, store=str(tmp_path), batch_size=64)
    assert auto.batch_size is None and auto.batch_size_used() == 64
    (shard,) = auto.requires()
    assert shard.batch_size == 64 and len(shard.clips()) == 21
    assert [t.output().path for t in fixed.requires()] == [shard.output().path]
    assert auto.output().path == fixed.output().path
    assert os.path.relpath(shard.output().path, tmp_path) == DEMO_SHARD


def test_explicit_batch_size_wins(tmp_path):
    manifest = os.path.join(ROOT, "data_manifest.yaml")
    task = BuildShards(dataset="demo", manifest=manifest, store=str(tmp_path), batch_size=8)
    shards = task.requires()
    assert task.batch_size_used() == 8 and [s.batch_size for s in shards] == [8] * 3
    assert sorted(c.id for s in shards for c in s.clips()) == \
        [c.id for c in get_dataset(manifest, "demo").list_clips()]


@pytest.fixture(scope="module")
def big_manifest(tmp_path_factory):
    """100,000 label rows and no media (every clip ``missing_file``): the cheapest large manifest;
    nothing here decodes or hashes a file."""
    root = tmp_path_factory.mktemp("big")
    (root / "clips").mkdir()
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["clip_id", "label", "speaker"])
        w.writerows([f"c{k:06d}", "anger" if k % 2 else "sadness", f"s{k % 50}"] for k in range(100_000))
    manifest = root / "manifest.yaml"
    manifest.write_text(f"""datasets:
  big:
    root: {json.dumps(str(root))}
    clips: clips/*
    labels: labels.csv
    label_set: [anger, sadness]
    protocol: loso
""")
    return str(manifest)


def test_large_manifest_caps_tasks_quickly(big_manifest, tmp_path):
    t = time.perf_counter()
    task = BuildShards(dataset="big", manifest=big_manifest, store=str(tmp_path), video=False)
    shards = task.requires()
    assert len(shards) == MAX_BATCHES and task.batch_size_used() == 782
    # every task's clips and hash chain (the first stage lists its clips): the whole graph's digests
    assert sum(len(s.clips()) for s in shards) == 100_000
    key = task.output().path
    assert time.perf_counter() - t < 10, f"{time.perf_counter() - t:.1f} s"
    assert len({c.id for s in shards for c in s.clips()}) == 100_000
    assert key == BuildShards(dataset="big", manifest=big_manifest, store=str(tmp_path), video=False,
                              max_batches=MAX_BATCHES).output().path


def test_large_manifest_batch_size_wins(big_manifest, tmp_path):
    task = BuildShards(dataset="big", manifest=big_manifest, store=str(tmp_path), video=False, batch_size=64)
    assert len(task.requires()) == 1563  # explicit: no cap
    capped = BuildShards(dataset="big", manifest=big_manifest, store=str(tmp_path), video=False, max_batches=10)
    assert len(capped.requires()) == 10 and capped.batch_size_used() == 10_000


def test_batches_of_is_cached_and_stable(big_manifest):
    clips = get_dataset(big_manifest, "big").clip_tuple()
    assert get_dataset(big_manifest, "big").clip_tuple() is clips  # no copy, no re-parse
    first = batches_of(clips, 128)
    assert batches_of(clips, 128) is first
    assert sum(map(len, first.values())) == len(clips)
    shard = Shard(dataset="big", batch=5, batch_size=782, manifest=big_manifest, store="unused")
    assert tuple(shard.clips()) == first[5]
