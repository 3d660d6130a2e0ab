"""The embedding stages, one per feature, each on one batch of clips (its own hash chain):

* ``Waveform``   Decode → the 16 kHz waveform without pre-emphasis, peak-normalised (SincNet
  input, Priyasad §2.1, §3.1)
* ``VGGish``     Decode + Segment → VGGish per 0.96 s patch and per 655 ms window (Lucas §3)
* ``FaceDescriptor``  Faces → dlib's 128-d ResNet descriptor per video frame
* ``VGGFace``    Faces → VGG-16 / VGG-19 face activations per video frame (Lucas §3, Hsu & Wu
  §III-B, Table 2)
* ``GloVe``      transcripts of the labels CSV → (100, 300) GloVe vectors (Priyasad §3.1)
* ``Wav2Vec``, ``ImageEncoder``, ``BERT``  Waveform + Segment / Faces / transcripts → a local
  Hugging Face model's vectors (``features.wav2vec``, ``features.image_encoder``, ``features.bert``)

A stage with weights (VGGish, VGGFace, GloVe and the three Hugging Face ones) is off when its file
parameter is empty; a file or folder that is configured but missing fails the stage at its start, with a message naming the file,
the workflows.cfg key and how to switch the feature off. The weight file's sha256 joins the
stage's digest (a model folder's: every file's), so new weights give new outputs. ``infer_batch_size`` and ``device`` do not
change the outputs (beyond float rounding) and are not hashed; ``precision`` is.
"""
from __future__ import annotations

import logging
import os

import luigi
import numpy as np

from features import registry
from pipeline.audio import Decode, Segment
from pipeline.base import clip_rows
from pipeline.manifest import get_dataset
from pipeline.stage import ClipStage, Column
from pipeline.video import Faces

logger = logging.getLogger("luigi-interface")


def require_file(path: str, *, section: str, key: str, feature: str, what: str) -> None:
    """Stop a stage before any work when its configured file is missing."""
    from features.embeddings import missing_input

    if not os.path.isfile(path):
        raise missing_input(feature, what, path, "does not exist", section=section, key=key)


def file_identity(path: str) -> str | None:
    """The sha256 of a configured file or model folder, "missing" when it does not exist, None when
    not configured."""
    from features.embeddings import file_sha256, folder_sha256

    if not path:
        return None
    if os.path.isdir(path):
        return folder_sha256(path)
    return file_sha256(path) if os.path.isfile(path) else "missing"


def transcripts_of(clips) -> list[str]:
    """Each clip's transcript from the labels CSV ("" when it has none)."""
    return [dict(c.extra).get("transcript") or "" for c in clips]


def transcript_status(transcripts: list[str], stage: str) -> tuple[list, list]:
    """(status, reason): "ok", or ``no_transcript`` for a clip whose transcript is empty."""
    empty = [not t.strip() for t in transcripts]
    return ([("no_transcript" if e else "ok") for e in empty],
            [f"{stage}: the labels CSV has no transcript for this clip" if e else "" for e in empty])


def open_faces(task, inputs: dict, stack, image_size: int) -> None:
    """The Faces output of ``task`` read a clip at a time (``inputs["reader"]``) and the crop that
    serves a network of input side ``image_size`` (``inputs["crop"]``): the 72 px one when it is
    no smaller, else the 173 px one."""
    from features import store

    faces = task.requires()["faces"]
    inputs["reader"] = reader = store.ShardReader(faces.output().path)
    stack.callback(reader.close)
    inputs["crop"] = "crop_small" if image_size <= faces.crop_size_small else "crop"


class InferenceTask(ClipStage):
    """A stage that runs a network: batch size, device and precision; holds the GPU resource."""

    infer_batch_size = luigi.IntParameter(default=64, significant=False,
                                          description="inputs per forward pass (does not change outputs)")
    device = luigi.Parameter(default="auto", significant=False, description="auto (cuda if present), cpu or cuda")
    precision = luigi.ChoiceParameter(default="fp32", choices=["fp32", "fp16", "bf16"],
                                      description="fp16/bf16 autocast on a GPU")

    @property
    def resources(self):
        from features.embeddings import pick_device

        return {"gpu": 1} if pick_device(self.device).startswith("cuda") else {}

    def own_params(self) -> dict:
        params = super().own_params()
        for key in ("weights", "pca_params"):
            if params.get(key):
                params[f"{key}_sha256"] = file_identity(params[key])
        return params

    def run_device(self) -> str:
        from features.embeddings import pick_device

        return pick_device(self.device)


