"""Fusion models and trainers that read only the shards (``features.store.Shard``)."""
