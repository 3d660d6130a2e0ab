"""scripts/contact_sheet.py renders a readable sheet for good, audio-only and failed clips."""
import importlib.util
import os

import numpy as np
import pytest

from tests.conftest import ROOT
from tests.pipeline.test_build import by_clip, shards

spec = importlib.util.spec_from_file_location("contact_sheet", os.path.join(ROOT, "scripts", "contact_sheet.py"))
contact_sheet = importlib.util.module_from_spec(spec)
spec.loader.exec_module(contact_sheet)


def render(demo_store, tmp_path, clip_id, *args, name=None):
    shard, _ = by_clip(shards(demo_store))[clip_id]
    out = tmp_path / f"{name or clip_id}.png"
    assert contact_sheet.main([shard.path, clip_id, "--out", str(out), *args]) == str(out)
    import matplotlib.image

    assert out.is_file() and out.stat().st_size > 50_000
    return matplotlib.image.imread(out)[..., :3]  # (H, W, 3) floats in [0, 1]


def test_sheet_of_a_good_clip_has_the_timeline_frames_and_window_rows(demo_store, tmp_path):
    image = render(demo_store, tmp_path, "s1_anger_01")
    h, w, _ = image.shape
    assert w > 1200 and h > 800  # 16 in wide at 100 dpi; timeline + frame strip + 3 window rows
    assert image.std() > 0.15  # not blank: waveform, photographs, log-mel images
    drawn = image.min(axis=2) < 0.9  # not (near) white
    assert drawn[: h // 3].mean() > 0.25  # the timeline: unit spans and the waveform
    assert drawn[h // 2:].mean() > 0.25  # the face crops and log-mel images of the windows


def test_sheet_falls_back_to_the_stored_crops_without_the_source(demo_store, tmp_path):
    full = render(demo_store, tmp_path, "s1_anger_01")
    crops = render(demo_store, tmp_path, "s1_anger_01", "--root", str(tmp_path / "nowhere"), name="crops")
    assert crops.std() > 0.15
    assert full.shape != crops.shape or np.abs(full - crops).mean() > 0.01  # another picture


def test_audio_only_and_failed_clips_render(demo_store, tmp_path):
    for clip_id in ("s1_sadness_02", "bad_silent", "bad_truncated", "bad_noaudio"):
        image = render(demo_store, tmp_path, clip_id, "--windows", "2")
        assert image.std() > 0.05, clip_id


def test_unknown_clip_exits_with_code_2(demo_store, tmp_path, capsys):
    shard, _ = by_clip(shards(demo_store))["s1_anger_01"]
    with pytest.raises(SystemExit) as err:
        contact_sheet.main([shard.path, "no_such_clip", "--out", str(tmp_path / "x.png")])
    assert err.value.code == 2
    assert "no_such_clip" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
