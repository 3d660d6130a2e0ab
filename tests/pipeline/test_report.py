"""``avstore report`` (issue 20 item 2): the page renders in a real headless Chromium, its numbers
are the shards' own, the worst clips come first; the contact sheet finds the build's source media
whichever manifest the corpus was built with."""
import html
import importlib.util
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from features.store import ShardReader
from pipeline import cli
from pipeline import report
from tests.conftest import ROOT
from tests.pipeline.test_build import by_clip, shards

SHEETS = 3


def chromium() -> str:
    """The headless browser; a missing one fails the test (CI installs it: scripts/setup.sh)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail("chromium is not installed: run `bash scripts/setup.sh` (apt-get install chromium); "
                    "the report page is tested in a real headless browser")
    return found


def browse(page, tmp_path, *args):
    """Run headless Chromium on the file ``page`` with ``args``; returns its stdout."""
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           f"--user-data-dir={tmp_path / 'chromium-profile'}", *args, f"file://{page}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture(scope="module")
def made(demo_store, tmp_path_factory):
    """The report of the demo build (newest record, 3 contact sheets) and the CLI's output."""
    out = tmp_path_factory.mktemp("report") / "site"
    assert cli.main(["--store", str(demo_store), "report", "--dataset", "demo", "--out", str(out),
                         "--sheets", str(SHEETS)]) == 0
    with open(out / "report.json") as f:
        return out, json.load(f)


def test_page_renders_in_chromium_with_every_image_and_row(made, demo_store, tmp_path):
    out, numbers = made
    n_clips = sum(len(ShardReader(p).clips["id"]) for p in shards(demo_store))
    dom = browse(out / "index.html", tmp_path, "--dump-dom")
    body = dict(re.findall(r'data-(images|rows|reasons)="([^"]*)"', re.search(r"<body[^>]*>", dom).group(0)))
    expected = 1 + len(report.METRICS) + SHEETS  # status chart, histograms, contact sheets
    assert body["images"] == f"{expected}/{expected}", body  # every <img> decoded with pixels
    assert int(body["rows"]) == n_clips == len(numbers["clips"]) == 21
    assert int(body["reasons"]) >= 3  # the demo's three failed clips, their video and embedding stages
    sources = re.findall(r'<img[^>]* src="([^"]+)"', dom)
    assert len(sources) == expected and all(not s.startswith(("/", "file:", "http")) for s in sources), sources
    for cid in ("bad_noaudio", "bad_silent", "bad_truncated"):
        assert cid in dom
    assert "the file has no audio stream" in html.unescape(dom)  # a reason, in the reasons table


