import os
import sys

import numpy as np
import pytest

from features import ParameterError
from features.face import crop, keypoint_box, make_detector, model_path, track_faces
from features.video import read_video

CLIPS = os.path.join(os.path.dirname(__file__), "..", "data", "demo", "clips")
CLIP = os.path.join(CLIPS, "s1_anger_01.mp4")  # carphone: one face of ~52 px in 176×144


@pytest.fixture(scope="module")
def demo():
    return read_video(CLIP)[0]


@pytest.fixture(scope="module")
def hog():
    return make_detector("hog", upsample=1)  # 52 px faces: HOG needs upsample=1 (>= 40 px)


# ---- model files and detectors ----------------------------------------------------------------

def test_model_path_finds_the_files_without_importing_the_package():
    sys.modules.pop("face_recognition_models", None)
    for name in ("shape_predictor_68_face_landmarks.dat", "mmod_human_face_detector.dat"):
        path = model_path(name)
        assert os.path.isfile(path) and path.endswith(os.path.join("models", name))
    assert "face_recognition_models" not in sys.modules


def test_model_path_names_the_pip_package_when_missing():
    with pytest.raises(FileNotFoundError, match="face-recognition-models"):
        model_path("no_such_model.dat")


def test_hog_detector_reports_dlib_boxes_as_edges_with_scores(demo):
    import dlib

    rects, scores, _ = dlib.get_frontal_face_detector().run(demo[0], 1, 0.0)
    found = make_detector("hog", upsample=1)(demo[0])
    assert found.shape == (1, 5) and found.dtype == np.float32
    r = rects[0]
    np.testing.assert_allclose(found[0], [r.left(), r.top(), r.right() + 1, r.bottom() + 1, scores[0]],
                               rtol=1e-6)
    assert 40 <= found[0, 2] - found[0, 0] <= 70  # the carphone face
    assert make_detector("hog", upsample=0)(demo[0]).shape == (0, 5)  # too small without upsampling


def test_cnn_detector_agrees_with_hog(demo, hog):
    cnn = make_detector("cnn", upsample=1)(demo[0])  # MMOD's smallest face is ~80 px too
    box = hog(demo[0])[0, :4]
    assert cnn.shape == (1, 5) and cnn[0, 4] > 0
    centre = lambda b: np.array([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2])
    assert np.linalg.norm(centre(cnn[0]) - centre(box)) < 10


def test_opencv_detector_or_a_clear_error(demo):
    import cv2

    if hasattr(cv2, "CascadeClassifier") and os.path.isdir(getattr(getattr(cv2, "data", None),
                                                                   "haarcascades", "")):
        assert make_detector("opencv")(demo[0]).shape[1] == 5
    else:  # OpenCV 5: no CascadeClassifier, no cascade files
        with pytest.raises(FileNotFoundError, match="Haar cascade"):
            make_detector("opencv")


@pytest.mark.parametrize("kwargs", [{"kind": "mtcnn"}, {"kind": "hog", "upsample": -1}])
def test_detector_parameter_rules(kwargs):
    with pytest.raises(ParameterError):
        make_detector(**kwargs)


# ---- tracking on the real demo clip -----------------------------------------------------------

def test_hog_tracking_on_the_demo_clip(demo, hog):
    calls = []

    def counting(image):
        calls.append(image.shape)
        return hog(image)

    boxes, found, interpolated = track_faces(demo, detector=counting, scale=1.0)
    assert found.mean() >= 0.9
    assert len(calls) < 0.4 * len(demo)  # tracked, not detected, in most frames
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    assert np.nanmax(np.abs(np.diff(centres, axis=0))) < 20  # stable
    # tracked boxes stay on the face that HOG finds in that very frame
    for i in range(1, len(demo), 7):
        ref = hog(demo[i])
        if len(ref) and found[i]:
            assert np.abs((ref[0, :2] + ref[0, 2:4]) / 2 - centres[i]).max() < 8


