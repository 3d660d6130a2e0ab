import os
import subprocess

import av
import numpy as np
import pytest

from features import ClipError, ParameterError
from features.audio import read_audio
from features.video import iter_video, read_video

CLIPS = os.path.join(os.path.dirname(__file__), "..", "data", "demo", "clips")
CLIP = os.path.join(CLIPS, "s1_anger_01.mp4")  # H.264 176×144, 30000/1001 fps, 96 frames


def ffmpeg(*args):
    subprocess.run(["ffmpeg", "-v", "error", "-y", *map(str, args)], check=True, capture_output=True)


def ffprobe(path, entry):
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                          f"stream={entry}", "-of", "csv=p=0", str(path)],
                         check=True, capture_output=True, text=True).stdout
    return out.strip()


def ffmpeg_rgb(path, n_frames=1):
    """The first frames as ffmpeg itself decodes them (it applies the display matrix)."""
    out = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-frames:v", str(n_frames),
                          "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], check=True, capture_output=True)
    return np.frombuffer(out.stdout, np.uint8)


def test_demo_clip_frames_times_and_info():
    frames, times, info = read_video(CLIP)
    fps = 30000 / 1001
    assert frames.dtype == np.uint8 and frames.flags.c_contiguous
    assert frames.shape == (96, 144, 176, 3)
    assert info["fps"] == pytest.approx(fps)
    assert (info["width"], info["height"], info["rotation"], info["n_frames"]) == (176, 144, 0, 96)
    assert times[0] == 0.0 and np.all(np.diff(times) > 0)
    np.testing.assert_allclose(times, np.arange(96) / fps, atol=1e-9)
    duration = float(ffprobe(CLIP, "duration"))  # the reference: ffprobe, not our own reader
    assert info["duration_s"] == pytest.approx(duration)
    assert abs(info["n_frames"] - duration * fps) <= 1


def test_as_list_gives_the_same_frames_times_and_info():
    frames, times, info = read_video(CLIP)
    listed, times_l, info_l = read_video(CLIP, as_list=True)
    assert isinstance(listed, list) and len(listed) == len(frames)
    assert all(f.shape == (144, 176, 3) and f.dtype == np.uint8 and f.flags.c_contiguous for f in listed)
    np.testing.assert_array_equal(np.stack(listed), frames)
    np.testing.assert_array_equal(times_l, times)
    assert info_l == info


def test_frames_match_ffmpeg_decoding():
    frames, _, _ = read_video(CLIP, max_frames=2)
    ref = ffmpeg_rgb(CLIP, 2).reshape(2, 144, 176, 3).astype(int)
    assert np.abs(frames.astype(int) - ref).mean() < 1.0


@pytest.mark.parametrize("name, n", [("s2_anger_01.avi", 98), ("s3_happiness_02.avi", 103),
                                     ("bad_noaudio.mp4", 90)])
def test_other_containers_and_codecs(name, n):
    frames, times, info = read_video(os.path.join(CLIPS, name))
    assert frames.shape == (n, 144, 176, 3) and info["n_frames"] == n
    assert np.all(np.diff(times) > 0)
    assert abs(n - info["duration_s"] * info["fps"]) <= 1


def test_fps_override_changes_only_the_reported_rate():
    _, times, info = read_video(CLIP)
    _, times25, info25 = read_video(CLIP, fps=25.0)
    assert info25["fps"] == 25.0 and info["fps"] != 25.0
    np.testing.assert_array_equal(times25, times)  # the pts decide, not the rate


def test_max_frames_and_iter_video_agree():
    frames, times, _ = read_video(CLIP, max_frames=10)
    assert frames.shape[0] == 10
    pairs = list(iter_video(CLIP, max_frames=10))
    np.testing.assert_array_equal(times, [t for t, _ in pairs])
    np.testing.assert_array_equal(frames, np.stack([f for _, f in pairs]))


def test_variable_frame_rate_times_come_from_pts(tmp_path):
    vfr = tmp_path / "vfr.mp4"  # frames 10-19 dropped, the others keep their timestamps
    ffmpeg("-i", CLIP, "-an", "-vf", r"select=not(between(n\,10\,19))", "-fps_mode", "vfr",
           "-c:v", "libx264", vfr)
    _, times, info = read_video(vfr)
    kept = np.r_[0:10, 20:96] * 1001 / 30000
    assert info["n_frames"] == 86
    np.testing.assert_allclose(times, kept, atol=1e-6)
    assert times[10] - times[9] == pytest.approx(11 * 1001 / 30000)