class Waveform(ClipStage):
    """The 16 kHz waveform per clip for SincNet (Priyasad §2.1, §3.1): Decode's mixdown at 16 kHz
    with its pre-emphasis undone (exact inverse filter), then amplitude-normalised ("peak":
    divided by max |x|, SincNet's recipe; "none": as decoded). The trainer cuts the 250 ms chunks
    (random in training, every 10 ms at evaluation) from this array."""

    STAGE = "waveform"
    CODE_VERSION = "1"
    normalize = luigi.ChoiceParameter(default="peak", choices=["peak", "none"],
                                      description="amplitude normalisation (Priyasad Fig. 1)")

    GATE = "decode"
    READS = {"decode": ("audio",)}

    def requires(self):
        return {"decode": self.clone(Decode)}

    def columns(self, inputs):
        return {"audio/waveform": Column(np.float32)}

    def compute(self, i, clip, inputs):
        from features.audio import resample
        from features.embeddings import deemphasis, sincnet_waveform

        decode = self.requires()["decode"]   # the upstream task's sr and pre-emphasis
        y = deemphasis(clip_rows(inputs["decode"]["audio"], "waveform", i), coef=decode.preemphasis)
        return sincnet_waveform(y=resample(y, orig_sr=decode.sr, sr=16000), normalize=self.normalize)


class VGGish(InferenceTask):
    """VGGish embeddings (Hershey et al. 2017; Lucas §3): one per 0.96 s patch of the clip (hop
    0.96 s, the published framing) and one per 655 ms window (the 0.96 s patch centred on the
    window's centre, silence-padded at the clip's edges; ``features.vggish.centered_patches``).
    The input is the 16 kHz audio without pre-emphasis."""

    STAGE = "vggish"
    CODE_VERSION = "1"
    weights = luigi.Parameter(default="", description="torchvggish state_dict (.pth); empty = VGGish off")
    pca_params = luigi.Parameter(default="", description="vggish_pca_params.npz; empty = raw 128-d embeddings")

    GATE = "segment"
    READS = {"decode": ("audio",), "segment": ("windows",)}

    def requires(self):
        return {"decode": self.clone(Decode), "segment": self.clone(Segment)}

    def open_inputs(self, inputs, stack):
        from features import vggish

        require_file(self.weights, section="VGGish", key="weights", feature="vggish", what="VGGish weights file")
        if self.pca_params:
            require_file(self.pca_params, section="VGGish", key="pca_params", feature="vggish",
                         what="VGGish PCA parameters file")
        inputs["device"] = self.run_device()
        inputs["model"] = vggish.load_vggish(self.weights).to(inputs["device"])
        inputs["pca"] = vggish.load_pca_params(self.pca_params) if self.pca_params else None

    def compute(self, i, clip, inputs):
        """The clip's log-mel patches: every 0.96 s, and one centred on each window (the network runs
        over the batch's patches at once, in ``finish``)."""
        from features import vggish
        from features.audio import resample
        from features.embeddings import deemphasis

        decode, w = self.requires()["decode"], inputs["segment"]["windows"]   # the upstream task's parameters
        y = deemphasis(clip_rows(inputs["decode"]["audio"], "waveform", i), coef=decode.preemphasis)
        mel = vggish.log_mel(y=resample(y, orig_sr=decode.sr, sr=vggish.SR))
        sel = w["clip"] == i
        centers = (w["t_begin"][sel].astype(np.float64) + w["t_end"][sel]) / 2
        return vggish.patches(mel), vggish.centered_patches(mel, t_center=centers)

    def finish(self, groups, results, inputs):
        from features import store, vggish
        from features.embeddings import batched_forward

        w, device, pca = inputs["segment"]["windows"], inputs["device"], inputs["pca"]
        empty = np.zeros((0, vggish.N_FRAMES, vggish.N_BANDS), np.float32)
        seq = [r[0] if r else empty for r in results]
        win = [r[1] if r else empty for r in results]
        x, _ = store.pack(seq + win, dtype=np.float32, row_shape=empty.shape[1:])  # a batch may be empty
        self.set_status_message(f"VGGish batch {self.batch}: {len(x)} patches on {device}")
        emb = batched_forward(inputs["model"], x, batch_size=self.infer_batch_size, device=device,
                              precision=self.precision).reshape(len(x), vggish.EMBEDDING_SIZE)
        if pca is not None:
            emb = vggish.postprocess(emb, pca_eigen_vectors=pca[0], pca_means=pca[1])
        n_seq = sum(len(s) for s in seq)
        _, offsets = store.pack(seq)
        t_center, _ = store.pack([vggish.patch_centers(len(s)) for s in seq], dtype=np.float32)
        windows = np.zeros((len(w["clip"]), vggish.EMBEDDING_SIZE), emb.dtype)
        windows[store.pack([np.flatnonzero(w["clip"] == i) for i in range(len(win)) if len(win[i])],
                           dtype=np.int64)[0]] = emb[n_seq:]
        groups["vggish"] = {"embedding": emb[:n_seq], "t_center": t_center, "offsets": offsets}
        groups["windows"] = {"vggish": windows}


