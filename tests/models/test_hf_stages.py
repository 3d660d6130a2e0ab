"""The three Hugging Face embedding stages (issue 22 item 5): wav2vec (a self-supervised speech
model's layer per 655 ms window and per clip), image_encoder (a ViT on the face crops per video
frame) and bert (token vectors in GloVe's layout), built into the demo shards from tiny random
models saved in the Hugging Face format, read back by the trainers' data module with nothing but
their declarations; a missing folder stops a stage with the message the other embeddings give."""
import contextlib
import os

import numpy as np
import pytest
import torch

from features import bert, image_encoder, registry, wav2vec
from features.store import ShardReader
from models.data import ShardDataset, clip_table, collate, find_shards
from tests.models.conftest import emb_args, fresh_build, link_tree
from tests.conftest import ROOT

NEW = ("wav2vec", "image_encoder", "bert")


def tiny_models(folder):
    """A wav2vec 2.0 (20 ms frames), a ViT (32 px) and a BERT (a vocabulary of the demo's words and
    sub-words), random, saved with save_pretrained."""
    import transformers as tf

    torch.manual_seed(0)
    speech = tf.Wav2Vec2Model(tf.Wav2Vec2Config(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, conv_dim=(8, 8, 8, 8),
        conv_kernel=(10, 3, 3, 3), conv_stride=(5, 4, 4, 4), num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2, feat_extract_norm="layer", do_stable_layer_norm=True))
    speech.save_pretrained(folder / "wav2vec")
    image = tf.ViTModel(tf.ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32))
    image.save_pretrained(folder / "vit")
    import csv
    with open(os.path.join(ROOT, "tests", "data", "demo", "labels.csv"), newline="") as f:
        words = sorted({w.strip(".,!?").lower() for r in csv.DictReader(f) for w in r["transcript"].split()} - {""})
    (folder / "bert").mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words[:200]]
    (folder / "bert" / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tf.BertTokenizerFast(vocab_file=str(folder / "bert" / "vocab.txt")).save_pretrained(folder / "bert")
    tf.BertModel(tf.BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32, max_position_embeddings=128)).save_pretrained(folder / "bert")
    return {"wav2vec": folder / "wav2vec", "image_encoder": folder / "vit", "bert": folder / "bert"}


def hf_args(models):
    return ["--Shard-embeddings", '["descriptor", "waveform", "glove", "vggish", "wav2vec", "image_encoder", "bert"]',
            "--Wav2Vec-weights", str(models["wav2vec"]), "--ImageEncoder-weights", str(models["image_encoder"]),
            "--BERT-weights", str(models["bert"])]


@pytest.fixture(scope="module")
def hf_store(full_store, emb_weights, tmp_path_factory):
    base = tmp_path_factory.mktemp("hf")
    models = tiny_models(base)
    store = base / "store"
    link_tree(full_store, store)
    ran = fresh_build(store, *emb_args(emb_weights), *hf_args(models),
                      manifest=os.path.join(ROOT, "data_manifest.yaml"))
    assert set(ran) <= {"Wav2Vec", "ImageEncoder", "BERT", "Shard", "BuildShards"}, ran   # the rest was reused
    return store, models


def test_each_new_embedding_is_built_and_read_by_its_declaration_alone(hf_store):
    store, models = hf_store
    paths = find_shards(store, "demo")
    s = ShardReader(paths[0])
    assert s.attrs["embeddings"][-3:] == ["bert", "image_encoder", "wav2vec"]
    for name in ("wav2vec_window", "wav2vec", "image_encoder", "bert"):
        assert s.has(name), name
    t = clip_table(paths)
    # window mode: one vector per window from the windows row / the window's 16 video frames
    ds = ShardDataset(t, range(len(t)), features=("wav2vec_window", "image_encoder"))
    b = collate(ds.__getitems__([0, 1, 2]))
    assert b["wav2vec_window"].shape == (3, 16) and b["image_encoder"].shape == (3, 16, 16)
    r, i = ds.items[1]
    sh = ds.shards[t.shard[r]]
    np.testing.assert_array_equal(b["wav2vec_window"][1].numpy(), sh.window_feature("wav2vec_window", i))
    # clip mode: the clip vector and the token vectors with their length, stacked (not padded)
    cs = ShardDataset(t, range(len(t)), mode="clip", features=("logmel", "wav2vec", "bert"))
    cb = collate(cs.__getitems__([0, 1]))
    assert cb["wav2vec"].shape == (2, 16) and cb["bert"].shape == (2, 100, 16)
    assert cb["bert_length"].dtype == torch.int64 and (cb["bert_length"] > 2).all()   # [CLS] words [SEP]
    c = int(t.index[cs.items[0]])
    got = ShardReader(t.paths[t.shard[cs.items[0]]]).clip_feature("bert", c)
    assert int(cb["bert_length"][0]) == got["length"] and not cb["bert"][0, got["length"]:].any()


