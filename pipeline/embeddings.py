"""The embedding stages, one per feature, each on one batch of clips (its own hash chain):

* ``Waveform``   Decode → the 16 kHz waveform without pre-emphasis, peak-normalised (SincNet
  input, Priyasad §2.1, §3.1)
* ``VGGish``     Decode + Segment → VGGish per 0.96 s patch and per 655 ms window (Lucas §3)
* ``FaceDescriptor``  Faces → dlib's 128-d ResNet descriptor per video frame
* ``VGGFace``    Faces → VGG-16 / VGG-19 face activations per video frame (Lucas §3, Hsu & Wu
  §III-B, Table 2)
* ``GloVe``      transcripts of the labels CSV → (100, 300) GloVe vectors (Priyasad §3.1)

A stage with weights (VGGish, VGGFace, GloVe) is off when its file parameter is empty; a file
that is configured but missing fails the stage at its start, with a message naming the file,
the workflows.cfg key and how to switch the feature off. The weight file's sha256 joins the
stage's digest, so new weights give new outputs. ``infer_batch_size`` and ``device`` do not
change the outputs (beyond float rounding) and are not hashed; ``precision`` is.
"""
from __future__ import annotations

import os

import luigi
import numpy as np

from features import registry
from pipeline.audio import Decode, Segment
from pipeline.base import BatchTask, clip_rows, clip_table, read_input
from pipeline.manifest import get_dataset
from pipeline.video import Faces


def _switch_off(section: str, key: str, feature: str) -> str:
    return (f"to build without {feature}, set `{key} =` (empty) under [{section}] in workflows.cfg or leave "
            f"\"{feature}\" out of `[Shard] embeddings`")


