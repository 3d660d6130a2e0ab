import numpy as np
import pytest

from features import ClipError, ParameterError
from features.prosody import NONVERBAL, SILENCE, VERBAL, prosodic_units


def test_units_tile_the_clip_and_find_the_pauses(speech_16k):
    sr = 16000
    units = prosodic_units(y=speech_16k, sr=sr)
    assert units[0, 0] == 0.0 and units[-1, 1] == pytest.approx(len(speech_16k) / sr)
    np.testing.assert_allclose(units[1:, 0], units[:-1, 1])  # no gaps, no overlaps
    kinds = units[:, 2]
    assert kinds[0] == SILENCE and kinds[-1] == SILENCE  # 0.5 s of digital silence each side
    assert units[0, 1] == pytest.approx(0.5, abs=0.06)
    assert np.sum(kinds == VERBAL) >= 2  # the sentence has a comma and a full stop
    inner_silences = units[1:-1][units[1:-1, 2] == SILENCE]
    assert len(inner_silences) >= 1


def test_unvoiced_noise_burst_is_nonverbal():
    sr = 16000
    rng = np.random.default_rng(0)
    t = np.arange(sr) / sr
    voiced = 0.3 * np.sign(np.sin(2 * np.pi * 150 * t)) * np.hanning(sr)  # a buzzy vowel, 150 Hz
    noise = 0.3 * rng.standard_normal(sr // 2) * np.hanning(sr // 2)        # a breath-like burst
    gap = np.zeros(sr // 2)
    y = np.concatenate([gap, voiced, gap, noise, gap])
    units = prosodic_units(y=y, sr=sr)
    sounding = units[units[:, 2] != SILENCE]
    assert sounding[0, 2] == VERBAL and sounding[-1, 2] == NONVERBAL
    assert sounding[-1, 0] == pytest.approx(2.0, abs=0.15)


def test_f0_reset_splits_a_verbal_unit():
    sr = 16000

    def tone(f0, seconds):
        t = np.arange(int(sr * seconds)) / sr
        return 0.3 * np.sign(np.sin(2 * np.pi * f0 * t))

    falling = np.concatenate([tone(f, 0.1) for f in np.linspace(220, 140, 8)])
    rising_again = np.concatenate([tone(f, 0.1) for f in np.linspace(230, 150, 8)])
    breath = 0.003 * np.random.default_rng(1).standard_normal(int(0.08 * sr))  # unvoiced, not silent
    y = np.concatenate([np.zeros(sr // 4), falling, breath, rising_again, np.zeros(sr // 4)])
    with_reset = prosodic_units(y=y, sr=sr, min_silence_s=0.2)
    without = prosodic_units(y=y, sr=sr, min_silence_s=0.2, reset_st=24.0)
    assert np.sum(with_reset[:, 2] == VERBAL) == np.sum(without[:, 2] == VERBAL) + 1


def test_silent_and_too_short_audio():
    units = prosodic_units(y=np.zeros(16000), sr=16000)
    np.testing.assert_array_equal(units, [[0.0, 1.0, SILENCE]])
    with pytest.raises(ClipError) as err:
        prosodic_units(y=np.ones(500), sr=16000)
    assert err.value.status == "too_short"
    with pytest.raises(ParameterError):
        prosodic_units(y=np.ones(16000), sr=16000, silence_db=5.0)


def test_silence_intervals_are_praats_to_textgrid_silences(speech_16k):
    """The unit boundaries that are not F0-reset cuts are the interval edges of Praat's own
    ``To TextGrid (silences)`` (read one by one here, with ``Get ... of interval``)."""
    import parselmouth
    from parselmouth.praat import call

    sound = parselmouth.Sound(np.asarray(speech_16k, np.float64), sampling_frequency=16000)
    grid = call(sound.to_intensity(minimum_pitch=100.0, time_step=0.01), "To TextGrid (silences)",
                -25.0, 0.10, 0.05, "silent", "sounding")
    n = int(call(grid, "Get number of intervals", 1))
    edges = [call(grid, "Get end time of interval", 1, i) for i in range(1, n)]
    silent = [call(grid, "Get label of interval", 1, i) == "silent" for i in range(1, n + 1)]
    units = prosodic_units(y=speech_16k, sr=16000, reset_st=1e9)  # no F0-reset cuts
    np.testing.assert_allclose(units[1:, 0], edges, rtol=0, atol=1e-12)
    assert list(units[:, 2] == SILENCE) == silent
