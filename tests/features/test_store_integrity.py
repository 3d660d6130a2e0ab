"""Issue 19 items 3 and 6(b): checksummed chunks (a flipped byte is an error naming the shard and
the dataset, never a changed value) and closed files (nothing in a shard points outside it)."""
import os
import time

import h5py
import numpy as np
import pytest

from features import store
from features.errors import CorruptShard, UnsafeShard


def _shard(path, rng, *, n_clips=3):
    """A small shard through ``store.assemble`` (as pipeline.shards writes one): log-mel frames and
    windows from a source file, crops, the clip table from ``groups``."""
    logmel = [rng.standard_normal((n, 64)).astype(np.float32) for n in (900, 40, 700)[:n_clips]]
    rows, offsets = store.pack(logmel, dtype=np.float32, row_shape=(64,))
    src = os.path.join(os.path.dirname(path), os.path.basename(path) + ".src.h5")
    store.write(src, attrs={"stage": "logmel"},
                groups={"frames": {"logmel": rows, "offsets": offsets},
                        "windows": {"clip": np.array([0, 2], np.int32),
                                    "frames": np.stack([np.arange(64), np.arange(34, 98)]).astype(np.int32)},
                        "video": {"crop_small": rng.integers(0, 256, (60, 72, 72, 3), dtype=np.uint8),
                                  "offsets": np.array([0, 20, 20, 60])}})
    store.assemble(path, sources=[src], attrs={"dataset": "toy"},
                   groups={"clips": {"id": np.array(["a", "b", "c"][:n_clips], object),
                                     "duration_s": np.array([9.0, 0.4, 7.0][:n_clips])}})
    return rows


def _chunked(path):
    """{dataset name: [(byte offset, size) of each stored chunk]} of the file's chunked datasets."""
    out = {}
    with store.open_file(path) as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and obj.chunks is not None:
                out[name] = [(c.byte_offset, c.size) for c in map(obj.id.get_chunk_info,
                                                                  range(obj.id.get_num_chunks()))]
        f.visititems(visit)
    return out


def _flip(src, dst, offset, xor=0x5A):
    data = bytearray(open(src, "rb").read())
    data[offset] ^= xor
    with open(dst, "wb") as f:
        f.write(data)


# -- item 3: checksums ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", store.COMPRESSORS)
def test_every_chunked_dataset_written_has_fletcher32(tmp_path, name):
    path = tmp_path / "c.h5"
    store.write(path, attrs={}, groups={"g": {"x": np.ones((500, 64), np.float32), "n": np.arange(9),
                                              "crop": np.zeros((4, 8, 8, 3), np.uint8)}},
                compression={"f": name, "i": name, "u": name})
    with store.open_file(path) as f:
        assert f.attrs["format_version"] == store.FORMAT_VERSION == 2
        assert all(f[f"g/{k}"].chunks and f[f"g/{k}"].fletcher32 for k in ("x", "n", "crop"))
        if name == "blosc-zstd":  # the checksum is the last filter: it covers the compressed bytes
            plist = f["g/x"].id.get_create_plist()
            assert [plist.get_filter(i)[0] for i in range(plist.get_nfilters())] == [32001, h5py.h5z.FILTER_FLETCHER32]
    assert store.read_attrs(path)["checksums"] == "fletcher32"


def test_assembled_shard_has_checksums_on_every_chunked_dataset(tmp_path):
    path = tmp_path / "s.h5"
    _shard(path, np.random.default_rng(0))
    with store.open_file(path) as f:
        names = []
        f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) and o.chunks else None)
        assert sorted(names) == ["clips/duration_s", "frames/logmel", "frames/offsets", "video/crop_small",
                                 "video/offsets", "windows/clip", "windows/frames"]
        assert all(f[n].fletcher32 for n in names)
    assert store.read_attrs(path)["checksums"] == "fletcher32"