def test_tracking_at_half_scale_reports_full_frame_pixels(demo):
    seen = []
    up2 = make_detector("hog", upsample=2)  # on the half-size frame, the face is ~26 px

    def counting(image):
        seen.append(image.shape)
        return up2(image)

    boxes, found, _ = track_faces(demo[:30], detector=counting, scale=0.5)
    assert set(seen) == {(72, 88, 3)}
    assert found.mean() >= 0.9
    full = make_detector("hog", upsample=1)(demo[0])[0, :4]
    np.testing.assert_allclose(boxes[0], full, atol=8)  # same face, in full-frame pixels


# ---- tracking with a synthetic detector -------------------------------------------------------

def scene(n, faces, *, size=(120, 160), seed=0):
    """n frames of a textured background with textured squares ("faces") moving linearly.

    faces: list of (x0, y0, side, vx, vy, visible(i) -> bool). Frame i carries i in its top-left
    4×4 block (so a detector can read which frame it sees, also after 2× downscaling).
    Returns frames and the true boxes (n, len(faces), 4).
    """
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 60, size + (3,), dtype=np.uint8)
    # smooth textures (4×4 px blocks), as faces are: sub-pixel motion keeps them correlated
    textures = [np.kron(rng.integers(100, 256, (-(-f[2] // 4),) * 2 + (3,), dtype=np.uint8),
                        np.ones((4, 4, 1), np.uint8))[:f[2], :f[2]] for f in faces]
    frames = np.repeat(background[None], n, axis=0)
    truth = np.zeros((n, len(faces), 4))
    for i in range(n):
        for k, (x0, y0, side, vx, vy, visible) in enumerate(faces):
            x, y = int(round(x0 + vx * i)), int(round(y0 + vy * i))
            truth[i, k] = (x, y, x + side, y + side)
            if visible(i):
                frames[i, y:y + side, x:x + side] = textures[k]
        frames[i, :4, :4] = i
    return frames, truth


def oracle(truth, faces, *, misses=(), calls=None):
    """A detector that reads the frame index and returns the visible faces' true boxes."""
    def detect(image):
        i = int(image[0, 0, 0])
        if calls is not None:
            calls.append(i)
        if i in misses:
            return np.zeros((0, 5))
        return np.array([[*truth[i, k], 1.0] for k, f in enumerate(faces) if f[5](i)]).reshape(-1, 5)
    return detect


ALWAYS = lambda i: True  # noqa: E731


def test_detects_every_nth_frame_and_tracks_in_between():
    faces = [(20, 30, 40, 1.5, 0.5, ALWAYS)]
    frames, truth = scene(40, faces)
    calls = []
    boxes, found, interpolated = track_faces(frames, detector=oracle(truth, faces, calls=calls),
                                             detect_every=5, scale=1.0)
    assert calls == list(range(0, 40, 5))
    assert found.all() and not interpolated.any()
    np.testing.assert_allclose(boxes, truth[:, 0], atol=1.01)  # the tracker follows to the pixel
    assert boxes.dtype == np.float32


def test_detect_every_one_is_pure_detection():
    faces = [(20, 30, 40, 1.5, 0.5, ALWAYS)]
    frames, truth = scene(12, faces)
    calls = []
    boxes, found, _ = track_faces(frames, detector=oracle(truth, faces, calls=calls), detect_every=1,
                                  scale=1.0)
    assert calls == list(range(12))
    np.testing.assert_array_equal(boxes, truth[:, 0])


def test_half_scale_detection_and_tracking():
    faces = [(20, 30, 40, 2.0, 1.0, ALWAYS)]
    frames, truth = scene(20, faces)
    shapes, calls = [], []
    det = oracle(truth / 2, faces, calls=calls)  # the detector sees the half-size frame

    def half(image):
        shapes.append(image.shape)
        return det(image)

    boxes, found, _ = track_faces(frames, detector=half, scale=0.5)
    assert set(shapes) == {(60, 80, 3)} and calls == [0, 5, 10, 15]
    assert found.all()
    np.testing.assert_allclose(boxes, truth[:, 0], atol=2.01)  # one half-size pixel


def test_short_gap_is_interpolated():
    faces = [(20, 30, 40, 1.5, 0.5, ALWAYS)]
    frames, truth = scene(30, faces)
    calls = []
    boxes, found, interpolated = track_faces(
        frames, detector=oracle(truth, faces, misses={10, 11, 12}, calls=calls), max_gap=5, scale=1.0)
    # the miss at frame 10 ends the face; then the detector runs on every frame until it is back
    assert calls == [0, 5, 10, 11, 12, 13, 18, 23, 28]
    assert found.all()
    np.testing.assert_array_equal(np.flatnonzero(interpolated), [10, 11, 12])
    np.testing.assert_allclose(boxes[10:13], truth[10:13, 0], atol=1.01)  # linear motion


def test_long_gap_and_the_ends_stay_masked():
    faces = [(20, 30, 40, 1.0, 0.0, lambda i: not 15 <= i < 25)]  # gone for 10 frames > max_gap
    frames, truth = scene(40, faces)
    calls = []
    boxes, found, interpolated = track_faces(
        frames, detector=oracle(truth, faces, misses={0, 1, 2}, calls=calls), max_gap=5, scale=1.0)
    assert calls[:4] == [0, 1, 2, 3] and set(range(15, 26)) <= set(calls)
    masked = [0, 1, 2, *range(15, 25)]
    assert not found[masked].any() and np.isnan(boxes[masked]).all()
    assert not interpolated.any()
    assert found[3:15].all() and found[25:].all()
    np.testing.assert_allclose(boxes[25:], truth[25:, 0], atol=1.01)


@pytest.mark.parametrize("gap, filled", [(5, True), (6, False)])
def test_max_gap_is_the_longest_gap_filled(gap, filled):
    faces = [(20, 30, 40, 1.0, 0.0, lambda i: not 10 <= i < 10 + gap)]
    frames, truth = scene(30, faces)
    boxes, found, interpolated = track_faces(frames, detector=oracle(truth, faces), max_gap=5,
                                             scale=1.0)
    assert found.all() == filled and interpolated[10:10 + gap].all() == filled
    assert found[:10].all() and found[10 + gap:].all() and interpolated.sum() == (gap if filled else 0)


def test_a_face_that_leaves_is_lost_between_detections():
    faces = [(40, 30, 40, 1.0, 0.0, lambda i: i < 23)]  # gone from frame 23, not a detection frame
    frames, truth = scene(40, faces)
    calls = []
    boxes, found, _ = track_faces(frames, detector=oracle(truth, faces, calls=calls), scale=1.0)
    assert 23 in calls  # the tracker lost it and asked the detector
    assert found[:23].all() and not found[23:].any()
    assert all(c >= 23 for c in calls[5:])  # then it keeps looking every frame


def test_the_subject_is_the_face_with_the_largest_area_over_time():
    # B is bigger but on screen for 15 of 60 frames: 60² × 15 < 40² × 60
    a = (10, 40, 40, 0.5, 0.0, ALWAYS)
    b = (100, 20, 60, -0.5, 0.0, lambda i: i < 15)
    frames, truth = scene(60, [a, b], size=(120, 200))
    boxes, found, _ = track_faces(frames, detector=oracle(truth, [a, b]), scale=1.0)
    assert found.all()
    np.testing.assert_allclose(boxes, truth[:, 0], atol=1.01)

    # both on screen all the time: the bigger one
    b_always = b[:5] + (ALWAYS,)
    frames, truth = scene(60, [a, b_always], size=(120, 200))
    boxes, found, _ = track_faces(frames, detector=oracle(truth, [a, b_always]), scale=1.0)
    assert found.all()
    np.testing.assert_allclose(boxes, truth[:, 1], atol=1.01)


def test_a_face_seen_again_after_a_miss_is_the_same_face():
    # the subject is missed for 3 frames while a second, smaller face stays: still one track
    a = (10, 40, 50, 0.5, 0.0, ALWAYS)
    b = (120, 40, 30, 0.0, 0.0, ALWAYS)
    frames, truth = scene(40, [a, b], size=(120, 200))
    det = oracle(truth, [a, b])

    def missing_a(image):
        out = det(image)
        return out[1:] if 10 <= int(image[0, 0, 0]) < 13 else out

    boxes, found, interpolated = track_faces(frames, detector=missing_a, scale=1.0)
    assert found.all()
    assert interpolated[10:15].any() and not interpolated[:10].any()
    np.testing.assert_allclose(boxes[15:], truth[15:, 0], atol=1.01)


def bright(image):
    """A detector for ``scene`` that works on any crop or scale: the box of the face pixels
    (textures are >= 100, the background and the frame-index block < 100)."""
    ys, xs = np.nonzero(image.max(-1) >= 100)
    return np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1, 1.0]]) if len(xs) else np.zeros((0, 5))


