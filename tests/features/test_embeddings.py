"""VGGish, VGGFace and dlib descriptor: published shapes and parameter counts, loaders on weight
files written here in the published formats, the VGGish input recipe, and dlib on real video."""
import os

import numpy as np
import pytest
import torch

from features import embeddings, vggface, vggish
from features.audio import preemphasis
from features.errors import ParameterError
from tests.conftest import DEMO

CARPHONE = os.path.join(DEMO, "clips", "s1_anger_01.mp4")  # the carphone video (PROVENANCE.md)


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# -- VGGish --------------------------------------------------------------------------------------
def test_vggish_has_the_published_layers_and_72_1M_parameters():
    m = vggish.VGGish()
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    # harritaylor/torchvggish key names and shapes (conv 64-128-256-256-512-512, fc 12288-4096-4096-128)
    assert shapes == {
        "features.0.weight": (64, 1, 3, 3), "features.0.bias": (64,),
        "features.3.weight": (128, 64, 3, 3), "features.3.bias": (128,),
        "features.6.weight": (256, 128, 3, 3), "features.6.bias": (256,),
        "features.8.weight": (256, 256, 3, 3), "features.8.bias": (256,),
        "features.11.weight": (512, 256, 3, 3), "features.11.bias": (512,),
        "features.13.weight": (512, 512, 3, 3), "features.13.bias": (512,),
        "embeddings.0.weight": (4096, 512 * 6 * 4), "embeddings.0.bias": (4096,),
        "embeddings.2.weight": (4096, 4096), "embeddings.2.bias": (4096,),
        "embeddings.4.weight": (128, 4096), "embeddings.4.bias": (128,)}
    convs = sum(9 * a * b + b for a, b in [(1, 64), (64, 128), (128, 256), (256, 256), (256, 512), (512, 512)])
    fcs = sum(a * b + b for a, b in [(12288, 4096), (4096, 4096), (4096, 128)])
    assert n_params(m) == convs + fcs == 72_141_184  # "72.1M" (Hershey et al. 2017)


def test_vggish_loader_round_trip_and_forward(tmp_path):
    torch.manual_seed(0)
    state = {k: torch.randn_like(v) * 0.01 for k, v in vggish.VGGish().state_dict().items()}
    path = tmp_path / "vggish-10086976.pth"
    torch.save(state, path)
    m = vggish.load_vggish(path)
    for k, v in m.state_dict().items():
        assert torch.equal(v, state[k])
    x = np.random.default_rng(0).normal(size=(2, 96, 64)).astype(np.float32)
    y = embeddings.batched_forward(m, x, batch_size=1)
    assert y.shape == (2, 128) and np.all(y >= 0)  # ReLU on the embedding layer (torchvggish)
    # the flatten is TensorFlow's (H, W, C): recompute the first fc by hand from the conv output
    with torch.inference_mode():
        conv = m.features(torch.from_numpy(x[:1]).unsqueeze(1))[0]  # (512, 6, 4)
        fc0 = state["embeddings.0.weight"] @ conv.permute(1, 2, 0).reshape(-1) + state["embeddings.0.bias"]
        np.testing.assert_allclose(m.embeddings[:2](conv.permute(1, 2, 0).reshape(1, -1))[0], fc0.relu(),
                                   rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(y[1], embeddings.batched_forward(m, x[1:], batch_size=4)[0], rtol=1e-5, atol=1e-6)


def test_vggish_loader_names_the_bad_key(tmp_path):
    state = vggish.VGGish().state_dict()
    state["embeddings.4.weight"] = torch.zeros(64, 4096)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ParameterError, match=r"embeddings.4.weight: file has shape \(64, 4096\)"):
        vggish.load_vggish(tmp_path / "bad.pth")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ParameterError, match="missing keys"):
        vggish.load_vggish(tmp_path / "other.pth")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # the hostile file is protocol 4, on purpose
