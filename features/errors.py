"""The two exceptions of the feature functions.

``ParameterError`` is a caller's mistake (a rule about the arguments was broken; the message states
the rule), as in librosa. ``ClipError`` is bad input data: the clip cannot give this feature, and
``reason`` is the short code recorded in the shard's ``clips/status`` (the message goes to
``clips/reason``). A build records a ``ClipError`` and goes on with the next clip.
"""


class ParameterError(ValueError):
    """An argument broke a rule; the message states the rule."""


class ClipError(Exception):
    """A clip that cannot give a feature: ``status`` is the code, ``str(err)`` the reason."""

    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status = status


class ShardError(Exception):
    """A store file (shard or stage output) that cannot be trusted; ``path`` names it (issue 19).

    Trainers catch this one class and print it: the message names the file, the dataset and what
    to do.
    """

    def __init__(self, path: str, message: str | None = None, *, dataset: str | None = None):
        if message is None:  # built from a message alone (torch re-raises a worker's error so)
            message, path = path, path.rsplit(f"{type(self).__name__}: ", 1)[-1].split(": ", 1)[0]
        super().__init__(message)
        self.path = path
        self.dataset = dataset

    def __reduce__(self):  # pickles whole (multiprocessing, DataLoader workers)
        return _rebuild, (type(self), self.path, str(self), self.dataset)


def _rebuild(cls, path, message, dataset):
    return cls(path, message, dataset=dataset)


class CorruptShard(ShardError):
    """Bytes of the file changed: a chunk failed its fletcher32 checksum or its decompression, or
    the file is truncated (issue 19 item 3)."""


class UnsafeShard(ShardError):
    """The file points outside itself (external storage, an external or dangling soft link, a
    virtual dataset) and is refused before anything is read from it (issue 19 item 6(b))."""
