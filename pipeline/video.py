"""The visual stages: Faces (per batch) → LandmarkPCA (whole dataset) and Align (per batch).

AVEF §2.1.2 (face crops from eye / nose / mouth key points, 16 frames per 655 ms window) and
Chao §3.1 (49 landmarks, per-clip normalisation, PCA whitening to 20 dimensions).
"""
from __future__ import annotations

import os

import luigi
import numpy as np

from pipeline.audio import LogMel, Segment
from features.face import face_models, faces_of_clip
from pipeline.base import BatchTask, clip_rows, logger, n_batches, read_input
from pipeline.stage import ClipStage, Column
from pipeline.manifest import get_dataset


class Faces(ClipStage):
    """Decode video, detect and track the subject's face, 68 landmarks, crops, 49-point shape."""

    STAGE = "faces"
    CODE_VERSION = "4"  # 2: frame times on the audio clock; bilinear downscaling for detection; lzf crops
    #                     3: re-detection around the followed face, the whole frame every full_every
    #                     4: regions of a quarter side margin; after a miss, the region where the face was
    detector = luigi.ChoiceParameter(default="hog", choices=["hog", "cnn", "opencv"],
                                     description="dlib HOG, dlib MMOD CNN or OpenCV Haar face detector")
    detect_every = luigi.IntParameter(default=10, description="detect every k-th frame, track in between")
    full_every = luigi.IntParameter(default=30, description="search the whole frame at least every k-th frame; the re-detections in between search around the followed face (0: always the whole frame)")
    detect_width = luigi.IntParameter(default=320, description="frames wider than this are downscaled to it for detection")
    upsample = luigi.IntParameter(default=1, description="times dlib doubles the detection image (1: faces >= 40 px)")
    max_gap = luigi.IntParameter(default=5, description="longest face gap (frames) filled by interpolation")
    margin = luigi.FloatParameter(default=0.9, description="crop margin around the key points (AVEF §2.1.2)")
    crop_size = luigi.IntParameter(default=173, description="face crop side, px (AVEF: 173)")
    crop_size_small = luigi.IntParameter(default=72, description="second crop side, px (Hsu & Wu Table 2: 72)")

    def own_params(self) -> dict:  # the manifest's frame-rate override changes the outputs too
        return {**super().own_params(), "video_fps": get_dataset(self.manifest, self.dataset).video_fps}

    def warm_up(self):
        face_models(self.detector, self.upsample)

    def chain_params(self) -> dict:
        """The keyword arguments of ``faces_of_clip`` that this task's parameters set."""
        return dict(detect_every=self.detect_every, full_every=self.full_every or None, detect_width=self.detect_width,
                    max_gap=self.max_gap, margin=self.margin, crop_size=self.crop_size,
                    crop_size_small=self.crop_size_small)

    def open_inputs(self, inputs, stack):
        inputs["fps"] = get_dataset(self.manifest, self.dataset).video_fps
        inputs["detect"], inputs["predictor"] = face_models(self.detector, self.upsample)

    def columns(self, inputs):
        big, small = (self.crop_size, self.crop_size, 3), (self.crop_size_small, self.crop_size_small, 3)
        return {"video/time": Column(np.float64), "video/found": Column(np.uint8),
                "video/interpolated": Column(np.uint8), "video/box": Column(np.float32, (4,)),
                "video/landmarks68": Column(np.float32, (68, 2)), "video/shape49": Column(np.float32, (98,)),
                "video/crop": Column(np.uint8, big), "video/crop_small": Column(np.uint8, small),
                "clips/fps": Column(np.float32, per="clip"), "clips/width": Column(np.int32, per="clip"),
                "clips/height": Column(np.int32, per="clip"), "clips/rotation": Column(np.int16, per="clip")}

    def compute(self, i, clip, inputs):
        from features.errors import ClipError

        if clip.path is None:
            raise ClipError("missing_file", "no file under the root matches this clip id")
        info, arrays = faces_of_clip(clip.path, fps=inputs["fps"], detect=inputs["detect"],
                                     predictor=inputs["predictor"], **self.chain_params())
        return {**{f"video/{k}": v for k, v in arrays.items()},
                **{f"clips/{k}": info.get(k) or 0 for k in ("fps", "width", "height", "rotation")}}


