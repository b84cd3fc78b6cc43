"""secretcache: a local caching server for AWS Secrets Manager."""

from secretcache._version import __version__

__all__ = ["__version__"]