def test_screenshot_is_a_drawn_page(made, tmp_path):
    from PIL import Image

    out, _ = made
    shot = tmp_path / "report.png"
    browse(out / "index.html", tmp_path, f"--screenshot={shot}", "--window-size=1280,2000")
    with Image.open(shot) as im:
        assert im.format == "PNG" and im.size == (1280, 2000)
        pixels = np.asarray(im.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # text, bars, table: not blank
    drawn = pixels.min(axis=2) < 200
    assert 0.03 < drawn.mean() < 0.9 and drawn[:1000].mean() > 0.03  # the status chart and the table at the top
    if os.environ.get("AVSTORE_REPORT_SCREENSHOT"):
        os.makedirs(os.path.dirname(os.path.abspath(os.environ["AVSTORE_REPORT_SCREENSHOT"])), exist_ok=True)
        shutil.copy(shot, os.environ["AVSTORE_REPORT_SCREENSHOT"])


def test_numbers_are_the_shards_and_the_worst_come_first(made, demo_store):
    out, numbers = made
    rows = numbers["clips"]
    clips = by_clip(shards(demo_store))
    for r in rows:  # each number against the per-clip readers of features.store
        s, c = clips[r["id"]]
        w = s.windows["clip"] == c
        assert r["windows"] == int(w.sum())
        assert r["status"] == s.clips["status"][c]
        voiced = s.group("frames")["voiced"][s.group("frames")["offsets"][c]:s.group("frames")["offsets"][c + 1]]
        assert (r["voiced_fraction"] is None) == (len(voiced) == 0)
        if len(voiced):
            assert r["voiced_fraction"] == pytest.approx(voiced.mean())
        found = s.video(c, "found")
        assert r["face_found"] == pytest.approx(found.mean() if len(found) else 0.0)
        if found.any():
            box = s.video(c, "box")[found.astype(bool)]
            assert r["face_px"] == pytest.approx(np.sqrt((box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])).mean())
        floor = float(s.clips["logmel_floor_fraction"][c])
        assert r["floor_fraction"] == (None if floor != floor else pytest.approx(floor))
    failed = [r["id"] for r in rows if r["status"] != "ok"]
    assert [r["id"] for r in rows[:3]] == failed == ["bad_noaudio", "bad_silent", "bad_truncated"]  # by status
    scores = [r["score"] for r in rows[3:]]
    assert scores == sorted(scores)
    assert rows[3]["id"] == "s1_sadness_02" and rows[3]["score"] == 0  # a .wav: no face in any frame
    for r in rows[4:]:
        assert r["score"] == pytest.approx(min(r["voiced_fraction"], r["face_found"], 1 - r["floor_fraction"]))
    assert sorted(os.listdir(out / "sheets")) == [f"{k:03d}_{r['id']}.png" for k, r in enumerate(rows[:SHEETS], 1)]


def test_pick_defaults_to_the_newest_build_and_resolves_prefixes(tmp_path):
    builds = tmp_path / "ds" / "builds"
    builds.mkdir(parents=True)
    for key, created in (("aaaa1111", "2020-01-01T00:00:00+00:00"), ("aaaa2222", "2030-01-01T00:00:00+00:00"),
                         ("bbbb3333", "2025-01-01T00:00:00+00:00")):
        (builds / f"{key}.json").write_text(json.dumps({"created": created, "files": {}}))
    store = str(tmp_path)
    assert report.pick(store, "ds", None)[1] == "aaaa2222"
    assert report.pick(store, "ds", "bbbb")[1] == "bbbb3333"
    assert report.pick(store, None, "aaaa1")[:2] == ("ds", "aaaa1111")
    for dataset, build, message in (("ds", "aaaa", "2 feature sets match --build 'aaaa'"),
                                    ("ds", "cccc", "0 feature sets match"), ("nope", None, "no dataset 'nope'"),
                                    (None, None, "name the feature set")):
        with pytest.raises(report.ReportError, match=re.escape(message)):
            report.pick(store, dataset, build)


def test_an_audio_only_shard_scores_without_a_face_signal(tmp_path):
    """No video group (``--video false``) and no floor column (an older shard): the score is the
    voiced fraction alone; the failed clip comes first, then the least voiced."""
    from features import store

    path = tmp_path / "shard-0000.h5"
    store.write(path, attrs={"dataset": "x"}, groups={
        "clips": {"id": np.array(["a", "b", "c"], dtype=object),
                  "status": np.array(["ok", "too_short", "ok"], dtype=object),
                  "reason": np.array(["", "segment: 3 voiced frames", ""], dtype=object),
                  "duration_s": np.array([2.0, 0.3, 3.0], np.float32)},
        "frames": {"voiced": np.array([1, 1, 0, 0, 0, 1, 1, 1, 1, 0], np.uint8), "offsets": np.array([0, 4, 5, 10])},
        "windows": {"clip": np.array([0, 2, 2])}})
    rows = report.worst_first(report.shard_rows(str(path)))
    assert [r["id"] for r in rows] == ["b", "a", "c"]
    assert [r["score"] for r in rows] == [0.0, 0.5, 0.8] and [r["windows"] for r in rows] == [0, 1, 2]
    assert all(np.isnan(r["face_found"]) and np.isnan(r["face_px"]) and np.isnan(r["floor_fraction"]) for r in rows)
    assert report.reason_table(rows) == [("audio", "too_short", "segment: 3 voiced frames", ["b"])]


