import os

import pytest

from pipeline.manifest import ManifestError, get_dataset, load_manifest
from tests.conftest import ROOT

GOOD = {"root": "data", "clips": "clips/*", "labels": "labels.csv", "label_set": ["a", "b"], "protocol": "loso"}


def write(tmp_path, entry: dict, name="ds"):
    import yaml

    path = tmp_path / f"m{abs(hash(str(entry)))}.yaml"
    path.write_text(yaml.safe_dump({"datasets": {name: entry}}))
    return path


def test_the_repository_manifest_is_valid_and_has_the_papers_datasets():
    datasets = load_manifest(os.path.join(ROOT, "data_manifest.yaml"))
    assert {"demo", "baum1", "enterface05", "rml", "iemocap", "recola", "afew"} <= set(datasets)
    assert datasets["rml"].protocol == {"name": "loso"} and datasets["rml"].sr == 22050
    assert datasets["iemocap"].protocol["folds"] == 10 and datasets["iemocap"].protocol["split"] == [8, 1, 1]
    assert datasets["baum1"].protocol["name"] == "logso" and datasets["baum1"].speakers == 31
    assert datasets["afew"].protocol["name"] == "fixed" and datasets["enterface05"].fps == 25
    demo = datasets["demo"].list_clips()
    assert len(demo) == 21 and len({c.speaker for c in demo}) == 3 and len({c.label for c in demo}) == 3


@pytest.mark.parametrize("change, field, rule", [
    ({"root": ""}, "root", "non-empty string"),
    ({"clips": None}, "clips", "non-empty string"),
    ({"labels": "../../etc/passwd"}, "labels", "inside the root"),
    ({"clips": "/abs/*"}, "clips", "inside the root"),
    ({"label_set": []}, "label_set", "non-empty list"),
    ({"label_set": ["a", "a"]}, "label_set", "repeat"),
    ({"protocol": "lso"}, "protocol", "loso, logso, kfold, fixed"),
    ({"protocol": {"name": "logso"}}, "protocol.groups", "speaker groups"),
    ({"protocol": {"name": "kfold", "folds": 10, "split": [8, 1]}}, "protocol.split", "three positive"),
    ({"fps": "thirty"}, "fps", "positive number"),
    ({"sr": -16000}, "sr", "positive number"),
    ({"colour": "blue"}, "colour", "not a known field"),
])
def test_invalid_fields_name_the_dataset_and_the_field(tmp_path, change, field, rule):
    path = write(tmp_path, {**GOOD, **change}, name="mycorpus")
    with pytest.raises(ManifestError) as err:
        load_manifest(path)
    msg = str(err.value)
    assert "dataset 'mycorpus'" in msg and f"field '{field}'" in msg and rule in msg


@pytest.mark.parametrize("text, rule", [
    ("datasets: [1, 2]", "'datasets:' mapping"),
    ("datasets: {a: {root: x}", "not valid YAML"),
    ("- just a list", "'datasets:' mapping"),
])
def test_malformed_files(tmp_path, text, rule):
    path = tmp_path / "m.yaml"
    path.write_text(text)
    with pytest.raises(ManifestError, match=rule):
        load_manifest(path)


def test_missing_manifest_and_unknown_dataset(tmp_path):
    with pytest.raises(ManifestError, match="manifest not found"):
        load_manifest(tmp_path / "nope.yaml")
    with pytest.raises(ManifestError, match="no dataset 'nope'"):
        get_dataset(write(tmp_path, GOOD), "nope")


def test_root_from_an_environment_variable(tmp_path, monkeypatch):
    (tmp_path / "corpus").mkdir()
    path = write(tmp_path, {**GOOD, "root": "${MY_CORPUS_ROOT}"})
    monkeypatch.delenv("MY_CORPUS_ROOT", raising=False)
    with pytest.raises(ManifestError, match="field 'root': environment variable MY_CORPUS_ROOT is not set"):
        get_dataset(path, "ds").root_dir
    monkeypatch.setenv("MY_CORPUS_ROOT", str(tmp_path / "corpus"))
    assert get_dataset(path, "ds").root_dir == str(tmp_path / "corpus")


@pytest.mark.parametrize("csv_text, rule", [
    ("clip_id,label\nc1,a\n", "missing column"),
    ("clip_id,label,speaker\n../evil,a,s1\n", "no path separators"),
    ("clip_id,label,speaker\nc1,a,s1\nc1,b,s2\n", "appears twice"),
    ("clip_id,label,speaker\nc1,zzz,s1\n", "not in label_set"),
])
def test_labels_csv_rules(tmp_path, csv_text, rule):
    root = tmp_path / "data"
    (root / "clips").mkdir(parents=True)
    (root / "labels.csv").write_text(csv_text)
    path = write(tmp_path, GOOD)
    with pytest.raises(ManifestError, match=rule) as err:
        get_dataset(path, "ds").list_clips()
    assert "dataset 'ds': field 'labels'" in str(err.value)


def test_labels_define_the_clips(tmp_path):
    root = tmp_path / "data"
    (root / "clips").mkdir(parents=True)
    (root / "clips" / "c1.wav").write_bytes(b"x")
    (root / "clips" / "unlabelled.wav").write_bytes(b"x")
    (root / "labels.csv").write_text("clip_id,label,speaker,transcript\nc1,a,s1,hello\nc2,b,s2,\n")
    clips = get_dataset(write(tmp_path, GOOD), "ds").list_clips()
    assert [c.id for c in clips] == ["c1", "c2"]
    assert clips[0].path.endswith("c1.wav") and clips[1].path is None
    assert dict(clips[0].extra) == {"transcript": "hello"} and clips[1].extra == ()


def test_file_hashes_are_kept_in_the_cache_file_and_redone_when_the_file_changes(tmp_path, monkeypatch):
    import hashlib
    import json

    from pipeline import manifest as m

    cache = tmp_path / "sha256.jsonl"
    monkeypatch.setenv("AV_STORE_HASH_CACHE", str(cache))
    clip = tmp_path / "a.wav"
    clip.write_bytes(b"first")

    def sha(path):
        m.file_sha256.cache_clear(), m._known_hashes.cache_clear()  # as a new process would
        st = os.stat(path)
        return m.file_sha256(str(path), st.st_size, st.st_mtime_ns, st.st_ino)

    assert sha(clip) == hashlib.sha256(b"first").hexdigest()
    (row,) = [json.loads(line) for line in cache.read_text().splitlines()]
    row["sha256"] = "from-the-cache"  # a later process takes the hash from the file, unread
    cache.write_text(json.dumps(row) + "\n" + "torn line {\n")
    assert sha(clip) == "from-the-cache"
    clip.write_bytes(b"second")  # new content (size and mtime change): hashed again
    os.utime(clip, ns=(1, 2))
    assert sha(clip) == hashlib.sha256(b"second").hexdigest()
    monkeypatch.setenv("AV_STORE_HASH_CACHE", "")  # no cache file at all
    assert sha(clip) == hashlib.sha256(b"second").hexdigest()
