import numpy as np
import pytest
import scipy.signal

from features import ClipError, ParameterError
from features.audio import (decode, deltas, frame_length, logmel, mixdown, n_frames, preemphasis,
                            read_audio, resample, window_image)


def test_preemphasis_is_the_difference_equation():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(1000).astype(np.float32)
    expected = x - 0.97 * np.concatenate([[0.0], x[:-1]])
    np.testing.assert_allclose(preemphasis(x, coef=0.97), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(preemphasis(x, coef=0.0), x)


@pytest.mark.parametrize("coef", [-0.1, 1.5])
def test_preemphasis_rejects_coefficients_outside_unit_interval(coef):
    with pytest.raises(ParameterError, match=r"\[0, 1\]"):
        preemphasis(np.zeros(10), coef=coef)


def test_mixdown_is_the_channel_mean():
    x = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, -1.0]], np.float32)
    np.testing.assert_allclose(mixdown(x), [2.0, 2.0, 1.0])
    with pytest.raises(ParameterError):
        mixdown(np.zeros(5))


def test_resample_keeps_a_tone_and_the_duration():
    sr0 = 48000
    t = np.arange(sr0) / sr0
    y = resample(np.sin(2 * np.pi * 440 * t).astype(np.float32), orig_sr=sr0, sr=16000)
    assert y.shape == (16000,)
    spectrum = np.abs(np.fft.rfft(y))
    assert np.argmax(spectrum) == 440  # 1 Hz bins for a 1 s signal


