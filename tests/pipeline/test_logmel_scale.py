"""Issue 18 item 2: the log-mel scale, the per-clip floored fraction and the build summary line."""
import numpy as np

from features import store
from features.audio import floor_fraction
from pipeline.shards import FLOOR_WARN, format_summary
from tests.pipeline.conftest import build
from tests.pipeline.test_build import shards


def floor_fractions(store_dir, signal_scale=32768.0):
    """{clip id: (stored clips/logmel_floor_fraction, recomputed from the shard, status)} over the
    shards built at ``signal_scale``."""
    out = {}
    for path in shards(store_dir):
        s = store.ShardReader(path)
        if s.attrs["config"]["logmel"]["signal_scale"] != signal_scale:
            continue
        assert s.clips["logmel_floor_fraction"].dtype == np.float32
        frames = s.group("frames")
        for i, (cid, status) in enumerate(zip(s.clips["id"], s.clips["status"])):
            a, b = frames["offsets"][i:i + 2]
            again = floor_fraction(frames["logmel"][a:b], frames["voiced"][a:b]) if status == "ok" else np.nan
            out[cid] = (float(s.clips["logmel_floor_fraction"][i]), again, status)
    return out


def test_the_demo_shards_hold_each_clips_floored_fraction(demo_store):
    """New default (16-bit PCM units): 3.8-9.2 % of the voiced cells of the demo's 18 ok clips
    (median 6.3 %), nearly all in frames of digital silence that the VAD counts as voiced
    (espeak's pauses: 3.7-8.8 % of the voiced frames, floored in every band at any scale; 0-1.1 %
    of the cells of the other voiced frames); the ±1 scale gave 82-97 % (median 87 %)."""
    got = floor_fractions(demo_store)
    ok = {cid: v for cid, v in got.items() if v[2] == "ok"}
    assert len(ok) == 18
    for cid, (stored, again, status) in got.items():
        if status != "ok":
            assert np.isnan(stored), cid
            continue
        assert stored == np.float32(again), cid
    values = np.array([v[0] for v in ok.values()])
    assert values.max() < 0.15 and np.median(values) < 0.1
    attrs = store.ShardReader(shards(demo_store)[0]).attrs
    assert attrs["code_versions"]["logmel"] == "3" and attrs["config"]["logmel"]["signal_scale"] == 32768.0


def test_the_old_scale_is_a_parameter_and_the_summary_names_the_floored_clips(store_copy, capsys):
    capsys.readouterr()
    ran = build(store_copy, "--LogMel-signal-scale", "1")
    assert ran == ["Align"] * 3 + ["BuildShards"] + ["LogMel"] * 3 + ["Segment"] * 3 + ["Shard"] * 3
    out = capsys.readouterr().out
    got = floor_fractions(store_copy, 1.0)
    old = {cid: v[0] for cid, v in got.items() if v[2] == "ok"}
    assert len(old) == 18 and min(old.values()) > FLOOR_WARN  # measured: 82-97 %
    line = next(x for x in out.splitlines() if "log-mel floor binds on > 50 % of voiced cells" in x)
    worst = max(old, key=old.get)
    assert f"{worst} {old[worst]:.2f}" in line and "and 8 more" in line and "--LogMel-signal-scale" in line


def test_format_summary_names_the_clips_above_half_only_when_there_are_some():
    s = {"clips_ok": 3, "clips_failed": {}, "windows": 9, "video": {}, "failed": [], "shards": ["a.h5"],
         "logmel_floor_median": 0.06, "logmel_floored": []}
    assert "log-mel floor" not in format_summary("demo", s, "r.json")
    s.update(logmel_floored=[["quiet_b", 0.91], ["quiet_a", 0.83]], logmel_floor_median=0.83)
    text = format_summary("demo", s, "r.json")
    assert ("  log-mel floor binds on > 50 % of voiced cells: quiet_b 0.91, quiet_a 0.83 (median over the "
            "ok clips 0.83); check the input level or --LogMel-signal-scale") in text
    del s["logmel_floored"], s["logmel_floor_median"]  # a record written before the column
    assert "log-mel floor" not in format_summary("demo", s, "r.json")
