"""The audio stages: Decode → {VAD, Prosody, LogMel} → Segment. Each works on one batch of clips."""
from __future__ import annotations

import contextlib
import hashlib
import logging
import json
import os
import signal
import tempfile
import traceback

import luigi
import numpy as np

from pipeline.base import BatchTask

logger = logging.getLogger("luigi-interface")


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_input(task: luigi.Task, *groups: str) -> dict:
    """{group: {name: array}} of an upstream output, plus its clip table and attributes.

    A group given as "group/name" reads only that array of the group."""
    from features import store

    path = task.output().path
    out = {"clips": store.read_group(path, "clips")}
    for g in groups:
        name, _, key = g.partition("/")
        out.setdefault(name, {}).update(store.read_group(path, name, [key] if key else None))
    out["attrs"] = store.read_attrs(path)
    return out


@contextlib.contextmanager
def decoded_signals(task: luigi.Task):
    """``samples(i)``: clip i's waveform in the output of ``task`` (a Decode) as a ``ClipSignal``,
    read a block at a time by the feature functions: a stage never holds a whole long clip, nor
    the batch's waveform (issue 19 item 11)."""
    from features import store

    path = task.output().path
    store.check_closed(path)
    with store.open_file(path, rdcc_nbytes=1 << 20) as f:
        ds = f["audio/waveform"]
        try:
            offsets = f["audio/offsets"][()]
        except OSError as err:
            raise ClipSignal.corrupt(path, "audio/offsets", err) from err
        yield lambda i: ClipSignal(ds, int(offsets[i]), int(offsets[i + 1]), path)


class ClipSignal:
    """One clip's float32 samples in a Decode output, as a 1-D sequence that reads on slicing
    (``len``, ``shape``, ``[a:b]``): what ``vad_weights``, ``prosodic_units`` and ``logmel`` take."""

    def __init__(self, ds, start: int, stop: int, path: str):
        self.ds, self.start, self.stop, self.path = ds, start, stop, path
        self.shape = (stop - start,)

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, sel) -> np.ndarray:
        if not isinstance(sel, slice):
            raise TypeError(f"a ClipSignal reads slices only, got {sel!r}")
        a, b, step = sel.indices(len(self))
        if step != 1:
            raise TypeError("a ClipSignal reads contiguous slices only")
        try:
            return self.ds[self.start + a:self.start + max(a, b)]
        except OSError as err:
            raise self.corrupt(self.path, "audio/waveform", err) from err

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self[:], dtype=dtype)

    @staticmethod
    def corrupt(path: str, name: str, err: Exception):
        from features.errors import CorruptShard

        return CorruptShard(path, f"{path}: dataset {name} cannot be read ({err}: a chunk failed its checksum); "
                                  f"delete the file and run the build again to decode the batch anew",
                            dataset=name)


def clip_rows(group: dict, name: str, i: int) -> np.ndarray:
    off = group["offsets"]
    return group[name][off[i]:off[i + 1]]


def clip_table(clips, status, reason) -> dict:
    return {"id": np.array([c.id for c in clips], dtype=object), "status": np.array(status, dtype=object),
            "reason": np.array(reason, dtype=object)}