def test_loader_never_unpickles_arbitrary_objects(tmp_path):
    import pickle

    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"x": ParameterError("not a tensor")}, f)
    with pytest.raises(ParameterError, match="weights_only=True"):
        embeddings.load_state_dict(tmp_path / "evil.pth")


def test_vggish_mel_matrix_follows_the_htk_triangles():
    w = vggish.mel_matrix()
    assert w.shape == (257, 64) and np.all(w[0] == 0)
    freqs = np.linspace(0, 8000, 257)
    mel = 1127 * np.log(1 + freqs / 700)
    e = np.linspace(1127 * np.log(1 + 125 / 700), 1127 * np.log(1 + 7500 / 700), 66)
    for k in (0, 20, 63):  # each band: 0 outside its edges, rising then falling linearly in mel
        inside = (mel > e[k]) & (mel < e[k + 2])
        assert np.all(w[~inside, k] == 0) and np.all(w[inside, k] > 0)
        up = inside & (mel <= e[k + 1])
        np.testing.assert_allclose(w[up, k], (mel[up] - e[k]) / (e[k + 1] - e[k]))
    used = freqs[np.flatnonzero(w.sum(1))]
    assert used[0] > 125 and used[-1] < 7500  # nothing outside 125-7500 Hz


def test_vggish_log_mel_of_a_tone_and_its_framing():
    sr, f0 = 16000, 1000.0
    y = 0.5 * np.sin(2 * np.pi * f0 * np.arange(int(2.5 * sr)) / sr)
    mel = vggish.log_mel(y=y, sr=sr)
    assert mel.shape == (1 + (len(y) - 400) // 160, 64)
    e = np.linspace(1127 * np.log(1 + 125 / 700), 1127 * np.log(1 + 7500 / 700), 66)[1:-1]
    peak_band = np.argmin(np.abs(e - 1127 * np.log(1 + f0 / 700)))
    assert np.all(np.abs(mel.argmax(axis=1) - peak_band) <= 1)
    # frame 10 by hand: periodic Hann, |rfft| (magnitude, not power), 512 points
    frame = y[1600:2000] * (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400))
    np.testing.assert_allclose(mel[10], np.log(np.abs(np.fft.rfft(frame, 512)) @ vggish.mel_matrix() + 0.01),
                               rtol=1e-5)
    p = vggish.patches(mel)
    assert p.shape == (2, 96, 64) and np.array_equal(p[1], mel[96:192])  # 0.96 s hop, remainder dropped
    np.testing.assert_allclose(vggish.patch_centers(2), [0.4875, 1.4475])
    with pytest.raises(ParameterError, match="16 kHz"):
        vggish.log_mel(y=y, sr=8000)


def test_window_patches_are_centred_and_silence_padded():
    mel = np.arange(300 * 64, dtype=np.float32).reshape(300, 64)
    out = vggish.centered_patches(mel, t_center=[1.5, 0.1])
    start = round((1.5 - 0.4875) / 0.01)  # the patch spans 95 · 10 ms + 25 ms = 975 ms
    np.testing.assert_array_equal(out[0], mel[start:start + 96])
    # 0.1 s: the patch starts 39 frames before the clip; those rows are log(0.01), digital silence
    assert np.all(out[1][:39] == np.float32(np.log(0.01))) and np.array_equal(out[1][39:], mel[:57])


def test_pca_postprocess_matches_the_published_formula(tmp_path):
    rng = np.random.default_rng(1)
    vectors, means = rng.normal(size=(128, 128)), rng.normal(size=128)
    np.savez(tmp_path / "vggish_pca_params.npz", pca_eigen_vectors=vectors, pca_means=means.reshape(128, 1))
    v, m = vggish.load_pca_params(tmp_path / "vggish_pca_params.npz")
    e = rng.normal(size=(5, 128)) * 0.05
    q = vggish.postprocess(e, pca_eigen_vectors=v, pca_means=m)
    ref = np.round((np.clip(vectors @ (e.T - means[:, None]), -2, 2).T + 2) * 255 / 4)  # torchvggish Postprocessor
    assert q.dtype == np.uint8 and np.array_equal(q, ref.astype(np.uint8))
    np.savez(tmp_path / "bad.npz", pca_means=means)
    with pytest.raises(ParameterError, match="pca_eigen_vectors"):
        vggish.load_pca_params(tmp_path / "bad.npz")


