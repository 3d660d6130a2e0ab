"""Corpus importers: ``avstore import CORPUS SOURCE_DIR [--out DIR]`` (issue 20 item 1).

Each importer walks one corpus's layout *as its authors distribute it*, and returns the labelled
clips (``Row``) and every problem it met (``Problem``: an unexpected file or folder, a malformed
label line with its line number, media with no label, a label with no media). ``run_import`` then
writes ``labels.csv`` (``clip_id,label,speaker`` and the optional ``transcript``, ``valence``,
``arousal``, ``partition`` columns the corpus has; for RECOLA also ``continuous_labels.csv``, the
``clip_id,time,valence,arousal`` file read by ``pipeline.manifest``), and returns the manifest entry
to paste into ``data_manifest.yaml``. Nothing is dropped silently: problems go to the summary and,
all of them, to ``import_report.txt``. Media files are never decoded, moved or renamed.

The layouts and the label codes follow public loaders that read the distributed corpora; the
docstring of each importer names the one it follows, and ``docs/corpora.md`` lists them all.

The manifest takes a clip's id from its file name (``pipeline.manifest``): two media files with the
same name, or a name that is not a valid id, cannot both be clips. Such clips are reported and left
out, unless ``link_clips`` is set: then every imported clip gets a symbolic link
``OUT/clips/<id><ext>`` (ids made unique from the clip's path) and the entry's glob points there.
"""
from __future__ import annotations

import csv
import dataclasses
import glob
import io
import math
import os
import re
import sys
import zipfile
from collections import Counter
from typing import Callable
from xml.etree import ElementTree

import yaml

from pipeline.manifest import _CLIP_ID as CLIP_ID
from pipeline.manifest import MAX_LABELS_BYTES, OPTIONAL_COLUMNS

REPO_MANIFEST = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data_manifest.yaml")
FACT_FIELDS = ("description", "citation", "protocol", "sr", "fps", "video_fps", "speakers")
OUTPUTS = ("labels.csv", "continuous_labels.csv", "import_report.txt", "clips")  # what an import writes in OUT
MAX_PART_BYTES = 64 << 20  # one XML part of an annotation spreadsheet, uncompressed (DESIGN "Trust")
GROUP_FILES = 3  # more unexpected files than this in one folder are reported as one folder problem

#: label names of this project, from the words corpora use for them
EMOTION_WORDS = {
    "anger": "anger", "angry": "anger", "disgust": "disgust", "disgusted": "disgust", "fear": "fear",
    "fearful": "fear", "happiness": "happiness", "happy": "happiness", "sadness": "sadness", "sad": "sadness",
    "surprise": "surprise", "surprised": "surprise", "neutral": "neutral",
}


class CorpusError(ValueError):
    """The source cannot be imported at all; the message (one line) says what was expected."""


@dataclasses.dataclass
class Problem:
    kind: str  # "unexpected file", "unexpected folder", "malformed line", "media without label", ...
    path: str
    detail: str
    line: int | None = None

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.detail}" if self.line else f"{self.path}: {self.detail}"


@dataclasses.dataclass
class Row:
    clip_id: str
    label: str
    speaker: str
    path: str  # the media file
    transcript: str | None = None
    valence: str | None = None
    arousal: str | None = None
    partition: str | None = None


@dataclasses.dataclass
class Imported:
    rows: list[Row]
    problems: list[Problem]
    clips: str  # glob under the source matching the media
    series: dict | None = None  # RECOLA: {clip id: [(time, valence, arousal) as written in the source]}
    notes: list[str] = dataclasses.field(default_factory=list)  # counts worth knowing that are not problems


class _Report:
    """Collects problems; unexpected files are grouped by folder when a folder holds many."""

    def __init__(self):
        self.problems: list[Problem] = []
        self.notes: list[str] = []
        self._unexpected: dict[str, list[tuple[str, str]]] = {}

    def add(self, kind: str, path: str, detail: str, line: int | None = None) -> None:
        self.problems.append(Problem(kind, path, detail, line))

    def unexpected(self, path: str, why: str, folder: str | None = None) -> None:
        """An unexpected file; many of them in one ``folder`` (default: the file's own) become one
        folder problem."""
        self._unexpected.setdefault(folder or os.path.dirname(path), []).append((path, why))

    def empty(self) -> bool:
        return not self.problems and not self._unexpected

    def done(self, rows: list[Row], clips: str, series: dict | None = None) -> Imported:
        for folder, files in self._unexpected.items():
            if len(files) > GROUP_FILES:
                self.add("unexpected folder", folder, f"{len(files)} files not read ({files[0][1]}), e.g. "
                                                      f"{os.path.basename(files[0][0])!r}")
            else:
                for path, why in files:
                    self.add("unexpected file", path, why)
        return Imported(rows, self.problems, clips, series, self.notes)


def _files(top: str, ignore: frozenset = frozenset()):
    """``(path, parts)`` of every file under ``top`` (sorted; ``parts``: the path relative to ``top``
    split into folders and name), except the paths in ``ignore`` (this import's own outputs)."""
    for dirpath, dirs, files in os.walk(top):
        dirs[:] = sorted(d for d in dirs if os.path.join(dirpath, d) not in ignore)
        for name in sorted(files):
            path = os.path.join(dirpath, name)
            if path not in ignore:
                yield path, os.path.relpath(path, top).split(os.sep)


def _last(parts, pattern: re.Pattern) -> int | None:
    """Index of the last folder name in ``parts`` that ``pattern`` matches whole."""
    hits = [i for i, p in enumerate(parts) if pattern.fullmatch(p)]
    return hits[-1] if hits else None


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def _ext(path: str) -> str:
    return os.path.splitext(path)[1].lower()


def _read_text(path: str, rep: _Report) -> list[str] | None:
    """The lines of a small text file (UTF-8, byte-order mark dropped), or ``None`` (reported)."""
    with open(path, "rb") as f:
        data = f.read(MAX_LABELS_BYTES + 1)
    if len(data) > MAX_LABELS_BYTES:
        rep.add("unreadable file", path, f"larger than {MAX_LABELS_BYTES:,} bytes; not read")
        return None
    try:
        return data.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        rep.add("unreadable file", path, f"byte 0x{data[err.start]:02x} is not UTF-8; not read", line)
        return None


