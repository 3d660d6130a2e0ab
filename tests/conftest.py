import os
import subprocess

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "tests", "data", "demo")


@pytest.fixture(scope="session")
def speech_16k(tmp_path_factory):
    """Real synthetic speech (espeak-ng) at 16 kHz with 0.5 s of silence before and after."""
    import librosa

    path = tmp_path_factory.mktemp("speech") / "speech.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(path),
                    "The quick brown fox, jumps over the lazy dog. And then it runs away."],
                   check=True, capture_output=True)
    y, _ = librosa.load(path, sr=16000)
    pad = np.zeros(8000, np.float32)
    return np.concatenate([pad, y, pad])