class FaceDescriptor(ClipStage):
    """dlib's ResNet face descriptor (128-d) per video frame: the 5-point landmarks inside the
    tracked box (Faces), dlib's aligned 150×150 chip from the full frame, the network. With
    ``every`` = k only every k-th frame with a face is run through the network and each frame takes
    the descriptor of the nearest such frame (``video/descriptor_frame`` says which): the
    descriptor encodes identity, which does not change within a clip, and dlib's CPU network
    costs ~0.1 s per face here. With ``flip`` (default) a descriptor is the mean of the chip's and
    its mirror image's (``features.embeddings.face_descriptors``). Frames without a face: zeros
    and ``descriptor_frame`` = −1."""

    STAGE = "descriptor"
    CODE_VERSION = "1"
    every = luigi.IntParameter(default=5, description="run the network on every k-th frame with a face (1: every "
                                                      "frame); the others take the nearest one's")
    flip = luigi.BoolParameter(default=True, parsing=luigi.BoolParameter.EXPLICIT_PARSING,
                               description="average each chip's descriptor with its mirror image's (2x the cost)")

    GATE = "faces"
    READS = {"faces": ("video/box", "video/found", "video/offsets")}

    def requires(self):
        return {"faces": self.clone(Faces)}

    def warm_up(self):
        from features.embeddings import load_face_descriptor

        load_face_descriptor()

    def open_inputs(self, inputs, stack):
        from features.embeddings import load_face_descriptor
        from features.errors import ParameterError

        if self.every < 1:
            raise ParameterError(f"[FaceDescriptor] every must be >= 1, got {self.every}")
        inputs["model"], inputs["predictor"] = load_face_descriptor()  # cached; loaded by warm_up before workers fork
        inputs["fps"] = get_dataset(self.manifest, self.dataset).video_fps

    def columns(self, inputs):
        return {"video/descriptor": Column(np.float32, (128,), per="video frame"),
                "video/descriptor_frame": Column(np.int32, per="video frame", fill=-1)}

    def compute(self, i, clip, inputs):
        from features import video
        from features.embeddings import face_chips, face_descriptors
        from features.errors import ClipError

        faces = inputs["faces"]["video"]
        box, found = clip_rows(faces, "box", i), clip_rows(faces, "found", i).astype(bool)
        frames, _, _ = video.read_video(clip.path, fps=inputs["fps"])
        if len(frames) != len(found):
            raise ClipError("decode_error", f"decoded {len(frames)} frames, Faces had {len(found)}")
        idx = np.flatnonzero(found)
        run = idx[::self.every]
        desc = face_descriptors(face_chips(frames, box, np.isin(np.arange(len(found)), run),
                                           predictor=inputs["predictor"]), model=inputs["model"], flip=self.flip)
        out, src = np.zeros((len(found), 128), np.float32), np.full(len(found), -1, np.int32)
        if len(run):
            nearest = np.abs(idx[:, None] - run[None, :]).argmin(axis=1)
            out[idx], src[idx] = desc[nearest], run[nearest]
        return {"video/descriptor": out, "video/descriptor_frame": src}


