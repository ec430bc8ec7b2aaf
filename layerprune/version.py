"""The installed version of layerprune (a module of its own, so that any room can read it without
importing the package root)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("layerprune")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