def test_redetection_searches_around_the_face_between_whole_frame_runs():
    faces = [(20, 30, 40, 1.5, 0.5, ALWAYS)]
    frames, truth = scene(40, faces)
    shapes = []

    def det(image):
        shapes.append(image.shape[:2])
        return bright(image)

    boxes, found, _ = track_faces(frames, detector=det, detect_every=5, full_every=20, scale=1.0)
    # detections at 0, 5, ..., 35: the whole frame at 0 and 20, a region around the face otherwise
    whole = [s == (120, 160) for s in shapes]
    assert whole == [True, False, False, False] * 2
    # the region: the 40 px box grown by a quarter of its side each way (roi_margin 0.25)
    assert all(max(s) <= 61 and min(s) >= 55 for s, w in zip(shapes, whole) if not w)
    assert found.all()
    np.testing.assert_allclose(boxes, truth[:, 0], atol=1.01)
    plain, _, _ = track_faces(frames, detector=bright, detect_every=5, scale=1.0)
    np.testing.assert_allclose(boxes, plain, atol=1.01)  # the same boxes as whole-frame runs


def test_a_face_missed_for_a_few_frames_is_searched_for_where_it_was():
    # the face vanishes in frames 12-14 (motion blur, say): the frame after the whole-frame search
    # that ends it, the detector looks around its last box, not at the whole frame
    faces = [(20, 30, 40, 1.5, 0.5, lambda i: not 12 <= i < 15)]
    frames, truth = scene(30, faces)
    shapes = []

    def det(image):
        shapes.append(image.shape[:2])
        return bright(image)

    boxes, found, interpolated = track_faces(frames, detector=det, detect_every=10, full_every=30,
                                             scale=1.0, max_gap=5)
    whole = [s == (120, 160) for s in shapes]
    # frame 0 whole; 10 region; 12 region (lost), empty, then whole; 13, 14, 15 regions; 25 region
    assert whole == [True, False, False, True, False, False, False, False]
    assert found.all() and interpolated[12:15].all() and not interpolated[15:].any()
    np.testing.assert_allclose(boxes[15:], truth[15:, 0], atol=1.01)
    plain, _, plain_interp = track_faces(frames, detector=bright, detect_every=10, scale=1.0, max_gap=5)
    np.testing.assert_allclose(boxes, plain, atol=1.01)  # the boxes of whole-frame searches
    np.testing.assert_array_equal(interpolated, plain_interp)


