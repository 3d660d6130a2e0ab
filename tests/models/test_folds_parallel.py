"""``--folds-parallel N`` (issue 23 item 6): the folds run in N processes at once and give what one
process gives fold by fold; a failing fold is named with its log."""
import json
import os

import pytest

from models.train import _without, main, parse_args

ARGS = ["--model", "perception", "--dataset", "demo", "--protocol", "loso", "--epochs", "2", "--device", "cpu",
        "--threads", "1", "--data", "stream"]


def test_folds_in_parallel_processes_equal_the_folds_one_by_one(full_store, tmp_path):
    common = [*ARGS, "--store", str(full_store)]
    one = main([*common, "--out", str(tmp_path / "one")])
    par = main([*common, "--out", str(tmp_path / "par"), "--folds-parallel", "3"])
    assert len(one["folds"]) == len(par["folds"]) == 3
    for a, b in zip(one["folds"], par["folds"]):
        assert a["fold"] == b["fold"] and a["predictions"] == b["predictions"] and a["history"] == b["history"]
    assert one["summary"] == par["summary"]
    proto = tmp_path / "par" / "perception" / "demo" / "loso"
    for r in par["folds"]:
        log = (proto / r["fold"] / "train.log").read_text()
        assert f"{r['fold']} train epoch 2/2" in log          # each process logged its own fold
    assert json.loads((proto / "summary.json").read_text())["folds"] == [r["fold"] for r in par["folds"]]


def test_a_failing_fold_is_named_with_its_log(full_store, tmp_path):
    with pytest.raises(ValueError, match=r"--folds-parallel: .*exit 2: .*no_such_field.*train\.log"):
        main([*ARGS, "--store", str(full_store), "--out", str(tmp_path), "--folds-parallel", "2",
              "--fold", "0", "--fold", "1", "--set", "no_such_field=1"])


def test_the_children_get_every_option_but_the_fold_choice():
    argv = ["--model", "avef", "--fold", "0", "--folds-parallel=2", "--fold=1", "--epochs", "3", "--folds-parallel", "4"]
    assert _without(argv, "--folds-parallel", "--fold") == ["--model", "avef", "--epochs", "3"]


def test_options_are_taken_by_their_full_names_only():
    """An abbreviation (``--folds-p 3``) would reach the children unstripped: it is refused."""
    with pytest.raises(SystemExit):
        parse_args(["--model", "avef", "--dataset", "demo", "--folds-p", "3"])
    assert parse_args(["--model", "avef", "--dataset", "demo", "--folds-parallel", "3"]).folds_parallel == 3
