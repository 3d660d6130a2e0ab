"""Luigi tasks of the feature store. ``luigi --module pipeline BuildShards --dataset demo``.

Importing this package loads ``workflows.cfg`` (next to the package) unless ``LUIGI_CONFIG_PATH``
names another configuration, which then wins.
"""
import os
import warnings

import luigi.configuration

# workflows.cfg sets [core] rpc-retry-* (read by luigi's RPC client, not by the `core` class)
warnings.filterwarnings("ignore", message="The configuration contains the parameter 'rpc_retry")

WORKFLOWS_CFG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "workflows.cfg")
if not os.environ.get("LUIGI_CONFIG_PATH") and os.path.isfile(WORKFLOWS_CFG):
    luigi.configuration.add_config_path(WORKFLOWS_CFG)

from pipeline.audio import VAD, Decode, LogMel, Prosody, Segment  # noqa: E402
from pipeline.base import paths  # noqa: E402
import pipeline.remote  # noqa: E402,F401  (registers [remote] url, also --remote-url)
from pipeline.shards import BuildShards, Shard  # noqa: E402

__all__ = ["BuildShards", "Decode", "LogMel", "Prosody", "Segment", "Shard", "VAD", "paths"]
