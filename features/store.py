"""The shard format: the only code that knows the HDF5 layout.

A file (stage output or shard) is a set of groups; each group holds equally long 1-D/2-D arrays
whose rows are one kind of thing, plus ``offsets`` when the rows are ragged per clip:
rows ``offsets[c]:offsets[c + 1]`` belong to clip ``c`` (the clip's index in ``clips/id``).
No HDF5 variable-length numeric data; strings are UTF-8. Root attributes are JSON strings.

Layout of a shard (``h5ls -r`` output is in docs/shard-format.md)::

    /clips/{id, status, reason, label, speaker, transcript, source, source_sha256,
            orig_sr, n_channels, duration_s, video_status, video_reason, fps, width, height,
            rotation, logmel_floor_fraction}         one row per clip; status "ok" or a code;
                                                     logmel_floor_fraction (float32): the fraction
                                                     of the clip's voiced (frame, band) cells of
                                                     frames/logmel where eq 2.1's +0.01 binds (mel
                                                     power < 0.01), NaN for a failed clip (issue 18
                                                     item 2; > 0.5 is named in the build summary)
    /vad/{weight, offsets}                           one 0/1 weight per 10 ms
    /frames/{logmel (F, 64) float32, voiced, offsets}  one row per 25 ms frame, 10 ms hop; logmel =
                                                     AVEF eq 2.1 on the samples in 16-bit PCM units
                                                     ([LogMel] signal_scale = 32768; 1 before issue
                                                     18 item 2, LogMel CODE_VERSION 3)
    /units/{t_begin, t_end, kind, offsets}           prosodic units (features.prosody)
    /windows/{clip, unit, frames (W, 64), t_begin, t_end, weight, contiguous, offsets,
              video_frames (W, 16), video_ok, video_reason}
                                                     655 ms windows; ``frames``, ``unit`` and
                                                     ``video_frames`` index the clip's rows of
                                                     /frames, /units and /video (never copies)
    /video/{time, found, interpolated, box, landmarks68 (V, 68, 2), shape49 (V, 98), pca (V, 20),
            crop (V, 173, 173, 3) uint8, crop_small (V, 72, 72, 3) uint8, offsets}
                                                     one row per video frame
    /pca/{mean, components, explained_variance, fit_clips}
                                                     the landmark PCA basis (refit per fold)
    /labels_t/{time float64 s, valence, arousal float32, offsets}
                                                     time-continuous labels (issue 18 item 3), only
                                                     when the manifest names ``continuous_labels``:
                                                     the file's rows per clip, as given (any step);
                                                     a clip without a series has no rows. Window
                                                     targets are not stored: ``ShardReader.window_labels``
                                                     maps a series to the windows on read
                                                     (``features.labels``: the time average over
                                                     each window's voiced span), ``labels_on_grid``
                                                     to any time grid
    /unit_labels/{label, audio_label, visual_label, sound_type, offsets}
                                                     per-unit segment labels (issue 18 item 7, Hsu &
                                                     Wu §II), only when the manifest names
                                                     ``segment_labels``: one row per row of /units
                                                     (same offsets), the audio-visual, audio-only,
                                                     visual-only emotion and the sound type of the
                                                     annotated segment that covers the unit
                                                     (``features.labels.unit_rows``); "" = none

Embeddings (``features.embeddings``, ``pipeline.embeddings``; each present only when its stage is
enabled, ``ShardReader.has(name)`` tells)::

    /vggish/{embedding (P, 128), t_center (P,) s, offsets}   VGGish per 0.96 s patch (Lucas §3);
                                                     uint8 0..255 when PCA post-processing is on
    /windows/vggish (W, 128)                         one VGGish vector per 655 ms window (a 0.96 s
                                                     patch centred on the window's centre)
    /video/descriptor (V, 128), /video/descriptor_frame (V,)
                                                     dlib ResNet face descriptor per frame; the
                                                     frame whose chip made it (−1: no face)
    /video/vggface (V, D)                            VGGFace activations per frame (zeros where
                                                     video/found is 0)
    /text/{glove (n_clips, 100, 300), length, oov (n_clips, 100) uint8}
                                                     GloVe 300-d (Priyasad §3.1)
    /audio/{waveform, offsets}                       16 kHz waveform, no pre-emphasis (SincNet input)

Trust (issue 19). **Checksums** (item 3): every chunked dataset carries HDF5's fletcher32 filter,
placed after the compressor so it covers the stored (compressed) bytes; strings, which live in
HDF5's global heap where no chunk filter reaches, carry a ``crc32`` attribute per dataset. A
changed byte fails the read, and the readers here (``ShardReader``, ``read_group``, ``assemble``) turn
it into ``CorruptShard`` naming the file, the dataset and the fix. Files of format 1 (no
checksums) still read; a file of format 2 says ``checksums: "fletcher32"`` in its root attributes.
``FORMAT_VERSION`` is part of every stage's hash chain (``pipeline.base.BatchTask.chain``): the
stored bytes change with it, so a store built before gets new paths and rebuilds rather than
mixing checksummed shards with unchecked intermediates (``assemble`` copies chunks raw, and a
copied dataset keeps the filters of its source).
**Closed files** (item 6(b)): ``check_closed`` refuses a file that points outside itself
(external storage, external links, soft links that do not resolve inside it, virtual datasets)
with ``UnsafeShard``; every reader here calls it (cached per file) before reading a dataset.
"""
from __future__ import annotations

import contextlib
import json
import os
import zlib
from typing import Iterable, Mapping, Sequence

import numpy as np

from features import registry
from features.errors import CorruptShard, ParameterError, ShardError, UnsafeShard

