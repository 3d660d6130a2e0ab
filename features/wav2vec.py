"""Self-supervised speech embeddings: wav2vec 2.0 (Baevski et al., "wav2vec 2.0: a framework for
self-supervised learning of speech representations", NeurIPS 2020), HuBERT (Hsu et al., "HuBERT:
self-supervised speech representation learning by masked prediction of hidden units", IEEE/ACM
TASLP 2021) and WavLM (Chen et al., "WavLM: large-scale self-supervised pre-training for full stack
speech processing", IEEE JSTSP 2022), through ``transformers``' ``AutoModel`` (issue 22 item 5).

The model: a CNN over the raw 16 kHz waveform (7 convolutions in the published models, strides
5·2·2·2·2·2·2 = 320 samples, receptive field 400 samples) gives one frame per 20 ms covering
25 ms; a linear projection and a convolutional position embedding feed a Transformer encoder.
Frame k covers samples [k·hop, k·hop + rf) and is placed at its centre (k·hop + rf / 2) / sr
(12.5 ms + 20 ms·k); hop and rf are computed from ``config.conv_stride`` / ``conv_kernel``.

``layer`` indexes the encoder's hidden states (``num_hidden_layers + 1`` of them):

* ``0``: the input of the first Transformer layer: the CNN features after the feature projection
  plus the convolutional position embedding (and, in the post-LN "base" models, the encoder's
  LayerNorm), as ``transformers``' ``hidden_states[0]``;
* ``k`` (1 … L): the output of Transformer layer k (layer-wise probes, such as the SUPERB
  weighted-sum analysis of Chen et al. 2022, find speaker and emotion information strongest in
  middle layers rather than the last: worth trying when the last layer disappoints);
* ``-1`` (= L): the model's ``last_hidden_state``: in the pre-LN models
  (``do_stable_layer_norm``, the large checkpoints) after the encoder's final LayerNorm, as transformers 4.x reported
  ``hidden_states[-1]`` (5.x reports the last layer before that LayerNorm; this module keeps the
  4.x meaning so a weights folder gives the same vectors under both).

Pooling: a 655 ms window of ``features.segments`` (t_begin, t_end) gets the mean of the chosen
layer's frames whose centre lies in [t_begin, t_end) (32 or 33 frames); a window without such a
frame (shorter than 20 ms, or past the last frame) takes the frame nearest its centre. The clip
vector is the mean over all frames.

Input: the waveform without pre-emphasis (the models were pre-trained on plain LibriSpeech /
Libri-Light audio; undo the AVEF pre-emphasis with ``features.embeddings.deemphasis``), 16 kHz. With a ``preprocessor_config.json`` in the folder its
``AutoFeatureExtractor`` prepares each clip (``do_normalize`` decides the normalisation); without
one, each clip is normalised to zero mean and unit variance, (x − mean) / sqrt(var + 1e-7), as
``Wav2Vec2FeatureExtractor`` does with ``do_normalize``.

Batching: clips are sorted by length and padded with zeros; the attention mask is passed when the
model supports it (``feat_extract_norm == "layer"``, e.g. wav2vec2-large-lv60, HuBERT-large,
WavLM-large): the padded frames are zeroed and masked, so each clip's vectors equal those of the clip run
alone (up to float rounding; a test checks). The ``"group"``-norm models (e.g. wav2vec2-base,
HuBERT-base) normalise the first CNN layer over the whole time axis, so padding would change the
result: they batch only clips of identical length, and in practice run one clip per forward pass.

The weights folder is a Hugging Face folder (``save_pretrained`` or a hub snapshot copied by hand:
``config.json`` + ``model.safetensors`` / ``pytorch_model.bin``), read with ``local_files_only``:
nothing is ever downloaded. ``require_model_folder`` and ``precision_context`` are shared with
``features.image_encoder`` and ``features.bert``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from features.errors import ParameterError
from features.hf import from_pretrained, precision_context, require_model_folder

SR = 16000


# -- the speech model ---------------------------------------------------------------------------
@dataclass(frozen=True)
class SpeechModel:
    """A loaded speech model: the ``transformers`` module (``model``, eval mode) and the input
    preparation of its folder (``feature_extractor`` or None: zero mean / unit variance)."""
    model: object
    feature_extractor: object | None
    folder: str

    @property
    def config(self):
        return self.model.config

    @property
    def masked_batches(self) -> bool:
        """Whether padded batches with an attention mask give the clip-alone result."""
        return getattr(self.config, "feat_extract_norm", "group") == "layer"


def load_speech_model(folder, device: str = "cpu", *, feature: str = "wav2vec", section: str = "Wav2Vec",
                      key: str = "folder") -> SpeechModel:
    """wav2vec 2.0 / HuBERT / WavLM (``AutoModel``) of a local Hugging Face folder, on ``device``.

    A missing, empty or incomplete folder is a ``FileNotFoundError`` naming it, the workflows.cfg
    key (``feature`` / ``section`` / ``key``) and how to switch the feature off."""
    from transformers import AutoFeatureExtractor, AutoModel

    folder = require_model_folder(folder, feature=feature, section=section, key=key, what="speech model folder")
    model = from_pretrained(AutoModel, folder, device)
    if not hasattr(model.config, "conv_stride"):
        raise ParameterError(f"{folder}: model_type {model.config.model_type!r} is not a wav2vec 2.0 / HuBERT / "
                             f"WavLM-style model (its config has no conv_stride)")
    if getattr(model.config, "add_adapter", False):
        raise ParameterError(f"{folder}: the model has an adapter (add_adapter), which shortens the frame axis; "
                             f"use the pre-trained model's folder")
    fe = None
    if os.path.isfile(os.path.join(folder, "preprocessor_config.json")):
        fe = AutoFeatureExtractor.from_pretrained(folder, local_files_only=True)
    return SpeechModel(model, fe, folder)


def frame_geometry(config) -> tuple[int, int]:
    """(hop, receptive field) in samples of the CNN frames: hop = Π conv_stride (320 in the
    published models); rf = 1 + Σ_i (kernel_i − 1)·Π_{j<i} stride_j (400)."""
    hop, rf = 1, 1
    for k, s in zip(config.conv_kernel, config.conv_stride):
        rf += (k - 1) * hop
        hop *= s
    return hop, rf


def n_frames(n_samples: int, config) -> int:
    """Frames the CNN makes of ``n_samples`` (``_get_feat_extract_output_lengths``); 0 when shorter
    than the receptive field."""
    n = int(n_samples)
    for k, s in zip(config.conv_kernel, config.conv_stride):
        if n < k:
            return 0
        n = (n - k) // s + 1
    return n


def frame_times(n: int, config, *, sr: int = SR) -> np.ndarray:
    """Centre time (s) of each of ``n`` frames: (k·hop + rf / 2) / sr."""
    hop, rf = frame_geometry(config)
    return (np.arange(n) * hop + rf / 2) / sr


def pool_windows(frames: np.ndarray, times: np.ndarray, spans: np.ndarray) -> np.ndarray:
    """(W, D) float32: per span [t_begin, t_end) the mean of the frames whose time lies inside; a
    span without one takes the frame nearest its centre."""
    spans = np.asarray(spans, np.float64).reshape(-1, 2)
    inside = (times[None, :] >= spans[:, :1]) & (times[None, :] < spans[:, 1:])
    count = inside.sum(axis=1)
    out = inside.astype(np.float64) @ frames.astype(np.float64) / np.maximum(count, 1)[:, None]
    empty = np.flatnonzero(count == 0)
    if len(empty) and len(times):
        nearest = np.abs(times[None, :] - spans[empty].mean(axis=1)[:, None]).argmin(axis=1)
        out[empty] = frames[nearest]
    return out.astype(np.float32)


def _prepare(speech: SpeechModel, y: np.ndarray, sr: int) -> np.ndarray:
    fe = speech.feature_extractor
    if fe is None:
        return (y - y.mean()) / np.sqrt(y.var() + 1e-7)
    return np.asarray(fe(y, sampling_rate=sr, return_tensors="np")["input_values"][0], np.float32)


def _batches(order: np.ndarray, lengths: np.ndarray, batch_size: int, same_length: bool):
    batch = []
    for i in order:
        if batch and (len(batch) == batch_size or (same_length and lengths[i] != lengths[batch[0]])):
            yield batch
            batch = []
        batch.append(int(i))
    if batch:
        yield batch


def speech_embeddings(speech: SpeechModel, waveforms: list, spans: list, *, layer: int = -1, batch_size: int = 8,
                      device: str = "cpu", precision: str = "fp32",
                      sr: int = SR) -> list[tuple[np.ndarray, np.ndarray]]:
    """Window and clip vectors of one hidden layer of a speech model.

    Parameters
    ----------
    speech : ``load_speech_model``'s result
    waveforms : list of (n_samples,) float arrays, mono, 16 kHz, no pre-emphasis; each at least one
        receptive field long (400 samples = 25 ms in the published models)
    spans : list (one per clip) of (W, 2) arrays of [t_begin, t_end) in seconds (the 655 ms windows
        of ``features.segments``; W may be 0)
    layer : index into the hidden states: 0 = projected CNN features (+ position embedding),
        k = Transformer layer k, −1 = ``last_hidden_state`` (module docstring)
    batch_size : clips per forward pass (sorted by length, zero-padded, attention-masked when the
        model supports it; otherwise only equal-length clips share a pass)
    device : ``"cpu"`` or ``"cuda[:k]"``
    precision : ``"fp32"``; ``"fp16"`` / ``"bf16"`` autocast on a GPU (bf16 also on the CPU)
    sr : the sample rate of ``waveforms``; must be the model's (16 kHz)

    Returns
    -------
    list, one ``(windows, clip)`` per clip: windows (W, D) float32, the mean of the layer's frames
    whose centre lies in each span; clip (D,) float32, the mean over all frames (D = hidden_size)
    """
    import torch

    from features.embeddings import pick_device

    config = speech.config
    n_states = config.num_hidden_layers + 1
    if not -n_states <= layer < n_states:
        raise ParameterError(f"layer must lie in [{-n_states}, {n_states - 1}] (the model has "
                             f"{config.num_hidden_layers} layers), got {layer}")
    if batch_size < 1:
        raise ParameterError(f"batch_size must be >= 1, got {batch_size}")
    model_sr = getattr(speech.feature_extractor, "sampling_rate", SR)
    if sr != model_sr:
        raise ParameterError(f"the speech model needs {model_sr} Hz audio, got sr={sr} (resample first)")
    if len(spans) != len(waveforms):
        raise ParameterError(f"one spans array per waveform: got {len(spans)} for {len(waveforms)} waveforms")
    for i, s in enumerate(spans):
        s = np.asarray(s)
        if s.size and (s.ndim != 2 or s.shape[1] != 2):
            raise ParameterError(f"spans[{i}] must be a (W, 2) array of [t_begin, t_end] seconds, got shape {s.shape}")
    device = pick_device(device)
    context = precision_context(precision, device)
    _, rf = frame_geometry(config)
    inputs = []
    for i, y in enumerate(waveforms):
        y = np.asarray(y, np.float32)
        if y.ndim != 1:
            raise ParameterError(f"waveforms[{i}] must be mono (n_samples,), got shape {y.shape}")
        if len(y) < rf:
            raise ParameterError(f"waveforms[{i}] has {len(y)} samples; the model needs at least {rf} "
                                 f"({1000 * rf / sr:g} ms): leave such clips out")
        inputs.append(_prepare(speech, y, sr))
    lengths = np.array([len(x) for x in inputs], np.int64)
    order = np.argsort(-lengths, kind="stable")
    masked = speech.masked_batches
    model = speech.model.to(device)
    out: list = [None] * len(inputs)
    with torch.inference_mode():
        for batch in _batches(order, lengths, batch_size, same_length=not masked):
            x = torch.zeros(len(batch), int(lengths[batch].max()))
            mask = torch.zeros(x.shape, dtype=torch.long)
            for j, i in enumerate(batch):
                x[j, :lengths[i]] = torch.from_numpy(inputs[i])
                mask[j, :lengths[i]] = 1
            with context:
                res = model(x.to(device), attention_mask=mask.to(device) if masked else None,
                            output_hidden_states=True)
            hidden = res.last_hidden_state if layer in (-1, n_states - 1) else res.hidden_states[layer]
            hidden = hidden.float().cpu().numpy()
            for j, i in enumerate(batch):
                frames = hidden[j, :n_frames(lengths[i], config)]
                out[i] = (pool_windows(frames, frame_times(len(frames), config, sr=sr), spans[i]),
                          frames.astype(np.float64).mean(axis=0).astype(np.float32))
    return out


#: the shard features this extractor's stage (``pipeline.embeddings.Wav2Vec``) writes (``features.registry``)
SHARD_FEATURES = (
    dict(name="wav2vec_window", dataset="windows/wav2vec", rows="window", dtype="float32", shape="(D,)",
         modality="audio", stage="Wav2Vec", switch='[Wav2Vec] weights and "wav2vec" in [Shard] embeddings',
         read="window", normalise=True, embedding="wav2vec", needs="weights", default=False,
         enable="build the shards with the Wav2Vec stage (docs/embeddings.md)",
         paper="Baevski et al. 2020: a layer's 20 ms frames averaged over the 655 ms window"),
    dict(name="wav2vec", dataset="wav2vec/clip", rows="clip", dtype="float32", shape="(D,)", modality="audio",
         stage="Wav2Vec", switch='[Wav2Vec] weights and "wav2vec" in [Shard] embeddings', read="clip",
         normalise=True, embedding="wav2vec", needs="weights", default=False,
         enable="build the shards with the Wav2Vec stage (docs/embeddings.md)",
         paper="Baevski et al. 2020: a layer's frames averaged over the clip"),
)