class Decode(BatchTask):
    """Decode, mix down, resample and pre-emphasise (AVEF §2.1.1; ``features.audio.decode_to``).

    The native decoding (FFmpeg through PyAV, soxr) runs in a child process (``IsolatedDecoder``):
    a clip that crashes it ends as that clip's status ``error`` ("decoder crashed: signal 11
    (SIGSEGV)") and the rest of the batch is decoded by a new child and written (issue 19 item 1).
    Each clip streams through the chain block by block into a scratch file; the batch's waveform
    is then read into one array, the only copy (issue 19 item 11).
    """

    STAGE = "decode"
    sr = luigi.IntParameter(default=16000, description="output sample rate in Hz")
    preemphasis = luigi.FloatParameter(default=0.97, description="pre-emphasis μ (AVEF §2.1.1); 0 = off")

    def run(self):
        from features import store

        clips = self.clips()
        status, reason = ["ok"] * len(clips), [""] * len(clips)
        for i, clip in enumerate(clips):
            if clip.path is None:
                status[i], reason[i] = "missing_file", f"{self.STAGE}: no file under the root matches this clip id"
        jobs = [(i, clip.path) for i, clip in enumerate(clips) if status[i] == "ok"]
        os.makedirs(self.stage_dir(), exist_ok=True)
        infos, lengths = [{} for _ in clips], [0] * len(clips)
        with IsolatedDecoder(self.stage_dir(), sr=self.sr, coef=self.preemphasis) as decoder:
            skipped = len(clips) - len(jobs)
            outcomes = decoder.run(jobs, progress=lambda done: self.progress(skipped + done, len(clips), "done"))
            self.progress(len(clips), len(clips), "done")
            for i, clip in enumerate(clips):
                out = outcomes.get(i)
                if out is None:
                    continue
                if out.kind == "ok":
                    infos[i], lengths[i] = out.info, out.length
                    continue
                if out.kind == "error":
                    logger.error("%s: clip %s failed: %s%s", self.STAGE, clip.id, out.message,
                                 f"\n{out.traceback}" if out.traceback else "")
                status[i], reason[i] = out.status, f"{self.STAGE}: {out.message}"
            offsets = np.zeros(len(clips) + 1, dtype=np.int64)
            np.cumsum(lengths, out=offsets[1:])
            wave = np.empty(int(offsets[-1]), dtype=np.float32)
            for i in range(len(clips)):
                if lengths[i]:
                    decoder.read(outcomes[i], wave[offsets[i]:offsets[i + 1]])
        table = clip_table(clips, status, reason)
        table.update(
            source=np.array([c.path or "" for c in clips], dtype=object),
            source_sha256=np.array([sha256_file(c.path) if c.path else "" for c in clips], dtype=object),
            orig_sr=np.array([info.get("orig_sr", 0) for info in infos], dtype=np.int32),
            n_channels=np.array([info.get("n_channels", 0) for info in infos], dtype=np.int16),
            duration_s=np.array([info.get("duration_s", 0.0) for info in infos], dtype=np.float32))
        self.write({"clips": table, "audio": {"waveform": wave, "offsets": offsets}},
                   compression=store.SCRATCH_COMPRESSION)


class Outcome:
    """What decoding one clip gave: ``kind`` "ok" (``start``, ``length``: float32 samples in the
    scratch file; ``info``) or a failure with the clip's ``status`` and ``message`` (``kind``
    "clip_error": a ``ClipError``; "error": another exception, with its ``traceback``;
    "crashed": the decoder process died)."""

    def __init__(self, kind: str, *, status: str = "ok", message: str = "", start: int = 0, length: int = 0,
                 info: dict | None = None, traceback: str = ""):
        self.kind, self.status, self.message, self.traceback = kind, status, message, traceback
        self.start, self.length, self.info = start, length, info or {}

    def __repr__(self) -> str:
        return f"Outcome({self.kind!r}, status={self.status!r}, message={self.message!r}, length={self.length})"

    def to_json(self) -> dict:
        return {"kind": self.kind, "status": self.status, "message": self.message, "start": self.start,
                "length": self.length, "info": self.info, "traceback": self.traceback}


