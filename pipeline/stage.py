"""The stage template (issue 22 item 2): a stage declares its parameters (Luigi parameters), its
inputs (``requires``, ``GATE``, ``READS``), its outputs (``columns``) and what it computes for one
clip (``compute``); ``ClipStage.run`` does the rest, the same way for every stage:

1. reads the groups named in ``READS`` of each input (``read_input``), and lets the stage open
   what it streams or loads (``open_inputs``: a clip's signal read on slicing, a model);
2. starts each clip from the status and reason of its ``GATE`` input's clip table: a clip that
   failed upstream is passed over with that status;
3. runs ``compute(i, clip, inputs)`` for every other clip (``BatchTask.per_clip``): a
   ``ClipError`` or any exception becomes the clip's status and reason, never the batch's end;
4. packs each declared column over the batch (``Column``): a failed clip gets placeholder rows
   (none, or as many as it has video frames or windows, holding ``fill``), a group of per-clip
   rows gets its ``offsets``;
5. writes the clip table (``clip_group``: id, status, reason) and the columns, plus what
   ``finish`` adds (batch-wide work: a network over all the batch's patches, index arrays),
   atomically, its sha256 recorded (``BatchTask.write``).

Upstream parameters are read from the upstream task (``self.requires()[name].sr``), never from
the attributes of its output.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.base import BatchTask, read_input

#: ``Column.per``: how many rows a clip has
PER = ("rows", "clip", "video frame", "window")
#: where the per-clip row counts of "video frame" and "window" columns are read: (input, group)
COUNTS = {"video frame": ("faces", "video"), "window": ("segment", "windows")}


@dataclass(frozen=True)
class Column:
    """One array a stage writes, named "group/name" in ``ClipStage.columns``.

    ``per``: "rows": the clip's own number of rows (none for a failed clip), the group gets
    ``offsets``; "clip": one row per clip; "video frame": one row per video frame of the clip in
    the Faces output (the group gets ``offsets``, equal to Faces'); "window": one row per 655 ms
    window of the clip in the Segment output (indexed by Segment's ``windows/offsets``).
    ``fill``: what a failed clip's rows hold."""
    dtype: Any
    row_shape: tuple = ()
    per: str = "rows"
    fill: Any = 0

    def __post_init__(self):
        if self.per not in PER:
            raise ValueError(f"Column.per must be one of {PER}, got {self.per!r}")

    def placeholder(self, n: int) -> np.ndarray:
        return np.full((n, *self.row_shape), self.fill, dtype=self.dtype)


class ClipStage(BatchTask):
    """A stage of the per-clip template (module docstring). Subclasses set ``STAGE``,
    ``CODE_VERSION``, ``GATE`` and ``READS`` and define ``requires``, ``columns`` and
    ``compute``; ``open_inputs``, ``start_status``, ``compute_batch`` and ``finish`` where the
    defaults do not fit."""

    #: the input whose clip table each clip's status starts from ("": every clip starts "ok")
    GATE = ""
    #: {input: groups ``read_input`` reads, "group" or "group/name"}: ``inputs[input]`` in ``compute``
    READS: dict = {}

    def columns(self, inputs: dict) -> dict[str, Column]:
        """{"group/name": Column} of what ``compute`` returns for a clip."""
        return {}

    def open_inputs(self, inputs: dict, stack: contextlib.ExitStack) -> None:
        """Add to ``inputs`` what is streamed or loaded (models); ``stack`` closes it after the batch."""

    def compute(self, i: int, clip, inputs: dict):
        """Clip ``i``'s rows: {"group/name": array} of ``columns`` (a bare array when there is one
        column). Raise ``ClipError`` for bad input."""
        raise NotImplementedError(f"{type(self).__name__}.compute")

    def start_status(self, inputs: dict) -> tuple[list | None, list | None]:
        """(status, reason) each clip starts from: the ``GATE`` input's clip table."""
        if not self.GATE:
            return None, None
        table = inputs[self.GATE]["clips"]
        return table["status"], table["reason"]

    def compute_batch(self, inputs: dict) -> tuple[list, list, list]:
        """(results, status, reason) of the batch's clips: ``compute`` in ``per_clip``'s loop."""
        return self.per_clip(lambda i, clip: self.compute(i, clip, inputs), *self.start_status(inputs))

    def finish(self, groups: dict, results: list, inputs: dict) -> None:
        """Add to ``groups`` what is not a per-clip column (batch-wide work, index arrays)."""

    def compression(self) -> dict | None:
        """``features.store.write``'s compression by dtype kind (None: ``store.COMPRESSION``)."""
        return None

    def read_inputs(self, stack: contextlib.ExitStack) -> dict:
        """The ``inputs`` that ``compute`` gets: the ``READS`` groups of each input, the ``GATE``
        input's clip table, and what ``open_inputs`` adds (closed by ``stack``)."""
        req = self.requires()
        inputs = {name: read_input(req[name], *groups) for name, groups in self.READS.items()}
        if self.GATE and self.GATE not in inputs:
            inputs[self.GATE] = read_input(req[self.GATE])
        self.open_inputs(inputs, stack)
        return inputs

    def run(self):
        with contextlib.ExitStack() as stack:
            inputs = self.read_inputs(stack)
            results, status, reason = self.compute_batch(inputs)
            groups = {"clips": self.clip_group(status, reason)}
            for name, arrays in self.pack_columns(results, self.columns(inputs)).items():
                groups.setdefault(name, {}).update(arrays)
            self.finish(groups, results, inputs)
        self.write(groups, compression=self.compression())

    # -- packing ------------------------------------------------------------------------------
    def row_counts(self, per: str) -> np.ndarray:
        """Rows per clip of the batch for a "video frame" or "window" column (read from the input)."""
        name, group = COUNTS[per]
        return np.diff(read_input(self.requires()[name], f"{group}/offsets")[group]["offsets"])

    def pack_columns(self, results: list, columns: dict[str, Column]) -> dict:
        """{group: {name: rows}} of the declared columns over the batch, with each group's ``offsets``
        for "rows" and "video frame" columns; ``results[i]`` None is a failed clip."""
        from features import store

        groups, counts = {}, {}
        for key, col in columns.items():
            group, name = key.split("/")
            if col.per in COUNTS and col.per not in counts:
                counts[col.per] = self.row_counts(col.per)
            rows = []
            for i, r in enumerate(results):
                if r is None:
                    n = {"rows": 0, "clip": 1}.get(col.per) if col.per not in COUNTS else int(counts[col.per][i])
                    rows.append(col.placeholder(n))
                else:
                    value = r[key] if isinstance(r, dict) else r
                    rows.append(np.asarray(value, dtype=col.dtype).reshape(1, *col.row_shape)
                                if col.per == "clip" else value)
            if col.per == "clip":
                data = np.concatenate(rows) if rows else col.placeholder(0)
                groups.setdefault(group, {})[name] = data
                continue
            data, offsets = store.pack(rows, dtype=col.dtype, row_shape=col.row_shape)
            if col.per in COUNTS and not np.array_equal(np.diff(offsets), counts[col.per]):
                raise ValueError(f"{self.STAGE}: {key} has {np.diff(offsets).tolist()} rows per clip, "
                                 f"not one per {col.per} ({counts[col.per].tolist()})")
            out = groups.setdefault(group, {})
            out[name] = data
            if col.per in ("rows", "video frame"):
                if "offsets" in out and not np.array_equal(out["offsets"], offsets):
                    raise ValueError(f"{self.STAGE}: the columns of {group}/ differ in rows per clip")
                out["offsets"] = offsets
        return groups
