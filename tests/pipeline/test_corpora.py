"""``avstore import``: each corpus importer on a miniature replica of its distributed layout
(pipeline/corpora.py; docs/corpora.md names the public loader each layout follows)."""
import csv
import glob
import os
import wave
import zipfile

import numpy as np
import pytest
import yaml

from pipeline import cli
from pipeline import corpora
from pipeline.manifest import load_manifest


def put(path, data=b"\x00\x00\x00\x1cftypisom"):
    """A media or text file at ``path`` (video bytes are never decoded by an import)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
    return str(path)


def put_wav(path, sr=16000, n=1600):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(sr)
        w.writeframes((np.sin(np.arange(n) / 8) * 3000).astype("<i2").tobytes())
    return str(path)


def run(capsys, corpus, source, *args):
    """``avstore import``; returns (exit code, {parsed entry} or None, stderr)."""
    rc = cli.main(["import", corpus, str(source), "--show", "1000", *args])
    out, err = capsys.readouterr()
    entry = yaml.safe_load(out)["datasets"][corpus] if out.strip() else None
    return rc, entry, err


def rows(path):
    with open(path, encoding="utf-8", newline="") as f:
        return {r["clip_id"]: r for r in csv.DictReader(f)}


def matched(entry):
    """Clip id -> files the entry's clips glob matches (as pipeline.manifest globs it)."""
    out = {}
    for p in glob.glob(os.path.join(entry["root"], entry["clips"]), recursive=True):
        out.setdefault(os.path.splitext(os.path.basename(p))[0], []).append(os.path.realpath(p))
    return out


def load(entry, name, tmp_path):
    """The entry written as a manifest and read back by pipeline.manifest: {clip id: Clip}."""
    path = tmp_path / f"manifest_{name}.yaml"
    path.write_text(yaml.safe_dump({"datasets": {name: entry}}, sort_keys=False))
    ds = load_manifest(path)[name]
    return ds, {c.id: c for c in ds.list_clips()}


def check_facts(name, entry):
    """The printed entry repeats the repository manifest's facts of the corpus."""
    with open(corpora.REPO_MANIFEST, encoding="utf-8") as f:
        repo = yaml.safe_load(f)["datasets"][name]
    for k in corpora.FACT_FIELDS:
        assert entry.get(k) == repo.get(k), k


# ------------------------------------------------------------------------------------------ IEMOCAP
EVAL_HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"


def turn(t0, t1, utt, code, vad):
    return (f"[{t0:.4f} - {t1:.4f}]\t{utt}\t{code}\t[{vad[0]:.4f}, {vad[1]:.4f}, {vad[2]:.4f}]\n"
            f"C-E1:\tNeutral;\t()\nA-E3:\tval 3; act 2; dom  2;\t()\n\n")


