"""scripts/faults.py (issue 19): its fast cases hold, and a case that does not hold is never shown as held."""
import argparse
import importlib.util
import os
import sys

import pytest

from tests.conftest import ROOT


@pytest.fixture(scope="module")
def faults():
    spec = importlib.util.spec_from_file_location("faults", os.path.join(ROOT, "scripts", "faults.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["faults"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def ctx(faults, work):
    return faults.Ctx(argparse.Namespace(work=str(work), seed=0, kills=1, flips=4, keep=False, cases=""))


@pytest.mark.parametrize("case", ["anchor_bomb", "manifest_inputs"])
def test_a_fast_case_holds(faults, tmp_path, case):
    rows = faults.CASES[case](ctx(faults, tmp_path))
    assert rows and all(r.held for r in rows), faults.table(rows)


def test_a_pulled_shard_with_external_storage_is_refused(faults, tmp_path):
    """The remote case's rows that need no tmpfs (the 32 MiB one needs root to mount)."""
    rows = [r for r in faults.case_remote(ctx(faults, tmp_path)) if "32 MiB free" not in r.case]
    assert len(rows) == 5 and all(r.held for r in rows), faults.table(rows)
    (ext,) = [r for r in rows if "external storage" in r.case]
    assert "clips/leak" in ext.observed


def test_a_case_that_does_not_hold_fails_the_run(faults, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(faults, "CASES", {"fake": lambda c: [faults.Row("fake", "x", "y | z", False)],
                                          "fine": lambda c: [faults.Row("fine", "x", "y", True)]})
    assert faults.main(["--work", str(tmp_path), "--cases", "fake,fine"]) == 1
    out = capsys.readouterr().out
    assert "| fake | x | y \\| z | **no** |" in out and "| fine | x | y | yes |" in out
    assert out.rstrip().endswith("1 of 2 cases held")
    monkeypatch.setattr(faults, "CASES", {"broken": lambda c: 1 / 0})
    assert faults.main(["--work", str(tmp_path), "--cases", "broken"]) == 1
    assert "faults.py could not finish the case: ZeroDivisionError" in capsys.readouterr().out
