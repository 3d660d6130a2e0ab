"""The shard of a batch (every stage joined into one self-describing file) and the entry point."""
from __future__ import annotations

import collections
import datetime
import json
import multiprocessing
import os
import sys
import time

import luigi
import numpy as np

from features import registry
from pipeline.audio import VAD, Decode, LogMel, Prosody, Segment
from pipeline.video import Align, Faces, LandmarkPCA
from pipeline.base import (MAX_BATCHES, BatchTask, StoreTarget, array_bytes, auto_batch_size, digest,
                           logger, n_batches, paths, read_input)
from pipeline.files import atomic_path, hold_build_lock, release_build_lock, sweep_stale_temps
from pipeline.catalog import build_facts, record_problems, refresh_records
from pipeline.embeddings import EMBEDDINGS
from pipeline.manifest import get_dataset

SHARD_CODE_VERSION = "2"
VIDEO_EMBEDDINGS = registry.visual_stages()  # computed from the Faces crops: not in audio-only shards


class Shard(BatchTask):
    """One shard: clip table with labels and statuses, VAD, frames, units, windows, video."""

    STAGE = "shards"
    CODE_VERSION = SHARD_CODE_VERSION
    PULL = True  # complete() downloads the shard from the [remote] when it is there (pipeline/remote.py)
    video = luigi.BoolParameter(default=True, parsing=luigi.BoolParameter.EXPLICIT_PARSING,
                                description="build the visual chain too (false: audio-only shards)")

    embeddings = luigi.ListParameter(
        default=registry.embedding_stages(default_only=True),
        description="embedding stages that may be built; glove, vggish and vggface also need their file "
                    "configured ([GloVe] path, [VGGish] weights, [VGGFace] weights), glove a transcript column")

    def enabled_embeddings(self) -> list[str]:
        """The embedding stages this shard holds: those listed in ``embeddings`` that can be built
        (waveform: always; descriptor: with the visual chain; glove: a GloVe path and transcripts in the corpus;
        vggish / vggface: a weights path). A configured path that does not exist still counts:
        that stage then fails with a message that says how to switch it off."""
        unknown = sorted(set(self.embeddings) - set(EMBEDDINGS))
        if unknown:
            from features.errors import ParameterError

            raise ParameterError(f"[Shard] embeddings: unknown {unknown}; known: {sorted(EMBEDDINGS)}")
        out = []
        for name in self.embeddings:
            task = self.clone(EMBEDDINGS[name])
            if name in VIDEO_EMBEDDINGS and not self.video:
                continue
            need = registry.needs(name) or ""   # features.registry: "weights", "path+transcript", ...
            key, _, extra = need.partition("+")
            if key and not getattr(task, key):   # its file or model folder is not configured
                continue
            if extra == "transcript" and not self._has_transcripts():
                continue
            out.append(name)
        return out

    def _has_transcripts(self) -> bool:
        clips = get_dataset(self.manifest, self.dataset).list_clips()
        return any((dict(c.extra).get("transcript") or "").strip() for c in clips)

    def requires(self):
        stages = {"decode": self.clone(Decode), "vad": self.clone(VAD), "prosody": self.clone(Prosody),
                  "logmel": self.clone(LogMel), "segment": self.clone(Segment)}
        if self.video:
            stages.update(faces=self.clone(Faces), align=self.clone(Align),
                          landmark_pca=self.clone(LandmarkPCA, batch=-1))
        return {**stages, **{name: self.clone(EMBEDDINGS[name]) for name in self.enabled_embeddings()}}

    def chain(self) -> dict:
        chain = super().chain()  # cached; the labels join it once
        chain["labels"] = digest([(c.id, c.label, c.speaker, c.extra) for c in self.clips()])
        ds = get_dataset(self.manifest, self.dataset)
        if ds.continuous_labels:  # issue 18 item 3: a changed series re-runs Shard only
            chain["continuous_labels"] = ds.series_digest([c.id for c in self.clips()])
        if ds.segment_labels:  # issue 18 item 7: changed segment labels re-run Shard only
            chain["segment_labels"] = ds.segment_digest([c.id for c in self.clips()])
        return chain

    def output(self):
        return StoreTarget(os.path.join(self.stage_dir(), f"shard-{self.batch:04d}.h5"))

    def complete(self) -> bool:
        """The shard is intact and so is every stage output it was assembled from that is here
        (size and mtime against its ``stage.json``, else its sha256): a damaged intermediate under
        an intact shard makes the shard's task run, and with it the stage that computes the
        intermediate again (issue 19 item 4). Inputs that are not here (a shard pulled from a
        remote, or whose inputs ``avstore gc --drop-intermediates`` removed: a shard is
        self-contained) are not looked for; the shard itself is always checked."""
        if not super().complete():
            return False
        damaged = [t.output().path for t in self.inputs().values()
                   if os.path.exists(t.output().path) and not t.output_intact()]
        for path in damaged:
            logger.warning("%s does not match its stage.json; computing it and %s again", path, self.output().path)
        return not damaged

    def run(self):
        from features import store

        inp = self.requires()
        self.check_inputs()  # sha256 of every input against its stage.json (issue 19 item 4)
        dec, seg = read_input(inp["decode"]), read_input(inp["segment"])
        clips = self.clips()
        ds = get_dataset(self.manifest, self.dataset)
        table = dict(dec["clips"])
        table.update(self.clip_group(seg["clips"]["status"], seg["clips"]["reason"]))
        table["source"] = np.array([os.path.relpath(c.path, ds.root_dir) if c.path else "" for c in clips],
                                   dtype=object)
        table["label"] = np.array([c.label for c in clips], dtype=object)
        table["speaker"] = np.array([c.speaker for c in clips], dtype=object)
        for column in ("transcript", "valence", "arousal", "partition"):
            values = [dict(c.extra).get(column) for c in clips]
            if any(v is not None for v in values):
                table[column] = np.array([v or "" for v in values], dtype=object)
        # issue 18 item 2: the fraction of each clip's voiced (frame, band) cells where eq 2.1's floor binds
        table["logmel_floor_fraction"] = inp["logmel"].floor_fractions(inp["segment"], table["status"])
        groups = {"clips": table}
        if ds.continuous_labels:  # issue 18 item 3: time-continuous valence/arousal per clip (/labels_t)
            from features.labels import labels_group

            groups["labels_t"] = labels_group(ds.continuous_series(), [c.id for c in clips])
        if ds.segment_labels:  # issue 18 item 7: per-unit segment / modality labels, sound types (/unit_labels)
            from features.labels import unit_labels_group

            units = store.read_group(inp["prosody"].output().path, "units", ["t_begin", "t_end", "offsets"])
            groups["unit_labels"] = unit_labels_group(ds.segment_rows(), [c.id for c in clips], units)
        if self.video:
            faces = read_input(inp["faces"], "video/shape49")
            table["video_status"], table["video_reason"] = faces["clips"]["status"], faces["clips"]["reason"]
            for key in ("fps", "width", "height", "rotation"):
                table[key] = faces["clips"][key]
            groups["video"] = {"pca": self.pca20(faces["video"]["shape49"], inp["landmark_pca"])}
        for name in EMBEDDINGS:  # per-clip outcome of each embedding stage
            if name in inp:
                emb = store.read_group(inp[name].output().path, "clips", ["status", "reason"])
                table[f"{name}_status"], table[f"{name}_reason"] = emb["status"], emb["reason"]
        attrs = self.provenance()
        attrs["embeddings"] = [name for name in EMBEDDINGS if name in inp]
        attrs["config"] = {name: t.own_params() for name, t in inp.items()}
        attrs["stages"] = {name: t.chain_digest() for name, t in inp.items()}
        attrs["code_versions"] = {name: t.CODE_VERSION for name, t in inp.items()}
        attrs["manifest"] = {k: v for k, v in vars(ds).items() if k not in ("manifest", "root")}
        # Decode's audio group is the pre-emphasised scratch signal; the shard's audio/ is Waveform's
        sources = [t.output().path for k, t in inp.items() if k != "decode"]
        with self.writing(array_bytes(groups) + sum(os.path.getsize(p) for p in sources)) as tmp:
            store.assemble(tmp, sources=sources, attrs=attrs, groups=groups, skip=("clips",))

    @staticmethod
    def pca20(shape49: np.ndarray, basis_task) -> np.ndarray:
        """The PCA-whitened 49-point shape of every frame (Chao §3.1); NaN rows when no basis could
        be fitted (too few frames with a face in the fit set)."""
        from features import store
        from features.landmarks import pca_whiten

        pca = store.read_group(basis_task.output().path, "pca")
        if not len(pca["components"]):
            return np.full((len(shape49), len(pca["explained_variance"])), np.nan, np.float32)
        return pca_whiten(shape49, mean=pca["mean"], components=pca["components"],
                          explained_variance=pca["explained_variance"])