#: 1: Blosc/gzip/lzf chunks; 2: every chunked dataset also has a fletcher32 checksum (issue 19).
#: Both read; the version is part of every stage's hash chain (see the module docstring).
FORMAT_VERSION = 2
CHECKSUM = "fletcher32"
#: feature name (as models.data names them) -> the dataset that holds it (``features.registry``)
FEATURES = {f.name: f.dataset for f in registry.FEATURES}
FACE_EMBEDDINGS = tuple(f.name for f in registry.FEATURES if f.visual and f.embedding)
CHUNK_BYTES = 256 * 1024
#: Compressor names: None, "gzip" (level 4) and "lzf" (h5py's own filters), "blosc-zstd" (Blosc's
#: zstd at level 1 through hdf5plugin); each with the byte shuffle for items wider than one byte.
#: Chosen by measurement on the demo shard (docs/benchmarks.md): against gzip, blosc-zstd writes
#: 5-7× faster and decompresses ~3× faster (the DataLoader's windows/s is the same within noise,
#: bench_reader.py), for files 3-6 % larger on the float features (waveform
#: 1.36× vs 1.44×, log-mel 2.23× vs 2.32×); on the uint8 face crops, 1.33× against lzf's 1.22× at
#: less than half lzf's time (0.6 vs 1.3 ms per 173 px crop written). Reading these files with
#: h5py needs ``import hdf5plugin`` first (``open_file`` and every reader here do it when it is
#: installed); ``avstore export --codec gzip`` writes a copy that any h5py reads (issue 23 item 5).
COMPRESSORS = (None, "gzip", "lzf", "blosc-zstd")
COMPRESSION = {"f": "blosc-zstd", "i": "blosc-zstd", "u": "blosc-zstd", "O": None, "S": None}
# For bulky intermediate files that never leave the machine (the decoded waveform, read by four
# stages): no filter. lzf saved only ~10 % on float samples and cost a compression on write and a
# decompression on each of the four reads (bench/bench_audio_chain.py).
SCRATCH_COMPRESSION = {"f": None, "i": None, "u": None, "O": None, "S": None}
STR = None  # set lazily: h5py.string_dtype("utf-8")


def pack(arrays: Sequence[np.ndarray], *, dtype=None, row_shape: tuple = ()) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate per-clip arrays; returns (rows, offsets) with offsets of length n_clips + 1."""
    lengths = [len(a) for a in arrays]
    offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if arrays and offsets[-1] > 0:
        rows = np.concatenate([np.asarray(a, dtype=dtype).reshape(-1, *row_shape) for a in arrays])
    else:
        rows = np.zeros((0, *row_shape), dtype=dtype or np.float32)
    return rows, offsets


def _str_dtype():
    import h5py

    return h5py.string_dtype("utf-8")


def _create(group, name: str, data: np.ndarray, compression: Mapping, checksums: bool = True):
    data = np.asarray(data)
    if data.dtype.kind in "OUS":
        values = np.asarray(data, dtype=object).astype(str)
        ds = group.create_dataset(name, data=values.tolist(), dtype=_str_dtype())
        if checksums:  # the strings live in the global heap, where no chunk filter reaches
            ds.attrs["crc32"] = _strings_crc32(values)
        return ds
    if data.size == 0:
        return group.create_dataset(name, data=data)
    row_bytes = max(1, data.itemsize * int(np.prod(data.shape[1:], dtype=np.int64)))
    rows = int(max(1, min(len(data), CHUNK_BYTES // row_bytes)))
    return group.create_dataset(name, data=data, chunks=(rows, *data.shape[1:]), fletcher32=checksums,
                                **_filter(compression.get(data.dtype.kind), data.itemsize))


def _strings_crc32(values: np.ndarray) -> int:
    """crc32 of a string dataset's values (UTF-8, NUL-separated): its checksum (issue 19 item 3)."""
    return zlib.crc32("\0".join(np.asarray(values, dtype=object).ravel().tolist()).encode("utf-8"))


def _filter(name: str | None, itemsize: int) -> dict:
    """``create_dataset`` keywords for a compressor name (``COMPRESSORS``); ``_create`` adds the
    fletcher32 checksum, which HDF5 applies after these filters (issue 19 item 3)."""
    if name is None:
        return {}
    if name in ("gzip", "lzf"):
        return {"compression": name, "shuffle": itemsize > 1}
    if name == "blosc-zstd":
        import hdf5plugin

        shuffle = hdf5plugin.Blosc.SHUFFLE if itemsize > 1 else hdf5plugin.Blosc.NOSHUFFLE
        return dict(hdf5plugin.Blosc(cname="zstd", clevel=1, shuffle=shuffle))
    raise ParameterError(f"unknown compressor {name!r}; one of {COMPRESSORS}")


#: whether ``import hdf5plugin`` worked (None: not tried yet in this process)
_PLUGIN: bool | None = None


def _h5py():
    """h5py with hdf5plugin's filters (Blosc) registered when hdf5plugin is installed. Without it
    (a bare training host, issue 23 item 5) gzip, lzf and unfiltered files read as ever, and a
    read of a Blosc dataset is a ``MissingFilter`` naming the file and the fix."""
    global _PLUGIN
    import h5py

    if _PLUGIN is None:
        try:
            import hdf5plugin  # noqa: F401  (registers the filters with the HDF5 library on import)
            _PLUGIN = True
        except ImportError:
            _PLUGIN = False
    return h5py


class MissingFilter(ShardError):
    """A dataset compressed with a filter this HDF5 library lacks (Blosc without hdf5plugin)."""


def _missing_filter(f, name: str) -> str | None:
    """The filter of dataset ``name`` that this HDF5 library cannot apply, or None."""
    from h5py import h5z

    try:
        plist = f[name].id.get_create_plist()
        for i in range(plist.get_nfilters()):
            code, _, _, label = plist.get_filter(i)
            if not h5z.filter_avail(code):
                return f"{label.decode(errors='replace') or 'filter'} (HDF5 filter {code})"
    except Exception:  # a damaged file: the caller reports it as corrupt
        return None
    return None


