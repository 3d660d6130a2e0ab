import os

import numpy as np
import pytest

from features import ClipError, ParameterError
from features.landmarks import (POINTS_49, fit_pca, landmarks68, landmarks68_batch, load_predictor,
                                normalize_per_clip, pca_whiten)

CLIP = os.path.join(os.path.dirname(__file__), "..", "data", "demo", "clips", "s1_anger_01.mp4")


@pytest.fixture(scope="module")
def predictor():
    return load_predictor(68)


@pytest.fixture(scope="module")
def faces():
    """Every 4th of the first 120 frames of a real talking head (176×144) and dlib's face boxes."""
    import av
    import dlib

    detector = dlib.get_frontal_face_detector()
    frames, boxes = [], []
    with av.open(CLIP) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i >= 120:
                break
            if i % 4:
                continue
            rgb = frame.to_ndarray(format="rgb24")
            rects = detector(rgb, 1)
            if len(rects):
                r = max(rects, key=lambda r: r.area())
                frames.append(rgb)
                boxes.append([r.left(), r.top(), r.right(), r.bottom()])
    assert len(frames) >= 20, "the demo clip should show a detectable face in most frames"
    return np.stack(frames), np.array(boxes, dtype=np.float64)


def test_points_49_is_68_without_jaw_and_inner_mouth_corners():
    assert len(POINTS_49) == 49 and len(set(POINTS_49.tolist())) == 49
    assert not set(range(17)) & set(POINTS_49.tolist())
    assert 60 not in POINTS_49 and 64 not in POINTS_49
    assert set(POINTS_49.tolist()) | set(range(17)) | {60, 64} == set(range(68))
    assert np.all(np.diff(POINTS_49) > 0)


def test_load_predictor_rejects_unknown_point_counts():
    with pytest.raises(ParameterError):
        load_predictor(kind=49)


def test_landmarks68_on_a_real_face(faces, predictor):
    frames, boxes = faces
    for rgb, (x0, y0, x1, y1) in zip(frames[:5], boxes[:5]):
        pts = landmarks68(rgb, [x0, y0, x1, y1], predictor=predictor)
        assert pts.shape == (68, 2) and pts.dtype == np.float32
        # inside the box enlarged by 25 % on each side (the jaw may reach a little past dlib's box)
        mx, my = 0.25 * (x1 - x0), 0.25 * (y1 - y0)
        assert np.all((pts[:, 0] >= x0 - mx) & (pts[:, 0] <= x1 + mx))
        assert np.all((pts[:, 1] >= y0 - my) & (pts[:, 1] <= y1 + my))
        eyes, mouth = pts[36:48, 1], pts[48:68, 1]
        assert eyes.max() < mouth.min()                            # every eye point above the mouth
        assert eyes.mean() < pts[30, 1] < mouth.mean()             # nose tip (30) between them
        assert pts[36:42, 0].mean() < pts[42:48, 0].mean()         # image-left eye is points 36-41
        assert pts[17:27, 1].mean() < pts[36:48, 1].mean()         # brows above eyes


def test_landmarks68_equal_dlib_on_the_whole_frame(faces, predictor):
    """landmarks68 hands dlib only the region around the box: the points must be dlib's own on
    the whole frame, also for boxes partly or wholly off the frame and for frames whose rows are
    padded (as ffmpeg decodes 854 px wide frames)."""
    import dlib

    frames, boxes = faces
    h, w = frames.shape[1:3]
    cases = [(f, b) for f, b in zip(frames, boxes)]
    cases += [(frames[0], [-30, -30, 40, 40]), (frames[0], [w - 20, h - 20, w + 60, h + 60]),
              (frames[0], [w + 10, h + 10, w + 90, h + 90])]
    padded = np.zeros((h, w + 24, 3), np.uint8)[:, :w]
    padded[:] = frames[1]
    assert not padded.flags.c_contiguous
    cases.append((padded, boxes[1]))
    for rgb, box in cases:
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        ref = predictor(np.ascontiguousarray(rgb), dlib.rectangle(x0, y0, x1, y1))
        np.testing.assert_array_equal(landmarks68(rgb, box, predictor=predictor),
                                      np.array([(p.x, p.y) for p in ref.parts()], np.float32))


def test_landmarks68_batch_fills_nan_where_no_face(faces, predictor):
    frames, boxes = faces
    found = np.array([True, False, True])
    out = landmarks68_batch(frames[:3], boxes[:3], found, predictor=predictor)
    assert out.shape == (3, 68, 2) and np.all(np.isnan(out[1]))
    np.testing.assert_array_equal(out[2], landmarks68(frames[2], boxes[2], predictor=predictor))
    with pytest.raises(ParameterError):
        landmarks68_batch(frames[:3], boxes[:2], found, predictor=predictor)