@pytest.mark.parametrize("args, message", [
    (["--dataset", "nosuch"], "no dataset 'nosuch' in the store"),
    (["--dataset", "demo", "--build", "ffffffffffff"], "0 feature sets match --build 'ffffffffffff'"),
    (["--dataset", "empty"], "no build record of dataset 'empty'"),
    (["--dataset", "demo", "--sheets", "-1"], "--sheets -1"),
])
def test_bad_input_is_one_line_and_exit_1(demo_store, tmp_path, capsys, args, message):
    store = tmp_path / "store"
    (store / "empty" / "shards").mkdir(parents=True)
    os.symlink(demo_store / "demo", store / "demo")  # the demo build, read only
    assert cli.main(["--store", str(store), "report", *args, "--out", str(tmp_path / "site")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("avstore report: ") and message in err and err.count("\n") == 1, err
    assert "Traceback" not in err and not (tmp_path / "site" / "index.html").exists()


def test_missing_shard_and_out_that_is_a_file(demo_store, tmp_path, capsys):
    store = tmp_path / "store"
    shutil.copytree(demo_store / "demo" / "builds", store / "demo" / "builds")  # records, no shards
    assert cli.main(["--store", str(store), "report", "--dataset", "demo", "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "shard(s) of demo/" in err and "are not in" in err and "avstore pull --dataset demo" in err, err
    (tmp_path / "file").write_text("")
    assert cli.main(["--store", str(demo_store), "report", "--dataset", "demo", "--out",
                         str(tmp_path / "file")]) == 1
    assert "is a file" in capsys.readouterr().err


# -- the contact sheet finds the build's own source media ------------------------------------------
def contact_sheet():
    spec = importlib.util.spec_from_file_location("contact_sheet", os.path.join(ROOT, "scripts", "contact_sheet.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_contact_sheet_finds_the_source_without_the_manifest_that_built_it(demo_store, tmp_path):
    import matplotlib.image

    cs = contact_sheet()
    s, c = by_clip(shards(demo_store))["s1_anger_01"]
    other = tmp_path / "other.yaml"  # a manifest without the demo: as if the corpus came from another one
    other.write_text("datasets: {}\n")
    path, why = cs.source_file(s, c, None, str(other))
    assert path == os.path.join(ROOT, "tests", "data", "demo", "clips", "s1_anger_01.mp4") and why == ""
    a = cs.sheet(s.path, "s1_anger_01", out=str(tmp_path / "a.png"), manifest=str(other), windows=1)
    b = cs.sheet(s.path, "s1_anger_01", out=str(tmp_path / "b.png"), windows=1)
    assert np.array_equal(matplotlib.image.imread(a), matplotlib.image.imread(b))  # the waveform and full frames


def test_contact_sheet_of_a_lone_shard_says_why_it_has_no_source(demo_store, tmp_path):
    cs = contact_sheet()
    s, c = by_clip(shards(demo_store))["s1_anger_01"]
    lone = tmp_path / "store" / "demo" / "shards" / "x" / os.path.basename(s.path)
    lone.parent.mkdir(parents=True)
    os.symlink(s.path, lone)  # the shard without its store's stage outputs (a pulled or copied shard)
    path, why = cs.source_file(ShardReader(lone), c, None, str(tmp_path / "no_manifest.yaml"))
    assert path is None and "no decode output beside the shard" in why and "no dataset root" in why
    path, why = cs.source_file(ShardReader(lone), c, None, os.path.join(ROOT, "data_manifest.yaml"))
    assert path.endswith("s1_anger_01.mp4") and why == ""  # the manifest's root still works