# ---------------------------------------------------------------------------------------- IEMOCAP
IEMOCAP_CODES = {"ang": "anger", "hap": "happiness", "exc": "excitement", "sad": "sadness", "neu": "neutral",
                 "fru": "frustration", "fea": "fear", "sur": "surprise", "dis": "disgust", "oth": "other",
                 "xxx": "unknown"}  # the codes' names as in Strong-AI-Lab/emotion datasets/IEMOCAP/process.py
IEMOCAP_FOUR_CLASS = {"ang": "anger", "hap": "happiness", "exc": "happiness", "neu": "neutral", "sad": "sadness"}
_NUM = r"-?\d+(?:\.\d+)?"
_EVAL_LINE = re.compile(rf"\[({_NUM})\s*-\s*({_NUM})\]\s+(\S+)\s+(\w+)\s+"  # [start - end] turn code
                        rf"\[\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*\]")  # [V, A, D]
_TRN_LINE = re.compile(rf"(\S+)\s+\[({_NUM})-({_NUM})\]:\s?(.*)")
_UTTERANCE = re.compile(r"(Ses\d\d)[MF]_\w+_([MF])\w*")  # session, the speaker's gender letter
_EVAL_FILE = re.compile(r"Ses\d\d[MF]_\w+\.txt")
_EVAL_FOLDERS = ("Attribute", "Categorical", "Self-evaluation")  # per-evaluator files, not read


def _iemocap_labels(folder: str, rep: _Report, labels: dict) -> None:
    """``labels[utterance] = (code, valence, activation, path, line)`` from one
    ``Session*/dialog/EmoEvaluation`` folder; every line that is neither a turn line, a rater line
    (``C-``/``A-``), the ``%`` header nor empty is reported with its number."""
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if os.path.isdir(path):
            if name not in _EVAL_FOLDERS:
                rep.add("unexpected folder", path, "not one of the release's EmoEvaluation folders; not read")
            continue
        if not _EVAL_FILE.fullmatch(name):
            rep.unexpected(path, "not an evaluation file Ses<NN><F|M>_<dialog>.txt")
            continue
        for n, line in enumerate(_read_text(path, rep) or (), 1):
            text = line.strip()
            if not text or text.startswith(("%", "C-", "A-")):
                continue
            m = _EVAL_LINE.fullmatch(text)
            if not m or not _UTTERANCE.fullmatch(m.group(3)):
                rep.add("malformed line", path, f"not '[start - end]<TAB>utterance<TAB>code<TAB>[V, A, D]': "
                                                f"{text[:80]!r}", n)
            elif m.group(3) in labels:
                rep.add("duplicate label", path, f"{m.group(3)} already labelled at "
                                                 f"{labels[m.group(3)][3]}:{labels[m.group(3)][4]}; first kept", n)
            else:
                labels[m.group(3)] = (m.group(4), m.group(5), m.group(6), path, n)


def _iemocap_transcripts(folder: str, rep: _Report, out: dict) -> None:
    """``out[utterance] = text`` from one ``Session*/dialog/transcriptions`` folder."""
    for path, parts in _files(folder):
        if len(parts) > 1 or _ext(path) != ".txt":
            rep.unexpected(path, "not a transcription file <dialog>.txt")
            continue
        for n, line in enumerate(_read_text(path, rep) or (), 1):
            m = _TRN_LINE.fullmatch(line.strip())
            if m:
                out.setdefault(m.group(1), " ".join(m.group(4).split()))
            elif line.strip():
                rep.add("malformed line", path, f"not 'utterance [start-end]: text': {line.strip()[:80]!r}", n)


def import_iemocap(source: str, *, ignore: frozenset = frozenset(), four_class: bool = False) -> Imported:
    """IEMOCAP (Busso et al. 2008) as released: ``Session1..5/dialog/EmoEvaluation/*.txt`` (label,
    and valence / activation / dominance of each turn), ``Session*/dialog/transcriptions/*.txt``
    and ``Session*/sentences/wav/<dialog>/<utterance>.wav``.

    Follows Strong-AI-Lab/emotion ``datasets/IEMOCAP/process.py`` (the line formats and the code
    names) and felixbur/nkululeko ``data/iemocap/process_database.py`` (4 classes, ``exc`` merged into
    ``hap``, as Priyasad §4: 5,531 utterances). The speaker is the session and the gender letter of
    the utterance (``Ses01F_impro01_M000`` → ``Ses01M``): those loaders take the dialog's prefix,
    which names the actor wearing the markers, not the one speaking. ``valence`` and ``arousal`` are
    the turn's V and A (1-5); dominance has no column. With ``four_class`` only ang/hap/exc/neu/sad
    are kept (named anger/happiness/neutral/sadness); the others are counted in the notes.
    """
    rep, labels, transcripts, wavs = _Report(), {}, {}, {}
    sessions = sorted(d for d in glob.glob(os.path.join(source, "Session*")) if os.path.isdir(d))
    for session in sessions:
        parts = {"EmoEvaluation": os.path.join(session, "dialog", "EmoEvaluation"),
                 "transcriptions": os.path.join(session, "dialog", "transcriptions"),
                 "wav": os.path.join(session, "sentences", "wav")}
        for what, folder in parts.items():
            if not os.path.isdir(folder):
                rep.add("missing folder", folder, f"the release has this folder; no {what} read for {session}")
        if os.path.isdir(parts["EmoEvaluation"]):
            _iemocap_labels(parts["EmoEvaluation"], rep, labels)
        if os.path.isdir(parts["transcriptions"]):
            _iemocap_transcripts(parts["transcriptions"], rep, transcripts)
        for path, rel in _files(parts["wav"], ignore) if os.path.isdir(parts["wav"]) else ():
            if len(rel) == 2 and _ext(path) == ".wav":
                wavs.setdefault(_stem(path), path)
            else:
                rep.unexpected(path, "not sentences/wav/<dialog>/<utterance>.wav")
    if not labels and not wavs:
        raise CorpusError(f"found no Session*/dialog/EmoEvaluation/*.txt and no Session*/sentences/wav/*/*.wav "
                          f"under {source}; expected the IEMOCAP release folder (holding Session1..Session5)")
    rows, left_out = [], Counter()
    for utt, (code, v, a, path, n) in sorted(labels.items()):
        label = (IEMOCAP_FOUR_CLASS if four_class else IEMOCAP_CODES).get(code)
        if label is None and four_class and code in IEMOCAP_CODES:
            left_out[code] += 1
            wavs.pop(utt, None)
        elif label is None:
            rep.add("unknown label", path, f"code {code!r} of {utt} is none of {', '.join(IEMOCAP_CODES)}", n)
        elif utt not in wavs:
            rep.add("label without media", path, f"{utt}: no sentences/wav/*/{utt}.wav", n)
        else:
            m = _UTTERANCE.fullmatch(utt)
            rows.append(Row(utt, label, m.group(1) + m.group(2), wavs.pop(utt), transcripts.get(utt), v, a))
    for utt, path in sorted(wavs.items()):
        if utt not in labels:
            rep.add("media without label", path, f"no EmoEvaluation line names {utt}")
    if left_out:
        rep.notes.append("left out by --four-class (not ang/hap/exc/neu/sad): "
                         + ", ".join(f"{c} {k}" for c, k in sorted(left_out.items())))
    unused = sorted(set(transcripts) - set(labels))
    if unused:
        rep.notes.append(f"{len(unused)} transcript line(s) name turns no EmoEvaluation file labels "
                         f"(e.g. {unused[0]}); not used")
    no_text = sum(r.transcript is None for r in rows)
    if no_text:
        rep.notes.append(f"{no_text} imported utterance(s) have no transcript line (transcript left empty)")
    return rep.done(rows, clips="Session*/sentences/wav/*/*.wav")


