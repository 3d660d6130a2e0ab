import numpy as np
import torch
from sklearn.svm import SVC

from models.avef import AVEF, RBM, TABLE2, AVEFConfig, label_map

TINY = dict(n_classes=3, audio_size=67, audio_channels=(8, 16, 16, 16, 16), visual_size=32,
            visual_channels=(4, 8, 8, 8, 16, 16, 16, 16), fc=64, dbn_hidden=(32, 16), small_crops=True)


def test_published_layer_shapes():
    with torch.device("meta"):   # the paper's sizes, no memory or compute
        m = AVEF(AVEFConfig())
        out = m({"logmel": torch.zeros(2, 3, 64, 64), "crop": torch.zeros(2, 3, 16, 173, 173)})
    assert out["logits"].shape == (2, 6) and out["embedding"].shape == (2, 2048)
    a = m.audio.features
    assert [tuple(l.weight.shape) for l in a if isinstance(l, torch.nn.Conv2d)] == [
        (96, 3, 11, 11), (256, 96, 5, 5), (384, 256, 3, 3), (384, 384, 3, 3), (256, 384, 3, 3)]
    assert m.audio.fc6.in_features == 256 * 6 * 6 and m.audio.fc7.out_features == 4096   # AlexNet on 227
    assert len([l for l in m.visual.features if isinstance(l, torch.nn.Conv3d)]) == 8     # conv1a..conv5b
    assert m.visual.fc6.in_features == 512 * 1 * 4 * 4 and m.visual.fc7.out_features == 4096  # C3D on 16x112x112
    assert [tuple(r.W.shape) for r in m.dbn.rbms] == [(8192, 4096), (4096, 2048)]          # DBN 8192-4096-2048-C
    assert m.dbn.out.in_features == 2048 and m.dbn.out.out_features == 6


def test_forward_backward_reaches_every_parameter():
    torch.manual_seed(0)
    m = AVEF(AVEFConfig(**TINY))
    b = {"logmel": torch.randn(4, 3, 64, 64), "crop_small": torch.rand(4, 3, 16, 72, 72),
         "label": torch.tensor([0, 1, 2, 0])}
    out = m(b)
    assert out["logits"].shape == (4, 3) and out["embedding"].shape == (4, 16)
    m.loss(out, b).backward()
    unused = {n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0}
    # only the separate networks' own fc8 heads (used in pre-training) and the RBMs' visible biases
    # (used by CD-1 only) get no gradient from the whole model's loss
    assert unused == {"audio.fc8.weight", "audio.fc8.bias", "visual.fc8.weight", "visual.fc8.bias",
                      "dbn.rbms.0.b", "dbn.rbms.1.b"}


def test_rbm_cd1_step_against_hand_computation():
    torch.manual_seed(1)
    rbm = RBM(6, 4)
    W, b, c = (x.detach().double().numpy().copy() for x in (rbm.W, rbm.b, rbm.c))
    v0 = (torch.rand(5, 6) > 0.5).float()
    u = torch.rand(5, 4)
    rbm.cd1(v0, lr=0.1, u=u)
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    v = v0.double().numpy()
    ph0 = sig(v @ W + c)
    h0 = (u.double().numpy() < ph0).astype(float)
    v1 = sig(h0 @ W.T + b)
    ph1 = sig(v1 @ W + c)
    np.testing.assert_allclose(rbm.W.detach().numpy(), W + 0.1 * (v.T @ ph0 - v1.T @ ph1) / 5, atol=1e-6)
    np.testing.assert_allclose(rbm.b.detach().numpy(), b + 0.1 * (v - v1).mean(0), atol=1e-6)
    np.testing.assert_allclose(rbm.c.detach().numpy(), c + 0.1 * (ph0 - ph1).mean(0), atol=1e-6)


