"""snapkv: a distributed in-memory key-value store with disk snapshots."""

__version__ = "0.1.0"
