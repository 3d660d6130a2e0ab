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
    ({"root": "r" * 5000}, "root", "at most 4,096 characters"),
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


# -- issue 19 items 8 and 10: bounded, one-line errors naming the file, the line and the field ---------
MANIFEST = """datasets:
  ds:
    root: data
    clips: clips/*
    labels: labels.csv
    label_set: [a, b]
    protocol: loso
"""  # lines: ds 2, root 3, clips 4, labels 5, label_set 6, protocol 7
LABELS = b"clip_id,label,speaker\nc1,a,s1\nc2,b,s2\n"
SMALL_BOMB = "l0: &l0 [x, x, x, x, x, x, x, x, x, x]\nl1: &l1 [*l0, *l0, *l0, *l0, *l0, *l0, *l0, *l0, *l0, *l0]\n"


def _corpus(tmp_path, manifest=MANIFEST, labels=LABELS, files=()):
    root = tmp_path / "data"
    (root / "clips").mkdir(parents=True)
    (root / "labels.csv").write_bytes(labels)
    for name in files:
        (root / "clips" / name).write_bytes(b"x")
    path = tmp_path / "m.yaml"
    path.write_bytes(manifest if isinstance(manifest, bytes) else manifest.encode())
    return path


@pytest.mark.parametrize("manifest, labels, files, expected", [
    (MANIFEST.encode().replace(b"[a, b]", b"[a, b\xff]"), LABELS, (),
     ["m.yaml: line 6: byte 0xff is not UTF-8"]),
    (MANIFEST.replace("[a, b]", "[a, b\x00]"), LABELS, (), ["m.yaml: line 6: not valid YAML", "not allowed"]),
    (MANIFEST.replace("[a, b]", "[" * 10_000 + "]" * 10_000), LABELS, (),
     ["m.yaml: line 6, column ", "nested deeper than 20 levels"]),
    (MANIFEST.replace("  ds:", '  "d\\ns":'), LABELS, (), ["m.yaml: line 2: dataset name 'd\\ns' must be"]),
    (MANIFEST.replace("  ds:", '  "../ds":'), LABELS, (), ["m.yaml: line 2: dataset name '../ds' must be"]),
    (MANIFEST.replace("  ds:", "  " + "d" * 65 + ":"), LABELS, (), ["m.yaml: line 2: dataset name 'ddd", "1 to 64"]),
    (MANIFEST + "    root: elsewhere\n", LABELS, (),
     ["m.yaml: line 8, column 5: key 'root' appears twice in one mapping (first on line 3)"]),
    (MANIFEST + "  ds: {}\n", LABELS, (), ["m.yaml: line 8, column 3: key 'ds' appears twice"]),
    (MANIFEST.replace("[a, b]", "[]"), LABELS, (), ["m.yaml: line 6: dataset 'ds': field 'label_set': must be"]),
    (MANIFEST.replace("[a, b]", "x" * 100_000), LABELS, (),
     ["m.yaml: line 6: dataset 'ds': field 'label_set'", "... (100,000 characters)"]),
    (SMALL_BOMB + MANIFEST.replace("[a, b]", "[*l1, *l1, *l1, *l1, *l1, *l1, *l1, *l1, *l1, *l1]"), LABELS, (),
     ["m.yaml: line 8: dataset 'ds': field 'label_set': must be a non-empty list of label names, got [[["]),
    (MANIFEST.replace("[a, b]", "&loop [a, *loop]"), LABELS, (),
     ["m.yaml: line 6, column 26: alias *loop is used inside its own anchor"]),
    ("#" * (256 << 10) + "\n" + MANIFEST, LABELS, (), ["m.yaml: larger than 262,144 bytes"]),
    (MANIFEST + "    notes: [" + "1, " * 20_000 + "]\n", LABELS, (),
     ["m.yaml: line 8, column ", "more than 10,000 YAML"]),
    (MANIFEST, LABELS.replace(b"s2", b"s\xe92"), (),
     ["m.yaml: dataset 'ds': field 'labels' (", "labels.csv): line 3: byte 0xe9 is not UTF-8"]),
    (MANIFEST, LABELS + b"c3,a," + b"w" * 200_000 + b"\n", (),
     ["m.yaml: dataset 'ds': field 'labels' (", "labels.csv): line 4: not a valid CSV row", "field limit"]),
    (MANIFEST, LABELS.replace(b"clip_id", b"clip"), (),
     ["field 'labels' (", "labels.csv): line 1: missing column(s) clip_id", "the header is ['clip', "]),
    (MANIFEST, LABELS, ("c1.mp4", "c1.wav"),
     ["m.yaml: dataset 'ds': field 'clips': clip 'c1' (labels line 2) has 2 files: ", "c1.mp4 and ", "c1.wav;"]),
], ids=["manifest-not-utf8", "manifest-control-char", "deep-nesting", "newline-in-dataset-name",
        "path-as-dataset-name", "long-dataset-name", "duplicate-field", "duplicate-dataset", "field-rule-has-line",
        "huge-value-cut", "nested-value-cut", "alias-loop", "manifest-over-256KiB", "too-many-nodes", "labels-not-utf8", "labels-200k-field",
        "labels-missing-column", "two-files-one-stem"])
