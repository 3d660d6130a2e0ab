"""Pure feature functions: arrays in, arrays out, sample rates and frame rates explicit.

One module per topic (``audio``, ``vad``, ``prosody``, ``segments``, ``video``, ``face``,
``landmarks``, ``align``) and ``store``, the only code that knows the HDF5 layout of a shard. No
file here reads a config; only the decoders (``audio.read_audio``, ``video.read_video``), the model
loaders and ``store`` touch files.
"""
from features.errors import ClipError, ParameterError

__all__ = ["ClipError", "ParameterError"]
