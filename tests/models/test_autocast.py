"""Every model under bf16 autocast on the CPU (issue 23 item 1): the GPU path's dtype mix runs here,
so a dtype bug (an fp32 buffer meeting a bf16 activation) fails on CI's CPU, not on a GPU."""
import pytest
import torch

from models import avef, train
from tests.models import test_aclstm, test_avef, test_dlstm, test_perception, test_sincnet_text


def _avef():
    return avef.AVEF(avef.AVEFConfig(**test_avef.TINY)), {
        "logmel": torch.randn(4, 3, 64, 64), "crop_small": torch.rand(4, 3, 16, 72, 72),
        "label": torch.tensor([0, 1, 2, 0])}


CASES = {
    "avef": _avef,
    "aclstm": lambda: (test_aclstm.tiny(), test_aclstm.make_batch()),
    "dlstm": lambda: (test_dlstm.tiny(), test_dlstm.make_batch()),
    "perception": lambda: (test_perception.tiny(appearance_feature="descriptor", appearance_dim=5),
                           test_perception.make_batch()),
    **{f"sincnet_text-{f}": (lambda f=f: (test_sincnet_text.tiny(f), test_sincnet_text.make_batch()))
       for f in test_sincnet_text.S.FUSIONS},
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_train_step_and_prediction_under_cpu_bf16_autocast(name):
    torch.manual_seed(0)
    model, batch = CASES[name]()
    if name == "avef":   # oneDNN's bf16 Conv3d backward (torch 2.13 CPU) gives sporadic NaN weight
        torch.backends.mkldnn.enabled = False   # gradients (1 run in 12 here); a GPU uses cuDNN
    try:
        _step_and_predict(model, batch)
    finally:
        torch.backends.mkldnn.enabled = True


def _step_and_predict(model, batch):
    fp32 = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch)
    loss = model.loss(out, batch)
    assert torch.isfinite(loss), loss
    loss.backward()
    assert all(p.dtype == torch.float32 for p in model.parameters())          # master weights stay fp32
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    torch.optim.SGD(model.parameters(), lr=1e-3).step()
    assert any(not torch.equal(fp32[n], p) for n, p in model.named_parameters())
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        pred = model(batch)
    key = "logits" if "logits" in pred else next(iter(k for k in pred if torch.is_tensor(pred[k])))
    assert torch.isfinite(pred[key].float()).all()


@pytest.mark.parametrize("precision, expect", [("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", None)])
def test_precision_flag_chooses_the_autocast(precision, expect):
    ctx = train.autocast("cpu", precision)
    assert (ctx.fast_dtype if ctx._enabled else None) == expect
    assert train.grad_scaler("cpu", precision).is_enabled() == (precision == "fp16")   # fp16 scales the loss


def test_precision_defaults_bf16_on_a_gpu_fp32_on_a_cpu():
    assert train.default_precision("cuda:0") == "bf16" and train.default_precision("cpu") == "fp32"
    assert not train.autocast("cpu")._enabled
    assert train.parse_args(["--model", "dlstm", "--dataset", "demo", "--precision", "bf16"]).precision == "bf16"
    with pytest.raises(SystemExit):
        train.parse_args(["--model", "dlstm", "--dataset", "demo", "--precision", "fp8"])


def test_sincnet_text_trains_end_to_end_under_bf16(full_store, tmp_path):
    """The model that crashed on a GPU (``index_add_`` of bf16 chunk outputs into fp32 sums)."""
    from tests.models.test_train_all import SINCNET, train as run
    res = run(full_store, "sincnet_text", SINCNET, tmp_path, "--precision", "bf16")
    r = res["folds"][0]
    assert 0 <= r["UA"] <= 1 and all(torch.isfinite(torch.tensor(h["train_loss"])) for h in r["history"])

