"""The catalog (``avstore catalog | verify | diff``) over a two-clip corpus built in two configurations."""
import datetime
import hashlib
import json
import os
import shutil

import pytest

from pipeline import catalog, cli
from tests.pipeline.conftest import build
from tests.pipeline.share_helpers import corpus, me, record, shard_paths


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("catalog")
    manifest = corpus(tmp / "corpus")
    store = tmp / "store"
    build(store, "--batch-size", "1", dataset="mini", manifest=manifest)
    return store, manifest


def test_build_record_holds_the_sha256_and_size_of_every_shard(built):
    store, _ = built
    _, rec = record(store)
    paths = shard_paths(store)
    assert len(paths) == 2
    assert sorted(rec["files"]) == sorted(os.path.relpath(p, store) for p in paths)
    for p in paths:
        meta = rec["files"][os.path.relpath(p, store)]
        assert meta["sha256"] == hashlib.sha256(open(p, "rb").read()).hexdigest()
        assert meta["bytes"] == os.path.getsize(p)
    assert rec["builder"] == me() and rec["config"]["segment"]["hop_frames"] == 34


def test_catalog_lists_dataset_feature_set_shards_sizes_clips_builder_and_time(built, capsys):
    store, _ = built
    path, rec = record(store)
    cat = catalog.catalog(str(store))
    (fs,) = cat["mini"]["feature_sets"]
    assert fs["key"] == os.path.basename(path)[:-5]
    assert fs["clips_ok"] == 2 and fs["clips_failed"] == {} and fs["windows"] == rec["windows"] > 0
    assert fs["bytes"] == sum(os.path.getsize(p) for p in shard_paths(store))
    assert fs["builder"] == me()
    age = datetime.datetime.now(datetime.timezone.utc) - datetime.datetime.fromisoformat(fs["created"])
    assert datetime.timedelta(0) <= age < datetime.timedelta(hours=1)
    assert all(s["present"] for s in fs["shards"]) and cat["mini"]["unrecorded_shards"] == []
    assert cli.main(["--store", str(store), "catalog"]) == 0
    out = capsys.readouterr().out
    assert fs["key"] in out and me() in out and "2 clips ok, 0 failed" in out
    for s in fs["shards"]:
        assert s["path"] in out
    assert cli.main(["--store", str(store), "catalog", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(cat))


def test_verify_passes_then_names_the_shard_with_a_flipped_byte(built, tmp_path, capsys):
    store = shutil.copytree(built[0], tmp_path / "store")
    assert catalog.verify(str(store)) == []
    assert cli.main(["--store", str(store), "verify"]) == 0
    victim = shard_paths(store)[1]
    with open(victim, "r+b") as f:  # flip one bit in the middle of the file
        f.seek(os.path.getsize(victim) // 2)
        byte = f.read(1)[0]
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte ^ 0x01]))
    rel = os.path.relpath(victim, store)
    problems = catalog.verify(str(store))
    assert [p for p, _ in problems] == [rel] and "sha256" in problems[0][1]
    assert cli.main(["--store", str(store), "verify"]) == 1
    assert f"FAILED {rel}" in capsys.readouterr().out
    os.remove(victim)
    assert catalog.verify(str(store)) == [(rel, "missing")]


def test_diff_shows_only_the_changed_setting_and_the_stages_after_it(built, tmp_path, capsys):
    store = shutil.copytree(built[0], tmp_path / "store")
    ran = build(store, "--batch-size", "1", "--Segment-hop-frames", "30", dataset="mini", manifest=built[1])
    assert "Decode" not in ran and "Segment" in ran  # the hash chain reused the rest
    sets = catalog.catalog(str(store))["mini"]["feature_sets"]
    assert len(sets) == 2
    a, b = (catalog.records(str(store), "mini")[s["key"]] for s in sets)
    if a["config"]["segment"]["hop_frames"] == 30:
        a, b = b, a
    diff = {k: (x, y) for k, x, y in catalog.config_diff(a, b)}
    assert diff.pop("config.segment.hop_frames") == (34, 30)
    assert diff.pop("digest.segment") == (a["stages"]["segment"], b["stages"]["segment"])
    assert diff.pop("digest.align")[0] != b["stages"]["align"]  # Align reads the windows
    assert diff == {}  # decode, vad, prosody, logmel, faces, PCA: the same
    key_a = next(k for k, r in catalog.records(str(store), "mini").items() if r is a or r == a)
    key_b = next(k for k in catalog.records(str(store), "mini") if k != key_a)
    assert cli.main(["--store", str(store), "diff", key_a[:8], key_b]) == 0
    assert "config.segment.hop_frames: 34 -> 30" in capsys.readouterr().out
    # a prefix that matches none, or both: one line and exit 1, no traceback (a library error, not SystemExit)
    assert cli.main(["--store", str(store), "diff", "ffffffffff", key_b]) == 1
    assert "0 feature sets match 'ffffffffff'" in capsys.readouterr().err
    assert cli.main(["--store", str(store), "diff", "", key_b]) == 1
    assert "2 feature sets match ''" in capsys.readouterr().err