# -- VGGFace -------------------------------------------------------------------------------------
@pytest.mark.parametrize("depth, n_classes, expected", [
    (16, 1000, 138_357_544),   # VGG-16 "138M" (Simonyan & Zisserman 2015, Table 2; torchvision vgg16)
    (19, 1000, 143_667_240),   # VGG-19 "144M" (ibid.; torchvision vgg19)
    (16, 2622, 145_002_878),   # VGG-Face (Parkhi et al. 2015): the same with a 2,622-way fc8
])
def test_vggface_parameter_counts_match_the_published_vgg(depth, n_classes, expected):
    m = vggface.VGGFace(vggface.VGGFaceConfig(depth=depth, n_classes=n_classes))
    assert n_params(m) == expected


def test_vggface_dag_round_trip_layers_and_hsu_wu_72px(tmp_path):
    cfg = vggface.VGGFaceConfig(depth=19, image_size=72, n_classes=7)  # Hsu & Wu Table 2
    m = vggface.VGGFace(cfg)
    sd = m.state_dict()
    assert tuple(sd["fc6.weight"].shape) == (4096, 512 * 2 * 2) and "conv5_4.weight" in sd
    assert [k for k in sd if k.startswith("conv")][:4] == ["conv1_1.weight", "conv1_1.bias", "conv1_2.weight",
                                                             "conv1_2.bias"]
    torch.manual_seed(0)
    state = {k: torch.randn_like(v) * 0.02 for k, v in sd.items()}
    torch.save(state, tmp_path / "vgg19_face_72.pth")
    loaded = vggface.load_vggface(tmp_path / "vgg19_face_72.pth", image_size=72)
    assert loaded.config.depth == 19 and loaded.config.n_classes == 7
    crops = np.random.default_rng(0).integers(0, 256, (3, 72, 72, 3), dtype=np.uint8)
    dims = {"conv5_4": 512, "pool5": 2048, "fc6": 4096, "fc7": 4096}
    for layer, d in dims.items():
        out = vggface.face_embeddings(crops, model=loaded, layer=layer, batch_size=2)
        assert out.shape == (3, d) and vggface.output_dim(loaded.config, layer) == d
    # pool5 flattened (C, H, W) then fc6 + ReLU gives fc6 (the vgg_face_dag forward)
    pool5 = torch.from_numpy(vggface.face_embeddings(crops, model=loaded, layer="pool5"))
    fc6 = torch.relu(pool5 @ state["fc6.weight"].T + state["fc6.bias"]).numpy()
    np.testing.assert_allclose(vggface.face_embeddings(crops, model=loaded, layer="fc6"), fc6, rtol=1e-3, atol=1e-3)
    # the mean subtracted is the VGG-Face meta mean (RGB)
    x = loaded.preprocess(torch.full((1, 72, 72, 3), 129, dtype=torch.uint8))
    np.testing.assert_allclose(x[0, :, 0, 0].numpy(), 129 - np.array(vggface.MEAN_RGB), rtol=1e-6)


