"""The local multi-host lab: hosts as network namespaces on a private bridge, one daemon each."""

from cli.lab.lab import Lab, LabError, LabNode

__all__ = ["Lab", "LabError", "LabNode"]