#: A clip whose log-mel floor binds on more than this fraction of its voiced cells is named in the
#: build summary (issue 18 item 2: its image is mostly the floor; the input level or
#: ``[LogMel] signal_scale`` is wrong for it).
FLOOR_WARN = 0.5


def summarize(shard_paths: list[str]) -> dict:
    """Counts over the shards: clips ok, clips failed by status, windows, and the paths; the clips
    whose log-mel floor binds on more than ``FLOOR_WARN`` of their voiced cells (``logmel_floored``,
    [id, fraction] pairs, highest first) and the median of that fraction over the clips that have it
    (``logmel_floor_median``; None for shards built before the column existed)."""
    from features import store

    by_status, video, windows, failed, floor = collections.Counter(), collections.Counter(), 0, [], []
    for path in shard_paths:
        clips = store.read_group(path, "clips")
        by_status.update(clips["status"].tolist())
        video.update(clips["video_status"].tolist() if "video_status" in clips else [])
        failed += [f"{i}: {r}" for i, s, r in zip(clips["id"], clips["status"], clips["reason"]) if s != "ok"]
        windows += len(store.read_group(path, "windows")["clip"])
        if "logmel_floor_fraction" in clips:
            floor += [(str(i), float(x)) for i, x in zip(clips["id"], clips["logmel_floor_fraction"]) if x == x]
    ok = by_status.pop("ok", 0)
    floored = sorted(([i, round(x, 3)] for i, x in floor if x > FLOOR_WARN), key=lambda r: (-r[1], r[0]))
    return {"clips_ok": ok, "clips_failed": dict(sorted(by_status.items())), "windows": windows,
            "video": dict(sorted(video.items())), "failed": failed,
            "logmel_floor_median": round(float(np.median([x for _, x in floor])), 4) if floor else None,
            "logmel_floored": floored, "shards": shard_paths}


