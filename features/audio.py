"""Audio decoding and the AVEF audio front end.

Ma et al., "Audio-visual emotion fusion (AVEF)", Information Fusion 2019 (``shared/papers/004``),
§2.1.1: mono mixdown X^S(n) = 1/Ch · Σ_c x_c(n), pre-emphasis x_p(n) = x(n) − μ·x(n−1) with
μ = 0.97, 25 ms Hamming frames with a 10 ms shift, and per frame (eq 2.1)

    MelSpectrogram_t = log(melbank(64) · |rfft(frame_t)|² + 0.01),   melbank over 0-8000 Hz,

then first and second differentials (eq 2.2, N = 2) inside each 655 ms window (64 frames):

    d_t = Σ_{n=1..N} n (c_{t+n} − c_{t−n}) / (2 Σ_{n=1..N} n²).
"""
from __future__ import annotations

import functools
import os

import numpy as np

from features.errors import ClipError, ParameterError


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Decode the first audio stream of any file PyAV reads (mp4, avi, wav, ...).

    Returns
    -------
    x : np.ndarray, shape (channels, n_samples), float32 in [-1, 1]
    sr : int, the stream's own sample rate in Hz

    Raises ``ClipError`` with status ``decode_error`` (unreadable or zero-byte file),
    ``no_audio_stream``, ``truncated`` (decoding fails part-way, or stops well before the declared duration) or
    ``empty_audio`` (no samples).
    """
    import av

    try:
        container = av.open(os.fspath(path))
    except (av.FFmpegError, OSError) as err:
        raise ClipError("decode_error", f"cannot open {os.fspath(path)!r}: {err}") from None
    with container:
        if not container.streams.audio:
            raise ClipError("no_audio_stream", "the file has no audio stream")
        stream = container.streams.audio[0]
        sr = int(stream.rate or stream.codec_context.sample_rate)
        resampler = av.AudioResampler(format="fltp", layout=stream.layout, rate=sr)
        chunks = []
        try:
            for frame in container.decode(stream):
                if (frame.format.name == "fltp" and frame.rate == sr and stream.layout is not None
                        and frame.layout.name == stream.layout.name):
                    chunks.append(frame.to_ndarray())  # AAC and Opus decode to float planar already
                    continue
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray())
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray())
        except av.FFmpegError as err:
            if chunks:  # data stopped in the middle of the stream
                got = sum(c.shape[1] for c in chunks) / sr
                raise ClipError("truncated", f"audio decoding stopped after {got:.2f} s: {err}") from None
            raise ClipError("decode_error", f"audio decoding failed: {err}") from None
        declared = _declared_duration(container, stream)
    if not chunks:
        raise ClipError("empty_audio", "the audio stream holds no samples")
    x = np.concatenate(chunks, axis=1).astype(np.float32, copy=False)
    decoded = x.shape[1] / sr
    if declared is not None and decoded < 0.9 * declared - 0.1:
        raise ClipError("truncated", f"decoded {decoded:.2f} s of a declared {declared:.2f} s")
    return x, sr


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


def resample(y: np.ndarray, *, orig_sr: int, sr: int) -> np.ndarray:
    """Resample a mono signal with soxr's "HQ" filter (what ``librosa.resample(res_type="soxr_hq")``
    calls, without importing librosa and scipy into every build); a no-op when the rates agree."""
    if orig_sr <= 0 or sr <= 0:
        raise ParameterError(f"sample rates must be positive, got orig_sr={orig_sr}, sr={sr}")
    y = np.asarray(y, dtype=np.float32)
    if orig_sr == sr:
        return y
    import soxr

    return np.asarray(soxr.resample(y, orig_sr, sr, quality="HQ"), dtype=np.float32)


def preemphasis(y: np.ndarray, *, coef: float = 0.97) -> np.ndarray:
    """x_p(n) = x(n) − coef·x(n−1) with x(−1) = 0 (AVEF §2.1.1, μ = 0.97); coef = 0 is a no-op.

    The same as ``librosa.effects.preemphasis(y, coef=coef, zi=0)`` (tests compare them)."""
    if not 0.0 <= coef <= 1.0:
        raise ParameterError(f"pre-emphasis coef must lie in [0, 1] (AVEF §2.1.1), got {coef}")
    y = np.asarray(y, dtype=np.float32)
    if coef == 0.0 or y.size == 0:
        return y.copy()
    out = y.copy()
    out[1:] -= np.float32(coef) * y[:-1]
    return out


def decode(path: str | os.PathLike, *, sr: int = 16000, coef: float = 0.97) -> tuple[np.ndarray, dict]:
    """The whole AVEF §2.1.1 input chain: read, mix down, resample to ``sr``, pre-emphasise.

    Returns the float32 signal at ``sr`` and facts about the source
    (``orig_sr``, ``n_channels``, ``duration_s``).
    """
    x, orig_sr = read_audio(path)
    y = preemphasis(resample(mixdown(x), orig_sr=orig_sr, sr=sr), coef=coef)
    return y, {"orig_sr": orig_sr, "n_channels": int(x.shape[0]), "duration_s": x.shape[1] / orig_sr}


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


def logmel(*, y: np.ndarray, sr: int, n_mels: int = 64, fmin: float = 0.0, fmax: float = 8000.0,
           frame_ms: float = 25.0, hop_ms: float = 10.0, n_fft: int | None = None,
           floor: float = 0.01) -> np.ndarray:
    """Frame-level log-mel spectrum, AVEF eq 2.1: log(melbank · |rfft(hamming · frame)|² + floor).

    Frames are ``frame_ms`` long every ``hop_ms`` with no padding (frame t covers samples
    [t·hop, t·hop + frame)); ``n_fft`` defaults to the frame length (the rfft of the frame itself);
    the window is the periodic Hamming window and the filterbank ``melbank`` (both equal to what
    ``librosa.feature.melspectrogram(..., window="hamming", center=False)`` uses).

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
    win, hop = frame_length(sr=sr, ms=frame_ms), frame_length(sr=sr, ms=hop_ms)
    n_fft = n_fft or win
    if n_fft < win:
        raise ParameterError(f"n_fft={n_fft} is shorter than the {win}-sample frame")
    y = np.asarray(y, dtype=np.float32)
    if y.size < win:
        raise ClipError("too_short", f"{y.size} samples is shorter than one {frame_ms} ms frame")
    frames = np.lib.stride_tricks.sliding_window_view(y, win)[::hop]
    power = np.abs(np.fft.rfft(frames * hamming(win), n=n_fft, axis=1)) ** 2
    return np.log(power.astype(np.float32) @ melbank(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax).T
                  + np.float32(floor)).astype(np.float32)


@functools.lru_cache(maxsize=8)
def hamming(n: int) -> np.ndarray:
    """The periodic Hamming window of ``n`` samples (``scipy.signal.get_window("hamming", n)``, as
    librosa's STFT uses it): 0.54 − 0.46·cos(2πk/n), k = 0..n−1."""
    return (0.54 - 0.46 * np.cos(2 * np.pi * np.arange(n) / n)).astype(np.float32)


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
