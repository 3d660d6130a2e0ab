"""The embedding stages in a build: defaults on the demo, weights written here in the published
formats on a small corpus, reruns by hash, and a configured weight file that is missing."""
import glob
import os

import luigi
import numpy as np
import pytest
import torch

from features import audio, embeddings, store, text, vggface, vggish
from pipeline.embeddings import VGGish, require_file
from tests.conftest import DEMO, write_glove
from tests.pipeline.conftest import RAN, build, make_corpus

GOOD = ["s1_anger_01", "s2_happiness_02"]


def fresh_build(*args, **kw):
    """A build as a new process sees it: luigi's task instances (and their cached hash chains)
    from earlier builds in this process are dropped."""
    luigi.task_register.Register.clear_instance_cache()
    return build(*args, **kw)


def shard_paths(store_dir, dataset):
    return sorted(glob.glob(os.path.join(store_dir, dataset, "shards", "*", "shard-*.h5")))


def test_demo_shards_hold_the_default_embeddings(demo_store):
    for path in shard_paths(demo_store, "demo"):
        s = store.ShardReader(path)
        assert s.has("descriptor") and s.has("waveform")
        assert not s.has("vggish") and not s.has("vggface") and not s.has("glove")  # no weights configured
        assert s.attrs["embeddings"] == ["descriptor", "waveform"]
        with pytest.raises(KeyError, match="enable it in workflows.cfg"):
            s.vggish(0)
        for c, cid in enumerate(s.clips["id"]):
            if s.clips["waveform_status"][c] != "ok":  # not decodable: no samples
                assert len(s.waveform(c)) == 0 and s.clips["waveform_status"][c] == s.clips["status"][c]
                continue
            # the SincNet input: the source decoded without pre-emphasis, 16 kHz, peak-normalised
            y, _ = audio.decode(os.path.join(DEMO, s.clips["source"][c]), sr=16000, coef=0.0)
            np.testing.assert_allclose(s.waveform(c), y / max(np.abs(y).max(), 1e-30), atol=1e-4)
            if s.clips["status"][c] != "ok":
                continue
            if s.clips["video_status"][c] != "ok":
                continue
            found = s.video(c, "found").astype(bool)
            d, src = s.face_embedding(c, "descriptor"), s.video(c, "descriptor_frame")
            assert d.shape == (len(found), 128) and np.all((src >= 0) == found)
            assert np.all(np.abs(d[found]).sum(1) > 0) and not d[~found].any()
            assert len(np.unique(src[found])) >= found.sum() // 5  # every 5th face frame (workflows.cfg)
            assert np.all(np.linalg.norm(d[found] - d[found].mean(0), axis=1) < embeddings.DLIB_SAME_PERSON)
        i = int(np.flatnonzero(s.windows["video_ok"])[0])
        rows = s.windows["video_frames"][i] + s.group("video")["offsets"][s.windows["clip"][i]]
        np.testing.assert_array_equal(s.window_face_embedding(i, "descriptor"), s.group("video")["descriptor"][rows])


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """VGGish (published size, torchvggish keys), a tiny VGG-19 face net at 72 px (vgg_face_dag
    keys) and a GloVe text file holding most words of the two transcripts."""
    d = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    torch.save({k: torch.randn_like(v) * 0.02 for k, v in vggish.VGGish().state_dict().items()}, d / "vggish.pth")
    tiny = vggface.VGGFace(vggface.VGGFaceConfig(depth=19, image_size=72, widths=(4, 4, 8, 8, 8), fc=(16, 16),
                                                 n_classes=3))
    torch.save({k: torch.randn_like(v) * 0.1 for k, v in tiny.state_dict().items()}, d / "vggface.pth")
    words = ["the", "library", "opens", "on", "monday", ",", "after", "holiday", ".", "garden", "needs"]
    write_glove(d / "glove.txt", words)
    return d


def emb_args(w):
    return ["--batch-size", "16", "--VGGish-weights", str(w / "vggish.pth"), "--VGGFace-weights", str(w / "vggface.pth"),
            "--VGGFace-image-size", "72", "--VGGFace-layer", "fc7", "--GloVe-path", str(w / "glove.txt")]


@pytest.fixture(scope="module")
def mini(tmp_path_factory, weights):
    root = tmp_path_factory.mktemp("mini")
    manifest = make_corpus(root / "corpus", good=GOOD, bad=True)
    ran = build(root / "store", *emb_args(weights), dataset="mini", manifest=manifest)
    return root, manifest, ran