def format_summary(dataset: str, s: dict, record: str) -> str:
    lines = [f"BuildShards {dataset}: {s['clips_ok']} clips ok, "
             f"{sum(s['clips_failed'].values())} failed, {s['windows']} windows, {len(s['shards'])} shards"]
    lines += [f"  failed {k}: {v}" for k, v in s["clips_failed"].items()]
    if s.get("video"):
        lines.append("  video: " + ", ".join(f"{v} {k}" for k, v in s["video"].items()))
    floored = s.get("logmel_floored") or []
    if floored:  # issue 18 item 2
        named = ", ".join(f"{i} {x:.2f}" for i, x in floored[:10])
        more = f" and {len(floored) - 10} more" if len(floored) > 10 else ""
        lines.append(f"  log-mel floor binds on > {FLOOR_WARN * 100:.0f} % of voiced cells: {named}{more} "
                     f"(median over the ok clips {s.get('logmel_floor_median')}); check the input level "
                     f"or --LogMel-signal-scale (default 32768: 16-bit PCM units)")
    lines += [f"    {line}" for line in s["failed"][:20]]
    lines += [f"  shard {p}" for p in s["shards"]]
    lines.append(f"  build record {record}")
    return "\n".join(lines)


class BuildShards(luigi.Task):
    """Entry point: ``luigi --module pipeline BuildShards --dataset NAME [--local-scheduler]``.

    Batch size (docs/scale.md): ``--batch-size N`` sets the clips per batch (shard). Without it the
    size is automatic (``base.auto_batch_size``): 64 clips per batch, unless the dataset would then
    need more than ``--max-batches`` batches (128); then ceil(clips / 128) clips per batch. So a
    dataset of up to 8,192 clips (the demo, BAUM-1) keeps the batches, paths and digests of a fixed
    size of 64, and a larger one stays at most 128 batches, i.e. ~900 tasks audio-only, where
    Luigi's own scheduling costs ~1 ms a task (at 4,000 tasks: 6 ms a task, growing with the
    square of the count). An explicit ``--batch-size`` always wins, also over the cap. The size
    used (``batch_size_used``) is written into the build record; the digests hold it through the
    clips each batch holds (the first stage's chain lists them), not as a number.
    """

    dataset = luigi.Parameter(description="dataset name in the manifest")
    batch_size = luigi.OptionalIntParameter(default=None, description="clips per batch (shard); default: "
                                            "automatic, 64 or as many as keep the batches <= --max-batches")
    max_batches = luigi.IntParameter(default=MAX_BATCHES, description="with an automatic batch size: "
                                     "batches (shards) per dataset at most (docs/scale.md)")
    manifest = luigi.Parameter(config_path={"section": "paths", "name": "manifest"})
    store = luigi.Parameter(config_path={"section": "paths", "name": "store"})
    video = luigi.BoolParameter(default=True, parsing=luigi.BoolParameter.EXPLICIT_PARSING,
                                description="build the visual chain too (--video false: audio-only shards)")

    def batch_size_used(self) -> int:
        """``--batch-size`` when given, else ``auto_batch_size`` of the dataset's clip count."""
        if self.batch_size is not None:
            return self.batch_size
        n = len(get_dataset(self.manifest, self.dataset).clip_tuple())
        return auto_batch_size(n, max_batches=self.max_batches)

    def requires(self):
        clips = get_dataset(self.manifest, self.dataset).clip_tuple()
        if getattr(self, "_shards", (None,))[0] is not clips:  # asked many times: once per labels CSV
            size = self.batch_size_used()
            self._shards = (clips, [Shard(dataset=self.dataset, batch=k, batch_size=size, manifest=self.manifest,
                                          store=self.store, video=self.video)
                                    for k in range(n_batches(len(clips), size))])
        return self._shards[1]

    def output(self):
        key = digest(sorted(t.chain_digest() for t in self.requires()))
        return StoreTarget(os.path.join(self.store, self.dataset, "builds", f"{key}.json"))

    def complete(self) -> bool:
        """The build record is there and every shard it names is too, unchanged (issue 19 item
        4): size and mtime as recorded, or else the recorded sha256. Otherwise the build runs:
        the Shard tasks whose outputs are damaged run again, and the record is rewritten.
        The first call of a process also sweeps the store of dead processes' temporary files
        (item 9). It takes the dataset's build lock, held until the build ends (``avstore gc``
        refuses meanwhile; issue 20 item 3), and starts the build's progress lines (item 4)."""
        if self.store not in _SWEPT:
            _SWEPT.add(self.store)
            sweep_stale_temps(self.store)
        path = self.output().path
        hold_build_lock(self.store, self.dataset)  # after output(): a wrong dataset name makes no folder
        _PROGRESS[self.task_id] = BuildProgress()
        try:
            with open(path, encoding="utf-8") as f:
                record = json.load(f)
        except FileNotFoundError:
            return False
        except (OSError, ValueError) as err:
            logger.warning("build record %s is unreadable (%s); building again", path, err)
            return False
        if not isinstance(record, dict) or "files" not in record:
            logger.warning("build record %s has no sha256 of its shards; building again", path)
            return False
        problems = record_problems(self.store, record, trust_stat=True)
        for rel, why in problems:
            logger.warning("%s: %s; building it again", os.path.join(self.store, rel), why)
        if problems or not all(t.complete() for t in self.requires()):  # also their stage outputs
            return False
        self._note_mtimes(record)
        if "stage_outputs" not in record:  # a record written before issue 20 item 3: add what gc keeps
            record["stage_outputs"] = self.stage_outputs()
            with atomic_path(path, replace=True) as tmp, open(tmp, "w") as f:
                json.dump(record, f, indent=1)
        return True

    def stage_outputs(self) -> list[str]:
        """Every stage output the shards are assembled from, upstream stages included (paths
        relative to the store): what ``avstore gc`` keeps for this build (issue 20 item 3). It
        goes into the build record, which no digest covers (the key is a digest of the shards'
        chain digests); shards pulled from a remote or whose inputs gc dropped name absent files."""
        out, seen, todo = set(), set(), list(self.requires())
        while todo:
            for dep in luigi.task.flatten(todo.pop().requires()):
                if dep.task_id not in seen:
                    seen.add(dep.task_id)
                    todo.append(dep)
                    out.add(os.path.relpath(dep.output().path, self.store).replace(os.sep, "/"))
        return sorted(out)

    def _note_mtimes(self, record: dict) -> None:
        """Shards whose sha256 was read because their mtime is not the recorded one (a pulled
        record holds the builder's mtimes) get this store's mtime, so the next check is a stat."""
        files = record["files"]
        mtimes = {rel: os.stat(os.path.join(self.store, rel)).st_mtime_ns for rel in files}
        if any(files[rel].get("mtime_ns") != m for rel, m in mtimes.items()):
            for rel, m in mtimes.items():
                files[rel]["mtime_ns"] = m
            with atomic_path(self.output().path, replace=True) as tmp, open(tmp, "w") as f:
                json.dump(record, f, indent=1)

    def run(self):
        summary = summarize([t.output().path for t in self.requires()])
        summary.update(build_facts(self.store, summary["shards"]))  # sha256 of each shard, config, builder
        summary["stage_outputs"] = self.stage_outputs()  # what avstore gc keeps for this build
        summary["batch_size_used"] = self.requires()[0].batch_size  # docs/scale.md; no digest covers it
        path = self.output().path
        with atomic_path(path, replace=True) as tmp, open(tmp, "w") as f:  # replaces a record of damaged shards
            json.dump(summary, f, indent=1)
        refresh_records(self.store, self.dataset, summary["files"], keep=os.path.basename(path)[:-5])
        print(format_summary(self.dataset, summary, path), flush=True)