def test_bad_inputs_are_one_line_errors_naming_the_file_line_and_field(tmp_path, manifest, labels, files, expected):
    """Issue 19 items 8 and 10: each bad input is a ManifestError (the CLI's scheduling failure),
    one short line naming where it is, never a bare UnicodeDecodeError / csv.Error / RecursionError."""
    path = _corpus(tmp_path, manifest, labels, files)
    with pytest.raises(ManifestError) as err:
        get_dataset(path, "ds").list_clips()
    msg = str(err.value)
    assert all(part in msg for part in expected), msg
    assert "\n" not in msg and len(msg) < 1000, msg[:2000]


def test_a_yaml_anchor_bomb_is_refused_after_composing_a_few_nodes(tmp_path, monkeypatch):
    """Issue 19 item 8: nine nested aliases stand for 10^9 labels (98 s, 13.8 GB and a 2.15 GB
    message before); refused while composing, after the ~40 nodes the file is written with."""
    from pipeline import manifest as m

    levels = ["l0: &l0 [x, x, x, x, x, x, x, x, x, x]"] + [
        f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 10)]
    path = _corpus(tmp_path, "\n".join(levels) + "\n" + MANIFEST.replace("[a, b]", "*l9"))
    composed = []
    compose = m._BoundedLoader.compose_node
    monkeypatch.setattr(m._BoundedLoader, "compose_node", lambda self, *a: composed.append(1) or compose(self, *a))
    with pytest.raises(ManifestError, match=r"m\.yaml: line \d+, column \d+: refused: more than 10,000 YAML "
                                            r"nodes once aliases are expanded") as err:
        load_manifest(path)
    assert len(str(err.value)) < 1000 and len(composed) < 200


def test_anchors_merge_keys_and_a_byte_order_mark_are_accepted(tmp_path):
    """Issue 19 item 10: a labels CSV saved with a BOM (Excel) was "missing column clip_id"; small
    anchors and ``<<:`` merges (a key overridden after a merge is not a duplicate) stay valid YAML."""
    manifest = ("base: &base {root: data, clips: clips/*, labels: labels.csv, protocol: loso}\n"
                "datasets:\n  ds: {<<: *base, label_set: &labels [a, b]}\n"
                "  other: {<<: *base, label_set: *labels, protocol: {name: logso, groups: 2}}\n")
    path = _corpus(tmp_path, "\ufeff" + manifest, labels=b"\xef\xbb\xbf" + LABELS, files=("c1.wav",))
    datasets = load_manifest(path)
    assert datasets["other"].protocol == {"name": "logso", "groups": 2} and datasets["other"].label_set == ("a", "b")
    clips = datasets["ds"].list_clips()
    assert [c.id for c in clips] == ["c1", "c2"] and clips[0].path.endswith("c1.wav")


def test_the_cli_prints_a_bad_manifest_as_one_line_and_exits_35(tmp_path):
    """Luigi logs a scheduling error with its traceback; a ManifestError keeps only its own line."""
    import subprocess

    from tests.conftest import cli_env

    bad = tmp_path / "m.yaml"
    bad.write_text("datasets:\n  demo:\n    root: .\n    clips: '*'\n    labels: l.csv\n    label_set: [a]\n"
                   "    protocol: loso\n    protocol: kfold\n")
    r = subprocess.run(["luigi", "--module", "pipeline", "BuildShards", "--dataset", "demo", "--manifest", str(bad),
                        "--store", str(tmp_path / "store"), "--local-scheduler"],
                       capture_output=True, text=True, env=cli_env(), cwd=tmp_path)
    assert r.returncode == 35, r.stderr[-2000:]
    assert "Traceback" not in r.stderr + r.stdout
    assert f"{bad}: line 8, column 5: key 'protocol' appears twice" in r.stderr


