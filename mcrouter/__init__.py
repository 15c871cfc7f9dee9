"""mcrouter: a memcached request router."""
__version__ = "0.1.0"
