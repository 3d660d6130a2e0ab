"""Face detection, tracking and cropping: the visual front end of AVEF §2.1.2.

AVEF (Ma et al. 2019, ``shared/papers/004``) §2.1.2: "conduct face detection via detecting four
key positions of left eye, right eye, nose and mouth, and obtain the human face through an
extending for these key points"; face images are 173×173×3, resized bilinearly where a network
needs another size (Hsu & Wu, ``shared/papers/000``, Table 2: VGG-19 input 72×72).
``track_faces`` finds the subject's box per frame, 68 landmarks give the four key points,
``keypoint_box`` extends them to a square, ``crop`` cuts it out. Boxes are ``[x0, y0, x1, y1]``
in frame pixels: top-left corner and bottom-right edge (exclusive), so the width is x1 − x0.
"""
from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Callable, Iterable

import numpy as np

from features.errors import ParameterError

#: 0-based indices into the 68-point iBUG 300-W markup (dlib's ``shape_predictor_68``).
RIGHT_EYE, LEFT_EYE = slice(36, 42), slice(42, 48)  # the subject's right eye is on the image left
NOSE_TIP, MOUTH = 30, slice(48, 68)                 # nose tip; outer and inner lip contours


def model_path(name: str) -> str:
    """Path of a dlib model file (e.g. ``"mmod_human_face_detector.dat"``) of the pip package
    ``face-recognition-models``, found with ``importlib.util.find_spec`` without importing it
    (its ``__init__`` imports the removed ``pkg_resources``)."""
    spec = importlib.util.find_spec("face_recognition_models")
    root = next(iter(spec.submodule_search_locations or []), "") if spec else ""
    path = os.path.join(root, "models", name)
    if not root or not os.path.isfile(path):
        raise FileNotFoundError(f"dlib model {name!r} not found: pip install face-recognition-models")
    return path


def make_detector(kind: str = "hog", *, upsample: int = 0, threshold: float = 0.0,
                  model: str | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """A face detector ``detect(frame_rgb) -> (k, 5) float32 [x0, y0, x1, y1, score]``.

    ``kind``: ``"hog"`` (dlib HOG + linear SVM, score = SVM margin; finds faces >= ~80 px, 40 px
    with ``upsample=1``), ``"cnn"`` (dlib MMOD CNN, ``model`` defaults to
    ``mmod_human_face_detector.dat``, score = confidence) or ``"opencv"`` (Haar cascade
    ``haarcascade_frontalface_default.xml``, score = level weight; OpenCV 5 dropped
    ``CascadeClassifier`` and its cascades: there it raises ``FileNotFoundError``).
    ``upsample``: times dlib doubles the image first; ``threshold``: the lowest score kept.
    """
    if upsample < 0:
        raise ParameterError(f"upsample must be >= 0, got {upsample}")
    if kind in ("hog", "cnn"):
        import dlib

        def _edges(r):  # dlib's rectangles include their right and bottom pixels
            return r.left(), r.top(), r.right() + 1, r.bottom() + 1
    if kind == "hog":
        hog = dlib.get_frontal_face_detector()

        def run(image):
            rects, scores, _ = hog.run(image, upsample, threshold)
            return [(*_edges(r), s) for r, s in zip(rects, scores)]
    elif kind == "cnn":
        net = dlib.cnn_face_detection_model_v1(model or model_path("mmod_human_face_detector.dat"))

        def run(image):
            return [(*_edges(d.rect), d.confidence) for d in net(image, upsample)
                    if d.confidence >= threshold]
    elif kind == "opencv":
        cv2, haar = _haar_cascade()

        def run(image):
            rects, _, weights = haar.detectMultiScale3(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), 1.1,
                                                       5, outputRejectLevels=True)
            return [(x, y, x + w, y + h, s) for (x, y, w, h), s
                    in zip(np.reshape(rects, (-1, 4)), np.ravel(weights)) if s >= threshold]
    else:
        raise ParameterError(f"kind must be 'hog', 'cnn' or 'opencv', got {kind!r}")
    return lambda frame: np.array(run(np.ascontiguousarray(frame)), np.float32).reshape(-1, 5)


