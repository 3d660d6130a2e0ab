"""Audio decoding and the AVEF audio front end.

Ma et al., "Audio-visual emotion fusion (AVEF)", Information Fusion 2019 (``shared/papers/004``),
§2.1.1: mono mixdown X^S(n) = 1/Ch · Σ_c x_c(n), pre-emphasis x_p(n) = x(n) − μ·x(n−1) with
μ = 0.97, 25 ms Hamming frames with a 10 ms shift, and per frame (eq 2.1)

    MelSpectrogram_t = log(melbank(64) · |rfft(frame_t)|² + 0.01),   melbank over 0-8000 Hz,

with the samples in 16-bit PCM units (``logmel(scale=PCM16)``, x · 2^15; issue 18 item 2: see
``logmel``), then first and second differentials (eq 2.2, N = 2) inside each 655 ms window (64 frames):

    d_t = Σ_{n=1..N} n (c_{t+n} − c_{t−n}) / (2 Σ_{n=1..N} n²).
"""
from __future__ import annotations

import functools
import os

import numpy as np

from features.errors import ClipError, ParameterError


#: Samples per block of the streaming chain (decode → mixdown → resample → pre-emphasis): a long
#: clip is never held whole at the source rate, in float64 or with all its channels (issue 19
#: item 11: a 2-hour 8 kHz wav took 6.8 GB); 64 Ki samples keep the per-block Python overhead small.
BLOCK = 1 << 16


class AudioSource:
    """The first audio stream of a file PyAV reads (mp4, avi, wav, flac, ...), decoded block by block.

    ``with AudioSource(path) as src: for x in src.blocks(): ...`` yields (channels, n) float32
    blocks in [-1, 1] at the stream's own rate ``src.sr``; after the last block ``n_channels``
    and ``n_samples`` (per channel) are set.

    Every frame goes through PyAV's resampler to *packed* float (``flt``), never to planar:
    ``AudioFrame.planes`` (which ``to_ndarray()`` uses) counts planes by reading
    ``extended_data[]`` up to a NULL that is not there when a planar frame has 8 channels (the
    pointers fill ``AVFrame.data[8]`` and the loop runs into the next fields: a segfault, issue
    19 item 1, any 7.1 stream). A packed frame has one plane at any channel count; de-interleaving
    it is a transpose, and float planar → float packed changes no value (AAC and Opus decode to
    float planar).

    Raises ``ClipError`` with status ``decode_error`` (unreadable or zero-byte file),
    ``no_audio_stream``, ``truncated`` (decoding fails part-way, or stops well before the declared
    duration) or ``empty_audio`` (no samples), the last two at the end of ``blocks()``.
    """

    def __init__(self, path: str | os.PathLike):
        import av

        self.path = os.fspath(path)
        try:
            self._container = av.open(self.path)
        except (av.FFmpegError, OSError) as err:
            raise ClipError("decode_error", f"cannot open {self.path!r}: {err}") from None
        if not self._container.streams.audio:
            self._container.close()
            raise ClipError("no_audio_stream", "the file has no audio stream")
        self._stream = self._container.streams.audio[0]
        self.sr = int(self._stream.rate or self._stream.codec_context.sample_rate)
        self.n_channels = 0
        self.n_samples = 0

    def __enter__(self) -> "AudioSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._container.close()

    def declared_duration(self) -> float | None:
        return _declared_duration(self._container, self._stream)

    def blocks(self, block: int = BLOCK):
        """(channels, n) float32 C-contiguous blocks of about ``block`` samples (the last one shorter)."""
        import av

        resampler = av.AudioResampler(format="flt", layout=self._stream.layout, rate=self.sr)
        pending, n_pending = [], 0
        try:
            for frame in self._container.decode(self._stream):
                for out in resampler.resample(frame):
                    pending.append(_packed(out))
                    n_pending += pending[-1].shape[0]
                if n_pending >= block:
                    yield self._take(pending)
                    pending, n_pending = [], 0
            for out in resampler.resample(None):
                pending.append(_packed(out))
                n_pending += pending[-1].shape[0]
        except av.FFmpegError as err:
            got = self.n_samples + n_pending
            if got:  # data stopped in the middle of the stream
                raise ClipError("truncated", f"audio decoding stopped after {got / self.sr:.2f} s: {err}") from None
            raise ClipError("decode_error", f"audio decoding failed: {err}") from None
        if n_pending:
            yield self._take(pending)
        if not self.n_samples:
            raise ClipError("empty_audio", "the audio stream holds no samples")
        declared, decoded = self.declared_duration(), self.n_samples / self.sr
        if declared is not None and decoded < 0.9 * declared - 0.1:
            raise ClipError("truncated", f"decoded {decoded:.2f} s of a declared {declared:.2f} s")

    def _take(self, pending: list) -> np.ndarray:
        x = pending[0] if len(pending) == 1 else np.concatenate(pending)
        self.n_channels = x.shape[1]
        self.n_samples += x.shape[0]
        return np.ascontiguousarray(x.T)


