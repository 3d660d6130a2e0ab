"""One home for each default (issue 22 item 3): every value workflows.cfg gives a task parameter is
that parameter's default in the code, so reading either tells the truth and neither silently wins."""
import configparser
import os

import luigi.task_register

import pipeline  # noqa: F401  (registers every task)
from pipeline import embeddings, shards, video  # noqa: F401
from tests.conftest import ROOT


def test_workflows_cfg_equals_the_code_defaults():
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "workflows.cfg"))
    tasks = luigi.task_register.Register._get_reg()
    checked, drift = 0, []
    for section in cfg.sections():
        cls = tasks.get(section)
        if not isinstance(cls, type) or not cls.__module__.startswith("pipeline."):   # luigi's [core] ...
            continue
        params = dict(cls.get_params())
        for key, text in cfg.items(section):
            assert key in params, f"workflows.cfg [{section}] {key}: not a parameter of {section}"
            p = params[key]
            value = p.parse(text)
            default = p._default
            if isinstance(default, (tuple, list)):
                value, default = tuple(value), tuple(default)
            checked += 1
            if value != default:
                drift.append(f"[{section}] {key} = {text!r}, code default {p._default!r}")
    assert not drift, drift
    assert checked > 40
