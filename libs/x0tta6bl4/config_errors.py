"""The configuration error type, apart from :mod:`x0tta6bl4.config` (which loads pydantic): modules that only
raise or catch it -- the bus connection, meshctl -- do not pay for pydantic at start-up."""
from __future__ import annotations


class ConfigError(Exception):
    """A setting is missing, malformed or out of range. str() is one line."""
