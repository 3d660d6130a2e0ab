"""Every feature a shard can hold, declared once (issue 22 item 1).

A :class:`Feature` says where a feature lives in a shard, what one row is, its dtype and row
shape, its modality, the stage that makes it and how that stage is switched on, and how a trainer
reads it. The rest of the code reads these declarations instead of keeping its own lists:

- ``features.store``: ``FEATURES`` (name → dataset, ``ShardReader.has``) and ``FACE_EMBEDDINGS``;
- ``pipeline.shards``: the default ``[Shard] embeddings``, the stages that need the visual chain,
  and what each embedding stage needs to be built (``needs``);
- ``models.data``: the trainers' feature table (window or clip item, how to enable a missing one),
  the visual features (zeroed where the video is unusable), the features of segment mode and
  the features ``fit_norm`` normalises;
- ``docs/shard-format.md``: the feature table between its generated markers
  (``python -m features.registry`` prints it, ``--write`` puts it there;
  ``tests/models/test_registry.py`` checks that the page holds what it prints, so it cannot drift).

Nothing here imports the pipeline or the models: this module sits at the ground of the tree.
"""
from __future__ import annotations

from dataclasses import dataclass

_EMB = "build the shards with the embedding stage (docs/embeddings.md)"


@dataclass(frozen=True)
class Feature:
    name: str            #: as ``ShardReader.has``, ``models.data`` and the model configs name it
    dataset: str         #: the HDF5 dataset that holds it (its presence = the feature is in the shard)
    rows: str            #: what one row is: "frame" (25 ms, 10 ms hop), "video frame", "window" (655 ms),
    #:                     "patch" (0.96 s), "clip", "sample" (16 kHz), "unit" (prosodic)
    dtype: str           #: numpy dtype name; "a/b": b with an option (VGGish's uint8 PCA post-processing)
    shape: str           #: the shape of one row
    modality: str        #: "audio", "visual" or "text"
    stage: str           #: the pipeline stage that computes it (``pipeline`` task family)
    switch: str          #: how it gets into a shard
    read: str | None = None   #: how a trainer reads it: "window" (one value per 655 ms window item),
    #:                          "clip" (a per-clip sequence), None (not a trainer feature)
    normalise: bool = False   #: ``models.data.fit_norm`` fits a mean/std per dimension on a training part
    embedding: str | None = None   #: the ``[Shard] embeddings`` entry that builds it (None: always built)
    needs: str | None = None  #: what its embedding stage needs besides being listed: the parameter that must
    #:                          be set ("weights": a weights file or model folder, "path": a vectors file),
    #:                          "+transcript": and a transcript column in the corpus
    enable: str = ""          #: the message a trainer gives when the feature is missing
    paper: str = ""           #: where the papers define it
    length: str | None = None  #: rows "clip" of token vectors: the dataset of each clip's token count
    default: bool = True      #: its embedding stage is in the default ``[Shard] embeddings`` list (a stage
    #:                          added later is not: that list is part of every shard's digest)

    @property
    def visual(self) -> bool:
        return self.modality == "visual"

    @property
    def per_frame(self) -> bool:
        """Rows per (audio or video) frame: a window can be gathered for any span (segment mode)."""
        return self.rows in ("frame", "video frame")


_VIS = "build the shards with the visual chain (Faces, Align)"
FEATURES: tuple[Feature, ...] = (
    Feature("logmel", "frames/logmel", "frame", "float32", "(64,)", "audio", "LogMel", "always",
            read="window", normalise=True, enable="it is part of every shard; rebuild the shards",
            paper="AVEF §2.1.1 eq 2.1; windows of 64 frames with Δ, ΔΔ"),
    Feature("units", "units/kind", "unit", "int8", "()", "audio", "Prosody", "always",
            paper="Hsu & Wu §III-A prosodic units"),
    Feature("crop", "video/crop", "video frame", "uint8", "(173, 173, 3)", "visual", "Faces", "--video true",
            read="window", enable=_VIS, paper="AVEF §2.1.2 face crops"),
    Feature("crop_small", "video/crop_small", "video frame", "uint8", "(72, 72, 3)", "visual", "Faces",
            "--video true", read="window", enable=_VIS, paper="Hsu & Wu Table 2 (72×72)"),
    Feature("pca", "video/pca", "video frame", "float32", "(20,)", "visual", "LandmarkPCA", "--video true",
            read="window", normalise=True, enable="build the shards with the visual chain (LandmarkPCA)",
            paper="Chao §3.1 whitened 49-point shape"),
    Feature("descriptor", "video/descriptor", "video frame", "float32", "(128,)", "visual", "FaceDescriptor",
            "--video true", read="window", normalise=True, embedding="descriptor",
            enable=f"{_EMB} (dlib face descriptor)", paper="dlib ResNet face descriptor"),
    Feature("waveform", "audio/waveform", "sample", "float32", "()", "audio", "Waveform",
            "[Shard] embeddings (default)", read="clip", embedding="waveform", enable=f"{_EMB} (waveform)", paper="Priyasad §2.1 SincNet input"),
    Feature("glove", "text/glove", "clip", "float32", "(100, 300)", "text", "GloVe",
            "[GloVe] path and a transcript column", read="clip", embedding="glove", needs="path+transcript",
            enable=f"{_EMB} with GloVe vectors and a transcript column", paper="Priyasad §3.1"),
    Feature("vggish", "vggish/embedding", "patch", "float32/uint8", "(128,)", "audio", "VGGish",
            "[VGGish] weights", read="clip", normalise=True, embedding="vggish", needs="weights",
            enable=f"{_EMB} with VGGish weights", paper="Lucas §3 VGGish per 0.96 s"),
    Feature("vggish_window", "windows/vggish", "window", "float32", "(128,)", "audio", "VGGish",
            "[VGGish] weights", read="window", normalise=True, embedding="vggish", needs="weights",
            enable=f"{_EMB} with VGGish weights", paper="Lucas §3, one patch per 655 ms window"),
    Feature("vggface", "video/vggface", "video frame", "float32", "(D,)", "visual", "VGGFace",
            "[VGGFace] weights and --video true", read="window", normalise=True, embedding="vggface",
            needs="weights", enable=f"{_EMB} with VGGFace enabled", paper="Hsu & Wu §III-B VGGFace"),
)