def test_redetection_at_half_scale_reports_full_frame_pixels():
    faces = [(20, 30, 40, 2.0, 1.0, ALWAYS)]
    frames, truth = scene(20, faces)
    shapes = []

    def det(image):
        shapes.append(image.shape[:2])
        return bright(image)

    boxes, found, _ = track_faces(frames, detector=det, scale=0.5, detect_every=5, full_every=30)
    assert shapes[0] == (60, 80) and all(max(s) <= 42 for s in shapes[1:]) and len(shapes) == 4
    assert found.all()
    np.testing.assert_allclose(boxes, truth[:, 0], atol=2.01)  # one half-size pixel


def test_a_region_without_the_face_falls_back_to_the_whole_frame():
    faces = [(20, 30, 40, 1.5, 0.5, ALWAYS)]
    frames, truth = scene(30, faces)
    calls, shapes = [], []
    whole = oracle(truth, faces, calls=calls)  # reads the frame index: whole frames only

    def det(image):
        shapes.append(image.shape[:2])
        return whole(image) if image.shape[:2] == (120, 160) else np.zeros((0, 5))

    boxes, found, _ = track_faces(frames, detector=det, detect_every=5, full_every=30, scale=1.0)
    assert calls == list(range(0, 30, 5))  # each missed region is searched again as a whole frame
    assert shapes == [(120, 160)] + [(s := shapes[1]), (120, 160)] * 5 and s != (120, 160)
    plain, _, _ = track_faces(frames, detector=oracle(truth, faces), detect_every=5, scale=1.0)
    np.testing.assert_array_equal(boxes, plain)