class VGGFace(InferenceTask):
    """VGGFace activations per video frame (Parkhi et al. 2015; Lucas §3 "the last convolutional
    layer"; Hsu & Wu Table 2: VGG-19 at 72×72). The face crops of Faces are resized to
    ``image_size``: the 72 px crop when ``image_size`` <= its side, else the 173 px crop. The
    architecture (VGG-16/19, widths) is read from the weights file."""

    STAGE = "vggface"
    CODE_VERSION = "1"
    weights = luigi.Parameter(default="", description="vgg_face_dag-style state_dict; empty = VGGFace off")
    image_size = luigi.IntParameter(default=224, description="network input side, px (224 VGG-Face, 72 Hsu & Wu)")
    layer = luigi.Parameter(default="conv5_3", description="conv5_3 (spatial mean), pool5, fc6 or fc7")
    infer_batch_size = luigi.IntParameter(default=32, significant=False,   # 224 px VGG-16: half VGGish's batch
                                          description="inputs per forward pass (does not change outputs)")

    GATE = "faces"

    def requires(self):
        return {"faces": self.clone(Faces)}

    def open_inputs(self, inputs, stack):
        from features import vggface

        require_file(self.weights, section="VGGFace", key="weights", feature="vggface", what="VGGFace weights file")
        inputs["device"] = self.run_device()
        inputs["model"] = model = vggface.load_vggface(self.weights, image_size=self.image_size)
        vggface.layer_name(self.layer, model.config.depth)
        inputs["dim"] = vggface.output_dim(model.config, self.layer)
        open_faces(self, inputs, stack, self.image_size)

    def columns(self, inputs):
        return {"video/vggface": Column(np.float32, (inputs["dim"],), per="video frame")}

    def compute(self, i, clip, inputs):
        from features import vggface

        reader = inputs["reader"]
        found = reader.video(i, "found").astype(bool)
        out = np.zeros((len(found), inputs["dim"]), np.float32)
        if found.any():
            out[found] = vggface.face_embeddings(reader.video(i, inputs["crop"], rows=np.flatnonzero(found)),
                                                 model=inputs["model"], layer=self.layer, device=inputs["device"],
                                                 batch_size=self.infer_batch_size, precision=self.precision)
        return out


class GloVe(ClipStage):
    """GloVe vectors of each clip's transcript (Priyasad §3.1): tokens → (100, 300), zero-padded
    or truncated, with the length and an out-of-vocabulary mask. A clip without a transcript gets
    length 0 and status ``no_transcript`` (recorded in the shard's ``clips/glove_status``)."""

    STAGE = "glove"
    CODE_VERSION = "1"
    path = luigi.Parameter(default="", description="GloVe text file (glove.6B.300d.txt); empty = GloVe off")
    lowercase = luigi.BoolParameter(default=True, parsing=luigi.BoolParameter.EXPLICIT_PARSING,
                                    description="lowercase tokens (true for the uncased 6B / 42B files)")
    max_len = luigi.IntParameter(default=100, description="tokens kept (Priyasad §3.1: 100)")
    cache_dir = luigi.Parameter(default="", significant=False,
                                description="where the memory-mapped cache goes; empty = <store>/_cache/glove")

    def own_params(self) -> dict:
        params = super().own_params()
        if params.get("path"):
            params["path_sha256"] = file_identity(params["path"])
        return params

    def chain(self) -> dict:
        chain = super().chain()
        chain["transcripts"] = [dict(c.extra).get("transcript") for c in self.clips()]
        return chain

    def open_inputs(self, inputs, stack):
        from features import text

        require_file(self.path, section="GloVe", key="path", feature="glove", what="GloVe file")
        inputs["vocab"], inputs["vectors"] = text.load_glove(
            self.path, cache_dir=self.cache_dir or os.path.join(self.store, "_cache", "glove"))

    def columns(self, inputs):
        return {"text/glove": Column(np.float32, (self.max_len, inputs["vectors"].shape[1]), per="clip"),
                "text/length": Column(np.int32, per="clip"), "text/oov": Column(np.uint8, (self.max_len,), per="clip")}

    def compute_batch(self, inputs):
        """The whole batch's transcripts at once; a clip without one: status ``no_transcript``, zeros."""
        from features import text

        transcripts = transcripts_of(self.clips())
        out = text.glove_transcripts(transcripts, vocab=inputs["vocab"], vectors=inputs["vectors"], max_len=self.max_len,
                                     lowercase=self.lowercase)
        results = [{"text/glove": out["glove"][i], "text/length": out["length"][i], "text/oov": out["oov"][i]}
                   for i in range(len(transcripts))]
        return (results, *transcript_status(transcripts, "glove"))


