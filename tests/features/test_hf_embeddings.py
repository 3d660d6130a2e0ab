"""wav2vec 2.0 / HuBERT / WavLM, ViT / CLIP and BERT extractors (issue 22 item 5) on tiny random
models that the tests build from a config and ``save_pretrained``: equal to a direct
``transformers`` forward, window pooling by hand, batched = one by one, layer choice, bf16 on
the CPU close to fp32, and the missing-folder error of the other weight files."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import transformers  # noqa: E402  (the test extras install it: setup.cfg)

from features import bert, image_encoder, wav2vec  # noqa: E402
from features.errors import ParameterError  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask:UserWarning")  # WavLM
SPEECH = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
              conv_dim=(16, 16, 16), conv_kernel=(10, 8, 8), conv_stride=(5, 8, 8),  # hop 320 (20 ms), rf 325
              num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, vocab_size=12)
SPEECH_MODELS = {
    "wav2vec2": (transformers.Wav2Vec2Config, dict(feat_extract_norm="layer")),
    "wav2vec2_stable": (transformers.Wav2Vec2Config, dict(feat_extract_norm="layer", do_stable_layer_norm=True)),
    "hubert_group": (transformers.HubertConfig, dict(feat_extract_norm="group")),
    "wavlm": (transformers.WavLMConfig, dict(feat_extract_norm="layer", num_buckets=16, max_bucket_distance=64)),
}
WORDS = ["the", "library", "opens", "on", "monday", "after", "holiday", "she", "is", "here", ",", ".", "!"]


def save(model, path):
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("hf")
    out = {name: save(transformers.AutoModel.from_config(cfg(**SPEECH, **extra)), root / name)
           for name, (cfg, extra) in SPEECH_MODELS.items()}
    vit = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=37)
    out["vit"] = save(transformers.ViTModel(vit), root / "vit")
    clip_vision = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=37, projection_dim=16)
    out["clip_vision"] = save(transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**clip_vision)),
                              root / "clip_vision")
    clip = transformers.CLIPConfig(
        text_config=dict(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=20, max_position_embeddings=16),
        vision_config=clip_vision, projection_dim=16)
    out["clip"] = save(transformers.CLIPModel(clip), root / "clip")
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    out["bert"] = save(transformers.BertModel(transformers.BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
        max_position_embeddings=128)), root / "bert")
    transformers.BertTokenizer(vocab=vocab).save_pretrained(out["bert"])
    return out


def clips(seconds=(1.3, 0.9, 1.1), seed=0):
    rng = np.random.default_rng(seed)
    t = [np.arange(int(s * 16000)) / 16000 for s in seconds]
    return [(0.3 * np.sin(2 * np.pi * 220 * x) + 0.05 * rng.normal(size=len(x))).astype(np.float32) for x in t]


def windows(y, hop_s=0.35):
    """655 ms windows every hop_s seconds over the clip (features.segments-like), plus one short
    span that holds no frame centre."""
    t0 = np.arange(0, len(y) / 16000 - 0.655, hop_s)
    return np.concatenate([np.stack([t0, t0 + 0.655], axis=1), [[0.0, 0.005]]])


def direct_hidden(model, y, *, normalize=True):
    """transformers' own forward on one clip: (hidden_states with -1 = last_hidden_state)."""
    x = (y - y.mean()) / np.sqrt(y.var() + 1e-7) if normalize else y
    with torch.inference_mode():
        out = model(torch.from_numpy(x[None].astype(np.float32)), output_hidden_states=True)
    return [h[0].numpy() for h in out.hidden_states[:-1]] + [out.last_hidden_state[0].numpy()]


# -- speech --------------------------------------------------------------------------------------
def test_frame_geometry_of_the_published_wav2vec2():
    config = transformers.Wav2Vec2Config()       # the base / large CNN: strides 5,2,2,2,2,2,2
    assert wav2vec.frame_geometry(config) == (320, 400)
    lengths = transformers.Wav2Vec2PreTrainedModel._get_feat_extract_output_lengths   # reads self.config only
    for n in (399, 400, 719, 720, 16000, 16001, 48123):
        assert wav2vec.n_frames(n, config) == int(lengths(SimpleNamespace(config=config), n))
    np.testing.assert_allclose(wav2vec.frame_times(3, config), [0.0125, 0.0325, 0.0525])


