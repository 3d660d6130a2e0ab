"""The hash chain: every output path carries a digest of everything that made it.

A stage's digest covers its name, its ``CODE_VERSION``, its own significant parameters, the
digests of the stages it requires and, for the first stage, the identity of its clips (id, file
name, size, mtime). Change a parameter and only that stage and its descendants get new paths; the
others are found where they were (the gokart pattern). The same facts are written as JSON beside
each output (``<stage>/<digest>/stage.json``) and into its HDF5 attributes; ``stage.json`` also
records each output's sha256, size and mtime, and an output that no longer matches is computed
again (issue 19 item 4).
"""
from __future__ import annotations

import datetime
import errno
import functools
import getpass
import hashlib
import json
import logging
import math
import os
import platform
import shutil
import zlib
from contextlib import contextmanager
from importlib import metadata

import luigi
import numpy as np

from pipeline.files import _remove, atomic_path, file_facts, file_problem, locked, publish, remove_stale_temps, temp_name
from pipeline.manifest import Clip, get_dataset

logger = logging.getLogger("luigi-interface")
COMMON = ("dataset", "batch", "batch_size", "manifest", "store")
LIBRARIES = ("numpy", "h5py", "hdf5plugin", "luigi", "librosa", "soxr", "av", "webrtcvad-wheels",
             "praat-parselmouth", "scikit-learn", "opencv-python-headless", "dlib-bin", "face-recognition-models")


def digest(obj) -> str:
    """16 hex digits of the sha256 of ``obj``'s canonical JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def batch_of(clip_id: str, n_batches: int) -> int:
    """Stable batch assignment by clip id (crc32), independent of the other clips' ids."""
    return zlib.crc32(clip_id.encode()) % n_batches


def n_batches(n_clips: int, batch_size: int) -> int:
    return max(1, math.ceil(n_clips / batch_size))


DEFAULT_BATCH_SIZE = 64  # clips per batch unless the corpus would need more than MAX_BATCHES batches
MAX_BATCHES = 128  # batches per dataset at most, when the batch size is automatic (docs/scale.md)


def auto_batch_size(n_clips: int, *, batch_size: int = DEFAULT_BATCH_SIZE, max_batches: int = MAX_BATCHES) -> int:
    """Clips per batch for a dataset of ``n_clips``: ``batch_size`` (64), unless that makes more than
    ``max_batches`` batches; then just enough clips per batch for ``max_batches``. Corpora up to
    ``batch_size * max_batches`` clips (8,192) keep today's batches; above, the task count stays flat
    (Luigi's scheduler costs grow with the square of it: docs/scale.md)."""
    if batch_size < 1 or max_batches < 1:
        raise ValueError(f"batch_size and max_batches must be >= 1, got {batch_size} and {max_batches}")
    return max(batch_size, math.ceil(n_clips / max_batches))


_BATCHES: dict = {}  # (id(clips), n_batches) -> (clips, {batch: clips of the batch})


def batches_of(clips: tuple, k: int) -> dict[int, tuple]:
    """``{batch: its clips}`` for ``k`` batches (``batch_of``), the clips' order kept; computed once
    per clip tuple (``Dataset.clip_tuple``) and ``k``: every task of every batch asks (docs/scale.md:
    at 100,000 clips and 1,563 batches, one pass per task took minutes)."""
    hit = _BATCHES.get((id(clips), k))
    if hit is None or hit[0] is not clips:
        out: dict[int, list] = {}
        for c in clips:
            out.setdefault(batch_of(c.id, k), []).append(c)
        if len(_BATCHES) >= 16:
            _BATCHES.clear()
        hit = _BATCHES[id(clips), k] = (clips, {b: tuple(cs) for b, cs in out.items()})
    return hit[1]


def library_versions() -> dict:
    return dict(_library_versions())


@functools.lru_cache(maxsize=1)
def _library_versions() -> dict:  # importlib.metadata scans site-packages: ~25 ms a call
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


_WARM = []


def _warm_up() -> None:
    """Before the first stage runs: load the signal libraries once in this (the scheduling)
    process, so forked workers inherit them, and keep numpy's BLAS to one thread per process
    (per-clip matrices are small; with --workers N, N processes already fill the cores)."""
    if _WARM:
        return
    _WARM.append(True)
    import threadpoolctl

    from features import audio, store

    threadpoolctl.threadpool_limits(1)
    audio.warm_up()
    store.warm_up()


