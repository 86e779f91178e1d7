"""The installed package's version, in a module of its own so that subpackages can record it
without importing the package root."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sc-celltherapy")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