# ----------------------------------------------------------------------------------- eNTERFACE'05
ENTERFACE_EMOTIONS = ("anger", "disgust", "fear", "happiness", "sadness", "surprise")
_SUBJECT = re.compile(r"subject\s*(\d+)", re.I)
_SENTENCE = re.compile(r"sentence\s*(\d+)", re.I)


def import_enterface05(source: str, *, ignore: frozenset = frozenset()) -> Imported:
    """eNTERFACE'05 (Martin et al. 2006) as distributed: ``subject N/<emotion>/sentence M/*.avi``;
    subject 6 has no sentence level (``subject 6/<emotion>/*.avi``). The label is the emotion
    folder, the speaker ``s<N>`` from ``subject N``.

    Follows Strong-AI-Lab/emotion ``datasets/eNTERFACE/process.py`` (the layout) and felixbur/nkululeko
    ``data/enterface/process_database.py`` (subject 6's missing level; subject 11's files named
    ``s12_*``, which clash with subject 12's names: see the module docstring on ``link_clips``).
    """
    rep, rows = _Report(), []
    for path, parts in _files(source, ignore):
        i = _last(parts[:-1], _SUBJECT)
        rest = parts[i + 1:] if i is not None else []
        if not (_ext(path) == ".avi" and len(rest) in (2, 3) and rest[0].lower() in ENTERFACE_EMOTIONS
                and (len(rest) == 2 or _SENTENCE.fullmatch(rest[1]))):
            rep.unexpected(path, "not subject N/<emotion>/sentence M/*.avi (or subject N/<emotion>/*.avi)")
            continue
        rows.append(Row(_stem(path), rest[0].lower(), f"s{int(_SUBJECT.fullmatch(parts[i]).group(1))}", path))
    if not rows and rep.empty():
        raise CorpusError(f"found no files under {source}; expected the eNTERFACE'05 folders 'subject N/<emotion>/"
                          f"sentence M/*.avi'")
    return rep.done(rows, clips="**/*.avi")


# -------------------------------------------------------------------------------------------- RML
RML_CODES = {"an": "anger", "di": "disgust", "fe": "fear", "ha": "happiness", "sa": "sadness", "su": "surprise"}
_RML_SPEAKER = re.compile(r"s(\d+)", re.I)


def import_rml(source: str, *, ignore: frozenset = frozenset()) -> Imported:
    """RML (Ryerson Multimedia Lab; 8 subjects, 720 clips): speaker folders ``s1``..``s8`` (possibly
    with language sub-folders, possibly inside ``rml-1``/``rml-2``), ``*.avi`` whose name starts
    with the emotion code ``an di fe ha sa su``, or that lie in an emotion folder (``anger``,
    ``happy``, ...). Name and folder must agree when both are there; the speaker is ``s<N>``.

    Follows albanie/mcnDatasets ``rml/getRmlImdb.m`` (speaker folders, nested language folders,
    the two-letter codes at the start of the clip name).
    """
    rep, rows = _Report(), []
    for path, parts in _files(source, ignore):
        i = _last(parts[:-1], _RML_SPEAKER)
        if i is None or _ext(path) != ".avi":
            rep.unexpected(path, "not an .avi inside a speaker folder s1..s8")
            continue
        by_name = RML_CODES.get(_stem(path)[:2].lower())
        by_folder = {EMOTION_WORDS.get(p.lower()) or RML_CODES.get(p.lower()) for p in parts[i + 1:-1]} - {None}
        if len(by_folder) > 1 or (by_name and by_folder and {by_name} != by_folder):
            rep.add("conflicting label", path, f"name says {by_name or '-'}, folders say {', '.join(sorted(by_folder))}"
                                               f"; left out")
        elif not (by_name or by_folder):
            rep.add("media without label", path, f"no emotion code ({' '.join(RML_CODES)}) at the start of the "
                                                 f"name and no emotion folder")
        else:
            speaker = f"s{int(_RML_SPEAKER.fullmatch(parts[i]).group(1))}"
            rows.append(Row(_stem(path), by_name or by_folder.pop(), speaker, path))
    if not rows and rep.empty():
        raise CorpusError(f"found no files under {source}; expected RML speaker folders s1..s8 holding *.avi")
    return rep.done(rows, clips="**/*.avi")


# ------------------------------------------------------------------------------------------- AFEW
AFEW_EMOTIONS = {"angry": "anger", "disgust": "disgust", "fear": "fear", "happy": "happiness",
                 "neutral": "neutral", "sad": "sadness", "surprise": "surprise"}
