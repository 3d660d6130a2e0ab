"""features.registry (issue 22 item 1): each feature declared once, and every list the store, the
pipeline and the trainers keep is the registry's; the declarations match what a built shard holds;
the shard-format page holds the generated table."""
import os
import re

import h5py
import pytest

from features import registry
from features import store as fstore
from models import data
from pipeline import embeddings, shards
from tests.conftest import ROOT


def test_the_declarations_match_a_built_shard(full_store):
    path = sorted(p for p in data.find_shards(full_store, "demo"))[0]
    s = fstore.ShardReader(path)
    with h5py.File(path) as f:
        for feat in registry.FEATURES:
            if not feat.default or feat.name == "vggface":   # need weights or a model folder the demo build
                assert feat.needs.startswith("weights") and not s.has(feat.name)   # does not configure
                continue
            ds = f[feat.dataset]
            assert str(ds.dtype) in feat.dtype.split("/"), (feat.name, ds.dtype)
            assert str(tuple(ds.shape[1:])) == feat.shape, (feat.name, ds.shape)
            assert s.has(feat.name)
    assert s.attrs["embeddings"] == [e for e in registry.embedding_stages(default_only=True) if e != "vggface"]


def test_every_list_is_the_registrys():
    assert list(embeddings.EMBEDDINGS) == list(registry.embedding_stages())
    for name, task in embeddings.EMBEDDINGS.items():
        assert task.__name__ == registry.stage_features(name)[0].stage
    assert tuple(shards.Shard.embeddings._default) == registry.embedding_stages(default_only=True)
    assert set(shards.VIDEO_EMBEDDINGS) == {"descriptor", "vggface", "image_encoder"}
    assert fstore.FEATURES == {f.name: f.dataset for f in registry.FEATURES}
    assert set(data.FEATURES) == {f.name for f in registry.FEATURES if f.read}
    assert set(data.VISUAL) == {"crop", "crop_small", "pca", "descriptor", "vggface", "image_encoder"}
    assert "vggish_window" not in data.SEGMENT_FEATURES and "logmel" in data.SEGMENT_FEATURES
    assert set(data.NORMALISED) == {"logmel", "pca", "descriptor", "vggish", "vggish_window", "vggface",
                                    "wav2vec", "wav2vec_window", "image_encoder"}
    for model in ("avef", "aclstm", "dlstm", "perception", "sincnet_text"):
        mod = __import__(f"models.{model}", fromlist=["FEATURES"])
        assert set(mod.FEATURES) <= set(data.FEATURES), model


def test_a_new_feature_is_one_declaration(monkeypatch):
    """Declaring a feature in the registry alone makes the reader know it."""
    extra = registry.Feature("wav2vec_window", "windows/wav2vec", "window", "float32", "(768,)", "audio",
                             "Wav2Vec", "[Wav2Vec] model", read="window", normalise=True)
    monkeypatch.setattr(registry, "FEATURES", (*registry.FEATURES, extra))
    assert "wav2vec_window" in registry.trainer_features()
    assert "`/windows/wav2vec`" in registry.markdown_table()


def test_the_shard_format_page_holds_the_generated_table():
    page = open(os.path.join(ROOT, "docs", "shard-format.md")).read()
    m = re.search(r"<!-- BEGIN generated feature table -->\n(.*?)\n<!-- END generated feature table -->", page, re.S)
    assert m, "docs/shard-format.md lacks the generated-table markers"
    assert m.group(1).strip() == registry.markdown_table().strip(), \
        "docs/shard-format.md is out of date: python -m features.registry --write"