def warm_up() -> None:
    """Import h5py and register the filters now (~0.15 s), e.g. before Luigi forks its workers."""
    _h5py()


def open_file(path: str | os.PathLike, mode: str = "r", **kwargs):
    """``h5py.File`` on a store file, with the filters its datasets may use registered."""
    return _h5py().File(path, mode, **kwargs)


# -- trust (issue 19): corrupt and unsafe files ----------------------------------------------------
def _advice(f) -> str:
    try:
        dataset = json.loads(f.attrs["dataset"]) if f is not None else None
    except Exception:  # the attributes themselves may be what is damaged
        dataset = None
    return (f"run `avstore verify` to list the damaged files, then rebuild them with "
            f"`luigi --module pipeline BuildShards --dataset {dataset or '<dataset>'}`")


def _corrupt(path, name: str | None, err: Exception, f=None) -> ShardError:
    path = os.fspath(path)
    if name is not None and f is not None and (missing := _missing_filter(f, name)):
        try:
            dataset = json.loads(f.attrs["dataset"])
        except Exception:
            dataset = "<dataset>"
        return MissingFilter(path, f"{path}: dataset {name.lstrip('/')} is compressed with {missing}, which this "
                                   f"h5py cannot decode (hdf5plugin is not installed): `pip install hdf5plugin`, "
                                   f"or train on a portable copy made where it is: `avstore export --dataset "
                                   f"{dataset} --codec gzip --out DIR`, then `--store DIR`", dataset=name.lstrip("/"))
    if name is None:
        return CorruptShard(path, f"{path}: cannot be opened as HDF5 ({err}): the file is truncated or "
                                  f"corrupt; {_advice(f)}")
    return CorruptShard(path, f"{path}: dataset {name.lstrip('/')} is corrupt ({err}; a checksum or a "
                              f"decompression failed); {_advice(f)}", dataset=name.lstrip("/"))


def _open(path: str | os.PathLike, **kwargs):
    """``h5py.File`` read-only on a store file that ``check_closed`` accepts; a file that does not
    open is a ``CorruptShard`` naming it (a missing one stays ``FileNotFoundError``)."""
    check_closed(path)
    return _open_raw(path, **kwargs)


def _open_raw(path, **kwargs):
    try:
        return _h5py().File(path, "r", **kwargs)
    except FileNotFoundError:
        raise
    except OSError as err:
        raise _corrupt(path, None, err) from err


#: files accepted by ``check_closed``: (device, inode, size, mtime) -> True
_CLOSED: dict[tuple, bool] = {}