# -- disk full (issue 19 item 2) -------------------------------------------------------------------
SPACE_MARGIN = 1 << 20  # HDF5 metadata, chunk headers: an output needs at most its arrays + 10 % + this


def array_bytes(groups: dict) -> int:
    """The uncompressed size of ``{group: {name: array}}`` (strings: their UTF-8 bytes): an upper
    bound of what the compressed HDF5 file takes, before ``SPACE_MARGIN``."""
    import numpy as np

    total = 0
    for arrays in groups.values():
        for data in arrays.values():
            data = np.asarray(data)
            total += sum(len(str(v).encode()) + 16 for v in data.ravel()) if data.dtype.kind in "OUS" else data.nbytes
    return total


def no_space(path: str, err: object = "") -> OSError:
    """The error a full disk gives: it names the file, says "no space left on device" and what to do."""
    return OSError(errno.ENOSPC, f"no space left on device for {path}{f' ({err})' if err else ''}: free some "
                                 f"space there (or set [paths] store elsewhere) and run the build again; the "
                                 f"outputs already written are kept and nothing half-written was published")


def ensure_space(path: str, need: int) -> None:
    """Refuse to start writing ``path`` when its file system has less than ``need`` bytes (plus
    10 % and ``SPACE_MARGIN``) free. HDF5 meeting ENOSPC while it flushes its chunk cache crashes
    the process (SIGSEGV in h5py, measured on a 1 MiB tmpfs): this check comes first."""
    want = int(need * 1.1) + SPACE_MARGIN
    free = shutil.disk_usage(os.path.dirname(path) or ".").free
    if free < want:
        raise no_space(path, f"about {want / 2**20:.1f} MiB needed, {free / 2**20:.1f} MiB free")


@contextmanager
def enospc_named(path: str):
    """Turn an ENOSPC met while writing ``path`` (h5py says it as OSError or RuntimeError) into
    ``no_space(path)``."""
    try:
        yield
    except (OSError, RuntimeError) as err:
        if getattr(err, "errno", None) == errno.ENOSPC or "No space left on device" in str(err):
            raise no_space(path, "the disk filled while writing") from err
        raise


# -- reading an upstream output, per clip ----------------------------------------------------------
def read_input(task: luigi.Task, *groups: str) -> dict:
    """{group: {name: array}} of an upstream output, plus its clip table and attributes.

    A group given as "group/name" reads only that array of the group."""
    from features import store

    path = task.output().path
    out = {"clips": store.read_group(path, "clips")}
    for g in groups:
        name, _, key = g.partition("/")
        out.setdefault(name, {}).update(store.read_group(path, name, [key] if key else None))
    out["attrs"] = store.read_attrs(path)
    return out


def clip_rows(group: dict, name: str, i: int) -> np.ndarray:
    off = group["offsets"]
    return group[name][off[i]:off[i + 1]]


class DamagedInput(RuntimeError):
    """An input of a stage does not match the sha256 recorded for it (issue 19 item 4)."""


class StoreTarget(luigi.LocalTarget):
    """A LocalTarget whose ``temporary_path`` is ``atomic_path``: luigi's own raises
    ``FileAlreadyExists`` when a concurrent build finished the same file first and leaves a
    visible ``<name>-luigi-tmp-NNNN`` behind on failure."""

    def temporary_path(self):
        return atomic_path(self.path)


class paths(luigi.Config):
    """``[paths]`` in workflows.cfg: where the manifest is and where outputs go."""
    manifest = luigi.Parameter(default="data_manifest.yaml")
    store = luigi.Parameter(default="store")