def _haar_cascade():
    import cv2

    path = os.path.join(getattr(getattr(cv2, "data", None), "haarcascades", ""),
                        "haarcascade_frontalface_default.xml")
    if not (hasattr(cv2, "CascadeClassifier") and os.path.isfile(path)):
        raise FileNotFoundError(f"OpenCV {cv2.__version__} has no Haar cascade (OpenCV 5 dropped "
                                "CascadeClassifier and its .xml files): use kind='hog' or 'cnn'")
    return cv2, cv2.CascadeClassifier(path)


class _Track:
    """One face: its boxes by frame index, and the patch of its last detection, which
    ``follow`` finds again by normalised cross-correlation within ±35 % of the box size of its
    previous place (translation only; the size is refreshed at each detection)."""

    def __init__(self):
        self.boxes, self.ended = {}, -1 << 62  # ended: the frame of its last box once it has ended

    def detected(self, gray, box, i):
        self.boxes[i] = box
        h, w = gray.shape
        x0, y0 = max(0, int(round(box[0]))), max(0, int(round(box[1])))
        x1, y1 = min(w, int(round(box[2]))), min(h, int(round(box[3])))
        self.patch, self.corner = gray[y0:y1, x0:x1].copy(), np.array([x0, y0])
        self.last, self.active = np.asarray(box, np.float64), True

    def follow(self, gray, min_score=0.5) -> bool:
        import cv2

        (ph, pw), (h, w), (cx, cy) = self.patch.shape, gray.shape, self.corner
        r = max(2, int(0.35 * max(ph, pw)))
        x0, y0, x1, y1 = max(0, cx - r), max(0, cy - r), min(w, cx + pw + r), min(h, cy + ph + r)
        if min(ph, pw) < 4 or x1 - x0 < pw or y1 - y0 < ph:
            return False
        score = cv2.matchTemplate(gray[y0:y1, x0:x1], self.patch, cv2.TM_CCOEFF_NORMED)
        _, peak, _, (mx, my) = cv2.minMaxLoc(score)
        shift = np.array([x0 + mx, y0 + my]) - self.corner
        self.corner, self.last = self.corner + shift, self.last + np.tile(shift, 2)
        return bool(peak >= min_score)