def check_closed(path: str | os.PathLike) -> None:
    """Refuse a file that points outside itself (issue 19 item 6(b)): ``UnsafeShard`` naming each
    dataset with HDF5 external storage, each external link, each soft link whose target is not
    an object of the file, each virtual dataset. Reading any of them would read other files of
    this machine (``external=[("/etc/passwd", 0, 100)]`` reads that file's bytes as data).

    The walk looks at every link without following one (``visit_links`` and ``getlink=True``),
    about a millisecond for a shard; a file accepted once is not walked again while its inode,
    size and mtime stay the same. ``pipeline.remote`` calls this on every pulled file.
    """
    st = os.stat(path)
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key in _CLOSED:
        return
    h5py = _h5py()
    problems, soft = [], []
    with _open_raw(path) as f:
        def visit(name):
            link = f.get(name, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                problems.append(f"{name}: external link to {link.filename}:{link.path}")
            elif isinstance(link, h5py.SoftLink):
                soft.append((name, link.path))
            else:
                obj = f[name]
                if isinstance(obj, h5py.Dataset) and obj.is_virtual:
                    sources = sorted({m.file_name for m in obj.virtual_sources()})
                    problems.append(f"{name}: virtual dataset reading {', '.join(sources)}")
                elif isinstance(obj, h5py.Dataset) and obj.external:
                    problems.append(f"{name}: external storage in {', '.join(e[0] for e in obj.external)}")
        f.visit_links(visit)
        if not problems:  # resolving a soft link opens no other file once no external link is left
            problems = [f"{name}: soft link to {target}, which is not in the file"
                        for name, target in soft if not _resolves(f, name)]
    if problems:
        path = os.fspath(path)
        raise UnsafeShard(path, f"{path} points outside the file, refused: {'; '.join(problems)}. A shard "
                                f"holds its data itself; delete this file and rebuild or pull it again",
                          dataset=problems[0].split(":")[0])
    _CLOSED[key] = True


def _resolves(f, name: str) -> bool:
    try:
        return f.get(name) is not None
    except (KeyError, RuntimeError, OSError):  # e.g. a loop: "too many links"
        return False


class _Checked:
    """A dataset whose reads turn HDF5's ``OSError`` (checksum, decompression, truncation) into
    ``CorruptShard`` naming the file and the dataset (issue 19 item 3)."""

    __slots__ = ("ds", "path", "shape", "dtype")

    def __init__(self, ds, path: str):
        self.ds, self.path, self.shape, self.dtype = ds, path, ds.shape, ds.dtype

    def __getitem__(self, sel):
        try:
            return self.ds[sel]
        except OSError as err:
            raise _corrupt(self.path, self.ds.name, err, self.ds.file) from err

    def __len__(self):
        return len(self.ds)


def write(path: str | os.PathLike, *, attrs: Mapping, groups: Mapping[str, Mapping[str, np.ndarray]],
          compression: Mapping | None = None, checksums: bool = True) -> None:
    """Write ``groups`` ({group: {name: array}}) and JSON ``attrs`` to a new HDF5 file at ``path``.

    ``compression`` maps a dtype kind to a compressor name of ``COMPRESSORS`` (default
    ``COMPRESSION``). Every chunked dataset gets a fletcher32 checksum; ``checksums=False`` writes
    a format-1 file without them, only for ``bench/bench_reader.py`` to measure their cost.
    Callers write to a temporary name and rename (Luigi's ``temporary_path``).
    """
    h5py = _h5py()

    nbytes = sum(a.nbytes for arrays in groups.values() for a in arrays.values() if isinstance(a, np.ndarray))
    with h5py.File(path, "w", libver=("earliest", "v110"), **_driver(nbytes)) as f:
        _set_attrs(f, attrs, checksums)
        for gname, arrays in groups.items():
            g = f.require_group(gname)
            for name, data in arrays.items():
                _create(g, name, data, COMPRESSION if compression is None else compression, checksums)


def _set_attrs(f, attrs: Mapping, checksums: bool = True) -> None:
    f.attrs["format_version"] = FORMAT_VERSION if checksums else 1
    if checksums:
        f.attrs["checksums"] = json.dumps(CHECKSUM)
    for key, value in attrs.items():
        if key not in ("format_version", "checksums"):
            f.attrs[key] = json.dumps(value, sort_keys=True, default=str)


def read_attrs(path: str | os.PathLike) -> dict:
    with _open(path) as f:
        return _get_attrs(f)


def _get_attrs(f) -> dict:
    out = {}
    for key, value in f.attrs.items():
        out[key] = json.loads(value) if isinstance(value, str) else value.item() if hasattr(value, "item") else value
    return out


def read_group(path: str | os.PathLike, name: str, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """The arrays of one group (all, or those named in ``keys``), strings decoded to ``str``."""
    with _open(path) as f:
        return {k: _read(ds) for k, ds in f[name].items() if keys is None or k in keys}


@contextlib.contextmanager
def clip_signals(path: str | os.PathLike):
    """``signal(i)``: clip i's waveform in a Decode output (``audio/waveform``, ``audio/offsets``)
    as a ``ClipSignal`` that reads on slicing, so that a stage takes a long clip a block at a time
    and never the batch's whole waveform (issue 19 item 11)."""
    with _open(path, rdcc_nbytes=1 << 20) as f:
        ds = f["audio/waveform"]
        offsets = _read(f["audio/offsets"])
        yield lambda i: ClipSignal(ds, int(offsets[i]), int(offsets[i + 1]), path)


class ClipSignal:
    """One clip's float32 samples in a store file, a 1-D sequence read on slicing (``len``,
    ``shape``, ``[a:b]``): what ``vad_weights``, ``prosodic_units`` and ``logmel`` take."""

    def __init__(self, ds, start: int, stop: int, path):
        self.ds, self.start, self.stop, self.path = ds, start, stop, path
        self.shape = (stop - start,)

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, sel) -> np.ndarray:
        if not isinstance(sel, slice):
            raise TypeError(f"a ClipSignal reads slices only, got {sel!r}")
        a, b, step = sel.indices(len(self))
        if step != 1:
            raise TypeError("a ClipSignal reads contiguous slices only")
        try:
            return self.ds[self.start + a:self.start + max(a, b)]
        except OSError as err:
            raise _corrupt(self.path, self.ds.name, err, self.ds.file) from err

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self[:], dtype=dtype)


def _read(ds) -> np.ndarray:
    """All of ``ds``; a failed read, or strings that do not match their ``crc32`` attribute, is a
    ``CorruptShard`` naming the file and the dataset."""
    try:
        if ds.dtype.kind == "O" or ds.dtype.kind == "S":
            values = ds.asstr()[()] if ds.shape else np.array([], dtype=object)
            crc = ds.attrs.get("crc32")
            if crc is not None and _strings_crc32(values) != crc:
                raise OSError(f"the strings do not match their crc32 {int(crc)}")
            return values
        return ds[()]
    except (OSError, UnicodeDecodeError) as err:
        raise _corrupt(ds.file.filename, ds.name, err, ds.file) from err