def _packed(frame) -> np.ndarray:
    """(n, channels) float32 view of a packed ``flt`` frame (one plane: safe at any channel count)."""
    return frame.to_ndarray().reshape(frame.samples, frame.layout.nb_channels)


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Decode the first audio stream of any file PyAV reads (mp4, avi, wav, ...), whole.

    Returns
    -------
    x : np.ndarray, shape (channels, n_samples), float32 in [-1, 1]
    sr : int, the stream's own sample rate in Hz

    Raises ``ClipError`` as ``AudioSource`` does. ``decode`` streams instead (a long clip is never
    held whole at the source rate).
    """
    with AudioSource(path) as src:
        blocks = list(src.blocks())
    return (blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=1)), src.sr


def _declared_duration(container, stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1e6
    return None


def mixdown(x: np.ndarray) -> np.ndarray:
    """Mono mixdown, the mean of the channels (AVEF §2.1.1): (channels, n) -> (n,)."""
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] < 1:
        raise ParameterError(f"x must have shape (channels, n_samples), got {x.shape}")
    return x.mean(axis=0, dtype=np.float64).astype(np.float32)


def _check_rates(orig_sr: int, sr: int) -> None:
    if orig_sr <= 0 or sr <= 0:
        raise ParameterError(f"sample rates must be positive, got orig_sr={orig_sr}, sr={sr}")


def resample(y: np.ndarray, *, orig_sr: int, sr: int) -> np.ndarray:
    """Resample a mono signal with soxr's "HQ" filter (what ``librosa.resample(res_type="soxr_hq")``
    calls, without importing librosa and scipy into every build); a no-op when the rates agree."""
    _check_rates(orig_sr, sr)
    y = np.asarray(y, dtype=np.float32)
    if orig_sr == sr:
        return y
    import soxr

    return np.asarray(soxr.resample(y, orig_sr, sr, quality="HQ"), dtype=np.float32)


def _check_coef(coef: float) -> None:
    if not 0.0 <= coef <= 1.0:
        raise ParameterError(f"pre-emphasis coef must lie in [0, 1] (AVEF §2.1.1), got {coef}")


def preemphasis(y: np.ndarray, *, coef: float = 0.97) -> np.ndarray:
    """x_p(n) = x(n) − coef·x(n−1) with x(−1) = 0 (AVEF §2.1.1, μ = 0.97); coef = 0 is a no-op.

    The same as ``librosa.effects.preemphasis(y, coef=coef, zi=0)`` (tests compare them)."""
    _check_coef(coef)
    return _preemphasis(np.asarray(y, dtype=np.float32), coef, None)


def _preemphasis(y: np.ndarray, coef: float, prev) -> np.ndarray:
    """Pre-emphasis of a block whose previous sample was ``prev`` (None: the first block, x(−1) = 0);
    the same float32 operations, sample by sample, as on the whole signal."""
    out = y.copy()
    if coef == 0.0 or y.size == 0:
        return out
    out[1:] -= np.float32(coef) * y[:-1]
    if prev is not None:
        out[0] -= np.float32(coef) * prev
    return out


class Chain:
    """The AVEF §2.1.1 chain after decoding, block by block: mix down, resample ``orig_sr`` → ``sr``
    (soxr "HQ", streaming), pre-emphasise. ``chain(x)`` takes a (channels, n) block and returns the
    float32 output it completes (possibly empty: the resampler's delay); ``chain.flush()`` the rest.

    The concatenated output equals ``preemphasis(resample(mixdown(x), ...), coef)`` on the whole
    signal, value for value (soxr's stream gives the samples of its one-shot call; mixdown and
    pre-emphasis are per sample; a test checks it with odd block sizes).
    """

    def __init__(self, *, orig_sr: int, sr: int, coef: float = 0.97):
        _check_rates(orig_sr, sr)
        _check_coef(coef)
        self.coef = coef
        self._prev = None
        self._soxr = None
        if orig_sr != sr:
            import soxr

            self._soxr = soxr.ResampleStream(orig_sr, sr, 1, dtype="float32", quality="HQ")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y = mixdown(x)
        if self._soxr is not None:
            y = self._soxr.resample_chunk(y, last=False)
        return self._emphasise(y)

    def flush(self) -> np.ndarray:
        if self._soxr is None:
            return np.zeros(0, np.float32)
        return self._emphasise(self._soxr.resample_chunk(np.zeros(0, np.float32), last=True))

    def _emphasise(self, y: np.ndarray) -> np.ndarray:
        y = np.asarray(y, dtype=np.float32)
        out = _preemphasis(y, self.coef, self._prev)
        if y.size:
            self._prev = y[-1]
        return out


def decode_to(path: str | os.PathLike, sink, *, sr: int = 16000, coef: float = 0.97) -> dict:
    """The whole AVEF §2.1.1 input chain, streaming: read, mix down, resample to ``sr``, pre-emphasise,
    and hand each finished float32 block to ``sink(block)`` (blocks of ~``BLOCK`` source samples).

    Returns facts about the source (``orig_sr``, ``n_channels``, ``duration_s``). Memory stays at a
    few blocks whatever the clip's length. Raises ``ClipError`` as ``AudioSource`` does (blocks may
    have reached ``sink`` before a ``truncated`` error).
    """
    _check_rates(1, sr)
    _check_coef(coef)
    with AudioSource(path) as src:
        chain = Chain(orig_sr=src.sr, sr=sr, coef=coef)
        for x in src.blocks():
            y = chain(x)
            if y.size:
                sink(y)
        y = chain.flush()
        if y.size:
            sink(y)
    return {"orig_sr": src.sr, "n_channels": src.n_channels, "duration_s": src.n_samples / src.sr}


def decode(path: str | os.PathLike, *, sr: int = 16000, coef: float = 0.97) -> tuple[np.ndarray, dict]:
    """The whole AVEF §2.1.1 input chain: read, mix down, resample to ``sr``, pre-emphasise.

    Returns the float32 signal at ``sr`` and facts about the source
    (``orig_sr``, ``n_channels``, ``duration_s``). Streams (``decode_to``): at most twice the
    output's memory (its blocks, then the whole), never the source's at float64.
    """
    blocks = []
    info = decode_to(path, blocks.append, sr=sr, coef=coef)
    y = blocks[0] if len(blocks) == 1 else np.concatenate(blocks) if blocks else np.zeros(0, np.float32)
    return y, info


def frame_length(*, sr: int, ms: float) -> int:
    """Samples in ``ms`` milliseconds at ``sr`` Hz (must be a whole number)."""
    n = sr * ms / 1000.0
    if n <= 0 or abs(n - round(n)) > 1e-9:
        raise ParameterError(f"{ms} ms at sr={sr} Hz is not a whole number of samples ({n})")
    return int(round(n))


def n_frames(n_samples: int, *, sr: int, frame_ms: float = 25.0, hop_ms: float = 10.0) -> int:
    """Number of whole frames (no padding): 1 + (n_samples − frame) // hop, or 0."""
    win, hop = frame_length(sr=sr, ms=frame_ms), frame_length(sr=sr, ms=hop_ms)
    return 0 if n_samples < win else 1 + (n_samples - win) // hop


