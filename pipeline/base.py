"""The hash chain: every output path carries a digest of everything that made it.

A stage's digest covers its name, its ``CODE_VERSION``, its own significant parameters, the
digests of the stages it requires and, for the first stage, the identity of its clips (id, file
name, size, mtime). Change a parameter and only that stage and its descendants get new paths; the
others are found where they were (the gokart pattern). The same facts are written as JSON beside
each output (``<stage>/<digest>/stage.json``) and into its HDF5 attributes.
"""
from __future__ import annotations

import datetime
import getpass
import hashlib
import json
import logging
import math
import os
import platform
import zlib
from importlib import metadata

import luigi

from pipeline.manifest import Clip, get_dataset

logger = logging.getLogger("luigi-interface")
COMMON = ("dataset", "batch", "batch_size", "manifest", "store")
LIBRARIES = ("numpy", "h5py", "luigi", "librosa", "soxr", "av", "webrtcvad-wheels", "praat-parselmouth",
             "scikit-learn", "opencv-python-headless", "dlib-bin", "face-recognition-models")


def digest(obj) -> str:
    """16 hex digits of the sha256 of ``obj``'s canonical JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def batch_of(clip_id: str, n_batches: int) -> int:
    """Stable batch assignment by clip id (crc32), independent of the other clips' ids."""
    return zlib.crc32(clip_id.encode()) % n_batches


def n_batches(n_clips: int, batch_size: int) -> int:
    return max(1, math.ceil(n_clips / batch_size))


def library_versions() -> dict:
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

    from features.audio import warm_up

    threadpoolctl.threadpool_limits(1)
    warm_up()


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

    def complete(self) -> bool:
        """Luigi asks this while scheduling, in the parent process: the first stage found
        missing warms the libraries up there, before any worker forks."""
        done = super().complete()
        if not done:
            _warm_up()
        return done

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
        return luigi.LocalTarget(os.path.join(self.stage_dir(), f"batch-{self.batch:04d}.h5"))

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
            os.makedirs(self.stage_dir(), exist_ok=True)
            tmp = f"{path}.tmp-{os.getpid()}"
            with open(tmp, "w") as f:
                json.dump({"stage": self.STAGE, "digest": self.chain_digest(), "chain": self.chain()},
                          f, indent=1, sort_keys=True, default=str)
            os.replace(tmp, path)

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
        with self.output().temporary_path() as tmp:
            store.write(tmp, attrs=self.provenance(), groups=groups, compression=compression)
