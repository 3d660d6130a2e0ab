"""Issue 19 item 5: the trainer reads only the shards of the chosen build, and a shard it cannot
read stops it with ``models.train: error: <file>: ...`` and exit 2, never a traceback.

``hop30`` holds two builds of the demo: the default one of the session's ``demo_store`` and,
newest, one with another window hop (``--Segment-hop-frames 30``: only Segment, Align, Shard
run). Every test works on a copy made of hard links (``link_tree``), so a file it changes is first
unlinked (``replace``), never written in place.
"""
import glob
import json
import os
import shutil

import h5py
import numpy as np
import pytest

from models.data import ShardDataset, ShardRefused, clip_table, find_shards, loader
from models.train import cli
from tests.conftest import ROOT
from tests.models.conftest import fresh_build, link_tree


def builds(store) -> list[str]:
    """The demo's build keys under ``store``, oldest first (``find_shards`` takes the newest)."""
    paths = sorted(glob.glob(os.path.join(store, "demo", "builds", "*.json")), key=os.path.getmtime)
    return [os.path.basename(p)[:-5] for p in paths]


def replace(path, data: bytes | None = None, *, link_to=None):
    """A new file at ``path`` (the hard link to the session's store is dropped first)."""
    os.remove(path)
    if link_to is not None:
        os.link(link_to, path)
    else:
        with open(path, "wb") as f:
            f.write(data)


def train(store, tmp_path, *extra) -> int:
    return cli(["--model", "avef", "--dataset", "demo", "--store", str(store), "--out", str(tmp_path / "runs"),
                "--fold", "0", "--epochs", "1", *extra])


@pytest.fixture(scope="module")
def hop30(demo_store, tmp_path_factory):
    """``demo_store`` plus a build of the demo with windows every 30 frames instead of 34."""
    store = tmp_path_factory.mktemp("hop30") / "store"
    link_tree(demo_store, store)
    ran = fresh_build(store, "--Segment-hop-frames", "30", manifest=os.path.join(ROOT, "data_manifest.yaml"))
    assert set(ran) == {"Segment", "Align", "Shard", "BuildShards"}, ran
    return store


@pytest.fixture
def two_builds(hop30, tmp_path):
    """(store, (old key, new key), (old shards, new shards)): a hard-linked copy of ``hop30``."""
    store = tmp_path / "store"
    link_tree(hop30, store)
    keys = builds(store)
    assert len(keys) == 2
    return store, keys, [find_shards(store, "demo", build=k) for k in keys]


def test_a_shard_of_another_build_copied_into_the_folder_is_refused(two_builds, tmp_path, capsys):
    store, (old, new), (old_paths, new_paths) = two_builds
    assert find_shards(store, "demo") == new_paths                 # the builds as they are: accepted
    replace(new_paths[1], link_to=old_paths[1])                     # `cp` of the other build's shard-0001
    assert train(store, tmp_path) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"models.train: error: {new_paths[1]}: belongs to build {old} / dataset demo, "
                          f"not build {new}") and "Traceback" not in err
    with pytest.raises(ShardRefused, match="rebuild with: luigi --module pipeline BuildShards --dataset demo"):
        find_shards(store, "demo")
    assert find_shards(store, "demo", build=old) == old_paths      # the other build is still whole


def test_a_record_listing_a_shard_of_another_configuration_is_refused(two_builds, tmp_path, capsys):
    """The record names the other build's shard with its true sha256 and size: only the shard's
    configuration tells it apart."""
    store, (old, new), (old_paths, new_paths) = two_builds
    path = os.path.join(store, "demo", "builds", f"{new}.json")
    with open(path) as f:
        record = json.load(f)
    rel = lambda p: os.path.relpath(p, store).replace(os.sep, "/")  # noqa: E731
    with open(os.path.join(store, "demo", "builds", f"{old}.json")) as f:
        record["files"][rel(old_paths[1])] = json.load(f)["files"][rel(old_paths[1])]
    del record["files"][rel(new_paths[1])]
    record["shards"][1] = old_paths[1]
    replace(path, json.dumps(record).encode())
    assert train(store, tmp_path) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"models.train: error: {old_paths[1]}: belongs to build {old} / dataset demo, "
                          f"not build {new} (configuration ") and "Traceback" not in err
    assert "(configuration segment.hop_frames: 30 -> 34)" in err     # the field that differs