@pytest.fixture
def iemocap(tmp_path):
    src = tmp_path / "IEMOCAP_full_release"
    d1 = src / "Session1" / "dialog"
    put(d1 / "EmoEvaluation" / "Ses01F_impro01.txt", EVAL_HEADER
        + turn(6.2901, 8.2357, "Ses01F_impro01_F000", "neu", (2.5, 2.5, 2.5))
        + turn(10.01, 11.3925, "Ses01F_impro01_M000", "exc", (4.0, 3.5, 3.0))
        + turn(14.8872, 18.0175, "Ses01F_impro01_F001", "fru", (2.0, 3.5, 3.5))
        + turn(19.2, 20.0, "Ses01F_impro01_M001", "ang", (1.5, 4.0, 4.5))
        + turn(21.0, 22.0, "Ses01F_impro01_M002", "hap", (4.0, 3.0, 3.0))   # no wav
        + "[23.0 - x]\tSes01F_impro01_F002\tneu\n")  # malformed: line 23
    put(d1 / "EmoEvaluation" / "Categorical" / "Ses01F_impro01_e1_cat.txt", "per-rater file\n")
    put(d1 / "transcriptions" / "Ses01F_impro01.txt",
        "Ses01F_impro01_F000 [006.2901-008.2357]: Excuse me.\n"
        "Ses01F_impro01_M000 [010.0100-011.3925]: Yeah, \"great\", thanks.\n"
        "Ses01F_impro01_MXX0 [012.0000-012.5000]: overlap\n"
        "this line is not a transcript\n")
    for utt in ("F000", "M000", "F001", "M001", "F009"):  # F009: media without label
        put_wav(src / "Session1" / "sentences" / "wav" / "Ses01F_impro01" / f"Ses01F_impro01_{utt}.wav")
    put(src / "Session1" / "sentences" / "wav" / "Ses01F_impro01" / "notes.doc", "x")  # unexpected
    put_wav(src / "Session1" / "dialog" / "wav" / "Ses01F_impro01.wav")  # the whole dialog: not a clip
    d2 = src / "Session2" / "dialog"
    put(d2 / "EmoEvaluation" / "Ses02M_script01_1.txt", EVAL_HEADER
        + turn(1.0, 2.0, "Ses02M_script01_1_F000", "sad", (1.0, 2.0, 2.5)))
    put(d2 / "transcriptions" / "Ses02M_script01_1.txt", "Ses02M_script01_1_F000 [001.0000-002.0000]: Oh no.\n")
    put_wav(src / "Session2" / "sentences" / "wav" / "Ses02M_script01_1" / "Ses02M_script01_1_F000.wav")
    return src


def test_iemocap_all_codes_written_with_transcripts_and_dimensions(iemocap, capsys):
    rc, entry, err = run(capsys, "iemocap", iemocap)
    assert rc == 0
    got = rows(iemocap / "labels.csv")
    assert sorted(got) == ["Ses01F_impro01_F000", "Ses01F_impro01_F001", "Ses01F_impro01_M000",
                           "Ses01F_impro01_M001", "Ses02M_script01_1_F000"]
    f000, m000, m001, s2 = (got[k] for k in ("Ses01F_impro01_F000", "Ses01F_impro01_M000", "Ses01F_impro01_M001",
                                             "Ses02M_script01_1_F000"))
    fields = ("label", "speaker", "valence", "arousal")
    assert [f000[k] for k in fields] == ["neutral", "Ses01F", "2.5000", "2.5000"]
    assert [m000[k] for k in fields] == ["excitement", "Ses01M", "4.0000", "3.5000"]
    assert m000["transcript"] == 'Yeah, "great", thanks.' and f000["transcript"] == "Excuse me."
    assert m001["label"] == "anger" and m001["transcript"] == ""  # no transcript line: left empty (noted)
    assert got["Ses01F_impro01_F001"]["label"] == "frustration"
    assert s2["speaker"] == "Ses02F" and s2["label"] == "sadness"  # the utterance's gender, not the dialog's
    assert entry["clips"] == "Session*/sentences/wav/*/*.wav" and entry["root"] == str(iemocap.resolve())
    files = matched(entry)
    assert set(got) <= set(files) and "Ses01F_impro01" not in files  # dialog wavs are not clips
    assert entry["label_set"] == ["anger", "neutral", "sadness", "excitement", "frustration"]
    check_facts("iemocap", entry)
    ev = iemocap / "Session1" / "dialog" / "EmoEvaluation" / "Ses01F_impro01.txt"
    assert f"{ev.resolve()}:23: not '[start - end]" in err  # malformed label line, with its number
    trn = (iemocap / "Session1" / "dialog" / "transcriptions" / "Ses01F_impro01.txt").resolve()
    assert f"{trn}:4: not 'utterance [start-end]: text'" in err
    wavdir = (iemocap / "Session1" / "sentences" / "wav" / "Ses01F_impro01").resolve()
    assert f"{wavdir / 'notes.doc'}: not sentences/wav" in err
    assert f"{wavdir / 'Ses01F_impro01_F009.wav'}: no EmoEvaluation line names Ses01F_impro01_F009" in err
    assert f"{ev.resolve()}:" in err and "Ses01F_impro01_M002: no sentences/wav" in err
    assert "Categorical" not in err  # the release's per-rater folders are known, not reported
    assert "1 transcript line(s) name turns no EmoEvaluation file labels (e.g. Ses01F_impro01_MXX0)" in err
    report = (iemocap / "import_report.txt").read_text()
    assert "notes.doc" in report and "datasets:" in report