_AFEW_PARTITION = re.compile(r"(train|val|test)(?:_afew)?", re.I)


def import_afew(source: str, *, ignore: frozenset = frozenset()) -> Imported:
    """AFEW (EmotiW; Dhall et al.) as distributed: ``Train/<Emotion>/*.avi`` and ``Val/<Emotion>/*.avi``
    (``Train_AFEW``/``Val_AFEW`` too), emotions Angry Disgust Fear Happy Neutral Sad Surprise;
    ``partition`` train / val (test clips have no labels: reported as media without label).

    Follows albanie/mcnDatasets ``afew3.0/getAfewImdb.m`` (the folders and the emotion names; it
    warns that a video name can occur in both Train and Val). Movie clips have no speaker
    identities: each clip is its own speaker (``speaker`` = clip id), and the ``fixed`` protocol
    uses the ``partition`` column.
    """
    rep, rows = _Report(), []
    for path, parts in _files(source, ignore):
        i = _last(parts[:-1], _AFEW_PARTITION)
        rest = parts[i + 1:] if i is not None else []
        partition = _AFEW_PARTITION.fullmatch(parts[i]).group(1).lower() if i is not None else None
        if _ext(path) == ".avi" and len(rest) == 2 and rest[0].lower() in AFEW_EMOTIONS and partition != "test":
            rows.append(Row(_stem(path), AFEW_EMOTIONS[rest[0].lower()], _stem(path), path, partition=partition))
        elif _ext(path) == ".avi" and len(rest) == 1:
            withheld = " (the challenge withholds test labels)" if partition == "test" else ""
            rep.add("media without label", path, f"directly in the {parts[i]} folder, in no emotion folder{withheld}")
        else:  # e.g. a folder of face crops inside Train_AFEW: one problem for the folder
            group = os.path.join(source, *parts[:i + 2]) if i is not None and len(rest) > 2 else None
            rep.unexpected(path, "not Train|Val/<Emotion>/*.avi", group)
    if not rows and rep.empty():
        raise CorpusError(f"found no files under {source}; expected the AFEW folders Train/<Emotion>/*.avi and "
                          f"Val/<Emotion>/*.avi")
    return rep.done(rows, clips="**/*.avi")


# ----------------------------------------------------------------------------------------- BAUM-1
#: the emotion codes of the annotation spreadsheets per subset (code k is entry k - 1): the code
#: tables of michen00/multilingual_speech_valence_classification_datasets datasets/BAUM1/
#: BAUM1_data_files.py, named as in its preclean.tsv (rows pasted from the spreadsheets, which
#: also hold misspellings such as "Intrest" and "Contepmt": names are checked by their first
#: three letters, as that script does)
BAUM_CODES = {"a": ("anger", "boredom", "disgust", "fear", "happiness", "interest", "sadness", "surprise", "unsure"),
              "s": ("anger", "boredom", "bothered", "concentrating", "contempt", "disgust", "fear", "happiness",
                    "neutral", "sadness", "surprise", "thinking", "unsure")}
_BAUM_SUBSET = re.compile(r"baum-?1([as])", re.I)
_BAUM_ANNOTATIONS = re.compile(r"annotations_baum-?1([as])\.(xlsx|csv|tsv)", re.I)
_XLSX = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"
_REL = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}"


def _xlsx_part(z: zipfile.ZipFile, name: str) -> ElementTree.Element:
    if z.getinfo(name).file_size > MAX_PART_BYTES:
        raise CorpusError(f"{z.filename}: part {name} is larger than {MAX_PART_BYTES:,} bytes uncompressed")
    return ElementTree.fromstring(z.read(name))


def _column(ref: str) -> int:
    """0-based column of a cell reference (``D12`` → 3)."""
    n = 0
    for ch in re.match(r"[A-Z]+", ref).group(0):
        n = n * 26 + ord(ch) - 64
    return n - 1


def read_xlsx(path: str) -> list[tuple[int, list[str]]]:
    """``(row number, cell texts)`` of the first sheet of an .xlsx file (Office Open XML, read with
    the standard library: shared strings, inline strings, numbers as written)."""
    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
        shared = [] if "xl/sharedStrings.xml" not in names else [
            "".join(t.text or "" for t in si.iter(f"{_XLSX}t"))
            for si in _xlsx_part(z, "xl/sharedStrings.xml").iter(f"{_XLSX}si")]
        sheet = "xl/worksheets/sheet1.xml"
        if {"xl/workbook.xml", "xl/_rels/workbook.xml.rels"} <= names:
            first = next(_xlsx_part(z, "xl/workbook.xml").iter(f"{_XLSX}sheet"), None)
            targets = {r.get("Id"): r.get("Target") for r in _xlsx_part(z, "xl/_rels/workbook.xml.rels")}
            target = targets.get(first.get(f"{_REL}id")) if first is not None else None
            if target:
                sheet = target.lstrip("/") if target.startswith("/") else "xl/" + target
        rows = []
        for k, row in enumerate(_xlsx_part(z, sheet).iter(f"{_XLSX}row"), 1):
            cells = {}
            for j, c in enumerate(row.iter(f"{_XLSX}c")):
                v, kind = c.find(f"{_XLSX}v"), c.get("t")
                if kind == "inlineStr":
                    text = "".join(t.text or "" for t in c.iter(f"{_XLSX}t"))
                else:
                    text = "" if v is None else shared[int(v.text)] if kind == "s" else v.text or ""
                cells[_column(c.get("r")) if c.get("r") else j] = text.strip()
            rows.append((int(row.get("r", k)), [cells.get(j, "") for j in range(max(cells) + 1)] if cells else []))
        return rows


def _baum_table(path: str, rep: _Report) -> list[tuple[int, list[str]]]:
    """Rows of an annotation file: .xlsx (as distributed) or a .csv / .tsv export of it."""
    try:
        if _ext(path) == ".xlsx":
            return read_xlsx(path)
        lines = _read_text(path, rep)
        delimiter = "\t" if _ext(path) == ".tsv" else ","
        return [(n, [c.strip() for c in cells]) for n, cells in
                enumerate(csv.reader(io.StringIO("\n".join(lines or ())), delimiter=delimiter), 1)]
    except (zipfile.BadZipFile, ElementTree.ParseError, KeyError, ValueError, IndexError, csv.Error) as err:
        rep.add("unreadable file", path, f"not a readable spreadsheet ({type(err).__name__}: {str(err)[:80]})")
        return []