#: Frames per block of ``logmel`` (41 s at a 10 ms hop): the Hamming-windowed frames, their complex128
#: rfft and power of a block take ~40 MB; the whole clip at once took ~7 GB per hour of audio.
LOGMEL_BLOCK = 4096


#: The default sample scale of ``logmel``: samples in 16-bit PCM units (x · 2^15, full scale ±32768)
#: instead of [−1, 1]. Eq 2.1 adds 0.01 "to prevent taking the logarithm for 0" and gives no scale;
#: on a ±1 signal with the Slaney area-normalised filterbank (weights ≤ 0.021) the +0.01 exceeded
#: the mel power of 93 % of the voiced (frame, band) cells of speech at −26 dBFS active speech
#: level and of 100 % at −46 dBFS (issue 18 item 2). At 2^15 (the integer samples a 16-bit wav
#: holds, e.g. as ``scipy.io.wavfile.read`` returns them) it exceeds < 1 % of them at −26, −46 and
#: −56 dBFS on 16-bit speech (espeak-ng and the demo corpus, dithered to 16 bits; the level is the
#: RMS over the VAD-voiced frames, an approximation of ITU-T P.56's active speech level;
#: ``tests/features/test_audio.py::test_logmel_floor_binds_on_few_voiced_cells_at_pcm16_scale``).
#: The floor then binds only where there is no signal: on digital silence, and in the lowest bands
#: (< 400 Hz, where pre-emphasis takes 20-30 dB) of voiced-labelled frames that hold only the
#: recording's noise floor: what the paper adds it for. A power of two, so the scaled values are
#: exactly those of the samples multiplied by it. Un-normalised (peak-1) filters on the ±1 signal
#: were measured too and do not suffice (61 % of the cells at −26 dBFS, 93 % at −46 dBFS).
PCM16 = 32768.0