class BatchTask(luigi.Task):
    """A stage run on one batch of clips of a dataset; subclasses set STAGE and CODE_VERSION."""

    STAGE = ""
    CODE_VERSION = "1"

    dataset = luigi.Parameter(description="dataset name in the manifest")
    batch = luigi.IntParameter(description="batch index (clips assigned by crc32 of their id)")
    batch_size = luigi.IntParameter(default=64, description="clips per batch (sets the number of batches)")
    manifest = luigi.Parameter(config_path={"section": "paths", "name": "manifest"})
    store = luigi.Parameter(config_path={"section": "paths", "name": "store"})

    PULL = False  # look for the output in the [remote] before computing it (Shard sets True)

    def complete(self) -> bool:
        """Luigi asks this while scheduling, in the parent process: the first stage found
        missing warms the libraries up there, before any worker forks, and each missing stage
        loads its models there (``warm_up``): dlib's detector and 68-point predictor take ~1.3 s
        to load, once instead of once per batch.

        An output that is there but does not match the size and sha256 recorded for it in
        ``stage.json`` (truncated, a byte changed, replaced; or never recorded) is not complete
        (issue 19 item 4): the stage runs again and its output replaces the damaged file.
        Size and mtime unchanged count as unchanged (``pipeline.files.file_problem``).

        A stage with ``PULL`` whose output is missing and in the configured ``[remote]`` downloads
        it here (verified, atomically): complete() is True and Luigi never schedules its upstream
        stages. A damaged output is computed again, not pulled over.
        """
        path = self.output().path
        exists = os.path.exists(path)
        done = exists and self.output_intact()
        if not exists and self.PULL:
            from pipeline import remote

            done = remote.pull_output(self)
            if done:  # verified against the remote's sha256: recorded as this store's own
                with locked(self.stage_dir()):
                    self.record_output()
        if not done:
            _warm_up()
            try:
                self.warm_up()
            except Exception as err:  # e.g. a missing model file: run() reports it, as the task's failure
                logger.debug("%s: warm-up skipped: %s", self.STAGE, err)
        return done

    def warm_up(self) -> None:
        """Load what this stage's ``run`` needs (models) into a cache of the scheduling process,
        where forked workers find it; called by ``complete()`` when the stage is missing."""

    # -- clips --------------------------------------------------------------------------------
    def clips(self) -> list[Clip]:
        all_clips = get_dataset(self.manifest, self.dataset).clip_tuple()
        return list(batches_of(all_clips, n_batches(len(all_clips), self.batch_size)).get(self.batch, ()))

    # -- the hash chain -----------------------------------------------------------------------
    def own_params(self) -> dict:
        return {name: getattr(self, name) for name, _ in self.get_params() if name not in COMMON}

    def inputs(self) -> dict:
        req = self.requires()
        return req if isinstance(req, dict) else {}

    def chain(self) -> dict:
        if not hasattr(self, "_chain"):
            from features.store import FORMAT_VERSION  # issue 19: a new file format gets new paths

            chain = {"stage": self.STAGE, "code_version": self.CODE_VERSION, "format_version": FORMAT_VERSION,
                     "params": self.own_params(),
                     "inputs": {k: t.chain_digest() for k, t in sorted(self.inputs().items())}}
            if not chain["inputs"]:
                chain["clips"] = [c.identity() for c in self.clips()]
            self._chain = chain
        return self._chain

    def chain_digest(self) -> str:
        return digest(self.chain())

    def stage_dir(self) -> str:
        return os.path.join(self.store, self.dataset, self.STAGE, self.chain_digest())

    def output(self):
        return StoreTarget(os.path.join(self.stage_dir(), f"batch-{self.batch:04d}.h5"))

    def provenance(self) -> dict:
        """Root attributes of this output (JSON-able)."""
        chain = dict(self.chain())
        chain.pop("clips", None)
        return {"dataset": self.dataset, "stage": self.STAGE, "batch": self.batch,
                "digest": self.chain_digest(), "chain": chain, "libraries": library_versions(),
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "builder": f"{getpass.getuser()}@{platform.node()}"}

    # -- outputs and their records (issue 19 items 2 and 4) -----------------------------------
    def stage_json_path(self) -> str:
        return os.path.join(self.stage_dir(), "stage.json")

    def stage_json(self) -> dict:
        """``stage.json`` beside the outputs: why files with this digest exist (the chain) and
        ``files``: {output name: {sha256, bytes, mtime_ns}}. {} when absent or unreadable."""
        try:
            with open(self.stage_json_path(), encoding="utf-8") as f:
                doc = json.load(f)
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def output_problem(self, *, trust_stat: bool = True) -> str | None:
        """What is wrong with the output against its record in ``stage.json``, or None."""

        path = self.output().path
        meta = self.stage_json().get("files", {}).get(os.path.basename(path))
        if not isinstance(meta, dict):
            return f"no sha256 recorded for it in {self.stage_json_path()}" if os.path.exists(path) else "missing"
        return file_problem(path, meta, trust_stat=trust_stat)

    def output_intact(self) -> bool:
        """``output_problem`` is None; a problem is looked at again under ``locked``, so that an
        output another process has published but not yet recorded is not taken for damaged."""
        problem = self.output_problem()
        if problem and problem != "missing":
            with locked(self.stage_dir()):
                problem = self.output_problem()
        if problem:
            logger.warning("%s: %s; computing it again", self.output().path, problem)
        return problem is None

    def record_output(self) -> None:
        """Record the output's sha256, size and mtime in ``stage.json`` (call under ``locked``)."""

        path = self.output().path
        doc = self.stage_json()
        files = {**doc.get("files", {}), os.path.basename(path): file_facts(path)}
        doc = {"stage": self.STAGE, "digest": self.chain_digest(), "chain": self.chain(), "files": files}
        with atomic_path(self.stage_json_path(), replace=True) as tmp, open(tmp, "w") as f:
            json.dump(doc, f, indent=1, sort_keys=True, default=str)

    @contextmanager
    def writing(self, need: int):
        """``with self.writing(nbytes) as tmp: write(tmp)``: the output is written to a hidden
        temporary name, then published and its sha256 recorded in ``stage.json`` as one step
        (``locked``). A file already there that matches its record is kept (a concurrent
        build's); a damaged or unrecorded one is replaced. ``need`` (bytes, uncompressed) is
        checked against the free space first; a full disk is an ``OSError`` ENOSPC naming the file
        (issue 19 item 2), and leaves nothing but the removed temporary file."""
        path = self.output().path
        with enospc_named(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        ensure_space(path, need)
        remove_stale_temps(path)
        tmp = temp_name(path)
        try:
            with enospc_named(path):
                yield tmp
                with locked(os.path.dirname(path)):
                    damaged = os.path.exists(path) and self.output_problem(trust_stat=False) is not None
                    publish(tmp, path, replace=damaged)
                    self.record_output()
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def check_inputs(self) -> None:
        """Every input's sha256 against its ``stage.json``, before a byte of it is copied (issue
        19 item 4: a damaged intermediate never reaches a shard). A damaged one is removed, so
        the next build computes it again; this task fails with a message that says so."""
        for task in self.inputs().values():
            path = task.output().path
            with locked(os.path.dirname(path)):
                problem = task.output_problem(trust_stat=False)
                if problem and problem != "missing":
                    _remove(path)
            if problem:
                raise DamagedInput(f"{path}: {problem}; not copied into {self.output().path}. The file "
                                   f"was removed: run the build again to compute it anew")

    def clip_group(self, status, reason) -> dict:
        """The ``clips`` group every stage writes: the batch's clip ids, status ("ok" or a code) and reason."""
        return {"id": np.array([c.id for c in self.clips()], dtype=object), "status": np.array(status, dtype=object),
                "reason": np.array(reason, dtype=object)}

    def progress(self, done: int, total: int, what: str) -> None:
        if self.set_progress_percentage is None:   # called outside a luigi worker (a test, a notebook)
            return
        self.set_progress_percentage(int(100 * done / max(total, 1)))
        self.set_status_message(f"{self.STAGE} batch {self.batch}: {done}/{total} clips {what}")

    def per_clip(self, fn, status=None, reason=None):
        """Run ``fn(i, clip)`` for every clip of the batch; bad input never stops the batch.

        Clips whose upstream ``status`` is not "ok" are passed over with that status. A
        ``ClipError`` is recorded as (status, reason); any other exception as status "error"
        with its message (and the traceback in the log). Returns (results, status, reason)
        where results[i] is None for a clip that failed.
        """
        from features.errors import ClipError

        clips = self.clips()
        status = list(status) if status is not None else ["ok"] * len(clips)
        reason = list(reason) if reason is not None else [""] * len(clips)
        results = []
        for i, clip in enumerate(clips):
            self.progress(i, len(clips), "done")
            out = None
            if status[i] == "ok":
                try:
                    out = fn(i, clip)
                except ClipError as err:
                    status[i], reason[i] = err.status, f"{self.STAGE}: {err}"
                except Exception as err:  # recorded, never a traceback in the middle of a build
                    logger.exception("%s: clip %s failed", self.STAGE, clip.id)
                    status[i], reason[i] = "error", f"{self.STAGE}: {type(err).__name__}: {err}"
            results.append(out)
        self.progress(len(clips), len(clips), "done")
        return results, status, reason

    def write(self, groups: dict, compression: dict | None = None) -> None:
        from features import store

        with self.writing(array_bytes(groups)) as tmp:
            store.write(tmp, attrs=self.provenance(), groups=groups, compression=compression)
