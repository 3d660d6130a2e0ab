"""Progress and control of ``models.train`` (issue 23 item 4): one line per epoch of every phase
with loss, metric, samples/s and ETA; ``--epochs`` bounds the main phase and ``--net-epochs`` the
pre-training; Ctrl-C leaves a ``last.pt`` that loads and exits with 130; ``--resume`` continues a
fold to the result of an uninterrupted run. Tiny widths, one LOSO fold, a few epochs."""
import contextlib
import json
import logging
import os
import re
import signal

import numpy as np
import pytest
import torch

from models import layers, progress, train
from tests.models.test_train_all import AVEF, PERCEPTION, SINCNET

LINE = re.compile(r"^(?:loso-s1 )?(?P<phase>\S+) epoch (?P<k>\d+)/(?P<n>\d+): (?P<rest>.*)$")
# AVEF without the tiny pre-training epochs of test_train_all (--net-epochs sets them here)
AVEF_NETS = [s for s in AVEF if not s.startswith(("net_epochs=", "rbm_epochs="))]
RUNS = {"avef": AVEF_NETS + ["rbm_epochs=1"], "sincnet_text": [s for s in SINCNET if not s.startswith("pretrain_")],
        "perception": PERCEPTION}


def argv(store, model, out, *extra, epochs=4):
    a = ["--model", model, "--dataset", "demo", "--protocol", "loso", "--fold", "0", "--epochs", str(epochs),
         "--net-epochs", "2", "--store", str(store), "--out", str(out), "--threads", "1"]
    for s in RUNS[model]:
        a += ["--set", s]
    return a + list(extra)


@contextlib.contextmanager
def lines():
    """The messages of the ``models.train`` logger at INFO while the block runs."""
    got, log = [], logging.getLogger("models.train")
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: got.append(record.getMessage())
    old = log.level
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    try:
        yield got
    finally:
        log.removeHandler(handler)
        log.setLevel(old)


def epochs_by_phase(messages) -> dict:
    out = {}
    for m in messages:
        hit = LINE.match(m)
        if hit:
            out.setdefault(hit["phase"], []).append(hit)
    return out


def fold_dir(out, model):
    return out / model / "demo" / "loso" / "loso-s1"


# -- the progress helper -------------------------------------------------------------------------------
def test_a_progress_line_has_loss_metric_rate_and_eta(monkeypatch):
    clock = iter([0.0, 2.0, 6.0, 8.0])
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    with lines() as got, progress.context("loso-s1"):
        p = progress.Progress("audio_net", 3, 100, metric="accuracy")
        first = p.epoch(loss=1.5, metric=0.25)
        second = p.epoch(loss=1.25, metric=0.5, samples=80, val_loss=float("nan"))
    assert got[0] == "loso-s1 audio_net: 3 epochs of 100 samples"
    assert first == "loso-s1 audio_net epoch 1/3: loss 1.5000, accuracy 0.2500, 50 samples/s, ETA 00:04"
    # the ETA: the remaining epoch times the mean of the last epochs (2 s, 4 s); NaN figures left out
    assert second == "loso-s1 audio_net epoch 2/3: loss 1.2500, accuracy 0.5000, 20 samples/s, ETA 00:03"
    assert got[1:] == [first, second]
    assert progress.clock(3725) == "1:02:05" and progress.clock(float("nan")) == "--:--"


def test_fit_logs_every_epoch_under_a_phase_named_after_its_loss():
    """``layers.fit`` (the pre-training loop of SincNet+text and ACLSTM's NTN): one line per epoch,
    named by ``phase`` or by the loss function; optimiser groups with their own rates."""
    torch.manual_seed(0)
    w, v = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(3))
    batches = [{"x": torch.randn(4, 3), "label": torch.zeros(4, dtype=torch.long)} for _ in range(2)]

    def audio_loss(batch):
        return ((batch["x"] @ w - 1) ** 2).mean()

    with lines() as got:
        hist = layers.fit([w], audio_loss, batches, "cpu", epochs=3, lr=0.1)
        layers.fit([{"params": [v], "lr": 0.5}], lambda b: ((b["x"] @ v - 1) ** 2).mean(), batches, "cpu",
                   epochs=2, lr=0.1, phase="text_net")
    by = epochs_by_phase(got)
    assert [int(h["k"]) for h in by["audio"]] == [1, 2, 3] and len(by["text_net"]) == 2
    assert len(hist) == 3 and hist[-1] < hist[0]
    assert all(re.search(r"loss [\d.]+, \d+ samples/s, ETA \d\d:\d\d$", h["rest"]) for h in by["audio"])
    assert float(v.detach().abs().sum()) > 0