def test_vggface_torchvision_keys_and_wrong_image_size(tmp_path):
    """A torchvision-style VGG-16 file (features.N / classifier.N) loads under the dag names; a
    file whose fc6 does not fit the image size is refused with the key and shapes."""
    tiny = vggface.VGGFaceConfig(depth=16, image_size=64, widths=(4, 4, 8, 8, 8), fc=(16, 16), n_classes=5)
    m = vggface.VGGFace(tiny)
    names = [n for n in m.state_dict() if n.startswith("conv")]
    idx = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]  # torchvision vgg16 features indices
    tv = {}
    for j, conv in enumerate(dict.fromkeys(n.rsplit(".", 1)[0] for n in names)):
        for p in ("weight", "bias"):
            tv[f"features.{idx[j]}.{p}"] = torch.randn_like(m.state_dict()[f"{conv}.{p}"])
    for i, fc in zip((0, 3, 6), ("fc6", "fc7", "fc8")):
        for p in ("weight", "bias"):
            tv[f"classifier.{i}.{p}"] = torch.randn_like(m.state_dict()[f"{fc}.{p}"])
    torch.save({"state_dict": tv}, tmp_path / "tv.pth")
    loaded = vggface.load_vggface(tmp_path / "tv.pth", image_size=64)
    assert torch.equal(loaded.conv5_3.weight, tv["features.28.weight"])
    assert torch.equal(loaded.fc8.bias, tv["classifier.6.bias"])
    with pytest.raises(ParameterError, match=r"fc6.weight: file has shape \(16, 32\)"):
        vggface.load_vggface(tmp_path / "tv.pth", image_size=224)


def test_vggface_layer_names_are_checked():
    with pytest.raises(ParameterError, match="layer must be"):
        vggface.layer_name("fc8", 16)


# -- helpers ---------------------------------------------------------------------------------------
def test_deemphasis_inverts_preemphasis():
    y = np.random.default_rng(0).uniform(-1, 1, 48000).astype(np.float32)
    np.testing.assert_allclose(embeddings.deemphasis(preemphasis(y, coef=0.97), coef=0.97), y, atol=2e-5)
    w = embeddings.sincnet_waveform(y=0.25 * y, normalize="peak")
    assert np.isclose(np.abs(w).max(), 1.0) and np.allclose(w * np.abs(0.25 * y).max(), 0.25 * y, atol=1e-6)
    assert np.array_equal(embeddings.sincnet_waveform(y=np.zeros(5), normalize="peak"), np.zeros(5))


