import glob
import os
import subprocess

import h5py
import luigi
import numpy as np

from features import store
from features.segments import count_windows
from tests.conftest import ROOT, cli_env
from tests.pipeline.conftest import build, make_corpus



def shards(store_dir, dataset="demo"):
    return sorted(glob.glob(os.path.join(store_dir, dataset, "shards", "*", "shard-*.h5")))


def by_clip(paths):
    """{clip id: (shard, clip index)} over the shards."""
    out = {}
    for p in paths:
        s = store.ShardReader(p)
        for i, cid in enumerate(s.clips["id"]):
            out[cid] = (s, i)
    return out


def test_demo_build_statuses_windows_and_provenance(demo_store):
    paths = shards(demo_store)
    assert len(paths) == 3  # 21 clips in batches of 8
    clips = by_clip(paths)
    assert len(clips) == 21
    status = {cid: s.clips["status"][i] for cid, (s, i) in clips.items()}
    assert status["bad_noaudio"] == "no_audio_stream"
    assert status["bad_silent"] == "no_voiced_frames"
    assert status["bad_truncated"] in ("truncated", "decode_error")
    assert sum(v == "ok" for v in status.values()) == 18
    for cid, (s, i) in clips.items():
        w = s.windows
        mine = np.flatnonzero(w["clip"] == i)
        if status[cid] != "ok":
            assert len(mine) == 0 and s.clips["reason"][i]
            continue
        voiced = s.group("frames")["voiced"][s.group("frames")["offsets"][i]:s.group("frames")["offsets"][i + 1]]
        assert len(mine) == count_windows(int(voiced.sum())) > 0
        assert np.all(voiced[w["frames"][mine]] == 1)  # windows use voiced frames only
        assert np.all(w["t_end"][mine] - w["t_begin"][mine] >= 0.655 - 1e-6)
        assert s.window(mine[0]).shape == (64, 64, 3)
    attrs = store.ShardReader(paths[0]).attrs
    assert attrs["dataset"] == "demo" and attrs["config"]["segment"]["hop_frames"] == 34
    assert set(attrs["stages"]) == {"decode", "vad", "prosody", "logmel", "segment", "faces", "align",
                                    "landmark_pca", "descriptor", "waveform"}  # + the default embeddings
    assert "librosa" in attrs["libraries"] and attrs["chain"]["code_version"]
    s0 = store.ShardReader(paths[0])
    assert all(len(h) == 64 for h in s0.clips["source_sha256"] if h)


def test_second_run_with_nothing_changed_runs_no_task(store_copy):
    assert build(store_copy) == []


def test_segmentation_change_on_the_command_line_reruns_only_segmentation(store_copy):
    ran = build(store_copy, "--Segment-hop-frames", "30")
    assert ran == ["Align"] * 3 + ["BuildShards"] + ["Segment"] * 3 + ["Shard"] * 3
    new = [p for p in shards(store_copy) if store.ShardReader(p).attrs["config"]["segment"]["hop_frames"] == 30]
    assert len(new) == 3
    for s, i in by_clip(new).values():
        if s.clips["status"][i] == "ok":
            voiced = s.group("frames")["voiced"][s.group("frames")["offsets"][i]:s.group("frames")["offsets"][i + 1]]
            assert np.sum(s.windows["clip"] == i) == count_windows(int(voiced.sum()), hop_frames=30)
    assert build(store_copy, "--Segment-hop-frames", "30") == []
    assert build(store_copy) == []  # the hop-34 outputs are still there


def test_segmentation_change_in_the_config_reruns_only_segmentation(store_copy):
    config = luigi.configuration.get_config()
    old = config.get("Segment", "window_frames")
    config.set("Segment", "window_frames", "48")
    try:
        assert build(store_copy) == ["Align"] * 3 + ["BuildShards"] + ["Segment"] * 3 + ["Shard"] * 3
    finally:
        config.set("Segment", "window_frames", old)


def test_vad_change_reruns_vad_and_what_follows_but_not_decoding(store_copy):
    ran = build(store_copy, "--VAD-aggressiveness", "3")
    assert ran == ["Align"] * 3 + ["BuildShards"] + ["Segment"] * 3 + ["Shard"] * 3 + ["VAD"] * 3


