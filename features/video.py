"""Video decoding: upright RGB frames and their presentation times.

The visual chain of AVEF §2.1.2 starts from "image frames involving faces"; the frames that fall in
an audio window [T_begin, T_end] are picked by time, so every frame carries its own presentation
time, taken from the container's pts (safe for variable-frame-rate files) and counted from the
start of the audio stream (the origin of the audio windows' [t_begin, t_end]), or of the video
stream in a file without audio. A video stream that starts late (``ffmpeg -itsoffset``) thus keeps
its lag to the speech. Rotation metadata (the display matrix that phones write) is applied, so
faces are upright as a player would show them (the same frames as ``ffmpeg``'s autorotate).

A 5 s clip of 854×480 at 30 fps is ~180 MB as RGB; ``iter_video`` yields one frame at a time for
the stages that need no random access, and ``read_video`` fills one preallocated array.
"""
from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np

from features.errors import ClipError, ParameterError


def iter_video(path: str | os.PathLike, *, fps: float | None = None, max_frames: int | None = None,
               info: dict | None = None) -> Iterator[tuple[float, np.ndarray]]:
    """Decode the first video stream, one upright RGB frame at a time.

    Parameters
    ----------
    path : the file (anything PyAV reads: mp4, avi, mkv, ...)
    fps : frames per second to use instead of the stream's ``average_rate``; only used where a
        frame has no pts (its time is then index / fps) and reported in ``info['fps']``
    max_frames : stop after this many frames (the truncation check is then skipped)
    info : a dict to fill in place with the facts of ``read_video`` (``fps``, ``width``,
        ``height``, ``rotation``, ``n_frames``, ``duration_s``); complete once the generator ends

    Yields
    ------
    t : float, seconds from the start of the audio stream (pts × time_base − the audio stream's
        start time), or of the video stream when the file has no audio; frames that precede the
        audio have negative times
    frame : np.ndarray, shape (H, W, 3), uint8 RGB, rotated upright; as ffmpeg decoded it, so its
        rows may be padded (``strides[0]`` > 3·W when ffmpeg aligns the lines, e.g. W = 854):
        OpenCV takes it as it is, ``np.ascontiguousarray`` makes a dense copy

    Raises ``ClipError`` with status ``decode_error`` (unreadable or zero-byte file, or the first
    frame cannot be decoded), ``no_video_stream``, ``truncated`` (decoding fails part-way, or stops
    well before the declared duration) or ``empty_video`` (no frames at all).
    """
    _check(fps=fps, max_frames=max_frames)
    return _frames(path, fps=fps, max_frames=max_frames, info={} if info is None else info)


def _frames(path, *, fps, max_frames, info):
    import av
    from av.video.reformatter import VideoReformatter

    try:
        container = av.open(os.fspath(path))
    except (av.FFmpegError, OSError) as err:
        raise ClipError("decode_error", f"cannot open {os.fspath(path)!r}: {err}") from None
    with container:
        if not container.streams.video:
            raise ClipError("no_video_stream", "the file has no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        info.update(fps=float(fps or rate or 0.0) or None, width=stream.width, height=stream.height,
                    rotation=0, n_frames=0, duration_s=_declared_duration(container, stream))
        tb = float(stream.time_base) if stream.time_base is not None else None
        origin = _audio_origin(container)  # seconds; None: the first video frame's pts
        # one converter for the stream: ``frame.to_ndarray(format="rgb24")`` makes a new swscale
        # context for every frame (~0.2 ms of ~0.9 ms per 854×480 frame); the pixels are the same
        to_rgb = VideoReformatter()
        n = 0
        try:
            for frame in container.decode(stream):
                if frame.pts is not None and tb is not None:
                    if origin is None:
                        origin = (frame.pts if stream.start_time is None else stream.start_time) * tb
                    t = frame.pts * tb - origin
                elif info["fps"]:
                    t = n / info["fps"]
                else:
                    raise ClipError("decode_error", "frames have no pts and the stream no frame "
                                                    "rate; pass fps=")
                image = to_rgb.reformat(frame, format="rgb24").to_ndarray()
                k = _quarter_turns(frame.rotation)
                if k:
                    image = np.ascontiguousarray(np.rot90(image, k))
                if n == 0:
                    t0 = t
                    info.update(rotation=90 * k, height=image.shape[0], width=image.shape[1])
                n += 1
                info["n_frames"] = n
                yield t, image
                if max_frames is not None and n >= max_frames:
                    return
        except av.FFmpegError as err:
            if n:
                raise ClipError("truncated", f"video decoding stopped after {n} frames: {err}") from None
            raise ClipError("decode_error", f"video decoding failed: {err}") from None
    if n == 0:
        raise ClipError("empty_video", "the video stream holds no frames")
    if info["duration_s"] is None:
        info["duration_s"] = t - t0 + 1.0 / info["fps"] if info["fps"] else t - t0
    elif info["fps"]:
        decoded = t - t0 + 1.0 / info["fps"]
        if decoded < 0.9 * info["duration_s"] - 0.1:
            raise ClipError("truncated", f"decoded {n} frames ({decoded:.2f} s) of a declared "
                                         f"{info['duration_s']:.2f} s")