def test_the_stage_computes_what_the_extractor_gives(hf_store):
    """A clip's stored window and clip vectors are features.wav2vec's on Waveform's signal and the
    clip's window spans; an image row is features.image_encoder's on that frame's crop."""
    store, models = hf_store
    s = ShardReader(find_shards(store, "demo")[0])
    c = int(np.flatnonzero(s.clips["status"] == "ok")[0])
    w = s.windows
    idx = np.flatnonzero(w["clip"] == c)
    spans = np.stack([w["t_begin"][idx], w["t_end"][idx]], axis=1).astype(np.float64)
    model = wav2vec.load_speech_model(str(models["wav2vec"]))
    windows, whole = wav2vec.speech_embeddings(model, [np.asarray(s.waveform(c), np.float32)], [spans])[0]
    np.testing.assert_allclose(s.clip_feature("wav2vec", c)["value"], whole, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.stack([s.window_feature("wav2vec_window", int(i)) for i in idx]), windows,
                               rtol=1e-4, atol=1e-5)
    found = np.flatnonzero(s.video(c, "found"))
    enc = image_encoder.load_image_model(str(models["image_encoder"]))
    ref = image_encoder.image_embeddings(enc, s.video(c, "crop_small", rows=found[:2]))
    np.testing.assert_allclose(s.video(c, "image_encoder", rows=found[:2]), ref, rtol=1e-4, atol=1e-5)
    assert not s.video(c, "image_encoder")[~s.video(c, "found").astype(bool)].any()


def _wav2vec_batch(store, models, stack):
    """The Wav2Vec task of batch 0 of the hf_store build and its opened inputs, as ``run`` has them."""
    from pipeline.embeddings import Wav2Vec

    task = Wav2Vec(dataset="demo", batch=0, batch_size=8, store=str(store), weights=str(models["wav2vec"]),
                   manifest=os.path.join(ROOT, "data_manifest.yaml"))
    assert task.complete()   # the same parameters as the build
    return task, task.read_inputs(stack)


def test_wav2vec_runs_the_batch_clips_together_and_one_by_one_when_that_fails(hf_store, monkeypatch, request):
    """``infer_batch_size`` clips share a forward pass in a build (one extractor call for the batch);
    each clip's vectors equal those of the clip run alone (padding and the attention mask included).
    Should the batched call fail, the clips run one by one: the clip that fails alone is recorded
    with its reason, the others keep theirs."""
    store, models = hf_store
    stack = contextlib.ExitStack()
    request.addfinalizer(stack.close)
    task, inputs = _wav2vec_batch(store, models, stack)
    clips = task.clips()
    ok = [i for i, s in enumerate(task.start_status(inputs)[0]) if s == "ok"]
    assert len(ok) >= 4
    alone = {i: task.compute(i, clips[i], inputs) for i in ok}
    real, calls = wav2vec.speech_embeddings, []

    def spy(speech, waveforms, spans, **kw):
        calls.append((len(waveforms), kw["batch_size"]))
        return real(speech, waveforms, spans, **kw)

    monkeypatch.setattr(wav2vec, "speech_embeddings", spy)
    assert task.clips_per_pass("cpu") == 1 and task.clips_per_pass("cuda:0") == 8   # infer_batch_size 0: auto
    task.infer_batch_size = -1
    with pytest.raises(ValueError, match="infer_batch_size must be >= 1"):   # the user's mistake: not per clip
        task.compute_batch(inputs)
    task.infer_batch_size = 4   # set: 4 clips per padded, attention-masked pass on any device
    results, status, reason = task.compute_batch(inputs)
    assert calls == [(len(ok), 4)]
    for i in ok:
        assert status[i] == "ok"
        for key in ("windows/wav2vec", "wav2vec/clip"):
            np.testing.assert_allclose(results[i][key], alone[i][key], rtol=1e-4, atol=1e-5)
    assert all(results[i] is None for i in range(len(clips)) if i not in ok)
    lengths = np.diff(inputs["waveform"]["audio"]["offsets"])
    target = int(lengths[ok[1]])   # a clip the model refuses, recognised by its waveform's length
    assert (lengths[ok] == target).sum() == 1

    def refuses_one(speech, waveforms, spans, **kw):
        if any(len(w) == target for w in waveforms):
            raise RuntimeError("made up for the test")
        return real(speech, waveforms, spans, **kw)

    monkeypatch.setattr(wav2vec, "speech_embeddings", refuses_one)
    results, status, reason = task.compute_batch(inputs)
    assert status[ok[1]] == "error" and reason[ok[1]] == "wav2vec: RuntimeError: made up for the test"
    assert results[ok[1]] is None
    for i in ok:
        if i != ok[1]:
            assert status[i] == "ok"
            np.testing.assert_array_equal(results[i]["wav2vec/clip"], alone[i]["wav2vec/clip"])


def test_a_missing_model_folder_stops_the_stage_with_the_embeddings_message(full_store, emb_weights, tmp_path,
                                                                              caplog):
    store = tmp_path / "store"
    link_tree(full_store, store)
    args = ["--Shard-embeddings", '["descriptor", "waveform", "wav2vec"]', "--Wav2Vec-weights", str(tmp_path / "nowhere")]
    with pytest.raises(AssertionError, match="failed"):
        fresh_build(store, *emb_args(emb_weights), *args, manifest=os.path.join(ROOT, "data_manifest.yaml"))
    assert f"wav2vec: the speech model folder '{tmp_path / 'nowhere'}' does not exist" in caplog.text
    assert "under [Wav2Vec] in workflows.cfg" in caplog.text and 'leave "wav2vec" out of `[Shard] embeddings`' in caplog.text


def test_each_embedding_is_three_files():
    """The extractor declares its shard features; the stage and its config section are the rest."""
    for name, module in (("wav2vec", wav2vec), ("image_encoder", image_encoder), ("bert", bert)):
        assert {f["embedding"] for f in module.SHARD_FEATURES} == {name}
        assert all(registry.BY_NAME[f["name"]].stage == f["stage"] for f in module.SHARD_FEATURES)
    cfg = open(os.path.join(ROOT, "workflows.cfg")).read()
    assert all(f"[{s}]" in cfg for s in ("Wav2Vec", "ImageEncoder", "BERT"))