def test_flipped_byte_in_a_chunk_is_an_error_naming_shard_dataset_and_the_fix(tmp_path):
    path, bad = tmp_path / "s.h5", tmp_path / "shard-0000.h5"
    rows = _shard(path, np.random.default_rng(1))
    offset, size = _chunked(path)["frames/logmel"][0]
    _flip(path, bad, offset + size // 2)
    s = store.ShardReader(bad)
    assert list(s.clips["id"]) == ["a", "b", "c"]  # the undamaged datasets still read
    with pytest.raises(CorruptShard) as err:
        s.logmel(0)
    msg = str(err.value)
    assert str(bad) in msg and "frames/logmel" in msg and "avstore verify" in msg
    assert "luigi --module pipeline BuildShards --dataset toy" in msg
    assert err.value.path == str(bad) and err.value.dataset == "frames/logmel"
    with pytest.raises(CorruptShard, match="frames/logmel"):
        store.ShardReader(bad).window(0)
    with pytest.raises(CorruptShard, match="frames/logmel"):
        store.read_group(bad, "frames")
    np.testing.assert_array_equal(store.ShardReader(path).logmel(0), rows[:900])  # the original is fine


def test_48_random_byte_flips_inside_chunks_are_all_detected(tmp_path):
    path = tmp_path / "s.h5"
    _shard(path, np.random.default_rng(2))
    good = {g: store.read_group(path, g) for g in ("clips", "frames", "windows", "video")}
    chunks = [(name, c) for name, cs in _chunked(path).items() for c in cs]
    rng = np.random.default_rng(3)
    detected = []
    for k in range(48):
        name, (offset, size) = chunks[rng.integers(len(chunks))]
        bad = tmp_path / f"flip{k}.h5"
        _flip(path, bad, offset + int(rng.integers(size)), xor=int(rng.integers(1, 256)))
        group, key = name.split("/")
        try:
            back = store.read_group(bad, group, [key])[key]
        except CorruptShard as err:
            detected.append(err.dataset == name and str(bad) in str(err))
        else:  # read without an error: a silently changed value unless the flip missed the data
            detected.append(f"undetected: {name} equal={np.array_equal(back, good[group][key])}")
        os.remove(bad)
    assert detected == [True] * 48


def test_flipped_byte_in_a_string_is_detected_by_its_crc32(tmp_path):
    """Strings live in HDF5's global heap, outside every chunk: a ``crc32`` attribute covers them."""
    path, bad = tmp_path / "s.h5", tmp_path / "bad.h5"
    store.write(path, attrs={"dataset": "toy"},
                groups={"clips": {"label": np.array(["anger", "happinesszq", ""], object)}})
    assert list(store.read_group(path, "clips")["label"]) == ["anger", "happinesszq", ""]
    offset = open(path, "rb").read().index(b"happinesszq")
    _flip(path, bad, offset + 3, xor=0x01)  # "hapqiness...": still valid UTF-8
    with pytest.raises(CorruptShard, match=f"{bad}: dataset clips/label is corrupt.*crc32"):
        store.read_group(bad, "clips")
    with pytest.raises(CorruptShard, match="clips/label"):
        store.ShardReader(bad).clips
    _flip(path, bad, offset + 3, xor=0x80)  # not UTF-8 any more
    with pytest.raises(CorruptShard, match="clips/label"):
        store.read_group(bad, "clips")


def test_files_without_checksums_still_read(tmp_path):
    """A format-1 file (Blosc, no fletcher32), as the stores built before issue 19 hold."""
    import hdf5plugin

    path = tmp_path / "old.h5"
    x = np.arange(64 * 300, dtype=np.float32).reshape(300, 64)
    with h5py.File(path, "w") as f:
        f.attrs["format_version"] = 1
        f.create_dataset("frames/logmel", data=x, chunks=(100, 64), **hdf5plugin.Blosc(cname="zstd", clevel=1))
        f.create_dataset("frames/offsets", data=np.array([0, 300]))
        f.create_dataset("clips/id", data=["a"], dtype=h5py.string_dtype("utf-8"))
    np.testing.assert_array_equal(store.ShardReader(path).logmel(0), x)
    assert store.read_attrs(path)["format_version"] == 1 and "checksums" not in store.read_attrs(path)


def test_assemble_refuses_a_corrupt_source_instead_of_copying_it(tmp_path):
    """h5py's copy moves raw chunks without checking them: assemble reads each source through its
    checksums first, so a damaged intermediate never lands in a new shard."""
    src, bad = tmp_path / "logmel.h5", tmp_path / "batch-0000.h5"
    store.write(src, attrs={}, groups={"frames": {"logmel": np.ones((2000, 64), np.float32)}})
    offset, size = _chunked(src)["frames/logmel"][1]
    _flip(src, bad, offset + size // 3)
    with pytest.raises(CorruptShard, match="batch-0000.h5.*frames/logmel"):
        store.assemble(tmp_path / "out.h5", sources=[bad], attrs={}, groups={})


def test_truncated_shard_is_a_corrupt_shard_error_naming_the_file(tmp_path):
    path, cut = tmp_path / "s.h5", tmp_path / "cut.h5"
    _shard(path, np.random.default_rng(4))
    with open(path, "rb") as f, open(cut, "wb") as g:
        g.write(f.read(os.path.getsize(path) // 2))
    with pytest.raises(CorruptShard, match=f"{cut}.*avstore verify"):
        store.ShardReader(cut).clips
    with pytest.raises(CorruptShard, match=str(cut)):
        store.read_group(cut, "clips")


# -- item 6(b): a shard is a closed world ---------------------------------------------------------
@pytest.fixture
def secret(tmp_path):
    path = tmp_path / "secret.txt"
    path.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n" * 8)
    return path


def _add(path, make):
    """A good shard with one more object made by ``make(f)``."""
    _shard(path, np.random.default_rng(5))
    with h5py.File(path, "a") as f:
        make(f)
    return path


def _external_storage(secret):
    def make(f):
        del f["clips/id"]
        f.create_dataset("clips/id", shape=(100,), dtype=np.uint8, external=[(str(secret), 0, 100)])
    return make


def _external_link(other):
    def make(f):
        f["clips/leak"] = h5py.ExternalLink(str(other), "/frames/logmel")
    return make


def _virtual(other):
    def make(f):
        layout = h5py.VirtualLayout(shape=(10, 64), dtype=np.float32)
        layout[:] = h5py.VirtualSource(str(other), "frames/logmel", shape=(10, 64))
        f.create_virtual_dataset("frames/virtual", layout)
    return make


def _dangling_soft_link(f):
    f["clips/status"] = h5py.SoftLink("/elsewhere/status")


@pytest.mark.parametrize("kind, what", [("external storage", "clips/id: external storage"),
                                        ("external link", "clips/leak: external link"),
                                        ("virtual dataset", "frames/virtual: virtual dataset"),
                                        ("soft link", "clips/status: soft link")])
def test_shard_pointing_outside_itself_is_refused(tmp_path, secret, kind, what):
    other = tmp_path / "other.h5"
    _shard(other, np.random.default_rng(6))
    make = {"external storage": _external_storage(secret), "external link": _external_link(other),
            "virtual dataset": _virtual(other), "soft link": _dangling_soft_link}[kind]
    path = _add(tmp_path / "shard-0000.h5", make)
    with pytest.raises(UnsafeShard, match=what) as err:
        store.check_closed(path)
    assert str(path) in str(err.value) and err.value.path == str(path)
    with pytest.raises(UnsafeShard, match=what):  # the reader refuses it before reading anything
        store.ShardReader(path).clips
    with pytest.raises(UnsafeShard, match=what):
        store.read_group(path, "clips")
    with pytest.raises(UnsafeShard, match=what):
        store.assemble(tmp_path / "out.h5", sources=[path], attrs={}, groups={})


def test_external_storage_is_refused_before_any_byte_of_the_target_is_read(tmp_path, secret):
    path = _add(tmp_path / "s.h5", _external_storage(secret))
    with h5py.File(path, "r") as f:  # what the reader returned before issue 19
        assert f["clips/id"][:4].tobytes() == b"root"
    s = store.ShardReader(path)
    with pytest.raises(UnsafeShard, match="points outside the file"):
        s.group("clips")


def test_soft_links_through_an_external_link_or_in_a_loop_are_refused(tmp_path):
    other = tmp_path / "other.h5"
    _shard(other, np.random.default_rng(9))

    def through(f):
        f["clips/ext"] = h5py.ExternalLink(str(other), "/frames")
        f["clips/soft"] = h5py.SoftLink("/clips/ext/logmel")

    def loop(f):
        f["clips/a"], f["clips/b"] = h5py.SoftLink("/clips/b"), h5py.SoftLink("/clips/a")

    with pytest.raises(UnsafeShard, match="clips/ext: external link"):
        store.check_closed(_add(tmp_path / "through.h5", through))
    with pytest.raises(UnsafeShard, match="clips/a: soft link to /clips/b"):
        store.check_closed(_add(tmp_path / "loop.h5", loop))


def test_soft_link_inside_the_file_and_a_plain_shard_pass(tmp_path):
    path = tmp_path / "s.h5"
    _shard(path, np.random.default_rng(7))
    store.check_closed(path)
    with h5py.File(path, "a") as f:
        f["clips/alias"] = h5py.SoftLink("/clips/id")
    store.check_closed(path)
    assert list(store.ShardReader(path).clips["alias"]) == ["a", "b", "c"]


def test_check_closed_is_cheap_and_cached_per_file(tmp_path):
    path = tmp_path / "s.h5"
    _shard(path, np.random.default_rng(8))
    store._CLOSED.clear()
    t = time.perf_counter()
    store.check_closed(path)
    first = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(100):
        store.check_closed(path)
    again = (time.perf_counter() - t) / 100
    assert first < 0.2 and again < 0.001, (first, again)  # measured: ~1 ms and ~5 µs
    # a file replaced under the same name is checked again
    _add(tmp_path / "bad.h5", _dangling_soft_link)
    os.replace(tmp_path / "bad.h5", path)
    with pytest.raises(UnsafeShard):
        store.check_closed(path)


def test_shard_errors_cross_processes_whole(tmp_path):
    """A DataLoader worker's error is pickled to the parent (or rebuilt from its text by torch):
    the file and the dataset survive either way."""
    import pickle

    err = CorruptShard("/s/shard-0000.h5", "/s/shard-0000.h5: dataset frames/logmel is corrupt",
                       dataset="frames/logmel")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is CorruptShard and (back.path, back.dataset, str(back)) == (err.path, err.dataset, str(err))
    text = f"Caught CorruptShard in DataLoader worker 0.\nOriginal Traceback (most recent call last):\n...\n" \
           f"features.errors.CorruptShard: {err}"
    assert UnsafeShard(text.replace("CorruptShard", "UnsafeShard")).path == "/s/shard-0000.h5"


_FULL_DISK = """
import resource, signal, sys
import numpy as np
from features import store
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)          # a write past the limit fails (EFBIG) like ENOSPC
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
x = np.random.default_rng(0).random((800, 1000)).astype("float32")   # 3.2 MB of incompressible data
try:
    store.write(sys.argv[1], attrs={"dataset": "d"}, groups={"g": {"x": x}})
except (OSError, RuntimeError) as err:
    print("error:", err)
"""


def test_a_full_disk_while_writing_is_an_error_not_a_crash(tmp_path):
    """HDF5 segfaults when a chunk write fails (disk full) while it closes a file; built in memory
    (core driver) the write-out fails with an ordinary error (issue 19 item 2)."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    r = subprocess.run([sys.executable, "-c", _FULL_DISK, str(tmp_path / "x.h5")], capture_output=True, text=True,
                       cwd=ROOT, env={**__import__("os").environ, "PYTHONPATH": ROOT})
    assert r.returncode == 0, (r.returncode, r.stderr[-500:])     # -11 (SIGSEGV) writing straight to the file
    assert "error:" in r.stdout and "File too large" in r.stdout
