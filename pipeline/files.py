"""The store's files: atomic no-clobber writes, temporary names, locks, and what a record holds of
a file (sha256, size, mtime). One home for these helpers: ``pipeline.base`` (the stages),
``pipeline.catalog`` (records), ``pipeline.remote``, ``pipeline.export`` and ``pipeline.gc`` import
them from here, and this module imports nothing of the pipeline, so there is no loop of imports.
"""
from __future__ import annotations

import fcntl
import logging
import os
import secrets
import socket
from contextlib import contextmanager

from features.hashing import sha256_file

logger = logging.getLogger("luigi-interface")


# -- atomic, no-clobber writes (issue 6: concurrent builds, SIGKILL) -------------------------------
TMP_MARK = ".tmp-"  # temporary files are ".<name>.tmp-<host>-<pid>-<random>": hidden, never *.h5


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale(entry: str, host: str) -> bool:
    """``entry`` is a temporary file name of a dead process of ``host``."""
    if not entry.startswith(".") or TMP_MARK not in entry:
        return False
    owner = entry.rsplit(TMP_MARK, 1)[1].rsplit("-", 2)  # host (may hold '-'), pid, random
    return len(owner) == 3 and owner[0] == host and owner[1].isdigit() and not _pid_alive(int(owner[1]))


def _remove(path: str) -> bool:
    try:
        os.remove(path)
        return True
    except FileNotFoundError:
        return False


def remove_stale_temps(path: str) -> list[str]:
    """Remove the temporary files of ``path`` left by dead processes of this host (a build killed
    with SIGKILL leaves its temporary file behind; the rerun of the same task removes it)."""
    folder, name = os.path.split(path)
    prefix, host = f".{name}{TMP_MARK}", socket.gethostname()
    try:
        entries = os.listdir(folder or ".")
    except FileNotFoundError:
        return []
    return [e for e in entries if e.startswith(prefix) and _stale(e, host) and _remove(os.path.join(folder, e))]


def sweep_stale_temps(root: str) -> list[str]:
    """Remove every temporary file under ``root`` left by a dead process of this host (issue 19
    item 9): a kill between ``os.link()`` and ``os.remove()`` in ``publish`` leaves a hidden temp
    beside a *complete* output, which no rerun of that task would ever reach. ``BuildShards``
    calls this once per build; only names holding ``TMP_MARK`` are looked at. Returns the paths."""
    host, removed = socket.gethostname(), []
    for folder, _, names in os.walk(root):
        removed += [os.path.join(folder, n) for n in names
                    if _stale(n, host) and _remove(os.path.join(folder, n))]
    for path in removed:
        logger.info("removed the temporary file %s of a dead process", path)
    return removed


def temp_name(path: str) -> str:
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}{TMP_MARK}{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}")


def publish(tmp: str, path: str, *, replace: bool = False) -> bool:
    """Give the finished file ``tmp`` the name ``path`` atomically, keeping a file already there
    (a concurrent build's identical output: its bytes, and the sha256 recorded for it, stay).
    Returns False when ``path`` existed (``tmp`` is then removed). ``replace``: take the place
    of a file already there (a damaged output being repaired, a build record)."""
    if replace:
        os.replace(tmp, path)
        return True
    try:
        os.link(tmp, path)  # atomic and fails when path exists
    except FileExistsError:
        os.remove(tmp)
        return False
    except OSError:  # a file system without hard links: rename (atomic, last writer wins)
        os.replace(tmp, path)
        return True
    os.remove(tmp)
    return True


@contextmanager
def atomic_path(path: str, *, replace: bool = False):
    """``with atomic_path(p) as tmp: write(tmp)``: readers see ``p`` whole or not at all; a
    failure or a kill leaves only a hidden temporary file, removed by the next attempt."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    remove_stale_temps(path)
    tmp = temp_name(path)
    try:
        yield tmp
        publish(tmp, path, replace=replace)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextmanager
def locked(folder: str):
    """An exclusive ``flock`` on ``folder`` (no lock file is left): publishing an output and
    recording its sha256 in ``stage.json`` are one step for the processes of this host. Where
    the file system has no ``flock`` the step runs unlocked."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as err:
            logger.debug("no lock on %s: %s", folder, err)
        yield
    finally:
        os.close(fd)  # releases the lock


# -- the build lock of a dataset (issue 20 item 3: avstore gc never removes what a build writes) ---
_BUILD_LOCKS: dict = {}  # (store, dataset) -> the open folder whose shared flock this process holds


def hold_build_lock(store: str, dataset: str) -> None:
    """A shared ``flock`` on the folder ``store/<dataset>`` for the duration of a build
    (``BuildShards.complete()`` takes it before any stage is scheduled; ``release_build_lock``
    when the build ends; the kernel releases it when the process dies, SIGKILL included). Builds
    share it; ``avstore gc`` takes it exclusively, so gc refuses while a build of this machine
    runs, and a build that starts during a gc waits for it. No lock file is left. Idempotent."""
    key = (os.path.abspath(store), dataset)
    folder = os.path.join(store, dataset)
    fd = _BUILD_LOCKS.get(key)
    try:
        if fd is None:
            os.makedirs(folder, exist_ok=True)
            fd = _BUILD_LOCKS[key] = os.open(folder, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("%s: avstore gc is running there; waiting for it to finish", folder)
            fcntl.flock(fd, fcntl.LOCK_SH)
    except OSError as err:  # a read-only store, a file system without flock: build unlocked
        logger.debug("no build lock on %s: %s", folder, err)


def release_build_lock(store: str, dataset: str) -> None:
    fd = _BUILD_LOCKS.pop((os.path.abspath(store), dataset), None)
    if fd is not None:  # unlock first: in a forked worker (--workers N) the parent's copy of fd stays open
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


# -- what a record holds of a file (issue 19 item 4) ---------------------------------------------
def file_facts(path: str) -> dict:
    """What a record holds of a file: sha256, size and (this machine's) mtime in ns."""
    st = os.stat(path)
    return {"sha256": sha256_file(path), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def file_problem(path: str, meta: dict, *, trust_stat: bool = False) -> str | None:
    """What is wrong with ``path`` against its record ``meta`` (``file_facts``), or None.

    Missing, another size, or another sha256 (a flipped byte, a replaced file). With
    ``trust_stat`` a file whose size and mtime (ns) are the recorded ones is taken as unchanged
    without reading it, as make and rsync do (issue 19 item 4: a rerun with nothing to do stays
    within 5 s for 1,500 clips); any write changes the mtime and brings the sha256 back in."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "missing"
    if st.st_size != meta.get("bytes"):
        return f"size {st.st_size} bytes, recorded {meta.get('bytes')}"
    if trust_stat and st.st_mtime_ns == meta.get("mtime_ns"):
        return None
    got = sha256_file(path)
    return None if got == meta.get("sha256") else f"sha256 {got} does not match the recorded {meta.get('sha256')}"