def test_iemocap_four_class_merges_excitement_and_loads_through_the_manifest(iemocap, tmp_path, capsys):
    rc, entry, err = run(capsys, "iemocap", iemocap, "--four-class")
    assert rc == 0
    got = rows(iemocap / "labels.csv")
    assert {k: r["label"] for k, r in got.items()} == {
        "Ses01F_impro01_F000": "neutral", "Ses01F_impro01_M000": "happiness", "Ses01F_impro01_M001": "anger",
        "Ses02M_script01_1_F000": "sadness"}
    assert entry["label_set"] == ["anger", "happiness", "neutral", "sadness"]
    assert "left out by --four-class (not ang/hap/exc/neu/sad): fru 1" in err
    assert "Ses01F_impro01_F001.wav: no EmoEvaluation" not in err  # left out by choice, not unlabelled
    ds, clips = load(entry, "iemocap", tmp_path)
    assert sorted(clips) == sorted(got)
    m000 = clips["Ses01F_impro01_M000"]
    assert m000.label == "happiness" and m000.speaker == "Ses01M" and os.path.isfile(m000.path)
    assert dict(m000.extra) == {"transcript": 'Yeah, "great", thanks.', "valence": "4.0000", "arousal": "3.5000"}
    assert ds.protocol == {"name": "kfold", "folds": 10, "split": [8, 1, 1]} and ds.sr == 16000


def test_iemocap_layout_that_matches_nothing_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    rc, entry, err = run(capsys, "iemocap", tmp_path / "empty")
    assert rc == 1 and entry is None
    assert err.count("\n") == 1 and "expected the IEMOCAP release folder (holding Session1..Session5)" in err


def test_missing_source_and_misplaced_option_are_one_line(tmp_path, capsys):
    rc, _, err = run(capsys, "rml", tmp_path / "nope")
    assert rc == 1 and err.strip() == (f"avstore import rml: no such folder: {tmp_path / 'nope'} "
                                       f"(the rml corpus folder as distributed; docs/corpora.md)")
    (tmp_path / "rml").mkdir()
    rc, _, err = run(capsys, "rml", tmp_path / "rml", "--four-class")
    assert rc == 1 and err.strip() == "avstore import rml: --four-class does not apply to rml"


# ------------------------------------------------------------------------------------ eNTERFACE'05
@pytest.fixture
def enterface(tmp_path):
    src = tmp_path / "enterface database"
    for rel in ("subject 1/anger/sentence 1/s1_an_1.avi", "subject 1/happiness/sentence 2/s1_ha_2.avi",
                "subject 6/fear/s6_fe_1.avi",  # subject 6: no sentence level
                "subject 11/sadness/sentence 1/s12_sa_1.avi",  # subject 11's files are named s12_*
                "subject 12/sadness/sentence 1/s12_sa_1.avi"):
        put(src / rel)
    put(src / "subject 1/anger/sentence 1/readme.txt", "x")  # unexpected
    put(src / "subject 1/boredom/sentence 1/s1_bo_1.avi")  # no such emotion folder
    return src


def test_enterface_layout_speakers_and_clashing_names(enterface, capsys):
    rc, entry, err = run(capsys, "enterface05", enterface)
    assert rc == 0
    got = rows(enterface / "labels.csv")
    assert {k: (r["label"], r["speaker"]) for k, r in got.items()} == {
        "s1_an_1": ("anger", "s1"), "s1_ha_2": ("happiness", "s1"), "s6_fe_1": ("fear", "s6")}
    assert list(next(iter(got.values()))) == ["clip_id", "label", "speaker"]
    assert entry["clips"] == "**/*.avi" and set(got) <= set(matched(entry))
    check_facts("enterface05", entry)
    root = enterface.resolve()
    assert f"{root / 'subject 1/anger/sentence 1/readme.txt'}: not subject N/<emotion>/sentence M/*.avi" in err
    assert f"{root / 'subject 1/boredom/sentence 1/s1_bo_1.avi'}: not subject N" in err
    for s in ("11", "12"):
        assert f"{root / f'subject {s}/sadness/sentence 1/s12_sa_1.avi'}: 2 files are named s12_sa_1.avi" in err