class LandmarkPCA(BatchTask):
    """PCA whitening basis of the 49-point shapes (Chao §3.1), fitted on the whole dataset or on
    the clips of the speakers named in ``fit_speakers``. Runs once per dataset (batch −1)."""

    STAGE = "landmark_pca"
    n_components = luigi.IntParameter(default=20, description="dimensions kept (Chao §3.1: 20)")
    fit_speakers = luigi.Parameter(default="", description="comma-separated speakers to fit on; empty = all")

    def requires(self):
        n = len(get_dataset(self.manifest, self.dataset).list_clips())
        return {f"faces{k:04d}": self.clone(Faces, batch=k) for k in range(n_batches(n, self.batch_size))}

    def output(self):
        return luigi.LocalTarget(os.path.join(self.stage_dir(), "pca.h5"))

    def run(self):
        from features import landmarks
        from features.errors import ParameterError

        speakers = {s.strip() for s in self.fit_speakers.split(",") if s.strip()}
        rows, fit_clips = [], []
        for name, task in sorted(self.requires().items()):
            faces = read_input(task, "video/shape49", "video/offsets")
            speaker = {c.id: c.speaker for c in task.clips()}
            for i, cid in enumerate(faces["clips"]["id"]):
                if faces["clips"]["status"][i] == "ok" and (not speakers or speaker[cid] in speakers):
                    rows.append(clip_rows(faces["video"], "shape49", i))
                    fit_clips.append(cid)
        X = np.concatenate(rows) if rows else np.zeros((0, 98), np.float32)
        try:
            basis = landmarks.fit_pca(X, n_components=self.n_components)
        except ParameterError as err:  # too few frames with a face: no basis, the shards say so
            logger.warning("landmark PCA of %s: %s", self.dataset, err)
            basis = {"mean": np.full(X.shape[1], np.nan), "components": np.zeros((0, X.shape[1])),
                     "explained_variance": np.full(self.n_components, np.nan)}
        self.write({"pca": {**basis, "fit_clips": np.array(fit_clips, dtype=object)}})


class Align(ClipStage):
    """For each 655 ms audio window, the 16 video frames of its voiced time (AVEF §1, §2.1.2)."""

    STAGE = "align"
    CODE_VERSION = "2"  # 2: frames from the spans of the window's audio frames only (not a pause's);
    #                     fewer than 16: the first and last frames doubled ("repeat the first two …")
    frames_per_window = luigi.IntParameter(default=16, description="video frames per window (AVEF: 16)")
    GATE = "faces"
    READS = {"segment": ("windows",), "faces": ("video/time", "video/found", "video/offsets")}

    def requires(self):
        return {"segment": self.clone(Segment), "faces": self.clone(Faces)}

    def open_inputs(self, inputs, stack):
        inputs["grid"] = {k: getattr(self.clone(LogMel), k) for k in ("frame_ms", "hop_ms")}  # Segment's frame grid

    def columns(self, inputs):
        return {"windows/video_frames": Column(np.int32, (self.frames_per_window,), per="window", fill=-1),
                "windows/video_ok": Column(np.uint8, per="window"),
                "windows/video_reason": Column(object, per="window", fill="")}

    def compute(self, i, clip, inputs):
        from features.align import align_windows, window_spans

        w, video = inputs["segment"]["windows"], inputs["faces"]["video"]
        sel = np.flatnonzero(w["clip"] == i)
        if not len(sel):
            return {k: c.placeholder(0) for k, c in self.columns(inputs).items()}
        frames, ok, why = align_windows(clip_rows(video, "time", i), clip_rows(video, "found", i).astype(bool),
                                        spans=window_spans(w["frames"][sel], **inputs["grid"]), n=self.frames_per_window)
        return {"windows/video_frames": frames, "windows/video_ok": ok, "windows/video_reason": why}

    def finish(self, groups, results, inputs):
        """A window of a clip without usable video: its reason is the clip's status (Faces')."""
        w, why = inputs["segment"]["windows"], groups["windows"]["video_reason"]
        for i, status in enumerate(groups["clips"]["status"]):
            if status != "ok":
                why[w["clip"] == i] = status
