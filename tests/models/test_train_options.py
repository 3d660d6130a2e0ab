"""Training options that follow each paper: batch sizes and model selection (issue 18 items 4, 8)."""
import pytest

import models
from models import train


@pytest.mark.parametrize("model, size", [("avef", 10), ("aclstm", 16), ("dlstm", 16), ("perception", 16),
                                         ("sincnet_text", 64)])
def test_every_config_carries_its_papers_batch_size(model, size):
    """AVEF Table 3: 10; Priyasad §3.1: 64; Hsu & Wu, Lucas and Chao give none (16, documented)."""
    import models
    assert models.load(model).CONFIG().batch_size == size


def test_model_selection_follows_each_paper():
    """AVEF Table 3: a fixed 500 epochs, the last kept; Chao §4.1: early stopping on validation
    accuracy (WA); the others: UA (or mean CCC) with patience 10; --patience overrides."""
    import models
    args = train.parse_args(["--model", "avef", "--dataset", "demo"])
    assert train.selection(models.load("avef"), args) == ("last", None)
    assert train.selection(models.load("perception"), args) == ("WA", 10)
    assert train.selection(models.load("dlstm"), args) == (None, 10)
    args.patience = 3
    assert train.selection(models.load("avef"), args) == (None, 3)
    res = {"WA": 0.7, "UA": 0.5}
    assert train._val_metric(res, "WA") == 0.7 and train._val_metric(res) == 0.5
    assert train._val_metric({"CCC_valence": 0.2, "CCC_arousal": 0.4}) == pytest.approx(0.3)


def test_a_label_subset_keeps_only_its_clips_and_sets_the_classes():
    """baum1 has seven classes; AVEF used BAUM-1s's six basic emotions (issue 18 item 8)."""
    from features.errors import ParameterError
    from models.data import label_subset
    from tests.models.test_protocols import fake_table

    t = fake_table()                     # labels a, b alternating; the last clip not ok
    sub = label_subset(t, ["b"])
    assert sub.manifest["label_set"] == ["b"] and t.manifest["label_set"] == ["a", "b"]
    assert set(sub.label[sub.usable]) == {"b"} and sub.usable.sum() == (t.usable & (t.label == "b")).sum()
    assert set(sub.status[t.label == "a"]) == {"excluded_label"}
    assert train.classes_of(models.load("perception"), models.load("perception").CONFIG(), sub.manifest["label_set"])[0] == ["b"]
    with pytest.raises(ParameterError, match="not in the dataset's label set"):
        label_subset(t, ["a", "neutral"])
    assert train.parse_args(["--model", "avef", "--dataset", "baum1", "--labels", "a,b"]).labels == "a,b"