def test_without_records_shards_of_two_configurations_are_refused(two_builds, tmp_path, capsys):
    store, _, (old_paths, new_paths) = two_builds
    shutil.rmtree(os.path.join(store, "demo", "builds"))
    assert train(store, tmp_path) == 2
    err = capsys.readouterr().err
    assert err.startswith("models.train: error: ") and "belongs to another configuration than" in err
    assert "no build record" in err and "Traceback" not in err
    assert err.split(": ")[2] in old_paths + new_paths               # the file is named


def test_a_shard_whose_size_is_not_the_records_is_refused(two_builds, tmp_path, capsys):
    store, (_, new), (_, new_paths) = two_builds
    with open(new_paths[2], "rb") as f:
        data = f.read()
    replace(new_paths[2], data + b"\0")                              # HDF5 still opens it
    assert train(store, tmp_path) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"models.train: error: {new_paths[2]}: {len(data) + 1} bytes, but build record "
                          f"{new} says {len(data)}") and "avstore verify" in err and "Traceback" not in err


def test_a_shard_of_another_dataset_is_refused(two_builds, tmp_path, capsys):
    store, (_, new), (_, new_paths) = two_builds
    with open(new_paths[2], "rb") as f:
        replace(new_paths[2], f.read())
    with h5py.File(new_paths[2], "r+") as f:                        # e.g. a shard of a corpus named alike
        f.attrs["dataset"] = json.dumps("baum1")
    assert train(store, tmp_path) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"models.train: error: {new_paths[2]}: belongs to dataset 'baum1', not 'demo' "
                          f"(build {new})") and "Traceback" not in err


@pytest.fixture
def one_build(demo_store, tmp_path):
    store = tmp_path / "store"
    link_tree(demo_store, store)
    return store, find_shards(store, "demo")


def test_a_truncated_shard_exits_2_naming_it(one_build, tmp_path, capsys):
    store, paths = one_build
    with open(paths[0], "rb") as f:
        replace(paths[0], f.read()[: os.path.getsize(paths[0]) // 2])
    assert train(store, tmp_path) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"models.train: error: {paths[0]}: ") and "truncated or corrupt" in err
    assert "avstore verify" in err and "Traceback" not in err
    shutil.rmtree(os.path.join(store, "demo", "builds"))             # no record: the same, when opened
    assert train(store, tmp_path) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"models.train: error: {paths[0]}: ") and "truncated or corrupt" in err


def test_a_corrupt_chunk_read_in_a_loader_worker_names_the_shard(one_build):
    """A chunk that fails to decode (its checksum or its decompression) while a DataLoader worker
    reads a batch reaches the main process as ``ShardRefused`` with a clean message."""
    store, paths = one_build
    table = clip_table(paths)
    with open(paths[0], "rb") as f:
        replace(paths[0], f.read())                                  # a copy of its own to damage
    with h5py.File(paths[0], "r") as f:
        ds = f["frames/logmel"]
        offsets = [ds.id.get_chunk_info(k) for k in range(ds.id.get_num_chunks())]
    with open(paths[0], "r+b") as f:
        for c in offsets:
            f.seek(c.byte_offset)
            f.write(np.random.default_rng(0).integers(0, 256, c.size, np.uint8).tobytes())
    ds = ShardDataset(table, np.flatnonzero(table.shard == 0), features=("logmel",))
    with pytest.raises(ShardRefused) as info:
        for _ in loader(ds, batch_size=4, num_workers=1):
            pass
    msg = str(info.value)
    assert msg.startswith(f"{paths[0]}: ") and ("frames/logmel" in msg or "truncated or corrupt" in msg)
    assert "Traceback" not in msg and "Caught" not in msg and info.value.path == paths[0]
