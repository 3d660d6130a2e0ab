"""The stage template (``pipeline.stage``, issue 22 item 2): a stage that declares only its
parameters, inputs, columns and per-clip ``compute`` gets the clip loop, the upstream status, the
placeholders, the packing, the clip table and the recorded atomic write from the base class."""
import json
import os

import luigi
import numpy as np
import pytest

from features import store
from features.errors import ClipError
from features.hashing import sha256_file
from pipeline import audio, embeddings, video
from pipeline.audio import SignalStage
from pipeline.base import BatchTask
from pipeline.stage import ClipStage, Column
from tests.conftest import ROOT

MANIFEST = os.path.join(ROOT, "data_manifest.yaml")
REFUSED, CRASHES = "s1_anger_01", "s2_happiness_02"


class Loudness(SignalStage):
    """Written against the template alone: the RMS of each 100 ms block (the clip's own rows) and
    the peak (one row per clip)."""

    STAGE = "test_loudness"
    block_ms = luigi.IntParameter(default=100)

    def columns(self, inputs):
        return {"level/rms": Column(np.float32), "clips/peak": Column(np.float32, per="clip", fill=np.nan)}

    def compute(self, i, clip, inputs):
        if clip.id == REFUSED:
            raise ClipError("too_loud", "made up for the test")
        if clip.id == CRASHES:
            raise RuntimeError("boom")
        y = inputs["samples"](i)[:]
        n = inputs["sr"] * self.block_ms // 1000
        blocks = y[:len(y) // n * n].reshape(-1, n)
        return {"level/rms": np.sqrt((blocks.astype(np.float64) ** 2).mean(1)), "clips/peak": np.abs(y).max()}


def test_a_stage_of_columns_and_compute_alone_is_built_written_and_recorded(store_copy):
    tasks = [Loudness(dataset="demo", batch=b, batch_size=8, store=str(store_copy), manifest=MANIFEST) for b in range(3)]
    assert luigi.build(tasks, local_scheduler=True, workers=1)
    seen = set()
    for task in tasks:
        path = task.output().path
        decode = task.requires()["decode"].output().path
        dec = store.read_group(decode, "clips")
        clips, level = store.read_group(path, "clips"), store.read_group(path, "level")
        wave = store.read_group(decode, "audio")
        assert clips["id"].tolist() == [c.id for c in task.clips()] == dec["id"].tolist()
        assert len(level["offsets"]) == len(clips["id"]) + 1
        for i, cid in enumerate(clips["id"]):
            seen.add(cid)
            rows = level["rms"][level["offsets"][i]:level["offsets"][i + 1]]
            if dec["status"][i] != "ok":   # failed upstream: passed over with Decode's status and reason
                assert (clips["status"][i], clips["reason"][i]) == (dec["status"][i], dec["reason"][i])
            elif cid == REFUSED:
                assert (clips["status"][i], clips["reason"][i]) == ("too_loud", "test_loudness: made up for the test")
            elif cid == CRASHES:
                assert clips["status"][i] == "error" and clips["reason"][i] == "test_loudness: RuntimeError: boom"
            else:
                assert clips["status"][i] == "ok" and clips["reason"][i] == ""
                y = wave["waveform"][wave["offsets"][i]:wave["offsets"][i + 1]].astype(np.float64)
                blocks = y[:len(y) // 1600 * 1600].reshape(-1, 1600)
                np.testing.assert_allclose(rows, np.sqrt((blocks ** 2).mean(1)), rtol=1e-6)
                assert clips["peak"][i] == np.float32(np.abs(y).max())
                continue
            assert len(rows) == 0 and np.isnan(clips["peak"][i])   # placeholders: no rows, the fill
        assert level["rms"].dtype == np.float32 and clips["peak"].dtype == np.float32
        record = json.load(open(os.path.join(os.path.dirname(path), "stage.json")))
        assert record["files"][os.path.basename(path)]["sha256"] == sha256_file(path)
        assert store.read_attrs(path)["chain"]["params"] == {"block_ms": 100}
        assert task.complete()
    assert {REFUSED, CRASHES} <= seen


class Packer(ClipStage):
    STAGE = "test_packer"
    COUNTS = {"video frame": np.array([3, 2, 0]), "window": np.array([1, 0, 2])}

    def row_counts(self, per):
        return self.COUNTS[per]


@pytest.fixture
def packer():
    return Packer(dataset="demo", batch=0, manifest=MANIFEST, store="unused")


def test_placeholders_follow_the_rows_a_failed_clip_has_upstream(packer):
    cols = {"video/emb": Column(np.float32, (2,), per="video frame", fill=-1),
            "windows/emb": Column(np.int16, per="window"), "own/x": Column(np.uint8),
            "clips/n": Column(np.int32, per="clip", fill=7)}
    results = [{"video/emb": np.ones((3, 2)), "windows/emb": [5], "own/x": [1, 2, 3, 4], "clips/n": 1}, None,
               {"video/emb": np.zeros((0, 2)), "windows/emb": [6, 6], "own/x": [9], "clips/n": 3}]
    g = packer.pack_columns(results, cols)
    np.testing.assert_array_equal(g["video"]["emb"], [[1, 1]] * 3 + [[-1, -1]] * 2)
    np.testing.assert_array_equal(g["video"]["offsets"], [0, 3, 5, 5])   # Faces' frames, failed clip included
    np.testing.assert_array_equal(g["windows"]["emb"], [5, 6, 6])
    assert "offsets" not in g["windows"] and g["windows"]["emb"].dtype == np.int16   # Segment's windows/offsets
    np.testing.assert_array_equal(g["own"]["x"], [1, 2, 3, 4, 9])
    np.testing.assert_array_equal(g["own"]["offsets"], [0, 4, 4, 5])
    np.testing.assert_array_equal(g["clips"]["n"], [1, 7, 3])


def test_rows_that_do_not_match_the_upstream_count_are_refused(packer):
    with pytest.raises(ValueError, match="not one per video frame"):
        packer.pack_columns([np.zeros((2, 1)), None, np.zeros((0, 1))],
                            {"video/emb": Column(np.float32, (1,), per="video frame")})
    with pytest.raises(ValueError, match="differ in rows per clip"):
        packer.pack_columns([{"g/a": [1], "g/b": [1, 2]}], {"g/a": Column(np.int8), "g/b": Column(np.int8)})
    with pytest.raises(ValueError, match="per must be one of"):
        Column(np.float32, per="frame")


def test_every_batch_stage_is_the_template_with_no_run_of_its_own():
    stages = [audio.Decode, audio.VAD, audio.Prosody, audio.LogMel, audio.Segment, video.Faces, video.Align,
              *embeddings.EMBEDDINGS.values()]
    assert {s.__name__ for s in embeddings.EMBEDDINGS.values()} >= {"Waveform", "VGGish", "FaceDescriptor", "GloVe"}
    for stage in stages:
        assert issubclass(stage, ClipStage), stage
        assert all("run" not in vars(k) for k in stage.__mro__ if k is not ClipStage and issubclass(k, ClipStage)), stage
    # the dataset-wide PCA basis (batch -1, no clip table) and the shard assembly keep their own run
    assert issubclass(video.LandmarkPCA, BatchTask) and not issubclass(video.LandmarkPCA, ClipStage)