def test_cd1_learns_structured_data():
    torch.manual_seed(0)
    protos = (torch.rand(3, 20) > 0.5).float()
    v = protos[torch.randint(0, 3, (300,))]
    v = torch.where(torch.rand_like(v) < 0.05, 1 - v, v)
    rbm = RBM(20, 8)
    first = [rbm.cd1(v[i:i + 10], lr=0.1) for i in range(0, 300, 10)]
    for _ in range(10):
        last = [rbm.cd1(v[i:i + 10], lr=0.1) for i in range(0, 300, 10)]
    assert np.mean(last) < 0.5 * np.mean(first)


def test_table2_mapping_and_svm():
    classes, mapping = label_map(AVEFConfig(emotion_model="arousal"), ["anger", "sadness", "neutral", "fear"])
    assert classes == ["low", "high"] and mapping == {"anger": 1, "sadness": 0, "fear": 1}  # neutral: not in Table 2
    _, mapping = label_map(AVEFConfig(emotion_model="valence"), list(TABLE2["valence"]["map"]))
    assert {k for k, v in mapping.items() if v == 1} == {"happiness", "surprise"}
    clf = AVEF(AVEFConfig(**TINY)).clip_classifier()
    assert isinstance(clf, SVC) and clf.kernel == "poly"
    # libsvm's defaults (the paper's toolkit): gamma = 1 / n_features, degree 3, coef0 0, C 1
    X = np.random.default_rng(0).normal(size=(40, 16)) * 3
    y = (X[:, 0] * X[:, 1] > 0).astype(int)
    libsvm = SVC(kernel="poly", degree=3, coef0=0.0, C=1.0, gamma=1 / 16).fit(X, y)
    np.testing.assert_allclose(clf.fit(X, y).decision_function(X), libsvm.decision_function(X), rtol=1e-6)


def test_init_keeps_the_shallow_layers_and_restarts_the_deep_ones(tmp_path):
    """§2.2: initialised on other corpora, "keep the shallow layers of each network and train the deep
    layers from scratch" (shallow: the convolutions and the first RBM, models.avef.SHALLOW)."""
    from models import avef
    from models.train import init_from, parse_args, save_checkpoint

    torch.manual_seed(0)
    source = AVEF(AVEFConfig(**TINY))
    save_checkpoint(tmp_path / "src.pt", name="avef", model=source, cfg=source.cfg, extra={})
    torch.manual_seed(1)
    target = AVEF(AVEFConfig(**TINY))
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    copied = init_from(target, tmp_path / "src.pt", keep=avef.SHALLOW)
    assert copied and all(k.startswith(avef.SHALLOW) for k in copied)
    src = source.state_dict()
    for k, v in target.state_dict().items():
        kept = k.startswith(avef.SHALLOW)
        assert torch.equal(v, src[k] if kept else fresh[k]), k
    assert {"audio.features.0.weight", "visual.features.0.weight", "dbn.rbms.0.W"} <= set(copied)
    assert not {"audio.fc6.weight", "visual.fc7.weight", "dbn.rbms.1.W", "dbn.out.weight"} & set(copied)
    assert len(init_from(AVEF(AVEFConfig(**TINY)), tmp_path / "src.pt")) == len(src)   # --init-layers all
    assert parse_args(["--model", "avef", "--dataset", "d", "--init", "x"]).init_layers == "shallow"


def test_channels_last_is_the_same_arithmetic():
    """``channels_last`` changes the memory layout of C3D only (NDHWC for cuDNN's tensor cores):
    the same weights give the same outputs and gradients."""
    torch.manual_seed(0)
    a = AVEF(AVEFConfig(**TINY))
    b = AVEF(AVEFConfig(**TINY, channels_last=True))
    b.load_state_dict(a.state_dict())
    assert b.visual.features[0].weight.is_contiguous(memory_format=torch.channels_last_3d)
    x = torch.randint(0, 256, (3, 3, 16, 72, 72), dtype=torch.uint8)
    ya, yb = a.eval().visual(x), b.eval().visual(x)
    torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5)
    ya.sum().backward()
    yb.sum().backward()
    torch.testing.assert_close(a.visual.features[0].weight.grad, b.visual.features[0].weight.grad, rtol=1e-4, atol=1e-4)