@pytest.mark.parametrize("layer", [0, 1, -1])
def test_speech_windows_are_means_of_the_frames_in_their_span(folders, layer):
    speech = wav2vec.load_speech_model(folders["wav2vec2_stable"])
    ys = clips()
    spans = [windows(y) for y in ys]
    got = wav2vec.speech_embeddings(speech, ys, spans, layer=layer, batch_size=3)
    for y, s, (win, clip) in zip(ys, spans, got):
        h = direct_hidden(speech.model, y)[layer]
        centres = (np.arange(len(h)) * 320 + 325 / 2) / 16000        # hop 320, rf 325 samples
        assert win.shape == (len(s), 32) and win.dtype == clip.dtype == np.float32
        for (t0, t1), w in zip(s[:-1], win[:-1]):
            frames = h[(centres >= t0) & (centres < t1)]
            assert 32 <= len(frames) <= 33                              # 655 ms at 20 ms
            np.testing.assert_allclose(w, frames.mean(axis=0), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(win[-1], h[0], rtol=1e-4, atol=1e-5)  # no centre in [0, 5 ms): nearest
        np.testing.assert_allclose(clip, h.mean(axis=0), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(SPEECH_MODELS))
def test_speech_batched_equals_one_by_one(folders, name):
    speech = wav2vec.load_speech_model(folders[name])
    assert speech.masked_batches == (name != "hubert_group")
    ys = clips((0.8, 0.6, 0.8, 0.45))                               # two equal lengths share a group-norm pass
    spans = [windows(y, 0.2) for y in ys]
    batched = wav2vec.speech_embeddings(speech, ys, spans, layer=-1, batch_size=4)
    for y, s, (win, clip) in zip(ys, spans, batched):
        alone = wav2vec.speech_embeddings(speech, [y], [s], layer=-1, batch_size=1)[0]
        np.testing.assert_allclose(win, alone[0], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(clip, alone[1], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(clip, direct_hidden(speech.model, y)[-1].mean(axis=0), rtol=1e-4, atol=1e-5)


def test_speech_layer_choice_feature_extractor_and_bad_input(folders, tmp_path):
    speech = wav2vec.load_speech_model(folders["wav2vec2"])
    ys = clips((0.8,))
    spans = [windows(ys[0])]
    per_layer = [wav2vec.speech_embeddings(speech, ys, spans, layer=k)[0][1] for k in (0, 1, 2)]
    assert not np.allclose(per_layer[0], per_layer[1]) and not np.allclose(per_layer[1], per_layer[2])
    np.testing.assert_array_equal(per_layer[2], wav2vec.speech_embeddings(speech, ys, spans, layer=-1)[0][1])
    # a folder with a preprocessor config: its feature extractor decides (here: no normalisation)
    folder = tmp_path / "raw"
    speech.model.save_pretrained(folder)
    transformers.Wav2Vec2FeatureExtractor(do_normalize=False).save_pretrained(folder)
    raw = wav2vec.load_speech_model(folder)
    assert raw.feature_extractor is not None
    np.testing.assert_allclose(wav2vec.speech_embeddings(raw, ys, spans, layer=1)[0][1],
                               direct_hidden(raw.model, ys[0], normalize=False)[1].mean(axis=0), rtol=1e-4, atol=1e-5)
    for kwargs, rule in [({"layer": 3}, "layer must lie"), ({"layer": -4}, "layer must lie"),
                         ({"precision": "fp16"}, "needs a GPU"), ({"sr": 8000}, "16000 Hz"),
                         ({"batch_size": 0}, "batch_size")]:
        with pytest.raises(ParameterError, match=rule):
            wav2vec.speech_embeddings(speech, ys, spans, **kwargs)
    with pytest.raises(ParameterError, match="at least 325"):
        wav2vec.speech_embeddings(speech, [ys[0], ys[0][:300]], [spans[0], np.zeros((0, 2))])
    with pytest.raises(ParameterError, match=r"\(W, 2\)"):
        wav2vec.speech_embeddings(speech, ys, [np.zeros(4)])


# -- images --------------------------------------------------------------------------------------
def crops_uint8(n=5, size=32, seed=1):
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("name, kind", [("vit", "vit"), ("clip_vision", "clip"), ("clip", "clip")])
def test_image_embeddings_are_the_normalised_cls_token(folders, name, kind):
    enc = image_encoder.load_image_model(folders[name])
    assert enc.kind == kind and enc.image_size == 32
    crops = crops_uint8()
    got = image_encoder.image_embeddings(enc, crops, batch_size=2)
    assert got.shape == (5, 32) and got.dtype == np.float32
    mean, std = image_encoder.DEFAULTS[kind][:2]
    pixels = torch.from_numpy(((crops / 255.0 - mean) / std).astype(np.float32)).permute(0, 3, 1, 2)
    with torch.inference_mode():
        if kind == "vit":
            ref = transformers.ViTModel.from_pretrained(folders[name], add_pooling_layer=False).eval()
            out = ref(pixel_values=pixels, output_hidden_states=True)
            expected = out.last_hidden_state[:, 0]                   # = final LayerNorm of the last layer's CLS
            np.testing.assert_allclose(expected, ref.layernorm(out.hidden_states[-1][:, 0]), rtol=1e-4, atol=1e-5)
        else:
            ref = transformers.CLIPVisionModel.from_pretrained(folders[name]).eval()
            out = ref(pixel_values=pixels, output_hidden_states=True)
            expected = out.pooler_output
            post_layernorm = getattr(ref, "vision_model", ref).post_layernorm
            np.testing.assert_allclose(expected, post_layernorm(out.last_hidden_state[:, 0]), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got[3:], image_encoder.image_embeddings(enc, crops[3:], batch_size=64),
                               rtol=1e-4, atol=1e-5)


def test_image_preprocessor_config_and_resize(folders, tmp_path):
    folder = tmp_path / "vit"
    transformers.ViTModel.from_pretrained(folders["vit"], add_pooling_layer=False).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "ViTImageProcessor", "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225], "rescale_factor": 1 / 255, "resample": 3}))
    enc = image_encoder.load_image_model(folder)
    assert enc.mean == (0.485, 0.456, 0.406) and enc.std == (0.229, 0.224, 0.225) and enc.mode == "bicubic"
    big = crops_uint8(3, 48)
    x = enc.preprocess(torch.from_numpy(big))
    assert tuple(x.shape) == (3, 3, 32, 32)
    resized = torch.nn.functional.interpolate(torch.from_numpy(big).permute(0, 3, 1, 2).float(), size=(32, 32),
                                              mode="bicubic", antialias=True).clamp(0, 255)
    mean, std = torch.tensor(enc.mean).view(1, 3, 1, 1), torch.tensor(enc.std).view(1, 3, 1, 1)
    torch.testing.assert_close(x, (resized / 255 - mean) / std)
    assert image_encoder.image_embeddings(enc, big).shape == (3, 32)
    with pytest.raises(ParameterError, match="uint8"):
        image_encoder.image_embeddings(enc, big.astype(np.float32))
    with pytest.raises(ParameterError, match="model_type 'bert'"):
        image_encoder.load_image_model(folders["bert"])


def test_weights_that_leave_a_used_tensor_random_are_refused(folders, tmp_path):
    folder = tmp_path / "vit3"
    transformers.ViTModel.from_pretrained(folders["vit"], add_pooling_layer=False).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))  # layer 2 not in the file
    with pytest.raises(ParameterError, match=r"lack \d+ tensors the ViTModel needs \(.*layers?\.2\."):
        image_encoder.load_image_model(folder)


# -- text ----------------------------------------------------------------------------------------
TEXTS = ["The library opens on Monday, after the holiday.", "She is here!", "", None,
         "the library " * 40]


def test_bert_token_vectors_layout_and_reference(folders):
    model, tok = bert.load_text_model(folders["bert"])
    out = bert.token_vectors(model, tok, TEXTS, batch_size=2)
    assert out["bert"].shape == (5, 100, 32) and out["bert"].dtype == np.float32
    assert out["length"].dtype == np.int32 and out["truncated"].dtype == bool
    np.testing.assert_array_equal(out["length"], [12, 6, 2, 2, 82])   # [CLS] ... [SEP]
    assert not out["truncated"].any()
    for i, text in enumerate(TEXTS):
        k = out["length"][i]
        enc = tok(text or "", return_tensors="pt")
        assert enc["input_ids"][0, 0] == tok.cls_token_id and enc["input_ids"][0, -1] == tok.sep_token_id
        with torch.inference_mode():
            ref = model(**enc).last_hidden_state[0].numpy()
        assert len(ref) == k
        np.testing.assert_allclose(out["bert"][i, :k], ref, rtol=1e-4, atol=1e-5)
        assert not out["bert"][i, k:].any()
    one = [bert.token_vectors(model, tok, [t], batch_size=1)["bert"][0] for t in TEXTS]
    np.testing.assert_allclose(out["bert"], np.stack(one), rtol=1e-4, atol=1e-5)


def test_bert_truncation_and_limits(folders):
    model, tok = bert.load_text_model(folders["bert"])
    out = bert.token_vectors(model, tok, TEXTS, max_len=12)
    np.testing.assert_array_equal(out["length"], [12, 6, 2, 2, 12])
    np.testing.assert_array_equal(out["truncated"], [False, False, False, False, True])
    with torch.inference_mode():
        ref = model(**tok(TEXTS[4], truncation=True, max_length=12, return_tensors="pt")).last_hidden_state[0]
    np.testing.assert_allclose(out["bert"][4], ref.numpy(), rtol=1e-4, atol=1e-5)
    assert tok.convert_ids_to_tokens(tok(TEXTS[4], truncation=True, max_length=12)["input_ids"])[-1] == "[SEP]"
    assert bert.token_vectors(model, tok, [])["bert"].shape == (0, 100, 32)
    for max_len in (1, 129):                                         # max_position_embeddings = 128
        with pytest.raises(ParameterError, match="max_len"):
            bert.token_vectors(model, tok, TEXTS, max_len=max_len)


# -- all three -----------------------------------------------------------------------------------
def test_bf16_on_cpu_is_close_to_fp32(folders):
    speech = wav2vec.load_speech_model(folders["wav2vec2"])
    ys = clips((0.8, 1.0))
    spans = [windows(y) for y in ys]
    for (a, b), (c, d) in zip(wav2vec.speech_embeddings(speech, ys, spans, precision="fp32"),
                              wav2vec.speech_embeddings(speech, ys, spans, precision="bf16")):
        assert a.dtype == c.dtype == np.float32
        np.testing.assert_allclose(c, a, atol=0.1 * np.abs(a).max())
        np.testing.assert_allclose(d, b, atol=0.1 * np.abs(b).max())
    enc = image_encoder.load_image_model(folders["clip"])
    a, c = (image_encoder.image_embeddings(enc, crops_uint8(), precision=p) for p in ("fp32", "bf16"))
    np.testing.assert_allclose(c, a, atol=0.1 * np.abs(a).max())
    model, tok = bert.load_text_model(folders["bert"])
    a, c = (bert.token_vectors(model, tok, TEXTS[:2], precision=p)["bert"] for p in ("fp32", "bf16"))
    np.testing.assert_allclose(c, a, atol=0.1 * np.abs(a).max())
    assert not np.array_equal(c, a)                                  # autocast did run in bf16


@pytest.mark.parametrize("load, feature", [(wav2vec.load_speech_model, "wav2vec"),
                                           (image_encoder.load_image_model, "image_encoder"),
                                           (bert.load_text_model, "bert")])
def test_missing_or_empty_folder_names_it_and_how_to_switch_off(tmp_path, folders, load, feature):
    empty = tmp_path / "empty"
    empty.mkdir()
    no_weights = tmp_path / "config_only"
    no_weights.mkdir()
    (no_weights / "config.json").write_text("{}")
    for folder, problem in [(tmp_path / "nowhere", "does not exist"), (empty, "is empty"), ("", "does not exist"),
                            (no_weights, "has no weights file")]:
        with pytest.raises(FileNotFoundError) as err:
            load(folder)
        msg = str(err.value)
        assert msg.startswith(f"{feature}: ") and repr(str(folder)) in msg and problem in msg
        assert f'leave "{feature}" out of `[Shard] embeddings`' in msg and "workflows.cfg" in msg
    if feature == "bert":                                           # weights but no tokenizer files
        folder = tmp_path / "no_tokenizer"
        transformers.BertModel.from_pretrained(folders["bert"]).save_pretrained(folder)
        with pytest.raises(FileNotFoundError, match="has none of tokenizer.json"):
            load(folder)
