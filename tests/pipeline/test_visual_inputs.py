"""Unusual video inputs through the whole build: no face, 15 fps, large frames, rotation metadata.

Each test builds its own tiny corpus (the demo clip ``BASE`` plus one special clip made from a demo
clip with ffmpeg) with the in-process ``build`` helper (``--dataset mini --manifest ...``), then
reads the shard.
"""
import csv
import glob
import json
import os
import shutil
import subprocess

import av
import numpy as np

from features.align import frames_in_spans, sixteen, window_spans
from tests.conftest import DEMO
from tests.pipeline.conftest import build
from tests.pipeline.test_build import by_clip, shards

BASE = "s1_anger_01"  # 176×144, 29.97 fps, 3.2 s, AAC 48 kHz stereo
BASE_PATH = os.path.join(DEMO, "clips", f"{BASE}.mp4")


def ffmpeg(*args):
    subprocess.run(["ffmpeg", "-v", "error", "-y", *map(str, args)], check=True, capture_output=True)


def build_with(tmp_path, special, make):
    """Corpus = the demo clip BASE + the clip ``special`` that ``make(path)`` writes; build it.

    Returns ({clip id: (Shard, clip index)}, the build record)."""
    root = tmp_path / "corpus"
    (root / "clips").mkdir(parents=True)
    shutil.copy(BASE_PATH, root / "clips" / f"{BASE}.mp4")
    make(root / "clips" / f"{special}.mp4")
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["clip_id", "label", "speaker"])
        w.writeheader()
        w.writerows([{"clip_id": BASE, "label": "anger", "speaker": "s1"},
                     {"clip_id": special, "label": "anger", "speaker": "s9"}])
    manifest = root / "manifest.yaml"
    manifest.write_text(f"""datasets:
  mini:
    root: {root}
    clips: clips/*
    labels: labels.csv
    label_set: [anger, happiness, sadness]
    protocol: loso
""")
    store = tmp_path / "store"
    ran = build(store, dataset="mini", manifest=manifest)
    assert {"Faces", "Align", "LandmarkPCA", "Shard", "BuildShards"} <= set(ran)
    (record,) = glob.glob(os.path.join(store, "mini", "builds", "*.json"))
    with open(record) as f:
        return by_clip(shards(store, "mini")), json.load(f)


def video_rows(s, i):
    v = s.group("video")
    return {k: a[v["offsets"][i]:v["offsets"][i + 1]] for k, a in v.items() if k != "offsets"}


def test_clip_without_a_face_keeps_its_audio_features_and_masks_its_windows(tmp_path):
    def make(dst):  # the demo's audio (stream copy) under a synthetic test pattern
        ffmpeg("-f", "lavfi", "-i", "testsrc=size=176x144:rate=30000/1001", "-i", BASE_PATH,
               "-map", "0:v", "-map", "1:a", "-shortest", "-c:v", "libx264", "-pix_fmt", "yuv420p",
               "-c:a", "copy", dst)

    clips, record = build_with(tmp_path, "noface", make)
    assert record["clips_ok"] == 2 and record["video"] == {"no_face": 1, "ok": 1}
    s, i = clips["noface"]
    _, b = clips[BASE]
    assert s.clips["status"][i] == "ok" and s.clips["reason"][i] == ""
    assert s.clips["video_status"][i] == "no_face" and "no face" in s.clips["video_reason"][i]
    assert s.clips["video_status"][b] == "ok"
    # the audio features are written, and are those of the demo clip whose audio it carries
    np.testing.assert_array_equal(s.logmel(i), s.logmel(b))
    mine, base = np.flatnonzero(s.windows["clip"] == i), np.flatnonzero(s.windows["clip"] == b)
    assert len(mine) == len(base) > 0
    np.testing.assert_array_equal(s.windows["t_begin"][mine], s.windows["t_begin"][base])
    assert np.all(s.windows["video_ok"][mine] == 0) and np.all(s.windows["video_reason"][mine] == "no_face")
    assert np.all(s.windows["video_frames"][mine] == -1)
    assert np.all(s.windows["video_ok"][base] == 1)
    assert len(video_rows(s, i)["time"]) == 0  # no video rows for it
    assert not s.window_video(int(mine[0])).any()


