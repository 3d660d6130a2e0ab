"""Issue 21: the faster face chain gives the bytes the previous one gave (no timing assertions:
``bench/bench_faces.py`` measures)."""
import os

import numpy as np
import pytest

from features.face import make_detector, track_faces
from features.video import iter_video, read_video

CLIPS = os.path.join(os.path.dirname(__file__), "..", "data", "demo", "clips")


def previous_decode(path):
    """The decoding before issue 21: ``frame.to_ndarray(format="rgb24")``, a new swscale context
    per frame (the demo clips carry no rotation)."""
    import av

    with av.open(path) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]


@pytest.mark.parametrize("name", ["s1_anger_01.mp4", "s2_anger_01.avi", "s3_happiness_02.avi", "bad_noaudio.mp4"])
def test_one_converter_per_stream_gives_the_same_frames(name):
    path = os.path.join(CLIPS, name)
    frames = read_video(path, as_list=True)[0]
    ref = previous_decode(path)
    assert len(frames) == len(ref)
    for a, b in zip(frames, ref):  # also the layout: padded rows as ffmpeg gives them
        assert a.shape == b.shape and a.strides == b.strides and np.array_equal(a, b)
    # frames kept from earlier in the stream are not overwritten by later conversions
    kept = [f for _, f in iter_video(path)]
    assert all(np.array_equal(a, b) for a, b in zip(kept, ref))


def test_faces_of_clip_equals_the_previous_chain():
    """The Faces stage's per-clip output, byte for byte, against the chain as it was (previous
    decode, RGB detection)."""
    from features import face, landmarks
    from features.face import face_models, faces_of_clip

    path = os.path.join(CLIPS, "s2_happiness_01.mp4")
    detect, predictor = face_models("hog", 1)
    info, got = faces_of_clip(path, fps=None, detect=detect, predictor=predictor)
    frames = previous_decode(path)
    boxes, found, interpolated = face.track_faces(frames, detector=detect, detect_every=10, scale=1.0,
                                                  max_gap=5, full_every=30)
    lm = landmarks.landmarks68_batch(frames, boxes, found, predictor=predictor)
    np.testing.assert_array_equal(got["found"], found.astype(np.uint8))
    np.testing.assert_array_equal(got["interpolated"], interpolated.astype(np.uint8))
    np.testing.assert_array_equal(got["box"], boxes)
    np.testing.assert_array_equal(got["landmarks68"], lm)
    for k in np.flatnonzero(found):
        box = face.keypoint_box(lm[k], margin=0.9)
        assert np.array_equal(got["crop"][k], face.crop(frames[k], box, size=173))
        assert np.array_equal(got["crop_small"][k], face.crop(frames[k], box, size=72))
    assert not got["crop"][~found].any()
    np.testing.assert_array_equal(got["shape49"], landmarks.normalize_per_clip(lm[:, landmarks.POINTS_49], mask=found))


def test_gray_detection_finds_the_same_faces_on_a_large_frame():
    """``track_faces(gray=True)`` hands HOG the tracked gray frame: on an 854×480 frame (the
    demo face scaled ×3.3, ~170 px, as the BAUM-format bench clips) the same frames have a face
    and the boxes stay within a few pixels."""
    import cv2

    frames = [cv2.resize(f, None, fx=480 / 144, fy=480 / 144, interpolation=cv2.INTER_CUBIC)[:, :854]
              for f in read_video(os.path.join(CLIPS, "s1_anger_01.mp4"))[0][:60]]
    detect = make_detector("hog", upsample=1)
    kw = dict(detector=detect, scale=320 / 854, detect_every=10, full_every=30)
    rgb_boxes, rgb_found, _ = track_faces(frames, **kw)
    gray_boxes, gray_found, _ = track_faces(frames, gray=True, **kw)
    np.testing.assert_array_equal(gray_found, rgb_found)
    assert rgb_found.mean() >= 0.9
    side = np.nanmean(rgb_boxes[:, 2] - rgb_boxes[:, 0])
    assert np.nanmax(np.abs(gray_boxes - rgb_boxes)) < 0.1 * side


def test_gray_detection_reports_full_frame_pixels():
    seen = []
    hog = make_detector("hog", upsample=1)

    def recording(image):
        seen.append(image.ndim)
        return hog(image)

    frames = read_video(os.path.join(CLIPS, "s1_anger_01.mp4"))[0][:25]
    boxes, found, _ = track_faces(frames, detector=recording, scale=1.0, gray=True, full_every=30)
    assert set(seen) == {2} and found.all()
    ref = hog(frames[0])[0, :4]
    np.testing.assert_allclose(boxes[0], ref, atol=6)
