import numpy as np
import pytest

from features import ParameterError
from features.vad import vad_weights


def test_speech_is_voiced_and_silence_is_not(speech_16k):
    w = vad_weights(y=speech_16k, sr=16000)
    assert w.shape == (len(speech_16k) // 160,)
    assert set(np.unique(w)) <= {0, 1}
    lead = w[:45]   # the first 0.45 s is digital silence
    tail = w[-45:]
    speech = w[60:-60]
    assert lead.sum() == 0 and tail.sum() == 0
    assert speech.mean() > 0.7


def test_noise_free_silence_and_low_noise_are_not_voiced():
    rng = np.random.default_rng(0)
    assert vad_weights(y=np.zeros(16000, np.float32), sr=16000).sum() == 0
    assert vad_weights(y=1e-4 * rng.standard_normal(16000).astype(np.float32), sr=16000, aggressiveness=3).mean() < 0.1


@pytest.mark.parametrize("frame_ms", [10, 20, 30])
def test_each_decision_covers_its_10ms_steps(speech_16k, frame_ms):
    w = vad_weights(y=speech_16k[:16050], sr=16000, frame_ms=frame_ms)
    assert w.shape == (100,)


@pytest.mark.parametrize("kwargs, rule", [
    ({"sr": 22050}, "8000"), ({"frame_ms": 25}, "10, 20, 30"), ({"aggressiveness": 4}, "0, 1, 2 or 3"),
])
def test_vad_parameter_rules(kwargs, rule):
    args = {"y": np.zeros(16000, np.float32), "sr": 16000, **kwargs}
    with pytest.raises(ParameterError, match=rule):
        vad_weights(**args)