def test_logmel_matches_eq_2_1_computed_directly():
    """AVEF eq 2.1: log(melbank(64) · |rfft(hamming · frame)|² + 0.01), per 25 ms / 10 ms frame,
    the frame in 16-bit PCM units (the default scale, issue 18 item 2)."""
    import librosa

    rng = np.random.default_rng(1)
    sr = 16000
    y = (0.1 * rng.standard_normal(sr)).astype(np.float32)
    S = logmel(y=y, sr=sr)
    win, hop = 400, 160
    assert S.shape == (1 + (sr - win) // hop, 64)
    melbank = librosa.filters.mel(sr=sr, n_fft=win, n_mels=64, fmin=0.0, fmax=8000.0)
    window = scipy.signal.get_window("hamming", win, fftbins=True)
    for t in (0, 7, S.shape[0] - 1):
        frame = 32768.0 * y[t * hop: t * hop + win].astype(np.float64)
        power = np.abs(np.fft.rfft(window * frame)) ** 2
        np.testing.assert_allclose(S[t], np.log(melbank @ power + 0.01), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("sr,n_fft,n_mels,fmin,fmax", [(16000, 400, 64, 0.0, 8000.0), (16000, 512, 64, 125.0, 7500.0),
                                                       (8000, 200, 40, 0.0, 4000.0), (22050, 1024, 128, 30.0, 11025.0)])
def test_melbank_equals_librosa_slaney_filterbank(sr, n_fft, n_mels, fmin, fmax):
    import librosa

    from features.audio import melbank

    ref = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    np.testing.assert_allclose(melbank(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax), ref,
                               rtol=1e-5, atol=1e-8)


def test_front_end_equals_librosa():
    """The build avoids importing librosa; its pieces equal librosa's: soxr_hq resampling,
    pre-emphasis with zi = 0, and melspectrogram with a periodic Hamming window, no centring."""
    import librosa

    rng = np.random.default_rng(3)
    x = (0.1 * rng.standard_normal(48000 * 2)).astype(np.float32)
    y = resample(x, orig_sr=48000, sr=16000)
    np.testing.assert_allclose(y, librosa.resample(x, orig_sr=48000, target_sr=16000, res_type="soxr_hq"),
                               rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(preemphasis(y, coef=0.97), librosa.effects.preemphasis(y, coef=0.97, zi=0.0),
                               rtol=1e-6, atol=1e-7)
    M = librosa.feature.melspectrogram(y=32768 * y, sr=16000, n_fft=400, hop_length=160, win_length=400,
                                       window="hamming", center=False, power=2.0, n_mels=64, fmin=0.0, fmax=8000.0)
    np.testing.assert_allclose(logmel(y=y, sr=16000), np.log(M + 0.01).T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scale", [32768.0, 1.0])
def test_logmel_equals_librosa_at_the_new_and_the_old_scale(speech_16k, scale):
    """Issue 18 item 2: the default (samples × 32768, 16-bit PCM units) and the old scale (samples
    in [−1, 1], ``scale=1``, ``--LogMel-signal-scale 1``) are both librosa's Slaney melspectrogram
    (``htk=False, norm="slaney"``, its defaults) of the scaled samples, then log(· + 0.01)."""
    import librosa

    from features.audio import PCM16

    y = preemphasis(speech_16k)
    M = librosa.feature.melspectrogram(y=scale * y, sr=16000, n_fft=400, hop_length=160, win_length=400,
                                       window="hamming", center=False, power=2.0, n_mels=64, fmin=0.0,
                                       fmax=8000.0, htk=False, norm="slaney")
    S = logmel(y=y, sr=16000, scale=scale)
    np.testing.assert_allclose(S, np.log(M + 0.01).T, rtol=0, atol=1e-5)  # measured: ≤ 1.9e-6
    if scale == PCM16:
        np.testing.assert_array_equal(S, logmel(y=y, sr=16000))  # the default
        # a power of two folded into the window: exactly the log-mel of the multiplied samples
        np.testing.assert_array_equal(S, logmel(y=y * np.float32(scale), sr=16000, scale=1.0))


def speech_at(y, dbfs, voiced, *, dither=True, seed=0):
    """``y`` scaled to an active speech level of ``dbfs`` and, with ``dither``, recorded at 16 bits
    (TPDF dither of ±1 LSB, rounded to int16): the noise floor of any 16-bit recording.

    The level is the RMS of the samples of the VAD-voiced 25 ms frames (``voiced``) in dB re full
    scale (a ±1 square wave = 0 dB, ITU-T P.56's dBov): an approximation of P.56's active speech
    level (no P.56 implementation is installed; P.56 gates on an envelope with 200 ms hangover)."""
    frames = np.lib.stride_tricks.sliding_window_view(y.astype(np.float64), 400)[::160][:len(voiced)]
    level = 10 * np.log10(np.mean(frames[voiced.astype(bool)] ** 2))
    x = y.astype(np.float64) * 10 ** ((dbfs - level) / 20)
    if dither:
        rng = np.random.default_rng(seed)
        x = np.round(x * 32768 + rng.uniform(-0.5, 0.5, x.shape) + rng.uniform(-0.5, 0.5, x.shape)) / 32768
    return x.astype(np.float32)


@pytest.mark.parametrize("dbfs", [-26.0, -46.0])
def test_logmel_floor_binds_on_few_voiced_cells_at_pcm16_scale(speech_16k, dbfs):
    """Issue 18 item 2, measured on espeak-ng speech (``speech_16k``) through the pipeline's chain
    (pre-emphasis 0.97, VAD voiced frames, eq 2.1): the fraction of voiced (frame, band) cells
    whose mel power is below the +0.01 floor.

    16-bit speech (dithered): new default 0.76 % at −26 dBFS, 0.83 % at −46 dBFS (0.89 % at −56;
    the lowest bands, < 400 Hz, of voiced-labelled frames that hold only the dither); old ±1 scale
    93.4 % and 100 %. espeak's own output has digital zeros in its pauses, 6.8-7.2 % of the
    VAD-voiced frames: there the floor binds in every band at any scale (7.1 % and 7.8 % of the
    cells in all), and on 0.34 % and 0.71 % of the cells of the other voiced frames."""
    from features.audio import floor_fraction
    from features.segments import frame_weights
    from features.vad import vad_weights

    n = 1 + (len(speech_16k) - 400) // 160
    voiced = frame_weights(vad_weights(y=preemphasis(speech_16k), sr=16000), n_frames=n)
    assert 400 < voiced.sum() < n
    y = preemphasis(speech_at(speech_16k, dbfs, voiced))
    new, old = logmel(y=y, sr=16000), logmel(y=y, sr=16000, scale=1.0)
    assert floor_fraction(new, voiced) < 0.02
    assert floor_fraction(old, voiced) > 0.9
    # without a noise floor: the floor binds in the digitally silent frames, rarely elsewhere
    z = preemphasis(speech_at(speech_16k, dbfs, voiced, dither=False))
    S = logmel(y=z, sr=16000)
    silent = S.max(axis=1) < np.log(0.02)  # every band floored: a frame of (digital) silence
    assert 0.05 < floor_fraction(S, voiced) < 0.1
    assert floor_fraction(S[~silent], voiced[~silent]) < 0.02


def test_floor_fraction_counts_voiced_cells_below_the_floor():
    from features.audio import floor_fraction

    S = np.log(np.array([[0.0, 0.0099], [0.0101, 5.0], [0.0, 0.0]]) + 0.01).astype(np.float32)
    assert floor_fraction(S, np.array([1, 1, 0])) == 0.5
    assert floor_fraction(S, np.array([0, 0, 1])) == 1.0
    half = np.log(np.array([[0.0], [0.0049], [0.0051]]) + 0.005).astype(np.float32)
    assert floor_fraction(half, np.ones(3), floor=0.005) == 2 / 3
    assert np.isnan(floor_fraction(S, np.zeros(3)))
    with pytest.raises(ParameterError, match="voiced weights"):
        floor_fraction(S, np.ones(2))


def test_the_audio_chain_does_not_import_librosa_or_scipy():
    """Several seconds of start-up per build on a 2-core machine (bench/bench_audio_chain.py)."""
    import subprocess
    import sys

    code = ("import sys, numpy as np; from features.audio import warm_up; warm_up();"
            "from features.embeddings import deemphasis; deemphasis(np.ones(100));"
            "print(sorted(m for m in ('librosa', 'scipy', 'numba') if m in sys.modules))")
    root = __file__.rsplit("/tests/", 1)[0]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == "[]"


def test_logmel_of_silence_is_log_of_the_floor():
    S = logmel(y=np.zeros(16000, np.float32), sr=16000)
    np.testing.assert_allclose(S, np.log(0.01), rtol=1e-6)


@pytest.mark.parametrize("kwargs, rule", [
    ({"fmax": 9000.0}, "Nyquist"), ({"fmin": 8000.0}, "fmin < fmax"), ({"floor": 0.0}, "positive"),
    ({"frame_ms": 25.03}, "whole number"), ({"n_fft": 100}, "shorter"), ({"scale": 0.0}, "scale"),
    ({"scale": float("inf")}, "scale"),
])
def test_logmel_parameter_rules(kwargs, rule):
    with pytest.raises(ParameterError, match=rule):
        logmel(y=np.zeros(16000, np.float32), sr=16000, **kwargs)


def test_logmel_too_short_is_a_clip_error():
    with pytest.raises(ClipError) as err:
        logmel(y=np.zeros(100, np.float32), sr=16000)
    assert err.value.status == "too_short"


def test_deltas_follow_eq_2_2_by_hand():
    """d_t = Σ_{n=1..2} n (c_{t+n} − c_{t−n}) / (2 Σ n²), edges replicated; ΔΔ = Δ of Δ."""
    rng = np.random.default_rng(2)
    c = rng.standard_normal((64, 5)).astype(np.float32)  # (frames, mels)

    def eq22(x):
        p = np.concatenate([x[:1], x[:1], x, x[-1:], x[-1:]])
        return sum(n * (p[2 + n: 2 + n + len(x)] - p[2 - n: 2 - n + len(x)]) for n in (1, 2)) / 10.0

    out = deltas(c)
    assert out.shape == (64, 5, 3)
    np.testing.assert_allclose(out[..., 0], c)
    np.testing.assert_allclose(out[..., 1], eq22(c), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[..., 2], eq22(eq22(c)), rtol=1e-5, atol=1e-5)


def test_delta_of_a_ramp_is_its_slope_inside():
    ramp = np.tile(np.arange(64, dtype=np.float32)[:, None] * 0.5, (1, 3))
    d = deltas(ramp)[..., 1]
    np.testing.assert_allclose(d[2:-2], 0.5, rtol=1e-6)


def test_window_image_is_mel_by_time_by_three_and_batches():
    rng = np.random.default_rng(3)
    frames = rng.standard_normal((4, 64, 64)).astype(np.float32)  # (batch, time, mel)
    img = window_image(frames)
    assert img.shape == (4, 64, 64, 3)
    np.testing.assert_allclose(img[1, :, :, 0], frames[1].T)
    np.testing.assert_allclose(img[2], window_image(frames[2]), rtol=1e-6)


def test_frame_arithmetic():
    assert frame_length(sr=16000, ms=25) == 400
    assert n_frames(16000 * 655 // 1000, sr=16000) == 64  # 655 ms = 25 + 63 × 10
    assert n_frames(399, sr=16000) == 0


def _write_wav(path, x, sr):
    import av

    with av.open(str(path), "w") as out:
        layout = "mono" if x.shape[0] == 1 else "stereo"
        stream = out.add_stream("pcm_s16le", rate=sr, layout=layout)
        frame = av.AudioFrame.from_ndarray((x.T.reshape(1, -1) * 32767).astype(np.int16), format="s16",
                                           layout=layout)
        frame.sample_rate = sr
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


@pytest.mark.parametrize("sr", [8000, 22050, 44100, 48000])
@pytest.mark.parametrize("channels", [1, 2])
def test_decode_any_rate_and_layout_to_16k_mono(tmp_path, sr, channels):
    t = np.arange(sr) / sr
    left = 0.5 * np.sin(2 * np.pi * 300 * t)
    x = np.stack([left, -left if channels == 2 else left])[:channels]  # stereo: antiphase channels
    path = tmp_path / f"tone_{sr}_{channels}.wav"
    _write_wav(path, x, sr)
    raw, sr_read = read_audio(path)
    assert (raw.shape[0], sr_read) == (channels, sr)
    y, info = decode(path, sr=16000, coef=0.0)
    assert info == {"orig_sr": sr, "n_channels": channels, "duration_s": pytest.approx(1.0)}
    assert abs(len(y) - 16000) <= 1
    if channels == 2:  # the mean of opposite channels cancels
        assert np.max(np.abs(y)) < 1e-3
    else:
        assert np.max(np.abs(y)) == pytest.approx(0.5, abs=0.02)


def test_bad_files_raise_clip_errors_with_a_status(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF this is not audio at all" * 10)
    for path in (empty, junk, tmp_path / "missing.wav"):
        with pytest.raises(ClipError) as err:
            read_audio(path)
        assert err.value.status == "decode_error"
        assert str(path.name) in str(err.value) or "cannot open" in str(err.value)


def test_deltas_equal_librosa_delta_with_nearest_edges():
    import librosa

    rng = np.random.default_rng(4)
    S = rng.standard_normal((3, 64, 64)).astype(np.float32)
    out = deltas(S)
    d1 = librosa.feature.delta(S, width=5, axis=-2, mode="nearest")
    np.testing.assert_allclose(out[..., 1], d1, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out[..., 2], librosa.feature.delta(d1, width=5, axis=-2, mode="nearest"),
                               rtol=1e-4, atol=1e-5)


def test_float_planar_streams_read_as_through_the_resampler():
    """AAC decodes to float planar: read_audio takes those frames as they are, which must equal
    the samples that PyAV's resampler to fltp gives."""
    import os

    import av

    path = os.path.join(os.path.dirname(__file__), "..", "data", "demo", "clips", "s1_anger_01.mp4")
    x, sr = read_audio(path)
    with av.open(path) as c:
        stream = c.streams.audio[0]
        assert stream.format.name == "fltp" and stream.channels == 2
        resampler = av.AudioResampler(format="fltp", layout=stream.layout, rate=stream.rate)
        chunks = [o.to_ndarray() for f in c.decode(stream) for o in resampler.resample(f)]
        chunks += [o.to_ndarray() for o in resampler.resample(None)]
    ref = np.concatenate(chunks, axis=1)
    assert sr == 48000 and x.shape == ref.shape
    np.testing.assert_array_equal(x, ref)


# -- any channel layout (issue 19 item 1) ------------------------------------------------------------
CODECS = {"wav": ["-c:a", "pcm_s16le"], "flac": ["-c:a", "flac"], "m4a": ["-c:a", "aac"], "mp4": ["-c:a", "aac"]}


def _channels(n_channels, sr=48000, seconds=0.5):
    """Per channel a different tone below 120 Hz (the AAC encoder low-passes an LFE channel there)
    and amplitude: the mean of the channels is none of them."""
    t = np.arange(int(sr * seconds)) / sr
    return np.stack([(0.05 + 0.02 * c) * np.sin(2 * np.pi * (60 + 6 * c) * t + c)
                     for c in range(n_channels)]).astype(np.float32)


def _encode(path, x, sr, ext):
    """``x`` (channels, n) float32 through ffmpeg (its default layout for the channel count: 7.1 at 8)."""
    import subprocess

    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "f32le", "-ar", str(sr), "-ac", str(x.shape[0]),
                    "-i", "pipe:", *CODECS[ext], str(path)], input=np.ascontiguousarray(x.T).tobytes(), check=True)


@pytest.mark.parametrize("ext", ["wav", "flac", "m4a"])
@pytest.mark.parametrize("n_channels", [1, 2, 3, 4, 5, 6, 7, 8])
def test_every_channel_count_decodes_to_the_mean_of_the_channels(tmp_path, n_channels, ext):
    """8 channels (7.1) segfaulted in PyAV's ``AudioFrame.to_ndarray`` of planar frames."""
    sr = 48000
    x = _channels(n_channels, sr)
    path = tmp_path / f"ch{n_channels}.{ext}"
    _encode(path, x, sr, ext)
    raw, sr_read = read_audio(path)
    assert (raw.shape[0], sr_read) == (n_channels, sr)
    y, info = decode(path, sr=sr, coef=0.0)
    assert info["n_channels"] == n_channels and info["orig_sr"] == sr
    np.testing.assert_array_equal(y, raw.mean(axis=0, dtype=np.float64).astype(np.float32))
    mean = x.mean(axis=0)
    if ext != "m4a":  # lossless up to 16-bit quantisation
        assert len(y) == len(mean)
        np.testing.assert_allclose(y, mean, rtol=0, atol=1e-4)
        return
    # AAC: lossy and delayed by its priming samples; the best alignment is within 15 % of the mean
    seg = mean[4000:20000]
    err = min(np.sqrt(np.mean((y[4000 + lag:20000 + lag] - seg) ** 2)) for lag in range(0, 2048))
    assert err / np.sqrt(np.mean(seg ** 2)) < 0.15


def test_a_71_mp4_decodes_through_the_whole_chain(tmp_path):
    """The default chain (16 kHz, μ = 0.97) on 7.1 AAC in mp4 equals it on the decoded channels."""
    x = _channels(8, 48000, seconds=2.0)
    path = tmp_path / "surround.mp4"
    _encode(path, x, 48000, "mp4")
    raw, _ = read_audio(path)
    y, info = decode(path)
    assert info["n_channels"] == 8 and info["duration_s"] == pytest.approx(2.0, abs=0.05)
    np.testing.assert_array_equal(y, preemphasis(resample(mixdown(raw), orig_sr=48000, sr=16000), coef=0.97))


# -- streaming in blocks (issue 19 item 11) ----------------------------------------------------------
@pytest.mark.parametrize("orig_sr", [8000, 16000, 22050, 48000])
def test_the_chain_in_blocks_equals_the_chain_on_the_whole_signal(orig_sr):
    from features.audio import Chain

    rng = np.random.default_rng(orig_sr)
    x = (0.2 * rng.standard_normal((3, orig_sr * 3 + 123))).astype(np.float32)
    whole = preemphasis(resample(mixdown(x), orig_sr=orig_sr, sr=16000), coef=0.97)
    chain, out, a = Chain(orig_sr=orig_sr, sr=16000, coef=0.97), [], 0
    for size in rng.integers(1, 9000, size=10_000):  # odd block sizes, some of one sample
        if a >= x.shape[1]:
            break
        out.append(chain(x[:, a:a + size]))
        a += size
    out.append(chain.flush())
    blocks = np.concatenate(out)
    assert blocks.dtype == np.float32 and blocks.shape == whole.shape
    np.testing.assert_allclose(blocks, whole, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(blocks, whole)  # value for value, in fact: the stored data did not change


def test_decode_streams_a_long_file_to_the_same_samples(tmp_path):
    """A file of several decode blocks (``BLOCK``) gives the samples of the whole-array chain."""
    from features.audio import BLOCK

    sr = 44100
    noise = 0.01 * np.random.default_rng(5).standard_normal((3, sr * 4))
    x = _channels(3, sr, seconds=4.0) + noise.astype(np.float32)
    path = tmp_path / "long.wav"
    _encode(path, x, sr, "wav")
    raw, _ = read_audio(path)
    assert raw.shape[1] > 2 * BLOCK
    y, info = decode(path)
    np.testing.assert_array_equal(y, preemphasis(resample(mixdown(raw), orig_sr=sr, sr=16000), coef=0.97))
    assert info == {"orig_sr": sr, "n_channels": 3, "duration_s": pytest.approx(4.0)}


class _Sliced:
    """A 1-D sequence that only slices (like an HDF5 dataset), counting the samples read at once."""

    def __init__(self, y):
        self.y, self.shape, self.most = y, y.shape, 0

    def __len__(self):
        return len(self.y)

    def __getitem__(self, sel):
        out = self.y[sel]
        self.most = max(self.most, out.size)
        return out


def test_logmel_in_blocks_equals_logmel_at_once():
    rng = np.random.default_rng(6)
    y = (0.1 * rng.standard_normal(16000 * 50 + 77)).astype(np.float32)
    once = logmel(y=y, sr=16000, block=10 ** 9)
    for block in (4096, 1000, 777, 1):
        np.testing.assert_allclose(logmel(y=y, sr=16000, block=block), once, rtol=0, atol=1e-5)
    sliced = _Sliced(y)
    np.testing.assert_allclose(logmel(y=sliced, sr=16000, block=500), once, rtol=0, atol=1e-5)
    assert sliced.most == 499 * 160 + 400  # one block of frames at a time
    short = y[:16000 * 20]  # within one block: the very same matrix product as before
    np.testing.assert_array_equal(logmel(y=short, sr=16000), logmel(y=short, sr=16000, block=10 ** 9))


@pytest.mark.parametrize("frame_ms", [10, 20, 30])
def test_vad_in_blocks_equals_vad_at_once(speech_16k, monkeypatch, frame_ms):
    from features import vad

    y = np.concatenate([speech_16k] * 3)[:len(speech_16k) * 3 - 170]  # a remainder under one decision
    monkeypatch.setattr(vad, "BLOCK_STEPS", 10 ** 9)
    once = vad.vad_weights(y=y, sr=16000, frame_ms=frame_ms)
    monkeypatch.setattr(vad, "BLOCK_STEPS", 60)
    sliced = _Sliced(y)
    np.testing.assert_array_equal(vad.vad_weights(y=sliced, sr=16000, frame_ms=frame_ms), once)
    assert sliced.most == 60 * 160
    assert 0 < once.mean() < 1


def test_prosody_of_a_long_clip_copied_into_praat_in_blocks(speech_16k, monkeypatch):
    """Above ``DIRECT_SAMPLES`` the Praat Sound is made empty and filled a block at a time: no
    float64 copy of the clip; the same samples, the same units."""
    from features import prosody

    once = prosody.prosodic_units(y=speech_16k, sr=16000)
    sound = prosody.praat_sound(speech_16k, 16000)
    monkeypatch.setattr(prosody, "DIRECT_SAMPLES", 0)
    monkeypatch.setattr(prosody, "BLOCK", 1000)
    filled = prosody.praat_sound(_Sliced(speech_16k), 16000)
    np.testing.assert_array_equal(filled.values, sound.values)
    assert (filled.xmin, filled.nx, filled.dx, filled.x1) == (sound.xmin, sound.nx, sound.dx, sound.x1)
    assert filled.xmax == pytest.approx(sound.xmax, rel=1e-15)
    np.testing.assert_allclose(prosody.prosodic_units(y=_Sliced(speech_16k), sr=16000), once, rtol=0, atol=1e-9)
    silent = _Sliced(np.zeros(16000 * 3, np.float32))
    np.testing.assert_array_equal(prosody.prosodic_units(y=silent, sr=16000), [[0.0, 3.0, prosody.SILENCE]])
    assert silent.most == 1000  # silence is found a block at a time, never converted whole
