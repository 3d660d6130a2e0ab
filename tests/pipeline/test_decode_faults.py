"""Issue 19 item 1: one clip must never bring its batch down.

Any 8-channel stream (7.1 AAC, 8-channel wav / flac) segfaulted in PyAV's ``to_ndarray()``: with
one worker the build died (exit 139), with two the batch failed and its good clips got no shard.
Now every layout decodes, and the native decoding runs in a child process
(``pipeline.audio.IsolatedDecoder``): a crash there is the clip's status "error" with the reason
"decoder crashed: signal 11 (SIGSEGV)", and the rest of the batch is decoded and written.
"""
import faulthandler
import glob
import os
import signal
import subprocess

import luigi
import numpy as np
import pytest

from features import audio, store
from pipeline.audio import Decode, IsolatedDecoder

CHANNELS = {"mono": 1, "stereo": 2, "surround51": 6, "surround71": 8}


def _tone(n_channels, sr=16000, seconds=1.0):
    t = np.arange(int(sr * seconds)) / sr
    return np.stack([(0.05 + 0.02 * c) * np.sin(2 * np.pi * (60 + 6 * c) * t + c)
                     for c in range(n_channels)]).astype(np.float32)


def _encode(path, x, sr, codec):
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "f32le", "-ar", str(sr), "-ac", str(x.shape[0]),
                    "-i", "pipe:", "-c:a", codec, str(path)], input=np.ascontiguousarray(x.T).tobytes(), check=True)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Clips of 1, 2, 6 and 8 channels as wav, flac and AAC (m4a), and a manifest of them."""
    root = tmp_path_factory.mktemp("layouts")
    (root / "clips").mkdir()
    ids = []
    for name, n in CHANNELS.items():
        for ext, codec in (("wav", "pcm_s16le"), ("flac", "flac"), ("m4a", "aac")):
            cid = f"{name}_{ext}"
            _encode(root / "clips" / f"{cid}.{ext}", _tone(n), 16000, codec)
            ids.append(cid)
    (root / "labels.csv").write_text("clip_id,label,speaker\n" + "".join(f"{c},neutral,s1\n" for c in ids))
    manifest = root / "manifest.yaml"
    manifest.write_text(f"datasets:\n  layouts:\n    root: {root}\n    clips: clips/*\n    labels: labels.csv\n"
                        f"    label_set: [neutral]\n    protocol: loso\n")
    return manifest


def run_decode(manifest, store_dir) -> dict:
    """The Decode stage on the one batch of the corpus, in this process (one worker, no fork by
    Luigi: the decoder child is the only other process); its clip table and waveforms."""
    task = Decode(dataset="layouts", batch=0, batch_size=64, manifest=str(manifest), store=str(store_dir))
    assert luigi.build([task], local_scheduler=True, workers=1, log_level="WARNING")
    path = task.output().path
    table = store.read_group(path, "clips")
    audio_ = store.read_group(path, "audio")
    off = audio_["offsets"]
    waves = {cid: audio_["waveform"][off[i]:off[i + 1]] for i, cid in enumerate(table["id"])}
    return {"table": table, "waves": waves, "sources": dict(zip(table["id"], table["source"]))}


def status_of(out) -> dict:
    t = out["table"]
    return {cid: (s, r) for cid, s, r in zip(t["id"], t["status"], t["reason"])}


def test_every_layout_decodes_in_the_stage(corpus, tmp_path):
    out = run_decode(corpus, tmp_path / "store")
    t = out["table"]
    assert set(t["status"]) == {"ok"}, status_of(out)
    assert {cid: int(n) for cid, n in zip(t["id"], t["n_channels"])} == \
        {f"{name}_{ext}": n for name, n in CHANNELS.items() for ext in ("wav", "flac", "m4a")}
    for cid, y in out["waves"].items():  # what the child decoded is what decode() gives here
        np.testing.assert_array_equal(y, audio.decode(out["sources"][cid])[0])


def segfault():
    faulthandler.disable()  # pytest's, inherited by the child: no traceback dump in the test output
    os.kill(os.getpid(), signal.SIGSEGV)


def _crashing(names):
    """``decode_to`` that segfaults its own process (the decoder child) on the clips named."""
    real = audio.decode_to

    def decode_to(path, sink, **kw):
        if os.path.splitext(os.path.basename(path))[0] in names:
            sink(np.ones(1000, np.float32))  # some samples reach the scratch file first
            segfault()
        return real(path, sink, **kw)

    return decode_to


@pytest.mark.parametrize("crash", [["mono_wav"], ["surround71_m4a"], ["stereo_flac", "surround51_wav"],
                                   ["mono_flac", "mono_m4a", "mono_wav"]])
def test_a_decoder_crash_is_the_clips_error_and_the_batch_is_written(corpus, tmp_path, monkeypatch, crash):
    """The first, the last, two apart, three in a row (clips are in the manifest's order)."""
    monkeypatch.setattr(audio, "decode_to", _crashing(set(crash)))
    out = run_decode(corpus, tmp_path / "store")
    got = status_of(out)
    for cid, (status, reason) in got.items():
        if cid in crash:
            assert status == "error" and "decoder crashed: signal 11" in reason, (cid, reason)
            assert reason == "decode: decoder crashed: signal 11 (SIGSEGV)"
            assert len(out["waves"][cid]) == 0
        else:
            assert (status, reason) == ("ok", ""), cid
            np.testing.assert_array_equal(out["waves"][cid], audio.decode(out["sources"][cid])[0])
    assert len(got) == 12


def test_the_isolated_decoder_reports_each_kind_of_failure(corpus, tmp_path, monkeypatch):
    clips = os.path.join(os.path.dirname(corpus), "clips")
    (tmp_path / "junk.wav").write_bytes(b"RIFF not audio" * 10)
    jobs = [("ok1", os.path.join(clips, "stereo_wav.wav")), ("segv", os.path.join(clips, "mono_wav.wav")),
            ("exit", os.path.join(clips, "mono_flac.flac")), ("junk", str(tmp_path / "junk.wav")),
            ("ok2", os.path.join(clips, "surround71_flac.flac"))]
    real = audio.decode_to

    def decode_to(path, sink, **kw):
        if path.endswith("mono_wav.wav"):
            segfault()
        if path.endswith("mono_flac.flac"):
            os._exit(3)
        return real(path, sink, **kw)

    monkeypatch.setattr(audio, "decode_to", decode_to)
    with IsolatedDecoder(str(tmp_path), sr=16000, coef=0.97) as dec:
        done = []
        got = dec.run(jobs, progress=done.append)
        assert dec.children == 3  # one per batch, one more after each crash
        assert done == [1, 2, 3, 4, 5]
        assert got["segv"].status == "error" and got["segv"].message == "decoder crashed: signal 11 (SIGSEGV)"
        assert got["exit"].status == "error" and got["exit"].message == "decoder crashed: exit status 3"
        assert got["junk"].kind == "clip_error" and got["junk"].status == "decode_error"
        for key in ("ok1", "ok2"):
            y = np.empty(got[key].length, np.float32)
            dec.read(got[key], y)
            np.testing.assert_array_equal(y, audio.decode(dict(jobs)[key])[0])
    assert os.listdir(tmp_path) == ["junk.wav"]  # the scratch file had no name


def test_an_exception_in_the_decoder_is_the_clips_error_with_its_message(corpus, tmp_path, monkeypatch):
    def decode_to(path, sink, **kw):
        raise ValueError("odd stream")

    monkeypatch.setattr(audio, "decode_to", decode_to)
    got = status_of(run_decode(corpus, tmp_path / "store"))
    assert set(got.values()) == {("error", "decode: ValueError: odd stream")}


def test_a_build_with_a_crashing_clip_writes_its_shard(tmp_path, monkeypatch):
    """End to end, as in the issue: BuildShards with one worker over a batch holding a 7.1 AAC
    clip, a clip that crashes the decoder and two demo clips: exit 0, one shard, every clip in it."""
    from tests.pipeline.conftest import build, make_corpus

    manifest = make_corpus(tmp_path / "corpus", good={"s1_anger_01", "s2_happiness_01"}, bad=False)
    clips = tmp_path / "corpus" / "clips"
    _encode(clips / "surround.m4a", _tone(8, 48000, 2.0), 48000, "aac")
    _encode(clips / "crasher.wav", _tone(2, 16000, 2.0), 16000, "pcm_s16le")
    with open(tmp_path / "corpus" / "labels.csv", "a") as f:
        f.write("surround,anger,s9,\ncrasher,anger,s9,\n")
    monkeypatch.setattr(audio, "decode_to", _crashing({"crasher"}))
    build(tmp_path / "store", "--video", "false", "--Shard-embeddings", "[]", dataset="mini", manifest=manifest)
    (path,) = glob.glob(str(tmp_path / "store" / "mini" / "shards" / "*" / "shard-*.h5"))
    s = store.ShardReader(path)
    got = dict(zip(s.clips["id"], zip(s.clips["status"], s.clips["reason"])))
    assert got["crasher"] == ("error", "decode: decoder crashed: signal 11 (SIGSEGV)")
    assert got["s1_anger_01"][0] == got["s2_happiness_01"][0] == "ok"
    assert got["surround"][0] in ("ok", "no_voiced_frames")  # decoded; a 60-100 Hz hum may hold no speech
    assert dict(zip(s.clips["id"], s.clips["n_channels"]))["surround"] == 8


def test_a_full_disk_under_the_scratch_file_fails_the_batch_not_a_clip(corpus, tmp_path, monkeypatch):
    """ENOSPC while the decoder writes its scratch file is the build's problem (an OSError naming
    the folder), never a clip's status."""
    import errno

    def pwrite(fd, data, pos):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", pwrite)
    path = os.path.join(os.path.dirname(corpus), "clips", "stereo_wav.wav")
    for isolate in (True, False):
        with IsolatedDecoder(str(tmp_path), sr=16000, coef=0.97, isolate=isolate) as dec:
            with pytest.raises(OSError) as err:
                dec.run([(0, path)])
        assert err.value.errno == errno.ENOSPC
        assert "No space left on device" in str(err.value) and str(tmp_path) in str(err.value)
