"""The audio stages: Decode → {VAD, Prosody, LogMel} → Segment. Each works on one batch of clips."""
from __future__ import annotations

import logging
import os

import luigi
import numpy as np

from features.hashing import sha256_file
from pipeline.base import BatchTask, clip_rows, clip_table, read_input
from pipeline.isolated import IsolatedDecoder

logger = logging.getLogger("luigi-interface")


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
        sr = self.requires()["decode"].sr   # the upstream task's parameter
        with store.clip_signals(self.requires()["decode"].output().path) as samples:
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
        sr = self.requires()["decode"].sr   # the upstream task's parameter
        kw = {k: getattr(self, k) for k in ("silence_db", "min_silence_s", "min_sounding_s", "min_voiced",
                                            "verbal_db", "reset_st", "min_unit_s")}
        with store.clip_signals(self.requires()["decode"].output().path) as samples:
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
        sr = self.requires()["decode"].sr   # the upstream task's parameter
        with store.clip_signals(self.requires()["decode"].output().path) as samples:
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
        grid = {k: getattr(inp["logmel"], k) for k in ("frame_ms", "hop_ms")}   # from the upstream task
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