def test_enterface_link_clips_gives_clashing_names_their_own_ids(enterface, tmp_path, capsys):
    out = tmp_path / "imported"
    rc, entry, err = run(capsys, "enterface05", enterface, "--out", str(out), "--link-clips")
    assert rc == 0 and "duplicate clip id" not in err
    got = rows(out / "labels.csv")
    assert {k: (r["label"], r["speaker"]) for k, r in got.items()} == {
        "s1_an_1": ("anger", "s1"), "s1_ha_2": ("happiness", "s1"), "s6_fe_1": ("fear", "s6"),
        "subject-11_sadness_sentence-1_s12_sa_1": ("sadness", "s11"),
        "subject-12_sadness_sentence-1_s12_sa_1": ("sadness", "s12")}
    assert entry["root"] == str(tmp_path.resolve())
    assert entry["clips"] == "imported/clips/*" and entry["labels"] == "imported/labels.csv"
    _, clips = load(entry, "enterface05", tmp_path)
    assert sorted(clips) == sorted(got)
    assert os.path.realpath(clips["subject-11_sadness_sentence-1_s12_sa_1"].path) == \
        str((enterface / "subject 11/sadness/sentence 1/s12_sa_1.avi").resolve())


# -------------------------------------------------------------------------------------------- RML
def test_rml_codes_folders_and_conflicts(tmp_path, capsys):
    src = tmp_path / "rml"
    for rel in ("rml-1/s1/an1.avi", "rml-1/s1/ha2.avi", "rml-2/s6/Mandarin/sa1.avi", "rml-2/s7/surprise/clip1.avi",
                "rml-2/s8/anger/ha1.avi", "rml-2/s8/x1.avi", "rml-2/s6/Mandarin/an1.avi"):
        put(src / rel)
    put(src / "rml-1/s1/Thumbs.db", "x")
    rc, entry, err = run(capsys, "rml", src)
    assert rc == 0
    got = rows(src / "labels.csv")
    assert {k: (r["label"], r["speaker"]) for k, r in got.items()} == {
        "ha2": ("happiness", "s1"), "sa1": ("sadness", "s6"), "clip1": ("surprise", "s7")}
    assert entry["label_set"] == ["happiness", "sadness", "surprise"] and entry["clips"] == "**/*.avi"
    check_facts("rml", entry)
    r = src.resolve()
    assert f"{r / 'rml-2/s8/anger/ha1.avi'}: name says happiness, folders say anger; left out" in err
    assert f"{r / 'rml-2/s8/x1.avi'}: no emotion code" in err
    assert f"{r / 'rml-1/s1/Thumbs.db'}: not an .avi inside a speaker folder" in err
    assert f"{r / 'rml-1/s1/an1.avi'}: 2 files are named an1.avi" in err  # s1/an1 and s6/an1: same id


# ------------------------------------------------------------------------------------------- AFEW
def test_afew_partitions_test_clips_and_face_folders(tmp_path, capsys):
    src = tmp_path / "afew"
    for rel in ("Train_AFEW/Angry/000046280.avi", "Train_AFEW/Happy/000147440.avi", "Val_AFEW/Sad/000149120.avi",
                "Val_AFEW/Neutral/010924040.avi", "Test_AFEW/000001.avi"):
        put(src / rel)
    put(src / "Train_AFEW/Angry/notes.txt", "x")
    for k in range(5):
        put(src / f"Train_AFEW/AlignedFaces/000046280/{k:03d}.jpg", "x")
    out = tmp_path / "out"
    rc, entry, err = run(capsys, "afew", src, "--out", str(out))
    assert rc == 0
    got = rows(out / "labels.csv")
    assert {k: (r["label"], r["speaker"], r["partition"]) for k, r in got.items()} == {
        "000046280": ("anger", "000046280", "train"), "000147440": ("happiness", "000147440", "train"),
        "000149120": ("sadness", "000149120", "val"), "010924040": ("neutral", "010924040", "val")}
    assert entry["root"] == str(tmp_path.resolve()) and entry["clips"] == "afew/**/*.avi"
    assert entry["labels"] == "out/labels.csv"
    check_facts("afew", entry)
    r = src.resolve()
    assert f"{r / 'Test_AFEW/000001.avi'}: directly in the Test_AFEW folder" in err
    assert f"{r / 'Train_AFEW/Angry/notes.txt'}: not Train|Val/<Emotion>/*.avi" in err
    assert f"{r / 'Train_AFEW/AlignedFaces'}: 5 files not read" in err and "001.jpg" not in err
    _, clips = load(entry, "afew", tmp_path)
    assert sorted(clips) == sorted(got) and dict(clips["000149120"].extra) == {"partition": "val"}


