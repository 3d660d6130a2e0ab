import os
import pickle

import h5py
import numpy as np
import pytest

from features import ParameterError, store
from features.audio import window_image


def _toy_shard(path, rng):
    logmel = [rng.standard_normal((n, 64)).astype(np.float32) for n in (150, 0, 120)]
    rows, offsets = store.pack(logmel, dtype=np.float32, row_shape=(64,))
    frames = [np.arange(0, 64), np.arange(34, 98), np.r_[0:30, 60:94]]
    clips = np.array([0, 0, 2], np.int32)
    store.write(path, attrs={"dataset": "toy", "config": {"Segment": {"hop_frames": 34}}},
                groups={"clips": {"id": np.array(["a", "b", "c"], object), "status": np.array(["ok", "empty_audio", "ok"], object)},
                        "frames": {"logmel": rows, "offsets": offsets},
                        "windows": {"clip": clips, "frames": np.array(frames, np.int32)}})
    return logmel, frames, clips


def test_pack_concatenates_with_offsets():
    rows, offsets = store.pack([np.ones((2, 3)), np.zeros((0, 3)), 2 * np.ones((4, 3))], row_shape=(3,))
    assert rows.shape == (6, 3)
    np.testing.assert_array_equal(offsets, [0, 2, 2, 6])
    np.testing.assert_array_equal(rows[offsets[2]:offsets[3]], 2)
    empty, off = store.pack([[], []], dtype=np.uint8)
    assert empty.shape == (0,) and list(off) == [0, 0, 0]


def test_shard_reader_returns_windows_and_json_attributes(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "s.h5"
    logmel, frames, clips = _toy_shard(path, rng)
    s = store.ShardReader(path)
    assert s.attrs["config"] == {"Segment": {"hop_frames": 34}} and s.attrs["format_version"] == store.FORMAT_VERSION
    assert list(s.clips["id"]) == ["a", "b", "c"] and s.clips["status"][1] == "empty_audio"
    assert s.n_windows == 3
    for i in range(3):
        expected = window_image(logmel[clips[i]][frames[i]])
        np.testing.assert_allclose(s.window(i), expected, rtol=1e-6)
        assert s.window(i).shape == (64, 64, 3)
    np.testing.assert_array_equal(s.window_batch([2, 0]), np.stack([s.window(2), s.window(0)]))
    np.testing.assert_array_equal(s.logmel(2), logmel[2])
    assert s.logmel(1).shape == (0, 64)


def test_shard_reader_survives_pickling_into_another_process(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "s.h5"
    _toy_shard(path, rng)
    s = store.ShardReader(path)
    before = s.window(2)
    clone = pickle.loads(pickle.dumps(s))
    assert clone._f is None
    np.testing.assert_array_equal(clone.window(2), before)


def test_files_are_plain_hdf5_without_vlen_numbers_and_with_chunks(tmp_path):
    path = tmp_path / "s.h5"
    _toy_shard(path, np.random.default_rng(2))
    with h5py.File(path, "r") as f:
        ds = f["frames/logmel"]
        assert ds.dtype == np.float32 and ds.chunks is not None
        assert ds.chunks[0] * 64 * 4 <= store.CHUNK_BYTES
        assert f["windows/frames"].dtype == np.int32
        assert h5py.check_string_dtype(f["clips/id"].dtype).encoding == "utf-8"


@pytest.mark.parametrize("name", store.COMPRESSORS)
def test_every_compressor_round_trips_exactly(tmp_path, name):
    rng = np.random.default_rng(3)
    groups = {"g": {"x": rng.standard_normal((500, 64)).astype(np.float32),
                    "crop": rng.integers(0, 256, (20, 17, 17, 3), dtype=np.uint8),
                    "n": np.arange(1000, dtype=np.int64)}}
    path = tmp_path / "c.h5"
    store.write(path, attrs={}, groups=groups, compression={"f": name, "i": name, "u": name})
    back = store.read_group(path, "g")
    for key, value in groups["g"].items():
        np.testing.assert_array_equal(back[key], value)
    with store.open_file(path) as f:
        want = {None: None, "gzip": "gzip", "lzf": "lzf", "blosc-zstd": "32001"}[name]  # 32001: Blosc's HDF5 id
        for key in groups["g"]:
            filters = f[f"g/{key}"]._filters
            assert (want in filters) if want else set(filters) == {"fletcher32"}  # issue 19: always a checksum
        assert ("shuffle" in f["g/x"]._filters) == (name in ("gzip", "lzf"))  # Blosc shuffles inside itself


def test_default_compression_is_blosc_zstd_and_plain_h5py_needs_hdf5plugin(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "d.h5"
    x = np.linspace(0, 1, 40_000, dtype=np.float32).reshape(-1, 64)
    store.write(path, attrs={}, groups={"frames": {"logmel": x}})
    with store.open_file(path) as f:
        opts = f["frames/logmel"]._filters["32001"]
        assert opts[4:7] == (1, 1, 5)  # Blosc cd_values: clevel 1, byte shuffle, compressor 5 = zstd
        assert f["frames/logmel"].id.get_storage_size() < x.nbytes / 2
    read = "import h5py, sys; f = h5py.File(sys.argv[1]); f['frames/logmel'][()]"
    env = {k: v for k, v in os.environ.items() if k != "HDF5_PLUGIN_PATH"}
    plain = subprocess.run([sys.executable, "-c", read, str(path)], capture_output=True, text=True, env=env)
    assert plain.returncode != 0 and "OSError" in plain.stderr  # why open_file registers the filters
    ok = subprocess.run([sys.executable, "-c", "import hdf5plugin; " + read, str(path)], env=env)
    assert ok.returncode == 0


def test_unknown_compressor_is_refused(tmp_path):
    with pytest.raises(ParameterError, match="unknown compressor 'zip'"):
        store.write(tmp_path / "z.h5", attrs={}, groups={"g": {"x": np.ones(4)}}, compression={"f": "zip"})


def test_assemble_copies_sources_and_refuses_conflicts(tmp_path):
    a, b, c = tmp_path / "a.h5", tmp_path / "b.h5", tmp_path / "c.h5"
    store.write(a, attrs={}, groups={"frames": {"logmel": np.ones((3, 2), np.float32), "offsets": np.array([0, 3])}})
    store.write(b, attrs={}, groups={"frames": {"voiced": np.ones(3, np.uint8), "offsets": np.array([0, 3])},
                                     "audio": {"waveform": np.ones(10, np.float32)}})
    out = tmp_path / "out.h5"
    store.assemble(out, sources=[a, b], attrs={"x": 1}, groups={"clips": {"id": np.array(["k"], object)}},
                   skip=("audio",))
    with h5py.File(out, "r") as f:
        assert sorted(f["frames"]) == ["logmel", "offsets", "voiced"] and "audio" not in f
    store.write(c, attrs={}, groups={"frames": {"offsets": np.array([0, 4])}})
    with pytest.raises(ParameterError, match="frames/offsets differs"):
        store.assemble(tmp_path / "bad.h5", sources=[a, c], attrs={}, groups={})


def test_the_readers_old_name_still_finds_it_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match="ShardReader"):
        assert store.Shard is store.ShardReader
    with pytest.raises(AttributeError):
        store.NoSuchThing
