"""The hash chain: every output path carries a digest of everything that made it.

A stage's digest covers its name, its ``CODE_VERSION``, its own significant parameters, the
digests of the stages it requires and, for the first stage, the identity of its clips (id, file
name, size, mtime). Change a parameter and only that stage and its descendants get new paths; the
others are found where they were (the gokart pattern). The same facts are written as JSON beside
each output (``<stage>/<digest>/stage.json``) and into its HDF5 attributes.
"""
from __future__ import annotations

import datetime
import functools
import getpass
import hashlib
import json
import logging
import math
import os
import platform
import secrets
import socket
import zlib
from contextlib import contextmanager
from importlib import metadata

import luigi

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


# -- atomic, no-clobber writes (issue 6: concurrent builds, SIGKILL) -------------------------------
TMP_MARK = ".tmp-"  # temporary files are ".<name>.tmp-<host>-<pid>-<random>": hidden, never *.h5


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(path: str) -> list[str]:
    """Remove the temporary files of ``path`` left by dead processes of this host (a build killed
    with SIGKILL leaves its temporary file behind; the rerun of the same task removes it)."""
    folder, name = os.path.split(path)
    prefix, host, removed = f".{name}{TMP_MARK}", socket.gethostname(), []
    try:
        entries = os.listdir(folder or ".")
    except FileNotFoundError:
        return removed
    for entry in entries:
        if not entry.startswith(prefix):
            continue
        owner = entry[len(prefix):].rsplit("-", 2)  # host (may hold '-'), pid, random
        if len(owner) == 3 and owner[0] == host and owner[1].isdigit() and not _pid_alive(int(owner[1])):
            try:
                os.remove(os.path.join(folder, entry))
                removed.append(entry)
            except FileNotFoundError:
                pass
    return removed


def temp_name(path: str) -> str:
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}{TMP_MARK}{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}")


def publish(tmp: str, path: str) -> bool:
    """Give the finished file ``tmp`` the name ``path`` atomically, keeping a file already there
    (a concurrent build's identical output: its bytes, and the sha256 recorded for it, stay).
    Returns False when ``path`` existed (``tmp`` is then removed)."""
    try:
        os.link(tmp, path)  # atomic and fails when path exists
    except FileExistsError:
        os.remove(tmp)
        return False
    except OSError:  # a file system without hard links: rename (atomic, last writer wins)
        os.replace(tmp, path)
        return True
    os.remove(tmp)
    return True


@contextmanager
def atomic_path(path: str):
    """``with atomic_path(p) as tmp: write(tmp)``: readers see ``p`` whole or not at all; a
    failure or a kill leaves only a hidden temporary file, removed by the next attempt."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    remove_stale_temps(path)
    tmp = temp_name(path)
    try:
        yield tmp
        publish(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


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

        A stage with ``PULL`` whose output is in the configured ``[remote]`` downloads it here
        (verified, atomically): complete() is True and Luigi never schedules its upstream stages.
        """
        done = super().complete()
        if not done and self.PULL:
            from pipeline import remote

            done = remote.pull_output(self)
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
        all_clips = get_dataset(self.manifest, self.dataset).list_clips()
        k = n_batches(len(all_clips), self.batch_size)
        return [c for c in all_clips if batch_of(c.id, k) == self.batch]

    # -- the hash chain -----------------------------------------------------------------------
    def own_params(self) -> dict:
        return {name: getattr(self, name) for name, _ in self.get_params() if name not in COMMON}

    def inputs(self) -> dict:
        req = self.requires()
        return req if isinstance(req, dict) else {}

    def chain(self) -> dict:
        if not hasattr(self, "_chain"):
            chain = {"stage": self.STAGE, "code_version": self.CODE_VERSION, "params": self.own_params(),
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

    def write_stage_json(self) -> None:
        """``stage.json`` beside the outputs: why files with this digest exist."""
        path = os.path.join(self.stage_dir(), "stage.json")
        if not os.path.exists(path):
            with atomic_path(path) as tmp, open(tmp, "w") as f:
                json.dump({"stage": self.STAGE, "digest": self.chain_digest(), "chain": self.chain()},
                          f, indent=1, sort_keys=True, default=str)

    def progress(self, done: int, total: int, what: str) -> None:
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

        self.write_stage_json()
        with atomic_path(self.output().path) as tmp:
            store.write(tmp, attrs=self.provenance(), groups=groups, compression=compression)
