"""The package's version, in a module of its own so that every module can name it without
importing the package's public API (which imports most of them)."""

__version__ = "0.1.0"
