"""Issue 23 item 5: ``avstore export`` writes a portable copy of a build (gzip/lzf filters any h5py
reads; same layout, values and record; verified) that ``models.train`` reads on a host without
hdf5plugin, and ``models/`` imports nothing of ``pipeline/``."""
import ast
import glob
import json
import os
import shutil
import subprocess
import sys

import h5py
import hdf5plugin  # noqa: F401  (this process reads the Blosc source)
import pytest

from features.hashing import sha256_file
from pipeline import catalog, cli
from features.store import FILTER_IDS
from tests.conftest import ROOT, cli_env

# A bare training host: these imports fail (hdf5plugin, and the pipeline with its decoders).
BARE = """
import sys
class _Bare:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("hdf5plugin", "pipeline", "luigi", "av", "librosa", "soxr", "webrtcvad", "cv2",
                                  "dlib"):
            raise ImportError(name + " is not installed on this host")
sys.meta_path.insert(0, _Bare())
"""
TRAIN = ["--model", "perception", "--dataset", "demo", "--fold", "0", "--epochs", "1", "--threads", "1",
         "--set", "hidden=8", "--set", "hidden_av=8", "--set", "hidden_sel=4", "--set", "embed_dim=4",
         "--set", "visual_layer=8"]


def bare(code: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BARE + code, *args], cwd=ROOT, env=cli_env(),
                          capture_output=True, text=True, timeout=300)


def train_bare(store, out) -> subprocess.CompletedProcess:
    code = "import runpy; sys.argv[0] = 'models.train'; runpy.run_module('models.train', run_name='__main__')"
    return bare(code, *TRAIN, "--store", str(store), "--out", str(out))


def shards(store):
    return sorted(glob.glob(os.path.join(store, "demo", "shards", "*", "shard-*.h5")))


def record(store):
    (path,) = glob.glob(os.path.join(store, "demo", "builds", "*.json"))
    with open(path) as f:
        return os.path.basename(path)[:-5], json.load(f)


def filters(ds) -> set:
    plist = ds.id.get_create_plist()
    return {plist.get_filter(i)[0] for i in range(plist.get_nfilters())}


def datasets(path) -> dict:
    with h5py.File(path) as f:
        found = {}
        f.visititems(lambda n, o: found.update({n: o}) if isinstance(o, h5py.Dataset) else None)
        return {n: (o.dtype, o.chunks, filters(o), o[()] if o.dtype.kind != "O" else o.asstr()[()], dict(o.attrs))
                for n, o in found.items()}


def export(store, out, *args):
    return cli.main(["--store", str(store), "export", "--dataset", "demo", "--out", str(out), *args])


