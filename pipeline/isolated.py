"""Native decoding in a child process (issue 19 item 1): a crash in FFmpeg, PyAV or soxr costs the
clip it was on, not the batch. ``IsolatedDecoder`` is what the Decode stage (``pipeline.audio``)
runs; the signal processing itself is ``features.audio.decode_to``."""
from __future__ import annotations

import json
import logging
import os
import signal
import tempfile
import traceback

import numpy as np

logger = logging.getLogger("luigi-interface")


class Outcome:
    """What decoding one clip gave: ``kind`` "ok" (``start``, ``length``: float32 samples in the
    scratch file; ``info``) or a failure with the clip's ``status`` and ``message`` (``kind``
    "clip_error": a ``ClipError``; "error": another exception, with its ``traceback``;
    "crashed": the decoder process died)."""

    def __init__(self, kind: str, *, status: str = "ok", message: str = "", start: int = 0, length: int = 0,
                 info: dict | None = None, traceback: str = ""):
        self.kind, self.status, self.message, self.traceback = kind, status, message, traceback
        self.start, self.length, self.info = start, length, info or {}

    def __repr__(self) -> str:
        return f"Outcome({self.kind!r}, status={self.status!r}, message={self.message!r}, length={self.length})"

    def to_json(self) -> dict:
        return {"kind": self.kind, "status": self.status, "message": self.message, "start": self.start,
                "length": self.length, "info": self.info, "traceback": self.traceback}


class IsolatedDecoder:
    """Decode clips with ``features.audio.decode_to`` in a forked child process, into a scratch file.

    ``run(jobs)`` forks one child for the batch; it decodes the clips in order, appends each
    clip's float32 output to an unnamed scratch file in ``folder`` (``O_TMPFILE``: nothing is
    left behind, even after a kill) and reports each outcome through a pipe. When the child dies
    (a segfault in FFmpeg or in PyAV's C code, an abort, the OOM killer) the clip it was on gets
    status "error", "decoder crashed: signal N (NAME)", and a new child goes on with the next clip.
    A forked child inherits the imported libraries: the cost is one fork per batch plus one per
    crash. The messages are lines of JSON (no pickle in the store's code), so the jobs' keys are
    ints or strings. ``read(outcome, out)`` copies a clip's samples into ``out``. Without
    ``os.fork`` (or with ``isolate=False``) the clips are decoded in this process, unprotected.

    A failure to write the scratch file (a full disk) is not a clip's fault: ``run`` raises it.
    """

    def __init__(self, folder: str, *, sr: int, coef: float, isolate: bool = True):
        self.folder, self.sr, self.coef = folder, sr, coef
        self.isolate = isolate and hasattr(os, "fork")
        self._file = tempfile.TemporaryFile(dir=folder, prefix=".decode-scratch-")
        self.fd = self._file.fileno()
        self.children = 0  # processes forked (1 + crashes)

    def __enter__(self) -> "IsolatedDecoder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def run(self, jobs, progress=None) -> dict:
        """{key: Outcome} for ``jobs``, a list of (key, path)."""
        outcomes: dict = {}
        pending = list(jobs)
        while pending:
            if self.isolate:
                self._child(pending, outcomes, progress)
            else:  # decode here, unprotected
                offset = os.fstat(self.fd).st_size
                for key, path in pending:
                    try:
                        outcomes[key], offset = _decode_one(path, self.fd, offset, self.sr, self.coef)
                    except OSError as err:
                        raise OSError(err.errno, f"{err.strerror}: the decoder's scratch file in {self.folder}") \
                            from None
                    if progress:
                        progress(len(outcomes))
            pending = [job for job in pending if job[0] not in outcomes]
        return outcomes

    def _child(self, jobs, outcomes: dict, progress) -> None:
        """One child process over ``jobs`` (those not in ``outcomes`` yet); a crash is recorded."""
        offset = os.fstat(self.fd).st_size
        parent = os.getpid()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 0
            try:
                os.close(r)
                _die_with(parent)
                _child_main(w, self.fd, jobs, offset, self.sr, self.coef)
            except BaseException:  # noqa: B036 (the child reports by its exit status, never unwinds the parent's stack)
                code = 70
            finally:
                os._exit(code)
        self.children += 1
        os.close(w)
        current, ended = None, False
        try:
            with os.fdopen(r, "rb") as pipe:
                for line in pipe:  # ends when the child dies
                    try:
                        msg = json.loads(line)
                    except ValueError:
                        break  # the child died in the middle of a message
                    if msg[0] == "start":
                        current = msg[1]
                    elif msg[0] == "end":
                        ended = True
                        break
                    elif msg[0] == "scratch_error":
                        raise OSError(msg[1], f"{msg[2]}: the decoder's scratch file in {self.folder}")
                    elif msg[0] == "done":
                        outcomes[msg[1]], current = Outcome(**msg[2]), None
                        if progress:
                            progress(len(outcomes))
        except BaseException:
            _kill(pid)
            raise
        finally:
            _, wstatus = os.waitpid(pid, 0)
        if ended:
            return
        culprit = current if current is not None else next(key for key, _ in jobs if key not in outcomes)
        if os.WIFSIGNALED(wstatus):
            n = os.WTERMSIG(wstatus)
            try:
                message = f"decoder crashed: signal {n} ({signal.Signals(n).name})"
            except ValueError:
                message = f"decoder crashed: signal {n}"
        else:
            message = f"decoder crashed: exit status {os.waitstatus_to_exitcode(wstatus)}"
        logger.error("decode: %s on %s; the next clips go to a new decoder process", message,
                     dict(jobs).get(culprit))
        outcomes[culprit] = Outcome("crashed", status="error", message=message)
        if progress:
            progress(len(outcomes))

    def read(self, outcome: Outcome, out: np.ndarray) -> None:
        """Copy ``outcome``'s samples from the scratch file into ``out`` (float32, its length)."""
        view, pos = memoryview(out).cast("B"), outcome.start * 4
        while view:
            n = os.preadv(self.fd, [view], pos)
            if n <= 0:
                raise OSError(f"the decoder's scratch file in {self.folder} ended early")
            view, pos = view[n:], pos + n