def _baum_annotations(path: str, subset: str, rep: _Report, out: dict) -> None:
    """``out[(subset, clip)] = (label, line, path)`` from one annotation file. The columns are found
    by their headers "Clip Name" and "Emotion"; the code column is the one whose header says
    "code", else the column after "Emotion" when all its cells are integers (column F)."""
    table = _baum_table(path, rep)
    norm = [(n, [re.sub(r"[^a-z]", "", c.lower()) for c in cells]) for n, cells in table]
    head = next(((k, cells) for k, (n, cells) in enumerate(norm) if "clipname" in cells and "emotion" in cells), None)
    if head is None:
        if table:
            rep.add("malformed line", path, f"no header row with 'Clip Name' and 'Emotion'; first row: "
                                            f"{table[0][1][:8]}", table[0][0])
        return
    k, header = head
    clip_col, emo_col = header.index("clipname"), header.index("emotion")
    code_col = next((j for j, h in enumerate(header) if "code" in h), None)
    after = [cells[emo_col + 1] for _, cells in table[k + 1:] if len(cells) > emo_col + 1 and cells[emo_col + 1]]
    if code_col is None and after and all(re.fullmatch(r"\d+(\.0)?", c) for c in after):
        code_col = emo_col + 1
    for n, cells in table[k + 1:]:
        cells = cells + [""] * (len(header) - len(cells))
        clip, name = cells[clip_col], cells[emo_col]
        if not any(cells):
            continue
        if not clip or not name:
            rep.add("malformed line", path, f"clip name or emotion missing: {cells[:8]}", n)
            continue
        label = EMOTION_WORDS.get(name.lower()) or re.sub(r"\s+", "-", name.lower())
        code = cells[code_col] if code_col is not None else ""
        if code:
            try:
                label = BAUM_CODES[subset][int(float(code)) - 1] if float(code) >= 1 else None
            except (ValueError, IndexError):
                label = None
            if label is None or name.lower()[:3] != label[:3]:
                rep.add("conflicting label", path, f"{clip}: emotion {name!r} disagrees with code {code!r} "
                                                   f"({label or 'no such code'}); left out", n)
                continue
        if (subset, clip) in out:
            rep.add("duplicate label", path, f"{clip} already labelled on line {out[subset, clip][1]}; first kept", n)
            continue
        out[subset, clip] = (label, n, path)


def _srt_text(path: str, rep: _Report) -> str | None:
    """The text of a SubRip file: every line that is not a cue number, a timing line or empty."""
    lines = _read_text(path, rep)
    if lines is None:
        return None
    return " ".join(x.strip() for x in lines if x.strip() and not x.strip().isdigit() and "-->" not in x)


def import_baum1(source: str, *, ignore: frozenset = frozenset()) -> Imported:
    """BAUM-1 (Zhalehpour et al. 2017) as distributed: ``BAUM1s_MP4 - All/<S001>/<S001_001>.mp4``
    (spontaneous) and ``BAUM1a_MP4_all/...`` (acted), a SubRip ``.srt`` beside each clip, and the
    spreadsheets ``Annotations_BAUM1s.xlsx`` / ``Annotations_BAUM1a.xlsx`` (or .csv exports).

    No documentation of the spreadsheet columns was found; the public scripts that read them (see
    docs/corpora.md) show subject, clip number, "Clip Name" and "Emotion" in columns B to E and a
    numeric emotion code in column F (``BAUM_CODES``). The label is the code's name when there is
    a code (the name must agree with it: the first three letters, as those scripts check), else the
    "Emotion" name in lower case; the speaker is the clip name's prefix (``S001``); the transcript
    is the ``.srt`` text. Every label found is written; the printed ``label_set`` lists them (AVEF's
    six emotions are picked at training time with ``--labels``).
    """
    rep, media, srt, labels = _Report(), {}, {}, {}
    for path, parts in _files(source, ignore):
        ann = _BAUM_ANNOTATIONS.fullmatch(parts[-1])
        subset = next((m.group(1).lower() for p in parts[:-1] for m in [_BAUM_SUBSET.match(p)] if m), None)
        if ann:
            _baum_annotations(path, ann.group(1).lower(), rep, labels)
        elif _ext(path) == ".mp4":
            media.setdefault(_stem(path), []).append((subset, path))
        elif _ext(path) == ".srt":
            srt[os.path.splitext(path)[0]] = path
        else:
            rep.unexpected(path, "not a BAUM-1 clip (.mp4), subtitle (.srt) or Annotations_BAUM1s|a spreadsheet")
    if not labels and not media:
        raise CorpusError(f"found no Annotations_BAUM1s|a.xlsx and no .mp4 under {source}; expected the BAUM-1 "
                          f"folders 'BAUM1s_MP4 - All/S001/*.mp4', 'BAUM1a_MP4_all/...' and their spreadsheets")
    rows, used = [], set()
    for (subset, clip), (label, n, where) in sorted(labels.items()):
        found = [p for s, p in media.get(clip, ()) if s in (subset, None)]
        if len(found) != 1:
            rep.add("label without media", where, f"{clip}: {'no' if not found else len(found)} BAUM1{subset} "
                                                  f"file(s) {clip}.mp4", n)
            continue
        used.add(found[0])
        subtitle = srt.pop(os.path.splitext(found[0])[0], None)
        text = _srt_text(subtitle, rep) if subtitle else None
        rows.append(Row(clip, label, clip.split("_")[0].upper(), found[0], text))
    for clip, files in sorted(media.items()):
        for subset, path in files:
            if path not in used:
                rep.add("media without label", path, f"no row for {clip} in Annotations_BAUM1{subset or '?'}")
                srt.pop(os.path.splitext(path)[0], None)
    for stem, path in sorted(srt.items()):
        rep.unexpected(path, "a subtitle file with no clip of the same name beside it")
    return rep.done(rows, clips="**/*.mp4")