def require_file(path: str, *, section: str, key: str, feature: str, what: str) -> None:
    """Stop a stage before any work when its configured file is missing."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{feature}: the {what} {path!r} does not exist (configured as `{key}` under [{section}] in "
            f"workflows.cfg, or --{section}-{key.replace('_', '-')} on the command line). Put the file there "
            f"or point `{key}` at it (docs/embeddings.md); {_switch_off(section, key, feature)}.")


def file_identity(path: str) -> str | None:
    """The sha256 of a configured file or model folder, "missing" when it does not exist, None when
    not configured."""
    from features.embeddings import file_sha256
    from features.hashing import tree_sha256

    if not path:
        return None
    if os.path.isdir(path):
        return tree_sha256(path)
    return file_sha256(path) if os.path.isfile(path) else "missing"


class InferenceTask(BatchTask):
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


class Waveform(BatchTask):
    """The 16 kHz waveform per clip for SincNet (Priyasad §2.1, §3.1): Decode's mixdown at 16 kHz
    with its pre-emphasis undone (exact inverse filter), then amplitude-normalised ("peak":
    divided by max |x|, SincNet's recipe; "none": as decoded). The trainer cuts the 250 ms chunks
    (random in training, every 10 ms at evaluation) from this array."""

    STAGE = "waveform"
    CODE_VERSION = "1"
    normalize = luigi.ChoiceParameter(default="peak", choices=["peak", "none"],
                                      description="amplitude normalisation (Priyasad Fig. 1)")

    def requires(self):
        return {"decode": self.clone(Decode)}

    def run(self):
        from features import store
        from features.audio import resample
        from features.embeddings import deemphasis, sincnet_waveform

        dec = read_input(self.requires()["decode"], "audio")
        params = self.requires()["decode"].own_params()   # the upstream task's sr and pre-emphasis

        def one(i, clip):
            y = deemphasis(clip_rows(dec["audio"], "waveform", i), coef=params["preemphasis"])
            return sincnet_waveform(y=resample(y, orig_sr=params["sr"], sr=16000), normalize=self.normalize)

        results, status, reason = self.per_clip(one, dec["clips"]["status"], dec["clips"]["reason"])
        wave, offsets = store.pack([r if r is not None else np.zeros(0, np.float32) for r in results],
                                   dtype=np.float32)
        self.write({"clips": clip_table(self.clips(), status, reason),
                    "audio": {"waveform": wave, "offsets": offsets}})


class VGGish(InferenceTask):
    """VGGish embeddings (Hershey et al. 2017; Lucas §3): one per 0.96 s patch of the clip (hop
    0.96 s, the published framing) and one per 655 ms window (the 0.96 s patch centred on the
    window's centre, silence-padded at the clip's edges; ``features.vggish.centered_patches``).
    The input is the 16 kHz audio without pre-emphasis."""

    STAGE = "vggish"
    CODE_VERSION = "1"
    weights = luigi.Parameter(default="", description="torchvggish state_dict (.pth); empty = VGGish off")
    pca_params = luigi.Parameter(default="", description="vggish_pca_params.npz; empty = raw 128-d embeddings")

    def requires(self):
        return {"decode": self.clone(Decode), "segment": self.clone(Segment)}

    def run(self):
        from features import store, vggish
        from features.audio import resample
        from features.embeddings import batched_forward, deemphasis

        require_file(self.weights, section="VGGish", key="weights", feature="vggish", what="VGGish weights file")
        if self.pca_params:
            require_file(self.pca_params, section="VGGish", key="pca_params", feature="vggish",
                         what="VGGish PCA parameters file")
        device = self.run_device()
        model = vggish.load_vggish(self.weights).to(device)
        pca = vggish.load_pca_params(self.pca_params) if self.pca_params else None
        inp = self.requires()
        dec, seg = read_input(inp["decode"], "audio"), read_input(inp["segment"], "windows")
        params, w = inp["decode"].own_params(), seg["windows"]

        def one(i, clip):
            y = deemphasis(clip_rows(dec["audio"], "waveform", i), coef=params["preemphasis"])
            mel = vggish.log_mel(y=resample(y, orig_sr=params["sr"], sr=vggish.SR))
            sel = w["clip"] == i
            centers = (w["t_begin"][sel].astype(np.float64) + w["t_end"][sel]) / 2
            return vggish.patches(mel), vggish.centered_patches(mel, t_center=centers)

        results, status, reason = self.per_clip(one, seg["clips"]["status"], seg["clips"]["reason"])
        empty = np.zeros((0, vggish.N_FRAMES, vggish.N_BANDS), np.float32)
        seq = [r[0] if r else empty for r in results]
        win = [r[1] if r else empty for r in results]
        x, _ = store.pack(seq + win, dtype=np.float32, row_shape=empty.shape[1:])  # a batch may be empty
        self.set_status_message(f"VGGish batch {self.batch}: {len(x)} patches on {device}")
        emb = batched_forward(model, x, batch_size=self.infer_batch_size, device=device,
                              precision=self.precision).reshape(len(x), vggish.EMBEDDING_SIZE)
        if pca is not None:
            emb = vggish.postprocess(emb, pca_eigen_vectors=pca[0], pca_means=pca[1])
        n_seq = sum(len(s) for s in seq)
        _, offsets = store.pack(seq)
        t_center, _ = store.pack([vggish.patch_centers(len(s)) for s in seq], dtype=np.float32)
        windows = np.zeros((len(w["clip"]), vggish.EMBEDDING_SIZE), emb.dtype)
        windows[store.pack([np.flatnonzero(w["clip"] == i) for i in range(len(win))], dtype=np.int64)[0]] = emb[n_seq:]
        self.write({"clips": clip_table(self.clips(), status, reason),
                    "vggish": {"embedding": emb[:n_seq], "t_center": t_center, "offsets": offsets},
                    "windows": {"vggish": windows}})


class FaceDescriptor(BatchTask):
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

    def requires(self):
        return {"faces": self.clone(Faces)}

    def warm_up(self):
        from features.embeddings import load_face_descriptor

        load_face_descriptor()

    def run(self):
        from features import store, video
        from features.embeddings import face_chips, face_descriptors, load_face_descriptor
        from features.errors import ClipError, ParameterError

        if self.every < 1:
            raise ParameterError(f"[FaceDescriptor] every must be >= 1, got {self.every}")
        model, predictor = load_face_descriptor()  # cached; loaded by warm_up before workers fork
        faces_task = self.requires()["faces"]
        faces = read_input(faces_task, "video/box", "video/found", "video/offsets")
        fps = get_dataset(self.manifest, self.dataset).video_fps

        def one(i, clip):
            box, found = clip_rows(faces["video"], "box", i), clip_rows(faces["video"], "found", i).astype(bool)
            frames, _, _ = video.read_video(clip.path, fps=fps)
            if len(frames) != len(found):
                raise ClipError("decode_error", f"decoded {len(frames)} frames, Faces had {len(found)}")
            idx = np.flatnonzero(found)
            run = idx[::self.every]
            desc = face_descriptors(face_chips(frames, box, np.isin(np.arange(len(found)), run),
                                               predictor=predictor), model=model, flip=self.flip)
            out, src = np.zeros((len(found), 128), np.float32), np.full(len(found), -1, np.int32)
            if len(run):
                nearest = np.abs(idx[:, None] - run[None, :]).argmin(axis=1)
                out[idx], src[idx] = desc[nearest], run[nearest]
            return out, src

        results, status, reason = self.per_clip(one, faces["clips"]["status"], faces["clips"]["reason"])
        n = np.diff(faces["video"]["offsets"])
        rows = [r if r else (np.zeros((k, 128), np.float32), np.full(k, -1, np.int32)) for r, k in zip(results, n)]
        self.write({"clips": clip_table(self.clips(), status, reason),
                    "video": {"descriptor": store.pack([r[0] for r in rows], dtype=np.float32, row_shape=(128,))[0],
                              "descriptor_frame": store.pack([r[1] for r in rows], dtype=np.int32)[0],
                              "offsets": faces["video"]["offsets"]}})


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

    def requires(self):
        return {"faces": self.clone(Faces)}

    def run(self):
        from features import store, vggface

        require_file(self.weights, section="VGGFace", key="weights", feature="vggface", what="VGGFace weights file")
        device = self.run_device()
        model = vggface.load_vggface(self.weights, image_size=self.image_size)
        vggface.layer_name(self.layer, model.config.depth)
        faces_task = self.requires()["faces"]
        reader = store.Shard(faces_task.output().path)
        crop = "crop_small" if self.image_size <= faces_task.crop_size_small else "crop"
        dim = vggface.output_dim(model.config, self.layer)
        offsets = store.read_group(faces_task.output().path, "video", ["offsets"])["offsets"]
        clips = reader.clips

        def one(i, clip):
            found = reader.video(i, "found").astype(bool)
            out = np.zeros((len(found), dim), np.float32)
            if found.any():
                crops = reader.video(i, crop, rows=np.flatnonzero(found))
                out[found] = vggface.face_embeddings(crops, model=model, layer=self.layer, device=device,
                                                     batch_size=self.infer_batch_size, precision=self.precision)
            return out

        results, status, reason = self.per_clip(one, clips["status"], clips["reason"])
        n = np.diff(offsets)
        self.write({"clips": clip_table(self.clips(), status, reason),
                    "video": {"vggface": store.pack([r if r is not None else np.zeros((k, dim), np.float32)
                                                     for r, k in zip(results, n)], dtype=np.float32, row_shape=(dim,))[0],
                              "offsets": offsets}})


class GloVe(BatchTask):
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

    def run(self):
        from features import text

        require_file(self.path, section="GloVe", key="path", feature="glove", what="GloVe file")
        vocab, vectors = text.load_glove(self.path, cache_dir=self.cache_dir or os.path.join(self.store, "_cache", "glove"))
        clips = self.clips()
        transcripts = [dict(c.extra).get("transcript") or "" for c in clips]
        out = text.glove_transcripts(transcripts, vocab=vocab, vectors=vectors, max_len=self.max_len,
                                     lowercase=self.lowercase)
        status = np.array(["ok" if t.strip() else "no_transcript" for t in transcripts], dtype=object)
        reason = np.array(["" if t.strip() else "glove: the labels CSV has no transcript for this clip"
                           for t in transcripts], dtype=object)
        self.write({"clips": clip_table(clips, status, reason),
                    "text": {"glove": out["glove"], "length": out["length"], "oov": out["oov"].astype(np.uint8)}})


class Wav2Vec(InferenceTask):
    """A self-supervised speech model's layer (wav2vec 2.0, HuBERT, WavLM: ``features.wav2vec``)
    pooled per 655 ms window and per clip, on Waveform's 16 kHz signal (no pre-emphasis). The model
    is a local Hugging Face folder (``weights``), never downloaded."""

    STAGE = "wav2vec"
    CODE_VERSION = "1"
    weights = luigi.Parameter(default="", description="Hugging Face model folder (config.json + weights); "
                                                      "empty = off")
    layer = luigi.IntParameter(default=-1, description="hidden_states index: 0 = CNN features, -1 = last layer")

    def requires(self):
        return {"waveform": self.clone(Waveform), "segment": self.clone(Segment)}

    def run(self):
        from features import wav2vec

        device = self.run_device()   # the loader checks the folder first: the message of a missing weights file
        model = wav2vec.load_speech_model(self.weights, device=device, key="weights")
        inp = self.requires()
        wav, seg = read_input(inp["waveform"], "audio"), read_input(inp["segment"], "windows")
        w = seg["windows"]

        def one(i, clip):
            sel = w["clip"] == i
            spans = np.stack([w["t_begin"][sel], w["t_end"][sel]], axis=1).astype(np.float64)
            windows, whole = wav2vec.speech_embeddings(
                model, [clip_rows(wav["audio"], "waveform", i)], [spans], layer=self.layer,
                batch_size=self.infer_batch_size, device=device, precision=self.precision)[0]
            return {"windows": windows, "clip": whole}

        results, status, reason = self.per_clip(one, seg["clips"]["status"], seg["clips"]["reason"])
        dim = next((r["clip"].shape[-1] for r in results if r is not None), int(model.model.config.hidden_size))
        windows = np.zeros((len(w["clip"]), dim), np.float32)
        per_clip = np.zeros((len(results), dim), np.float32)
        for i, r in enumerate(results):
            if r is not None:
                windows[np.flatnonzero(w["clip"] == i)] = r["windows"]
                per_clip[i] = r["clip"]
        self.write({"clips": clip_table(self.clips(), status, reason),
                    "windows": {"wav2vec": windows}, "wav2vec": {"clip": per_clip}})


class ImageEncoder(InferenceTask):
    """An image encoder's pooled output (ViT, CLIP's vision tower: ``features.image_encoder``) per
    video frame with a face, on the Faces crops (the 72 px crop when the model's input is no
    larger, else the 173 px one); zeros where no face was found. A local Hugging Face folder."""

    STAGE = "image_encoder"
    CODE_VERSION = "1"
    weights = luigi.Parameter(default="", description="Hugging Face model folder (config.json + weights); "
                                                      "empty = off")

    def requires(self):
        return {"faces": self.clone(Faces)}

    def run(self):
        from features import image_encoder, store

        device = self.run_device()
        model = image_encoder.load_image_model(self.weights, device=device, key="weights")
        faces = self.requires()["faces"]
        reader = store.Shard(faces.output().path)
        crop = "crop_small" if model.image_size <= faces.crop_size_small else "crop"
        offsets = store.read_group(faces.output().path, "video", ["offsets"])["offsets"]
        dims = []

        def one(i, clip):
            found = reader.video(i, "found").astype(bool)
            out = None
            if found.any():
                emb = image_encoder.image_embeddings(model, reader.video(i, crop, rows=np.flatnonzero(found)),
                                                     batch_size=self.infer_batch_size, device=device,
                                                     precision=self.precision)
                dims.append(emb.shape[1])
                out = np.zeros((len(found), emb.shape[1]), np.float32)
                out[found] = emb
            return out if out is not None else len(found)

        results, status, reason = self.per_clip(one, reader.clips["status"], reader.clips["reason"])
        dim = dims[0] if dims else model.hidden_size
        n = np.diff(offsets)
        rows = [r if isinstance(r, np.ndarray) else np.zeros((k, dim), np.float32) for r, k in zip(results, n)]
        self.write({"clips": clip_table(self.clips(), status, reason),
                    "video": {"image_encoder": store.pack(rows, dtype=np.float32, row_shape=(dim,))[0],
                              "offsets": offsets}})


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

    def run(self):
        from features import bert

        device = self.run_device()
        model, tokenizer = bert.load_text_model(self.weights, device=device, key="weights")
        clips = self.clips()
        transcripts = [dict(c.extra).get("transcript") or "" for c in clips]
        out = bert.token_vectors(model, tokenizer, transcripts, max_len=self.max_len,
                                 batch_size=self.infer_batch_size, device=device, precision=self.precision)
        status = np.array(["ok" if t.strip() else "no_transcript" for t in transcripts], dtype=object)
        reason = np.array(["" if t.strip() else "bert: the labels CSV has no transcript for this clip"
                           for t in transcripts], dtype=object)
        vectors, length = out["bert"], out["length"].astype(np.int32)
        none = np.array([not t.strip() for t in transcripts], bool)   # no transcript: no tokens, not [CLS][SEP]
        vectors[none], length[none] = 0, 0
        self.write({"clips": clip_table(clips, status, reason),
                    "text": {"bert": vectors, "bert_length": length}})


#: ``[Shard] embeddings`` entry -> its stage, in ``features.registry`` order (where each is declared)
EMBEDDINGS = {name: globals()[registry.stage_features(name)[0].stage] for name in registry.embedding_stages()}