@pytest.fixture(scope="module")
def exported(demo_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "gzip"
    assert export(demo_store, out, "--codec", "gzip") == 0
    return out


def test_gzip_export_has_the_same_layout_values_and_record_with_standard_filters(demo_store, exported, capsys):
    assert [os.path.relpath(p, exported) for p in shards(exported)] == [os.path.relpath(p, demo_store)
                                                                        for p in shards(demo_store)]
    numeric = 0
    for src, dst in zip(shards(demo_store), shards(exported)):
        a, b = datasets(src), datasets(dst)
        assert sorted(a) == sorted(b)
        for name, (dtype, chunks, flt, values, attrs) in b.items():
            assert (dtype, chunks, attrs) == (a[name][0], a[name][1], a[name][4]), name
            src_values = a[name][3]
            assert (values == src_values).all() if dtype.kind == "O" else values.tobytes() == src_values.tobytes(), name
            assert FILTER_IDS["blosc-zstd"] not in flt, name
            if chunks is not None:
                numeric += 1
                assert flt == {1, 3} | ({2} if dtype.itemsize > 1 else set()), (name, flt)  # gzip, shuffle, fletcher32
        assert [d for d in catalog.same_data(src, dst) if not d.startswith("/: attribute export")] == []
    assert numeric > 100
    key, rec = record(exported)
    src_key, src = record(demo_store)
    assert key == src_key and rec["config"] == src["config"] and rec["dataset"] == "demo"
    assert rec["clips_ok"] == src["clips_ok"] and rec["windows"] == src["windows"]
    assert rec["export"]["codec"] == "gzip" and rec["export"]["from"] == key and rec["export"]["excluded"] == []
    assert rec["export"]["source_sha256"] == {r: m["sha256"] for r, m in src["files"].items()}
    assert sorted(rec["files"]) == sorted(src["files"])
    for rel, meta in rec["files"].items():
        assert meta == {**meta, "bytes": os.path.getsize(exported / rel), "sha256": sha256_file(exported / rel)}
    assert catalog.verify(str(exported)) == []
    assert cli.main(["--store", str(exported), "verify"]) == 0
    assert cli.main(["--store", str(exported), "catalog"]) == 0
    assert f"{key}  " in capsys.readouterr().out.split("(export: gzip)")[0]


def test_the_trainer_reads_the_gzip_copy_on_a_host_without_hdf5plugin(exported, tmp_path):
    run = train_bare(exported, tmp_path / "runs")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "| WA |" in run.stdout


def test_a_blosc_shard_without_hdf5plugin_is_a_clear_error(demo_store, tmp_path):
    path = shards(demo_store)[0]
    run = bare("from features.store import read_group\n"
               f"try:\n    read_group({str(path)!r}, 'frames', ['logmel'])\nexcept Exception as err:\n"
               "    print(type(err).__name__, err)")
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.startswith(f"MissingFilter {path}: dataset frames/logmel is compressed with blosc")
    assert "pip install hdf5plugin" in run.stdout and "avstore export --dataset demo --codec gzip" in run.stdout
    run = train_bare(demo_store, tmp_path / "runs")
    assert run.returncode == 2
    assert "models.train: error: " in run.stderr and "pip install hdf5plugin" in run.stderr, run.stderr[-3000:]


@pytest.mark.parametrize("codec", ["lzf", "none"])
def test_exclude_drops_datasets_records_them_and_the_trainer_accepts_the_copy(demo_store, tmp_path, codec):
    from models.data import ShardDataset, clip_table, find_shards

    out = tmp_path / "small"
    assert export(demo_store, out, "--codec", codec, "--exclude", "video/crop", "audio") == 0
    key, rec = record(out)
    assert rec["export"]["excluded"] == ["audio", "video/crop"] and rec["export"]["codec"] == codec
    for path in shards(out):
        found = datasets(path)
        assert "video/crop" not in found and "video/crop_small" in found
        assert not any(n.startswith("audio") for n in found)
        want = {FILTER_IDS[codec], 2} - {None} if codec != "none" else set()
        assert all(flt - {2} == want - {2} | {3} for n, (_, chunks, flt, _, _) in found.items() if chunks), codec
    assert catalog.verify(str(out)) == []
    paths = find_shards(out, "demo")  # every shard checked against the record (issue 19 item 5)
    assert len(paths) == 3
    assert sum(map(os.path.getsize, paths)) < 0.3 * sum(map(os.path.getsize, shards(demo_store)))
    table = clip_table(paths)
    data = ShardDataset(table, range(len(table)), features=["crop_small", "pca"])
    assert tuple(data[0]["crop_small"].shape) == (3, 16, 72, 72)


def test_export_refuses_a_damaged_source_and_bad_exclusions(demo_store, tmp_path, capsys):
    store = tmp_path / "store"
    for part in ("builds", "shards"):
        shutil.copytree(demo_store / "demo" / part, store / "demo" / part)
    assert export(store, tmp_path / "x", "--exclude", "clips/id") == 1
    assert export(store, tmp_path / "x", "--exclude", "windows") == 1
    assert export(store, tmp_path / "x", "--exclude", "video/nothing") == 1
    err = capsys.readouterr().err
    assert "--exclude clips/id: every reader needs" in err and "--exclude video/nothing: the build has no such" in err
    path = shards(store)[1]
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert export(store, tmp_path / "x") == 1
    assert "the source is damaged, nothing exported" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x")


def test_models_import_nothing_of_pipeline():
    for path in sorted(glob.glob(os.path.join(ROOT, "models", "**", "*.py"), recursive=True)):
        for node in ast.walk(ast.parse(open(path).read(), path)):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            bad = [n for n in names if n == "pipeline" or n.startswith("pipeline.")]
            assert not bad, f"{os.path.relpath(path, ROOT)}:{node.lineno} imports {bad}"
