"""The audio stages: Decode → {VAD, Prosody, LogMel} → Segment. Each works on one batch of clips
(the stage template, ``pipeline.stage``)."""
from __future__ import annotations

import logging
import os

import luigi
import numpy as np

from features.hashing import sha256_file
from pipeline.base import clip_rows
from pipeline.isolated import IsolatedDecoder
from pipeline.stage import ClipStage, Column

logger = logging.getLogger("luigi-interface")


class Decode(ClipStage):
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

    def compression(self):
        from features import store

        return store.SCRATCH_COMPRESSION

    def open_inputs(self, inputs, stack):
        os.makedirs(self.stage_dir(), exist_ok=True)
        inputs["decoder"] = stack.enter_context(IsolatedDecoder(self.stage_dir(), sr=self.sr, coef=self.preemphasis))

    def compute_batch(self, inputs):
        """The clips decoded in the child process: ``results[i]`` its outcome (None: failed)."""
        clips = self.clips()
        status, reason = ["ok"] * len(clips), [""] * len(clips)
        for i, clip in enumerate(clips):
            if clip.path is None:
                status[i], reason[i] = "missing_file", f"{self.STAGE}: no file under the root matches this clip id"
        jobs = [(i, clip.path) for i, clip in enumerate(clips) if status[i] == "ok"]
        skipped = len(clips) - len(jobs)
        outcomes = inputs["decoder"].run(jobs, progress=lambda done: self.progress(skipped + done, len(clips), "done"))
        self.progress(len(clips), len(clips), "done")
        results = [None] * len(clips)
        for i, clip in enumerate(clips):
            out = outcomes.get(i)
            if out is None:
                continue
            if out.kind == "ok":
                results[i] = out
                continue
            if out.kind == "error":
                logger.error("%s: clip %s failed: %s%s", self.STAGE, clip.id, out.message,
                             f"\n{out.traceback}" if out.traceback else "")
            status[i], reason[i] = out.status, f"{self.STAGE}: {out.message}"
        return results, status, reason

    def finish(self, groups, results, inputs):
        clips = self.clips()
        lengths = [out.length if out else 0 for out in results]
        offsets = np.zeros(len(clips) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        wave = np.empty(int(offsets[-1]), dtype=np.float32)
        for i, out in enumerate(results):
            if lengths[i]:
                inputs["decoder"].read(out, wave[offsets[i]:offsets[i + 1]])
        infos = [out.info if out else {} for out in results]
        groups["clips"].update(
            source=np.array([c.path or "" for c in clips], dtype=object),
            source_sha256=np.array([sha256_file(c.path) if c.path else "" for c in clips], dtype=object),
            orig_sr=np.array([info.get("orig_sr", 0) for info in infos], dtype=np.int32),
            n_channels=np.array([info.get("n_channels", 0) for info in infos], dtype=np.int16),
            duration_s=np.array([info.get("duration_s", 0.0) for info in infos], dtype=np.float32))
        groups["audio"] = {"waveform": wave, "offsets": offsets}


class SignalStage(ClipStage):
    """A stage that reads each clip's decoded signal (Decode's output, a block at a time)."""

    GATE = "decode"

    def requires(self):
        return {"decode": self.clone(Decode)}

    def open_inputs(self, inputs, stack):
        from features import store

        inputs["samples"] = stack.enter_context(store.clip_signals(self.requires()["decode"].output().path))
        inputs["sr"] = self.requires()["decode"].sr   # the upstream task's parameter


class VAD(SignalStage):
    """0/1 voice weight per 10 ms with webrtcvad (AVEF §2.1.1 "VAD & Weight assigning")."""

    STAGE = "vad"
    aggressiveness = luigi.IntParameter(default=2, description="webrtcvad aggressiveness 0-3")
    vad_frame_ms = luigi.IntParameter(default=30, description="webrtcvad decision length: 10, 20 or 30 ms")

    def columns(self, inputs):
        return {"vad/weight": Column(np.uint8)}

    def compute(self, i, clip, inputs):
        from features.vad import vad_weights

        return vad_weights(y=inputs["samples"](i), sr=inputs["sr"], aggressiveness=self.aggressiveness,
                           frame_ms=self.vad_frame_ms)


class Prosody(SignalStage):
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

    def columns(self, inputs):
        return {"units/t_begin": Column(np.float64), "units/t_end": Column(np.float64), "units/kind": Column(np.int8)}

    def compute(self, i, clip, inputs):
        from features.prosody import prosodic_units

        kw = {k: getattr(self, k) for k in ("silence_db", "min_silence_s", "min_sounding_s", "min_voiced",
                                            "verbal_db", "reset_st", "min_unit_s")}
        units = np.asarray(prosodic_units(y=inputs["samples"](i), sr=inputs["sr"], **kw), np.float64).reshape(-1, 3)
        return {"units/t_begin": units[:, 0], "units/t_end": units[:, 1], "units/kind": units[:, 2].astype(np.int8)}


class LogMel(SignalStage):
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

    def columns(self, inputs):
        return {"frames/logmel": Column(np.float32, (self.n_mels,))}

    def compute(self, i, clip, inputs):
        from features.audio import logmel

        return logmel(y=inputs["samples"](i), sr=inputs["sr"], n_mels=self.n_mels, fmin=self.fmin, fmax=self.fmax,
                      frame_ms=self.frame_ms, hop_ms=self.hop_ms, n_fft=self.n_fft or None, floor=self.log_floor,
                      scale=self.signal_scale)

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
        mel = store.ShardReader(self.output().path)  # a clip's rows of frames/logmel at a time
        try:
            for i, s in enumerate(status):
                a, b = int(offsets[i]), int(offsets[i + 1])
                if s == "ok" and b > a:
                    out[i] = floor_fraction(mel.logmel(i), voiced[a:b], floor=self.log_floor)
        finally:
            mel.close()
        return out


class Segment(ClipStage):
    """655 ms windows over voiced frames (AVEF §2.1.1 "Segmenting"; rule in ``features.segments``)."""

    STAGE = "segment"
    window_frames = luigi.IntParameter(default=64, description="frames per window (AVEF: 64 = 655 ms)")
    hop_frames = luigi.IntParameter(default=34, description="window hop in frames (AVEF: 64 − 30 overlap)")
    keep_silent = luigi.BoolParameter(default=False, description="lay windows over all frames, weight 0 if silent")
    READS = {"vad": ("vad",), "prosody": ("units",), "logmel": ("frames/offsets",)}  # the frame grid, not the spectra

    def requires(self):
        return {"vad": self.clone(VAD), "prosody": self.clone(Prosody), "logmel": self.clone(LogMel)}

    def start_status(self, inputs):
        """LogMel's status, then the first failure along the chain (VAD, then Prosody)."""
        status, reason = list(inputs["logmel"]["clips"]["status"]), list(inputs["logmel"]["clips"]["reason"])
        for src in (inputs["vad"], inputs["prosody"]):
            for i, s in enumerate(src["clips"]["status"]):
                if status[i] == "ok" and s != "ok":
                    status[i], reason[i] = s, src["clips"]["reason"][i]
        return status, reason

    def open_inputs(self, inputs, stack):
        from features import segments

        vad = inputs["vad"]
        inputs["grid"] = grid = {k: getattr(self.requires()["logmel"], k) for k in ("frame_ms", "hop_ms")}
        inputs["n_frames"] = n_frames = np.diff(inputs["logmel"]["frames"]["offsets"])
        vad_ok = vad["clips"]["status"] == "ok"
        inputs["voiced"] = [segments.frame_weights(clip_rows(vad["vad"], "weight", i), n_frames=int(n), **grid)
                            if vad_ok[i] else np.zeros(int(n), np.uint8) for i, n in enumerate(n_frames)]

    def columns(self, inputs):
        return {"windows/frames": Column(np.int32, (self.window_frames,)), "windows/weight": Column(np.uint8),
                "windows/unit": Column(np.int32), "windows/t_begin": Column(np.float32),
                "windows/t_end": Column(np.float32)}

    def compute(self, i, clip, inputs):
        from features import segments

        grid, pros = inputs["grid"], inputs["prosody"]
        units = np.stack([clip_rows(pros["units"], k, i) for k in ("t_begin", "t_end", "kind")], axis=1)
        frames, weight = segments.place_windows(weights=inputs["voiced"][i], window_frames=self.window_frames,
                                                hop_frames=self.hop_frames, keep_silent=self.keep_silent)
        t = segments.frame_times(int(inputs["n_frames"][i]), **grid)
        return {"windows/frames": frames, "windows/weight": weight,
                "windows/unit": segments.window_units(frames, units=units, **grid),
                "windows/t_begin": t[frames[:, 0], 0], "windows/t_end": t[frames[:, -1], 1]}

    def finish(self, groups, results, inputs):
        from features import store

        w = groups["windows"]
        w["clip"] = np.repeat(np.arange(len(results)), np.diff(w["offsets"])).astype(np.int32)
        w["contiguous"] = (w["frames"][:, -1] - w["frames"][:, 0] == self.window_frames - 1).astype(np.uint8)
        groups["frames"] = {"voiced": store.pack(inputs["voiced"], dtype=np.uint8)[0]}