# -- issue 18 item 3: time-continuous labels ---------------------------------------------------------
CONTINUOUS = MANIFEST + "    continuous_labels: labels_t.csv\n"
SERIES = b"clip_id,time,valence,arousal\nc1,0,0.1,-0.2\nc1,0.04,0.15,-0.25\nc1,0.08,0.2,-0.3\nc2,0.5,1,1\nc2,1.5,0,0\n"


def _continuous(tmp_path, series=SERIES, manifest=CONTINUOUS):
    path = _corpus(tmp_path, manifest)
    (tmp_path / "data" / "labels_t.csv").write_bytes(series)
    return path


def test_a_continuous_labels_file_gives_each_clip_its_series(tmp_path):
    ds = get_dataset(_continuous(tmp_path), "ds")
    assert ds.continuous_labels == "labels_t.csv"
    series = ds.continuous_series()
    assert set(series) == {"c1", "c2"}
    t, v, a = series["c1"]
    assert t.tolist() == [0, 0.04, 0.08] and t.dtype.name == "float64"
    assert v.dtype.name == "float32" and v.tolist() == pytest.approx([0.1, 0.15, 0.2])
    assert a.tolist() == pytest.approx([-0.2, -0.25, -0.3]) and series["c2"][0].tolist() == [0.5, 1.5]
    before = ds.series_digest(["c1", "c2"])
    assert before == ds.series_digest(["c1", "c2"]) and before != ds.series_digest(["c1"])
    (tmp_path / "data" / "labels_t.csv").write_bytes(SERIES.replace(b"c2,1.5,0,0", b"c2,1.5,0,0.5"))
    os.utime(tmp_path / "data" / "labels_t.csv", ns=(1, 2))   # a new mtime: read again
    assert ds.series_digest(["c1", "c2"]) != before and ds.series_digest(["c1"]) == get_dataset(
        _continuous(tmp_path / "again"), "ds").series_digest(["c1"])
    assert get_dataset(_corpus(tmp_path / "none"), "ds").continuous_series() is None   # optional field


@pytest.mark.parametrize("series, expected", [
    (SERIES.replace(b"arousal", b"aro"), ["labels_t.csv): line 1: missing column(s) arousal"]),
    (SERIES + b"c9,0,0,0\n", ["labels_t.csv): line 7: column 'clip_id': 'c9' is not a clip of the labels CSV"]),
    (SERIES + b"../x,0,0,0\n", ["line 7: column 'clip_id': '../x' must be letters"]),
    (SERIES.replace(b"c1,0.04,", b"c1,soon,"), ["line 3: column 'time': must be a finite number >= 0, got 'soon'"]),
    (SERIES.replace(b"c1,0,", b"c1,-1,"), ["line 2: column 'time': must be a finite number >= 0, got '-1'"]),
    (SERIES.replace(b"0.15", b"nan"), ["line 3: column 'valence': must be a finite number, got 'nan'"]),
    (SERIES.replace(b"-0.3", b""), ["line 4: column 'arousal': must be a finite number, got ''"]),
    (SERIES.replace(b"c1,0.08,", b"c1,0.04,"), ["line 4: column 'time': 0.04 s is not after the previous time 0.04 s"]),
    (SERIES.replace(b"c2,1.5,0,0\n", b""), ["line 5: column 'time': clip 'c2' has one time point"]),
    (SERIES.replace(b"0.2,", b"0.2\xff,"), ["labels_t.csv): line 4: byte 0xff is not UTF-8"]),
], ids=["missing-column", "unknown-clip", "bad-clip-id", "time-not-a-number", "negative-time", "nan-valence",
        "empty-arousal", "time-repeated", "one-point", "not-utf8"])
def test_bad_continuous_rows_name_the_file_line_and_column(tmp_path, series, expected):
    with pytest.raises(ManifestError) as err:
        get_dataset(_continuous(tmp_path, series), "ds").continuous_series()
    msg = str(err.value)
    assert "m.yaml: dataset 'ds': field 'continuous_labels' (" in msg and all(p in msg for p in expected), msg
    assert "\n" not in msg