def _declared() -> tuple[Feature, ...]:
    """The features that extractor modules of ``features/`` declare themselves: a module-level
    ``SHARD_FEATURES`` tuple of ``Feature`` keyword dicts (issue 22 item 5: a new embedding is its
    extractor, its stage and its config section, with no list elsewhere to extend). Only modules
    whose source names ``SHARD_FEATURES`` are imported; they import their heavy libraries lazily."""
    import importlib
    import os

    here, out = os.path.dirname(os.path.abspath(__file__)), []
    for name in sorted(os.listdir(here)):
        if not name.endswith(".py") or name in ("registry.py", "__init__.py"):
            continue
        with open(os.path.join(here, name), encoding="utf-8") as f:
            if "\nSHARD_FEATURES = " not in f.read():
                continue
        module = importlib.import_module(f"features.{name[:-3]}")
        out += [Feature(**d) for d in module.SHARD_FEATURES]
    return tuple(out)


FEATURES = FEATURES + _declared()
BY_NAME = {f.name: f for f in FEATURES}


def embedding_stages(*, default_only: bool = False) -> tuple[str, ...]:
    """The ``[Shard] embeddings`` entries, in declaration order: the order of a shard's
    ``embeddings`` attribute (part of its bytes: keep it). ``default_only``: the default list."""
    return tuple(dict.fromkeys(f.embedding for f in FEATURES if f.embedding and (f.default or not default_only)))


def stage_features(stage: str) -> list[Feature]:
    return [f for f in FEATURES if f.embedding == stage]


def visual_stages() -> tuple[str, ...]:
    """Embedding stages computed from the face crops: not in audio-only shards."""
    return tuple(s for s in embedding_stages() if all(f.visual for f in stage_features(s)))


def needs(stage: str) -> str | None:
    return stage_features(stage)[0].needs


def trainer_features() -> dict:
    """{name: Feature} of the features a trainer reads (``read`` set)."""
    return {f.name: f for f in FEATURES if f.read}


def markdown_table() -> str:
    """The feature table of ``docs/shard-format.md``."""
    rows = ["| feature | dataset | one row per | dtype, row shape | modality | made by | in a shard when | "
            "a trainer reads | normalised |",
            "|---|---|---|---|---|---|---|---|---|"]
    for f in FEATURES:
        rows.append(f"| `{f.name}` | `/{f.dataset}` | {f.rows} | {f.dtype} {f.shape} | {f.modality} | {f.stage} | "
                    f"{f.switch} | {f.read or '-'} | {'yes' if f.normalise else 'no'} |")
    return "\n".join(rows)


BEGIN, END = "<!-- BEGIN generated feature table -->", "<!-- END generated feature table -->"


def write_page(path: str) -> None:
    """Put ``markdown_table()`` between the markers of the page at ``path``."""
    with open(path) as f:
        page = f.read()
    if BEGIN not in page or END not in page:
        raise ValueError(f"{path}: no {BEGIN} ... {END} markers")
    head, rest = page.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    with open(path, "w") as f:
        f.write(f"{head}{BEGIN}\n{markdown_table()}\n{END}{tail}")


if __name__ == "__main__":
    import os
    import sys

    if sys.argv[1:] == ["--write"]:   # python -m features.registry --write: update docs/shard-format.md
        try:
            write_page(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "shard-format.md"))
        except ValueError as err:
            sys.exit(str(err))
    else:
        print(markdown_table())