def test_bad_input_is_recorded_and_good_clips_are_unchanged(tmp_path):
    good = ["s1_anger_01", "s2_happiness_02", "s3_sadness_02", "s2_anger_01", "s3_happiness_02", "s1_sadness_02"]
    clean = make_corpus(tmp_path / "clean", good=good, bad=False)
    dirty = make_corpus(tmp_path / "dirty", good=good, bad=True)
    build(tmp_path / "store_clean", dataset="mini", manifest=clean)
    build(tmp_path / "store_dirty", dataset="mini", manifest=dirty)
    a, b = by_clip(shards(tmp_path / "store_clean", "mini")), by_clip(shards(tmp_path / "store_dirty", "mini"))
    status = {cid: s.clips["status"][i] for cid, (s, i) in b.items()}
    assert status == {**{g: "ok" for g in good}, "bad_silent": "no_voiced_frames",
                      "bad_noaudio": "no_audio_stream", "bad_truncated": status["bad_truncated"],
                      "bad_zero": "decode_error", "bad_corrupt": "decode_error", "bad_short": "too_short", "bad_missing": "missing_file"}
    assert status["bad_truncated"] in ("truncated", "decode_error")
    for cid in good:
        (sa, i), (sb, j) = a[cid], b[cid]
        np.testing.assert_array_equal(sa.logmel(i), sb.logmel(j))
        np.testing.assert_array_equal(sa.vad(i), sb.vad(j))
        for k in ("t_begin", "t_end", "kind"):
            np.testing.assert_array_equal(sa.units(i)[k], sb.units(j)[k])
        wa, wb = sa.windows["clip"] == i, sb.windows["clip"] == j
        for k in ("frames", "t_begin", "t_end", "unit", "weight"):
            np.testing.assert_array_equal(sa.windows[k][wa], sb.windows[k][wb])
        assert sa.clips["source_sha256"][i] == sb.clips["source_sha256"][j]


def test_cli_builds_with_exit_0_and_prints_the_summary(tmp_path):
    good = ["s1_anger_01", "s2_sadness_01"]
    manifest = make_corpus(tmp_path / "c", good=good, bad=True)
    cmd = ["luigi", "--module", "pipeline", "BuildShards", "--dataset", "mini", "--manifest", str(manifest),
           "--store", str(tmp_path / "store"), "--local-scheduler"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=cli_env())
    assert out.returncode == 0, out.stderr[-2000:]
    assert "BuildShards mini: 2 clips ok, 7 failed" in out.stdout
    assert "failed no_audio_stream: 1" in out.stdout
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=cli_env())
    assert again.returncode == 0 and "BuildShards mini: 2 clips ok" in again.stdout


def test_cli_fails_with_nonzero_exit_before_any_work_on_a_bad_manifest(tmp_path):
    manifest = tmp_path / "m.yaml"
    manifest.write_text("datasets:\n  x:\n    root: ${NO_SUCH_ROOT_VAR}\n    clips: '*'\n    labels: l.csv\n"
                        "    label_set: [a]\n    protocol: loso\n")
    env = cli_env({k: v for k, v in os.environ.items() if k != "NO_SUCH_ROOT_VAR"})
    out = subprocess.run(["luigi", "--module", "pipeline", "BuildShards", "--dataset", "x", "--manifest",
                          str(manifest), "--store", str(tmp_path / "store"), "--local-scheduler"],
                         cwd=ROOT, capture_output=True, text=True, env=env)
    assert out.returncode != 0
    assert "dataset 'x': field 'root': environment variable NO_SUCH_ROOT_VAR is not set" in out.stdout + out.stderr
    assert not (tmp_path / "store").exists()


def test_audio_only_shards_reuse_the_audio_stages_and_skip_the_visual_chain(store_copy):
    ran = build(store_copy, "--video", "false")
    assert ran == ["BuildShards"] + ["Shard"] * 3  # decoding, VAD, prosody, log-mel, windows reused
    has_video = {p: "faces" in store.read_attrs(p)["stages"] for p in shards(store_copy)}
    audio_only = [p for p, v in has_video.items() if not v]
    assert len(audio_only) == 3 and sum(has_video.values()) == 3
    full = by_clip([p for p, v in has_video.items() if v])
    for p in audio_only:
        s = store.ShardReader(p)
        assert "video_status" not in s.clips
        with h5py.File(p) as f:
            assert "video" not in f and "pca" not in f and "video_frames" not in f["windows"]
        for i, cid in enumerate(s.clips["id"]):
            ref, j = full[cid]
            np.testing.assert_array_equal(s.logmel(i), ref.logmel(j))
            assert s.clips["status"][i] == ref.clips["status"][j]
        np.testing.assert_array_equal(s.windows["t_begin"], full[s.clips["id"][0]][0].windows["t_begin"])