@pytest.mark.parametrize("value, rule", [("", "non-empty string"), ("../t.csv", "inside the root"),
                                         ("[1]", "non-empty string")])
def test_the_continuous_labels_field_is_checked_with_its_line(tmp_path, value, rule):
    path = _corpus(tmp_path, MANIFEST + f"    continuous_labels: {value!r}\n".replace("'[1]'", "[1]"))
    with pytest.raises(ManifestError) as err:
        get_dataset(path, "ds")
    assert "m.yaml: line 8: dataset 'ds': field 'continuous_labels'" in str(err.value) and rule in str(err.value)


def test_a_missing_continuous_labels_file_is_named(tmp_path):
    with pytest.raises(ManifestError, match="field 'continuous_labels': no such file .*labels_t.csv"):
        get_dataset(_corpus(tmp_path, CONTINUOUS), "ds").continuous_series()


# -- issue 18 item 7: per-segment, per-modality labels and sound types (Hsu & Wu §II) ----------------
SEGMENTED = MANIFEST + "    segment_labels: seg.csv\n"
SEGMENTS = (b"clip_id,t_begin,t_end,label,audio_label,visual_label,sound_type\n"
            b"c1,0,0.5,a,a,b,verbal\nc1,0.5,0.8,,,,silence\nc1,0.8,1.2,b,,b,laugh\nc2,0.1,0.9,b,b,b,\n")


def _segmented(tmp_path, rows=SEGMENTS, manifest=SEGMENTED):
    path = _corpus(tmp_path, manifest)
    (tmp_path / "data" / "seg.csv").write_bytes(rows)
    return path


def test_a_segment_labels_file_gives_each_clip_its_annotated_segments(tmp_path):
    ds = get_dataset(_segmented(tmp_path), "ds")
    assert ds.segment_labels == "seg.csv"
    rows = ds.segment_rows()
    spans, cols = rows["c1"]
    assert spans.tolist() == [[0, 0.5], [0.5, 0.8], [0.8, 1.2]] and spans.dtype.name == "float64"
    assert cols["label"].tolist() == ["a", "", "b"] and cols["visual_label"].tolist() == ["b", "", "b"]
    assert cols["sound_type"].tolist() == ["verbal", "silence", "laugh"] and rows["c2"][1]["audio_label"].tolist() == ["b"]
    before = ds.segment_digest(["c1", "c2"])
    assert before == ds.segment_digest(["c1", "c2"]) and before != ds.segment_digest(["c1"])
    (tmp_path / "data" / "seg.csv").write_bytes(SEGMENTS.replace(b"c2,0.1,0.9,b,b,b,", b"c2,0.1,0.9,b,a,b,"))
    os.utime(tmp_path / "data" / "seg.csv", ns=(1, 2))
    assert ds.segment_digest(["c1", "c2"]) != before and ds.segment_digest(["c1"]) == get_dataset(
        _segmented(tmp_path / "again"), "ds").segment_digest(["c1"])
    # only some label columns: the others are absent, not empty
    only = get_dataset(_segmented(tmp_path / "only", b"clip_id,t_begin,t_end,sound_type\nc1,0,1,breath\n"), "ds")
    assert set(only.segment_rows()["c1"][1]) == {"sound_type"}
    assert get_dataset(_corpus(tmp_path / "none"), "ds").segment_rows() is None   # optional field


def test_units_take_the_segment_that_covers_most_of_them():
    from features.labels import unit_labels_group, unit_rows

    spans = [[0.0, 0.5], [0.5, 0.8], [0.8, 1.2]]
    # units: inside row 0; 0.4-0.7 (0.1 in row 0, 0.2 in row 1); 1.1-1.5 (0.1 of 0.4 s: too little); 2-3 none
    assert unit_rows(spans, [0.0, 0.4, 1.1, 2.0], [0.4, 0.7, 1.5, 3.0]).tolist() == [0, 1, -1, -1]
    rows = {"c1": (spans, {"label": ["a", "", "b"], "sound_type": ["verbal", "silence", "laugh"]})}
    units = {"t_begin": [0.0, 0.5, 0.8, 0.0], "t_end": [0.5, 0.8, 1.2, 2.0], "offsets": [0, 3, 4]}
    import numpy as np
    rows = {k: (np.asarray(s), {c: np.asarray(v, dtype=object) for c, v in cols.items()}) for k, (s, cols) in rows.items()}
    g = unit_labels_group(rows, ["c1", "c2"], units)
    assert g["label"].tolist() == ["a", "", "b", ""] and g["sound_type"].tolist() == ["verbal", "silence", "laugh", ""]
    assert g["audio_label"].tolist() == [""] * 4 and g["offsets"].tolist() == [0, 3, 4]