class IsolatedDecoder:
    """Decode clips with ``features.audio.decode_to`` in a forked child process, into a scratch file.

    ``run(jobs)`` forks one child for the batch; it decodes the clips in order, appends each
    clip's float32 output to an unnamed scratch file in ``folder`` (``O_TMPFILE``: nothing is
    left behind, even after a kill) and reports each outcome through a pipe. When the child dies
    (a segfault in FFmpeg or in PyAV's C code, an abort, the OOM killer) the clip it was on gets
    status "error", "decoder crashed: signal N (NAME)", and a new child goes on with the next clip.
    A forked child inherits the imported libraries: the cost is one fork per batch plus one per
    crash. The messages are lines of JSON (no pickle in the store's code), so the jobs' keys are
    ints or strings. ``read(outcome, out)`` copies a clip's samples into ``out``. Without
    ``os.fork`` (or with ``isolate=False``) the clips are decoded in this process, unprotected.

    A failure to write the scratch file (a full disk) is not a clip's fault: ``run`` raises it.
    """

    def __init__(self, folder: str, *, sr: int, coef: float, isolate: bool = True):
        self.folder, self.sr, self.coef = folder, sr, coef
        self.isolate = isolate and hasattr(os, "fork")
        self._file = tempfile.TemporaryFile(dir=folder, prefix=".decode-scratch-")
        self.fd = self._file.fileno()
        self.children = 0  # processes forked (1 + crashes)

    def __enter__(self) -> "IsolatedDecoder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def run(self, jobs, progress=None) -> dict:
        """{key: Outcome} for ``jobs``, a list of (key, path)."""
        outcomes: dict = {}
        pending = list(jobs)
        while pending:
            if self.isolate:
                self._child(pending, outcomes, progress)
            else:  # decode here, unprotected
                offset = os.fstat(self.fd).st_size
                for key, path in pending:
                    try:
                        outcomes[key], offset = _decode_one(path, self.fd, offset, self.sr, self.coef)
                    except OSError as err:
                        raise OSError(err.errno, f"{err.strerror}: the decoder's scratch file in {self.folder}") \
                            from None
                    if progress:
                        progress(len(outcomes))
            pending = [job for job in pending if job[0] not in outcomes]
        return outcomes

    def _child(self, jobs, outcomes: dict, progress) -> None:
        """One child process over ``jobs`` (those not in ``outcomes`` yet); a crash is recorded."""
        offset = os.fstat(self.fd).st_size
        parent = os.getpid()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 0
            try:
                os.close(r)
                _die_with(parent)
                _child_main(w, self.fd, jobs, offset, self.sr, self.coef)
            except BaseException:  # noqa: B036 (the child reports by its exit status, never unwinds the parent's stack)
                code = 70
            finally:
                os._exit(code)
        self.children += 1
        os.close(w)
        current, ended = None, False
        try:
            with os.fdopen(r, "rb") as pipe:
                for line in pipe:  # ends when the child dies
                    try:
                        msg = json.loads(line)
                    except ValueError:
                        break  # the child died in the middle of a message
                    if msg[0] == "start":
                        current = msg[1]
                    elif msg[0] == "end":
                        ended = True
                        break
                    elif msg[0] == "scratch_error":
                        raise OSError(msg[1], f"{msg[2]}: the decoder's scratch file in {self.folder}")
                    elif msg[0] == "done":
                        outcomes[msg[1]], current = Outcome(**msg[2]), None
                        if progress:
                            progress(len(outcomes))
        except BaseException:
            _kill(pid)
            raise
        finally:
            _, wstatus = os.waitpid(pid, 0)
        if ended:
            return
        culprit = current if current is not None else next(key for key, _ in jobs if key not in outcomes)
        if os.WIFSIGNALED(wstatus):
            n = os.WTERMSIG(wstatus)
            try:
                message = f"decoder crashed: signal {n} ({signal.Signals(n).name})"
            except ValueError:
                message = f"decoder crashed: signal {n}"
        else:
            message = f"decoder crashed: exit status {os.waitstatus_to_exitcode(wstatus)}"
        logger.error("decode: %s on %s; the next clips go to a new decoder process", message,
                     dict(jobs).get(culprit))
        outcomes[culprit] = Outcome("crashed", status="error", message=message)
        if progress:
            progress(len(outcomes))

    def read(self, outcome: Outcome, out: np.ndarray) -> None:
        """Copy ``outcome``'s samples from the scratch file into ``out`` (float32, its length)."""
        view, pos = memoryview(out).cast("B"), outcome.start * 4
        while view:
            n = os.preadv(self.fd, [view], pos)
            if n <= 0:
                raise OSError(f"the decoder's scratch file in {self.folder} ended early")
            view, pos = view[n:], pos + n


class _ScratchError(Exception):
    def __init__(self, err: OSError):
        super().__init__(err.strerror)
        self.errno, self.strerror = err.errno, err.strerror