def track_faces(frames: Iterable[np.ndarray], *, detector: Callable[[np.ndarray], np.ndarray],
                detect_every: int = 5, scale: float = 0.5, max_gap: int = 5,
                min_iou: float = 0.3, full_every: int | None = None,
                roi_margin: float = 0.25, gray: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The subject's face box in every frame: detect every few frames, track in between.

    ``detector(frame_rgb) -> (k, 4 or 5)`` (e.g. ``make_detector("hog")``) runs on the frame
    downscaled by ``scale`` at frame 0, ``detect_every`` frames after its last run, and whenever
    a followed face is lost or none is followed (a face-less clip costs a detection per frame).
    With ``full_every`` set, a whole frame is searched only at least every ``full_every``
    frames; the re-detections in between search a region around each followed face: its box
    grown by ``roi_margin`` × its side on every side, at the same ``scale`` (the detector sees
    the face as in a whole-frame run). On 854×480 frames (face ~170 px, ``scale`` 0.375) HOG
    with ``upsample=1`` takes ~6 ms there (``roi_margin`` 0.25; 0.5: ~11 ms, as many faces
    found) against ~40 ms for the whole frame. A region with no
    face falls back to a whole-frame search in that frame, so a face still ends only where the
    whole-frame search misses it; faces that come into view are found at the whole-frame runs.
    While no face is followed, the frames up to ``max_gap`` after a face ended search the region
    around its last box, not the whole frame (a face missed for a few frames, e.g. in motion
    blur, is found where it was, and the gap is interpolated).
    In between, faces are followed by normalised cross-correlation of their last detected patch
    (``cv2.matchTemplate``, ~0.4 ms for a 100 px face; ``dlib.correlation_tracker`` was no more
    accurate at ~4 ms). A detection continues the face it overlaps most (IoU >= ``min_iou``;
    for a face not seen for a while, its last box); a face the detector misses ends there.
    The subject (the rule): the face with the largest sum of box areas over the clip (mean area
    × frames seen: large and on screen longest). Gaps of <= ``max_gap`` frames between two
    sightings are filled by linear interpolation; longer gaps and frames before the first /
    after the last sighting stay masked. With ``gray`` the detector is handed the grayscale frame
    that is tracked (``cv2.COLOR_RGB2GRAY``, already downscaled; regions are cut from it) instead
    of the downscaled RGB frame: dlib's HOG then computes its gradients on one channel, not on
    three (~30 % less detector time), and no RGB frame is downscaled. The boxes differ by ~1-2 px;
    on the BAUM-format bench clips (faces ~170 px) the same frames have a face, on the demo's
    52 px faces up to 3 of ~130 frames fewer, so the ``Faces`` stage does not use it. The
    detector must take (H, W) uint8 (``"hog"`` does, ``"opencv"`` does not). ``frames``: any iterable of (H, W, 3) uint8 RGB, read
    once (``read_video(...)[0]`` or ``(f for _, f in iter_video(path))``).

    Returns
    -------
    boxes : (n, 4) float32 [x0, y0, x1, y1] in full-frame pixels, NaN where not found
    found : (n,) bool, True where detected, followed or interpolated
    interpolated : (n,) bool, True where the box fills a short gap
    """
    import cv2

    if detect_every < 1 or max_gap < 0 or not 0 < scale <= 1:
        raise ParameterError(f"need detect_every >= 1, max_gap >= 0 and 0 < scale <= 1, got "
                             f"{detect_every}, {max_gap}, {scale}")
    if full_every is not None and full_every < 1 or roi_margin < 0:
        raise ParameterError(f"need full_every >= 1 (or None) and roi_margin >= 0, got {full_every}, {roi_margin}")
    tracks, last_run, last_full, n = [], None, -1 << 62, 0
    for n, frame in enumerate(frames, start=1):
        i = n - 1
        gray_image = _shrink(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), scale)
        active = [t for t in tracks if t.active]
        lost = not all([t.follow(gray_image) for t in active])
        if not active or lost or i - last_run >= detect_every:
            last_run, found = i, None
            if full_every is not None and i - last_full < full_every:
                # regions: of the full frame, downscaled; or of the tracked (downscaled) gray frame
                image, k = (gray_image, 1.0) if gray else (frame, scale)  # k: image px -> detector px
                if active:
                    found = _detect_around(image, [t.last / k for t in active], detector,
                                           scale=k, margin=roi_margin)
                else:  # only faces missed in the last max_gap frames: look where they were
                    recent = [t.last / k for t in tracks if i - t.ended <= max_gap]
                    found = _detect_around(image, recent, detector, scale=k, margin=roi_margin,
                                           empty_ok=True) if recent else None
            if found is None:
                last_full = i
                found = _boxes(detector(gray_image if gray else _shrink(frame, scale)))
            for t, box in _associate(tracks, found, min_iou):
                if t is None:
                    tracks.append(t := _Track())
                t.detected(gray_image, box, i)
        else:
            for t in active:
                t.boxes[i] = t.last
    boxes = np.full((n, 4), np.nan)
    if tracks:
        subject = max(tracks, key=lambda t: sum(_area(b) for b in t.boxes.values()))
        for i, box in subject.boxes.items():
            boxes[i] = np.asarray(box) / scale
    interpolated = _fill_gaps(boxes, ~np.isnan(boxes[:, 0]), max_gap)
    return boxes.astype(np.float32), ~np.isnan(boxes[:, 0]), interpolated


def _boxes(detections) -> np.ndarray:
    """(k, 4) float64 boxes of a detector's (k, 4 or 5) answer (a list of rows or an array)."""
    found = np.asarray(detections, np.float64)
    return found.reshape(-1, found.shape[-1] if found.ndim == 2 else 4)[:, :4]


def _detect_around(frame, boxes, detector, *, scale, margin, empty_ok=False):
    """Detections (k, 4) in pixels of the frame downscaled by ``scale``, searched in a region of
    ``frame`` around each box (full-frame pixels) downscaled by ``scale``; de-duplicated (IoU >
    0.5 keeps the first); None when some region holds no face (``empty_ok``: only when a region
    is too small to search)."""
    h, w = frame.shape[:2]
    out = []
    for box in boxes:
        side = max(box[2] - box[0], box[3] - box[1], 1.0)
        x0, y0 = (max(0, int(np.floor(v - margin * side))) for v in box[:2])
        x1, y1 = min(w, int(np.ceil(box[2] + margin * side))), min(h, int(np.ceil(box[3] + margin * side)))
        if min(x1 - x0, y1 - y0) * scale < 8:
            return None
        found = _boxes(detector(_shrink(frame[y0:y1, x0:x1], scale)))
        if not len(found) and not empty_ok:
            return None
        out.extend(found + np.array([x0, y0, x0, y0]) * scale)
    kept = []
    for b in out:
        if all(_iou(b, k) <= 0.5 for k in kept):
            kept.append(b)
    return np.array(kept).reshape(-1, 4)


def _cv_image(image: np.ndarray) -> np.ndarray:
    """``image`` itself when OpenCV can read it without a copy (dense pixels, rows maybe padded,
    as ``features.video.iter_video`` yields them), else a C-contiguous copy."""
    image = np.asarray(image)
    if (image.dtype == np.uint8 and image.ndim == 3 and image.strides[2] == 1
            and image.strides[1] == image.shape[2] and image.strides[0] >= image.shape[1] * image.shape[2]):
        return image
    return np.ascontiguousarray(image, dtype=np.uint8)


def _shrink(image: np.ndarray, scale: float) -> np.ndarray:
    """Downscale for detection and tracking. Bilinear (``cv2.INTER_LINEAR``): 0.15 ms for an
    854×480 RGB frame where ``INTER_AREA`` takes 2 ms, and the faces stay found (tests)."""
    import cv2

    if scale == 1:
        return np.ascontiguousarray(image)
    return cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)


