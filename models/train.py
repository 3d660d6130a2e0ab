"""Train and evaluate a model on a dataset's shards under a protocol (nanoGPT's train.py role).

    python -m models.train --model avef --dataset demo --protocol loso [--fold 0] [--epochs 30]
        [--net-epochs 5] [--store store] [--out runs] [--set small_crops=true] [--resume]

Per fold: training, validation (early stopping) and test parts from ``models.protocols``;
normalisation statistics and the landmark PCA fitted on the training part only; the model's
hooks (``pretrain``, ``on_epoch_start``, ``configure_optimizer``, ``clip_classifier``,
module-level ``label_map``/``features``) when it defines them; GPU with bf16 autocast when
present. Writes ``<out>/<model>/<dataset>/<protocol>/<fold>/{checkpoint.pt, results.json,
confusion.png, curves.png, attention-*.png}`` and, across the folds there,
``summary.json`` + ``table.md`` (mean ± std). Every phase logs one line per epoch (loss, metric,
samples/s, ETA: ``models.progress``); ``--epochs`` bounds the main phase, ``--net-epochs`` every
pre-training phase. While a fold runs, ``<fold>/last.pt`` holds its state after the pre-training
and after each epoch (atomic); Ctrl-C exits with status 130 and ``--resume`` continues from it.
Window-mode models are scored per clip: the clip's windows are pooled (the model's
``clip_classifier`` on the averaged ``embedding``, AVEF §2.2.4, else the averaged softmax).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import glob
import json
import logging
import os
import random
import signal
import sys
import threading
import time

import numpy as np
import torch

import models
from features.errors import ShardError
from models import metrics, plots
from models.data import ShardDataset, clip_table, find_shards, fit_norm, label_subset
from models.resident import DATA_MODES, another, feed
from models.progress import Progress, context
from models.protocols import dataset_protocol, fit_pca_basis, make_folds

logger = logging.getLogger("models.train")


# -- model construction and checkpoints ------------------------------------------------------------
def _coerce(value, default):
    if isinstance(default, tuple) and isinstance(value, list):
        return tuple(value)
    return value


def make_config(module, overrides: dict | None = None):
    cfg = module.CONFIG()
    names = {f.name for f in dataclasses.fields(cfg)}
    for key, value in (overrides or {}).items():
        if key not in names:
            raise ValueError(f"{module.__name__}: config has no field {key!r}; fields: {', '.join(sorted(names))}")
        setattr(cfg, key, _coerce(value, getattr(cfg, key)))
    return cfg


def classes_of(module, cfg, label_set) -> tuple[list, dict]:
    """The model's classes and {corpus label: class index} (the module's ``label_map`` when it has one)."""
    if list(label_set) == ["continuous"]:
        return [], {}
    if hasattr(module, "label_map"):
        return module.label_map(cfg, list(label_set))
    return list(label_set), {l: i for i, l in enumerate(label_set)}


def features_of(module, cfg) -> tuple:
    return tuple(module.features(cfg)) if hasattr(module, "features") else tuple(module.FEATURES)


def save_checkpoint(path, *, name: str, model, cfg, extra: dict) -> None:
    """Plain dicts, lists, numbers, strings and tensors only (loadable with ``weights_only=True``)."""
    ckpt = {"model": name, "module": models.MODELS[name], "config": dataclasses.asdict(cfg),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, **extra}
    tmp = f"{path}.tmp"
    torch.save(ckpt, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, *, map_location="cpu"):
    """(model, checkpoint dict): the model rebuilt from the file alone (its config and weights)."""
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    module = models.load(ckpt["model"])
    model = module.MODEL(make_config(module, ckpt["config"]))
    model.load_state_dict(ckpt["state_dict"])
    return model, ckpt


def checkpoint_dataset(ckpt: dict, table, rows) -> ShardDataset:
    """The ``ShardDataset`` a checkpoint's model reads: its features, mode, label map, and the
    normalisation and landmark PCA fitted on its training part (``rows``: global clip indices)."""
    norm = {k: tuple(np.asarray(x) for x in v) for k, v in (ckpt.get("norm") or {}).items()}
    basis = {k: np.asarray(v) for k, v in ckpt["pca_basis"].items()} if ckpt.get("pca_basis") else None
    return ShardDataset(table, rows, features=ckpt["features"], mode=ckpt["mode"],
                        label_map=ckpt["label_map"] or None, norm=norm, pca_basis=basis)


def _np(d):
    """Arrays -> tensors for a checkpoint (normalisation, PCA basis)."""
    if d is None:
        return None
    return {k: [torch.as_tensor(np.asarray(a)) for a in v] if isinstance(v, (tuple, list))
            else torch.as_tensor(np.asarray(v)) for k, v in d.items() if k != "fit_clips"}


def init_from(model, path, *, keep: tuple[str, ...] | None = None) -> list[str]:
    """Transfer learning: copy the tensors of checkpoint ``path`` whose names start with one of
    ``keep`` (a model's ``SHALLOW`` layers, AVEF §2.2: "keep the shallow layers of each network and
    train the deep layers from scratch") and whose shapes match; ``keep=None``: every matching one."""
    src = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    own = model.state_dict()
    copied = [k for k, v in src.items() if k in own and own[k].shape == v.shape
              and (keep is None or k.startswith(keep))]
    model.load_state_dict({**own, **{k: src[k] for k in copied}})
    return copied


# -- loops -------------------------------------------------------------------------------------------
def _to(batch, device):
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def default_precision(device) -> str:
    """bf16 autocast on a GPU; fp32 on a CPU, where bf16 is slower on most cores (and oneDNN's bf16
    Conv3d backward gave sporadic NaN weight gradients with torch 2.13 CPU)."""
    return "bf16" if torch.device(device).type == "cuda" else "fp32"


def autocast(device, precision: str | None = None):
    """The autocast context of ``--precision``: fp32 (off), bf16 or fp16 (fp16 also takes a
    ``GradScaler``: see ``grad_scaler``). Parameters and optimiser state stay fp32 either way."""
    dtype = PRECISIONS[precision or default_precision(device)]
    return torch.autocast(torch.device(device).type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def grad_scaler(device, precision: str | None = None):
    """Loss scaling for fp16 (its 5-bit exponent underflows small gradients); a no-op otherwise."""
    return torch.amp.GradScaler(torch.device(device).type, enabled=(precision or default_precision(device)) == "fp16")


def _hook(model, module, name):
    return getattr(model, name, None) or getattr(module, name, None)


def train_epoch(model, module, dl, opt, device, precision: str | None = None, scaler=None,
                stats: dict | None = None) -> float:
    """One epoch over ``dl``: the mean training loss per sample (``stats["samples"]``: how many)."""
    model.train()
    loss_fn = _hook(model, module, "loss")
    scaler = grad_scaler(device, precision) if scaler is None else scaler
    total, n = torch.zeros((), dtype=torch.float64, device=device), 0
    for batch in dl:
        batch = _to(batch, device)
        with autocast(device, precision):
            out = model(batch)
        loss = loss_fn(out, batch)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        k = len(batch["label"])   # the loss stays on the device: reading it each step would wait for the GPU
        total, n = total + loss.detach() * k, n + k
    if stats is not None:
        stats["samples"] = n
    return float(total) / max(n, 1)


def _first_map(w, batch, out):
    """The first item's attention map without its padding: the step axis (0) cut to the item's
    segments (``seg_mask``) or windows (``mask``), a word axis (last) to its ``glove_length``."""
    w = w[0].float().cpu()
    for key in ("seg_mask", "mask"):
        m = out.get(key) if key == "seg_mask" else batch.get(key)
        if m is not None and w.ndim and w.shape[0] == m.shape[1]:
            w = w[m[0].bool().cpu()]
            break
    if "glove_length" in batch and w.ndim and w.shape[-1] == batch["glove"].shape[1]:
        w = w[..., :max(int(batch["glove_length"][0]), 1)]
    return w


def _own(v: torch.Tensor) -> torch.Tensor:
    """``v`` detached, float32 if floating (bf16 -> fp32; ids stay int), in storage of its own: a view
    kept until the end of ``predict`` would keep what it views (a whole activation, or the streaming
    loader's buffer of several batches, crops included)."""
    v = v.detach().float() if v.is_floating_point() else v.detach()
    return v.clone() if v.untyped_storage().nbytes() > v.nbytes else v


@torch.no_grad()
def predict(model, module, dl, device, precision: str | None = None) -> dict:
    """Outputs over a loader: clip, label, logits/pred, embedding, targets, loss; the first
    batch's attention maps. With time-continuous labels (issue 18 item 3) also one row per
    window that has a target: ``clip_t``, ``step_t`` (the window's position in its clip),
    ``pred_t`` (n, 2) the model's per-step output, ``valence_t``, ``arousal_t``."""
    model.eval()
    loss_fn = _hook(model, module, "loss")
    keep = {"clip": [], "label": [], "logits": [], "pred": [], "embedding": [], "valence": [], "arousal": []}
    steps = {"clip_t": [], "step_t": [], "pred_t": [], "valence_t": [], "arousal_t": []}
    total, n, attention = torch.zeros((), dtype=torch.float64, device=device), 0, None
    per_step = []   # (target_mask, clip, steps, valence_t, arousal_t) of each batch, read after the loop
    for batch in dl:   # the outputs stay on the device until every batch is queued: no read per batch
        batch = _to(batch, device)
        with autocast(device, precision):
            out = model(batch)
        loss = loss_fn(out, batch)
        total, n = total + loss.detach() * len(batch["label"]), n + len(batch["label"])
        for k in keep:
            src = out if k in ("logits", "pred", "embedding") else batch
            if k in src:
                keep[k].append(_own(src[k]))
        if "steps" in out and "pred" in out and "target_mask" in batch:   # per-window outputs and targets
            per_step.append((_own(batch["target_mask"].bool()), _own(batch["clip"]), _own(out["steps"]),
                             _own(batch["valence_t"]), _own(batch["arousal_t"])))
        if attention is None and "attention" in out:
            attention = {k: _first_map(v, batch, out) for k, v in out["attention"].items()}
    keep = {k: [v.cpu().numpy() for v in vs] for k, vs in keep.items()}
    for m, clip, pred, va, ar in per_step:
        m, pred = m.cpu().numpy(), pred.cpu().numpy()
        steps["clip_t"].append(np.broadcast_to(clip.cpu().numpy()[:, None], m.shape)[m])
        steps["step_t"].append(np.broadcast_to(np.arange(m.shape[1]), m.shape)[m])
        steps["pred_t"].append(pred[m])
        steps["valence_t"].append(va.cpu().numpy()[m])
        steps["arousal_t"].append(ar.cpu().numpy()[m])
    res = {k: np.concatenate(v) for k, v in {**keep, **steps}.items() if v}
    res["loss"], res["attention"] = float(total) / max(n, 1), attention
    return res


def pool(clips: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mean of ``values`` over the rows of each clip (AVEF §2.2.4 average pooling)."""
    uniq, inv = np.unique(clips, return_inverse=True)
    out = np.zeros((len(uniq), *values.shape[1:]))
    np.add.at(out, inv, values)
    return uniq, out / np.bincount(inv)[:, None]


def clip_outputs(p: dict, *, clf=None) -> dict:
    """Per-clip outputs of ``predict`` output (window outputs pooled per clip, AVEF §2.2.4):
    ``clip`` (global clip indices), ``label``; for a classifier ``pred_class`` (the SVM's on the
    pooled embedding when ``clf`` is given, else the argmax of the averaged softmax ``prob``); for
    a regression ``pred`` (n, 2) and the targets ``valence``/``arousal`` when present."""
    clips = p["clip"]
    uniq, first = np.unique(clips, return_index=True)
    out = {"clip": uniq, "label": p["label"][first]}
    if "logits" in p:
        if clf is not None:
            out["pred_class"] = clf.predict(pool(clips, p["embedding"])[1])
        else:
            z = p["logits"] - p["logits"].max(1, keepdims=True)
            out["prob"] = pool(clips, np.exp(z) / np.exp(z).sum(1, keepdims=True))[1]
            out["pred_class"] = out["prob"].argmax(1)
    if "pred" in p:
        out["pred"] = pool(clips, p["pred"])[1]
        for k in ("valence", "arousal"):
            if k in p:
                out[k] = pool(clips, p[k][:, None])[1][:, 0]
    return out


def score(p: dict, *, n_classes: int, clf=None) -> dict:
    """Clip-level metrics of ``predict`` output (window outputs are pooled per clip). With
    time-continuous labels (``pred_t``, issue 18 item 3) ``CCC_valence``/``CCC_arousal`` are the
    per-sequence CCCs over the windows averaged over the clips (Lucas §3), ``CCC_*_pooled`` the CCC
    of all windows at once and ``CCC_*_clip`` the CCC of the clip means (the figure without them)."""
    o = clip_outputs(p, clf=clf)
    res = {}
    if "pred_class" in o:
        res.update(metrics.classification(o["label"], o["pred_class"], n_classes=n_classes))
        if len(o["clip"]) != len(p["clip"]):
            res["window"] = {k: v for k, v in metrics.classification(p["label"], p["logits"].argmax(1),
                                                                     n_classes=n_classes).items() if k != "confusion"}
    if "pred" in o:
        for j, k in enumerate(("valence", "arousal")):
            if k in o and j < o["pred"].shape[1]:
                ok = np.isfinite(o[k])   # a clip without a target (no continuous series) is left out
                res[f"CCC_{k}"] = metrics.ccc(o["pred"][ok, j], o[k][ok])
        res["n"] = len(o["clip"])
    if "pred_t" in p:
        for j, k in enumerate(("valence", "arousal")):
            c = metrics.sequence_ccc(p["clip_t"], p["pred_t"][:, j], p[f"{k}_t"])
            if f"CCC_{k}" in res:
                res[f"CCC_{k}_clip"] = res[f"CCC_{k}"]
            res[f"CCC_{k}"], res[f"CCC_{k}_pooled"] = c["mean"], c["pooled"]
            res["sequences"], res["sequences_skipped"] = c["sequences"], c["skipped"]
        res["steps"] = len(p["clip_t"])
    return res


def selection(module, args) -> tuple[str | None, int | None]:
    """How a fold picks its model, per paper: the module's ``SELECT`` ("last": the final epoch, as
    AVEF's fixed 500 epochs, Table 3; "WA"; default UA / mean CCC) and ``PATIENCE`` (None: no early
    stopping); ``--patience N`` overrides the patience (early stopping on the validation figure)."""
    patience = args.patience if args.patience is not None else getattr(module, "PATIENCE", 10)
    select = getattr(module, "SELECT", None)
    if select == "last" and args.patience is not None:
        select = None   # early stopping asked for: keep the best validation epoch instead of the last
    return select, patience


def _val_metric(res: dict, select: str | None = None) -> float:
    """The validation figure that picks the checkpoint: the model module's ``SELECT`` when it names
    one (Chao §4.1: "the best prediction accuracy in the validation set" = WA), else UA, or the
    mean CCC of a regression."""
    if select in res:
        return float(res[select])
    if "UA" in res:
        return res["UA"]
    cccs = [res[k] for k in ("CCC_valence", "CCC_arousal") if k in res]   # per sequence with continuous labels
    return float(np.mean(cccs)) if cccs else 0.0


# -- epochs, interrupting and resuming a fold (issue 23 item 4) --------------------------------------
#: the config fields ``--net-epochs N`` sets: the epochs of every pre-training phase (AVEF's audio-
#: and visual-net ``net_epochs`` and each RBM's ``rbm_epochs``; ACLSTM's extractors
#: ``pretrain_epochs`` and NTN ``ntn_epochs``; SincNet+text's two networks and DLSTM's unimodal
#: nets (``pretrain_unimodal``) ``pretrain_epochs``)
PRETRAIN_EPOCHS = ("net_epochs", "rbm_epochs", "pretrain_epochs", "ntn_epochs")
LAST = "last.pt"


def pretrain_overrides(module, net_epochs: int | None) -> dict:
    """``{field: net_epochs}`` for the pre-training epoch fields the module's config has."""
    if net_epochs is None:
        return {}
    names = {f.name for f in dataclasses.fields(module.CONFIG)}
    return {f: int(net_epochs) for f in PRETRAIN_EPOCHS if f in names}


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a fold; the message says where its last checkpoint is and how to continue."""


class _DeferSigint:
    """Ctrl-C waits until the block is done (a checkpoint being written is completed first), then
    raises KeyboardInterrupt. Only in the main thread and under Python's default SIGINT handler."""

    def __enter__(self):
        self.got, self.old = [], None
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self.old = signal.signal(signal.SIGINT, lambda *a: self.got.append(a))
        return self

    def __exit__(self, *exc):
        if self.old is not None:
            signal.signal(signal.SIGINT, self.old)
        if self.got and exc[0] is None:
            raise KeyboardInterrupt
        return False


def _rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [kind, torch.as_tensor(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
            "python": random.getstate()}


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available() and len(s["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(s["cuda"])
    kind, keys, pos, has_gauss, cached = s["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = s["python"]
    random.setstate((version, tuple(internal), gauss))


def load_last(path, *, name: str, cfg, fold, seed: int) -> dict:
    """A fold's ``last.pt`` for ``--resume``, checked against the run: same model, fold, seed and
    configuration (the epoch counts aside: ``--epochs`` may grow, and pre-training is done)."""
    ck = torch.load(path, map_location="cpu", weights_only=True)
    got = (ck.get("model"), ck.get("fold"), ck.get("seed"))
    if got != (name, fold.name, seed):
        raise ValueError(f"--resume: {path} is of model {got[0]}, fold {got[1]}, seed {got[2]}, not {name}, "
                         f"{fold.name}, {seed}: remove it or leave out --resume")
    skip = {"epochs", *PRETRAIN_EPOCHS}
    now = json.loads(json.dumps(dataclasses.asdict(cfg)))
    then = json.loads(json.dumps(ck["config"]))
    diff = sorted(k for k in set(now) | set(then) if k not in skip and now.get(k) != then.get(k))
    if diff:
        raise ValueError(f"--resume: {path} was trained with another configuration ({', '.join(diff)}): "
                         f"give the same --set options, or leave out --resume to start the fold afresh")
    return ck


def interrupted_message(out_dir: str, fold_name: str) -> str:
    """What a Ctrl-C leaves: the fold's ``last.pt`` (opened, to show it loads) and how to go on."""
    path = os.path.join(out_dir, LAST)
    if not os.path.exists(path):
        return f"interrupted in fold {fold_name} before its first checkpoint: a rerun starts the fold afresh"
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        done = f"{ck['epochs_done']} of {ck['epochs']} epochs done"
    except Exception as err:   # noqa: BLE001 (the message must come out whatever the file holds)
        return f"interrupted in fold {fold_name}; {path} does not load ({err})"
    return f"interrupted in fold {fold_name}: {path} holds its state with {done} (pre-training, if any, " \
           f"included); continue it with the same command and --resume"


# -- one fold ----------------------------------------------------------------------------------------
def check_targets(name, cfg, table, fold, classes) -> None:
    """Before any training: the corpus has the targets the configuration learns (a regression needs
    valence/arousal on the training clips; a classifier needs a discrete label set)."""
    if getattr(cfg, "task", "classification") == "regression":
        if not np.isfinite(table.valence[fold.train]).any():
            raise ValueError(f"{name}: task='regression' learns valence and arousal, but the training clips of "
                             f"fold {fold.name} have none: give the labels CSV valence,arousal columns and rebuild "
                             f"the shards, or train a classifier with --set task='\"classification\"'")
    elif not classes:
        raise ValueError(f"{name} is a classifier, but the dataset's label set is [continuous]: use a model that "
                         f"regresses valence/arousal (dlstm, task='regression')")


def train_fold(args, table, fold, out_dir) -> dict:
    t0 = time.time()
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    device = args.device
    module = models.load(args.model)
    overrides = dict(args.set)   # an explicit --set of a pre-training field wins over --net-epochs
    cfg = make_config(module, {**pretrain_overrides(module, getattr(args, "net_epochs", None)), **overrides})
    classes, label_map = classes_of(module, cfg, table.manifest.get("label_set", sorted(set(table.label))))
    if classes and hasattr(cfg, "n_classes") and "n_classes" not in overrides:
        cfg.n_classes = len(classes)
    check_targets(args.model, cfg, table, fold, classes)
    feats = features_of(module, cfg)
    kw = dict(features=feats, mode=module.MODE, label_map=label_map or None)
    pca_basis = fit_pca_basis(table, fold.train) if "pca" in feats and args.refit_pca else None
    train_ds = ShardDataset(table, fold.train, pca_basis=pca_basis, **kw)
    norm = fit_norm(train_ds, seed=args.seed)      # training part only
    parts = {"train": train_ds, "val": ShardDataset(table, fold.val, pca_basis=pca_basis, norm=norm, **kw),
             "test": ShardDataset(table, fold.test, pca_basis=pca_basis, norm=norm, **kw)}
    train_ds.norm = norm
    select, patience = selection(module, args)
    if not len(fold.val) and select != "last":
        raise ValueError(f"fold {fold.name}: choosing the best epoch needs a validation part; give --val-fraction > 0")
    if not len(fold.val):
        del parts["val"]   # a fixed number of epochs, the last kept (AVEF): no validation part
    for name, ds in parts.items():
        if not len(ds):
            raise ValueError(f"fold {fold.name}: the {name} part has no item with features {feats}")
    bs = args.batch_size or cfg.batch_size    # every config carries its paper's batch size
    dl, data_mode = feed(parts, batch_size=bs, num_workers=args.num_workers, seed=args.seed, device=device,
                         data=getattr(args, "data", "auto"))
    dl_train_eval = another(dl["train"], batch_size=bs, shuffle=False, num_workers=args.num_workers, device=device)

    model = module.MODEL(cfg).to(device)
    if args.init:
        keep = getattr(module, "SHALLOW", None) if args.init_layers == "shallow" else None
        logger.info("initialised %d tensors from %s (%s)", len(init_from(model, args.init, keep=keep)), args.init,
                    "the layers " + ", ".join(keep) if keep else "every matching layer")
    epochs = args.epochs or getattr(cfg, "epochs", 50)
    every = getattr(args, "checkpoint_every", 1)
    last = os.path.join(out_dir, LAST)
    state = None
    if getattr(args, "resume", False) and os.path.exists(last):
        state = load_last(last, name=args.model, cfg=cfg, fold=fold, seed=args.seed)
    elif getattr(args, "resume", False):
        logger.info("%s: --resume: no %s, the fold starts afresh", fold.name, last)
    elif os.path.exists(last):
        os.remove(last)
        logger.info("%s: starting afresh; removed %s of an earlier run (--resume continues one)", fold.name, last)
    log = {}
    pretrain = getattr(model, "pretrain", None)
    pre = {f: getattr(cfg, f) for f in PRETRAIN_EPOCHS if hasattr(cfg, f)} if pretrain and state is None else {}
    logger.info("%s: %s%d training epochs (--epochs) on %d items", fold.name,
                f"pre-training {', '.join(f'{k}={v}' for k, v in pre.items())} (--net-epochs), then " if pre else "",
                epochs, len(train_ds))
    if state is not None:   # --resume: the pre-trained (and partly trained) model; no pre-training again
        model.load_state_dict(state["state_dict"])
        for n, p in model.named_parameters():   # parts a pre-training froze stay frozen
            p.requires_grad_(bool(state["requires_grad"].get(n, p.requires_grad)))
        log["pretrain"] = state.get("pretrain")
    elif pretrain:
        pbs = getattr(cfg, "net_batch_size", bs)
        log["pretrain"] = pretrain(another(dl["train"], batch_size=pbs, shuffle=True, seed=args.seed,
                                           num_workers=args.num_workers, device=device), device)
    opt = model.configure_optimizer() if hasattr(model, "configure_optimizer") else torch.optim.Adam(
        model.parameters(), lr=getattr(cfg, "lr", 1e-3), weight_decay=getattr(cfg, "weight_decay", 0.0))
    history, best, best_state, best_epoch, bad, stopped, start = [], -np.inf, None, None, 0, False, 0
    scaler = grad_scaler(device, args.precision)

    def save_last(done: int) -> None:
        """``last.pt`` (atomic, a Ctrl-C waits for it): all a --resume needs after ``done`` epochs."""
        if not every:
            return
        same = best_epoch == done - 1   # the best state is the current one: not stored twice
        with _DeferSigint():
            os.makedirs(out_dir, exist_ok=True)
            save_checkpoint(last, name=args.model, model=model, cfg=cfg, extra={
                "kind": "last", "fold": fold.name, "seed": args.seed, "epochs_done": done, "epochs": epochs,
                "history": history, "best": float(best), "best_epoch": best_epoch, "bad": bad, "stopped": stopped,
                "best_state": None if same or best_state is None else best_state,
                "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
                "optimizer": opt.state_dict(), "scaler": scaler.state_dict(), "pretrained": True,
                "pretrain": log.get("pretrain"), "rng": _rng_state(),
                "loader_rng": dl["train"].generator.get_state() if getattr(dl["train"], "generator", None) else None})

    if state is not None:
        opt.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        history, best, best_epoch = list(state["history"]), state["best"], state["best_epoch"]
        bad, stopped, start = state["bad"], state["stopped"], state["epochs_done"]
        best_state = state["best_state"] if state["best_state"] is not None else (
            {k: v.detach().cpu().clone() for k, v in model.state_dict().items()} if best_epoch is not None else None)
        _set_rng_state(state["rng"])
        if state["loader_rng"] is not None:   # the shuffling continues where it stopped
            if args.num_workers:   # persistent workers: their iterator's base seed is drawn once, at the
                iter(dl["train"])  # first epoch; draw it as an uninterrupted run did, then set the state
            dl["train"].generator.set_state(state["loader_rng"])
        logger.info("%s: resumed from %s after %d of %d epochs", fold.name, last, start, epochs)
        del state
    elif pretrain:
        save_last(0)   # a Ctrl-C from here on keeps the pre-training
    shown = "" if select == "last" else "val " + (select or ("UA" if classes else "mean CCC"))
    progress = Progress("train", epochs, len(train_ds), start=start, metric=shown)
    for epoch in range(start, epochs):
        if stopped:
            break
        hook = _hook(model, module, "on_epoch_start")
        if hook:
            hook(epoch)
        seen = {}
        train_loss = train_epoch(model, module, dl["train"], opt, device, args.precision, scaler, stats=seen)
        pv = predict(model, module, dl["val"], device, args.precision) if "val" in dl else None
        val_metric = _val_metric(score(pv, n_classes=len(classes)), select) if pv else float("nan")
        with _DeferSigint():   # the epoch's record and its checkpoint: both, or (Ctrl-C before) neither
            history.append({"epoch": epoch, "train_loss": train_loss,
                            "val_loss": pv["loss"] if pv else float("nan"), "val_metric": val_metric})
            progress.epoch(loss=train_loss, val_loss=history[-1]["val_loss"], metric=val_metric,
                           samples=seen["samples"])
            if select == "last" or history[-1]["val_metric"] > best or best_state is None:   # (NaN is never greater)
                best, bad = history[-1]["val_metric"], 0
                best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
                best_epoch = epoch
            else:
                bad += 1
                stopped = patience is not None and bad >= patience
            if every and (stopped or (epoch + 1) % every == 0 or epoch + 1 == epochs):
                save_last(epoch + 1)
    model.load_state_dict(best_state)

    clf, extra = None, {}
    if hasattr(model, "clip_classifier") and classes and module.MODE == "window":
        ptr = predict(model, module, dl_train_eval, device, args.precision)
        clips, X = pool(ptr["clip"], ptr["embedding"])
        y = ptr["label"][np.unique(ptr["clip"], return_index=True)[1]]
        clf = model.clip_classifier()
        svm = Progress("svm", 1, len(y), metric="training accuracy")
        clf.fit(X, y)
        svm.epoch(metric=float(np.mean(clf.predict(X) == y)))
        extra["clip_train"] = {"X": torch.as_tensor(X, dtype=torch.float32), "y": torch.as_tensor(y)}
    pt = predict(model, module, dl["test"], device, args.precision)
    test = score(pt, n_classes=len(classes), clf=clf)
    outs = clip_outputs(pt, clf=clf)
    os.makedirs(out_dir, exist_ok=True)
    save_checkpoint(os.path.join(out_dir, "checkpoint.pt"), name=args.model, model=model, cfg=cfg,
                    extra={"classes": classes, "label_map": label_map, "features": list(feats), "mode": module.MODE,
                           "norm": _np(norm), "pca_basis": _np(pca_basis), "fold": fold.name, "dataset": args.dataset,
                           **extra})
    pics = [plots.curves_png(history, os.path.join(out_dir, "curves.png"), title=f"{args.model} {fold.name}")]
    if "confusion" in test:
        pics.append(plots.confusion_png(test["confusion"], classes, os.path.join(out_dir, "confusion.png"),
                                        title=f"{args.model} {args.dataset} {fold.name}"))
    axes = getattr(module, "ATTENTION", {})
    for name, w in (pt["attention"] or {}).items():
        pics.append(plots.attention_png(w, os.path.join(out_dir, f"attention-{name}.png"),
                                        **{"title": f"{args.model} {name}", **axes.get(name, {})}))
    result = {"model": args.model, "dataset": args.dataset, "protocol": args.protocol_spec, "fold": fold.name,
              "classes": classes, **{k: v for k, v in test.items()},
              "validation": {"best": best, "best_epoch": best_epoch}, "epochs_run": len(history),
              "history": history, "pretrain": log.get("pretrain"),
              "speakers": {p: sorted(fold.speakers(table, p)) for p in ("train", "val", "test")},
              "items": {p: len(ds) for p, ds in parts.items()}, "device": str(device), "data": data_mode,
              "predictions": {"clip_id": [str(table.id[c]) for c in outs["clip"]],
                              **{k: v.tolist() for k, v in outs.items() if k != "clip"}},
              "seconds": time.time() - t0, "config": dataclasses.asdict(cfg), "pictures": pics}
    tmp = os.path.join(out_dir, f".results.json.{os.getpid()}")
    with open(tmp, "w") as f:   # atomic: --folds-parallel folds read each other's when they summarise
        json.dump(result, f, indent=1, default=float)
    os.replace(tmp, os.path.join(out_dir, "results.json"))
    if os.path.exists(last):   # the fold is complete: checkpoint.pt and results.json replace it
        os.remove(last)
    return result


def write_summary(proto_dir: str, title: str) -> dict:
    """``summary.json`` and ``table.md`` over every fold's results.json under ``proto_dir``."""
    results = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(proto_dir, "*", "results.json")))]
    summary = metrics.summarize(results)
    with open(os.path.join(proto_dir, "summary.json"), "w") as f:
        json.dump({"folds": [r["fold"] for r in results], "summary": summary}, f, indent=1)
    with open(os.path.join(proto_dir, "table.md"), "w") as f:
        f.write(metrics.table(summary, title=title) + "\n")
    return summary


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m models.train", description=__doc__.split("\n")[0],
                                allow_abbrev=False)   # --folds-parallel strips its options by their full names
    p.add_argument("--model", required=True, choices=list(models.MODELS))
    p.add_argument("--dataset", required=True)
    p.add_argument("--protocol", default=None, help="loso | logso | kfold | fixed (default: the manifest's)")
    p.add_argument("--groups", type=int, help="LOGSO speaker groups")
    p.add_argument("--folds", type=int, help="k-fold folds")
    p.add_argument("--fold", type=int, action="append", help="run only this fold (repeatable); default all")
    p.add_argument("--folds-parallel", type=int, default=1, metavar="N",
                   help="train N folds at once, each in its own process (one GPU each, round-robin, when several "
                        "are visible; else they share it); each fold's log in <out>/.../<fold>/train.log")
    p.add_argument("--epochs", type=int, metavar="N",
                   help="epochs of the main phase (the whole model, or the fusion after a pre-training), at most "
                        "(default: the config's `epochs`, else 50); the pre-training is bounded by --net-epochs")
    p.add_argument("--net-epochs", type=int, metavar="N",
                   help="epochs of every pre-training phase, each: AVEF's audio- and visual-net (net_epochs, paper "
                        "500) and each RBM (rbm_epochs); ACLSTM's extractors (pretrain_epochs) and NTN (ntn_epochs); "
                        "SincNet+text's two networks and DLSTM's unimodal ones (pretrain_epochs, DLSTM with "
                        "pretrain_unimodal=true); a --set FIELD=... of one of them wins")
    p.add_argument("--resume", action="store_true",
                   help="continue each fold from its <fold>/last.pt (written after every epoch, and after the "
                        "pre-training; removed when the fold completes), without pre-training again; a fold with "
                        "results.json and no last.pt is complete and skipped; the same options as the first run")
    p.add_argument("--checkpoint-every", type=int, default=1, metavar="N",
                   help="write <fold>/last.pt every N epochs (and at the last); 0: never (no --resume). "
                        "Ctrl-C exits with status 130 and leaves the last one whole")
    p.add_argument("--patience", type=int, help="early stopping: epochs without a better validation figure "
                                                "(default: the paper's; AVEF trains all its epochs, the others 10)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--store", default="store")
    p.add_argument("--build", help="build record digest (default: the newest)")
    p.add_argument("--labels", metavar="A,B,...",
                   help="train and test on the clips of these labels only, in this class order (e.g. AVEF's six basic "
                        "emotions of BAUM-1s: anger,disgust,fear,happiness,sadness,surprise)")
    p.add_argument("--out", default="runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=1, metavar="N",
                   help="train and test each fold N times with the seeds seed..seed+N-1, the folds kept (Lucas §3 "
                        "repeats 10 times 'to account for random initialization'); runs go to <fold>/seed-S/ and "
                        "summary.json / table.md give mean ± std over all runs")
    p.add_argument("--val-fraction", type=float,
                   help="training speakers held out for validation (default 0.1; 0 for a model that keeps its "
                        "last epoch without early stopping, AVEF)")
    p.add_argument("--num-workers", type=int, default=0,
                   help="DataLoader worker processes of the streaming loader (--data stream)")
    p.add_argument("--data", choices=DATA_MODES, default="auto",
                   help="resident: the fold's features read once into the GPU's memory and batches formed there; "
                        "stream: a DataLoader reading the shards every epoch; auto (default): resident on a GPU "
                        "when they take at most half its free memory, else stream (models/resident.py)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=list(PRECISIONS),
                   help="autocast dtype of the forward passes: fp32 | bf16 | fp16 (fp16 with loss scaling); "
                        "default bf16 on a GPU, fp32 on a CPU")
    p.add_argument("--no-refit-pca", dest="refit_pca", action="store_false",
                   help="use the shards' landmark PCA instead of refitting it on the training part")
    p.add_argument("--init", help="transfer learning: a checkpoint (trained on other corpora) to initialise layers from; "
                                  "for AVEF the shallow layers (both CNNs' convolutions and the DBN's first RBM, "
                                  "§2.2), the deep ones start afresh; other models: every layer whose shape matches")
    p.add_argument("--init-layers", choices=("shallow", "all"), default="shallow",
                   help="with --init: the model's shallow layers (default) or every matching layer")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="config field override, VALUE as JSON (e.g. --set small_crops=true)")
    args = p.parse_args(argv)
    sets = []
    for item in args.set:
        key, _, value = item.partition("=")
        try:
            sets.append((key, json.loads(value)))
        except ValueError:
            sets.append((key, value))
    args.set = sets
    return args


def main(argv=None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    table = clip_table(find_shards(args.store, args.dataset, build=args.build))
    if args.labels:
        table = label_subset(table, args.labels.split(","))
    protocol = dataset_protocol(table, args.protocol)
    if args.groups:
        protocol["groups"] = args.groups
    if args.folds:
        protocol["folds"] = args.folds
    args.protocol_spec = protocol
    if args.val_fraction is None:   # a model kept at its last epoch (AVEF) trains on every training speaker
        args.val_fraction = 0.0 if selection(models.load(args.model), args)[0] == "last" else 0.1
    folds = make_folds(table, protocol, seed=args.seed, val_fraction=args.val_fraction)
    chosen = args.fold if args.fold is not None else range(len(folds))
    proto_dir = os.path.join(args.out, args.model, args.dataset, protocol["name"])
    if args.repeats < 1:
        raise SystemExit(f"--repeats {args.repeats}: give 1 or more")
    if args.checkpoint_every < 0 or (args.net_epochs is not None and args.net_epochs < 0):
        raise SystemExit("--checkpoint-every and --net-epochs take 0 or more")
    if args.folds_parallel < 1:
        raise SystemExit(f"--folds-parallel {args.folds_parallel}: give 1 or more")
    for k in chosen:
        if not 0 <= k < len(folds):
            raise SystemExit(f"--fold {k}: protocol {protocol['name']} has folds 0..{len(folds) - 1}")
    if args.folds_parallel > 1 and len(chosen) > 1:
        results = run_parallel(argv if argv is not None else sys.argv[1:], args, folds, chosen, proto_dir)
        return summarise(args, protocol, proto_dir, results)
    results = []
    for k in chosen:
        for seed in range(args.seed, args.seed + args.repeats):   # the folds stay those of --seed
            run = copy.copy(args)
            run.seed = seed
            out_dir = os.path.join(proto_dir, folds[k].name, *([f"seed-{seed}"] if args.repeats > 1 else []))
            done = os.path.join(out_dir, "results.json")
            if args.resume and os.path.exists(done) and not os.path.exists(os.path.join(out_dir, LAST)):
                logger.info("%s seed %d: complete, %s kept (--resume)", folds[k].name, seed, done)
                with open(done) as f:
                    r = json.load(f)
            else:
                try:
                    with context(folds[k].name + (f" seed {seed}" if args.repeats > 1 else "")):
                        r = train_fold(run, table, folds[k], out_dir)
                except KeyboardInterrupt:
                    raise Interrupted(interrupted_message(out_dir, folds[k].name)) from None
            r["seed"] = seed
            shown = ("WA", "UA", "F1", "CCC_valence", "CCC_arousal", "CCC_valence_pooled", "CCC_arousal_pooled")
            logger.info("%s seed %d: %s", folds[k].name, seed, {m: r[m] for m in shown if m in r})
            results.append(r)
    return summarise(args, protocol, proto_dir, results)


def summarise(args, protocol: dict, proto_dir: str, results: list) -> dict:
    """summary.json and table.md of the protocol (mean ± std over the folds, or folds × repetitions)."""
    title = f"{args.model} on {args.dataset}, {protocol['name']}"
    if args.repeats == 1:
        summary = write_summary(proto_dir, title)
        print(metrics.table(summary, title=title))
        return {"folds": results, "summary": summary}
    summary = metrics.summarize(results)   # mean ± std over folds × repetitions
    per_fold = {f: metrics.summarize([r for r in results if r["fold"] == f])
                for f in dict.fromkeys(r["fold"] for r in results)}
    title += f", {args.repeats} repetitions (seeds {args.seed}..{args.seed + args.repeats - 1})"
    with open(os.path.join(proto_dir, "summary.json"), "w") as f:
        json.dump({"folds": list(per_fold), "repeats": args.repeats, "seeds": [r["seed"] for r in results],
                   "runs": len(results), "summary": summary, "per_fold": per_fold}, f, indent=1)
    with open(os.path.join(proto_dir, "table.md"), "w") as f:
        f.write(metrics.table(summary, title=title, runs="runs") + "\n")
    print(metrics.table(summary, title=title, runs="runs"))
    return {"folds": results, "summary": summary, "per_fold": per_fold, "repeats": args.repeats}


def _without(argv: list, *options: str) -> list:
    """``argv`` without the given options and their values (``--fold 3`` and ``--fold=3`` alike)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in options:
            skip = True
        elif not any(a.startswith(o + "=") for o in options):
            out.append(a)
    return out


def gpu_slots() -> list:
    """The GPUs a child process may be given (``CUDA_VISIBLE_DEVICES`` entries, or 0..n-1); [] on a CPU."""
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [v.strip() for v in visible.split(",") if v.strip()] if visible else [str(i) for i in range(n)]
    return ids[:n] if n else []


def run_parallel(argv: list, args, folds, chosen, proto_dir: str) -> list:
    """``--folds-parallel N``: the chosen folds in N processes at once (issue 23 item 6), each
    ``python -m models.train`` with the same arguments and one ``--fold``; one GPU per process
    round-robin when several are visible (``CUDA_VISIBLE_DEVICES``), else all share the one. Each
    process's output goes to ``<fold>/train.log``; a failed fold is reported with its log's last line
    after the others finish. Ctrl-C reaches every process (one process group); each leaves its last
    checkpoint, and ``--resume`` continues them all."""
    import subprocess

    base = _without(argv, "--folds-parallel", "--fold")
    slots, jobs, running, failed = gpu_slots(), list(chosen), [], []
    logger.info("%d folds in %d processes%s", len(jobs), args.folds_parallel,
                f" on GPUs {', '.join(slots)}" if len(slots) > 1 else "")
    started = 0
    try:
        while jobs or running:
            while jobs and len(running) < args.folds_parallel:
                k = jobs.pop(0)
                env = dict(os.environ)   # the children import this checkout's models, wherever they start
                root = os.path.dirname(os.path.dirname(os.path.abspath(models.__file__)))
                env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
                if len(slots) > 1:
                    env["CUDA_VISIBLE_DEVICES"] = slots[started % len(slots)]
                os.makedirs(os.path.join(proto_dir, folds[k].name), exist_ok=True)
                log_path = os.path.join(proto_dir, folds[k].name, "train.log")
                with open(log_path, "w") as log:
                    proc = subprocess.Popen([sys.executable, "-m", "models.train", *base, "--fold", str(k)],
                                            stdout=log, stderr=subprocess.STDOUT, env=env)
                running.append((k, proc, log_path))
                started += 1
            time.sleep(0.2)
            for item in [r for r in running if r[1].poll() is not None]:
                running.remove(item)
                k, proc, log_path = item
                if proc.returncode == 130:
                    raise KeyboardInterrupt
                if proc.returncode:
                    with open(log_path) as f:
                        lines = f.read().strip().splitlines() or [""]
                    failed.append(f"{folds[k].name}: exit {proc.returncode}: {lines[-1]} (log: {log_path})")
                else:
                    logger.info("%s: done (log: %s)", folds[k].name, log_path)
    except KeyboardInterrupt:
        for _, proc, _ in running:
            proc.wait()
        raise Interrupted(f"interrupted: each fold's last checkpoint is under {proto_dir}; add --resume to "
                          f"continue them") from None
    if failed:
        raise ValueError("--folds-parallel: " + "; ".join(failed))
    results = []
    for k in chosen:
        for seed in range(args.seed, args.seed + args.repeats):
            out_dir = os.path.join(proto_dir, folds[k].name, *([f"seed-{seed}"] if args.repeats > 1 else []))
            with open(os.path.join(out_dir, "results.json")) as f:
                r = json.load(f)
            r["seed"] = seed
            results.append(r)
    return results


def cli(argv=None) -> int:
    """``python -m models.train``: a mistake in the arguments, the shards or the targets (ValueError,
    a missing file), a shard of another build or one that cannot be read (``ShardError``, also from
    a DataLoader worker; the store's ``CorruptShard``; an HDF5 OSError: issue 19 item 5) prints its
    message and exits with status 2, without a traceback. Ctrl-C (KeyboardInterrupt) says where the
    fold's last checkpoint is and exits with status 130 (128 + SIGINT), as a shell does."""
    try:
        main(argv)
    except (ValueError, OSError, ShardError) as err:
        print(f"models.train: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        print(f"models.train: {err or 'interrupted'}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(cli())
