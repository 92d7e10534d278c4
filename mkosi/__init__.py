"""mkosi: make operating system images."""

__version__ = "0.1.0"
