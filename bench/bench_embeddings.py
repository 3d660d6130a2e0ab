"""Embeddings per second of each extractor: ``python bench/bench_embeddings.py [--device auto]
[--seconds 3] [--precision fp32]``.

Weights are random (the published files cannot be downloaded here); the speed of a network does
not depend on its values. Each extractor runs at its published size on real inputs:

* ``vggish``: 0.96 s log-mel patches (96×64) of the demo clip s1_anger_01, repeated; the
  log-mel front end is timed separately (``vggish_frontend``: patches/s from 16 kHz audio).
* ``vggface16_224``: VGG-16 face net at 224×224, layer conv5_3 (Lucas §3), on the demo's 173 px
  face crops (of the carphone video) resized on the device.
* ``vggface19_72``: the VGG-19 at 72×72 of Hsu & Wu (Table 2), layer fc7, on the 72 px crops.
* ``dlib_descriptor``: face chips (5 landmarks + ``get_face_chip``) and dlib's ResNet on the
  CPU (dlib-bin has no CUDA), per face.
* ``glove``: transcripts/s through tokenise + lookup in a 400,000 × 300 memory-mapped table.
* ``wav2vec2_base``, ``vit_b16_224``, ``bert_base``: the Hugging Face stages at base size
  (``hf_rates``; ``--no-hf`` leaves them out).

Each figure: items / s over at least ``--seconds`` of work after one warm-up batch. Prints one
JSON object with the device (GPU name), torch threads, batch sizes and precision.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from features import audio, embeddings, face, text, video, vggface, vggish  # noqa: E402

CLIP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "data", "demo",
                    "clips", "s1_anger_01.mp4")


def rate(fn, n_items: int, seconds: float) -> float:
    fn()  # warm-up
    done, start = 0, time.perf_counter()
    while True:
        fn()
        done += n_items
        if time.perf_counter() - start >= seconds:
            return done / (time.perf_counter() - start)


def hf_rates(ps: dict, *, audio, crops, device: str, precision: str, seconds: float, batch: int) -> None:
    """The Hugging Face stages at their base sizes (random weights saved with save_pretrained and
    loaded by the extractors, as a stage does): wav2vec 2.0 base (95 M) in seconds of 16 kHz audio
    per second, in clips of BAUM-1's mean 4.66 s; ViT-B/16 at 224 px in face crops per second;
    BERT-base in 100-token transcripts per second."""
    import transformers as tf

    from features import bert, image_encoder, wav2vec

    with tempfile.TemporaryDirectory() as tmp:
        tf.Wav2Vec2Model(tf.Wav2Vec2Config(feat_extract_norm="layer", do_stable_layer_norm=True)).save_pretrained(
            os.path.join(tmp, "w2v"))
        speech = wav2vec.load_speech_model(os.path.join(tmp, "w2v"), device=device)
        clip = np.resize(audio, int(4.66 * 16000)).astype(np.float32)
        clips, spans = [clip] * 8, [np.array([[0.0, 0.655], [0.34, 0.995]])] * 8
        ps["wav2vec2_base_audio_seconds"] = rate(lambda: wav2vec.speech_embeddings(
            speech, clips, spans, batch_size=8, device=device, precision=precision), int(8 * 4.66), seconds)
        del speech
        tf.ViTModel(tf.ViTConfig()).save_pretrained(os.path.join(tmp, "vit"))
        vit = image_encoder.load_image_model(os.path.join(tmp, "vit"), device=device)
        x = np.concatenate([crops] * (batch // len(crops) + 1))[:batch]
        ps["vit_b16_224_crops"] = rate(lambda: image_encoder.image_embeddings(
            vit, x, batch_size=batch, device=device, precision=precision), len(x), seconds)
        del vit
        folder = os.path.join(tmp, "bert")
        os.makedirs(folder)
        words = ["the", "library", "opens", "on", "monday", "after", "holiday"]
        with open(os.path.join(folder, "vocab.txt"), "w") as f:
            f.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
        tf.BertTokenizerFast(vocab_file=os.path.join(folder, "vocab.txt")).save_pretrained(folder)
        tf.BertModel(tf.BertConfig()).save_pretrained(folder)
        model, tok = bert.load_text_model(folder, device=device)
        sentences = [" ".join(words * 14)] * 32          # 98 words: a full 100-token row
        ps["bert_base_transcripts"] = rate(lambda: bert.token_vectors(
            model, tok, sentences, batch_size=32, device=device, precision=precision), len(sentences), seconds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--batch-audio", type=int, default=64)
    ap.add_argument("--batch-face", type=int, default=32)
    ap.add_argument("--no-hf", action="store_true", help="leave out the Hugging Face stages (wav2vec, ViT, BERT)")
    args = ap.parse_args()
    device = embeddings.pick_device(args.device)
    torch.manual_seed(0)
    out = {"device": device, "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
           "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "precision": args.precision,
           "batch_size": {"vggish": args.batch_audio, "vggface": args.batch_face}, "per_second": {}}
    ps = out["per_second"]

    # audio: the VGGish front end and network
    y, _ = audio.decode(CLIP, sr=16000, coef=0.0)
    y = np.tile(y, 3)
    ps["vggish_frontend_patches"] = rate(lambda: vggish.patches(vggish.log_mel(y=y)),
                                         len(vggish.patches(vggish.log_mel(y=y))), args.seconds)
    x = vggish.patches(vggish.log_mel(y=np.tile(y, 10)))
    x = np.concatenate([x] * (args.batch_audio // len(x) + 1))[: args.batch_audio]
    model = vggish.VGGish().eval().to(device)
    ps["vggish_patches"] = rate(lambda: embeddings.batched_forward(model, x, batch_size=args.batch_audio,
                                                                   device=device, precision=args.precision),
                                len(x), args.seconds)
    del model

    # faces: real crops of the carphone video
    frames, _, _ = video.read_video(CLIP)
    boxes, found, _ = face.track_faces(frames, detector=face.make_detector("hog", upsample=1), scale=1.0)
    big = np.stack([face.crop(frames[i], boxes[i], size=173) for i in np.flatnonzero(found)[: args.batch_face]])
    small = np.stack([face.crop(frames[i], boxes[i], size=72) for i in np.flatnonzero(found)[: args.batch_face]])
    for name, cfg, crops, layer in (("vggface16_224_conv5_3", vggface.VGGFaceConfig(), big, "conv5_3"),
                                    ("vggface19_72_fc7", vggface.VGGFaceConfig(depth=19, image_size=72, n_classes=7),
                                     small, "fc7")):
        net = vggface.VGGFace(cfg).eval()
        ps[name] = rate(lambda: vggface.face_embeddings(crops, model=net, layer=layer, batch_size=args.batch_face,
                                                        device=device, precision=args.precision),
                        len(crops), args.seconds)
        del net
    model_d, predictor = embeddings.load_face_descriptor()
    sel = np.isin(np.arange(len(frames)), np.flatnonzero(found)[:16])
    ps["dlib_chips"] = rate(lambda: embeddings.face_chips(frames, boxes, sel, predictor=predictor), 16, args.seconds)
    chips = embeddings.face_chips(frames, boxes, sel, predictor=predictor)
    ps["dlib_descriptor"] = rate(lambda: embeddings.face_descriptors(chips, model=model_d), 16, args.seconds)
    ps["dlib_descriptor_flip"] = rate(lambda: embeddings.face_descriptors(chips, model=model_d, flip=True), 16,
                                      args.seconds)  # the FaceDescriptor default: chip and mirror

    # text: a glove.6B-sized memory-mapped table
    with tempfile.TemporaryDirectory() as tmp:
        table = np.lib.format.open_memmap(os.path.join(tmp, "v.npy"), mode="w+", dtype=np.float32,
                                          shape=(400_000, 300))
        table[:] = np.random.default_rng(0).normal(size=(400_000, 300)).astype(np.float32)
        table.flush()
        vectors = np.load(os.path.join(tmp, "v.npy"), mmap_mode="r")
        vocab = {f"w{i}": i for i in range(400_000)}
        for i, w in enumerate(("the", "library", "opens", "on", "monday", ",", "after", "holiday", ".")):
            vocab[w] = i * 40_000
        sentences = ["The library opens on Monday, after the holiday."] * 64
        ps["glove_transcripts"] = rate(lambda: text.glove_transcripts(sentences, vocab=vocab, vectors=vectors),
                                       len(sentences), args.seconds)
    if not args.no_hf:
        hf_rates(ps, audio=y, crops=big, device=device, precision=args.precision, seconds=args.seconds,
                 batch=args.batch_face)
    out["per_second"] = {k: round(v, 1) for k, v in ps.items()}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
