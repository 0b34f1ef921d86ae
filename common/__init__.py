"""The bottom layer: the exception tree, the settings and the version every package shares (torch-free)."""

__version__ = "0.1.0"
