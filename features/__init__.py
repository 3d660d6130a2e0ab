"""Pure feature functions: arrays in, arrays out, sample rates and frame rates explicit.

One module per topic (``audio``, ``vad``, ``prosody``, ``segments``) and ``store``, the only code
that knows the HDF5 layout of a shard. No file here reads a config; only ``audio.read_audio`` and
``store`` touch files.
"""
from features.errors import ClipError, ParameterError

__all__ = ["ClipError", "ParameterError"]