def test_redetection_on_the_demo_clip(demo, hog):
    sizes = []

    def counting(image):
        sizes.append(image.shape[:2])
        return hog(image)

    boxes, found, _ = track_faces(demo, detector=counting, scale=1.0, detect_every=10, full_every=30)
    plain, plain_found, _ = track_faces(demo, detector=hog, scale=1.0, detect_every=10)
    full = sum(s == demo.shape[1:3] for s in sizes)
    assert full <= len(demo) // 30 + 3 and full < len(sizes)  # most re-detections search a region
    assert found.mean() >= 0.9
    both = np.flatnonzero(found & plain_found)
    from features.face import _iou
    assert min(_iou(boxes[i], plain[i]) for i in both) > 0.6  # the same face as whole-frame runs


def test_no_face_at_all():
    frames, _ = scene(8, [])
    calls = []
    boxes, found, interpolated = track_faces(frames, detector=lambda im: calls.append(1) or [],
                                             scale=1.0)
    assert len(calls) == 8 and not found.any() and np.isnan(boxes).all()
    assert boxes.shape == (8, 4) and found.shape == interpolated.shape == (8,)


@pytest.mark.parametrize("kwargs", [{"detect_every": 0}, {"scale": 0.0}, {"scale": 1.5},
                                    {"max_gap": -1}, {"full_every": 0}, {"roi_margin": -0.1}])
def test_track_parameter_rules(kwargs):
    with pytest.raises(ParameterError):
        track_faces(np.zeros((2, 8, 8, 3), np.uint8), detector=lambda im: [], **kwargs)


# ---- key-point box and crop -------------------------------------------------------------------

def synthetic_landmarks(*, eye_y=50.0, mouth_y=80.0, eyes=(40.0, 70.0), nose=(55.0, 66.0)):
    pts = np.zeros((68, 2))
    pts[36:42] = (eyes[0], eye_y)       # right eye (image left)
    pts[42:48] = (eyes[1], eye_y)       # left eye
    pts[30] = nose
    pts[48:68] = (55.0, mouth_y)        # mouth
    pts[:30] = pts[31:36] = (-1000.0, -1000.0)  # the other points must not matter
    return pts


def test_keypoint_box_arithmetic():
    pts = synthetic_landmarks()
    # key points span x 40..70 (30 px), y 50..80 (30 px) -> extent 30, centre (55, 65)
    np.testing.assert_allclose(keypoint_box(pts, margin=0.0), [40, 50, 70, 80])
    np.testing.assert_allclose(keypoint_box(pts, margin=0.5), [25, 35, 85, 95])  # side 60
    tall = synthetic_landmarks(mouth_y=110.0)  # height 60 > width 30: square of side 60 × 1.2
    np.testing.assert_allclose(keypoint_box(tall, margin=0.1), [19, 44, 91, 116])
    box = keypoint_box(tall)
    assert box[2] - box[0] == pytest.approx(box[3] - box[1]) == pytest.approx(60 * 2.8)


def test_keypoint_box_covers_brows_to_chin_on_real_faces(demo, hog):
    import dlib

    predictor = dlib.shape_predictor(model_path("shape_predictor_68_face_landmarks.dat"))
    inside = []
    for frame in demo[::6]:
        x0, y0, x1, y1, _ = hog(frame)[0]
        shape = predictor(frame, dlib.rectangle(int(x0), int(y0), int(x1) - 1, int(y1) - 1))
        pts = np.array([(p.x, p.y) for p in shape.parts()], float)
        box = keypoint_box(pts)
        face = pts[[8, *range(17, 27)]]  # chin and brows
        inside.append(np.all((face >= box[:2]) & (face <= box[2:])))
        assert not np.all((face >= keypoint_box(pts, margin=0.35)[:2])
                          & (face <= keypoint_box(pts, margin=0.35)[2:]))  # the chin sticks out
    assert np.mean(inside) >= 0.95


