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
    """AVEF eq 2.1: log(melbank(64) · |rfft(hamming · frame)|² + 0.01), per 25 ms / 10 ms frame."""
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
        frame = y[t * hop: t * hop + win].astype(np.float64)
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
    M = librosa.feature.melspectrogram(y=y, sr=16000, n_fft=400, hop_length=160, win_length=400, window="hamming",
                                       center=False, power=2.0, n_mels=64, fmin=0.0, fmax=8000.0)
    np.testing.assert_allclose(logmel(y=y, sr=16000), np.log(M + 0.01).T, rtol=1e-5, atol=1e-5)


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
    ({"frame_ms": 25.03}, "whole number"), ({"n_fft": 100}, "shorter"),
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