@pytest.mark.parametrize("rows, expected", [
    (SEGMENTS.replace(b"t_end", b"t_stop"), ["seg.csv): line 1: missing column(s) t_end"]),
    (b"clip_id,t_begin,t_end,emotion\nc1,0,1,a\n", ["seg.csv): line 1: no label column; give at least one of label"]),
    (SEGMENTS + b"c9,0,1,a,a,a,\n", ["seg.csv): line 6: column 'clip_id': 'c9' is not a clip of the labels CSV"]),
    (SEGMENTS + b"../x,0,1,a,a,a,\n", ["line 6: column 'clip_id': '../x' must be letters"]),
    (SEGMENTS.replace(b"c1,0.5,0.8", b"c1,soon,0.8"), ["line 3: column 't_begin': must be a finite number >= 0, got 'soon'"]),
    (SEGMENTS.replace(b"c2,0.1,0.9", b"c2,0.1,inf"), ["line 5: column 't_end': must be a finite number >= 0, got 'inf'"]),
    (SEGMENTS.replace(b"c2,0.1,0.9", b"c2,0.9,0.1"), ["line 5: column 't_end': 0.1 s must be after t_begin 0.9 s"]),
    (SEGMENTS.replace(b"c1,0.8,1.2", b"c1,0.7,1.2"), ["line 4: column 't_begin': 0.7 s is before the end 0.8 s"]),
    (SEGMENTS.replace(b"c1,0,0.5,a,a,b", b"c1,0,0.5,a,c,b"), ["line 2: column 'audio_label': 'c' is not one of ['a', 'b']"]),
    (SEGMENTS.replace(b"b,,b,laugh", b"b,,z,laugh"), ["line 4: column 'visual_label': 'z' is not one of ['a', 'b']"]),
    (SEGMENTS.replace(b"silence", b"cough"), ["line 3: column 'sound_type': 'cough' is not one of ['laugh', 'breath', "
                                              "'shout', 'silence', 'verbal']"]),
    (SEGMENTS.replace(b"c2,0.1,0.9,b", b"c2,0.1,0.9,B"), ["line 5: column 'label': 'B' is not one of"]),
    (SEGMENTS.replace(b"laugh", b"la\xffugh"), ["seg.csv): line 4: byte 0xff is not UTF-8"]),
], ids=["missing-column", "no-label-column", "unknown-clip", "bad-clip-id", "t-not-a-number", "t-infinite",
        "end-before-begin", "overlap", "bad-audio-label", "bad-visual-label", "bad-sound-type", "label-case",
        "not-utf8"])
def test_bad_segment_rows_name_the_file_line_and_column(tmp_path, rows, expected):
    with pytest.raises(ManifestError) as err:
        get_dataset(_segmented(tmp_path, rows), "ds").segment_rows()
    msg = str(err.value)
    assert "m.yaml: dataset 'ds': field 'segment_labels' (" in msg and all(p in msg for p in expected), msg
    assert "\n" not in msg


@pytest.mark.parametrize("value, rule", [("", "non-empty string"), ("../s.csv", "inside the root"),
                                         ("[1]", "non-empty string")])
def test_the_segment_labels_field_is_checked_with_its_line(tmp_path, value, rule):
    path = _corpus(tmp_path, MANIFEST + f"    segment_labels: {value!r}\n".replace("'[1]'", "[1]"))
    with pytest.raises(ManifestError) as err:
        get_dataset(path, "ds")
    assert "m.yaml: line 8: dataset 'ds': field 'segment_labels'" in str(err.value) and rule in str(err.value)


def test_a_missing_segment_labels_file_is_named(tmp_path):
    with pytest.raises(ManifestError, match="field 'segment_labels': no such file .*seg.csv"):
        get_dataset(_corpus(tmp_path, SEGMENTED), "ds").segment_rows()