def logmel(*, y: np.ndarray, sr: int, n_mels: int = 64, fmin: float = 0.0, fmax: float = 8000.0,
           frame_ms: float = 25.0, hop_ms: float = 10.0, n_fft: int | None = None,
           floor: float = 0.01, scale: float = PCM16, block: int = LOGMEL_BLOCK) -> np.ndarray:
    """Frame-level log-mel spectrum, AVEF eq 2.1: log(melbank · |rfft(hamming · scale · frame)|² + floor).

    Frames are ``frame_ms`` long every ``hop_ms`` with no padding (frame t covers samples
    [t·hop, t·hop + frame)); ``n_fft`` defaults to the frame length (the rfft of the frame itself);
    the window is the periodic Hamming window and the filterbank ``melbank`` (both equal to what
    ``librosa.feature.melspectrogram(y=scale * y, ..., window="hamming", center=False)`` uses).

    ``scale`` multiplies the samples (``y`` in [−1, 1]) before eq 2.1: ``PCM16`` = 32768 (default,
    16-bit PCM units, see ``PCM16`` for the measurements) or 1.0, the scale used before issue 18
    item 2 (the floor then binds on most cells of speech). It is folded into the window, so a power
    of two changes no rounding: ``logmel(y=y, scale=s) == logmel(y=s * y, scale=1)`` exactly.

    The frames are processed ``block`` at a time (``LOGMEL_BLOCK``), each block read from ``y`` by
    slicing, so ``y`` may be any 1-D sequence that slices to arrays (an HDF5 dataset); the values
    equal the whole clip's at once up to BLAS rounding of the mel product (rows of one matrix
    product may take other kernels than rows of another: ≤ 1e-6 apart, a test checks 1e-5).

    Returns
    -------
    S : np.ndarray, shape (n_frames, n_mels), float32 — frame-major, one row per 10 ms frame.
    """
    if fmax > sr / 2:
        raise ParameterError(f"fmax={fmax} Hz lies above the Nyquist frequency {sr / 2} Hz")
    if not 0 <= fmin < fmax:
        raise ParameterError(f"need 0 <= fmin < fmax, got fmin={fmin}, fmax={fmax}")
    if floor <= 0:
        raise ParameterError(f"the log floor must be positive (AVEF eq 2.1 uses 0.01), got {floor}")
    if not (np.isfinite(scale) and scale > 0):
        raise ParameterError(f"the sample scale must be positive and finite ({PCM16:.0f} = 16-bit PCM units, "
                             f"1 = [-1, 1]), got {scale}")
    win, hop = frame_length(sr=sr, ms=frame_ms), frame_length(sr=sr, ms=hop_ms)
    n_fft = n_fft or win
    if n_fft < win:
        raise ParameterError(f"n_fft={n_fft} is shorter than the {win}-sample frame")
    if block < 1:
        raise ParameterError(f"block must be >= 1 frame, got {block}")
    if isinstance(y, (list, tuple)):
        y = np.asarray(y, dtype=np.float32)
    n = len(y)
    if n < win:
        raise ClipError("too_short", f"{n} samples is shorter than one {frame_ms} ms frame")
    total = 1 + (n - win) // hop
    window = hamming(win) * float(scale)  # float64: the frames' FFT is complex128
    bank = melbank(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax).T
    S = np.empty((total, n_mels), dtype=np.float32)
    for a in range(0, total, block):
        b = min(total, a + block)
        seg = np.asarray(y[a * hop:(b - 1) * hop + win], dtype=np.float32)
        frames = np.lib.stride_tricks.sliding_window_view(seg, win)[::hop]
        power = np.abs(np.fft.rfft(frames * window, n=n_fft, axis=1)) ** 2
        np.log(power.astype(np.float32) @ bank + np.float32(floor), out=S[a:b])
    return S