def _associate(tracks, detections, min_iou):
    """Greedy IoU matching: (track, or None for a new face, box) per detection; the followed
    faces that no detection matched end (their last box is their last recorded one)."""
    pairs = sorted(((_iou(t.last, d), ti, di) for ti, t in enumerate(tracks)
                    for di, d in enumerate(detections)), reverse=True)
    matched, used = {}, set()
    for iou, ti, di in pairs:
        if iou >= min_iou and ti not in matched and di not in used:
            matched[ti] = di
            used.add(di)
    for ti, t in enumerate(tracks):
        if ti not in matched and t.active:
            t.active, t.last, t.ended = False, next(reversed(t.boxes.values())), max(t.boxes)
    return ([(tracks[ti], detections[di]) for ti, di in matched.items()]
            + [(None, d) for di, d in enumerate(detections) if di not in used])


def _area(b) -> float:
    return max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])


def _iou(a, b) -> float:
    inter = _area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))
    return inter / max(_area(a) + _area(b) - inter, 1e-12)


def _fill_gaps(boxes, found, max_gap) -> np.ndarray:
    """Linear interpolation over inner gaps of <= max_gap frames (in place); returns the mask."""
    interpolated = np.zeros(len(found), bool)
    seen = np.flatnonzero(found)
    for a, b in zip(seen[:-1], seen[1:]):
        if 1 < b - a <= max_gap + 1:
            w = ((np.arange(a + 1, b) - a) / (b - a))[:, None]
            boxes[a + 1:b] = (1 - w) * boxes[a] + w * boxes[b]
            interpolated[a + 1:b] = True
    return interpolated


def keypoint_box(landmarks: np.ndarray, *, margin: float = 0.9) -> np.ndarray:
    """The square face box "extended" from the four key points of AVEF §2.1.2.

    Key points from the 68 iBUG landmarks (0-based): right eye centre = mean of 36-41, left eye
    centre = mean of 42-47, nose tip = 30, mouth centre = mean of 48-67. The square is centred on
    the centre of their bounding box; side = extent × (1 + 2·margin), extent = the larger of
    their width and height (for a frontal face the eyes-to-mouth height). The default margin
    0.9 (side = 2.8 × extent) is the smallest tenth that kept the brows (17-26) and the chin (8)
    inside for all 449 faces of the demo clips (0.8: 95 %, 0.35: none; the chin decides).

    landmarks: (68, 2) (x, y) pixels. Returns (4,) float64 [x0, y0, x1, y1], x1 − x0 == y1 − y0.
    """
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.shape != (68, 2) or margin < 0:
        raise ParameterError(f"need (68, 2) landmarks (iBUG markup) and margin >= 0, "
                             f"got {pts.shape}, {margin}")
    keys = np.stack([pts[RIGHT_EYE].mean(0), pts[LEFT_EYE].mean(0), pts[NOSE_TIP], pts[MOUTH].mean(0)])
    lo, hi = keys.min(0), keys.max(0)
    centre, half = (lo + hi) / 2, (hi - lo).max() * (1 + 2 * margin) / 2
    return np.concatenate([centre - half, centre + half])