def read_video(path: str | os.PathLike, *, fps: float | None = None, max_frames: int | None = None,
               as_list: bool = False) -> tuple[np.ndarray | list[np.ndarray], np.ndarray, dict]:
    """Decode a whole clip into memory (see ``iter_video`` for the rules and errors).

    Returns
    -------
    frames : np.ndarray, shape (n, H, W, 3), uint8 RGB, C-contiguous, upright (rotation metadata
        applied); with ``as_list`` a list of the n (H, W, 3) frames as ``iter_video`` yields them
        (rows maybe padded), not copied into one array
    times : np.ndarray, shape (n,), float64 seconds from the stream start, from the pts
    info : dict
        ``fps`` (the stream's average frame rate, or the ``fps`` argument), ``width`` and
        ``height`` (of the returned, upright frames), ``rotation`` (degrees counter-clockwise
        that were applied: 0, 90, 180 or 270), ``n_frames`` (decoded), ``duration_s`` (the
        stream's declared duration, or the decoded span when the file declares none).
    """
    info: dict = {}
    if as_list:
        decoded = list(iter_video(path, fps=fps, max_frames=max_frames, info=info))
        return [image for _, image in decoded], np.array([t for t, _ in decoded], dtype=np.float64), info
    frames = None
    times = []
    for i, (t, image) in enumerate(iter_video(path, fps=fps, max_frames=max_frames, info=info)):
        if frames is None:
            frames = np.empty((_expected_frames(info, max_frames),) + image.shape, np.uint8)
        elif i == len(frames):  # the declared length was short: grow by half
            frames = np.concatenate([frames, np.empty_like(frames[: len(frames) // 2 + 1])])
        frames[i] = image
        times.append(t)
    return frames[: len(times)], np.asarray(times, dtype=np.float64), info


def _expected_frames(info: dict, max_frames: int | None) -> int:
    n = int(round((info["duration_s"] or 0.0) * (info["fps"] or 0.0))) + 1
    return max(1, min(n, max_frames) if max_frames is not None else n)


def _check(*, fps, max_frames) -> None:
    if fps is not None and not fps > 0:
        raise ParameterError(f"fps must be positive, got {fps}")
    if max_frames is not None and max_frames < 1:
        raise ParameterError(f"max_frames must be >= 1 or None, got {max_frames}")


def _quarter_turns(rotation) -> int:
    """Counter-clockwise quarter turns for ``np.rot90`` from the display matrix angle (degrees
    counter-clockwise, PyAV's ``frame.rotation``); angles are rounded to the nearest 90°."""
    if rotation is None or not np.isfinite(rotation):
        return 0
    return int(round(rotation / 90.0)) % 4


def _audio_origin(container) -> float | None:
    """The audio stream's start time in seconds (where ``features.audio.read_audio``'s sample 0
    lies on the container's clock), or None when there is no audio stream or it declares none."""
    if not container.streams.audio:
        return None
    a = container.streams.audio[0]
    if a.start_time is None or a.time_base is None:
        return None
    return float(a.start_time * a.time_base)


def _declared_duration(container, stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1e6
    return None