def floor_fraction(S: np.ndarray, voiced: np.ndarray, *, floor: float = 0.01) -> float:
    """The fraction of the (frame, band) cells of the voiced frames where eq 2.1's floor binds: the
    mel power is below ``floor`` (so the stored log(power + floor) < log(2 · floor), the test made
    on ``S``). NaN when no frame is voiced. ``S``: (n_frames, n_mels) from ``logmel``; ``voiced``:
    (n_frames,) 0/1 (``features.segments.frame_weights``). Issue 18 item 2: 82-97 % of the demo's
    voiced cells at the old ±1 scale, 3.8-9.2 % at ``PCM16`` (nearly all in frames of digital
    silence that the VAD counts as voiced: espeak's pauses)."""
    v = np.asarray(voiced).astype(bool)
    if len(v) != len(S):
        raise ParameterError(f"{len(v)} voiced weights for {len(S)} log-mel frames")
    if not v.any():
        return float("nan")
    return float(np.mean(np.asarray(S)[v] < np.float32(np.log(2.0 * floor))))


@functools.lru_cache(maxsize=8)
def hamming(n: int) -> np.ndarray:
    """The periodic Hamming window of ``n`` samples (``scipy.signal.get_window("hamming", n)``, as
    librosa's STFT uses it): 0.54 − 0.46·cos(2πk/n), k = 0..n−1, float64 (read-only).

    float64, and so the frames' FFT too: with a float32 window the cells 50 dB or more below their
    frame's loudest band differed from librosa's by up to 1e-4 in the log, which the +0.01 floor
    hid at the old ±1 scale and no longer hides at ``PCM16`` (issue 18 item 2); now ≤ 2e-6."""
    w = 0.54 - 0.46 * np.cos(2 * np.pi * np.arange(n) / n)
    w.flags.writeable = False
    return w


def _hz_to_mel(f):
    """Slaney's mel scale (Auditory Toolbox; librosa's default, ``htk=False``): linear below
    1 kHz (200/3 Hz per mel), logarithmic above (27 mels per factor 6.4)."""
    f = np.asarray(f, dtype=np.float64)
    lin, logstep = f / (200.0 / 3), np.log(6.4) / 27.0
    return np.where(f >= 1000.0, 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / logstep, lin)


def _mel_to_hz(m):
    m = np.asarray(m, dtype=np.float64)
    return np.where(m >= 15.0, 1000.0 * np.exp(np.log(6.4) / 27.0 * (m - 15.0)), m * 200.0 / 3)


