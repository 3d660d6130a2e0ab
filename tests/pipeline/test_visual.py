import numpy as np
import pytest

from features import store
from features.align import frames_in_spans, window_spans
from tests.pipeline.conftest import build
from tests.pipeline.test_build import by_clip, shards


def test_demo_video_statuses_faces_and_window_alignment(demo_store):
    clips = by_clip(shards(demo_store))
    video = {cid: s.clips["video_status"][i] for cid, (s, i) in clips.items()}
    assert video["s1_sadness_02"] == "no_video_stream"  # the audio-only wav
    assert video["bad_noaudio"] == "ok"                 # video without audio still gives faces
    assert video["bad_truncated"] in ("truncated", "decode_error")
    assert sum(v == "ok" for v in video.values()) == 19
    pauses = 0
    for cid, (s, i) in clips.items():
        if video[cid] != "ok":
            continue
        v = s.group("video")
        rows = slice(v["offsets"][i], v["offsets"][i + 1])
        assert v["found"][rows].mean() >= 0.9  # a face in at least 90 % of the frames
        assert s.clips["fps"][i] == np.float32(30000 / 1001)
        mine = np.flatnonzero((s.windows["clip"] == i) & (s.windows["video_ok"] == 1))
        t = v["time"][rows]
        for k in mine:
            idx = s.windows["video_frames"][k]
            assert len(idx) == 16 and np.all(np.diff(idx) >= 0)
            inside = (t[idx] >= s.windows["t_begin"][k] - 1e-6) & (t[idx] < s.windows["t_end"][k])
            assert inside.all()
            voiced = frames_in_spans(t, window_spans(s.windows["frames"][k][None])[0])
            assert np.isin(idx, voiced).all()  # none from a pause the window joins across (AVEF §1)
            pauses += not s.windows["contiguous"][k]
            assert s.window_video(k).shape == (16, 173, 173, 3) and s.window_video(k, small=True).shape == (16, 72, 72, 3)
            assert s.window_video(k).mean() > 20  # real crops, not the zeros of a masked window
            assert not np.isnan(s.window_pca(k)).any()
    assert pauses >= 50  # 62 of the demo's windows with video join voiced frames across a pause


def test_landmark_pca_is_white_on_its_fit_set_and_stored_in_every_shard(demo_store):
    paths = shards(demo_store)
    pca = [store.ShardReader(p).group("pca") for p in paths]
    for p in pca[1:]:
        np.testing.assert_array_equal(p["components"], pca[0]["components"])
    assert pca[0]["components"].shape == (20, 98)
    frames = np.concatenate([store.ShardReader(p).group("video")["pca"] for p in paths])
    frames = frames[~np.isnan(frames).any(axis=1)]
    np.testing.assert_allclose(frames.mean(axis=0), 0, atol=1e-3)
    np.testing.assert_allclose(frames.var(axis=0, ddof=1), 1, rtol=1e-3)


def test_face_parameter_change_reruns_only_the_visual_stages(store_copy):
    ran = build(store_copy, "--Faces-margin", "0.8")
    # the dlib descriptor (a default embedding) is computed from the Faces boxes, so it reruns too
    assert ran == ["Align"] * 3 + ["BuildShards"] + ["FaceDescriptor"] * 3 + ["Faces"] * 3 + ["LandmarkPCA"] + \
        ["Shard"] * 3


def test_a_missing_faces_stage_loads_its_models_while_scheduling(tmp_path):
    """complete() of a missing Faces stage (asked in the scheduling process) loads the detector
    and predictor into the cache its run() uses, so forked workers do not load them per batch."""
    import os

    from pipeline.video import Faces, face_models
    from tests.conftest import ROOT

    face_models.cache_clear()
    task = Faces(dataset="demo", batch=0, manifest=os.path.join(ROOT, "data_manifest.yaml"),
                 store=str(tmp_path / "store"), detector="hog", upsample=1)
    assert not task.complete()
    assert face_models.cache_info().currsize == 1
    detect, predictor = face_models("hog", 1)
    assert face_models.cache_info().hits == 1 and type(predictor).__name__ == "shape_predictor"


def test_a_warm_up_that_fails_leaves_the_error_to_run(tmp_path, monkeypatch):
    """A stage whose models cannot be loaded is still just missing while scheduling; its run()
    raises the error, so Luigi reports it as that task's failure."""
    import os

    from pipeline import video
    from tests.conftest import ROOT

    def broken(detector, upsample):
        raise FileNotFoundError("dlib model 'shape_predictor_68_face_landmarks.dat' not found")

    monkeypatch.setattr(video, "face_models", broken)
    task = video.Faces(dataset="demo", batch=0, manifest=os.path.join(ROOT, "data_manifest.yaml"),
                       store=str(tmp_path / "store"))
    assert not task.complete()
    with pytest.raises(FileNotFoundError, match="shape_predictor_68"):
        task.run()