_SWEPT: set = set()  # stores swept in this process


class BuildProgress:
    """``progress: 12/40 batches, 240 clips, 35.1 clips/s, ETA 0:00:16`` on stderr when a batch
    (a Shard task) of the build finishes (issue 20 item 4). The total is the shards found missing
    while scheduling; clips/s counts from ``BuildShards.complete()``, the start of scheduling. The
    counts are in shared memory: the forked workers of ``--workers N`` add to the same ones.
    luigid's visualiser keeps its per-task bars (``BatchTask.progress``)."""

    def __init__(self):
        self.t0 = time.monotonic()
        self.todo: dict[str, int] = {}  # shard output path -> its clips, for the shards that will run
        self.done = multiprocessing.Array("d", 2)  # batches, clips (and a lock)

    def line(self, clips_of_batch: int) -> str:
        with self.done.get_lock():  # the line is printed under the lock: counts rise line by line
            self.done[0] += 1
            self.done[1] += clips_of_batch
            batches, clips = int(self.done[0]), int(self.done[1])
            rate = clips / max(time.monotonic() - self.t0, 1e-9)
            left = sum(self.todo.values()) - clips
            eta = str(datetime.timedelta(seconds=round(left / rate))) if rate > 0 else "?"
            line = f"progress: {batches}/{len(self.todo)} batches, {clips} clips, {rate:.1f} clips/s, ETA {eta}"
            _write_line(line)
        return line


