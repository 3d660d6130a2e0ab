"""Fusion models and trainers that read only the shards (``features.store.ShardReader``).

``MODELS`` maps a model name to its module (imported lazily by :func:`load`); a module defines
``CONFIG`` (a dataclass with the paper's defaults), ``MODEL`` (the nn.Module), ``MODE``
("window", "clip", or "segment": clip mode with a segment per prosodic unit, ACLSTM) and
``FEATURES`` (the feature names it reads, ``models.data.FEATURES``).
The module's ``forward(batch) -> dict`` returns ``logits`` (B, C) (or ``pred`` (B, k) for
regression) and optionally ``attention`` {name: tensor} (plotted by ``models.plots``);
``loss(out, batch)`` gives the training loss. Optional hooks the trainer calls when present:
``pretrain(loader, device)`` (AVEF's greedy RBMs, ACLSTM's separately trained NTN),
``on_epoch_start(epoch)`` (DLSTM's attention bypass), ``configure_optimizer()``.
"""
import importlib

MODELS = {"avef": "models.avef", "aclstm": "models.aclstm", "dlstm": "models.dlstm",
          "perception": "models.perception", "sincnet_text": "models.sincnet_text"}


def load(name: str):
    """The module of model ``name``; an unknown name or a module that is not there is a clear error."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    try:
        return importlib.import_module(MODELS[name])
    except ModuleNotFoundError as err:
        if err.name == MODELS[name]:
            raise ValueError(f"model {name!r}: module {MODELS[name]} is not in this checkout") from None
        raise


def available() -> dict:
    """{name: module} for every registered model whose module imports here."""
    out = {}
    for name in MODELS:
        try:
            out[name] = load(name)
        except ValueError:
            continue
    return out
