"""The Hugging Face extractors at base size on a GPU: ``python bench/bench_hf_embeddings.py``.

wav2vec 2.0 base (seconds of 16 kHz audio per second, 32 clips of 3.1-5.2 s), ViT-B/16 at 224 px
(173 px face crops per second, batch 256), BERT-base (100-token transcripts per second, batch 256),
each in fp32 and bf16 in the same run (3 s of work per figure after a warm-up), and the largest
difference between batched clips (padding, attention mask) and one clip at a time. Random weights
saved with save_pretrained and loaded through the extractors, as the stages do; the speed of a
network does not depend on its values. Needs a CUDA GPU (bench_embeddings.py gives CPU figures)."""
import json, os, sys, tempfile, time
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numpy as np, torch
import transformers as tf
from features import bert, image_encoder, wav2vec

def rate(fn, n, seconds=3.0):
    fn(); torch.cuda.synchronize(); t0 = time.perf_counter(); k = 0
    while time.perf_counter() - t0 < seconds:
        fn(); k += 1
    torch.cuda.synchronize()
    return round(k * n / (time.perf_counter() - t0), 1)

out = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "transformers": tf.__version__}
rng = np.random.default_rng(0)
with tempfile.TemporaryDirectory() as tmp:
    tf.Wav2Vec2Model(tf.Wav2Vec2Config(feat_extract_norm="layer", do_stable_layer_norm=True)).save_pretrained(tmp + "/w")
    sp = wav2vec.load_speech_model(tmp + "/w", device="cuda")
    clips = [rng.normal(size=int(s * 16000)).astype(np.float32) * 0.1 for s in (4.66, 3.1, 5.2, 4.0)] * 8
    spans = [np.array([[0.0, 0.655], [0.34, 0.995]])] * len(clips)
    one = [wav2vec.speech_embeddings(sp, [c], [s], device="cuda")[0] for c, s in zip(clips[:4], spans[:4])]
    many = wav2vec.speech_embeddings(sp, clips[:4], spans[:4], batch_size=4, device="cuda")
    out["wav2vec_batched_max_abs_diff"] = float(max(np.abs(a[0] - b[0]).max() for a, b in zip(one, many)))
    secs = sum(len(c) for c in clips) / 16000
    for p in ("fp32", "bf16"):
        out[f"wav2vec2_base_audio_s_per_s_{p}"] = rate(lambda: wav2vec.speech_embeddings(sp, clips, spans, batch_size=32, device="cuda", precision=p), secs)
    del sp
    tf.ViTModel(tf.ViTConfig()).save_pretrained(tmp + "/v")
    vit = image_encoder.load_image_model(tmp + "/v", device="cuda")
    crops = rng.integers(0, 256, size=(256, 173, 173, 3), dtype=np.uint8)
    for p in ("fp32", "bf16"):
        out[f"vit_b16_224_crops_per_s_{p}"] = rate(lambda: image_encoder.image_embeddings(vit, crops, batch_size=256, device="cuda", precision=p), len(crops))
    del vit
    os.makedirs(tmp + "/b"); words = ["the", "library", "opens", "on", "monday", "after", "holiday"]
    open(tmp + "/b/vocab.txt", "w").write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tf.BertTokenizerFast(vocab_file=tmp + "/b/vocab.txt").save_pretrained(tmp + "/b")
    tf.BertModel(tf.BertConfig()).save_pretrained(tmp + "/b")
    m, tok = bert.load_text_model(tmp + "/b", device="cuda")
    sents = [" ".join(words * 14)] * 256
    for p in ("fp32", "bf16"):
        out[f"bert_base_transcripts_per_s_{p}"] = rate(lambda: bert.token_vectors(m, tok, sents, batch_size=256, device="cuda", precision=p), len(sents))
print(json.dumps(out, indent=1))