# ----------------------------------------------------------------------------------------- BAUM-1
def write_xlsx(path, table):
    """A minimal Office Open XML workbook (one sheet, strings shared, numbers as numbers)."""
    shared, sheet_rows = [], []
    for i, cells in enumerate(table, 1):
        xml = []
        for j, v in enumerate(cells):
            ref = f"{chr(65 + j)}{i}"
            if isinstance(v, (int, float)):
                xml.append(f'<c r="{ref}"><v>{v}</v></c>')
            elif v != "":
                shared.append(v)
                xml.append(f'<c r="{ref}" t="s"><v>{len(shared) - 1}</v></c>')
        sheet_rows.append(f'<row r="{i}">{"".join(xml)}</row>')
    main = 'xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"'
    rel = 'xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships"'
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/'
                                          'package/2006/content-types"/>')
        z.writestr("xl/workbook.xml", f'<?xml version="1.0"?><workbook {main} {rel}><sheets>'
                                      f'<sheet name="Sheet1" sheetId="1" r:id="rId1"/></sheets></workbook>')
        z.writestr("xl/_rels/workbook.xml.rels", '<?xml version="1.0"?><Relationships xmlns="http://schemas.'
                   'openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.'
                   'openxmlformats.org/officeDocument/2006/relationships/worksheet" Target="worksheets/sheet1.xml"/>'
                   '</Relationships>')
        z.writestr("xl/worksheets/sheet1.xml", f'<?xml version="1.0"?><worksheet {main}><sheetData>'
                                               f'{"".join(sheet_rows)}</sheetData></worksheet>')
        z.writestr("xl/sharedStrings.xml", f'<?xml version="1.0"?><sst {main}>'
                   + "".join(f"<si><t>{s}</t></si>" for s in shared) + "</sst>")


