"""68 facial landmarks, the 49-point face shape, per-clip normalisation and PCA whitening.

Chao et al. §3.1 ("Face shape feature"): "we use the landmarks' location of the face as face shape
feature. After feature normalization for each clip, these features can also reflect the head
movement and head pose. The 49 landmarks' locations are then PCA whitened, with the final 20
dimensions kept." The chain here is::

    landmarks68_batch (dlib, 68 points in pixels) → shapes[:, POINTS_49]
        → normalize_per_clip (98 z-scored coordinates) → fit_pca / pca_whiten (20 dims)

The PCA basis is three plain arrays (``mean``, ``components``, ``explained_variance``), so it can
be stored in a shard, and a trainer can refit it on its own training fold (fitting it on all clips
would leak the test fold into the features).
"""
from __future__ import annotations

import numpy as np

from features.errors import ClipError, ParameterError

PREDICTOR_FILES = {68: "shape_predictor_68_face_landmarks.dat", 5: "shape_predictor_5_face_landmarks.dat"}

#: The 49-point face shape: the 68-point (iBUG 300-W / dlib) layout minus the 17 jaw-line points
#: (0-16) and minus the two inner-mouth corners (60, 64). This is the IntraFace / SDM 49-point
#: layout (brows 17-26, nose 27-35, eyes 36-47, outer lip 48-59, inner lip 61-63 and 65-67), which
#: is what the EmotiW 2015 organisers' landmarks have and hence what Chao et al. §3.1 used
#: ("We utilize the landmarks provided by the organizers", §4.1). The jaw line is left out because
#: it is the least reliable part of a fitted shape (it follows the face contour, not a feature),
#: and the inner-mouth corners because they nearly coincide with the outer ones (48, 54).
POINTS_49 = np.array([i for i in range(17, 68) if i not in (60, 64)], dtype=np.intp)


def load_predictor(kind: int = 68):
    """dlib's shape predictor with ``kind`` (68 or 5) points, from ``face-recognition-models``."""
    import dlib
    if kind not in PREDICTOR_FILES:
        raise ParameterError(f"kind must be one of {sorted(PREDICTOR_FILES)}, got {kind!r}")
    from features.face import model_path

    return dlib.shape_predictor(model_path(PREDICTOR_FILES[kind]))


def landmarks68(frame_rgb: np.ndarray, box, *, predictor) -> np.ndarray:
    """The 68 landmarks of the face in ``box``.

    Parameters
    ----------
    frame_rgb : np.ndarray, shape (height, width, 3), uint8 RGB
    box : sequence of 4 numbers, [x0, y0, x1, y1] in pixels (left, top, right, bottom, as dlib's
        detectors report them; rounded to integers)
    predictor : ``dlib.shape_predictor`` with 68 points (``load_predictor(68)``)

    Returns
    -------
    np.ndarray, shape (68, 2), float32 — (x, y) in pixels of the frame, iBUG 300-W point order
    """
    import dlib
    frame_rgb = np.asarray(frame_rgb)
    if frame_rgb.ndim != 3 or frame_rgb.shape[2] != 3:
        raise ParameterError(f"frame_rgb must have shape (height, width, 3), got {frame_rgb.shape}")
    x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    if x1 <= x0 or y1 <= y0:
        raise ParameterError(f"box must be [x0, y0, x1, y1] with x1 > x0 and y1 > y0, got {list(box)}")
    # dlib reads a dense copy; the predictor only looks near the box, so copy the box grown by
    # half its side on every side, not the whole frame (the same points: tests)
    r = (max(x1 - x0, y1 - y0) + 1) // 2
    h, w = frame_rgb.shape[:2]
    ox, oy = min(max(0, x0 - r), w), min(max(0, y0 - r), h)
    region = frame_rgb[oy:min(h, y1 + r), ox:min(w, x1 + r)]
    if region.size == 0:  # a box off the frame: the frame itself
        region, ox, oy = frame_rgb, 0, 0
    region = np.ascontiguousarray(region, dtype=np.uint8)
    shape = predictor(region, dlib.rectangle(x0 - ox, y0 - oy, x1 - ox, y1 - oy))
    if shape.num_parts != 68:
        raise ParameterError(f"predictor must give 68 points, it gives {shape.num_parts}")
    return np.array([(p.x + ox, p.y + oy) for p in shape.parts()], dtype=np.float32)


def landmarks68_batch(frames: np.ndarray, boxes: np.ndarray, found: np.ndarray, *,
                      predictor) -> np.ndarray:
    """``landmarks68`` for every frame of a clip.

    Parameters
    ----------
    frames : np.ndarray, shape (n, height, width, 3), uint8 RGB (or a sequence of such frames)
    boxes : np.ndarray, shape (n, 4), [x0, y0, x1, y1] per frame
    found : np.ndarray, shape (n,), bool — whether the frame has a face (its box is ignored if not)

    Returns
    -------
    np.ndarray, shape (n, 68, 2), float32 — NaN in the rows of frames without a face
    """
    found = np.asarray(found, dtype=bool)
    boxes = np.asarray(boxes, dtype=np.float64)
    if len(frames) != len(found) or boxes.shape != (len(found), 4):
        raise ParameterError(f"frames, boxes (n, 4) and found must agree in n, got {len(frames)}, "
                             f"{boxes.shape}, {found.shape}")
    out = np.full((len(found), 68, 2), np.nan, dtype=np.float32)
    for i in np.flatnonzero(found):
        out[i] = landmarks68(frames[i], boxes[i], predictor=predictor)
    return out