def test_normalize_per_clip_z_scores_each_coordinate_over_valid_frames():
    rng = np.random.default_rng(0)
    shapes = 50 + 10 * rng.standard_normal((40, 49, 2)) + rng.uniform(0, 100, (1, 49, 2))
    shapes[7] = np.nan                                    # a frame without landmarks
    mask = np.ones(40, bool)
    mask[[3, 20]] = False
    out = normalize_per_clip(shapes, mask=mask)
    valid = mask & ~np.isnan(shapes).any(axis=(1, 2))
    assert out.shape == (40, 98) and out.dtype == np.float32
    assert np.all(np.isnan(out[~valid])) and not np.isnan(out[valid]).any()
    np.testing.assert_allclose(out[valid].mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(out[valid].std(axis=0), 1, atol=1e-5)
    # x, y interleaved: column 2k is x of point k, 2k + 1 its y
    x, y = shapes[valid, 5, 0], shapes[valid, 5, 1]
    np.testing.assert_allclose(out[valid, 10], (x - x.mean()) / x.std(), atol=1e-5)
    np.testing.assert_allclose(out[valid, 11], (y - y.mean()) / y.std(), atol=1e-5)


def test_normalize_per_clip_keeps_head_movement_and_handles_constant_coordinates():
    base = np.random.default_rng(1).uniform(0, 100, (49, 2))
    shift = np.arange(10, dtype=float)                    # the head moves right, 1 px per frame
    shapes = base[None] + np.stack([shift, np.zeros(10)], axis=1)[:, None, :]
    out = normalize_per_clip(shapes)
    expected_x = (shift - shift.mean()) / shift.std()    # every x follows the movement
    np.testing.assert_allclose(out[:, 0::2], np.repeat(expected_x[:, None], 49, axis=1), atol=1e-5)
    assert np.all(out[:, 1::2] == 0)                      # y never changes: 0, not NaN
    with pytest.raises(ClipError) as err:
        normalize_per_clip(np.full((5, 49, 2), np.nan))
    assert err.value.status == "no_face"
    with pytest.raises(ParameterError):
        normalize_per_clip(np.zeros((5, 68, 2)))


def _correlated(n, rng):
    scales = np.geomspace(10, 0.1, 98)
    rotation, _ = np.linalg.qr(rng.standard_normal((98, 98)))
    return (rng.standard_normal((n, 98)) * scales) @ rotation + rng.uniform(-5, 5, 98)


def test_pca_whitening_gives_unit_variance_and_matches_sklearn():
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(2)
    fit_set, new = _correlated(400, rng), _correlated(50, rng)
    basis = fit_pca(fit_set, n_components=20)
    assert basis["components"].shape == (20, 98) and basis["mean"].shape == (98,)
    z = pca_whiten(fit_set, **basis)
    assert z.shape == (400, 20) and z.dtype == np.float32
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(np.var(z, axis=0, ddof=1), 1, rtol=1e-4)
    np.testing.assert_allclose(np.cov(z, rowvar=False), np.eye(20), atol=1e-4)   # decorrelated
    reference = PCA(n_components=20, whiten=True, svd_solver="full").fit(fit_set).transform(new)
    np.testing.assert_allclose(pca_whiten(new, **basis), reference, rtol=1e-4, atol=1e-4)


def test_pca_skips_nan_rows_and_keeps_them_nan():
    rng = np.random.default_rng(3)
    X = _correlated(100, rng)
    with_nan = X.copy()
    with_nan[[4, 50]] = np.nan
    basis = fit_pca(with_nan, n_components=20)
    clean = fit_pca(np.delete(X, [4, 50], axis=0), n_components=20)
    for key in basis:
        np.testing.assert_allclose(basis[key], clean[key])
    z = pca_whiten(with_nan, **basis)
    assert np.all(np.isnan(z[[4, 50]])) and not np.isnan(np.delete(z, [4, 50], axis=0)).any()


@pytest.mark.parametrize("n_rows, n_components", [(20, 20), (5, 20), (100, 0), (100, 99)])
def test_fit_pca_rules(n_rows, n_components):
    X = _correlated(n_rows, np.random.default_rng(4))
    with pytest.raises(ParameterError):
        fit_pca(X, n_components=n_components)


def test_the_face_shape_chain_on_a_real_clip(faces, predictor):
    """68 landmarks → 49 points → per-clip z-score → 20 whitened dims (Chao et al. §3.1)."""
    frames, boxes = faces
    found = np.ones(len(frames), bool)
    found[0] = False
    shapes = landmarks68_batch(frames, boxes, found, predictor=predictor)[:, POINTS_49]
    X = normalize_per_clip(shapes)
    assert np.all(np.isnan(X[0])) and not np.isnan(X[1:]).any()
    n_components = min(20, found.sum() - 1)
    z = pca_whiten(X, **fit_pca(X, n_components=n_components))
    np.testing.assert_allclose(np.var(z[1:], axis=0, ddof=1), 1, rtol=1e-3)