class Wav2Vec(InferenceTask):
    """A self-supervised speech model's layer (wav2vec 2.0, HuBERT, WavLM: ``features.wav2vec``)
    pooled per 655 ms window and per clip, on Waveform's 16 kHz signal (no pre-emphasis). The model
    is a local Hugging Face folder (``weights``), never downloaded."""

    STAGE = "wav2vec"
    CODE_VERSION = "1"
    weights = luigi.Parameter(default="", description="Hugging Face model folder (config.json + weights); "
                                                      "empty = off")
    layer = luigi.IntParameter(default=-1, description="hidden_states index: 0 = CNN features, -1 = last layer")
    infer_batch_size = luigi.IntParameter(default=0, significant=False,
                                          description="clips per forward pass; 0 = 8 on a GPU, 1 on a CPU (does "
                                                      "not change outputs beyond float rounding)")

    GATE = "segment"
    READS = {"waveform": ("audio",), "segment": ("windows",)}

    def requires(self):
        return {"waveform": self.clone(Waveform), "segment": self.clone(Segment)}

    def open_inputs(self, inputs, stack):
        from features import wav2vec

        inputs["device"] = self.run_device()   # the loader checks the folder first: the message of a missing weights file
        inputs["model"] = wav2vec.load_speech_model(self.weights, device=inputs["device"], key="weights")

    def columns(self, inputs):
        dim = int(inputs["model"].model.config.hidden_size)
        return {"windows/wav2vec": Column(np.float32, (dim,), per="window"),
                "wav2vec/clip": Column(np.float32, (dim,), per="clip")}

    def spans(self, i, inputs) -> np.ndarray:
        """Clip ``i``'s window spans [t_begin, t_end) in seconds (Segment's windows)."""
        w = inputs["segment"]["windows"]
        sel = w["clip"] == i
        return np.stack([w["t_begin"][sel], w["t_end"][sel]], axis=1).astype(np.float64)

    def compute(self, i, clip, inputs):
        from features import wav2vec

        windows, whole = wav2vec.speech_embeddings(
            inputs["model"], [clip_rows(inputs["waveform"]["audio"], "waveform", i)], [self.spans(i, inputs)],
            layer=self.layer, device=inputs["device"], precision=self.precision)[0]
        return {"windows/wav2vec": windows, "wav2vec/clip": whole}

    def clips_per_pass(self, device: str) -> int:
        """``infer_batch_size``, or with 0: 8 clips on a GPU (8 of 10 s hold 0.5 GB after the first
        convolution of a base model), 1 on a CPU, where padded batches were slower (wav2vec 2.0 base,
        2 threads, 16 clips of 2-6 s: 9.0 s of audio per second at 8 per pass, 12.1 one by one)."""
        if self.infer_batch_size < 0:
            raise ValueError(f"Wav2Vec infer_batch_size must be >= 1, or 0 for 8 on a GPU and 1 on a CPU; "
                             f"got {self.infer_batch_size}")
        if self.infer_batch_size:
            return self.infer_batch_size
        return 8 if device.startswith("cuda") else 1

    def compute_batch(self, inputs):
        """The batch's clips through the model ``clips_per_pass`` at a time (``speech_embeddings``
        sorts them by length and pads; a model without attention-masked batches only puts clips of
        equal length together). Should that call fail, every clip is run alone, so a clip the model
        cannot take fails by itself and the rest keep their vectors."""
        from features import wav2vec

        per_pass = self.clips_per_pass(inputs["device"])   # (a bad value stops the stage, not a clip)
        status, reason = self.start_status(inputs)
        ok = [i for i in range(len(self.clips())) if status[i] == "ok"]
        try:
            out = wav2vec.speech_embeddings(
                inputs["model"], [clip_rows(inputs["waveform"]["audio"], "waveform", i) for i in ok],
                [self.spans(i, inputs) for i in ok], layer=self.layer, batch_size=per_pass,
                device=inputs["device"], precision=self.precision)
        except Exception as err:   # (a too-short clip, memory): one clip at a time, each failure its own
            logger.warning("wav2vec: the batch of %d clips failed together (%s: %s); running them one by one",
                           len(ok), type(err).__name__, err)
            return super().compute_batch(inputs)
        results = [None] * len(status)
        for i, (windows, whole) in zip(ok, out):
            results[i] = {"windows/wav2vec": windows, "wav2vec/clip": whole}
        self.progress(len(status), len(status), "done")
        return results, list(status), list(reason)