def normalize_per_clip(shapes: np.ndarray, *, mask: np.ndarray | None = None) -> np.ndarray:
    """Per-clip feature normalisation of the 49-point shapes (Chao et al. §3.1).

    Each of the 98 coordinates is z-scored over the clip's valid frames: (v − mean) / std with the
    mean and the (population, ddof=0) std taken over those frames. There is deliberately no
    per-frame alignment (no removal of translation, scale or rotation per frame): Chao et al. note
    that after the per-clip normalisation the features "can also reflect the head movement and
    head pose", which a per-frame Procrustes alignment would remove. A coordinate that does not
    vary within the clip (all its values equal) becomes 0.

    Parameters
    ----------
    shapes : np.ndarray, shape (n, 49, 2), pixels (``landmarks68_batch(...)[:, POINTS_49]``)
    mask : np.ndarray, shape (n,), bool, optional — frames to use; default: the rows without NaN.
        Rows with NaN are never used.

    Returns
    -------
    np.ndarray, shape (n, 98), float32 — coordinates in the order x0, y0, x1, y1, …; NaN rows
    where the frame is not valid. Raises ``ClipError("no_face", …)`` when no frame is valid.
    """
    shapes = np.asarray(shapes, dtype=np.float64)
    if shapes.ndim != 3 or shapes.shape[1:] != (len(POINTS_49), 2):
        raise ParameterError(f"shapes must have shape (n, 49, 2), got {shapes.shape}")
    x = shapes.reshape(len(shapes), -1)
    valid = np.all(np.isfinite(x), axis=1)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != valid.shape:
            raise ParameterError(f"mask must have shape ({len(shapes)},), got {mask.shape}")
        valid &= mask
    if not valid.any():
        raise ClipError("no_face", "no frame of the clip has landmarks")
    v = x[valid]
    constant = v.max(axis=0) == v.min(axis=0)   # exact test: a rounded std of equal values is not 0
    std = np.where(constant, 1.0, v.std(axis=0))
    out = np.full(x.shape, np.nan, dtype=np.float32)
    out[valid] = np.where(constant, 0.0, (v - v.mean(axis=0)) / std)
    return out


def fit_pca(X: np.ndarray, *, n_components: int = 20) -> dict[str, np.ndarray]:
    """Fit the PCA-whitening basis (Chao et al. §3.1: "PCA whitened ... 20 dimensions kept").

    Uses scikit-learn's ``PCA(whiten=True)`` on the rows of ``X`` without NaN.

    ``X`` (n, n_features) is e.g. the ``normalize_per_clip`` output of the training clips. It needs
    more than ``n_components`` finite rows: with exactly ``n_components`` the centred data has rank
    ``n_components − 1`` and the last component would have zero variance.

    Returns
    -------
    dict with float64 arrays ``mean`` (n_features,), ``components`` (n_components, n_features)
    and ``explained_variance`` (n_components,) (ddof=1, as scikit-learn), for ``pca_whiten``
    """
    from sklearn.decomposition import PCA

    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ParameterError(f"X must have shape (n, n_features), got {X.shape}")
    rows = X[np.all(np.isfinite(X), axis=1)]
    if not 1 <= n_components <= X.shape[1]:
        raise ParameterError(f"n_components must be in [1, {X.shape[1]}], got {n_components}")
    if len(rows) <= n_components:
        raise ParameterError(f"fit_pca needs more than n_components={n_components} rows without NaN, "
                             f"got {len(rows)}")
    pca = PCA(n_components=n_components, whiten=True, svd_solver="full").fit(rows)
    var = pca.explained_variance_
    if not np.all(var > 1e-12 * max(var[0], 1e-300)):
        raise ParameterError(f"X has rank < n_components={n_components} (component variances {var})")
    return {"mean": pca.mean_.copy(), "components": pca.components_.copy(),
            "explained_variance": var.copy()}


def pca_whiten(X: np.ndarray, *, mean: np.ndarray, components: np.ndarray,
               explained_variance: np.ndarray) -> np.ndarray:
    """Project onto a ``fit_pca`` basis and whiten: (X − mean) @ components.T / √explained_variance.

    Same as scikit-learn's ``PCA(whiten=True).transform``. ``X`` (n, n_features) → (n, n_components)
    float32; rows with NaN stay NaN.
    """
    X, components = np.asarray(X, dtype=np.float64), np.asarray(components, dtype=np.float64)
    if X.ndim != 2 or components.ndim != 2 or X.shape[1] != components.shape[1]:
        raise ParameterError(f"X must be (n, {components.shape[-1]}), got {X.shape}")
    z = (X - mean) @ components.T / np.sqrt(np.asarray(explained_variance, dtype=np.float64))
    return z.astype(np.float32)