@functools.lru_cache(maxsize=8)
def melbank(*, sr: int, n_fft: int, n_mels: int = 64, fmin: float = 0.0, fmax: float = 8000.0) -> np.ndarray:
    """The (n_mels, 1 + n_fft // 2) triangular mel filterbank of AVEF eq 2.1: Slaney mel scale and
    Slaney area normalisation, equal to ``librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels,
    fmin=fmin, fmax=fmax)`` (a test compares them); written out so a build does not import librosa
    (and scipy.signal, numba) in every process: several seconds of start-up on this machine."""
    fft_f = np.fft.rfftfreq(n_fft, d=1.0 / sr)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    ramps = mel_f[:, None] - fft_f[None, :]
    fdiff = np.diff(mel_f)[:, None]
    lower, upper = -ramps[:-2] / fdiff[:-1], ramps[2:] / fdiff[1:]
    weights = np.maximum(0.0, np.minimum(lower, upper)) * (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]
    weights = weights.astype(np.float32)
    weights.flags.writeable = False
    return weights


def deltas(S: np.ndarray, *, N: int = 2, axis: int = -2) -> np.ndarray:
    """Stack (S, Δ, ΔΔ) on a new last axis, AVEF eq 2.2 with edges replicated.

    Δ is eq 2.2 along ``axis`` (time); ΔΔ applies eq 2.2 to Δ ("computed in the same way").
    Frames beyond the ends repeat the edge frame, so a window's differentials use only its own
    frames (the same as ``librosa.feature.delta(width=2N+1, mode="nearest")``, without its
    per-call filter design, which costs more than the window). ``S`` may carry leading batch
    axes, e.g. (batch, 64 frames, 64 mels).
    """
    if N < 1:
        raise ParameterError(f"N must be >= 1 (AVEF eq 2.2 uses N = 2), got {N}")
    S = np.asarray(S, dtype=np.float32)
    axis = axis % S.ndim
    c = np.moveaxis(S, axis, -1)
    out = np.empty(c.shape + (3,), dtype=np.float32)
    out[..., 0] = c
    out[..., 1] = _delta(c, N)
    out[..., 2] = _delta(out[..., 1], N)
    return np.moveaxis(out, -2, axis)


def _delta(c: np.ndarray, N: int) -> np.ndarray:
    """Eq 2.2 along the last axis, the edge frames repeated N times."""
    T = c.shape[-1]
    p = np.empty(c.shape[:-1] + (T + 2 * N,), dtype=np.float32)
    p[..., N:N + T] = c
    p[..., :N] = c[..., :1]
    p[..., N + T:] = c[..., -1:]
    d = p[..., N + 1:N + 1 + T] - p[..., N - 1:N - 1 + T]
    for n in range(2, N + 1):
        d += n * (p[..., N + n:N + n + T] - p[..., N - n:N - n + T])
    d *= np.float32(1.0 / (2 * sum(n * n for n in range(1, N + 1))))
    return d


def window_image(frames: np.ndarray, *, N: int = 2) -> np.ndarray:
    """The 64×64×3 AVEF image of a window (or a batch of windows).

    ``frames``: (..., n_frames, n_mels) log-mel rows of the window's frames in time order.
    Returns (..., n_mels, n_frames, 3): height = mel band, width = time, channels = (S, Δ, ΔΔ),
    as in AVEF Fig. 3.
    """
    return deltas(np.swapaxes(frames, -1, -2), N=N, axis=-1)


def warm_up() -> None:
    """Import and JIT everything the audio chain uses, once, on a tiny signal.

    Called in the scheduling process before Luigi forks its workers, so that each task does not
    pay the imports of PyAV, soxr, webrtcvad and parselmouth again.
    """
    from features.prosody import prosodic_units
    from features.vad import vad_weights

    y = preemphasis(resample(np.zeros(4800, np.float32), orig_sr=48000, sr=16000))
    window_image(logmel(y=y, sr=16000)[:5])
    vad_weights(y=y, sr=16000)
    prosodic_units(y=y, sr=16000)