def test_15_fps_windows_repeat_their_first_and_last_frames(tmp_path):
    def make(dst):  # s3_anger_01: its windows hold 9, 10 and 11 frames at 15 fps (odd and even repeats)
        ffmpeg("-i", os.path.join(DEMO, "clips", "s3_anger_01.mp4"), "-filter:v", "fps=15",
               "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "copy", dst)

    clips, _ = build_with(tmp_path, "fps15", make)
    s, i = clips["fps15"]
    assert s.clips["video_status"][i] == "ok" and s.clips["fps"][i] == 15
    v = video_rows(s, i)
    t, found = v["time"], v["found"].astype(bool)
    np.testing.assert_allclose(np.diff(t), 1 / 15, atol=1e-6)
    assert found.mean() >= 0.9
    mine = np.flatnonzero((s.windows["clip"] == i) & (s.windows["video_ok"] == 1))
    assert len(mine) > 0
    repeated, odd = 0, 0
    for k in mine:
        inside = frames_in_spans(t, window_spans(s.windows["frames"][k][None])[0])  # the voiced time only
        faces = inside[found[inside]]
        idx = s.windows["video_frames"][k]
        np.testing.assert_array_equal(idx, sixteen(faces))
        if s.windows["contiguous"][k]:  # 0.655 s at 15 fps: 9 or 10 frames, never 16
            assert len(inside) in (9, 10)
        if len(faces) < 16:
            repeated += 1
            m, pad = len(faces), 16 - len(faces)  # AVEF: "repeat the first two and the last two frames"
            assert m >= 2 and len(idx) == 16
            if pad <= m:  # the first pad // 2 and the last pad - pad // 2 frames are shown twice
                copies = np.r_[np.full(pad // 2, 2), np.ones(m - pad, int), np.full(pad - pad // 2, 2)]
                assert list(idx) == list(np.repeat(faces, copies))
            odd += pad % 2
    assert repeated == len(mine) and odd > 0


def test_large_frames_find_the_face_and_crop_at_full_resolution(tmp_path):
    def make(dst):  # 176×144 → 1320×1080, pillarboxed to 1920×1080; 2 s keep the test light
        ffmpeg("-i", BASE_PATH, "-t", "2", "-vf", "scale=-2:1080,pad=1920:1080:(ow-iw)/2:0,setsar=1",
               "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "copy", dst)

    clips, _ = build_with(tmp_path, "large", make)
    s, i = clips["large"]
    _, b = clips[BASE]
    assert s.clips["video_status"][i] == "ok"
    assert (s.clips["width"][i], s.clips["height"][i]) == (1920, 1080)
    v, vb = video_rows(s, i), video_rows(s, b)
    found = v["found"].astype(bool)
    assert len(found) == 60 and found.mean() >= 0.9
    assert v["crop"].shape[1:] == (173, 173, 3) and v["crop_small"].shape[1:] == (72, 72, 3)
    assert v["crop"][found].mean() > 20 and v["crop_small"][found].mean() > 20
    # boxes and landmarks are in full-frame pixels: the face is 1080 / 144 = 7.5 times the demo's
    width = np.median(v["box"][found, 2] - v["box"][found, 0])
    base_width = np.median(vb["box"][vb["found"] == 1, 2] - vb["box"][vb["found"] == 1, 0])
    assert 0.75 * 7.5 < width / base_width < 1.25 * 7.5
    lm = v["landmarks68"][found]
    assert np.all((lm[..., 0] > 300) & (lm[..., 0] < 1620) & (lm[..., 1] > 0) & (lm[..., 1] < 1080))


def test_rotation_metadata_gives_upright_faces(tmp_path):
    """A phone-style clip: the coded pixels lie on their side (the demo turned 90° clockwise,
    144×176, lossless) and the display matrix says to turn them 90° counter-clockwise
    (``-metadata:s:v rotate=90`` in ffmpeg 5.1, what ffmpeg's autorotate and ``read_video`` do with
    it). Tagging an upright clip instead would make every player show the face on its side."""
    def make(dst):
        coded = dst.with_name("coded.mp4")
        ffmpeg("-i", BASE_PATH, "-vf", "transpose=clock", "-c:v", "libx264", "-qp", "0", "-pix_fmt", "yuv420p",
               "-c:a", "copy", coded)
        ffmpeg("-i", coded, "-c", "copy", "-metadata:s:v", "rotate=90", dst)
        coded.unlink()
        with av.open(str(dst)) as c:  # the tag landed (ffmpeg >= 6 wants -display_rotation instead)
            assert (c.streams.video[0].width, c.streams.video[0].height) == (144, 176)
            assert next(c.decode(video=0)).rotation == 90

    clips, _ = build_with(tmp_path, "rotated", make)
    s, i = clips["rotated"]
    _, b = clips[BASE]
    assert s.clips["video_status"][i] == "ok"
    assert s.clips["rotation"][i] == 90 and s.clips["rotation"][b] == 0  # as features.video reports it
    assert (s.clips["width"][i], s.clips["height"][i]) == (176, 144)  # upright: the coded 144×176 swapped
    v, vb = video_rows(s, i), video_rows(s, b)
    found = v["found"].astype(bool)
    assert found.mean() >= 0.9
    lm = v["landmarks68"][found]
    # upright (the demo's speaker tilts his head up to ~30°): the eyes lie more side by side than
    # one above the other, and above the nose tip, which is above the mouth
    eyes_r, eyes_l = lm[:, 36:42].mean(1), lm[:, 42:48].mean(1)
    nose, mouth = lm[:, 30], lm[:, 48:68].mean(1)
    eyes = (eyes_r + eyes_l) / 2
    assert np.all(np.abs(eyes_l[:, 0] - eyes_r[:, 0]) > np.abs(eyes_l[:, 1] - eyes_r[:, 1]))
    assert np.all((eyes[:, 1] < nose[:, 1]) & (nose[:, 1] < mouth[:, 1]))
    # and the same face, at the same place, as in the demo clip it was made from
    both = found & (vb["found"] == 1)
    assert both.mean() >= 0.9
    assert np.median(np.abs(v["landmarks68"][both] - vb["landmarks68"][both])) < 1.5