# ----------------------------------------------------------------------------------------- RECOLA
_AVEC_NAME = re.compile(r"(train|dev|devel|test)_\d+", re.I)
RECOLA_PARTITIONS = {"train": "train", "dev": "devel", "devel": "devel", "test": "test"}


def read_arff(path: str, rep: _Report, value: str = "GoldStandard") -> list[tuple[str, str, int]] | None:
    """``(frameTime, value, line)`` texts of an AVEC gold-standard ARFF file (``@attribute
    Instance_name string``, ``@attribute frameTime numeric``, ``@attribute GoldStandard numeric``,
    then ``@data`` rows ``name,time,value``); malformed rows are reported and skipped."""
    lines = _read_text(path, rep)
    if lines is None:
        return None
    names, data, out = [], None, []
    for n, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("%"):
            continue
        if data is None:
            low = text.lower()
            if low.startswith("@attribute"):
                names.append(text.split()[1].strip("'\"").lower() if len(text.split()) > 1 else "")
            elif low.startswith("@data"):
                data = n
                if "frametime" not in names or value.lower() not in names:
                    rep.add("malformed line", path, f"no 'frameTime' and {value!r} attributes, got {names}", n)
                    return None
            elif not low.startswith("@relation"):
                rep.add("malformed line", path, f"not an ARFF header line: {text[:80]!r}", n)
            continue
        cells = [c.strip() for c in text.split(",")]
        try:
            if len(cells) != len(names):
                raise ValueError
            t, v = cells[names.index("frametime")], cells[names.index(value.lower())]
            if not (math.isfinite(float(t)) and math.isfinite(float(v))):
                raise ValueError
            out.append((t, v, n))
        except ValueError:
            rep.add("malformed line", path, f"not a row of {len(names)} values ({', '.join(names)}): {text[:80]!r}", n)
    if data is None:
        rep.add("malformed line", path, "no @data section")
        return None
    return out


def _recola_series(name: str, arousal: str, valence: str, rep: _Report) -> list[tuple[str, str, str]] | None:
    """The recording's (time, valence, arousal) rows, joined on time; times in one file only are reported."""
    a, v = read_arff(arousal, rep), read_arff(valence, rep)
    if a is None or v is None:
        return None
    by_time = {round(float(t), 6): (t, x) for t, x, _ in v}
    rows, seen = [], set()
    for t, x, n in a:
        key = round(float(t), 6)
        if key in seen or (rows and key <= round(float(rows[-1][0]), 6)):
            rep.add("malformed line", arousal, f"time {t} is not after the previous row's; row skipped", n)
        elif key not in by_time:
            rep.add("malformed line", arousal, f"time {t} has no row in {valence}; row skipped", n)
        else:
            rows.append((t, by_time[key][1], x))
        seen.add(key)
    for key in sorted(set(by_time) - seen):
        rep.add("malformed line", valence, f"time {by_time[key][0]} has no row in {arousal}; row skipped")
    if len(rows) < 2:
        rep.add("too few ratings", arousal, f"{name}: fewer than two time points with both arousal and valence; "
                                            f"recording left out")
        return None
    return rows