def _decode_one(path: str, fd: int, offset: int, sr: int, coef: float) -> tuple[Outcome, int]:
    """Decode one clip, appending its samples to ``fd`` at ``offset``: (its Outcome, the new offset)."""
    from features import audio
    from features.errors import ClipError

    start = pos = offset

    def sink(y: np.ndarray) -> None:
        nonlocal pos
        view = memoryview(np.ascontiguousarray(y, dtype=np.float32)).cast("B")
        try:
            while view:
                n = os.pwrite(fd, view, pos)
                view, pos = view[n:], pos + n
        except OSError as err:
            raise _ScratchError(err) from None

    try:
        info = audio.decode_to(path, sink, sr=sr, coef=coef)
    except _ScratchError as err:
        raise OSError(err.errno, err.strerror) from None
    except ClipError as err:
        return Outcome("clip_error", status=err.status, message=str(err)), pos
    except Exception as err:  # recorded as the clip's "error", with the traceback in the log
        return Outcome("error", status="error", message=f"{type(err).__name__}: {err}",
                       traceback=traceback.format_exc()), pos
    return Outcome("ok", start=start // 4, length=(pos - start) // 4, info=info), pos


def _child_main(w: int, fd: int, jobs, offset: int, sr: int, coef: float) -> None:
    """The decoder process: decode ``jobs`` in order, one message per event through the pipe ``w``."""
    out = os.fdopen(w, "wb")

    def send(*msg) -> None:
        out.write(json.dumps(msg).encode() + b"\n")
        out.flush()

    for key, path in jobs:
        send("start", key)
        try:
            outcome, offset = _decode_one(path, fd, offset, sr, coef)
        except OSError as err:
            send("scratch_error", err.errno, err.strerror)
            return
        send("done", key, outcome.to_json())
    send("end")
    out.close()


def _die_with(parent: int) -> None:
    """Have the kernel kill this (child) process when its parent dies (Linux ``PR_SET_PDEATHSIG``):
    a killed build leaves no decoder behind."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl
        os._exit(1)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class VAD(BatchTask):
    """0/1 voice weight per 10 ms with webrtcvad (AVEF §2.1.1 "VAD & Weight assigning")."""

    STAGE = "vad"
    aggressiveness = luigi.IntParameter(default=2, description="webrtcvad aggressiveness 0-3")
    vad_frame_ms = luigi.IntParameter(default=30, description="webrtcvad decision length: 10, 20 or 30 ms")

    def requires(self):
        return {"decode": self.clone(Decode)}

    def run(self):
        from features import store
        from features.vad import vad_weights

        dec = read_input(self.requires()["decode"])
        sr = dec["attrs"]["chain"]["params"]["sr"]
        with decoded_signals(self.requires()["decode"]) as samples:
            results, status, reason = self.per_clip(
                lambda i, c: vad_weights(y=samples(i), sr=sr, aggressiveness=self.aggressiveness,
                                         frame_ms=self.vad_frame_ms),
                dec["clips"]["status"], dec["clips"]["reason"])
        weight, offsets = store.pack([r if r is not None else [] for r in results], dtype=np.uint8)
        self.write({"clips": clip_table(self.clips(), status, reason),
                    "vad": {"weight": weight, "offsets": offsets}})


class Prosody(BatchTask):
    """Prosodic units with Praat (Hsu & Wu §II, §III-A; rule in ``features.prosody``)."""

    STAGE = "prosody"
    # 2 (issue 19 item 11): a clip over 5 minutes is copied into Praat block by block
    # (``features.prosody.praat_sound``), whose Sound may end one float64 ulp apart from before
    CODE_VERSION = "2"
    silence_db = luigi.FloatParameter(default=-25.0, description="silence threshold below the maximum, dB")
    min_silence_s = luigi.FloatParameter(default=0.10, description="shortest silence, s")
    min_sounding_s = luigi.FloatParameter(default=0.05, description="shortest sounding interval, s")
    min_voiced = luigi.FloatParameter(default=0.3, description="voiced fraction for a verbal unit")
    verbal_db = luigi.FloatParameter(default=20.0, description="verbal units lie within this of the loudest, dB")
    reset_st = luigi.FloatParameter(default=3.0, description="F0 reset that starts a phrase, semitones")
    min_unit_s = luigi.FloatParameter(default=0.3, description="shortest phrase after an F0 reset split, s")

    def requires(self):
        return {"decode": self.clone(Decode)}

    def run(self):
        from features import store
        from features.prosody import prosodic_units

        dec = read_input(self.requires()["decode"])
        sr = dec["attrs"]["chain"]["params"]["sr"]
        kw = {k: getattr(self, k) for k in ("silence_db", "min_silence_s", "min_sounding_s", "min_voiced",
                                            "verbal_db", "reset_st", "min_unit_s")}
        with decoded_signals(self.requires()["decode"]) as samples:
            results, status, reason = self.per_clip(lambda i, c: prosodic_units(y=samples(i), sr=sr, **kw),
                                                    dec["clips"]["status"], dec["clips"]["reason"])
        units, offsets = store.pack([r if r is not None else np.zeros((0, 3)) for r in results],
                                    dtype=np.float64, row_shape=(3,))
        self.write({"clips": clip_table(self.clips(), status, reason),
                    "units": {"t_begin": units[:, 0], "t_end": units[:, 1],
                              "kind": units[:, 2].astype(np.int8), "offsets": offsets}})


class LogMel(BatchTask):
    """Frame-level log-mel spectrum, AVEF eq 2.1 (``features.audio.logmel``), with the samples in
    16-bit PCM units (``signal_scale``, issue 18 item 2: eq 2.1's +0.01 then binds on < 1 % of the
    voiced cells of 16-bit speech at −26 and −46 dBFS, against 93-100 % on the ±1 scale). The Shard
    stage stores the fraction of each clip's voiced cells where it binds (``floor_fractions``)."""

    STAGE = "logmel"
    # 2 (issue 19 item 11): frames in blocks of ``LOGMEL_BLOCK``; a clip longer than one block
    # (41 s) may differ by BLAS rounding (≤ 1e-6) from the whole clip's single matrix product.
    # 3 (issue 18 item 2): samples × ``signal_scale`` (32768) before eq 2.1: every value changes
    CODE_VERSION = "3"
    n_mels = luigi.IntParameter(default=64, description="mel bands (AVEF: 64)")
    fmin = luigi.FloatParameter(default=0.0, description="lowest frequency, Hz")
    fmax = luigi.FloatParameter(default=8000.0, description="highest frequency, Hz (AVEF: 8000)")
    frame_ms = luigi.FloatParameter(default=25.0, description="frame length, ms (AVEF: 25, Hamming)")
    hop_ms = luigi.FloatParameter(default=10.0, description="frame shift, ms (AVEF: 10)")
    n_fft = luigi.IntParameter(default=0, description="FFT size; 0 = the frame length")
    log_floor = luigi.FloatParameter(default=0.01, description="added before the log (AVEF eq 2.1: 0.01)")
    signal_scale = luigi.FloatParameter(
        default=32768.0,
        description="the samples (in [-1, 1]) are multiplied by this before eq 2.1 (the paper gives no scale): "
                    "32768 = 16-bit PCM units, where the +0.01 binds on < 1 %% of voiced cells of speech at "
                    "-26 and -46 dBFS; 1 = the scale before issue 18 item 2, where it binds on 93-100 %%")

    def requires(self):
        return {"decode": self.clone(Decode)}

    def run(self):
        from features import store
        from features.audio import logmel

        dec = read_input(self.requires()["decode"])
        sr = dec["attrs"]["chain"]["params"]["sr"]
        with decoded_signals(self.requires()["decode"]) as samples:
            results, status, reason = self.per_clip(
                lambda i, c: logmel(y=samples(i), sr=sr, n_mels=self.n_mels, fmin=self.fmin, fmax=self.fmax,
                                    frame_ms=self.frame_ms, hop_ms=self.hop_ms, n_fft=self.n_fft or None,
                                    floor=self.log_floor, scale=self.signal_scale),
                dec["clips"]["status"], dec["clips"]["reason"])
        S, offsets = store.pack([r if r is not None else np.zeros((0, self.n_mels)) for r in results],
                                dtype=np.float32, row_shape=(self.n_mels,))
        self.write({"clips": clip_table(self.clips(), status, reason),
                    "frames": {"logmel": S, "offsets": offsets}})

    def floor_fractions(self, segment: luigi.Task, status) -> np.ndarray:
        """Per clip, the fraction of the (frame, band) cells of its voiced frames (``frames/voiced``
        of ``segment``'s output) where the log floor binds (``features.audio.floor_fraction``);
        float32, NaN for a clip whose ``status`` is not "ok" or that has no voiced frame. Read a
        clip at a time from this stage's output (issue 18 item 2; ``clips/logmel_floor_fraction``)."""
        from features import store
        from features.audio import floor_fraction

        out = np.full(len(status), np.nan, dtype=np.float32)
        voiced = store.read_group(segment.output().path, "frames", ["voiced"])["voiced"]
        offsets = store.read_group(self.output().path, "frames", ["offsets"])["offsets"]
        mel = store.Shard(self.output().path)  # a clip's rows of frames/logmel at a time
        try:
            for i, s in enumerate(status):
                a, b = int(offsets[i]), int(offsets[i + 1])
                if s == "ok" and b > a:
                    out[i] = floor_fraction(mel.logmel(i), voiced[a:b], floor=self.log_floor)
        finally:
            mel.close()
        return out


class Segment(BatchTask):
    """655 ms windows over voiced frames (AVEF §2.1.1 "Segmenting"; rule in ``features.segments``)."""

    STAGE = "segment"
    window_frames = luigi.IntParameter(default=64, description="frames per window (AVEF: 64 = 655 ms)")
    hop_frames = luigi.IntParameter(default=34, description="window hop in frames (AVEF: 64 − 30 overlap)")
    keep_silent = luigi.BoolParameter(default=False, description="lay windows over all frames, weight 0 if silent")

    def requires(self):
        return {"vad": self.clone(VAD), "prosody": self.clone(Prosody), "logmel": self.clone(LogMel)}

    def run(self):
        from features import segments, store

        inp = self.requires()
        vad, pros = read_input(inp["vad"], "vad"), read_input(inp["prosody"], "units")
        mel = read_input(inp["logmel"], "frames/offsets")  # the frame grid, not the spectra
        grid = {k: mel["attrs"]["chain"]["params"][k] for k in ("frame_ms", "hop_ms")}
        status, reason = list(mel["clips"]["status"]), list(mel["clips"]["reason"])
        for src in (vad, pros):  # the first failure along the chain wins
            for i, s in enumerate(src["clips"]["status"]):
                if status[i] == "ok" and s != "ok":
                    status[i], reason[i] = s, src["clips"]["reason"][i]
        n_frames = np.diff(mel["frames"]["offsets"])
        vad_ok = vad["clips"]["status"] == "ok"
        voiced = [segments.frame_weights(clip_rows(vad["vad"], "weight", i), n_frames=int(n), **grid)
                  if vad_ok[i] else np.zeros(int(n), np.uint8) for i, n in enumerate(n_frames)]

        def one(i, clip):
            units = np.stack([clip_rows(pros["units"], k, i) for k in ("t_begin", "t_end", "kind")], axis=1)
            frames, weight = segments.place_windows(weights=voiced[i], window_frames=self.window_frames,
                                                    hop_frames=self.hop_frames, keep_silent=self.keep_silent)
            t = segments.frame_times(int(n_frames[i]), **grid)
            return frames, weight, segments.window_units(frames, units=units, **grid), t[frames[:, 0], 0], \
                t[frames[:, -1], 1]

        results, status, reason = self.per_clip(one, status, reason)
        empty = (np.zeros((0, self.window_frames), np.int32), np.zeros(0, np.uint8), np.zeros(0, np.int32),
                 np.zeros(0), np.zeros(0))
        results = [r if r is not None else empty for r in results]
        col = (lambda j, dt, **kw: store.pack([r[j] for r in results], dtype=dt, **kw))
        frames, offsets = col(0, np.int32, row_shape=(self.window_frames,))
        self.write({"clips": clip_table(self.clips(), status, reason),
                    "frames": {"voiced": store.pack(voiced, dtype=np.uint8)[0]},
                    "windows": {"clip": np.repeat(np.arange(len(results)), np.diff(offsets)).astype(np.int32),
                                "unit": col(2, np.int32)[0], "frames": frames,
                                "t_begin": col(3, np.float32)[0], "t_end": col(4, np.float32)[0],
                                "weight": col(1, np.uint8)[0],
                                "contiguous": (frames[:, -1] - frames[:, 0] == self.window_frames - 1)
                                .astype(np.uint8), "offsets": offsets}})
