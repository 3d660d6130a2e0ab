"""Fault cases on a small build (issue 19): does the store hold when things go wrong?

    python scripts/faults.py [--work DIR] [--cases kill,disk_full,...] [--list] [--keep] [--seed 0]

Builds a corpus of six demo clips (dataset ``demo``, its own small manifest, three batches) once
into ``<work>/reference``, then runs each case on a copy of that store (or on a corpus of its
own) and observes what happens for real: the ``luigi --module pipeline BuildShards`` command,
``avstore`` (``python -m pipeline.cli``), the trainer (``python -m models.train``) and the
readers of ``features.store`` run as subprocesses; their exit status, output and the files they
leave are inspected. Cases:

    kill            SIGKILL at random moments, then resume: the store equals the uninterrupted build
    eight_channel   8-channel wav / flac / 7.1 AAC clips in a batch: each clip ok or an error with a reason
    decoder_crash   a native crash (SIGSEGV) while decoding one clip: that clip "error", the batch written
                    (simulated: a ``sitecustomize`` on the build's PYTHONPATH makes ``av.open`` of that
                    clip read address 0, in whichever process decodes it)
    disk_full       a store on a small tmpfs (root: ``mount -t tmpfs``): the shards do not fit; another
                    process fills the disk while a shard is written; full from the first write. Each:
                    exit 30 naming the path, nothing half-published, resume works once space is freed
    shard_flip      one-byte flips inside compressed chunks of a shard: reads fail naming shard and dataset,
                    the trainer exits 2 naming the file, a rebuild repairs it
    stage_flip      the same in a stage output: verify names it, a rebuild recomputes it (its shard intact;
                    its shard deleted) and never copies it into a shard (the flip hidden by its old mtime)
    shard_damage    truncated, deleted, replaced by another build's shard: trainer refuses, rebuild repairs
    external        a shard with HDF5 external storage (/etc/passwd), an external link, a virtual dataset
    verify          avstore verify: shards no record names, records missing
    remote          a poisoned folder remote: a 3 GiB claim, a file longer than its record, a non-JSON
                    record, a shard pointing outside itself, a record pointing outside the store
    credentials     --remote-url with KEY:SECRET: redacted in all output, never stored
    anchor_bomb     a 600-byte YAML anchor bomb: refused in well under a second, a short message
    manifest_inputs bad manifests / labels: one-line errors naming file and line; a BOM is accepted
    temp_sweep      a dead process's temporary files (a hard link beside a shard): swept at the next build

The reference build takes ~50 s of the ~4-5 minutes on two CPUs; ``--work DIR`` keeps it for the
next run (rebuilt when the code has changed the hash chain). Paths in the table are relative to
the work folder.

Prints a markdown table ``| case | expected | observed | held |`` and ``N of M cases held``;
exit status 0 only when every case held. Nothing is ever marked held without its observation: a
case that cannot be run here (no root for tmpfs, say) is reported as not held, with the reason.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import glob
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "scripts"))

DEMO = os.path.join(ROOT, "tests", "data", "demo")
CLIPS = ("s1_anger_01", "s1_happiness_01", "s2_sadness_01", "s2_happiness_01", "s3_anger_01", "s3_sadness_01")
BATCH = 2  # six clips, three batches (assigned by crc32 of the clip id)
SECRETS = ("AKIAFAULTSTEST0001", "Fault/Secret", "Secret+Key9")
CREDENTIAL_URL = "s3://AKIAFAULTSTEST0001:Fault/Secret+Key9@bucket/p"
MiB, GiB = 1 << 20, 1 << 30


# -- running things ---------------------------------------------------------------------------------
@dataclasses.dataclass
class Result:
    rc: int
    out: str
    err: str
    secs: float

    @property
    def text(self) -> str:
        return self.out + self.err

    @property
    def status(self) -> str:
        if self.rc is None:
            return "timed out"
        if self.rc < 0:
            try:
                return f"killed by signal {-self.rc} ({signal.Signals(-self.rc).name})"
            except ValueError:
                return f"killed by signal {-self.rc}"
        return f"exit {self.rc}"


def env(**extra) -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join(filter(None, [extra.pop("PYTHONPATH", None), ROOT, e.get("PYTHONPATH")]))
    e.update({k: v for k, v in extra.items() if v is not None})
    return e


def run(cmd, *, timeout=900, environ=None, limit_as=None) -> Result:
    def limits():
        if limit_as:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (limit_as, limit_as))

    t0 = time.perf_counter()
    try:
        p = subprocess.run([str(c) for c in cmd], cwd=ROOT, env=environ or env(), capture_output=True, text=True,
                           timeout=timeout, preexec_fn=limits if limit_as else None, errors="replace")
        return Result(p.returncode, p.stdout, p.stderr, time.perf_counter() - t0)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        return Result(None, out, err, time.perf_counter() - t0)


def luigi_cmd() -> list[str]:
    exe = shutil.which("luigi")
    return [exe] if exe else [sys.executable, "-m", "luigi"]


def build_cmd(store, *, manifest, dataset="demo", batch_size=BATCH, extra=()) -> list[str]:
    return [*luigi_cmd(), "--module", "pipeline", "BuildShards", "--dataset", dataset, "--manifest", manifest,
            "--store", store, "--batch-size", str(batch_size), "--local-scheduler", "--no-lock", "--workers", "1",
            *extra]


def avstore(store, *args, **kw) -> Result:
    return run([sys.executable, "-m", "pipeline.cli", "--store", store, *args], **kw)


def train(store, out) -> Result:
    return run([sys.executable, "-m", "models.train", "--model", "perception", "--dataset", "demo", "--epochs", "1",
                "--fold", "0", "--store", store, "--out", out], timeout=600)


def ran_tasks(text: str) -> list[str]:
    """Task families in the "ran successfully" part of luigi's execution summary."""
    part = text.split("ran successfully:", 1)
    if len(part) < 2:
        return []
    fams = []
    for line in part[1].splitlines()[1:]:
        m = re.match(r"\s+- \d+ (\w+)\(", line)
        if not m:
            break
        fams.append(m.group(1))
    return fams


WORK = []  # the work folder: shown as a relative path in the table


def unwork(text: str) -> str:
    for w in WORK:
        text = text.replace(w + os.sep, "").replace(w, ".")
    return text


def line_with(text: str, *needles, cut: int = 170, raw: bool = False) -> str:
    """The first line of ``text`` holding every needle (case-insensitive), cut at ``cut`` characters
    (paths under the work folder relative to it); ``raw``: the whole line as it is."""
    for line in text.splitlines():
        if all(n.lower() in line.lower() for n in needles):
            if raw:
                return line
            line = unwork(line.strip())
            return line if len(line) <= cut else line[:cut] + "..."
    return ""


def short(text: str, cut: int = 170) -> str:
    text = unwork(" ".join(str(text).split()))
    return text if len(text) <= cut else text[:cut] + "..."


def around(text: str, needle: str, before: int = 60) -> str:
    """``text`` from a little before ``needle``, shortened."""
    i = text.find(needle)
    return short(text if i < before else "..." + text[i - before:]) if i >= 0 else short(text)


def last_error(text: str) -> str:
    """The most telling line of a failed command's output (not luigi's INFO / DEBUG lines)."""
    lines = [l for l in text.splitlines() if not l.startswith(("INFO:", "DEBUG:"))]
    for needle in ("models.train: error:", "no space left on device", "Error:", "error:", "Errno"):
        hit = [l for l in lines if needle.lower() in l.lower()]
        if hit:
            return short(hit[-1])
    lines = [l for l in lines if l.strip()]
    return short(lines[-1]) if lines else "(no output)"


# -- the store --------------------------------------------------------------------------------------
def shard_files(store, dataset="demo") -> list[str]:
    """Shards on disk, relative to the store."""
    return sorted(os.path.relpath(p, store) for p in glob.glob(os.path.join(store, dataset, "shards", "*", "shard-*.h5")))


def temps(store) -> list[str]:
    import kill_resume

    return [f for f in kill_resume.files(store) if kill_resume.is_temp(f)] if os.path.isdir(store) else []