def _verify(ds) -> None:
    """Read ``ds`` through its filters, a few chunks at a time: checks every checksum (a raw copy
    does not), in bounded memory."""
    if ds.chunks is None or not ds.size:
        _read(ds)
        return
    step = ds.chunks[0] * max(1, 16 * CHUNK_BYTES // (ds.dtype.itemsize * int(np.prod(ds.chunks))))
    checked = _Checked(ds, ds.file.filename)
    for start in range(0, ds.shape[0], step):
        checked[start:start + step]


#: files up to this size are built in memory and written out on close (HDF5's core driver)
CORE_WRITE_BYTES = 256 << 20


def _driver(nbytes: int) -> dict:
    """``h5py.File`` keywords for writing about ``nbytes``: in memory up to ``CORE_WRITE_BYTES``.
    HDF5 crashes the process (SIGSEGV) when the disk fills while it writes chunks to a file; built
    in memory, the final write fails with an ordinary error instead (``[Errno 28] No space left on
    device``), which the build reports (issue 19 item 2). Larger files rely on the build's free-space
    check before writing (``pipeline.base``)."""
    return dict(driver="core", backing_store=True) if nbytes <= CORE_WRITE_BYTES else {}


def assemble(path: str | os.PathLike, *, sources: Iterable[str | os.PathLike], attrs: Mapping,
             groups: Mapping[str, Mapping[str, np.ndarray]], skip: Iterable[str] = ()) -> None:
    """Write a shard: ``groups`` plus every dataset of the ``sources`` files, copied unchanged.

    A dataset present twice (in several sources, or in ``groups`` and a source) must be equal
    (e.g. ``frames/offsets``); ``skip`` names datasets or groups not to copy (``"clips"``).
    Every source is checked first (``check_closed``, every chunk read through its checksum): a
    damaged intermediate is a ``CorruptShard``, never copied into the shard (issue 19).
    """
    h5py = _h5py()

    write(path, attrs=attrs, groups=groups)
    skip = set(skip)
    # No chunk cache on either side: with HDF5 2.0.0, ``copy`` of a compressed + fletcher32 dataset
    # whose chunks were just read into the cache corrupts the heap (malloc abort); tested.
    nbytes = os.path.getsize(path) + sum(os.path.getsize(s) for s in sources)
    with h5py.File(path, "a", rdcc_nbytes=0, **_driver(nbytes)) as out:
        for src in sources:
            with _open(src, rdcc_nbytes=0) as f:
                for gname, g in f.items():
                    if gname in skip:
                        continue
                    dst = out.require_group(gname)
                    for name, ds in g.items():
                        key = f"{gname}/{name}"
                        if key in skip:
                            continue
                        if name in dst:
                            if not np.array_equal(dst[name][()], _read(ds)):
                                raise ParameterError(f"{key} differs between the sources of {path}")
                            continue
                        _verify(ds)  # the copy moves raw chunks: a corrupt one must stop here
                        f.copy(ds, dst, name=name)


class ShardReader:
    """Read one shard. Opens the file on first use in the calling process (DataLoader-safe).

    >>> s = ShardReader(path); x = s.window(0)          # (64 mels, 64 frames, 3) float32
    >>> s.clips["id"], s.clips["status"], s.windows["clip"], s.logmel(c)
    """

    def __init__(self, path: str | os.PathLike, *, cache_bytes: int = 64 * 1024 * 1024):
        self.path = os.fspath(path)
        self._cache_bytes = cache_bytes
        self._f = None
        self._pid = None
        self._clips = self._windows = None
        self._handles = {}

    def _file(self):
        """The open file (``check_closed`` first: an ``UnsafeShard`` is refused before any read)."""
        if self._f is None or self._pid != os.getpid():
            self._f = _open(self.path, rdcc_nbytes=self._cache_bytes, rdcc_nslots=10007)
            self._pid, self._handles = os.getpid(), {}
        return self._f

    def __getstate__(self):  # a pickled reader (DataLoader worker) opens the file anew
        return {"path": self.path, "cache_bytes": self._cache_bytes}

    def __setstate__(self, state):
        self.__init__(state["path"], cache_bytes=state["cache_bytes"])

    def close(self) -> None:
        if self._f is not None and self._pid == os.getpid():
            self._f.close()
        self._f, self._handles = None, {}

    @property
    def attrs(self) -> dict:
        return _get_attrs(self._file())

    def group(self, name: str) -> dict[str, np.ndarray]:
        return {k: _read(ds) for k, ds in self._file()[name].items()}

    @property
    def clips(self) -> dict[str, np.ndarray]:
        if self._clips is None:
            self._clips = self.group("clips")
        return self._clips

    @property
    def windows(self) -> dict[str, np.ndarray]:
        """The window table (``clip``, ``unit``, ``frames``, ``t_begin``, ``t_end``, ``weight``)."""
        if self._windows is None:
            self._windows = self.group("windows")
            self._frame_offsets = _read(self._file()["frames/offsets"])
        return self._windows

    def contains(self, key: str) -> bool:
        """Whether the shard holds the dataset or group ``key`` (e.g. "video/shape49")."""
        return key in self._file()

    def array(self, key: str) -> np.ndarray:
        """The whole dataset ``key`` (checked: a failed read is a ``CorruptShard``)."""
        return np.asarray(self._dataset(key)[()])

    def row_shape(self, key: str) -> tuple[tuple, np.dtype]:
        """(the shape of one row, the dtype) of dataset ``key``, without reading it."""
        ds = self._dataset(key)
        return tuple(ds.shape[1:]), ds.dtype

    def _dataset(self, key: str) -> _Checked:
        """An open dataset handle, kept per process (reopening one drops its chunk cache); a read
        that fails is a ``CorruptShard`` naming the shard and ``key``."""
        f = self._file()
        if key not in self._handles:
            self._handles[key] = _Checked(f[key], self.path)
        return self._handles[key]

    @property
    def n_windows(self) -> int:
        return len(self.windows["clip"])

    def _ragged(self, group: str, name: str, clip: int) -> np.ndarray:
        off = self._dataset(f"{group}/offsets")
        return self._dataset(f"{group}/{name}")[off[clip]:off[clip + 1]]

    def logmel(self, clip: int) -> np.ndarray:
        """(n_frames, n_mels) log-mel frames of clip ``clip``."""
        return self._ragged("frames", "logmel", clip)

    def vad(self, clip: int) -> np.ndarray:
        return self._ragged("vad", "weight", clip)

    def video(self, clip: int, name: str, rows=None) -> np.ndarray:
        """Clip ``clip``'s rows of ``video/<name>`` (e.g. "time", "box", "crop"); ``rows`` picks
        some of them (indices into the clip's frames, increasing) without reading the rest."""
        off = self._dataset("video/offsets")
        ds = self._dataset(f"video/{name}")
        if rows is None:
            return ds[off[clip]:off[clip + 1]]
        return ds[off[clip] + np.asarray(rows, dtype=np.int64)]

    def units(self, clip: int) -> dict[str, np.ndarray]:
        return {k: self._ragged("units", k, clip) for k in ("t_begin", "t_end", "kind")}

    def window_frames(self, i: int) -> np.ndarray:
        """(64, n_mels) log-mel rows of window ``i`` (gathered, not stored twice)."""
        w = self.windows
        idx = self._frame_offsets[w["clip"][i]] + w["frames"][i]
        block = self._dataset("frames/logmel")[idx[0]: idx[-1] + 1]
        return block[idx - idx[0]]

    def window(self, i: int) -> np.ndarray:
        """The AVEF 64×64×3 image of window ``i``: (n_mels, n_frames, (S, Δ, ΔΔ)) float32."""
        from features.audio import window_image

        return window_image(self.window_frames(i))

    def _window_video_rows(self, name: str, i: int) -> np.ndarray:
        w = self.windows
        idx = w["video_frames"][i]
        ds = self._dataset(f"video/{name}")
        if idx[0] < 0:  # a window without usable frames (windows/video_ok is 0): zeros
            return np.zeros((len(idx), *ds.shape[1:]), ds.dtype)
        rows = self._dataset("video/offsets")[w["clip"][i]] + idx
        block = ds[rows.min(): rows.max() + 1]
        return block[rows - rows.min()]

    def window_video(self, i: int, *, small: bool = False) -> np.ndarray:
        """(16, H, W, 3) uint8 face crops of window ``i`` (AVEF §2.1.2), 173 px or, with
        ``small``, 72 px; zeros where ``windows["video_ok"][i]`` is 0."""
        return self._window_video_rows("crop_small" if small else "crop", i)

    def window_pca(self, i: int) -> np.ndarray:
        """(16, 20) PCA-whitened 49-point shapes of window ``i``'s frames (Chao §3.1)."""
        return self._window_video_rows("pca", i)

    def window_batch(self, indices) -> np.ndarray:
        """(len(indices), n_mels, n_frames, 3): ``window`` for many windows, Δ computed at once
        (for a Dataset's ``__getitems__``)."""
        from features.audio import window_image

        return window_image(np.stack([self.window_frames(int(i)) for i in indices]))

    # -- embeddings (present when their stage was enabled; ``has`` tells) ----------------------
    def has(self, name: str) -> bool:
        """Whether feature ``name`` (``FEATURES``: "vggish", "descriptor", "glove", ...) is in the shard."""
        if name not in FEATURES:
            raise ParameterError(f"unknown feature {name!r}; known: {sorted(FEATURES)}")
        return FEATURES[name] in self._file()

    def _need(self, name: str) -> None:
        if not self.has(name):
            raise KeyError(f"{self.path} has no {name!r} ({FEATURES[name]}): enable it in workflows.cfg "
                           f"([Shard] embeddings and the stage's weights / path) and rebuild")

    def vggish(self, clip: int) -> np.ndarray:
        """(n_patches, 128) VGGish embeddings of clip ``clip``, one per 0.96 s patch (hop 0.96 s;
        centre times in ``group("vggish")["t_center"]``); float32 (uint8 if PCA-quantised)."""
        self._need("vggish")
        off = self._dataset("vggish/offsets")
        return self._dataset("vggish/embedding")[off[clip]:off[clip + 1]]

    def window_vggish(self, i: int) -> np.ndarray:
        """(128,) VGGish embedding of the 0.96 s patch centred on window ``i``."""
        self._need("vggish_window")
        return self._dataset("windows/vggish")[i]

    def face_embedding(self, clip: int, name: str = "descriptor") -> np.ndarray:
        """(n_frames, D) per-frame face embedding ("descriptor": dlib 128-d, "vggface") of
        clip ``clip``; rows where ``video(clip, "found")`` is 0 are zeros, not data."""
        if name not in FACE_EMBEDDINGS:
            raise ParameterError(f"name must be one of {FACE_EMBEDDINGS}, got {name!r}")
        self._need(name)
        return self.video(clip, name)

    def window_face_embedding(self, i: int, name: str = "descriptor") -> np.ndarray:
        """(16, D) face embeddings of window ``i``'s aligned frames (zeros where video_ok is 0)."""
        if name not in FACE_EMBEDDINGS:
            raise ParameterError(f"name must be one of {FACE_EMBEDDINGS}, got {name!r}")
        self._need(name)
        return self._window_video_rows(name, i)

    def glove(self, clip: int) -> dict:
        """{"vectors": (100, 300) float32, "length": int, "oov": (100,) bool} of clip ``clip``'s
        transcript (Priyasad §3.1); padding rows are zeros at index >= length."""
        self._need("glove")
        return {"vectors": self._dataset("text/glove")[clip], "length": int(self._dataset("text/length")[clip]),
                "oov": self._dataset("text/oov")[clip].astype(bool)}

    def window_feature(self, name: str, i: int) -> np.ndarray:
        """Feature ``name`` of window ``i`` by its declaration (``features.registry``): its row of a
        per-window dataset, or (16, ...) rows of a per-video-frame one at the window's aligned frames
        (zeros where video_ok is 0). Any declared feature reads this way, with no method of its own."""
        f = registry.BY_NAME[name]
        self._need(name)
        if f.rows == "window":
            return self._dataset(f.dataset)[i]
        if f.rows == "video frame" and f.dataset.startswith("video/"):
            return self._window_video_rows(f.dataset.split("/", 1)[1], i)
        raise ParameterError(f"feature {name!r} has rows per {f.rows}: not one value per window")

    def clip_feature(self, name: str, clip: int) -> dict:
        """Feature ``name`` of clip ``clip`` by its declaration: {"value": its row (rows per clip) or
        its rows (a ragged group with ``offsets``)} and, for token vectors, {"length": int}."""
        f = registry.BY_NAME[name]
        self._need(name)
        if f.rows == "clip":
            out = {"value": self._dataset(f.dataset)[clip]}
            if f.length:
                out["length"] = int(self._dataset(f.length)[clip])
            return out
        off = self._dataset(f"{f.dataset.rsplit('/', 1)[0]}/offsets")
        return {"value": self._dataset(f.dataset)[off[clip]:off[clip + 1]]}

    # -- time-continuous labels (issue 18 item 3; present when ``has_labels_t``) ------------------
    @property
    def has_labels_t(self) -> bool:
        """Whether the shard holds time-continuous labels (``/labels_t``)."""
        return "labels_t/time" in self._file()

    def labels_t(self, clip: int) -> dict[str, np.ndarray]:
        """Clip ``clip``'s series: ``time`` (n,) s, ``valence``, ``arousal`` (n,); n = 0 when it has none."""
        if not self.has_labels_t:
            raise KeyError(f"{self.path} has no time-continuous labels (/labels_t): name a continuous_labels "
                           f"file in the manifest (docs/corpora.md) and rebuild")
        return {k: self._ragged("labels_t", k, clip) for k in ("time", "valence", "arousal")}

    # -- per-unit segment labels (issue 18 item 7; present when ``has_unit_labels``) ----------------
    @property
    def has_unit_labels(self) -> bool:
        """Whether the shard holds per-unit segment labels (``/unit_labels``)."""
        return "unit_labels/offsets" in self._file()

    def unit_labels(self, clip: int) -> dict[str, np.ndarray]:
        """Clip ``clip``'s per-unit ``label``, ``audio_label``, ``visual_label``, ``sound_type``
        (n_units,) str, "" where not annotated; one row per row of ``units(clip)``."""
        if not self.has_unit_labels:
            raise KeyError(f"{self.path} has no segment labels (/unit_labels): name a segment_labels file "
                           f"in the manifest (docs/corpora.md) and rebuild")
        f = self._file()
        return {k: np.array([v.decode("utf-8") if isinstance(v, bytes) else str(v)
                             for v in self._ragged("unit_labels", k, clip)], dtype=object)
                for k in ("label", "audio_label", "visual_label", "sound_type") if f"unit_labels/{k}" in f}

    def frame_grid(self) -> tuple[float, float]:
        """(frame_ms, hop_ms) of the clips' audio frames (the LogMel stage's, as built; 25, 10)."""
        if not hasattr(self, "_grid"):
            logmel = (self.attrs.get("config") or {}).get("logmel") or {}
            self._grid = (float(logmel.get("frame_ms", 25.0)), float(logmel.get("hop_ms", 10.0)))
        return self._grid

    def window_labels(self, indices) -> np.ndarray:
        """(len(indices), 2) float64 (valence, arousal) targets of the windows ``indices``:
        ``features.labels.window_means`` of their clip's series over each window's voiced span;
        NaN where the window lies outside the labelled time or its clip has no series."""
        from features.labels import window_means

        idx = np.asarray(indices, dtype=np.int64).ravel()
        w = self.windows
        out = np.full((len(idx), 2), np.nan)
        frame_ms, hop_ms = self.frame_grid()
        for clip in np.unique(w["clip"][idx]) if len(idx) else []:
            sel = np.flatnonzero(w["clip"][idx] == clip)
            lab = self.labels_t(int(clip))
            if len(lab["time"]) >= 2:
                out[sel] = window_means(lab["time"], np.stack([lab["valence"], lab["arousal"]], 1),
                                        w["frames"][idx[sel]], frame_ms=frame_ms, hop_ms=hop_ms)
        return out

    def labels_on_grid(self, clip: int, step: float, *, start: float = 0.0, stop: float | None = None,
                       how: str = "mean") -> tuple[np.ndarray, np.ndarray]:
        """Clip ``clip``'s labels on a time grid (``features.labels.to_grid``): (cell starts (m,),
        (m, 2) valence, arousal); ``how`` "mean" over each cell or "interp" at its start."""
        from features.labels import to_grid

        lab = self.labels_t(clip)
        if len(lab["time"]) < 2:
            grid = start + step * np.arange(max(0, int(np.ceil(((stop or start) - start) / step - 1e-9))))
            return grid, np.full((len(grid), 2), np.nan)
        return to_grid(lab["time"], np.stack([lab["valence"], lab["arousal"]], 1), step, start=start, stop=stop,
                       how=how)

    def waveform(self, clip: int) -> np.ndarray:
        """(n,) float32 16 kHz waveform of clip ``clip``, no pre-emphasis (SincNet input)."""
        self._need("waveform")
        off = self._dataset("audio/offsets")
        return self._dataset("audio/waveform")[off[clip]:off[clip + 1]]


# -- copies with another codec (``avstore export``, issue 23 item 5) --------------------------------
#: HDF5 filter ids: what each codec puts in a dataset's pipeline (besides HDF5's shuffle, 2, with
#: gzip and lzf on items wider than a byte, and fletcher32, 3)
FILTER_IDS = {"gzip": 1, "lzf": 32000, "none": None, "blosc-zstd": 32001}
KEPT = ("clips", "windows")  # groups every reader needs (and every group's offsets)


def _excluded(name: str, exclude) -> bool:
    return any(name == e or name.startswith(e + "/") for e in exclude)


def check_exclude(exclude, names: set[str]) -> list[str]:
    """The ``--exclude`` names, normalised; a name of no dataset or group of the build (``names``),
    or one that every reader needs (``KEPT``, ``<group>/offsets``), is a ``ParameterError``."""
    out = []
    for e in exclude:
        e = e.strip("/")
        if e.split("/")[0] in KEPT or e.endswith("/offsets"):
            raise ParameterError(f"--exclude {e}: every reader needs {', '.join(KEPT)} and the offsets of each group")
        if not any(_excluded(n, [e]) for n in names):
            some = sorted(n for n in names if n.split("/")[0] not in KEPT and not n.endswith("/offsets"))
            raise ParameterError(f"--exclude {e}: the build has no such dataset or group; it has {', '.join(some)}")
        out.append(e)
    return sorted(set(out))


def dataset_names(path: str) -> set[str]:
    """Every group and dataset name of a store file."""
    with _open(path) as f:
        found = set()
        f.visit(found.add)
    return found


def _block(ds) -> int:
    """Rows per read: whole chunks, about 64 MiB."""
    rows = ds.chunks[0] if ds.chunks else max(1, len(ds))
    row_bytes = max(1, ds.dtype.itemsize * int(np.prod(ds.shape[1:], dtype=np.int64)))
    return rows * max(1, (256 * CHUNK_BYTES) // (rows * row_bytes))


def _copy_dataset(ds, group, name: str, codec: str, path: str):
    if ds.dtype.kind in "OS":  # strings: _read checks their crc32; the attribute is copied below
        new = _create(group, name, _read(ds), {}, checksums=False)
    elif ds.chunks is None:  # empty or contiguous: as it is
        new = group.create_dataset(name, data=_read(ds))
    else:
        new = group.create_dataset(name, shape=ds.shape, dtype=ds.dtype, chunks=ds.chunks, fletcher32=ds.fletcher32,
                                   **_filter(None if codec == "none" else codec, ds.dtype.itemsize))
        src, step = _Checked(ds, path), _block(ds)
        for start in range(0, ds.shape[0], step):
            new[start:start + step] = src[start:start + step]
    for k, v in ds.attrs.items():
        new.attrs[k] = v
    return new


def copy_shard(src: str, dst: str, *, codec: str, exclude=(), note: dict | None = None) -> None:
    """Write shard ``src`` to ``dst`` with ``codec`` on every chunked numeric dataset, without the
    ``exclude``d datasets; ``note`` goes into the root attribute ``export`` (JSON)."""
    h5py = _h5py()
    with _open(src) as f:
        nbytes = sum(obj.nbytes for obj in _objects(f) if isinstance(obj, h5py.Dataset))
        with h5py.File(dst, "w", libver=("earliest", "v110"), **_driver(nbytes)) as out:
            for k, v in f.attrs.items():
                out.attrs[k] = v
            if note is not None:
                out.attrs["export"] = json.dumps(note, sort_keys=True)
            for obj in _objects(f):
                name = obj.name.lstrip("/")
                if _excluded(name, exclude):
                    continue
                if isinstance(obj, h5py.Dataset):
                    parent, _, leaf = name.rpartition("/")
                    _copy_dataset(obj, out.require_group(parent or "/"), leaf, codec, src)
                else:
                    g = out.require_group(name)
                    for k, v in obj.attrs.items():
                        g.attrs[k] = v


def _objects(f) -> list:
    found = []
    f.visititems(lambda name, obj: found.append(obj))
    return found


def compare(src: str, dst: str, *, codec: str, exclude=()) -> list[str]:
    """The differences between shard ``src`` and its export ``dst``: names, dtypes, shapes,
    chunks, values, attributes (all but the root's ``export``), and numeric datasets whose
    filters are not ``codec`` (+ shuffle, + fletcher32 as in the source); [] when it is a copy."""
    h5py = _h5py()
    diffs = []
    with _open(src) as a, _open(dst) as b:
        want, got = ({o.name for o in _objects(x) if not _excluded(o.name.lstrip("/"), exclude)} for x in (a, b))
        diffs += [f"{n}: only in the source" for n in sorted(want - got)]
        diffs += [f"{n}: not in the source" for n in sorted(got - want)]
        for name in ["/", *sorted(want & got)]:
            x, y = a[name], b[name]
            ka, kb = (set(o.attrs) - ({"export"} if name == "/" else set()) for o in (x, y))
            diffs += [f"{name}: attribute {k} only in one file" for k in sorted(ka ^ kb)]
            diffs += [f"{name}: attribute {k} differs" for k in sorted(ka & kb)
                      if not np.array_equal(x.attrs[k], y.attrs[k])]
            if isinstance(x, h5py.Dataset):
                diffs += _dataset_diffs(x, y, codec, src, dst)
    return diffs


def _dataset_diffs(x, y, codec: str, src: str, dst: str) -> list[str]:
    if (x.dtype, x.shape, x.chunks) != (y.dtype, y.shape, y.chunks):
        return [f"{x.name}: dtype/shape/chunks {x.dtype} {x.shape} {x.chunks} -> {y.dtype} {y.shape} {y.chunks}"]
    if x.dtype.kind in "OS" or x.chunks is None:
        return [] if np.array_equal(_read(x), _read(y), equal_nan=x.dtype.kind == "f") else [f"{x.name}: values differ"]
    plist = y.id.get_create_plist()
    filters = {plist.get_filter(i)[0] for i in range(plist.get_nfilters())}
    shuffle = 2 if codec in ("gzip", "lzf") and x.dtype.itemsize > 1 else None  # Blosc shuffles inside
    expect = {FILTER_IDS[codec], shuffle} - {None}
    if filters != expect | ({3} if x.fletcher32 else set()):
        return [f"{x.name}: HDF5 filters {sorted(filters)}, expected {sorted(expect)} (+3 fletcher32 as in the source)"]
    a, b, step = _Checked(x, src), _Checked(y, dst), _block(x)
    for start in range(0, x.shape[0], step):
        if not np.array_equal(a[start:start + step], b[start:start + step], equal_nan=x.dtype.kind == "f"):
            return [f"{x.name}: values differ from row {start}"]
    return []


def __getattr__(name: str):
    """``features.store.Shard``, the reader's old name (the Luigi task ``pipeline.Shard`` has it):
    still found, with a DeprecationWarning."""
    if name == "Shard":
        import warnings

        warnings.warn("features.store.Shard is now features.store.ShardReader (pipeline.Shard is the Luigi task)",
                      DeprecationWarning, stacklevel=2)
        return ShardReader
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
