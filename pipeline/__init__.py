"""Luigi tasks of the feature store. ``luigi --module pipeline BuildShards --dataset demo``.

Importing this package loads ``workflows.cfg`` (next to the package) unless ``LUIGI_CONFIG_PATH``
names another configuration, which then wins.
"""
import logging
import os
import warnings

import luigi.configuration

# workflows.cfg sets [core] rpc-retry-* (read by luigi's RPC client, not by the `core` class)
warnings.filterwarnings("ignore", message="The configuration contains the parameter 'rpc_retry")

WORKFLOWS_CFG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "workflows.cfg")
if not os.environ.get("LUIGI_CONFIG_PATH") and os.path.isfile(WORKFLOWS_CFG):
    luigi.configuration.add_config_path(WORKFLOWS_CFG)



class _OneLineUserErrors(logging.Filter):
    """Luigi logs an error raised while scheduling ("Will not run X ... due to error in complete()
    method") with its whole traceback. A bad manifest or parameter explains itself in one line
    (file, line, field): keep only that line, as the build's summary and exit code 35 say the rest."""

    ERRORS = ("pipeline.manifest.ManifestError", "features.errors.ParameterError")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith("Will not run") and "Traceback" in record.msg:
            last = record.msg.rstrip().rsplit("\n", 1)[-1]
            for name in self.ERRORS:
                if last.startswith(name + ": "):
                    record.msg, record.args = f"{record.msg.split(chr(10), 1)[0]} {last[len(name) + 2:]}", ()
        return True


logging.getLogger("luigi-interface").addFilter(_OneLineUserErrors())

from pipeline.audio import VAD, Decode, LogMel, Prosody, Segment  # noqa: E402
from pipeline.base import paths  # noqa: E402
import pipeline.remote  # noqa: E402,F401  (registers [remote] url, also --remote-url)
from pipeline.shards import BuildShards, Shard  # noqa: E402

__all__ = ["BuildShards", "Decode", "LogMel", "Prosody", "Segment", "Shard", "VAD", "paths"]