class _ScratchError(Exception):
    def __init__(self, err: OSError):
        super().__init__(err.strerror)
        self.errno, self.strerror = err.errno, err.strerror


def _decode_one(path: str, fd: int, offset: int, sr: int, coef: float) -> tuple[Outcome, int]:
    """Decode one clip, appending its samples to ``fd`` at ``offset``: (its Outcome, the new offset)."""
    from features import audio
    from features.errors import ClipError

    start = pos = offset

    def sink(y: np.ndarray) -> None:
        nonlocal pos
        view = memoryview(np.ascontiguousarray(y, dtype=np.float32)).cast("B")
        try:
            while view:
                n = os.pwrite(fd, view, pos)
                view, pos = view[n:], pos + n
        except OSError as err:
            raise _ScratchError(err) from None

    try:
        info = audio.decode_to(path, sink, sr=sr, coef=coef)
    except _ScratchError as err:
        raise OSError(err.errno, err.strerror) from None
    except ClipError as err:
        return Outcome("clip_error", status=err.status, message=str(err)), pos
    except Exception as err:  # recorded as the clip's "error", with the traceback in the log
        return Outcome("error", status="error", message=f"{type(err).__name__}: {err}",
                       traceback=traceback.format_exc()), pos
    return Outcome("ok", start=start // 4, length=(pos - start) // 4, info=info), pos


def _child_main(w: int, fd: int, jobs, offset: int, sr: int, coef: float) -> None:
    """The decoder process: decode ``jobs`` in order, one message per event through the pipe ``w``."""
    out = os.fdopen(w, "wb")

    def send(*msg) -> None:
        out.write(json.dumps(msg).encode() + b"\n")
        out.flush()

    for key, path in jobs:
        send("start", key)
        try:
            outcome, offset = _decode_one(path, fd, offset, sr, coef)
        except OSError as err:
            send("scratch_error", err.errno, err.strerror)
            return
        send("done", key, outcome.to_json())
    send("end")
    out.close()


def _die_with(parent: int) -> None:
    """Have the kernel kill this (child) process when its parent dies (Linux ``PR_SET_PDEATHSIG``):
    a killed build leaves no decoder behind."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl
        os._exit(1)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