def test_baum1_spreadsheets_subtitles_and_code_check(tmp_path, capsys):
    src = tmp_path / "BAUM1"
    s = src / "BAUM1s_MP4 - All"
    for rel in ("S001/S001_001.mp4", "S001/S001_002.mp4", "S001/S001_004.mp4", "S002/S002_005.mp4",
                "S001/S001_007.mp4"):
        put(s / rel)
    put(s / "S001/S001_001.srt", "1\n00:00:00,000 --> 00:00:02,000\nMerhaba dünya,\n\n2\n"
                                 "00:00:02,000 --> 00:00:04,000\nnasılsın\n")
    put(s / "S001/desktop.ini", "x")  # unexpected
    put(src / "BAUM1a_MP4_all/S003/S003_001.mp4")
    put(src / "BAUM1a_MP4_all/S001/S001_007.mp4")  # unlabelled, but the same name as a labelled BAUM-1s clip
    write_xlsx(src / "Annotations_BAUM1s.xlsx", [  # spelled as in the real sheets (lower case, typos)
        ["BAUM-1s annotations"],
        ["No", "Subject No", "Clip No", "Clip Name", "Emotion", ""],  # the code column found by position
        [1, 1, 1, "S001_001", "Happiness", 8],
        [2, 1, 2, "S001_002", "Contepmt", 5],
        [3, 1, 3, "S001_003", "Anger", 1],  # no media
        [4, 1, 4, "S001_004", "Happiness", 9],  # code 9 is neutral: conflicting
        [5, 1, 6, "S001_006", "", 4],  # malformed: no emotion
        [6, 1, 7, "S001_007", "sadness", 10],
    ])
    put(src / "Annotations_BAUM1a.csv", "No,Subject No,Clip Name,Emotion,Emotion Code\n1,3,S003_001,Intrest,6\n")
    rc, entry, err = run(capsys, "baum1", src)
    assert rc == 0
    got = rows(src / "labels.csv")
    assert {k: (r["label"], r["speaker"], r["transcript"]) for k, r in got.items()} == {
        "S001_001": ("happiness", "S001", "Merhaba dünya, nasılsın"), "S001_002": ("contempt", "S001", ""),
        "S003_001": ("interest", "S003", "")}
    assert entry["label_set"] == ["happiness", "contempt", "interest"] and entry["clips"] == "**/*.mp4"
    check_facts("baum1", entry)
    r = src.resolve()
    xl = r / "Annotations_BAUM1s.xlsx"
    assert f"{xl}:6: S001_004: emotion 'Happiness' disagrees with code '9' (neutral); left out" in err
    assert f"{xl}:7: clip name or emotion missing" in err
    assert f"{xl}:5: S001_003: no BAUM1s file(s) S001_003.mp4" in err
    assert f"{r / 'BAUM1s_MP4 - All/S002/S002_005.mp4'}: no row for S002_005 in Annotations_BAUM1s" in err
    assert f"{r / 'BAUM1s_MP4 - All/S001/desktop.ini'}: not a BAUM-1 clip" in err
    # the manifest refuses a labelled clip whose name two files share: reported and left out
    assert f"{r / 'BAUM1s_MP4 - All/S001/S001_007.mp4'}: 2 files are named S001_007.mp4" in err
    assert f"{r / 'BAUM1a_MP4_all/S001/S001_007.mp4'}: no row for S001_007 in Annotations_BAUM1a" in err
    _, clips = load(entry, "baum1", tmp_path)
    assert sorted(clips) == sorted(got)


def test_read_xlsx_reads_shared_strings_and_numbers(tmp_path):
    write_xlsx(tmp_path / "t.xlsx", [["a", "", 3], [1.5, "b"]])
    assert corpora.read_xlsx(str(tmp_path / "t.xlsx")) == [(1, ["a", "", "3"]), (2, ["1.5", "b"])]


# ----------------------------------------------------------------------------------------- RECOLA
def arff(name, values, step=0.04):
    head = ("@relation GOLDSTANDARD\n\n@attribute Instance_name string\n@attribute frameTime numeric\n"
            "@attribute GoldStandard numeric\n\n@data\n\n")
    return head + "".join(f"{name},{k * step:.2f},{v}\n" for k, v in enumerate(values))


@pytest.fixture
def recola(tmp_path):
    src = tmp_path / "AVEC2016"
    for name in ("train_1", "dev_1", "test_1"):
        put(src / "recordings_video" / f"{name}.mp4")
        put_wav(src / "recordings_audio" / f"{name}.wav", sr=44100, n=441)
    g = src / "ratings_gold_standard"
    put(g / "arousal/train_1.arff", arff("train_1", [0.1, 0.2, 0.3, 0.4]))
    put(g / "valence/train_1.arff", arff("train_1", [-0.1, 0.0, 0.1, 0.2]))
    put(g / "arousal/dev_1.arff", arff("dev_1", [0.5, 0.5, 0.5]) + "dev_1,0.12\n")  # malformed row: line 12
    put(g / "valence/dev_1.arff", arff("dev_1", [0.2, 0.3, 0.4, 0.9]))  # 0.12 s has no arousal
    put(src / "recordings_video/readme.txt", "x")  # unexpected
    put(src / "features_audio/arousal/train_1.arff", "features, not read")
    return src