def _write_line(line: str) -> None:
    """``line`` on stderr in one write(2) of the line and its newline: with ``--workers N`` the
    forked workers and luigi's log share the descriptor, and a line split over two writes could be
    cut by another process's output."""
    sys.stderr.flush()
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):   # a captured stream (tests): no descriptor
        print(line, file=sys.stderr, flush=True)
        return
    os.write(fd, (line + "\n").encode())


_PROGRESS: dict[str, BuildProgress] = {}  # BuildShards task id -> its progress


@BuildShards.event_handler(luigi.Event.DEPENDENCY_DISCOVERED)
def _count_shard(task, dep):
    if isinstance(dep, Shard) and task.task_id in _PROGRESS:
        _PROGRESS[task.task_id].todo[dep.output().path] = len(dep.clips())


@Shard.event_handler(luigi.Event.DEPENDENCY_PRESENT)
def _shard_present(task):  # found complete while scheduling: not part of this build's work
    for progress in _PROGRESS.values():
        progress.todo.pop(task.output().path, None)


@Shard.event_handler(luigi.Event.SUCCESS)
def _shard_done(task):
    for progress in _PROGRESS.values():
        if task.output().path in progress.todo:
            progress.line(progress.todo[task.output().path])


@BuildShards.event_handler(luigi.Event.SUCCESS)
@BuildShards.event_handler(luigi.Event.FAILURE)
@BuildShards.event_handler(luigi.Event.DEPENDENCY_PRESENT)
def _build_ended(task, *_):
    """The build lock goes (a build whose Shard task failed keeps it until its process exits)."""
    release_build_lock(task.store, task.dataset)
    _PROGRESS.pop(task.task_id, None)


@BuildShards.event_handler(luigi.Event.DEPENDENCY_PRESENT)
def _print_existing_summary(task):
    """A rerun with nothing to do still ends with the summary of what is there."""
    if isinstance(task, BuildShards):
        try:
            with open(task.output().path) as f:
                print(format_summary(task.dataset, json.load(f), task.output().path), flush=True)
        except (OSError, ValueError) as err:
            logger.warning("cannot read the build summary %s: %s", task.output().path, err)


__all__ = ["BuildShards", "Shard", "paths"]