def same_shards(store, ref, dataset="demo") -> list[str]:
    """Differences between the shards of ``store`` and of ``ref`` (file names; HDF5 data and
    attributes but ``created`` / ``builder``); [] when they hold the same data."""
    from pipeline.catalog import same_data

    a, b = shard_files(ref, dataset), shard_files(store, dataset)
    diffs = [f"missing {r}" for r in sorted(set(a) - set(b))] + [f"extra {r}" for r in sorted(set(b) - set(a))]
    for rel in sorted(set(a) & set(b)):
        try:
            diffs += [f"{rel}: {d}" for d in same_data(os.path.join(ref, rel), os.path.join(store, rel))]
        except Exception as err:  # a file that does not read is a difference
            diffs.append(f"{rel}: {type(err).__name__}: {short(err, 120)}")
    return diffs


def verify(store, dataset="demo") -> list[tuple[str, str]]:
    from pipeline.catalog import verify as v

    try:
        return v(store, dataset)
    except Exception as err:
        return [("verify", f"{type(err).__name__}: {short(err, 120)}")]


def flip(path, at: int) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)[0]
        f.seek(at)
        f.write(bytes([byte ^ 0xFF]))


def compressed_chunks(path) -> list[tuple[str, int, int]]:
    """[(dataset, byte offset, stored size)] of every chunk of every dataset with a compression
    filter (Blosc, gzip, lzf; not counting shuffle and fletcher32) in ``path``."""
    from features.store import open_file

    out = []
    with open_file(path) as f:
        def visit(name, obj):
            if not hasattr(obj, "chunks") or obj.chunks is None or not obj.size:
                return
            plist = obj.id.get_create_plist()
            ids = {plist.get_filter(i)[0] for i in range(plist.get_nfilters())}
            if not ids - {2, 3}:  # 2 shuffle, 3 fletcher32: nothing compressed
                return
            for i in range(obj.id.get_num_chunks()):
                info = obj.id.get_chunk_info(i)
                out.append((name, info.byte_offset, info.size))
        f.visititems(visit)
    return out


def flip_in_chunk(path, rng, dataset=None) -> tuple[str, int]:
    chunks = [c for c in compressed_chunks(path) if dataset is None or c[0] == dataset]
    name, offset, size = rng.choice(chunks)
    at = offset + rng.randrange(size)
    flip(path, at)
    return name, at


def shard_rel_name(rel: str) -> str:
    """``<digest>/shard-NNNN.h5``: how a message names a shard file."""
    return "/".join(rel.replace(os.sep, "/").split("/")[-2:])


@contextlib.contextmanager
def tmpfs(path, size: int):
    """A tmpfs of ``size`` bytes mounted at ``path`` (root only); unmounted afterwards."""
    os.makedirs(path, exist_ok=True)
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path], capture_output=True, text=True)
    if p.returncode:
        raise NotTestable(f"mount -t tmpfs failed ({short(p.stderr or p.stdout, 80)}): needs root")
    try:
        yield path
    finally:
        if subprocess.run(["umount", path], capture_output=True).returncode:
            subprocess.run(["umount", "-l", path], capture_output=True)


