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