@pytest.mark.parametrize("coef", [0.5, 0.97, 0.999])
@pytest.mark.parametrize("n", [1, 63, 64, 65, 16001])
def test_deemphasis_equals_scipy_lfilter(coef, n):
    import scipy.signal

    y = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    ref = scipy.signal.lfilter([1.0], [1.0, -coef], y.astype(np.float64))
    np.testing.assert_allclose(embeddings.deemphasis(y, coef=coef), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_device_and_precision_rules():
    assert embeddings.pick_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert embeddings.autocast_dtype("fp32", "cpu") is None
    with pytest.raises(ParameterError, match="needs a GPU"):
        embeddings.autocast_dtype("bf16", "cpu")
    with pytest.raises(ParameterError, match="precision must be"):
        embeddings.autocast_dtype("int8", "cpu")


# -- dlib descriptor on the real carphone video ---------------------------------------------------
def test_dlib_descriptors_of_one_person_lie_within_0_6():
    from features import face, video

    frames, _, _ = video.read_video(CARPHONE)
    boxes, found, _ = face.track_faces(frames, detector=face.make_detector("hog", upsample=1), scale=1.0)
    sel = np.flatnonzero(found)[::6]  # 16 frames across the 3.2 s clip
    assert len(sel) >= 12
    model, predictor = embeddings.load_face_descriptor()
    chips = embeddings.face_chips(frames, boxes, np.isin(np.arange(len(frames)), sel), predictor=predictor)
    assert chips.shape == (len(sel), 150, 150, 3)
    d = embeddings.face_descriptors(chips, model=model, flip=True)
    assert d.shape == (len(sel), 128)
    plain = embeddings.face_descriptors(chips, model=model)
    mirror = embeddings.face_descriptors(np.ascontiguousarray(chips[:, :, ::-1]), model=model)
    np.testing.assert_allclose(d, (plain + mirror) / 2, rtol=0, atol=1e-6)  # flip = mean with the mirror's

    def pairs(x):
        return np.linalg.norm(x[:, None] - x[None], axis=-1)[np.triu_indices(len(x), 1)]

    # the carphone face is ~52 px, upscaled to dlib's 150 px chip: with the mirror average every
    # pair of the 16 frames lies within dlib's 0.6 same-person threshold (without it one pair is
    # 0.61); the mirror average brings the pairs closer
    assert pairs(d).max() < embeddings.DLIB_SAME_PERSON
    assert np.median(pairs(d)) < np.median(pairs(plain)) and np.median(pairs(d)) < 0.5
    assert np.all(np.linalg.norm(d - d.mean(0), axis=1) < embeddings.DLIB_SAME_PERSON)
    # a chip that is not this face (the frame's top-left background, scaled up) lies beyond 0.6
    bg = np.ascontiguousarray(np.repeat(np.repeat(frames[sel[0]][:50, :50], 3, 0), 3, 1)[:150, :150])
    other = embeddings.face_descriptors(bg[None], model=model)[0]
    assert np.linalg.norm(other - d.mean(0)) > embeddings.DLIB_SAME_PERSON


def test_dlib_descriptors_of_every_carphone_frame():
    """All 96 frames, mirror-averaged: every frame within 0.6 of the person's mean descriptor and
    98 % of the 4,560 pairs within 0.6 of each other. Of the 82 pairs beyond it (up to 0.68), 67
    hold one of the shouting, wide-open-mouth frames 7-10 and 16 the clip's last frame (the face
    is 53 px wide)."""
    from features import face, video

    frames, _, _ = video.read_video(CARPHONE)
    boxes, found, _ = face.track_faces(frames, detector=face.make_detector("hog", upsample=1), scale=1.0)
    assert found.all()
    model, predictor = embeddings.load_face_descriptor()
    d = embeddings.face_descriptors(embeddings.face_chips(frames, boxes, found, predictor=predictor),
                                    model=model, flip=True)
    pair = np.linalg.norm(d[:, None] - d[None], axis=-1)
    far = np.argwhere(np.triu(pair >= embeddings.DLIB_SAME_PERSON, 1))
    assert np.all(np.linalg.norm(d - d.mean(0), axis=1) < embeddings.DLIB_SAME_PERSON)
    assert len(far) <= 0.02 * len(d) * (len(d) - 1) / 2 and pair.max() < 0.7
    assert np.isin(far, np.arange(7, 11)).any(axis=1).mean() >= 0.75  # most have a frame of the shout


def test_a_model_folder_is_hashed_once_until_a_file_changes(tmp_path, monkeypatch):
    """Every batch task puts the folder's sha256 in its digest: the folder is read once per
    process, and again only when a file's size or mtime changes."""
    from features import hashing

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"\0" * 1000)
    expected = hashing.tree_sha256(folder)
    calls = []
    real = hashing.sha256_file
    monkeypatch.setattr(hashing, "sha256_file", lambda p, *a: calls.append(p) or real(p, *a))
    assert embeddings.folder_sha256(folder) == expected and len(calls) == 2   # both files read
    assert embeddings.folder_sha256(folder) == expected and len(calls) == 2   # the second time: none
    (folder / "model.safetensors").write_bytes(b"\1" * 1000)                  # same size: the mtime tells
    os.utime(folder / "model.safetensors", ns=(1, 1))
    changed = embeddings.folder_sha256(folder)
    assert changed != expected and changed == real_tree(folder, real) and len(calls) == 4


def real_tree(folder, sha):
    import hashlib

    h = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        h.update(name.encode() + b"\0" + sha(os.path.join(folder, name)).encode())
    return h.hexdigest()