class ImageEncoder(InferenceTask):
    """An image encoder's pooled output (ViT, CLIP's vision tower: ``features.image_encoder``) per
    video frame with a face, on the Faces crops (the 72 px crop when the model's input is no
    larger, else the 173 px one); zeros where no face was found. A local Hugging Face folder."""

    STAGE = "image_encoder"
    CODE_VERSION = "1"
    weights = luigi.Parameter(default="", description="Hugging Face model folder (config.json + weights); "
                                                      "empty = off")

    GATE = "faces"

    def requires(self):
        return {"faces": self.clone(Faces)}

    def open_inputs(self, inputs, stack):
        from features import image_encoder

        inputs["device"] = self.run_device()
        inputs["model"] = model = image_encoder.load_image_model(self.weights, device=inputs["device"], key="weights")
        open_faces(self, inputs, stack, model.image_size)

    def columns(self, inputs):
        return {"video/image_encoder": Column(np.float32, (inputs["model"].hidden_size,), per="video frame")}

    def compute(self, i, clip, inputs):
        from features import image_encoder

        reader = inputs["reader"]
        found = reader.video(i, "found").astype(bool)
        out = np.zeros((len(found), inputs["model"].hidden_size), np.float32)
        if found.any():
            out[found] = image_encoder.image_embeddings(
                inputs["model"], reader.video(i, inputs["crop"], rows=np.flatnonzero(found)),
                batch_size=self.infer_batch_size, device=inputs["device"], precision=self.precision)
        return out


class BERT(InferenceTask):
    """A text encoder's token vectors (BERT, RoBERTa: ``features.bert``) of each clip's transcript,
    in GloVe's layout: (100, D) zero-padded, with the length. A clip without a transcript gets
    length 0 and status ``no_transcript``. A local Hugging Face folder (model and tokenizer)."""

    STAGE = "bert"
    CODE_VERSION = "1"
    weights = luigi.Parameter(default="", description="Hugging Face model folder (config.json, weights, tokenizer); "
                                                      "empty = off")
    max_len = luigi.IntParameter(default=100, description="tokens kept (GloVe's layout, Priyasad §3.1: 100)")

    def chain(self) -> dict:
        chain = super().chain()
        chain["transcripts"] = [dict(c.extra).get("transcript") for c in self.clips()]
        return chain

    def open_inputs(self, inputs, stack):
        from features import bert

        inputs["device"] = self.run_device()
        inputs["model"], inputs["tokenizer"] = bert.load_text_model(self.weights, device=inputs["device"], key="weights")

    def columns(self, inputs):
        dim = int(inputs["model"].config.hidden_size)
        return {"text/bert": Column(np.float32, (self.max_len, dim), per="clip"),
                "text/bert_length": Column(np.int32, per="clip")}

    def compute_batch(self, inputs):
        """The whole batch's transcripts at once; a clip without one: status ``no_transcript``, no
        tokens (not [CLS][SEP]): zeros and length 0."""
        from features import bert

        transcripts = transcripts_of(self.clips())
        out = bert.token_vectors(inputs["model"], inputs["tokenizer"], transcripts, max_len=self.max_len,
                                 batch_size=self.infer_batch_size, device=inputs["device"], precision=self.precision)
        status, reason = transcript_status(transcripts, "bert")
        results = [{"text/bert": out["bert"][i], "text/bert_length": out["length"][i]} if status[i] == "ok" else None
                   for i in range(len(transcripts))]
        return results, status, reason


#: ``[Shard] embeddings`` entry -> its stage, in ``features.registry`` order (where each is declared)
EMBEDDINGS = {name: globals()[registry.stage_features(name)[0].stage] for name in registry.embedding_stages()}