def test_without_pts_times_are_index_over_fps(tmp_path):
    raw = tmp_path / "raw.h264"  # an Annex-B elementary stream has no timestamps
    ffmpeg("-i", CLIP, "-an", "-c:v", "copy", "-bsf:v", "h264_mp4toannexb", "-f", "h264", raw)
    _, times, _ = read_video(raw, fps=30000 / 1001)
    np.testing.assert_allclose(times, np.arange(96) * 1001 / 30000, atol=1e-9)
    _, times, info = read_video(raw)  # the rate the demuxer guesses
    np.testing.assert_allclose(times, np.arange(96) / info["fps"], atol=1e-9)


@pytest.mark.parametrize("rotate, k", [(90, 1), (270, -1)])
def test_rotation_metadata_is_applied_like_ffmpeg(tmp_path, rotate, k):
    rotated = tmp_path / f"r{rotate}.mp4"
    ffmpeg("-i", CLIP, "-c", "copy", "-metadata:s:v", f"rotate={rotate}", rotated)
    frames, times, info = read_video(rotated, max_frames=3)
    plain, _, _ = read_video(CLIP, max_frames=3)
    assert frames.shape == (3, 176, 144, 3)  # transposed
    assert (info["width"], info["height"]) == (144, 176)
    assert info["rotation"] == rotate % 360
    np.testing.assert_array_equal(frames[1], np.rot90(plain[1], k))
    ref = ffmpeg_rgb(rotated).reshape(176, 144, 3).astype(int)  # ffmpeg's autorotate
    assert np.abs(frames[0].astype(int) - ref).mean() < 1.0


def test_zero_byte_file_is_a_decode_error(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(ClipError) as err:
        read_video(empty)
    assert err.value.status == "decode_error"


def test_missing_file_is_a_decode_error(tmp_path):
    with pytest.raises(ClipError) as err:
        read_video(tmp_path / "nope.mp4")
    assert err.value.status == "decode_error"


def test_audio_only_file_has_no_video_stream():
    with pytest.raises(ClipError) as err:
        read_video(os.path.join(CLIPS, "s1_sadness_02.wav"))
    assert err.value.status == "no_video_stream"


def test_truncated_file():
    with pytest.raises(ClipError) as err:
        read_video(os.path.join(CLIPS, "bad_truncated.mp4"))
    assert err.value.status == "truncated"
    assert "declared" in str(err.value)
    # the first frames were fine: iter_video hands them out before it raises
    got = []
    with pytest.raises(ClipError):
        for t, frame in iter_video(os.path.join(CLIPS, "bad_truncated.mp4")):
            got.append(t)
    assert 0 < len(got) < 96


def test_truncated_check_is_skipped_with_max_frames():
    frames, _, _ = read_video(os.path.join(CLIPS, "bad_truncated.mp4"), max_frames=5)
    assert len(frames) == 5


@pytest.mark.parametrize("kwargs", [{"fps": 0}, {"fps": -30.0}, {"max_frames": 0}])
def test_parameter_rules_are_checked_before_decoding(kwargs):
    with pytest.raises(ParameterError):
        iter_video("/no/such/file.mp4", **kwargs)  # raised at the call, not at the first next()
    with pytest.raises(ParameterError):
        read_video(CLIP, **kwargs)


@pytest.mark.parametrize("video_lag", [0.5, -0.5])
def test_times_count_from_the_audio_stream_start(tmp_path, video_lag):
    """A video stream muxed to start 0.5 s after (or before) the audio keeps that lag: its frame
    times are on the audio windows' clock, whose 0 is the first audio sample."""
    moved = tmp_path / "moved.mp4"  # input 0 is shifted by 0.5 s; take the video from it or the audio
    video, audio = ("0:v", "1:a") if video_lag > 0 else ("1:v", "0:a")
    ffmpeg("-itsoffset", abs(video_lag), "-i", CLIP, "-i", CLIP, "-map", video, "-map", audio, "-c", "copy", moved)
    frames, times, _ = read_video(moved)
    ref_frames, ref_times, _ = read_video(CLIP)
    np.testing.assert_array_equal(frames, ref_frames)
    with av.open(str(moved)) as c:  # the lag as muxed (the AAC priming shifts it by ~21 ms)
        lag = float(c.streams.video[0].start_time * c.streams.video[0].time_base
                    - c.streams.audio[0].start_time * c.streams.audio[0].time_base)
    assert lag == pytest.approx(video_lag, abs=0.03)
    np.testing.assert_allclose(times, ref_times + lag, atol=1e-6)
    x, sr = read_audio(moved)  # while the audio samples are unchanged (behind the 1024 AAC priming
    ref_x, _ = read_audio(CLIP)  # samples that a moved audio stream keeps: the ~21 ms above)
    assert 0 <= x.shape[1] - ref_x.shape[1] <= 1024
    np.testing.assert_array_equal(x[:, x.shape[1] - ref_x.shape[1]:], ref_x)