def test_a_checkpoint_being_written_finishes_before_ctrl_c():
    done = []
    old = signal.signal(signal.SIGINT, signal.default_int_handler)   # another test may have left its own
    try:
        with pytest.raises(KeyboardInterrupt):
            with train._DeferSigint():
                os.kill(os.getpid(), signal.SIGINT)
                done.append("saved")
        assert done == ["saved"] and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, old)


def test_help_names_epochs_net_epochs_and_resume(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    out = capsys.readouterr().out
    assert all(o in out for o in ("--epochs N", "--net-epochs N", "--resume", "--checkpoint-every N"))
    assert train.pretrain_overrides(train.models.load("avef"), 3) == {"net_epochs": 3, "rbm_epochs": 3}
    assert train.pretrain_overrides(train.models.load("perception"), 3) == {}


# -- every phase of a training run ---------------------------------------------------------------------
RESUMED = [("avef", 0), ("sincnet_text", 0), ("perception", 0), ("perception", 2)]   # (model, DataLoader workers)


@pytest.fixture(scope="module")
def straight(full_store, tmp_path_factory):
    """Uninterrupted runs of 4 epochs (--net-epochs 2) and their log messages, per model (and with
    2 DataLoader workers: persistent workers draw the loader's seed once, so the shuffles differ)."""
    runs = {}
    for model, workers in RESUMED:
        out = tmp_path_factory.mktemp(f"straight-{model}-{workers}")
        with lines() as got:
            res = train.main(argv(full_store, model, out, "--num-workers", str(workers)))
        runs[model, workers] = (res["folds"][0], got, out)
        if not workers:
            runs[model] = runs[model, workers]
    return runs


def test_every_phase_of_avef_logs_each_epoch_and_net_epochs_bounds_the_pretraining(straight):
    """AVEF: 2 epochs (--net-epochs 2) of the audio- and visual-net, 1 of each RBM (--set
    rbm_epochs=1 wins over --net-epochs), the DBN input pass, 4 epochs (--epochs 4) of the whole
    model, the SVM; each line with samples/s and ETA, and a first line that announces the plan."""
    r, got, out = straight["avef"]
    by = epochs_by_phase(got)
    assert {k: len(v) for k, v in by.items()} == {"audio_net": 2, "visual_net": 2, "dbn_input": 1, "rbm-1": 1,
                                                  "rbm-2": 1, "train": 4, "svm": 1}
    for phase, hits in by.items():
        assert [int(h["k"]) for h in hits] == list(range(1, len(hits) + 1))
        assert all(re.search(r"\d+ samples/s, ETA \d\d:\d\d$", h["rest"]) for h in hits), phase
    assert all(re.match(r"loss [\d.]+, accuracy [\d.]+, ", h["rest"]) for h in by["audio_net"] + by["visual_net"])
    assert all(re.match(r"loss [\d.]+, ", h["rest"]) for h in by["rbm-1"] + by["train"])
    assert re.match(r"training accuracy [\d.]+, ", by["svm"][0]["rest"])
    plan = [i for i, g in enumerate(got) if g.startswith("loso-s1: pre-training net_epochs=2, rbm_epochs=1 "
                                                          "(--net-epochs), then 4 training epochs (--epochs)")]
    assert plan and plan[0] < got.index(by["audio_net"][0].string)
    assert r["config"]["net_epochs"] == 2 and r["config"]["rbm_epochs"] == 1 and r["epochs_run"] == 4
    assert [len(r["pretrain"][k]) for k in ("audio_net", "visual_net")] == [2, 2]
    assert not (fold_dir(out, "avef") / "last.pt").exists()   # removed once the fold is complete


def test_the_pretraining_networks_and_the_validated_main_phase_log_each_epoch(straight):
    for model, phases in (("sincnet_text", {"audio": 2, "text": 2, "train": 4}), ("perception", {"train": 4})):
        r, got, _ = straight[model]
        by = epochs_by_phase(got)
        assert {k: len(v) for k, v in by.items()} == phases
        assert all(re.match(r"loss [\d.]+, val loss [\d.]+, val (UA|WA) [\d.]+, \d+ samples/s, ETA \d\d:\d\d$",
                            h["rest"]) for h in by["train"])
        assert r["config"].get("pretrain_epochs", 2) == 2


# -- Ctrl-C and --resume -------------------------------------------------------------------------------
def interrupt_after(monkeypatch, epochs: int):
    """Ctrl-C at the start of main epoch ``epochs + 1`` (from the trainer's epoch loop)."""
    calls, real = [], train.train_epoch

    def epoch(*a, **kw):
        calls.append(1)
        if len(calls) > epochs:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(train, "train_epoch", epoch)


@pytest.mark.parametrize("model, workers", RESUMED)
def test_ctrl_c_leaves_a_loadable_checkpoint_and_resume_gives_the_uninterrupted_result(
        model, workers, straight, full_store, tmp_path, monkeypatch, capsys):
    """4 epochs straight vs. Ctrl-C after epoch 2 then --resume to 4: the same history (1e-6), best
    epoch and test predictions; the resumed run does not pre-train again. With DataLoader workers
    too (persistent: the shuffling and the workers' seeds continue as in one run)."""
    ref, _, _ = straight[model, workers]
    folder = fold_dir(tmp_path, model)
    run = lambda *a: argv(full_store, model, tmp_path, "--num-workers", str(workers), *a)   # noqa: E731
    with monkeypatch.context() as m:
        interrupt_after(m, 2)
        assert train.cli(run()) == 130
    err = capsys.readouterr().err
    assert f"{folder / 'last.pt'}" in err and "2 of 4 epochs done" in err and "--resume" in err
    assert "Traceback" not in err and not (folder / "results.json").exists()

    # the checkpoint loads (weights only), rebuilds the model, and holds the run after 2 epochs
    ck = torch.load(folder / "last.pt", map_location="cpu", weights_only=True)
    assert ck["epochs_done"] == 2 and len(ck["history"]) == 2 and ck["pretrained"]
    net, _ = train.load_checkpoint(folder / "last.pt")
    assert type(net) is train.models.load(model).MODEL
    assert not [f for f in os.listdir(folder) if f.endswith(".tmp")]

    # another configuration does not resume it
    assert train.cli(run("--resume", "--set", "dropout=0.125")) == 2
    assert "another configuration (dropout)" in capsys.readouterr().err

    with lines() as got:
        res = train.main(run("--resume"))["folds"][0]
    by = epochs_by_phase(got)
    assert set(by) <= {"train", "svm"} and [int(h["k"]) for h in by["train"]] == [3, 4]
    assert any("resumed from" in g and "after 2 of 4 epochs" in g for g in got)
    for a, b in zip(res["history"], ref["history"], strict=True):
        assert a["epoch"] == b["epoch"]
        np.testing.assert_allclose([a["train_loss"], a["val_loss"], a["val_metric"]],
                                   [b["train_loss"], b["val_loss"], b["val_metric"]], rtol=0, atol=1e-6)
    assert json.dumps(res["validation"]) == json.dumps(ref["validation"]) and res["pretrain"] == ref["pretrain"]
    assert res["predictions"] == ref["predictions"] and res.get("UA") == ref.get("UA")
    assert not (folder / "last.pt").exists()

    # a complete fold is skipped by --resume
    with lines() as got:
        again = train.main(run("--resume"))["folds"][0]
    assert json.dumps(again["history"]) == json.dumps(res["history"]) and not epochs_by_phase(got)


def test_ctrl_c_before_the_first_checkpoint_says_the_fold_starts_afresh(full_store, tmp_path, monkeypatch, capsys):
    interrupt_after(monkeypatch, 0)
    assert train.cli(argv(full_store, "perception", tmp_path, epochs=2)) == 130
    assert "before its first checkpoint" in capsys.readouterr().err


def test_a_real_ctrl_c_exits_130_with_a_checkpoint_that_loads(full_store, tmp_path):
    """SIGINT to ``python -m models.train`` (as a terminal's Ctrl-C) after the second epoch's line."""
    import subprocess
    import sys

    from tests.conftest import ROOT, cli_env

    cmd = [sys.executable, "-m", "models.train", *argv(full_store, "perception", tmp_path, epochs=200)]
    p = subprocess.Popen(cmd, cwd=ROOT, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))   # (not ignored)
    err = []
    for line in p.stderr:
        err.append(line)
        if "train epoch 2/200" in line:
            p.send_signal(signal.SIGINT)
    assert p.wait(timeout=120) == 130, "".join(err[-5:])
    assert "continue it with the same command and --resume" in err[-1] and "Traceback" not in "".join(err)
    ck = torch.load(fold_dir(tmp_path, "perception") / "last.pt", map_location="cpu", weights_only=True)
    assert 2 <= ck["epochs_done"] < 200 and len(ck["history"]) == ck["epochs_done"]