def test_all_embeddings_in_the_shard_match_direct_computation(mini, weights):
    root, _, ran = mini
    assert {"VGGish", "VGGFace", "GloVe", "FaceDescriptor", "Waveform"} <= set(ran)
    (path,) = shard_paths(root / "store", "mini")
    s = store.ShardReader(path)
    assert all(s.has(n) for n in ("vggish", "vggish_window", "descriptor", "vggface", "glove", "waveform"))
    assert set(s.attrs["stages"]) >= {"vggish", "vggface", "glove", "descriptor", "waveform"}
    assert s.attrs["config"]["vggish"]["weights_sha256"] == embeddings.file_sha256(weights / "vggish.pth")
    model = vggish.load_vggish(weights / "vggish.pth")
    vocab, vectors = text.load_glove(weights / "glove.txt", cache_dir=str(root / "gc"))
    for c, cid in enumerate(s.clips["id"]):
        if s.clips["status"][c] != "ok":
            assert len(s.vggish(c)) == 0
            continue
        # VGGish: the published recipe on the audio without pre-emphasis
        y, _ = audio.decode(os.path.join(root, "corpus", s.clips["source"][c]), sr=16000, coef=0.0)
        mel = vggish.log_mel(y=y)
        seq = s.vggish(c)
        assert seq.shape == (len(mel) // 96, 128)
        np.testing.assert_allclose(seq, embeddings.batched_forward(model, vggish.patches(mel)), rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(s.group("vggish")["t_center"][s.group("vggish")["offsets"][c]:][:len(seq)],
                                   vggish.patch_centers(len(seq)), atol=1e-6)
        wins = np.flatnonzero(s.windows["clip"] == c)
        centre = (s.windows["t_begin"][wins[-1]].astype(np.float64) + s.windows["t_end"][wins[-1]]) / 2
        ref = embeddings.batched_forward(model, vggish.centered_patches(mel, t_center=[centre]))[0]
        np.testing.assert_allclose(s.window_vggish(wins[-1]), ref, rtol=1e-3, atol=1e-4)
        # VGGFace fc7 on the 72 px crops, zeros where no face
        found = s.video(c, "found").astype(bool)
        v = s.face_embedding(c, "vggface")
        net = vggface.load_vggface(weights / "vggface.pth", image_size=72)
        ref = vggface.face_embeddings(s.video(c, "crop_small", rows=np.flatnonzero(found)[:4]), model=net, layer="fc7")
        assert v.shape == (len(found), 16) and not v[~found].any()
        np.testing.assert_allclose(v[np.flatnonzero(found)[:4]], ref, rtol=1e-4, atol=1e-5)
        assert s.window_face_embedding(wins[0], "vggface").shape == (16, 16)
        # GloVe of the transcript
        g = s.glove(c)
        expect = text.glove_transcripts([s.clips["transcript"][c]], vocab=vocab, vectors=vectors)
        assert g["length"] == expect["length"][0] > 0 and g["vectors"].shape == (100, 300)
        np.testing.assert_array_equal(g["vectors"], expect["glove"][0])
        np.testing.assert_array_equal(g["oov"], expect["oov"][0])
    bad = list(s.clips["id"]).index("bad_missing")
    assert s.clips["glove_status"][bad] == "no_transcript" and s.glove(bad)["length"] == 0


def test_new_vggish_weights_rerun_only_vggish_and_the_shard(mini, weights, tmp_path):
    root, manifest, _ = mini
    state = torch.load(weights / "vggish.pth", weights_only=True)
    state["embeddings.4.bias"] += 1.0
    torch.save(state, tmp_path / "vggish2.pth")
    args = emb_args(weights)
    args[args.index("--VGGish-weights") + 1] = str(tmp_path / "vggish2.pth")
    assert fresh_build(root / "store", *args, dataset="mini", manifest=manifest) == ["BuildShards", "Shard", "VGGish"]
    assert fresh_build(root / "store", *emb_args(weights), dataset="mini", manifest=manifest) == []  # reused


def test_embeddings_are_switched_off_by_the_shard_list(mini, weights):
    root, manifest, _ = mini
    ran = fresh_build(root / "store", *emb_args(weights), "--Shard-embeddings", '["waveform"]', dataset="mini",
                      manifest=manifest)
    assert ran == ["BuildShards", "Shard"]
    new = [p for p in shard_paths(root / "store", "mini") if store.ShardReader(p).attrs["embeddings"] == ["waveform"]]
    assert len(new) == 1 and not store.ShardReader(new[0]).has("vggish") and store.ShardReader(new[0]).has("waveform")


def test_a_missing_weight_file_fails_that_stage_only(mini, tmp_path):
    root, manifest, _ = mini
    missing = str(tmp_path / "models" / "vggish-10086976.pth")
    with pytest.raises(FileNotFoundError) as err:
        require_file(missing, section="VGGish", key="weights", feature="vggish", what="VGGish weights file")
    msg = str(err.value)
    assert missing in msg and "[VGGish]" in msg and "`weights =` (empty)" in msg and "[Shard] embeddings" in msg
    luigi.task_register.Register.clear_instance_cache()
    RAN.clear()
    ok = luigi.run(["BuildShards", "--dataset", "mini", "--manifest", str(manifest), "--store", str(root / "store"),
                    "--batch-size", "16", "--local-scheduler", "--no-lock", "--workers", "1", "--Waveform-normalize",
                    "none", "--VGGish-weights", missing, "--Shard-embeddings", '["waveform", "vggish"]'])
    assert not ok and "VGGish" not in RAN and "Shard" not in RAN
    assert RAN == ["Waveform"]  # the other stage with a new configuration was built
    shards = [store.ShardReader(p).attrs for p in shard_paths(root / "store", "mini")]
    assert not any(a["embeddings"] == ["waveform", "vggish"] for a in shards)  # no shard silently lacking vggish
    task = VGGish(dataset="mini", batch=0, batch_size=16, manifest=str(manifest), store=str(root / "store"),
                  weights=missing)
    assert task.own_params()["weights_sha256"] == "missing"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        task.run()