def remount(path, size: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", path], check=True, capture_output=True)


def tmpfs_bytes(root, skip=lambda rel: False) -> int:
    total = 0
    for d, _, fs in os.walk(root):
        for f in fs:
            p = os.path.join(d, f)
            if not skip(os.path.relpath(p, root)):
                total += -(-os.path.getsize(p) // 4096) * 4096
    return total


class NotTestable(Exception):
    """The case cannot be run here (reported as not held, with the reason)."""


# -- corpora ----------------------------------------------------------------------------------------
def labels_of(clip_ids) -> list[dict]:
    import csv

    with open(os.path.join(DEMO, "labels.csv"), encoding="utf-8") as f:
        rows = {r["clip_id"]: r for r in csv.DictReader(f)}
    return [rows[c] for c in clip_ids]


def demo_file(clip_id: str) -> str:
    return next(os.path.join(DEMO, "clips", f) for f in sorted(os.listdir(os.path.join(DEMO, "clips")))
                if os.path.splitext(f)[0] == clip_id)


def make_corpus(root, dataset: str, *, clips=(), files=None, rows=()) -> str:
    """A corpus under ``root``: demo ``clips`` copied, ``files`` ({name: source path or a function
    writing the file}), label ``rows`` for them; returns the manifest path."""
    import csv

    os.makedirs(os.path.join(root, "clips"), exist_ok=True)
    for c in clips:
        src = demo_file(c)
        shutil.copy(src, os.path.join(root, "clips", os.path.basename(src)))
    for name, make in (files or {}).items():
        dst = os.path.join(root, "clips", name)
        make(dst) if callable(make) else shutil.copy(make, dst)
    with open(os.path.join(root, "labels.csv"), "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["clip_id", "label", "speaker", "transcript"])
        w.writeheader()
        for r in [*labels_of(clips), *rows]:
            w.writerow({"transcript": "", **r})
    manifest = os.path.join(root, "manifest.yaml")
    with open(manifest, "w", encoding="utf-8") as f:
        f.write(f"datasets:\n  {dataset}:\n    root: {root}\n    clips: clips/*\n    labels: labels.csv\n"
                f"    label_set: [anger, happiness, sadness]\n    protocol: loso\n    sr: 48000\n    fps: 30\n")
    return manifest


def ffmpeg_audio(src, dst, *args) -> None:
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", src, "-vn", *args, dst], check=True,
                   capture_output=True)


SEVEN_ONE = "pan=7.1|FL=c0|FR=c1|FC=c0|LFE=c1|BL=c0|BR=c1|SL=c0|SR=c1"


# -- the context of a run ---------------------------------------------------------------------------
@dataclasses.dataclass
class Row:
    case: str
    expected: str
    observed: str
    held: bool


class Ctx:
    def __init__(self, args):
        self.args = args
        self.work = os.path.abspath(args.work or tempfile.mkdtemp(prefix="faults-"))
        os.makedirs(self.work, exist_ok=True)
        WORK[:] = [self.work]
        self.rng = random.Random(args.seed)
        self.ref = os.path.join(self.work, "reference")
        self.manifest = ""
        self.build_s = self.noop_s = 0.0
        self.victim = ""  # the shard with the most data (relative to the store)

    def case_dir(self, name) -> str:
        d = os.path.join(self.work, "cases", name)
        if os.path.exists(d):
            shutil.rmtree(d)
        os.makedirs(d)
        return d

    def copy(self, case, name="store") -> str:
        dst = os.path.join(self.work, "cases", case, name)
        shutil.copytree(self.ref, dst, symlinks=True)
        return dst

    def build(self, store, **kw) -> Result:
        kw.setdefault("manifest", self.manifest)
        environ = kw.pop("environ", None)
        timeout = kw.pop("timeout", 900)
        return run(build_cmd(store, **kw), environ=environ, timeout=timeout)

    def setup(self) -> None:
        corpus = os.path.join(self.work, "corpus")
        if not os.path.isfile(os.path.join(corpus, "manifest.yaml")):
            shutil.rmtree(corpus, ignore_errors=True)
            make_corpus(corpus, "demo", clips=CLIPS)
        self.manifest = os.path.join(corpus, "manifest.yaml")
        if os.path.isdir(self.ref):  # --work reused: keep the reference when it is this code's build
            r = self.build(self.ref)
            if r.rc != 0 or ran_tasks(r.text):
                shutil.rmtree(self.ref)
        if not os.path.isdir(self.ref):
            r = self.build(self.ref)
            if r.rc != 0:
                raise SystemExit(f"faults.py: the reference build failed ({r.status}): {last_error(r.text)}")
            self.build_s = r.secs
        r = self.build(self.ref)
        self.noop_s = r.secs
        saved = os.path.join(self.work, "build_s.json")  # the reference build's time, for the kill delays
        if not self.build_s:
            try:
                with open(saved) as f:
                    self.build_s = float(json.load(f))
            except (OSError, ValueError):
                self.build_s = 40.0
        with open(saved, "w") as f:
            json.dump(self.build_s, f)
        shards = shard_files(self.ref)
        self.victim = max(shards, key=lambda rel: os.path.getsize(os.path.join(self.ref, rel)))


# -- the cases --------------------------------------------------------------------------------------
def case_kill(ctx: Ctx) -> list[Row]:
    import kill_resume

    d = ctx.case_dir("kill")
    got = os.path.join(d, "killed")
    n = ctx.args.kills
    kills, unreadable = [], []
    for _ in range(n):
        p = subprocess.Popen(build_cmd(got, manifest=ctx.manifest), cwd=ROOT, env=env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
        delay = ctx.rng.uniform(0.5, ctx.noop_s + max(ctx.build_s - ctx.noop_s, 1.0) / 2)
        try:
            p.wait(timeout=delay)
            kills.append(f"{delay:.1f} s (finished first)")
            break
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            kills.append(f"{delay:.1f} s")
        if os.path.isdir(got):
            unreadable += kill_resume.readable(got)
    r = ctx.build(got)
    diffs = kill_resume.compare(ctx.ref, got) + [f"unreadable after a kill: {u}" for u in unreadable]
    left = temps(got)
    problems = verify(got)
    killed = sum("finished" not in k for k in kills)
    held = killed >= 1 and r.rc == 0 and not diffs and not left and not problems
    obs = (f"{killed} SIGKILL(s) at {', '.join(kills)}; resume {r.status}; {len(diffs)} difference(s) from the "
           f"uninterrupted build; {len(unreadable)} unreadable output(s) after a kill; {len(left)} temporary file(s) "
           f"left; verify: {len(problems)} problem(s)")
    if diffs or problems:
        obs += f" (first: {short(diffs[0] if diffs else problems[0], 100)})"
    if r.rc != 0:
        obs += f": {last_error(r.text)}"
    return [Row("SIGKILL at random moments, then resume", "the resumed store equals an uninterrupted build; every "
                "output opens whole after each kill; no temporary file left; verify clean", obs, held)]


def clip_table(shard) -> dict:
    from features.store import read_group

    t = read_group(shard, "clips")
    return {cid: {k: t[k][i] for k in t} for i, cid in enumerate(t["id"])}


def case_eight_channel(ctx: Ctx) -> list[Row]:
    d = ctx.case_dir("eight_channel")
    src = demo_file("s2_happiness_01")
    files = {"ch8_wav.wav": lambda p: ffmpeg_audio(src, p, "-af", SEVEN_ONE, "-c:a", "pcm_s16le"),
             "ch8_flac.flac": lambda p: ffmpeg_audio(src, p, "-af", SEVEN_ONE, "-c:a", "flac"),
             "ch8_aac.m4a": lambda p: ffmpeg_audio(src, p, "-af", SEVEN_ONE, "-c:a", "aac")}
    rows = [{"clip_id": os.path.splitext(n)[0], "label": "happiness", "speaker": "s2"} for n in files]
    manifest = make_corpus(os.path.join(d, "corpus"), "eight", clips=("s1_anger_01",), files=files, rows=rows)
    store = os.path.join(d, "store")
    r = ctx.build(store, manifest=manifest, dataset="eight", batch_size=8, extra=("--video", "false"))
    shards = [os.path.join(store, s) for s in shard_files(store, "eight")]
    try:
        table = clip_table(shards[0]) if shards else {}
    except Exception as err:
        table, r.err = {}, r.err + f"\nshard unreadable: {err}"
    good = table.get("s1_anger_01", {}).get("status")
    out = []
    for name, what in (("ch8_wav", "8-channel wav (7.1)"), ("ch8_flac", "8-channel flac (7.1)"),
                       ("ch8_aac", "7.1 AAC (m4a)")):
        row = table.get(name)
        if row is None:
            obs = f"build {r.status}; {'no shard written' if not shards else 'clip not in the shard'}" + (
                "" if r.rc is not None and r.rc < 0 else f": {last_error(r.text)}")
            held = False
        else:
            status, reason, ch = row["status"], row["reason"], int(row.get("n_channels", 0))
            ok_clip = status == "ok" and ch == 8
            err_clip = status != "ok" and bool(reason)
            obs = (f"build {r.status}; clip {status}" + (f", {ch} channels" if status == "ok" else f": {short(reason, 90)}")
                   + f"; the batch's good clip {good}; shard written")
            held = r.rc == 0 and (ok_clip or err_clip) and good == "ok"
        out.append(Row(f"{what} clip in a batch", "build exit 0; the clip ok (8 channels decoded) or error with a "
                       "reason; the batch's shard written, its good clip ok", obs, held))
    return out


SITECUSTOMIZE = '''\
"""faults.py decoder_crash: a native crash while decoding a clip whose path holds $FAULTS_CRASH_ON."""
import os

_marker = os.environ.get("FAULTS_CRASH_ON")
if _marker:
    import av

    _open = av.open

    def _crashing_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and _marker in os.fspath(file):
            with open(os.environ["FAULTS_CRASH_LOG"], "a") as f:
                f.write(f"{os.getpid()} {os.fspath(file)}\\n")
            import ctypes

            ctypes.string_at(0)  # reads address 0 in C: SIGSEGV, as a crash inside FFmpeg or PyAV is
        return _open(file, *args, **kwargs)

    av.open = _crashing_open
'''


def case_decoder_crash(ctx: Ctx) -> list[Row]:
    """The crash is simulated: a ``sitecustomize`` wraps ``av.open`` in every Python process of the
    build so that opening ``crash_me.wav`` reads address 0 (a real SIGSEGV in native code, in
    whichever process decodes it); the other clips decode normally."""
    d = ctx.case_dir("decoder_crash")
    hook = os.path.join(d, "hook")
    os.makedirs(hook)
    with open(os.path.join(hook, "sitecustomize.py"), "w") as f:
        f.write(SITECUSTOMIZE)
    log = os.path.join(d, "crashes.log")
    files = {"crash_me.wav": lambda p: ffmpeg_audio(demo_file("s2_sadness_01"), p, "-c:a", "pcm_s16le")}
    manifest = make_corpus(os.path.join(d, "corpus"), "crash", clips=("s1_anger_01", "s3_sadness_01"), files=files,
                           rows=[{"clip_id": "crash_me", "label": "sadness", "speaker": "s2"}])
    store = os.path.join(d, "store")
    r = ctx.build(store, manifest=manifest, dataset="crash", batch_size=8, extra=("--video", "false"),
                  environ=env(PYTHONPATH=hook, FAULTS_CRASH_ON="crash_me", FAULTS_CRASH_LOG=log))
    fired = open(log).read().split() if os.path.exists(log) else []
    shards = [os.path.join(store, s) for s in shard_files(store, "crash")]
    try:
        table = clip_table(shards[0]) if shards else {}
    except Exception as err:
        table, r.err = {}, r.err + f"\nshard unreadable: {err}"
    expected = ("build exit 0; that clip status error, reason \"decoder crashed: signal 11\"; the clips decoded after "
                "it ok; the batch's shard written")
    if not fired:
        return [Row("decoder crash (SIGSEGV) on one clip", expected, f"not testable: the crash hook never ran "
                    f"(the build does not open clips with av.open any more?); build {r.status}", False)]
    crash = table.get("crash_me", {})
    others = {c: table.get(c, {}).get("status") for c in ("s1_anger_01", "s3_sadness_01")}
    if not table:
        obs = f"build {r.status}, no shard written" + ("" if r.rc is not None and r.rc < 0 else f": {last_error(r.text)}")
        held = False
    else:
        obs = (f"build {r.status}; crash_me: {crash.get('status')} \"{short(crash.get('reason', ''), 70)}\"; "
               + ", ".join(f"{c} {s}" for c, s in others.items()) + "; shard written")
        held = (r.rc == 0 and crash.get("status") == "error" and "decoder crashed" in crash.get("reason", "")
                and "signal 11" in crash.get("reason", "") and all(s == "ok" for s in others.values()))
    return [Row("decoder crash (SIGSEGV) on one clip (simulated: av.open of that clip reads address 0)", expected,
                obs, held)]


def case_disk_full(ctx: Ctx) -> list[Row]:
    import kill_resume

    d = ctx.case_dir("disk_full")
    out = []
    # (a) everything but the shards is there; the shards do not fit
    skip = lambda rel: re.search(r"(^|/)shards/[^/]+/shard-\d+\.h5$|(^|/)builds/[^/]+\.json$", rel.replace(os.sep, "/"))
    need = tmpfs_bytes(ctx.ref, skip)
    shards_size = sum(os.path.getsize(os.path.join(ctx.ref, s)) for s in shard_files(ctx.ref))
    mnt = os.path.join(d, "mnt_a")
    exp_fail = ("exit 30; the message names the path in the store and says \"no space left on device\"; nothing "
                "half-published, no temporary file left")
    try:
        with tmpfs(mnt, need + 2 * MiB):
            store = os.path.join(mnt, "store")
            shutil.copytree(ctx.ref, store, ignore=lambda folder, names: [
                n for n in names if skip(os.path.relpath(os.path.join(folder, n), ctx.ref))])
            r = ctx.build(store)
            msg = line_with(r.text, "no space left on device", store, raw=True)
            published = shard_files(store)  # shards that fit (an empty batch's) are whole or absent
            partial = [x for x in same_shards(store, ctx.ref) if not x.startswith("missing")]
            left, bad = temps(store), kill_resume.readable(store)
            held = r.rc == 30 and bool(msg) and not partial and not left and not bad
            obs = (f"{r.status}; {short(msg) or 'no message names the store and says no space left on device: ' + last_error(r.text)}; "
                   f"{len(published)} of {len(shard_files(ctx.ref))} shards published, {len(partial)} of them not "
                   f"whole; {len(left)} temporary file(s), {len(bad)} unreadable output(s)")
            out.append(Row("disk full while writing the shards (tmpfs with 2 MiB free)", exp_fail, obs, held))
            remount(mnt, need + 2 * shards_size + 64 * MiB)
            r = ctx.build(store)
            diffs, problems = same_shards(store, ctx.ref), verify(store)
            obs = (f"{r.status}; {len(diffs)} difference(s) from the uninterrupted build; verify: {len(problems)} "
                   f"problem(s)" + (f": {short(diffs[0] if diffs else problems[0], 100)}" if diffs or problems else "")
                   + ("" if r.rc == 0 else f"; {last_error(r.text)}"))
            out.append(Row("... then space freed, build again", "exit 0; the shards equal the uninterrupted build's; "
                           "verify clean", obs, r.rc == 0 and not diffs and not problems))
    except NotTestable as err:
        out.append(Row("disk full while writing the shards", exp_fail, f"not testable: {err}", False))
    # (b) room for the shards when the build starts; another process fills the disk while a shard is written
    mnt = os.path.join(d, "mnt_c")
    exp_mid = exp_fail.replace("exit 30", "no crash: exit 30")
    try:
        with tmpfs(mnt, need + 2 * shards_size + 64 * MiB):
            store = os.path.join(mnt, "store")
            shutil.copytree(ctx.ref, store, ignore=lambda folder, names: [
                n for n in names if skip(os.path.relpath(os.path.join(folder, n), ctx.ref))])
            filler = Filler(os.path.join(store, "demo", "shards"), os.path.join(mnt, "filler"),
                            os.path.basename(ctx.victim))
            with filler:
                r = ctx.build(store)
            victim = os.path.join(store, ctx.victim)
            msg = (line_with(r.text, "no space left on device for", victim, raw=True)
                   or line_with(r.text, "no space left on device", victim, raw=True))
            partial = [x for x in same_shards(store, ctx.ref) if not x.startswith("missing")]
            left, bad = temps(store), kill_resume.readable(store)
            finished = os.path.exists(os.path.join(store, ctx.victim))  # written before the disk filled
            held = bool(filler.filled) and not finished and r.rc == 30 and bool(msg) and not partial and not left \
                and not bad
            obs = (("the disk filled while " + filler.filled if filler.filled else "the disk never filled (no shard "
                    "temporary file seen)")
                   + ("; but that shard was finished first: the case was not exercised" if finished else "")
                   + f"; {r.status}; {short(msg) or 'no message names it with no space left on device: ' + last_error(r.text)}"
                   f"; {len(partial)} shard(s) not whole; {len(left)} temporary file(s), {len(bad)} unreadable output(s)")
            out.append(Row("disk filled by another process while a shard is written", exp_mid, obs, held))
            os.remove(os.path.join(mnt, "filler"))
            r = ctx.build(store)
            diffs, problems = same_shards(store, ctx.ref), verify(store)
            obs = (f"{r.status}; {len(diffs)} difference(s) from the uninterrupted build; verify: {len(problems)} "
                   f"problem(s)" + (f": {short(diffs[0] if diffs else problems[0], 100)}" if diffs or problems else "")
                   + ("" if r.rc == 0 else f"; {last_error(r.text)}"))
            out.append(Row("... then the filler removed, build again", "exit 0; the shards equal the uninterrupted "
                           "build's; verify clean", obs, r.rc == 0 and not diffs and not problems))
    except NotTestable as err:
        out.append(Row("disk filled by another process while a shard is written", exp_mid, f"not testable: {err}",
                       False))
    # (c) the disk is full from the first write: an empty store on a 64 KiB tmpfs (one clip, audio only)
    manifest = make_corpus(os.path.join(d, "corpus_one"), "one", clips=("s2_sadness_01",))
    mnt = os.path.join(d, "mnt_b")
    try:
        with tmpfs(mnt, 64 * 1024):
            store = os.path.join(mnt, "store")
            r = ctx.build(store, manifest=manifest, dataset="one", batch_size=8, extra=("--video", "false"))
            msg = line_with(r.text, "no space left on device", store, raw=True)
            left, bad = temps(store), kill_resume.readable(store)
            held = r.rc == 30 and bool(msg) and not left and not bad
            obs = (f"{r.status}; {short(msg) or 'no message names the store and says no space left on device: ' + last_error(r.text)}; "
                   f"{len(left)} temporary file(s), {len(bad)} unreadable output(s)")
            out.append(Row("disk full from the first write (empty store on a 64 KiB tmpfs)", exp_fail, obs, held))
            remount(mnt, 256 * MiB)
            r = ctx.build(store, manifest=manifest, dataset="one", batch_size=8, extra=("--video", "false"))
            problems = verify(store, "one")
            ok = "1 clips ok" in r.text
            obs = (f"{r.status}; {'summary: 1 clips ok' if ok else 'no summary with 1 clip ok'}; verify: "
                   f"{len(problems)} problem(s)" + ("" if r.rc == 0 else f"; {last_error(r.text)}"))
            out.append(Row("... then space freed, build again", "exit 0, the clip built, verify clean", obs,
                           r.rc == 0 and ok and not problems))
    except NotTestable as err:
        out.append(Row("disk full from the first write", exp_fail, f"not testable: {err}", False))
    return out


class Filler:
    """``with Filler(folder, path, name):`` a thread that, as soon as the temporary file of shard
    ``name`` under ``folder`` holds its first bytes (the build has begun writing it), writes ``path``
    until the disk is full.
    ``filled`` then says which file was being written."""

    def __init__(self, folder, path, name="shard-*"):
        import threading

        self.folder, self.path, self.filled, self.name, self.pattern = folder, path, "", "", name
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _watch(self):
        while not self._stop.is_set():
            for f in glob.glob(os.path.join(self.folder, "*", f".{self.pattern}.tmp-*")):
                try:
                    if os.path.getsize(f) > 0:  # its writing has begun
                        self._fill(os.path.basename(f))
                        return
                except FileNotFoundError:
                    pass
            time.sleep(0.002)

    def _fill(self, writing):
        block = b"\0" * 65536
        try:
            with open(self.path, "wb") as f:
                size = shutil.disk_usage(self.folder).free
                while size > 65536:  # reserve (nearly) all the free space at once, then the rest
                    try:
                        os.posix_fallocate(f.fileno(), 0, size)
                        break
                    except OSError:
                        size = size * 15 // 16
                while True:
                    f.write(block)
                    f.flush()
        except OSError:
            self.name = writing[1:].split(".tmp-")[0]
            self.filled = f"{self.name} was being written"


READ_FLIPS = '''
import json, sys
from features import store
path, plan = sys.argv[1], json.loads(sys.argv[2])

def flip(at):
    with open(path, "r+b") as f:
        f.seek(at); b = f.read(1)[0]; f.seek(at); f.write(bytes([b ^ 0xFF]))

for name, at in plan:
    flip(at)
    try:
        group, key = name.rsplit("/", 1)
        store.read_group(path, group, [key])
        res = {"raised": False}
    except Exception as err:
        res = {"raised": True, "type": type(err).__name__, "msg": str(err)[:600]}
    flip(at)
    print(json.dumps({"name": name, **res}), flush=True)
'''


def trainer_row(case, r: Result, rel) -> Row:
    name = shard_rel_name(rel)
    err_line = line_with(r.err, "models.train: error:", cut=150)
    held = r.rc == 2 and bool(err_line) and name in r.err and "Traceback" not in r.err
    obs = f"{r.status}; " + (err_line or last_error(r.text))
    if r.rc == 2 and name not in r.err:
        obs += f" (does not name {name})"
    if "Traceback" in r.err:
        obs += " (with a traceback)"
    return Row(case, f"the trainer exits 2 with `models.train: error:` naming {name}, no traceback", obs, held)


def rebuild_row(ctx, case, store, note="") -> Row:
    r = ctx.build(store)
    diffs, problems = same_shards(store, ctx.ref), verify(store)
    ran = ran_tasks(r.text)
    obs = (f"{r.status}; ran {', '.join(sorted(set(ran))) or 'nothing'}; {len(diffs)} difference(s) from the "
           f"uninterrupted build; verify: {len(problems)} problem(s)")
    if diffs or problems:
        obs += f" (first: {short(diffs[0] if diffs else ' '.join(problems[0]), 100)})"
    if r.rc != 0:
        obs += f"; {last_error(r.text)}"
    return Row(case, f"BuildShards notices it and rebuilds{note}: exit 0, every shard equals the uninterrupted "
                     f"build's, verify clean", obs, r.rc == 0 and not diffs and not problems)


def case_shard_flip(ctx: Ctx) -> list[Row]:
    d = ctx.case_dir("shard_flip")
    store = ctx.copy("shard_flip")
    victim = os.path.join(store, ctx.victim)
    out = []
    # many flips, each read back and then undone
    chunks = compressed_chunks(victim)
    by_ds = {}
    for c in chunks:
        by_ds.setdefault(c[0], []).append(c)
    plan = []
    for _ in range(ctx.args.flips):
        name, offset, size = ctx.rng.choice(by_ds[ctx.rng.choice(sorted(by_ds))])
        plan.append((name, offset + ctx.rng.randrange(size)))
    r = run([sys.executable, "-c", READ_FLIPS, victim, json.dumps(plan)], timeout=300)
    res = [json.loads(l) for l in r.out.splitlines() if l.startswith("{")]
    named = [x for x in res if x["raised"] and victim in x["msg"] and x["name"] in x["msg"]]
    silent = [x for x in res if not x["raised"]]
    other = [x for x in res if x["raised"] and x not in named]
    obs = (f"{len(named)} of {len(plan)} reads failed naming the shard and the dataset; {len(silent)} read back "
           f"changed data without an error; {len(other)} failed without naming both")
    if len(res) < len(plan):
        obs += f"; the reader died after {len(res)} flips ({r.status}): {last_error(r.err)}"
    example = named[0] if named else (other[0] if other else None)
    if example:
        obs += f"; e.g. {example['type']}: {short(example['msg'].replace(victim, '<shard>'), 110)}"
    out.append(Row(f"{len(plan)} one-byte flips in compressed chunks of a shard ({len(by_ds)} datasets), each read",
                   "every read fails with an error naming the shard and the dataset", obs,
                   len(named) == len(plan)))
    # one flip in the log-mel frames: the trainer, then a rebuild
    name, at = flip_in_chunk(victim, ctx.rng, "frames/logmel")
    out.append(trainer_row("shard byte flip (frames/logmel): trainer", train(store, os.path.join(d, "runs")),
                           ctx.victim))
    out.append(rebuild_row(ctx, "shard byte flip: rebuild", store))
    return out


def stage_output_of(store, shard_rel, stage) -> str:
    from features.store import read_attrs

    attrs = read_attrs(os.path.join(store, shard_rel))
    batch = int(re.search(r"shard-(\d+)\.h5$", shard_rel).group(1))
    return os.path.join(store, "demo", stage, attrs["stages"][stage], f"batch-{batch:04d}.h5")


def case_stage_flip(ctx: Ctx) -> list[Row]:
    ctx.case_dir("stage_flip")
    out = []
    target = stage_output_of(ctx.ref, ctx.victim, "logmel")
    rel = os.path.relpath(target, ctx.ref)
    # (a) a byte flipped (the mtime changes, as any write does)
    store = ctx.copy("stage_flip", "a")
    flip_in_chunk(os.path.join(store, rel), ctx.rng)
    r = avstore(store, "verify", "--dataset", "demo")
    hit = line_with(r.out, rel)
    out.append(Row("stage output byte flip (logmel batch): avstore verify",
                   "verify exits 1 naming the stage output, never \"0 problem(s)\"",
                   f"{r.status}; {hit or 'the file is not named: ' + last_error(r.text)}",
                   r.rc == 1 and bool(hit) and "0 problem(s)" not in r.out))
    from pipeline.catalog import same_data

    def recomputed(row, store):
        try:
            diff = same_data(os.path.join(ctx.ref, rel), os.path.join(store, rel))
        except Exception as err:
            diff = [f"{type(err).__name__}: {short(err, 80)}"]
        row.observed += f"; the logmel output {'equals' if not diff else 'still differs from'} the reference's"
        row.held = row.held and not diff
        return row

    out.append(recomputed(rebuild_row(ctx, "stage output byte flip, its shard intact: rebuild", store,
                                      " (LogMel computed again)"), store))
    # (c) the same with its shard deleted: computed again before the shard is
    store = ctx.copy("stage_flip", "c")
    flip_in_chunk(os.path.join(store, rel), ctx.rng)
    os.remove(os.path.join(store, ctx.victim))
    out.append(recomputed(rebuild_row(ctx, "stage output byte flip, its shard deleted: rebuild", store,
                                      " (LogMel computed again, then the shard)"), store))
    # (b) the same with the mtime put back and its shard deleted: the shard must never copy it
    store = ctx.copy("stage_flip", "b")
    path = os.path.join(store, rel)
    st = os.stat(path)
    flip_in_chunk(path, ctx.rng)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.remove(os.path.join(store, ctx.victim))
    r1 = ctx.build(store)
    after1 = same_shards(store, ctx.ref)
    corrupt_copied = [x for x in after1 if x.startswith(ctx.victim) and not x.startswith("missing")]
    steps = [f"1st build {r1.status}" + ("" if r1.rc == 0 else f" ({short(line_with(r1.text, rel) or last_error(r1.text), 110)})")]
    if r1.rc != 0:
        r2 = ctx.build(store)
        steps.append(f"2nd build {r2.status}")
    else:
        r2 = r1
    diffs, problems = same_shards(store, ctx.ref), verify(store)
    named = r1.rc == 0 or bool(line_with(r1.text, rel))
    held = not corrupt_copied and named and r2.rc == 0 and not diffs and not problems
    obs = "; ".join(steps) + (f"; a shard with the damaged data was published: {short(corrupt_copied[0], 80)}"
                              if corrupt_copied else "; no damaged shard published") + \
        f"; finally {len(diffs)} difference(s), verify: {len(problems)} problem(s)"
    out.append(Row("stage output byte flip with its mtime put back, its shard deleted",
                   "the shard is never built from it: the build recomputes it, or fails naming it and the next "
                   "build does; finally every shard equals the uninterrupted build's", obs, held))
    return out


def case_shard_damage(ctx: Ctx) -> list[Row]:
    d = ctx.case_dir("shard_damage")
    out = []
    # truncated
    store = ctx.copy("shard_damage", "truncated")
    victim = os.path.join(store, ctx.victim)
    os.truncate(victim, os.path.getsize(victim) // 2)
    out.append(trainer_row("truncated shard: trainer", train(store, os.path.join(d, "runs_t")), ctx.victim))
    out.append(rebuild_row(ctx, "truncated shard: rebuild", store))
    # deleted
    store = ctx.copy("shard_damage", "deleted")
    os.remove(os.path.join(store, ctx.victim))
    out.append(rebuild_row(ctx, "deleted shard: rebuild", store))
    # replaced by the same batch's shard of another build (another [Shard] configuration)
    other = ctx.copy("shard_damage", "other_build")
    r = ctx.build(other, extra=("--Shard-embeddings", '["descriptor"]'))
    foreign = [s for s in shard_files(other) if os.path.basename(s) == os.path.basename(ctx.victim)
               and s != ctx.victim]
    exp = "the trainer exits 2 naming the file"
    if r.rc != 0 or not foreign:
        out.append(Row("shard replaced by another build's: trainer", exp,
                       f"not testable: the other build failed ({r.status}: {last_error(r.text)})", False))
        return out
    store = ctx.copy("shard_damage", "replaced")
    shutil.copy(os.path.join(other, foreign[0]), os.path.join(store, ctx.victim))
    shutil.rmtree(other)
    out.append(trainer_row("shard replaced by another build's (other [Shard] embeddings): trainer",
                           train(store, os.path.join(d, "runs_r")), ctx.victim))
    out.append(rebuild_row(ctx, "shard replaced by another build's: rebuild", store))
    return out


READ_SHARD = '''
import json, sys
from features.store import ShardReader
out = []
for path in sys.argv[1:]:
    try:
        clips = ShardReader(path).clips
        leak = clips.get("leak")
        out.append({"raised": False, "leak": bytes(bytearray(leak.tolist()))[:40].decode("latin-1") if leak is not None else None})
    except Exception as err:
        out.append({"raised": True, "type": type(err).__name__, "msg": str(err)[:600]})
print(json.dumps(out))
'''


def poison(path, how) -> None:
    import h5py

    with h5py.File(path, "a") as f:
        if how == "external storage":
            f.create_dataset("clips/leak", shape=(64,), dtype="u1", external=[("/etc/passwd", 0, 64)])
        elif how == "external link":
            f["clips/leak"] = h5py.ExternalLink("/etc/passwd.h5", "/")
        else:  # virtual dataset
            layout = h5py.VirtualLayout(shape=(16,), dtype="i4")
            layout[:] = h5py.VirtualSource("/tmp/elsewhere.h5", "x", shape=(16,))
            f.create_virtual_dataset("clips/leak", layout)


def case_external(ctx: Ctx) -> list[Row]:
    d = ctx.case_dir("external")
    store = ctx.copy("external")
    victim = os.path.join(store, ctx.victim)
    poison(victim, "external storage")
    small = min(shard_files(ctx.ref), key=lambda rel: os.path.getsize(os.path.join(ctx.ref, rel)))
    variants = {}
    for how in ("external link", "virtual dataset"):
        p = os.path.join(d, f"{how.replace(' ', '_')}.h5")
        shutil.copy(os.path.join(ctx.ref, small), p)
        poison(p, how)
        variants[how] = p
    r = run([sys.executable, "-c", READ_SHARD, victim, *variants.values()], timeout=120)
    try:
        res = json.loads(r.out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        res = []
    out = []
    labels = ["external storage -> /etc/passwd (a shard of the store)", *variants]
    paths = [victim, *variants.values()]
    for what, path, x in zip(labels, paths, res + [None] * (3 - len(res))):
        if x is None:
            obs, held = f"the reader died ({r.status}): {last_error(r.err)}", False
        elif not x["raised"]:
            obs, held = f"read without an error" + (f"; clips/leak = {x['leak']!r}" if x.get("leak") else ""), False
        else:
            obs = f"{x['type']}: {short(x['msg'].replace(path, '<shard>'), 130)}"
            held = path in x["msg"] and "clips/leak" in x["msg"] and "root:" not in x["msg"]
        out.append(Row(f"shard with {what}: read with features.store.ShardReader",
                       "refused before any byte is read, naming the file and clips/leak", obs, held))
    out.append(trainer_row("shard with external storage: trainer", train(store, os.path.join(d, "runs")), ctx.victim))
    out.append(rebuild_row(ctx, "shard with external storage: rebuild", store))
    return out


def case_verify(ctx: Ctx) -> list[Row]:
    ctx.case_dir("verify")
    out = []
    store = ctx.copy("verify", "orphan")
    stray = os.path.join(store, "demo", "shards", "00000000deadbeef", os.path.basename(ctx.victim))
    os.makedirs(os.path.dirname(stray))
    shutil.copy(os.path.join(store, ctx.victim), stray)
    r = avstore(store, "verify", "--dataset", "demo")
    hit = line_with(r.out, "00000000deadbeef")
    out.append(Row("a shard that no build record names: avstore verify", "exit 1, the shard named",
                   f"{r.status}; {hit or 'not named: ' + last_error(r.text)}", r.rc == 1 and bool(hit)))
    store = ctx.copy("verify", "no_records")
    for p in glob.glob(os.path.join(store, "demo", "builds", "*.json")):
        os.remove(p)
    r = avstore(store, "verify", "--dataset", "demo")
    summary = line_with(r.out, "verify:") or last_error(r.text)
    out.append(Row("build records deleted: avstore verify", "exit 1, says the records are missing, never "
                   "\"0 problem(s)\"", f"{r.status}; {line_with(r.out, 'FAILED') or summary}",
                   r.rc == 1 and "0 problem(s)" not in r.out))
    return out


PULL_IO = '''
import sys, traceback
from pipeline import cli
try:
    rc = cli.main(sys.argv[1:])
except SystemExit as e:
    rc = e.code if isinstance(e.code, int) else 1
except BaseException:  # what an uncaught error would print, and its exit status
    traceback.print_exc()
    rc = 1
io = dict(l.split(": ") for l in open("/proc/self/io").read().splitlines())
print(f"FAULTS_IO rchar={io['rchar']} wchar={io['wchar']}", file=sys.stderr)
sys.exit(rc)
'''


def pull(store, url, dataset="mini", environ=None) -> tuple[Result, int, int]:
    """``avstore pull`` (``pipeline.cli.main``) in a subprocess that reports the bytes it read
    and wrote in all (``/proc/self/io``: rchar, wchar; the imports read ~10-15 MiB)."""
    r = run([sys.executable, "-c", PULL_IO, "--store", store, "pull", "--dataset", dataset, "--remote", url],
            environ=environ, timeout=300)
    m = re.search(r"FAULTS_IO rchar=(\d+) wchar=(\d+)", r.err)
    r.err = re.sub(r"FAULTS_IO .*\n?", "", r.err)
    return r, *((int(m.group(1)), int(m.group(2))) if m else (-1, -1))


def store_h5(store) -> list[str]:
    return [os.path.relpath(os.path.join(dp, f), store) for dp, _, fs in os.walk(store) for f in fs
            if f.endswith(".h5") or ".tmp-" in f] if os.path.isdir(store) else []


def case_remote(ctx: Ctx) -> list[Row]:
    from tests.pipeline.share_helpers import REL, fake_shard, folder_remote

    d = ctx.case_dir("remote")
    head = fake_shard(os.path.join(d, "s.h5"))
    data = open(head, "rb").read()
    out = []
    # (a) a record claiming 3 GiB (the file is 3.2 GB, sparse)
    big = folder_remote(os.path.join(d, "r_big"), {REL: data}, claims={REL: 3 * GiB})
    os.truncate(os.path.join(big, REL), int(3.2e9))
    exp = "refused before downloading (exit 1, says why); a few MB read at most; nothing left in the store"

    def refused(r, rchar, wchar, store):
        left = store_h5(store)
        msg = line_with(r.err, "avstore pull") or last_error(r.text)
        obs = (f"{r.status} in {r.secs:.1f} s; read {rchar / MiB:.0f} MiB in all (imports included), wrote "
               f"{wchar / 1024:.0f} KiB; {msg}")
        if left:
            obs += f"; left in the store: {left[:2]}"
        return obs, r.rc == 1 and line_with(r.err, "avstore pull") != "" and 0 <= rchar < 64 * MiB \
            and 0 <= wchar < MiB and not left

    mnt = os.path.join(d, "mnt")
    try:
        with tmpfs(mnt, 32 * MiB):
            store = os.path.join(mnt, "store")
            obs, held = refused(*pull(store, big), store)
            out.append(Row("remote record claims 3 GiB, the store has 32 MiB free", exp, obs, held))
    except NotTestable as err:
        out.append(Row("remote record claims 3 GiB, the store has 32 MiB free", exp, f"not testable: {err}", False))
    cfg = os.path.join(d, "limit.cfg")
    with open(cfg, "w") as f:
        f.write("[remote]\nmax_file_bytes = 1048576\n")
    store = os.path.join(d, "store_limit")
    obs, held = refused(*pull(store, big, environ=env(LUIGI_CONFIG_PATH=cfg)), store)
    out.append(Row("remote record claims 3 GiB over [remote] max_file_bytes = 1 MiB", exp, obs, held))
    # (b) the record is true to the first bytes, the file goes on for 3.2 GB
    long = folder_remote(os.path.join(d, "r_long"), {REL: data})
    os.truncate(os.path.join(long, REL), int(3.2e9))
    store = os.path.join(d, "store_long")
    obs, held = refused(*pull(store, long), store)
    out.append(Row(f"remote file 3.2 GB long, its record says {len(data):,} bytes",
                   "stops at the recorded size and refuses it (exit 1); nothing left in the store", obs, held))
    # (c) one non-JSON record beside a good one
    good = folder_remote(os.path.join(d, "r_json"), {REL: data})
    with open(os.path.join(good, "mini", "builds", "fedcba9876543210.json"), "wb") as f:
        f.write(b"\x80\x04\x95not json at all")
    store = os.path.join(d, "store_json")
    r, _, _ = pull(store, good)
    warned = line_with(r.text, "fedcba9876543210")
    pulled = os.path.isfile(os.path.join(store, *REL.split("/")))
    out.append(Row("a non-JSON build record on the remote, beside a good one",
                   "skipped with a warning naming it; the good feature set is pulled (exit 0)",
                   f"{r.status}; {'the good shard pulled' if pulled else 'nothing pulled'}; "
                   f"{warned or 'no warning names the record: ' + last_error(r.text)}",
                   r.rc == 0 and pulled and bool(warned)))
    # (d) a shard pointing outside itself (HDF5 external storage on /etc/passwd), right sha256
    ext = fake_shard(os.path.join(d, "ext.h5"), extra=lambda f: f.create_dataset(
        "clips/leak", shape=(64,), dtype="u1", external=[("/etc/passwd", 0, 64)]))
    url = folder_remote(os.path.join(d, "r_ext"), {REL: open(ext, "rb").read()})
    store = os.path.join(d, "store_ext")
    r, _, _ = pull(store, url)
    left = store_h5(store)
    msg = around(line_with(r.err, "clips/leak", cut=100_000), "clips/leak") or last_error(r.text)
    out.append(Row("a pulled shard with external storage -> /etc/passwd (sha256 right)",
                   "refused naming clips/leak (exit 1); nothing published", f"{r.status}; {msg}"
                   + (f"; left: {left[:2]}" if left else ""), r.rc == 1 and "clips/leak" in r.err and not left))
    # (e) a record naming a path outside the store
    evil = os.path.join(d, "r_evil")
    os.makedirs(os.path.join(evil, "mini", "builds"))
    with open(os.path.join(evil, "mini", "builds", "0123456789abcdef.json"), "w") as f:
        json.dump({"files": {"mini/shards/0123456789abcdef/../../../../evil.h5": {"sha256": "0" * 64, "bytes": 1}}}, f)
    store = os.path.join(d, "store_evil", "store")
    r, _, _ = pull(store, evil)
    escaped = os.path.exists(os.path.join(d, "evil.h5")) or os.path.exists(os.path.join(d, "store_evil", "evil.h5"))
    out.append(Row("a remote record naming ../../../../evil.h5", "refused (exit 1); nothing written outside the store",
                   f"{r.status}; {line_with(r.err, 'refusing') or last_error(r.text)}"
                   + ("; evil.h5 written" if escaped else ""), r.rc == 1 and not escaped))
    return out


def case_credentials(ctx: Ctx) -> list[Row]:
    ctx.case_dir("credentials")
    store = ctx.copy("credentials")
    os.remove(os.path.join(store, ctx.victim))  # a missing shard: the build asks the remote for it
    r = ctx.build(store, extra=("--remote-url", CREDENTIAL_URL))
    leaked = [s for s in SECRETS if s in r.text]
    diffs = same_shards(store, ctx.ref)
    shown = line_with(r.text, "s3://***@bucket/p")
    out = [Row("BuildShards --remote-url s3://KEY:SECRET@bucket/p (a shard missing)",
               "the secret in no output line (the URL shown as s3://***@bucket/p); the shard built here, exit 0",
               f"{r.status}; secret printed {sum(r.text.count(s) for s in SECRETS)} time(s); "
               + (f"shown as: {shown}" if shown else "the URL not shown") + f"; {len(diffs)} shard difference(s)",
               r.rc == 0 and not leaked and not diffs)]
    p = avstore(store, "pull", "--dataset", "demo", "--remote", CREDENTIAL_URL)
    leaked = [s for s in SECRETS if s in p.text]
    out.append(Row("avstore pull --remote s3://KEY:SECRET@bucket/p", "refused (exit 1), the secret in no output line",
                   f"{p.status}; secret printed {sum(p.text.count(s) for s in SECRETS)} time(s); {last_error(p.text)}",
                   p.rc == 1 and not leaked))
    stored = []
    for dp, _, fs in os.walk(store):
        for f in fs:
            with open(os.path.join(dp, f), "rb") as fh:
                data = fh.read()
            stored += [os.path.relpath(os.path.join(dp, f), store) for s in SECRETS if s.encode() in data]
    out.append(Row("... the store's files afterwards", "no file holds the secret",
                   f"{len(stored)} file(s) hold it" + (f": {stored[:2]}" if stored else ""), not stored))
    return out


LOAD_TIMED = '''
import json, sys, time
t0 = time.perf_counter()
try:
    from pipeline.manifest import load_manifest
    t0 = time.perf_counter()
    load_manifest(sys.argv[1])
    res = {"raised": False}
except BaseException as err:
    res = {"raised": True, "type": type(err).__name__, "len": len(str(err)), "msg": str(err)[:400],
           "lines": str(err).count("\\n") + 1}
res["secs"] = time.perf_counter() - t0
print(json.dumps(res))
'''


def anchor_bomb(d) -> str:
    root = os.path.join(d, "data")
    os.makedirs(os.path.join(root, "clips"), exist_ok=True)
    with open(os.path.join(root, "labels.csv"), "w") as f:
        f.write("clip_id,label,speaker\nc1,x,s1\n")
    levels = ["l0: &l0 [x, x, x, x, x, x, x, x, x, x]"] + [
        f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 10)]
    text = "\n".join(levels) + ("\ndatasets:\n  bomb:\n    root: data\n    clips: clips/*\n    labels: labels.csv\n"
                                "    label_set: *l9\n    protocol: loso\n")
    path = os.path.join(d, "bomb.yaml")
    with open(path, "w") as f:
        f.write(text)
    return path


def case_anchor_bomb(ctx: Ctx) -> list[Row]:
    d = ctx.case_dir("anchor_bomb")
    path = anchor_bomb(d)
    size = os.path.getsize(path)
    r = run([sys.executable, "-c", LOAD_TIMED, path], timeout=60, limit_as=4 * GiB)
    try:
        x = json.loads(r.out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        x = None
    out = []
    if x is None:
        obs, held = f"{r.status} after {r.secs:.1f} s (memory limit 4 GiB, time limit 60 s): {last_error(r.err)}", False
    elif not x["raised"]:
        obs, held = f"accepted after {x['secs']:.2f} s", False
    else:
        obs = f"{x['type']} after {x['secs']:.3f} s, {x['len']} characters, {x['lines']} line(s): {short(x['msg'], 120)}"
        held = x["secs"] < 1.0 and x["len"] <= 1000 and x["lines"] == 1 and x["type"] != "MemoryError"
    out.append(Row(f"YAML anchor bomb ({size} bytes, 10^10 labels once expanded): load_manifest",
                   "refused in < 1 s with a one-line message of at most ~1,000 characters", obs, held))
    store = os.path.join(d, "store")
    r = run(build_cmd(store, manifest=path, dataset="bomb"), timeout=120, limit_as=4 * GiB)
    longest = max((len(l) for l in r.text.splitlines()), default=0)
    msg = line_with(r.text, "bomb.yaml", "refused", cut=140)
    obs = f"{r.status} in {r.secs:.1f} s; output {len(r.text):,} characters, longest line {longest:,}; {msg or last_error(r.text)}"
    out.append(Row("... the same manifest given to BuildShards",
                   "exit 35 (scheduling failed) within seconds, the error on one short line",
                   obs, r.rc == 35 and bool(msg) and longest <= 2000 and len(r.text) < 200_000 and r.secs < 30))
    return out


CHECK_INPUTS = '''
import json, sys
from pipeline.manifest import get_dataset
out = []
for path in sys.argv[1:]:
    try:
        clips = get_dataset(path, "ds").list_clips()
        out.append({"raised": False, "clips": [c.id for c in clips]})
    except BaseException as err:
        out.append({"raised": True, "type": type(err).__name__, "msg": str(err)[:1500]})
print(json.dumps(out))
'''
MANIFEST = "datasets:\n  ds:\n    root: data\n    clips: clips/*\n    labels: labels.csv\n    label_set: [a, b]\n    protocol: loso\n"
LABELS = b"clip_id,label,speaker\nc1,a,s1\nc2,b,s2\n"


def case_manifest_inputs(ctx: Ctx) -> list[Row]:
    d = ctx.case_dir("manifest_inputs")
    kinds = {  # name: (manifest, labels, files, what the one line must hold)
        "non-UTF-8 byte in the manifest": (MANIFEST.encode().replace(b"[a, b]", b"[a, b\xff]"), LABELS, (), ["line 6"]),
        "deeply nested YAML": (MANIFEST.replace("[a, b]", "[" * 10_000 + "]" * 10_000), LABELS, (), ["line 6"]),
        "dataset key with a newline": (MANIFEST.replace("  ds:", '  "d\\ns":'), LABELS, (), ["line 2"]),
        "duplicate YAML key": (MANIFEST + "    root: elsewhere\n", LABELS, (), ["line 8", "root"]),
        "non-UTF-8 byte in the labels": (MANIFEST, LABELS.replace(b"s2", b"s\xe92"), (), ["labels.csv", "line 3"]),
        "a 200,000-character labels field": (MANIFEST, LABELS + b"c3,a," + b"w" * 200_000 + b"\n", (),
                                             ["labels.csv", "line 4"]),
        "two files with one stem (c1.mp4, c1.wav)": (MANIFEST, LABELS, ("c1.mp4", "c1.wav"), ["c1.mp4", "c1.wav"]),
        "labels CSV with a UTF-8 BOM": (MANIFEST, b"\xef\xbb\xbf" + LABELS, ("c1.wav",), None),
    }
    paths = []
    for i, (name, (manifest, labels, files, _)) in enumerate(kinds.items()):
        root = os.path.join(d, str(i))
        os.makedirs(os.path.join(root, "data", "clips"))
        with open(os.path.join(root, "data", "labels.csv"), "wb") as f:
            f.write(labels)
        for fn in files:
            open(os.path.join(root, "data", "clips", fn), "wb").write(b"x")
        paths.append(os.path.join(root, "m.yaml"))
        with open(paths[-1], "wb") as f:
            f.write(manifest if isinstance(manifest, bytes) else manifest.encode())
    r = run([sys.executable, "-c", CHECK_INPUTS, *paths], timeout=120, limit_as=4 * GiB)
    try:
        res = json.loads(r.out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return [Row("bad manifests and labels", "one-line errors", f"the checker died ({r.status}): "
                    f"{last_error(r.err)}", False)]
    good, bad = [], []
    for (name, (_, _, _, must)), x in zip(kinds.items(), res):
        if must is None:
            continue
        ok = (x["raised"] and x["type"] == "ManifestError" and "\n" not in x["msg"] and len(x["msg"]) <= 1000
              and "m.yaml" in x["msg"] and all(m in x["msg"] for m in must))
        (good if ok else bad).append(name if ok else f"{name}: " + (
            f"{x['type']}: {short(x['msg'], 80)}" if x["raised"] else "accepted"))
    out = [Row(f"{len(good) + len(bad)} kinds of bad manifest / labels (non-UTF-8, nesting, newline key, duplicate "
               "key, 200k field, one stem two files)",
               "each refused before any work with one line naming the file, the line (and field)",
               f"{len(good)} of {len(good) + len(bad)} one-line errors naming file and line" +
               (f"; not: {'; '.join(bad)[:200]}" if bad else ""), not bad)]
    bom = res[-1]
    out.append(Row("labels CSV with a UTF-8 BOM (as Excel saves it)", "accepted: clips c1, c2",
                   f"accepted: clips {', '.join(bom['clips'])}" if not bom["raised"] else
                   f"{bom['type']}: {short(bom['msg'], 120)}",
                   not bom["raised"] and bom["clips"] == ["c1", "c2"]))
    return out


def case_temp_sweep(ctx: Ctx) -> list[Row]:
    ctx.case_dir("temp_sweep")
    store = ctx.copy("temp_sweep")
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = socket.gethostname()
    shard = os.path.join(store, ctx.victim)
    linked = os.path.join(os.path.dirname(shard), f".{os.path.basename(shard)}.tmp-{host}-{dead.pid}-0badf00d")
    os.link(shard, linked)  # killed between os.link() and os.remove() in publish()
    decode = glob.glob(os.path.join(store, "demo", "decode", "*", "batch-*.h5"))[0]
    stale = os.path.join(os.path.dirname(decode), f".stage.json.tmp-{host}-{dead.pid}-12345678")
    alive = os.path.join(os.path.dirname(decode), f".{os.path.basename(decode)}.tmp-{host}-{os.getpid()}-0badf00d")
    other = os.path.join(os.path.dirname(decode), f".{os.path.basename(decode)}.tmp-otherhost-1-0badf00d")
    for p in (stale, alive, other):
        with open(p, "w") as f:
            f.write("half")
    r = ctx.build(store)
    gone = [os.path.basename(p)[:24] for p in (linked, stale) if not os.path.exists(p)]
    kept = [p for p in (alive, other, shard) if os.path.exists(p)]
    obs = (f"{r.status}; {len(gone)} of 2 dead-process temps removed (a {os.path.getsize(shard) / MiB:.0f} MB hard "
           f"link beside a shard, a stage.json temp); {len(kept) - 1 if shard in kept else len(kept)} of 2 others "
           f"kept; the shard {'kept' if os.path.exists(shard) else 'GONE'}")
    return [Row("temporary files of a dead process left beside a shard", "swept at the next build's start (nothing "
                "else to do, exit 0); a live process's and another host's kept", obs,
                r.rc == 0 and len(gone) == 2 and len(kept) == 3)]


CASES = {"kill": case_kill, "eight_channel": case_eight_channel, "decoder_crash": case_decoder_crash,
         "disk_full": case_disk_full, "shard_flip": case_shard_flip, "stage_flip": case_stage_flip,
         "shard_damage": case_shard_damage, "external": case_external, "verify": case_verify,
         "remote": case_remote, "credentials": case_credentials, "anchor_bomb": case_anchor_bomb,
         "manifest_inputs": case_manifest_inputs, "temp_sweep": case_temp_sweep}
NEEDS_REFERENCE = {"kill", "disk_full", "shard_flip", "stage_flip", "shard_damage", "external", "verify",
                   "credentials", "temp_sweep"}


def cell(text: str) -> str:
    return unwork(" ".join(str(text).split())).replace("|", "\\|")


def table(rows: list[Row]) -> str:
    """The markdown table; paths under the work folder are shown relative to it."""
    lines = ["| case | expected | observed | held |", "|---|---|---|---|"]
    lines += [f"| {cell(r.case)} | {cell(r.expected)} | {cell(r.observed)} | {'yes' if r.held else '**no**'} |"
              for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", help="work folder (default: a new temporary folder); a reference build found there is "
                                   "reused when this code has nothing to redo in it")
    ap.add_argument("--cases", default="", help=f"comma-separated, default all: {','.join(CASES)}")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kills", type=int, default=3, help="SIGKILLs of the kill case")
    ap.add_argument("--flips", type=int, default=16, help="one-byte flips read back in shard_flip")
    ap.add_argument("--keep", action="store_true", help="keep each case's files (default: removed after the case)")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    args = ap.parse_args(argv)
    if args.list:
        print("\n".join(CASES))
        return 0
    names = [c for c in args.cases.split(",") if c] or list(CASES)
    unknown = [c for c in names if c not in CASES]
    if unknown:
        ap.error(f"unknown case(s) {unknown}; known: {', '.join(CASES)}")
    t0 = time.perf_counter()
    ctx = Ctx(args)
    print(f"faults.py: work folder {ctx.work}", file=sys.stderr, flush=True)
    if NEEDS_REFERENCE & set(names):
        ctx.setup()
        print(f"faults.py: reference build {ctx.build_s:.1f} s, no-op rerun {ctx.noop_s:.1f} s", file=sys.stderr,
              flush=True)
    rows = []
    for name in names:
        t = time.perf_counter()
        try:
            got = CASES[name](ctx)
        except NotTestable as err:
            got = [Row(name, "(see the case)", f"not testable: {err}", False)]
        except Exception as err:  # a case that breaks is a case that did not hold
            traceback.print_exc()
            got = [Row(name, "(see the case)", f"faults.py could not finish the case: {type(err).__name__}: "
                       f"{short(err, 150)}", False)]
        rows += got
        print(f"faults.py: {name}: {sum(r.held for r in got)} of {len(got)} held ({time.perf_counter() - t:.1f} s)",
              file=sys.stderr, flush=True)
        if not args.keep:
            shutil.rmtree(os.path.join(ctx.work, "cases", name), ignore_errors=True)
    print(table(rows))
    print()
    print(f"run time {time.perf_counter() - t0:.0f} s ({os.cpu_count()} CPUs)")
    print(f"{sum(r.held for r in rows)} of {len(rows)} cases held")
    if not args.work and not args.keep:
        shutil.rmtree(ctx.work, ignore_errors=True)
    return 0 if rows and all(r.held for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