def test_recola_series_partitions_means_and_manifest_continuous_labels(recola, tmp_path, capsys):
    rc, entry, err = run(capsys, "recola", recola)
    assert rc == 0
    got = rows(recola / "labels.csv")
    assert {k: (r["label"], r["speaker"], r["partition"], r["valence"], r["arousal"]) for k, r in got.items()} == {
        "train_1": ("continuous", "train_1", "train", "0.050000", "0.250000"),
        "dev_1": ("continuous", "dev_1", "devel", f"{(0.2 + 0.3 + 0.4) / 3:.6f}", "0.500000")}
    with open(recola / "continuous_labels.csv", encoding="utf-8") as f:
        series = list(csv.reader(f))
    assert series[0] == ["clip_id", "time", "valence", "arousal"]
    assert series[1:] == [["dev_1", "0.00", "0.2", "0.5"], ["dev_1", "0.04", "0.3", "0.5"],
                          ["dev_1", "0.08", "0.4", "0.5"],  # 0.12 s: arousal row malformed, left out
                          ["train_1", "0.00", "-0.1", "0.1"], ["train_1", "0.04", "0.0", "0.2"],
                          ["train_1", "0.08", "0.1", "0.3"], ["train_1", "0.12", "0.2", "0.4"]]
    assert entry["clips"] == "recordings_video/*.mp4" and entry["continuous_labels"] == "continuous_labels.csv"
    assert entry["label_set"] == ["continuous"]
    check_facts("recola", entry)
    r = recola.resolve()
    assert f"{r / 'ratings_gold_standard/arousal/dev_1.arff'}:12: not a row of 3 values" in err
    assert f"{r / 'ratings_gold_standard/valence/dev_1.arff'}: time 0.12 has no row in" in err
    assert f"{r / 'recordings_video/test_1.mp4'}: no ratings_gold_standard/arousal and valence/test_1.arff" in err
    assert f"{r / 'recordings_video/readme.txt'}: not recordings_video" in err
    assert "not read (not recordings or gold-standard ratings): features_audio" in err
    ds, clips = load(entry, "recola", tmp_path)
    assert sorted(clips) == ["dev_1", "train_1"] and clips["train_1"].path.endswith("recordings_video/train_1.mp4")
    t, v, a = ds.continuous_series()["train_1"]
    np.testing.assert_allclose(t, [0, 0.04, 0.08, 0.12])
    np.testing.assert_allclose(v, [-0.1, 0, 0.1, 0.2], rtol=1e-6)
    np.testing.assert_allclose(a, [0.1, 0.2, 0.3, 0.4], rtol=1e-6)


def test_recola_participant_names_take_partitions_from_a_list(tmp_path, capsys):
    src = tmp_path / "recola"
    for name in ("P16", "P30", "P99"):
        put(src / "recordings_video" / f"{name}.mp4")
        put(src / "ratings_gold_standard/arousal" / f"{name}.arff", arff(name, [0.1, 0.2]))
        put(src / "ratings_gold_standard/valence" / f"{name}.arff", arff(name, [0.3, 0.4]))
    lists = put(tmp_path / "parts.csv", "recording,partition\nP16,train\nP30,devel\n")
    rc, entry, err = run(capsys, "recola", src, "--partitions", lists)
    assert rc == 0
    got = rows(src / "labels.csv")
    assert {k: r["partition"] for k, r in got.items()} == {"P16": "train", "P30": "devel", "P99": ""}
    assert "P99: not named train_N/dev_N/test_N and not in --partitions; partition left empty" in err


def test_nothing_imported_exits_1_with_the_problems(tmp_path, capsys):
    src = tmp_path / "recola"
    put(src / "recordings_video/test_1.mp4")
    put(src / "labels.csv", "clip_id,label,speaker\nearlier,continuous,x\n")  # an earlier import's
    rc, entry, err = run(capsys, "recola", src)
    assert rc == 1 and entry is None
    assert (src / "labels.csv").read_text() == "clip_id,label,speaker\nearlier,continuous,x\n"  # left as it was
    assert "0 clip(s) imported (none), 0 speaker(s); labels.csv not written" in err
    assert "test_1.mp4: no ratings_gold_standard" in err
    assert err.rstrip().endswith("nothing imported (see the problems above)")
