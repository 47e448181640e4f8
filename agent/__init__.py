"""minerwatch: host-level cryptominer detection for Docker hosts."""

__version__ = "0.1.0"