@pytest.mark.parametrize("kwargs", [{"landmarks": np.zeros((5, 2))}, {"margin": -0.1}])
def test_keypoint_box_rules(kwargs):
    with pytest.raises(ParameterError):
        keypoint_box(**{"landmarks": synthetic_landmarks(), **kwargs})


@pytest.mark.parametrize("size", [173, 72])
def test_crop_puts_a_square_where_the_box_says(size):
    frame = np.zeros((120, 160, 3), np.uint8)
    frame[40:80, 60:100] = 255  # a white square, 40 px
    out = crop(frame, (50, 30, 110, 90), size=size)  # 60 px box around it
    assert out.shape == (size, size, 3) and out.dtype == np.uint8
    bright = np.argwhere(out[..., 0] > 127)
    scale = size / 60
    # pixel u is white where its centre x0 + (u + 0.5)/scale - 0.5 lies in [59.5, 99.5)
    lo, hi = int(np.ceil(10 * scale - 0.5)), int(np.ceil(50 * scale - 0.5)) - 1
    assert bright.min(0).tolist() == [lo, lo] and bright.max(0).tolist() == [hi, hi]
    assert (out[lo + 2:hi - 1, lo + 2:hi - 1] == 255).all()


def test_crop_of_the_whole_frame_is_cv2_resize():
    import cv2

    yy, xx = np.mgrid[0:90, 0:120]
    frame = np.stack([128 + 100 * np.sin(xx / 9.0), 128 + 100 * np.cos(yy / 7.0),
                      (xx + yy) % 256], -1).astype(np.uint8)
    for size in (173, 72):
        ref = cv2.resize(frame, (size, size), interpolation=cv2.INTER_LINEAR)
        out = crop(frame, (0, 0, 120, 90), size=size, pad="edge")
        assert np.abs(out.astype(int) - ref.astype(int))[..., :2].max() <= 2


def test_crop_reads_padded_rows_and_other_layouts_alike():
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    padded = np.zeros((90, 136, 3), np.uint8)[:, :120]  # rows padded, as ffmpeg decodes 854 px frames
    padded[:] = frame
    box = (10.5, 5.0, 80.0, 74.5)
    ref = crop(frame, box, size=72)
    np.testing.assert_array_equal(crop(padded, box, size=72), ref)
    np.testing.assert_array_equal(crop(np.asfortranarray(frame), box, size=72), ref)  # copied first
    upside = np.flip(np.ascontiguousarray(frame[::-1]), 0)  # the same pixels, negative row stride
    assert upside.strides[0] < 0
    np.testing.assert_array_equal(crop(upside, box, size=72), ref)


def test_crop_partly_outside_the_frame():
    rng = np.random.default_rng(3)
    frame = rng.integers(1, 256, (100, 100, 3), dtype=np.uint8)
    out = crop(frame, (-20, -10, 40, 50), size=60)  # 1:1 scale: output pixel = frame pixel
    np.testing.assert_array_equal(out[10:, 20:], frame[:50, :40])
    assert (out[:10] == 0).all() and (out[:, :20] == 0).all()
    edge = crop(frame, (-20, -10, 40, 50), size=60, pad="edge")
    np.testing.assert_array_equal(edge[10:, 20:], frame[:50, :40])
    np.testing.assert_array_equal(edge[:10, 20:], np.broadcast_to(frame[0, :40], (10, 40, 3)))
    np.testing.assert_array_equal(edge[10:, :20], np.broadcast_to(frame[:50, :1], (50, 20, 3)))
    # half outside to the right and bottom, resized to 173
    out = crop(frame, (70, 70, 130, 130), size=173)
    assert out.shape == (173, 173, 3) and (out[100:, :] == 0).all() and (out[:80, :80] > 0).all()


@pytest.mark.parametrize("box, kwargs", [((10, 10, 5, 20), {}), ((0, 0, np.nan, 10), {}),
                                         ((0, 0, 10, 10), {"size": 0}),
                                         ((0, 0, 10, 10), {"pad": "reflect"})])
def test_crop_rules(box, kwargs):
    with pytest.raises(ParameterError):
        crop(np.zeros((20, 20, 3), np.uint8), box, **kwargs)