def crop(frame: np.ndarray, box, *, size: int = 173, pad: str = "zeros") -> np.ndarray:
    """Cut ``box`` out of ``frame`` and resize it bilinearly (``cv2.INTER_LINEAR``) to size×size.

    AVEF §2.1.2 uses 173×173×3 faces, Hsu & Wu (Table 2) 72×72. The box may be fractional and
    may leave the frame; outside pixels are ``pad``: ``"zeros"`` or ``"edge"`` (nearest pixel).
    Output pixel (u, v) samples (x0 + (u + ½)·w/size − ½, y0 + (v + ½)·h/size − ½), as
    ``cv2.resize`` does for a whole image; a non-square box is stretched to the square.
    Returns (size, size, 3) uint8.
    """
    import cv2

    x0, y0, x1, y1 = (float(v) for v in box)
    if not np.all(np.isfinite([x0, y0, x1, y1])) or x1 <= x0 or y1 <= y0:
        raise ParameterError(f"box must be finite [x0, y0, x1, y1] with x1 > x0, y1 > y0, got {box}")
    if size < 1 or pad not in ("zeros", "edge"):
        raise ParameterError(f"need size >= 1 and pad in ('zeros', 'edge'), got {size}, {pad!r}")
    sx, sy = (x1 - x0) / size, (y1 - y0) / size
    to_frame = np.array([[sx, 0, x0 + 0.5 * sx - 0.5], [0, sy, y0 + 0.5 * sy - 0.5]])
    border = cv2.BORDER_CONSTANT if pad == "zeros" else cv2.BORDER_REPLICATE
    return cv2.warpAffine(_cv_image(frame), to_frame, (size, size), borderMode=border,
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderValue=(0, 0, 0))


# -- the per-clip chain of the Faces stage ---------------------------------------------------------
@functools.lru_cache(maxsize=4)
def face_models(detector: str, upsample: int):
    """(face detector, dlib 68-point predictor), loaded once per process (``pipeline.video.Faces.warm_up``
    loads them in the scheduling process, before the workers fork)."""
    from features import landmarks

    return make_detector(detector, upsample=upsample), landmarks.load_predictor(68)


def faces_of_clip(path, *, fps, detect, predictor, detect_every=10, full_every=30, detect_width=320,
                  max_gap=5, margin=0.9, crop_size=173, crop_size_small=72, gray=False) -> tuple[dict, dict]:
    """What the ``Faces`` stage (``pipeline.video``) computes for one clip (its defaults): decode,
    detect and track the subject's face, 68 landmarks, key-point crops and the 49-point shape.
    ``bench/bench_faces.py`` times this very function. ``gray``: ``detect`` is handed the tracked
    grayscale frame (``track_faces``; off in ``Faces``: faster, but on the demo's 52 px faces it
    finds a few frames fewer). Returns (``read_video``'s info, the clip's arrays by dataset name);
    raises ``ClipError`` for a clip without a face (and ``read_video``'s errors)."""
    from features import landmarks, video
    from features.errors import ClipError

    frames, times, info = video.read_video(path, fps=fps, as_list=True)
    boxes, found, interpolated = track_faces(frames, detector=detect, detect_every=detect_every,
                                                  scale=min(1.0, detect_width / frames[0].shape[1]),
                                                  max_gap=max_gap, full_every=full_every, gray=gray)
    if not found.any():
        raise ClipError("no_face", f"no face in any of the {len(frames)} frames")
    lm = landmarks.landmarks68_batch(frames, boxes, found, predictor=predictor)
    big = np.zeros((len(frames), crop_size, crop_size, 3), np.uint8)
    small = np.zeros((len(frames), crop_size_small, crop_size_small, 3), np.uint8)
    for k in np.flatnonzero(found):
        box = keypoint_box(lm[k], margin=margin)
        big[k] = crop(frames[k], box, size=crop_size)
        small[k] = crop(frames[k], box, size=crop_size_small)
    shape49 = landmarks.normalize_per_clip(lm[:, landmarks.POINTS_49], mask=found)
    return info, dict(time=times, found=found.astype(np.uint8), interpolated=interpolated.astype(np.uint8),
                      box=boxes.astype(np.float32), landmarks68=lm.astype(np.float32), shape49=shape49,
                      crop=big, crop_small=small)