def read_partitions(path: str) -> dict[str, str]:
    """``{recording: partition}`` from a CSV with the columns ``recording,partition``."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            table = list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError) as err:
        raise CorpusError(f"--partitions {path}: cannot read it ({err})") from None
    if not table or not {"recording", "partition"} <= set(table[0]):
        raise CorpusError(f"--partitions {path}: needs the columns recording,partition")
    return {r["recording"].strip(): r["partition"].strip().lower() for r in table}


def import_recola(source: str, *, ignore: frozenset = frozenset(), partitions: dict | None = None) -> Imported:
    """RECOLA as packaged for AVEC 2016 (Valstar et al.; Lucas §3): ``recordings_video/<name>.mp4``,
    ``recordings_audio/<name>.wav`` and ``ratings_gold_standard/{arousal,valence}/<name>.arff`` (one
    rating every 40 ms). ``<name>`` is ``train_N`` / ``dev_N`` / ``test_N`` in the AVEC package,
    which gives the partition (train / devel / test); recordings named by participant (``P16``) take
    it from ``partitions`` (``--partitions CSV``), else the partition is left empty and reported.

    Follows end2you/end2you ``docs/use_cases/RECOLA/1. Generate files for End2You.ipynb`` (layout,
    the ARFF attributes ``frameTime`` and ``GoldStandard``). The clip is the video (the entry's
    glob takes ``recordings_video/*.mp4``, or the .wav files when there is no video); ``label`` is
    ``continuous``; ``valence`` / ``arousal`` are each recording's mean rating; the 40 ms series go
    to ``continuous_labels.csv``. Test recordings come without ratings (AVEC withholds them).
    """
    rep, media, ratings, other = _Report(), {}, {}, set()
    for path, parts in _files(source, ignore):
        where = "/".join(parts[:-1])
        if where == "recordings_video" and _ext(path) == ".mp4" or where == "recordings_audio" and _ext(path) == ".wav":
            media.setdefault(_stem(path), {})[_ext(path)] = path
        elif where in ("ratings_gold_standard/arousal", "ratings_gold_standard/valence") and _ext(path) == ".arff":
            ratings.setdefault(_stem(path), {})[parts[1]] = path
        elif parts[0] in ("recordings_video", "recordings_audio", "ratings_gold_standard"):
            rep.unexpected(path, "not recordings_video/*.mp4, recordings_audio/*.wav or "
                                 "ratings_gold_standard/{arousal,valence}/*.arff")
        else:
            other.add(parts[0] if len(parts) > 1 else path)
    if not media and not ratings:
        raise CorpusError(f"found no recordings_video/*.mp4, recordings_audio/*.wav or ratings_gold_standard/"
                          f"{{arousal,valence}}/*.arff under {source}; expected the RECOLA (AVEC 2016) package")
    if other:  # the AVEC package's features_* and ratings_individual*: not needed here
        rep.notes.append(f"not read (not recordings or gold-standard ratings): {', '.join(sorted(other))}")
    ext = ".mp4" if any(".mp4" in m for m in media.values()) else ".wav"
    clips = "recordings_video/*.mp4" if ext == ".mp4" else "recordings_audio/*.wav"
    rows, series = [], {}
    for name in sorted(set(media) | set(ratings)):
        got, files = ratings.get(name, {}), media.get(name, {})
        if ext not in files:
            for path in got.values():
                rep.add("label without media", path, f"no {os.path.dirname(clips)}/{name}{ext}")
            continue
        if set(got) != {"arousal", "valence"}:
            lacking = " and ".join(sorted({"arousal", "valence"} - set(got)))
            rep.add("media without label", files[ext], f"no ratings_gold_standard/{lacking}/{name}.arff")
            continue
        rows_t = _recola_series(name, got["arousal"], got["valence"], rep)
        if rows_t is None:
            continue
        m = _AVEC_NAME.fullmatch(name)
        partition = RECOLA_PARTITIONS[m.group(1).lower()] if m else (partitions or {}).get(name, "")
        if not partition:
            rep.add("no partition", files[ext], f"{name}: not named train_N/dev_N/test_N and not in --partitions; "
                                                f"partition left empty")
        mean = lambda k: f"{sum(float(r[k]) for r in rows_t) / len(rows_t):.6f}"  # noqa: E731
        rows.append(Row(name, "continuous", name, files[ext], valence=mean(1), arousal=mean(2), partition=partition))
        series[name] = rows_t
    return rep.done(rows, clips=clips, series=series)


# ------------------------------------------------------------------------------------ the command
@dataclasses.dataclass(frozen=True)
class Corpus:
    importer: Callable[..., Imported]
    options: tuple = ()  # keyword options of the importer that the command line may set


CORPORA = {
    "baum1": Corpus(import_baum1),
    "enterface05": Corpus(import_enterface05),
    "rml": Corpus(import_rml),
    "iemocap": Corpus(import_iemocap, ("four_class",)),
    "recola": Corpus(import_recola, ("partitions",)),
    "afew": Corpus(import_afew),
}


def manifest_facts(name: str, path: str = REPO_MANIFEST) -> dict:
    """The source facts of ``name`` in the repository's ``data_manifest.yaml`` (``FACT_FIELDS`` and
    ``label_set``), so that the printed entry repeats them; ``{}`` when it has none."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f.read(1 << 20))
        entry = doc["datasets"][name]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return {}
    return {k: entry[k] for k in (*FACT_FIELDS, "label_set") if k in entry}


def _link_id(row: Row, source: str) -> str:
    """A valid, path-derived clip id (``s1/an1.avi`` → ``s1_an1``)."""
    rel = os.path.splitext(os.path.relpath(row.path, source))[0]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", rel.replace(os.sep, "_")).strip("-._") or "clip"


def _link_clips(rows: list[Row], source: str, out: str) -> list[Row]:
    """Give every row a symbolic link ``out/clips/<id><ext>`` (relative target) with a unique, valid
    id: the file name's stem where that is unique and valid, else the path-derived ``_link_id``."""
    folder = os.path.join(out, "clips")
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(folder):
        if not os.path.islink(os.path.join(folder, name)):
            raise CorpusError(f"{folder} holds {name}, which is not a link made by an import; empty the folder first")
        os.remove(os.path.join(folder, name))
    count = Counter(r.clip_id for r in rows)
    linked = []
    for r in rows:
        cid = r.clip_id if count[r.clip_id] == 1 and CLIP_ID.fullmatch(r.clip_id) else _link_id(r, source)
        link = os.path.join(folder, cid + _ext(r.path))
        if not os.path.lexists(link):
            os.symlink(os.path.relpath(r.path, folder), link)
        linked.append(dataclasses.replace(r, clip_id=cid, path=link))
    return linked


def _check_ids(rows: list[Row], root: str, clips: str, problems: list[Problem]) -> list[Row]:
    """The rows the manifest will accept: a valid clip id, and exactly one file of the glob with that
    name (``pipeline.manifest`` refuses a labelled clip with two files); the others are reported."""
    files = Counter()
    paths: dict[str, list[str]] = {}
    for p in glob.glob(os.path.join(root, clips), recursive=True):
        if os.path.isfile(p):
            files[_stem(p)] += 1
            paths.setdefault(_stem(p), []).append(p)
    ids = Counter(r.clip_id for r in rows)
    kept = []
    for r in rows:
        if not CLIP_ID.fullmatch(r.clip_id):
            problems.append(Problem("invalid clip id", r.path, f"the name {r.clip_id!r} is not a clip id (letters, "
                                                               f"digits, '.', '_', '-'); left out "
                                                               f"(--link-clips renames)"))
        elif r.path not in paths.get(r.clip_id, ()):
            problems.append(Problem("not matched by the glob", r.path, f"the clips glob {clips!r} does not match this "
                                                                       f"file; left out (please report this)"))
        elif ids[r.clip_id] > 1 or files[r.clip_id] > 1:
            others = sorted(set(paths.get(r.clip_id, [])) - {r.path})
            also = others[0] if others else "?"
            problems.append(Problem("duplicate clip id", r.path, f"{files[r.clip_id]} files are named "
                                                                 f"{r.clip_id}{_ext(r.path)} (also {also}); "
                                                                 f"left out (--link-clips gives each its own id)"))
        else:
            kept.append(r)
    return kept


def _write_csv(path: str, header: list[str], rows: list) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    os.replace(tmp, path)


def _rel(path: str, root: str) -> str:
    rel = os.path.relpath(path, root)
    return "" if rel == "." else rel.replace(os.sep, "/") + "/"


def run_import(name: str, source: str, out: str | None = None, *, link_clips: bool = False,
               **options) -> tuple[dict, Imported]:
    """Import the corpus ``name`` from ``source`` into ``out`` (default: ``source``): write
    ``labels.csv`` (and for RECOLA ``continuous_labels.csv``); return the manifest entry (a dict) and
    the ``Imported`` result (its ``rows`` are those written, its ``problems`` all that were met).
    The entry's root is the folder holding both ``source`` and ``out``. With no row to write,
    nothing is written."""
    if name not in CORPORA:
        raise CorpusError(f"unknown corpus {name!r}; one of {', '.join(sorted(CORPORA))}")
    if not os.path.isdir(source):
        raise CorpusError(f"no such folder: {source} (the {name} corpus folder as distributed; docs/corpora.md)")
    source = os.path.realpath(source)
    out = os.path.realpath(out or source)
    os.makedirs(out, exist_ok=True)
    ignore = frozenset(os.path.join(out, o) for o in OUTPUTS)
    imp = CORPORA[name].importer(source, ignore=ignore, **options)
    root = os.path.commonpath([source, out])  # the manifest wants the clips and the labels under one root
    rows, clips = imp.rows, _rel(source, root) + imp.clips
    if link_clips:
        rows, clips = _link_clips(rows, source, out), _rel(os.path.join(out, "clips"), root) + "*"
    source_id = {new.clip_id: old.clip_id for old, new in zip(imp.rows, rows)}
    rows = _check_ids(rows, root, clips, imp.problems)
    imp.rows = rows
    columns = [c for c in OPTIONAL_COLUMNS if any(getattr(r, c) is not None for r in rows)]
    if rows:  # a failed import leaves an earlier labels.csv as it was
        _write_csv(os.path.join(out, "labels.csv"), ["clip_id", "label", "speaker", *columns],
                   [[r.clip_id, r.label, r.speaker, *(getattr(r, c) or "" for c in columns)] for r in rows])
    facts = manifest_facts(name)
    order = [x for x in facts.get("label_set", []) if any(r.label == x for r in rows)]
    entry = {k: facts[k] for k in ("description", "citation") if k in facts}
    entry.update(root=root, clips=clips, labels=_rel(out, root) + "labels.csv")
    if imp.series is not None and rows:
        kept = {r.clip_id: imp.series[source_id[r.clip_id]] for r in rows}
        _write_csv(os.path.join(out, "continuous_labels.csv"), ["clip_id", "time", "valence", "arousal"],
                   [[cid, t, v, a] for cid, series in kept.items() for t, v, a in series])
        entry["continuous_labels"] = _rel(out, root) + "continuous_labels.csv"
    entry["label_set"] = order + sorted({r.label for r in rows} - set(order))
    entry.update({k: facts[k] for k in FACT_FIELDS[2:] if k in facts})
    return entry, imp


def entry_yaml(name: str, entry: dict) -> str:
    """The entry as a manifest document (``datasets:`` and the entry; paste the entry's lines under
    the ``datasets:`` of data_manifest.yaml)."""
    return (f"# avstore import {name}: paste the '{name}:' block under 'datasets:' in data_manifest.yaml\n"
            + yaml.safe_dump({"datasets": {name: entry}}, sort_keys=False, default_flow_style=None,
                             allow_unicode=True, width=120))


def summary(name: str, imp: Imported, out: str, show: int) -> list[str]:
    """The human summary: counts, then the problems by kind (``show`` of each), then the notes."""
    labels = Counter(r.label for r in imp.rows)
    lines = [f"avstore import {name}: {len(imp.rows)} clip(s) imported "
             f"({', '.join(f'{k} {n}' for k, n in sorted(labels.items())) or 'none'}), "
             f"{len({r.speaker for r in imp.rows})} speaker(s)"
             + (f"; wrote {os.path.join(out, 'labels.csv')}" if imp.rows else "; labels.csv not written")]
    kinds: dict[str, list[Problem]] = {}
    for p in imp.problems:
        kinds.setdefault(p.kind, []).append(p)
    if kinds:
        lines.append(f"{len(imp.problems)} problem(s):")
    for kind, problems in kinds.items():
        lines.append(f"  {kind} ({len(problems)}):")
        lines += [f"    {p}" for p in problems[:show]]
        if len(problems) > show:
            lines.append(f"    ... {len(problems) - show} more in {os.path.join(out, 'import_report.txt')}")
    lines += [f"note: {n}" for n in imp.notes]
    return lines


def add_parser(sub) -> None:
    """The ``import`` sub-command of ``avstore`` (``pipeline.cli.main``)."""
    p = sub.add_parser("import", help="write labels.csv for a corpus as distributed and print its manifest entry "
                                      "(docs/corpora.md)")
    p.add_argument("corpus", choices=sorted(CORPORA))
    p.add_argument("source_dir", help="the corpus folder as distributed")
    p.add_argument("--out", help="folder for labels.csv and the report (default: SOURCE_DIR)")
    p.add_argument("--four-class", action="store_true", help="iemocap: keep ang/hap/exc/neu/sad, exc merged into "
                                                             "happiness (Priyasad §4)")
    p.add_argument("--partitions", metavar="CSV", help="recola: recording,partition for recordings not named "
                                                       "train_N/dev_N/test_N")
    p.add_argument("--link-clips", action="store_true", help="link every clip as OUT/clips/<unique id> (for "
                                                             "corpora whose file names repeat)")
    p.add_argument("--show", type=int, default=20, help="problems printed per kind (all are in import_report.txt)")


def main(args) -> int:
    """Run ``avstore import``: 0 when at least one clip was imported (problems or not), 1 when
    nothing could be imported or the source cannot be read (one line on stderr)."""
    options = {"four_class": args.four_class, "partitions": args.partitions}
    try:
        given = [k for k, v in options.items() if v and k not in CORPORA[args.corpus].options]
        if given:
            raise CorpusError(f"--{given[0].replace('_', '-')} does not apply to {args.corpus}")
        if args.partitions:
            options["partitions"] = read_partitions(args.partitions)
        options = {k: v for k, v in options.items() if k in CORPORA[args.corpus].options}
        entry, imp = run_import(args.corpus, args.source_dir, args.out, link_clips=args.link_clips, **options)
    except CorpusError as err:
        print(f"avstore import {args.corpus}: {err}", file=sys.stderr)
        return 1
    out = os.path.realpath(args.out or args.source_dir)
    text = entry_yaml(args.corpus, entry)
    with open(os.path.join(out, "import_report.txt"), "w", encoding="utf-8") as f:  # every problem
        f.write("\n".join(summary(args.corpus, imp, out, show=len(imp.problems))) + "\n\n" + text)
    print("\n".join(summary(args.corpus, imp, out, show=args.show)), file=sys.stderr)
    if not imp.rows:
        print(f"avstore import {args.corpus}: nothing imported (see the problems above)", file=sys.stderr)
        return 1
    print(text, end="")
    return 0
